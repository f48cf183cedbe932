"""`connect`: turn a spec string into a running `Executor`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable

from .base import Executor
from .code import check_code_paths
from .specs import Spec, check_reachable, parse_spec

__all__ = ["connect"]


def connect(
    spec: str | Spec | None = "local",
    *,
    profile: str | None = None,
    code: Iterable[str] = (),
) -> Executor:
    """Start (or connect to) the executor a cluster spec names.

    Parameters
    ----------
    spec : str, Spec or None
        See `cluster.SPECS_HELP`; ``None`` means ``"local"`` (a Dask `LocalCluster` with
        ``min(os.cpu_count(), 4)`` worker processes).
    profile : str, optional
        Batch-scheduler profile file for ``slurm``/``pbs``/``sge``/``lsf`` (see
        `cluster.jobqueue`); found in the usual places when not given.
    code : iterable of str
        The user's modules (``.py`` files or package folders) to ship to every worker,
        see `Executor.add_code`. Ray takes them only here, when it connects.

    Returns
    -------
    Executor
        A context manager; ``close()`` shuts down what it started.

    Raises
    ------
    SpecError
        An unknown spec, a bad profile, or one this machine cannot run (``local-cuda``
        without dask-cuda, a batch scheduler without dask-jobqueue).
    TimeoutError
        No batch job's worker joined within the profile's ``wait_timeout``.
    """
    parsed = parse_spec(spec)
    if parsed.kind in ("local", "local-cuda") and getattr(
        multiprocessing.current_process(), "_inheriting", False
    ):
        # a spawned worker process is importing the user's script as __mp_main__: without
        # this, it would start a cluster of its own and fail deep inside multiprocessing
        raise RuntimeError(
            "a worker process imported the main script, which starts tilegraph at import "
            'time: put that code under `if __name__ == "__main__":`'
        )
    code = check_code_paths(code)
    check_reachable(parsed)
    if parsed.backend == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(parsed, code=code)
    if parsed.backend == "sync":
        from .inprocess import SyncExecutor

        executor: Executor = SyncExecutor(parsed)
    elif parsed.backend == "threads":
        from .inprocess import ThreadsExecutor

        executor = ThreadsExecutor(parsed)
    else:
        from .dask_backend import DaskExecutor

        executor = DaskExecutor(parsed, profile_path=profile)
    if code:
        try:
            executor.add_code(code)
        except BaseException:
            executor.close()
            raise
    return executor


def expected_memory_limit(spec: Spec | str, profile: str | None = None) -> int | None:
    """The memory limit, in bytes, each worker of ``spec`` will get, known before it
    starts: for ``local[:N]`` Dask's ``"auto"`` (this machine's memory, or its cgroup
    limit, times ``min(1, threads / cores)``, one thread per worker); for a batch
    scheduler the profile's (``profile``: its file, as ``connect`` takes it) memory per
    job over its workers per job; None where it cannot be known here (an address, Ray,
    in-process backends).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    from .specs import HPC_KINDS

    if spec.kind in HPC_KINDS:
        from dask.utils import parse_bytes

        from .jobqueue import load_profile

        prof = load_profile(spec.kind, profile)
        return int(parse_bytes(prof.memory) // prof.workers_per_job)
    if spec.kind != "local":
        return None
    import logging

    from distributed.worker_memory import parse_memory_limit

    return parse_memory_limit("auto", 1, logger=logging.getLogger(__name__))
