"""One sample batch of a picard run, from its seed to its chunks in the run store.

The same function runs on the driver (``parallel="window"``: every window's model call
spread over the replicas) and inside a replica (``parallel="batch"``: the batch is one
task on one worker, its model calls local). Either way the window's rows are cut into
the same pieces (:func:`split_steps`), so both give the same bits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tilegraph.tasks.picard.samplers import (
    HISTORY_COLUMNS,
    ModelOutputError,
    checked_eps,
    draw_noise,
    picard,
)


def model_label(model: str, custom: str | None = None, path: str | None = None) -> str:
    """A model as error messages name it (``the model mymodel:factory``): ``model`` as in
    the config (``gmm``, ``digits``, ``custom``, ``diffusers`` ...), with the factory's
    import path or the pipeline directory."""
    if model == "custom":
        return f"the model {custom}"
    if model == "diffusers":
        return f"the network in {path}"
    return f"the {model} model"


def split_steps(n_rows: int, n: int, parts: int) -> list[slice]:
    """Row ranges of the pieces of a window call: ``n_rows = L n`` rows (step-major,
    ``n`` samples per step) cut into ``min(parts, L)`` runs of whole steps."""
    L = n_rows // n
    groups = np.array_split(np.arange(L), min(parts, L))
    return [slice(int(g[0]) * n, (int(g[-1]) + 1) * n) for g in groups]


def call_in_pieces(x, t, n: int, parts: int, labels, evaluate: Callable):
    """One window call of ``x`` (``L n`` rows, step-major) at timesteps ``t``, cut into
    :func:`split_steps` pieces.

    ``evaluate(args)`` gets one ``(x_piece, t_piece, labels_piece or None)`` per piece and
    returns their noise predictions in order (one replica after another, or spread over
    several). A piece of another shape than its input cannot be put together: the error
    says which (the sampler checks the values of the whole call).
    """
    rows = None if labels is None else np.tile(labels, x.shape[0] // n)
    pieces = split_steps(x.shape[0], n, parts)
    outs = evaluate([(x[sl], t[sl], None if rows is None else rows[sl]) for sl in pieces])
    return np.concatenate(
        [
            checked_eps(out, x[sl].shape, np.asarray(t[sl])[::n], finite=False)
            for sl, out in zip(pieces, outs, strict=True)
        ],
        axis=0,
    )


def sample_batch(
    i: int,
    cfg,
    steps,
    sample_shape: tuple[int, ...],
    eps_fn: Callable,
    run_sequential: Callable,
    arrays: dict,
    progress: Callable | None = None,
    checkpoint: Callable | None = None,
    state: dict | None = None,
    decode: Callable | None = None,
) -> int:
    """Sample batch ``i`` and write its chunks; return its Picard iterations.

    Parameters
    ----------
    i : int
        Batch index: samples ``i * batch_size ..``, chunk ``i`` of every result array.
    cfg : PicardConfig
    steps : tasks.picard.schedules.SamplerSteps
    sample_shape : tuple of int
    eps_fn : callable
        ``eps_fn(x, t)`` of a whole window (see :func:`tilegraph.tasks.picard.samplers.picard`).
    run_sequential : callable
        ``run_sequential(steps, x_T, z) -> (samples, wall seconds)``.
    arrays : dict of str to storage ArrayRef
        The run's ``result/*`` and ``history/*`` arrays.
    progress : callable, optional
        ``progress(iteration, begin, end)`` after each Picard iteration.
    checkpoint : callable, optional
        ``checkpoint(state)`` after every Picard iteration; it saves ``state`` when a
        checkpoint is due (the time it takes is not counted in ``wall_s``).
    state : dict, optional
        A state saved by ``checkpoint`` for this batch: continue from it.
    decode : callable, optional
        ``decode(latents) -> images``: the samples (and the sequential ones) decoded into
        ``result/image`` (``result/sequential_image``) before the batch counts as done
        (not counted in ``wall_s``).
    """
    T, bs = len(steps), cfg.batch_size
    lo, hi = i * bs, min((i + 1) * bs, cfg.n_samples)
    x_T, z = draw_noise(np.random.SeedSequence(cfg.seed, spawn_key=(i,)), hi - lo, sample_shape, T)
    x_T, z = x_T.astype(cfg.dtype), z.astype(cfg.dtype)  # drawn in float64 either way
    ckpt_s = [0.0]

    def timed_checkpoint(st):
        c0 = time.perf_counter()
        checkpoint(st)
        ckpt_s[0] += time.perf_counter() - c0

    t0 = time.perf_counter()
    try:
        res = picard(
            eps_fn,
            steps,
            x_T,
            z,
            cfg.window,
            cfg.tol,
            anderson=cfg.anderson_memory,
            extrapolate=cfg.accelerate,
            secant=cfg.accelerate,
            guard=cfg.guard,
            callback=progress,
            checkpoint=timed_checkpoint if checkpoint is not None else None,
            checkpoint_every=1,
            state=state,
        )
    except ModelOutputError as exc:
        raise exc.naming(model_label(cfg.model, cfg.custom, cfg.diffusers.path)) from None
    wall = time.perf_counter() - t0 - ckpt_s[0]  # sampling time, without checkpoints
    region = (slice(lo, hi),) + (slice(None),) * len(sample_shape)
    arrays["result/samples"].write(region, res.x)
    images = (slice(lo, hi),) + (slice(None),) * 3
    if decode is not None:
        arrays["result/image"].write(images, decode(res.x))
    if "result/label" in arrays:
        arrays["result/label"].write((slice(lo, hi),), cfg.batch_labels(i))
    seq_wall = diff = np.nan
    if cfg.compare_sequential:
        xs, seq_wall = run_sequential(steps, x_T, z)
        diff = float(np.max(np.abs(res.x - xs)))
        arrays["result/sequential"].write(region, xs)
        if decode is not None:
            arrays["result/sequential_image"].write(images, decode(xs))
    rows = np.full((T, len(HISTORY_COLUMNS)), np.nan)
    rows[: res.iterations] = res.history
    one = (slice(i, i + 1),)
    for c, name in enumerate(HISTORY_COLUMNS):
        arrays[f"history/{name}"].write((*one, slice(None)), rows[None, :, c])
    for name, value in (("wall_s", wall), ("sequential_wall_s", seq_wall), ("max_abs_diff", diff)):
        arrays[f"result/{name}"].write(one, np.asarray([value]))
    arrays["result/model_evals"].write(one, np.asarray([res.model_evals]))
    # the last write of a batch: from now on it counts as done
    arrays["result/iterations"].write(one, np.asarray([res.iterations]))
    return res.iterations
