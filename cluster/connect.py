"""`connect`: turn a spec string into a running `Executor`."""

from __future__ import annotations

from .base import Executor
from .specs import Spec, parse_spec

__all__ = ["connect"]


def connect(spec: str | Spec | None = "local", *, profile: str | None = None) -> Executor:
    """Start (or connect to) the executor a cluster spec names.

    Parameters
    ----------
    spec : str, Spec or None
        See `cluster.SPECS_HELP`; ``None`` means ``"local"`` (a Dask `LocalCluster` with
        ``min(os.cpu_count(), 4)`` worker processes).
    profile : str, optional
        Batch-scheduler profile file for ``slurm``/``pbs``/``sge``/``lsf`` (see
        `cluster.jobqueue`); found in the usual places when not given.

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
    if parsed.backend == "sync":
        from .inprocess import SyncExecutor

        return SyncExecutor(parsed)
    if parsed.backend == "threads":
        from .inprocess import ThreadsExecutor

        return ThreadsExecutor(parsed)
    if parsed.backend == "dask":
        from .dask_backend import DaskExecutor

        return DaskExecutor(parsed, profile_path=profile)
    from .ray_backend import RayExecutor

    return RayExecutor(parsed)
