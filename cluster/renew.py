"""Batch jobs replaced ahead of their walltime (a profile's ``renew: true``).

A job's successor is submitted ``renew_margin`` before the job's walltime ends, while
the job still works; once the successor's workers have all joined, the old job's
workers are retired (their results handed to the others, the successor's among them)
and the job is cancelled. So a renewal costs the run neither workers nor data as long
as the queue starts the successor within the margin. A job whose workers all left
without one (its node lost, or a walltime that came first) gets one once none of them
has been back for Dask's ``lost-worker-timeout`` (the scheduler tells the renewer of
each worker that joins or leaves, so workers that came and went between two checks
count too). A successor the queue never starts is not replaced: the run is a job short
until it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["Renewer"]

#: Seconds between the renewer's checks.
CHECK_S = 1.0


class Renewer:
    """Keep a dask-jobqueue cluster at its jobs, each replaced ahead of its walltime.

    Parameters
    ----------
    cluster : dask_jobqueue.JobQueueCluster
        The cluster, already scaled to its jobs.
    workers_per_job : int
        Workers each job starts (a successor counts as joined once all have).
    renew_after : float
        Seconds after a job's first worker joined that its successor is submitted
        (the walltime less the margin).
    interval : float, optional
        Seconds between checks (default `CHECK_S`).
    """

    def __init__(
        self,
        cluster: Any,
        workers_per_job: int,
        renew_after: float,
        interval: float | None = None,
    ) -> None:
        import dask
        from dask.utils import parse_timedelta
        from tornado.ioloop import PeriodicCallback

        self._cluster = cluster
        self._per_job = workers_per_job
        self._after = renew_after
        # a job's workers absent this long count as lost (a nanny restarting one is not)
        self._grace = parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))
        self._started: dict[str, float] = {}  # job name -> when its first worker joined
        self._absent: dict[str, float] = {}  # job name -> since when none of its workers is in
        self._successor: dict[str, str] = {}  # job name -> its successor's
        # jobs Dask listed as submitted (not `_started`: of jobs submitted together, one
        # job's worker may join before Dask lists any of them)
        self._submitted: set[str] = set()
        self._busy: Any = None  # the check under way
        #: Addresses of the workers that left while their job was being renewed
        #: (retired here, or by their ``--lifetime`` where the fresh job came late).
        self.retired: set[str] = set()
        self._callback = PeriodicCallback(self._tick, (interval or CHECK_S) * 1000)
        self._stopped = False
        cluster.loop.add_callback(self._start)

    async def _start(self) -> None:
        """Hear of every worker that joins or leaves, and know the jobs submitted
        (`scale` asked for them), before the first check: a job whose workers came and
        went between two checks is then still known as started, and lost."""
        scheduler = getattr(self._cluster, "scheduler", None)
        if hasattr(scheduler, "add_plugin"):  # the scheduler runs in this process
            scheduler.add_plugin(_Arrivals(self), name=_Arrivals.name)
        with contextlib.suppress(Exception):  # a refused submission: the executor says so
            await self._cluster._correct_state()
        self._submitted.update(self._cluster.workers)
        if not self._stopped:
            self._callback.start()

    def _joined(self, job: str) -> None:
        self._started.setdefault(job, time.monotonic())
        self._absent.pop(job, None)

    def _left(self, job: str) -> None:
        """The last worker of ``job`` in the cluster left."""
        self._absent.setdefault(job, time.monotonic())

    def stop(self) -> None:
        """Stop checking, and a check under way, before the cluster closes."""

        async def stop() -> None:
            self._stopped = True
            self._callback.stop()
            with contextlib.suppress(Exception):  # none added, or the scheduler is gone
                self._cluster.scheduler.remove_plugin(name=_Arrivals.name)
            if self._busy is not None and not self._busy.done():
                self._busy.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._busy

        with contextlib.suppress(Exception):  # a loop already stopped: nothing runs
            self._cluster.sync(stop)

    def _job_of(self, worker: str) -> str | None:
        """The job a worker belongs to: its own name (one worker per job) or its name
        less ``-i`` (several: distributed names them ``JOB-0``, ``JOB-1`` …)."""
        jobs = self._cluster.worker_spec
        head, _, tail = worker.rpartition("-")
        if worker in jobs:
            return worker
        return head if tail.isdigit() and head in jobs else None

    async def _tick(self) -> None:
        self._busy = asyncio.ensure_future(self._check())
        with contextlib.suppress(asyncio.CancelledError):  # stopped: the cluster closes
            await self._busy

    async def _check(self) -> None:
        from distributed.core import Status

        cluster = self._cluster
        if cluster.status != Status.running:
            return
        now = time.monotonic()
        by_job: dict[str, list[str]] = {}
        for address, info in cluster.scheduler_info.get("workers", {}).items():
            job = self._job_of(str(info["name"]))
            if job is not None:
                by_job.setdefault(job, []).append(address)
        changed, ready = False, []
        for name in list(cluster.worker_spec):
            if name in by_job:
                self._started.setdefault(name, now)
                self._absent.pop(name, None)
            # Dask closes a job none of whose workers came back within the timeout: its
            # workers came and went between two checks (a node lost at once)
            forgotten = self._forgotten(name)
            if forgotten:
                self._started.setdefault(name, now)
            if name not in self._started:
                continue  # in the queue, or starting
            if name not in by_job:
                self._absent.setdefault(name, now)
            gone = forgotten or now - self._absent.get(name, now) >= self._grace
            successor = self._successor.get(name)
            if successor is not None and successor not in cluster.worker_spec:
                del self._successor[name]  # itself lost and replaced: a fresh one
                successor = None
            if successor is None and (gone or now - self._started[name] >= self._after):
                spec = cluster.new_worker_spec()
                cluster.worker_spec.update(spec)
                self._successor[name] = successor = next(iter(spec))
                changed = True
            if gone or len(by_job.get(successor, ())) >= self._per_job:
                ready.append((name, [] if gone else by_job.get(name, [])))
        addresses = [a for _, old in ready for a in old]
        # graceful: what only they hold moves to the other workers first (in one call)
        retired = (
            await cluster.scheduler_comm.retire_workers(workers=addresses) if addresses else {}
        )
        if cluster.status != Status.running:
            return
        for name, old in ready:
            if any(a not in retired for a in old):
                continue  # data it could not place yet: next time
            cluster.worker_spec.pop(name, None)
            for book in (self._successor, self._started, self._absent):
                book.pop(name, None)
            changed = True
        # a job Dask forgot meanwhile (its one worker left) would be submitted again
        # under its name: the next check gives it a successor instead
        forgotten = any(self._forgotten(n) for n in cluster.worker_spec)
        if changed and not forgotten:
            await cluster._correct_state()  # submits the successors, cancels the old jobs
        # (the only submissions after the first: known as submitted from here on)
        self._submitted.update(cluster.workers)

    def _forgotten(self, name: str) -> bool:
        """True if Dask closed job ``name`` (submitted, and gone from its jobs) while it
        is still one of the jobs to keep: a worker of it left and none came back."""
        return name in self._submitted and name not in self._cluster.workers


class _Arrivals(SchedulerPlugin):
    """Tells a `Renewer` of each worker that joins and of each job whose last worker
    left, as the scheduler sees them (its checks see only who is in at the time)."""

    name = "tilegraph-renewer"

    def __init__(self, renewer: Renewer) -> None:
        self._renewer = renewer
        self._job: dict[str, str] = {}  # worker address -> its job

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        job = self._renewer._job_of(str(ws.name)) if ws is not None else None
        if job is not None:
            self._job[worker] = job
            self._renewer._joined(job)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        job = self._job.pop(worker, None)
        if job is None:
            return
        if job in self._renewer._successor:  # it has a fresh job: renewed, not lost
            self._renewer.retired.add(worker)
        if job not in self._job.values():
            self._renewer._left(job)
