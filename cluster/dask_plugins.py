"""Dask worker plugins tilegraph registers on the clusters it starts."""

from __future__ import annotations

import signal
import threading

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["IgnoreInterrupts"]


class IgnoreInterrupts(WorkerPlugin):
    """Worker processes of a local cluster ignore SIGINT.

    Ctrl-C reaches every process of the terminal's process group: without this, each
    worker prints a ``KeyboardInterrupt`` traceback while the driver is still marking the
    run interrupted and closing the cluster, which stops the workers in order.
    """

    name = "tilegraph-ignore-interrupts"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
