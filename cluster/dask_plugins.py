"""Dask worker plugins tilegraph registers on the clusters it starts."""

from __future__ import annotations

import signal
import threading

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["IgnoreInterrupts", "TasksComputeInline"]


class TasksComputeInline(WorkerPlugin):
    """A Dask collection that a task computes (xarray reading a Zarr store lazily, say)
    is computed in the task's own thread.

    Otherwise Dask sends it to the cluster from inside the task, and the task secedes
    from the worker's thread pool while it waits: the worker starts its next task
    meanwhile, and a one-thread worker runs several (sweep points, pipeline tasks) at
    once, past the memory planned for one.
    """

    name = "tilegraph-tasks-compute-inline"

    def setup(self, worker) -> None:
        import dask

        dask.config.set(scheduler="synchronous")  # this worker process's default


class IgnoreInterrupts(WorkerPlugin):
    """Worker processes of a local cluster ignore SIGINT (and SIGHUP).

    Ctrl-C reaches every process of the terminal's process group: without this, each
    worker prints a ``KeyboardInterrupt`` traceback while the driver is still marking the
    run interrupted and closing the cluster, which stops the workers in order.
    """

    name = "tilegraph-ignore-interrupts"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if hasattr(signal, "SIGHUP"):  # a closed terminal reaches them all as well
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
