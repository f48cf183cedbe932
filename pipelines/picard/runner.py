"""``run`` of the picard pipeline: model replicas, sample batches, results, metrics.

Plan: one :class:`~tilegraph.pipelines.picard.worker.ModelReplica` actor per worker. Sample
batches are independent: batch ``i`` draws its start points and all its noise from
``SeedSequence(seed, spawn_key=(i,))`` and owns chunk ``i`` of every result array.
With ``parallel="window"`` (latency: one batch as fast as possible) the driver runs the
batches one after another and splits every window's model call into ``eval_parts``
pieces by a fixed rule (whole steps, so the answer does not depend on the number of
workers) spread over the replicas. With ``parallel="batch"`` (throughput) each batch is
one task on a replica, which runs the same code with its model calls local and writes
the batch's chunks itself. A batch is done once its ``result/iterations``
entry is written (the last write of the batch), which is what ``--resume`` looks at.
"""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.devices import slots
from tilegraph.tasks.picard.samplers import HISTORY_COLUMNS

from ..base import RunContext
from .batch import call_in_pieces, sample_batch
from .config import PicardConfig
from .model_spec import DIGITS_SHAPE, model_spec
from .plot import summary_figure
from .worker import ModelReplica

BATCH_INT = ("iterations", "model_evals")
BATCH_FLOAT = ("wall_s", "sequential_wall_s", "max_abs_diff")
BATCH_LONG = {
    "iterations": "Picard iterations (batched model calls) of the batch",
    "model_evals": "model evaluations per sample of the batch (the windows' lengths)",
    "wall_s": "wall time of the batch's Picard sampling (the metric wall_s is the run's)",
    "sequential_wall_s": "wall time of the batch's sequential sampling, same noise",
    "max_abs_diff": "largest |Picard sample - sequential sample| in the batch",
}
HISTORY_LONG = {
    "begin": "first step of the window",
    "end": "end of the window (steps begin .. end-1)",
    "first_unconverged": "offset in the window of the first slot whose change exceeds tol",
    "advance": "steps finished by the iteration (how far the window slides)",
    "max_error": "largest RMS change over the window in units of each slot's noise "
    "standard deviation (a slot is converged below tol)",
}
UNITS = {"wall_s": "s", "sequential_wall_s": "s", "begin": "step", "end": "step",
         "first_unconverged": "step", "advance": "step"}  # fmt: skip


class WindowEvaluator:
    """``eps_fn`` for :func:`tilegraph.tasks.picard.samplers.picard` that spreads each window's
    model call over the replicas.

    The ``L n`` rows of a window (step-major, ``n`` samples per step) are cut into
    ``min(parts, L)`` runs of whole steps (:func:`~tilegraph.pipelines.picard.batch.split_steps`),
    piece ``k`` goes to replica ``k mod len(actors)``, and the pieces come back in order.
    A one-step window is one piece of ``n`` rows, exactly what the sequential sampler
    evaluates.
    """

    def __init__(self, executor, actors, n: int, parts: int, labels=None):
        self.executor, self.actors, self.n, self.parts = executor, actors, n, parts
        self.labels = labels  # (n,) classes of the samples, or None

    def __call__(self, x, t):
        def spread(args):
            actors = self.actors
            return self.executor.gather(
                [actors[k % len(actors)].eps(*a) for k, a in enumerate(args)]
            )

        return call_in_pieces(x, t, self.n, self.parts, self.labels, spread)


def _layout(cfg: PicardConfig, info: dict):
    if cfg.model == "digits":
        return DIGITS_SHAPE, ("row", "col")
    if cfg.model in ("diffusers", "digits-unet"):
        return tuple(info.pop("sample_shape")), ("channel", "row", "col")
    if cfg.model == "custom":
        shape = tuple(info.pop("sample_shape"))
        return shape, tuple(f"axis_{k}" for k in range(len(shape)))
    return (cfg.gmm.dim,), ("feature",)


def _arrays(store, cfg: PicardConfig, sample_shape, dims, image_shape=None) -> dict:
    """The run's result arrays (as a resumed run left them, or new); ``image_shape``:
    ``(C, H, W)`` of the decoded images of a latent-diffusion directory."""
    nb, bs, T = cfg.n_batches, cfg.batch_size, cfg.steps
    shape = (cfg.n_samples, *sample_shape)
    chunks = (bs, *sample_shape)
    specs = {
        "result/samples": (shape, chunks, "float64", ("sample", *dims), np.nan, "Picard samples"),
    }
    if image_shape is not None:
        names = ["image"] + (["sequential_image"] if cfg.compare_sequential else [])
        for name in names:
            whose = "Picard" if name == "image" else "sequential sampler's"
            specs[f"result/{name}"] = (
                (cfg.n_samples, *image_shape),
                (bs, *image_shape),
                "float64",
                ("sample", "image_channel", "image_row", "image_col"),
                np.nan,
                f"{whose} samples decoded by the pipeline's autoencoder, in [0, 1]",
            )
    if cfg.class_labels is not None:
        specs["result/label"] = ((cfg.n_samples,), (bs,), "int64", ("sample",), -1, "class")
    if cfg.compare_sequential:
        specs["result/sequential"] = (
            shape,
            chunks,
            "float64",
            ("sample", *dims),
            np.nan,
            "sequential sampler, same noise",
        )
    for name in BATCH_INT:
        specs[f"result/{name}"] = ((nb,), (1,), "int64", ("batch",), 0, BATCH_LONG[name])
    for name in BATCH_FLOAT:
        specs[f"result/{name}"] = ((nb,), (1,), "float64", ("batch",), np.nan, BATCH_LONG[name])
    for name in HISTORY_COLUMNS:
        specs[f"history/{name}"] = (
            (nb, T),
            (1, T),
            "float64",
            ("batch", "iteration"),
            np.nan,
            HISTORY_LONG[name],
        )
    out = {}
    for path, (shp, ch, dt, dn, fill, long) in specs.items():
        attrs = {"long_name": long, "units": UNITS.get(path.rsplit("/", 1)[-1], "1")}
        out[path] = store.require_array(
            path, shp, ch, dt, dimension_names=dn, fill_value=fill, attrs=attrs
        )
    # the index coordinates, so that xarray shows what each position is
    coords = {
        "result/sample": (cfg.n_samples, "sample (batch = sample // batch_size)"),
        "result/batch": (nb, "batch of batch_size samples, one Zarr chunk"),
        "history/batch": (nb, "batch of batch_size samples"),
        "history/iteration": (T, "Picard iteration (the values past a batch's last are NaN)"),
    }
    for path, (n, long) in coords.items():
        ref = store.require_array(
            path, (n,), (n,), "int64", dimension_names=(path.rsplit("/", 1)[-1],),
            fill_value=0, attrs={"long_name": long, "units": "1"},
        )  # fmt: skip
        ref.write((slice(None),), np.arange(n, dtype=np.int64))
    return out


#: A batch whose samples end more than this many tolerances (at most 1.0) from the
#: sequential sampler's is likely to hold another sample, not a rounding of it: on the
#: mixtures of docs/picard.md converged batches end within 0.2-4 tol, samples that
#: changed component 3-4.4 away (calibrated there only).
WRONG_TOLS = 10.0

#: Bits of the coarsest precision in play below which differences count as rounding.
ROUNDING_EPS = 100.0

#: Machine epsilon of the network precisions numpy lacks.
_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def rounding_eps(cfg: PicardConfig) -> float:
    """Machine epsilon of the coarsest precision a run computes in: its samples' and,
    for a diffusers directory, its network's."""
    names = [cfg.dtype] + ([cfg.diffusers.dtype] if cfg.model == "diffusers" else [])
    return max(_EPS.get(n) or float(np.finfo(n).eps) for n in names)


def another_sample(diffs: np.ndarray, tol: float, eps: float = 0.0) -> str | None:
    """The warning for batches whose Picard samples are likely another sample than the
    sequential sampler's (``diffs``: each batch's max |Picard - sequential|, shape
    (batches,), in the samples' units), or None. The limit is ``min(10 tol, 1)``, but
    at least ``100 eps``: the rounding of samples of unit scale in precision ``eps``."""
    limit = max(min(WRONG_TOLS * tol, 1.0), ROUNDING_EPS * eps)
    bad = np.flatnonzero(diffs > limit)
    if not bad.size:
        return None
    which = ", ".join(str(int(b)) for b in bad[:8]) + (", ..." if bad.size > 8 else "")
    return (
        f"batch(es) {which}: Picard's samples end up to {float(diffs.max()):.3g} from the "
        f"sequential sampler's on the same noise, more than {limit:.3g} (min(10 tol, 1), "
        f"at least 100 x the precision's epsilon): likely another sample, not a rounding "
        f"of it; take a smaller tol (docs/picard.md, 'Error control')"
    )


def run(cfg: PicardConfig, ctx: RunContext) -> dict:
    """Sample ``n_samples`` by Picard iteration; write ``result`` (samples, the sequential
    samples, with a latent-diffusion directory both decoded into images, per-batch
    counts), ``history`` (per-iteration convergence) and
    ``summary.png`` into ``ctx.store``.

    Returns
    -------
    dict
        Headline metrics (``PIPELINE.metric_names``; ``sampling_s``: the Picard sampling of all
        batches, ``sequential_wall_s``: the sequential sampler's) plus
        ``mean_iterations``, ``speedup_wall``, ``batches``, ``workers`` and, for
        digits, ``train_loss``. ``wall_s`` and the phases are the framework's.
    """
    ex, store = ctx.executor, ctx.store
    abar, steps = cfg.sampler_steps()
    spec, info = model_spec(cfg, abar, ctx)
    sample_shape, dims = _layout(cfg, info)
    decoder = spec.get("decoder")
    arr = _arrays(store, cfg, sample_shape, dims, decoder and tuple(decoder["image_shape"]))

    gpus = 1 if cfg.device == "cuda" else 0
    n_act = slots(ex, cfg.device)
    actors = ex.actors(ModelReplica, [((spec, cfg.device), {})] * n_act, gpus=gpus)

    T = len(steps)
    todo = [int(i) for i in np.flatnonzero(arr["result/iterations"].read() == 0)]
    ctx.enter("solve")
    desc = f"picard {cfg.sampler}-{T}"
    with ctx.progress(cfg.n_batches, desc, done=cfg.n_batches - len(todo)) as bar:
        if cfg.parallel == "batch":
            # every batch is one task on a replica, which writes the batch's own chunks
            futs = [
                actors[k % n_act].run_batch(i, cfg, steps, sample_shape, arr)
                for k, i in enumerate(todo)
            ]
            for _ in ex.as_completed(futs):
                bar.update(1)
            ex.gather(futs)  # raise the first error, if any
        else:
            saved = ctx.restore(valid=lambda c: c.scalars.get("batch") in todo)
            for i in todo:
                n = min(cfg.batch_size, cfg.n_samples - i * cfg.batch_size)
                state = None
                if saved is not None and saved.scalars["batch"] == i:
                    state = {**saved.arrays, **saved.scalars}

                def checkpoint(st, i=i):
                    arrays = {k: v for k, v in st.items() if not np.isscalar(v)}
                    scalars = {k: int(v) for k, v in st.items() if np.isscalar(v)}
                    step = i * (T + 1) + scalars["it"]
                    return ctx.checkpoint(step, arrays, {**scalars, "batch": i}, keep=2)

                def show(it, b, e, i=i):
                    bar.set_postfix_str(f"batch {i}: iteration {it}, step {b}/{T}")

                labels = cfg.batch_labels(i)

                def run_sequential(steps, x_T, z, labels=labels):
                    return ex.gather(actors[0].sequential(steps, x_T, z, labels))

                def decode(x):
                    return ex.gather(actors[0].decode(x))

                sample_batch(
                    i,
                    cfg,
                    steps,
                    sample_shape,
                    WindowEvaluator(ex, actors, n, cfg.eval_parts, labels),
                    run_sequential,
                    arr,
                    show,
                    checkpoint=None if cfg.checkpoint_s is None else checkpoint,
                    state=state,
                    decode=decode if decoder else None,
                )
                bar.update(1)

    ctx.enter("output")
    its = arr["result/iterations"].read()
    evals = arr["result/model_evals"].read()
    walls = arr["result/wall_s"].read()
    metrics = {
        "iterations": int(its.max()),
        "mean_iterations": float(its.mean()),
        "model_evals": int(evals.max()),
        "sequential_steps": T,
        "sampling_s": float(walls.sum()),
        "batches": cfg.n_batches,
        "workers": n_act,
    }
    if cfg.compare_sequential:
        seq_walls = arr["result/sequential_wall_s"].read()
        diffs = arr["result/max_abs_diff"].read()
        metrics["max_abs_diff_vs_sequential"] = float(diffs.max())
        metrics["sequential_wall_s"] = float(seq_walls.sum())
        metrics["speedup_wall"] = float(seq_walls.sum() / walls.sum())
        wrong = another_sample(diffs, cfg.tol, rounding_eps(cfg))
        if wrong:
            ctx.warn(wrong)
            metrics["warnings"] = [wrong]
    metrics.update(info)

    ctx.save_figure(summary_figure(store, cfg, spec, abar))
    return metrics
