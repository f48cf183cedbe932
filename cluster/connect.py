"""`connect`: turn a spec string into a running `Executor`."""

from __future__ import annotations

from .base import Executor
from .specs import HPC_KINDS, SPECS_HELP, Spec, SpecError, parse_spec

__all__ = ["connect"]


def connect(spec: str | Spec | None = "local") -> Executor:
    """Start (or connect to) the executor a cluster spec names.

    Parameters
    ----------
    spec : str, Spec or None
        See `cluster.SPECS_HELP`; ``None`` means ``"local"`` (a Dask `LocalCluster` with
        ``min(os.cpu_count(), 4)`` worker processes).

    Returns
    -------
    Executor
        A context manager; ``close()`` shuts down what it started.

    Raises
    ------
    SpecError
        An unknown spec, or one this version cannot run (batch schedulers, ``local-cuda``
        without dask-cuda).
    """
    parsed = parse_spec(spec)
    if parsed.kind in HPC_KINDS:
        raise SpecError(
            f"cluster spec {parsed.kind!r} needs the 'hpc' extra and is not implemented yet "
            f"in this version; use one of: {SPECS_HELP}"
        )
    if parsed.backend == "sync":
        from .inprocess import SyncExecutor

        return SyncExecutor(parsed)
    if parsed.backend == "threads":
        from .inprocess import ThreadsExecutor

        return ThreadsExecutor(parsed)
    if parsed.backend == "dask":
        from .dask_backend import DaskExecutor

        return DaskExecutor(parsed)
    from .ray_backend import RayExecutor

    return RayExecutor(parsed)
