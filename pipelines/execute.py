"""Running one pipeline on one run store: the loop shared by ``run``, sweeps and tests.

A run whose worker is lost (killed, out of memory) is continued from its newest
checkpoint on the workers that are left or restarted, up to ``retries`` times in a row
(a checkpoint saved since the previous loss starts the count again); any other
exception marks the run ``failed`` and propagates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .base import DONE, SCRATCH, Pipeline, Resumes, RunContext
from .progress import silent

#: How many times in a row (no checkpoint saved in between) a run is continued after a
#: lost worker before it is marked failed.
DEFAULT_RETRIES = 2


def execute(
    pipeline: Pipeline,
    config: BaseModel,
    run: Any,
    executor: Any,
    *,
    resume: bool = False,
    progress: Callable[..., Any] = silent,
    retries: int = DEFAULT_RETRIES,
    log: Callable[[str], Any] | None = None,
) -> dict:
    """Run ``pipeline`` with ``config`` into ``run`` and mark it complete.

    Parameters
    ----------
    pipeline : Pipeline
    config : pydantic.BaseModel
        Validated config of ``pipeline``.
    run : storage.RunStore
        The run's store, status ``running``.
    executor : cluster.Executor
        Open executor the pipeline's tasks and actors run on.
    resume : bool
        Continue from the run's newest checkpoint (``--resume``).
    progress : callable
        Progress-bar factory passed on in the :class:`RunContext`.
    retries : int
        Continuations allowed after a lost worker (``cluster.is_worker_lost``) in a
        row: a checkpoint saved since the previous loss starts the count again.
    log : callable, optional
        Receives one line per continuation; default writes to stderr.

    Returns
    -------
    dict
        The run's metrics, with the common ones the framework measures, one meaning in
        every pipeline:

        * ``wall_s``: seconds from the start of ``execute`` to the completion mark
          (setup, solve and output, continuations after a lost worker included);
        * ``setup_s``, ``solve_s``, ``output_s``: seconds in the pipeline's phases
          (:meth:`RunContext.enter`; ``run`` starts in ``setup``), summed over
          continuations;
        * ``worker_restarts`` (only when a worker was lost): the larger of the
          continuations from a checkpoint and the worker processes that left the
          cluster during the run, where the backend can tell (Dask can); workers of
          batch jobs renewed on time are not counted;
        * ``renewed_workers`` (only when there were some): workers of batch jobs
          retired during the run, their work handed to fresh jobs (``renew``).

        A resumed run records in its provenance what it restored (``restored``: the
        checkpoint step and the steps skipped), whether it completes or fails again.

        Once the run is complete, its checkpoints, scratch arrays (``work/``) and done
        markers (``done/``) are removed, unless the config has ``keep_work=true``.

    Raises
    ------
    Exception
        Whatever the pipeline raised, after marking the run ``failed``.
    """
    from tilegraph import cluster

    log = log or (lambda line: sys.stderr.write(line + "\n"))
    t0 = None
    restarts = 0
    in_a_row, newest = 0, _newest_checkpoint(run)
    workers_before, retired_before = executor.worker_ids(), executor.retired_ids()
    timings: dict[str, float] = {}  # phases summed over continuations
    resumes = Resumes()
    while True:
        ctx = RunContext(
            executor=executor,
            store=run,
            bars=progress,
            resume=resume,
            checkpoint_s=getattr(config, "checkpoint_s", None),
            timings=timings,
            resumes=resumes,
        )
        try:
            run_fn = pipeline.load_run()  # a deferred runner's imports: not in wall_s
            if t0 is None:
                t0 = time.perf_counter()
            ctx.enter("setup")
            try:
                metrics = dict(run_fn(config, ctx) or {})
            finally:
                ctx.close_phase()
            break
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI
            how = getattr(exc, "reason", None) or "KeyboardInterrupt"
            _record_restored(run, resume, resumes)
            run.mark_failed(f"interrupted ({how}); continue it with --resume {run.run_id}")
            raise
        except BaseException as exc:  # SystemExit from user code too: never left running
            lost = isinstance(exc, Exception) and cluster.is_worker_lost(exc)
            if lost:
                # a checkpoint saved since the last loss: the run progresses, and a long
                # run (batch jobs renewed for hours) may lose workers any number of times
                latest = _newest_checkpoint(run)
                ahead = latest is not None and (newest is None or latest > newest)
                in_a_row = 1 if ahead else in_a_row + 1
                newest = latest if ahead else newest
            retry = lost and in_a_row <= retries
            if retry and not executor.wait_for_workers():
                log(f"warning: run {run.run_id}: a worker was lost and none joined again")
                retry = False
            if retry:
                restarts += 1
                resume = True
                log(
                    f"warning: run {run.run_id}: a worker was lost ({type(exc).__name__}); "
                    f"continuing from the last checkpoint (retry {in_a_row} of {retries}"
                    + (f"; {restarts} in all)" if restarts > in_a_row else ")")
                )
                continue
            _record_restored(run, resume, resumes)
            run.mark_failed(exc)
            raise
    if resume:
        run.record_resume(resumes.checkpoint, resumes.skipped)
    if not getattr(config, "keep_work", False):
        # in this order: once the checkpoints are gone a resume starts over (and reaches
        # the same answer); scratch and done markers never outlive their checkpoints
        run.clear_checkpoints()
        run.delete(SCRATCH)
        run.delete(DONE)
    for key, seconds in timings.items():
        metrics.setdefault(key, seconds)
    metrics["wall_s"] = time.perf_counter() - t0
    # worker processes lost while the run ran: re-run pure tasks hide them otherwise
    retired = executor.retired_ids() - retired_before
    lost = len(workers_before - executor.worker_ids() - retired)
    if restarts or lost:
        metrics["worker_restarts"] = max(restarts, lost)
    if retired:
        metrics["renewed_workers"] = len(retired)
    run.mark_complete(metrics)
    return metrics


def _newest_checkpoint(run) -> int | None:
    """The newest checkpoint's step, or None (none, or the store cannot tell now: no
    progress is then assumed, and the error being handled is the one reported)."""
    try:
        steps = run.checkpoint_steps()
    except Exception:
        return None
    return max(steps) if steps else None


def _record_restored(run, resume: bool, resumes) -> None:
    """Record what a resume that failed restored, when it got as far as asking (never
    in the way of marking the run failed)."""
    if not (resume and resumes.looked):
        return
    try:
        run.record_resume(resumes.checkpoint, resumes.skipped)
    except Exception:  # the store failing too: the failure is what matters
        pass


__all__ = ["DEFAULT_RETRIES", "execute"]
