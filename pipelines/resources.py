"""Will the run fit? Its estimate (:class:`~tilegraph.pipelines.base.Estimate`) against
the memory each process can use, checked before anything is written."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pydantic import BaseModel

from .base import Estimate, Pipeline
from .config import ConfigError

__all__ = ["available_memory", "check_fits", "describe", "estimate", "fmt_bytes"]

#: A process may plan to use at most this share of the memory it can see.
HEADROOM = 0.8


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} PiB"


def available_memory() -> int:
    """Memory this process can still allocate: available RAM, or the cgroup's limit."""
    import psutil

    avail = int(psutil.virtual_memory().available)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            used = psutil.Process(os.getpid()).memory_info().rss
            avail = min(avail, max(int(text) - used, 0))
    return avail


def estimate(pipeline: Pipeline, config: BaseModel, workers: int) -> Estimate | None:
    """The pipeline's estimate for ``config`` on ``workers`` workers (None if it has none)."""
    if pipeline.estimate is None:
        return None
    return pipeline.estimate(config, max(int(workers), 1))


def describe(est: Estimate, workers: int) -> list[str]:
    """Lines for ``--dry-run``."""
    return [
        f"driver memory (peak)  {fmt_bytes(est.driver_bytes)}",
        f"worker memory (peak)  {fmt_bytes(est.worker_bytes)} each, {workers} worker(s)"
        + (
            f" (at least {fmt_bytes(est.worker_floor_bytes)}: less where memory is short)"
            if est.worker_floor_bytes is not None and est.worker_floor_bytes < est.worker_bytes
            else ""
        ),
        f"store size            {fmt_bytes(est.store_bytes)}",
    ]


def check_fits(
    est: Estimate | None,
    *,
    driver_limit: int | None = None,
    worker_limit: int | None = None,
    where: str = "",
) -> None:
    """Refuse a run that would not fit.

    Parameters
    ----------
    est : Estimate or None
    driver_limit, worker_limit : int, optional
        Bytes the driver / one worker may use; None skips that check.
    where : str
        The cluster spec, for the message.

    Raises
    ------
    ConfigError
        One line: which process, how much it needs and has, the field to change and
        the alternative.
    """
    if est is None:
        return
    checks: list[tuple[str, int, Any]] = [
        ("the driver", est.driver_bytes, driver_limit),
        (f"each worker of {where}" if where else "each worker", est.worker_bytes, worker_limit),
    ]
    for who, need, limit in checks:
        if limit is not None and need > HEADROOM * limit:
            raise ConfigError(
                f"config field '{est.field}': the run needs about {fmt_bytes(need)} in "
                f"{who}, which can use {fmt_bytes(limit)} (plans keep {1 - HEADROOM:.0%} "
                f"of it free); lower {est.field}, or {est.alternative}"
            )


def check_expected(
    est: Estimate | None, spec: Any, *, whole: bool = False, profile: str | None = None
) -> None:
    """Before connecting (``--dry-run``): one worker's peak against the memory limit
    the workers of ``spec`` will get, where it is known beforehand (``local:N``; a batch
    scheduler's from its ``profile``); the check :func:`check_executor` makes once
    connected. ``whole``: a sweep point, whose
    driver and worker peaks are one worker's (:func:`check_point`)."""
    from tilegraph import cluster

    limit = cluster.expected_memory_limit(spec, profile)
    if est is None or limit is None:
        return
    if whole:
        est = Estimate(0, est.driver_bytes + est.worker_bytes, est.store_bytes, est.field,
                       est.alternative)  # fmt: skip
    elif est.worker_floor_bytes is not None:
        est = dataclasses.replace(est, worker_bytes=est.worker_floor_bytes)
    check_fits(est, worker_limit=limit, where=str(spec))


def check_size(est: Estimate | None, config: Any) -> None:
    """Refuse sizes no machine has (above 1 PiB per process): a typo, not a run."""
    if est is None:
        return
    for need in (est.driver_bytes, est.worker_bytes):
        if need > 2**50:
            raise ConfigError(
                f"config field '{est.field}': the run would need about {fmt_bytes(need)} "
                f"in one process, more than any machine has; lower {est.field}"
            )


def check_point(est: Estimate | None, executor: Any) -> None:
    """A sweep point, whose whole run runs in one worker process: :func:`check_executor`
    with its driver's and its worker's peaks as one worker's. ``est`` is the estimate
    for one worker (the sweep's largest point)."""
    if est is not None:
        together = est.driver_bytes + est.worker_bytes
        one = Estimate(0, together, est.store_bytes, est.field, est.alternative)
        check_executor(one, executor)


def check_executor(est: Estimate | None, executor: Any) -> None:
    """After connecting: one worker's peak against the memory limit of the executor's
    workers; for in-process backends, driver and workers together against this machine.
    A run that adapts to short memory (``worker_floor_bytes``) is checked at its floor."""
    if est is None:
        return
    if est.worker_floor_bytes is not None:
        est = dataclasses.replace(est, worker_bytes=est.worker_floor_bytes)
    if executor.backend in ("sync", "threads"):
        together = est.driver_bytes + est.worker_bytes * max(executor.n_workers, 1)
        check_fits(
            Estimate(together, 0, est.store_bytes, est.field, est.alternative),
            driver_limit=available_memory(),
        )
        return
    check_fits(est, worker_limit=executor.memory_limit, where=executor.spec)
