"""Picard sampling (ParaDiGMS) and its accelerated variant against the sequential sampler.

Part 1 (counts, exact model): on the 64-D, 4-component Gaussian mixture with its exact
noise prediction, a table over sampler x steps x window x tolerance of Picard
iterations, model evaluations and the max |parallel - sequential| for plain Picard and
for the accelerated variant (secant-linearised window sweep + extrapolated window
starts) at the same tolerance and at a matched error (the loosest tolerance of a ladder
whose error is no larger than plain Picard's), for triangular Anderson mixing alone, and
the published ParaDiGMS counts where there are some. The ratios are of iterations over
plain Picard's ("iters"): "i_acc/iters" the accelerated variant's at the same tolerance,
"i_acc@err/iters" its at a matched error, and "ceil(T/p)/iters" the floor: no variant
with window p can do better, since a window moves at most p steps per iteration.
"bound" is the accelerated sweep with the slots a sliding window moves onto started
from the model's own steps (the sequential sampler's continuation, bought with model
calls; the first window from copies of x_T, as everywhere else): what a perfect
extrapolation would give. Goals: plain <=
ParaDiGMS's count; accelerated <= 0.5x plain at the same error.

Part 2 (counts, learned model): the same table for the 256-256 ReLU denoiser that the
``digits`` preset trains on scikit-learn's digits, ``--learned-samples`` (8) samples;
"draft" starts all window slots (the first window's too) from the steps of a twin
network (same architecture and data, another seed), as a cheap draft model would.

Part 3 (wall clock): a model heavy enough that one call of the sequential sampler
takes >= 10 ms (an exact Gaussian mixture in ``--dim`` dimensions), the sequential
sampler on one model replica against Picard with the window's model call split over 1
and 2 worker replicas (``local:1``, ``local:2``; the window is cut into one piece per
worker). Two settings:

* ``throughput``: ``--wall-samples`` (64) samples and ``--components`` (8192)
  components; a call's cost grows in proportion to its rows, so a window of p steps
  costs about p sequential calls.
* ``latency`` (ParaDiGMS's setting): ``--latency-samples`` (1) sample and
  ``--latency-components`` (131072) components, 128 MiB of means read by every call. Like
  a neural network's weights, reading them dominates a call of a few rows, so a window
  of p steps costs little more than one step.

Goal: >= 1.5x on 2 workers. With ``--device cuda`` the replicas evaluate with CuPy on
the GPU. Every variant runs with ParaDiGMS's stopping test and with the guard
(``+guard``); a run whose error exceeds the smaller of 10 x tol and 3 x plain Picard's
error in the same rows (same setting, workers and window; that limit at least 0.1 x tol)
returned another sample and gets no speed-up ("WRONG", see ``wrong_limit``).

Part 4 (``--diffusers``; needs the ``torch`` extra): a small ``UNet2DModel`` (randomly
initialised, seeded; ``--unet-size`` pixels) in a DDPM pipeline directory: iterations,
model evaluations, error and wall time of diffusers' own sequential DDPM loop (the
speed-ups are against the faster of it and tilegraph's sequential sampler), its ParaDiGMS loop
(``tasks/picard/paradigms_peer.py``), tilegraph's plain and accelerated Picard (guard off
and on) in this process, against the sequential sampler; then the ``picard`` pipeline
with ``model=diffusers`` on ``local:1`` and ``local:2``, its speed-up against the same
sequential baseline as the rows above (the pipeline's own ``speedup_wall``, against its
own sequential run, is printed beside it and stored as ``speedup_vs_own_sequential``).
The same WRONG rule holds, against plain Picard at the pipeline's window. With
``--device cuda`` everything runs on the GPU: the network, diffusers' loop (as its
pipeline runs it, on the network's device) and tilegraph's samplers on CuPy samples fed
to the network through DLPack; the pipeline then runs on ``local-cuda`` with the loop on
the driver (``parallel=window``) and inside the replica (``parallel=batch``); the rows go
to ``diffusers_cuda`` in the JSON. Goals: plain <= diffusers' count; accelerated <= 0.5x
of it at the same error; wall time >= 1.5x faster than sequential on the GPU.

    python benchmarks/picard.py [--quick] [--samples 4] [--dim 128] [--components 8192]
                                [--wall-steps 200] [--settings throughput latency]
                                [--device cpu] [--skip-counts] [--skip-learned]
                                [--skip-wall] [--diffusers] [--trained-unet]

Part 5 (``--trained-unet``; the torch extra): the ``digits-unet`` preset's UNet, trained
here as the preset trains it (1-2 minutes), DDPM-100 and DDIM-100 without clipping, 16
samples, p in (8, 32), tol in (0.1, 0.01): iterations and max |parallel - sequential| of
diffusers' ParaDiGMS loop and of tilegraph's plain and accelerated Picard, guard off and
on; then DDIM, DPM-Solver++(2M) and UniPC at 20 and 50 steps, p in (8, all steps), tol
in (0.1, 0.02): plain Picard, guard off and on (diffusers has no parallel loop for these).

Results go to ``benchmarks/results/picard.json`` (``--out``). A part not run
(``--skip-counts``, ``--skip-learned``, ``--skip-wall``, a wall setting, device or part 4/5
not asked for) keeps an earlier run's rows, read from ``--out`` if it exists, else from
the default file; they are printed and stored marked "(stored)".
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import platform
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from argtypes import positive  # noqa: E402
from tilegraph import cluster  # noqa: E402
from tilegraph.pipelines.picard.model_spec import digits_data  # noqa: E402
from tilegraph.pipelines.picard.runner import WindowEvaluator  # noqa: E402
from tilegraph.pipelines.picard.worker import ModelReplica  # noqa: E402
from tilegraph.tasks.picard.models import GaussianMixture  # noqa: E402
from tilegraph.tasks.picard.samplers import draw_noise, model_steps, picard, sequential  # noqa: E402
from tilegraph.tasks.picard.schedules import make_schedule, make_steps  # noqa: E402
from tilegraph.tasks.picard.training import train_denoiser  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "picard.json"
#: ParaDiGMS's GMM figures from the reference (DDPM-1000): (window, tol) -> iterations
PUBLISHED = {
    ("ddpm", 1000, 96, 0.1): 35,
    ("ddpm", 1000, 96, 1e-3): 49,
    ("ddpm", 1000, 8, 0.1): 224,
}


LADDER = (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
ACCEL = {"secant": True, "extrapolate": True}
#: A run whose max |parallel - sequential| exceeds the smaller of WRONG x tol (data of
#: unit scale) and WRONG_PLAIN x plain Picard's error in the same rows (same setting,
#: workers and window; the limit at least WRONG_FLOOR x tol, so that a plain run that
#: happens to be exact does not fail the others on rounding) has returned another sample:
#: its wall-time ratio is not reported ("WRONG").
WRONG, WRONG_PLAIN, WRONG_FLOOR = 10.0, 3.0, 0.1
LEGEND = (
    "speedup: sequential wall_s / this wall_s; WRONG: max_err > min(10 x tol, 3 x plain "
    "picard's max_err at the same window, at least 0.1 x tol): no speed-up"
)


def wrong_limit(tol: float, plain_err: float | None) -> float:
    """The largest error a row may have and still get a speed-up (see ``WRONG``)."""
    if plain_err is None:
        return WRONG * tol
    return min(WRONG * tol, max(WRONG_PLAIN * plain_err, WRONG_FLOOR * tol))


#: the columns of parts 1 and 2: (header, width); the ratios are over plain Picard's
#: iterations ("iters")
COLS = (
    ("sampl", 5), ("steps", 5), ("p", 4), ("tol", 7), ("pub.", 5), ("iters", 6),
    ("evals", 6), ("err", 9), ("i_acc", 6), ("e_acc", 6), ("err_acc", 9),
    ("i_acc/iters", 11), ("i_acc@err", 9), ("i_acc@err/iters", 15), ("i_anderson", 10),
    ("ceil(T/p)/iters", 15), ("bound", 5), ("draft", 5),
)  # fmt: skip
HEADER = " ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(COLS))


def counts(samples: int, quick: bool, spread: float = 0.25) -> list[dict]:
    """Part 1: the exact mixture."""
    abar = make_schedule("linear", 1000)
    gmm = GaussianMixture.random(64, 4, spread, abar, mean_scale=1.0, seed=0)
    grid = [("ddpm", 1000), ("ddim", 200), ("ddpm", 100)]
    windows, tols = ([8, 96], [0.1, 1e-3]) if quick else ([8, 32, 96], [0.1, 1e-2, 1e-3])
    rows = []
    for kind, T in grid:
        st = make_steps(kind, abar, T)
        x_T, z = draw_noise(np.random.SeedSequence(0), samples, (64,), T)
        for p in windows:
            if p <= T:
                rows += compare(gmm.eps, kind, st, x_T, z, p, tols, published=True)
    return rows


def learned(samples: int, quick: bool) -> list[dict]:
    """Part 2: the denoiser trained on the digits (as the ``digits`` preset trains it), and
    a twin network (same architecture and data, another seed) as a draft model whose
    steps start all window slots."""
    abar = make_schedule("linear", 1000)
    data = digits_data()
    net, twin = (
        train_denoiser(data, abar, (256, 256), 20, 4, seed, sample_shape=(8, 8))[0]
        for seed in (0, 1)
    )
    grid = [("ddpm", 1000, 96), ("ddpm", 100, 32), ("ddim", 200, 32)]
    tols = [0.1, 1e-3] if quick else [0.1, 1e-2, 1e-3]
    rows = []
    for kind, T, p in grid:
        st = make_steps(kind, abar, T)
        x_T, z = draw_noise(np.random.SeedSequence(0), samples, (8, 8), T)
        rows += compare(net.eps, kind, st, x_T, z, p, tols, draft=twin.eps)
    return rows


def compare(eps, kind: str, st, x_T, z, p: int, tols, draft=None, published=False) -> list[dict]:
    """One table row per tolerance: plain Picard, the accelerated variant at the same
    tolerance and at a matched error (the loosest tolerance of a ladder whose error is no
    larger than plain Picard's), Anderson mixing alone, and the accelerated sweep with
    the slots a sliding window moves onto started from the model's own steps ("bound":
    the sequential sampler's continuation, which no extrapolation without model calls
    can beat; the first window from copies of x_T) and with all starts from a draft
    model's steps."""
    T = len(st.t)
    xs = sequential(eps, st, x_T, z)

    def err(r) -> float:
        return float(np.abs(r.x - xs).max())

    exact = model_steps(eps, st, z)

    def slid(x, lo, hi):
        # the first window from copies of x_T, as in every other column: perfect starts
        # there too would make the whole first guess the sequential trajectory
        return np.broadcast_to(x, (hi, *x.shape)) if lo == 0 else exact(x, lo, hi)

    ladder = [picard(eps, st, x_T, z, p, tol, **ACCEL) for tol in LADDER]
    rows = []
    for tol in tols:
        plain = picard(eps, st, x_T, z, p, tol)
        fast = picard(eps, st, x_T, z, p, tol, **ACCEL)
        anderson = picard(eps, st, x_T, z, p, tol, anderson=3)
        bound = picard(eps, st, x_T, z, p, tol, secant=True, extrapolate=slid)
        drafted = None
        if draft is not None:
            starts = model_steps(draft, st, z)
            drafted = picard(eps, st, x_T, z, p, tol, secant=True, extrapolate=starts)
        match = [r.iterations for r in ladder if err(r) <= err(plain)]
        rows.append(
            {
                "sampler": kind,
                "steps": T,
                "window": p,
                "tol": tol,
                "published": PUBLISHED.get((kind, T, p, tol)) if published else None,
                "iters": plain.iterations,
                "evals": plain.model_evals,
                "err": err(plain),
                "iters_acc": fast.iterations,
                "evals_acc": fast.model_evals,
                "err_acc": err(fast),
                "iters_acc_matched": match[0] if match else None,
                "iters_anderson": anderson.iterations,
                "iters_bound": bound.iterations,
                "err_bound": err(bound),
                "iters_draft": None if drafted is None else drafted.iterations,
                "err_draft": None if drafted is None else err(drafted),
                "ratio": fast.iterations / plain.iterations,
                "ratio_matched": match[0] / plain.iterations if match else None,
            }
        )
        print_row(rows[-1])
    return rows


def print_row(r, mark: str = ""):
    pub = "" if r["published"] is None else str(r["published"])
    m = r["iters_acc_matched"]
    rm = r["ratio_matched"]
    dr = r.get("iters_draft")
    cells = [r["sampler"], r["steps"], r["window"], f"{r['tol']:.0e}", pub, r["iters"],
             r["evals"], f"{r['err']:.1e}", r["iters_acc"], r["evals_acc"],
             f"{r['err_acc']:.1e}", f"{r['ratio']:.2f}", "-" if m is None else m,
             "-" if rm is None else f"{rm:.2f}", r["iters_anderson"],
             f"{floor_ratio(r):.2f}", r["iters_bound"], "-" if dr is None else dr]  # fmt: skip
    line = " ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, (_, w)) in enumerate(zip(cells, COLS, strict=True))
    )
    print(line + mark, flush=True)


def floor_ratio(r) -> float:
    """The fewest iterations any variant with this window can take, ``ceil(T / p)`` (a
    window moves at most p steps per iteration), as a fraction of plain Picard's."""
    return -(-r["steps"] // r["window"]) / r["iters"]


def heavy_spec(dim: int, components: int, abar) -> dict:
    """An exact Gaussian mixture with many components (its cost grows with ``K D``), as
    the picklable spec of a :class:`ModelReplica`."""
    g = GaussianMixture.random(dim, components, 0.15, abar, mean_scale=1.0, seed=0)
    return {"kind": "gmm", "means": g.means, "weights": g.weights, "spread": 0.15, "abar": abar}


def settings(args) -> list[tuple[str, int, int]]:
    """``(name, components, samples)`` of the wall-clock settings asked for."""
    known = {
        "throughput": (args.components, args.wall_samples),
        "latency": (args.latency_components, args.latency_samples),
    }
    return [(name, *known[name]) for name in args.settings]


def wall(args) -> list[dict]:
    abar = make_schedule("linear", 1000)
    T = args.wall_steps
    st = make_steps("ddpm", abar, T)
    rows = []
    for setting, components, n in settings(args):
        spec = heavy_spec(args.dim, components, abar)
        x_T, z = draw_noise(np.random.SeedSequence(1), n, (args.dim,), T)
        print(f"-- {setting}: {n} samples, {components} components")
        for workers in args.wall_workers:
            rows += wall_on(args, workers, setting, spec, st, x_T, z)
    return rows


def wall_on(args, workers: int, setting: str, spec: dict, st, x_T, z) -> list[dict]:
    """Part 3 rows of one setting on ``local:{workers}``."""
    n, T = x_T.shape[0], len(st.t)
    rows = []
    with cluster.connect(f"local:{workers}") as ex:
        actors = [ex.actor(ModelReplica, spec, args.device, spread=k) for k in range(workers)]
        # one call of the sequential sampler, on a replica
        t = np.zeros(n, dtype=np.int64)
        ex.gather(actors[0].eps(x_T, t))
        t0 = time.perf_counter()
        for _ in range(5):
            ex.gather(actors[0].eps(x_T, t))
        call_ms = (time.perf_counter() - t0) / 5 * 1e3
        # the baseline again on every cluster: the shared machine's load drifts
        xs, base = ex.gather(actors[0].sequential(st, x_T, z))
        common = {"setting": setting, "samples": n, "workers": workers, "call_ms": call_ms}
        rows.append(
            {
                **common,
                "method": "sequential",
                "window": 1,
                "iters": T,
                "evals": T,
                "wall_s": base,
                "speedup": 1.0,
                "err": 0.0,
                "median_err": 0.0,
            }
        )
        print_wall(rows[-1])
        variants = ((False, False), (True, False), (False, True), (True, True))
        # with one replica the loop can also run inside it, as the sequential sampler
        # does ("here"), with no round trip per iteration
        where = ("driver", "here") if workers == 1 else ("driver",)
        plain_err: dict[int, float] = {}  # window -> plain Picard's error (the WRONG rule)
        for p, (acc, guard), at in itertools.product(args.windows, variants, where):
            opts = {"guard": guard, **(ACCEL if acc else {})}
            if at == "here":
                x, its, evals, el = ex.gather(actors[0].picard(st, x_T, z, p, args.tol, opts))
            else:
                ev = WindowEvaluator(ex, actors, n, parts=workers)
                t0 = time.perf_counter()
                r = picard(ev, st, x_T, z, p, args.tol, **opts)
                el = time.perf_counter() - t0
                x, its, evals = r.x, r.iterations, r.model_evals
            err = float(np.abs(x - xs).max())
            if not (acc or guard) and at == "driver":  # plain Picard: the first of window p
                plain_err[p] = err
            limit = wrong_limit(args.tol, plain_err.get(p))
            rows.append(
                {
                    **common,
                    "method": ("accelerated" if acc else "picard")
                    + ("+guard" if guard else "")
                    + (" here" if at == "here" else ""),
                    "window": p,
                    "iters": its,
                    "evals": evals,
                    "wall_s": el,
                    # a speed-up at a wrong answer is none
                    "speedup": base / el if err <= limit else None,
                    "err": err,
                    "err_limit": limit,
                    "median_err": float(np.median(np.abs(x - xs).max(axis=1))),
                }
            )
            print_wall(rows[-1])
    return rows


def print_wall(w: dict, mark: str = "") -> None:
    err = "" if w["method"] == "sequential" else f"{w['err']:9.1e} {w['median_err']:9.1e}"
    speed = "  WRONG" if w["speedup"] is None else f"{w['speedup']:7.2f}"
    print(
        f"{w['method']:23} {w['workers']:3} {w['window']:4} {w['iters']:6} "
        f"{w['evals']:6} {w['wall_s']:8.2f} {speed} {err:>19} "
        f"{w['call_ms']:8.1f}{mark}",
        flush=True,
    )


def diffusers_part(args) -> list[dict]:
    """Part 4 rows: diffusers' ParaDiGMS loop and tilegraph's samplers on one UNet, in
    this process on ``args.device`` (with ``cuda`` the network, diffusers' buffers and
    tilegraph's CuPy samples are all on the GPU), then the ``picard`` pipeline."""
    import tempfile

    import diffusers
    import torch
    from tilegraph.tasks.devices import array_module, to_device, to_host
    from tilegraph.tasks.picard.paradigms_peer import paradigms_loop
    from tilegraph.tasks.picard.torch_models import TorchDenoiser

    dev = args.device
    xp = array_module(dev)

    def synced(fn, *a, **kw):  # fn(*a, **kw) and its wall time, the device's work done
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        if dev == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    torch.manual_seed(0)
    size = args.unet_size
    net = diffusers.UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ).eval().to(dev)  # fmt: skip
    T, n, shape = args.unet_steps, args.unet_samples, (1, size, size)
    sched = diffusers.DDPMParallelScheduler()
    sched.set_timesteps(T)
    abar = sched.alphas_cumprod.numpy().astype(np.float64)
    st = make_steps("ddpm", abar, T, clip=sched.config.clip_sample_range)
    model = TorchDenoiser(net, abar, shape, device=dev)
    x_T, z = draw_noise(np.random.SeedSequence(2), n, shape, T)
    x_T, z = x_T.astype(np.float32), z.astype(np.float32)
    x_Td, zd = to_device(xp, x_T), to_device(xp, z)
    for rows_per_call in sorted({n, *(min(p, T) * n for p in args.windows)}):  # warm up
        x = xp.zeros((rows_per_call, *shape), dtype=xp.float32)
        synced(model.eps, x, xp.zeros(rows_per_call, dtype=xp.int64))
    xs, ours = synced(sequential, model.eps, st, x_Td, zd)
    xs = np.asarray(to_host(xs))

    def diffusers_sequential():  # what DDPMPipeline's loop does (its own noise draws)
        sch = diffusers.DDPMScheduler.from_config(sched.config)
        sch.set_timesteps(T)
        x, g = torch.from_numpy(x_T).to(dev), torch.Generator(device=dev).manual_seed(0)
        with torch.inference_mode():
            for t in sch.timesteps:
                x = sch.step(net(x, t).sample, t, x, generator=g).prev_sample
        return x

    _, theirs = synced(diffusers_sequential)
    # the baseline: the faster sequential loop, tilegraph's or diffusers' own
    base = min(ours, theirs)
    rows = [{"method": "sequential", "window": 1, "iters": T, "evals": T, "wall_s": ours,
             "speedup": base / ours, "err": 0.0, "device": dev},
            {"method": "diffusers-sequential", "window": 1, "iters": T, "evals": T,
             "wall_s": theirs, "speedup": base / theirs, "err": None, "device": dev}]  # fmt: skip

    def row(method, p, its, evals, wall, x):  # the speed-up gated below (wrong_limit)
        err = float(np.abs(np.asarray(to_host(x)) - xs).max())
        rows.append({"method": method, "window": p, "iters": its, "evals": evals,
                     "wall_s": wall, "speedup": base / wall, "err": err,
                     "device": dev})  # fmt: skip

    def failed(method, p, error):  # a row that could not run (a device's one chance)
        print(f"{method} p={p}: failed: {type(error).__name__}: {error}", flush=True)
        rows.append({"method": method, "window": p, "status": f"failed: {error}", "device": dev})

    for p in args.windows:
        try:
            (x, its), wall = synced(paradigms_loop, net, sched, x_T, z, p, args.tol)
            row("diffusers-paradigms", p, its, None, wall, x)
        except Exception as error:
            failed("diffusers-paradigms", p, error)
        for acc, guard in ((False, False), (True, False), (False, True), (True, True)):
            kw = {"guard": guard, **(ACCEL if acc else {})}
            name = ("accelerated" if acc else "picard") + ("+guard" if guard else "")
            try:
                r, wall = synced(picard, model.eps, st, x_Td, zd, p, args.tol, **kw)
                row(name, p, r.iterations, r.model_evals, wall, r.x)
            except Exception as error:
                failed(name, p, error)
    # the WRONG rule: against plain Picard's error at the same window, in this process
    plain_err = {r["window"]: r["err"] for r in rows if r["method"] == "picard" and "err" in r}
    for r in rows[2:]:  # not the two sequential baselines
        if r.get("err") is not None:
            r["err_limit"] = wrong_limit(args.tol, plain_err.get(r["window"]))
            if r["err"] > r["err_limit"]:
                r["speedup"] = None
    for r in rows:
        if "status" in r:
            continue
        speed = "WRONG" if r["speedup"] is None else f"{r['speedup']:.2f}"
        err = "(own noise)" if r["err"] is None else f"{r['err']:9.1e}"
        print(f"{r['method']:20} {r['window']:4} {r['iters']:6} {str(r['evals']):>6} "
              f"{r['wall_s']:8.2f} {speed:>7} {err:>9}", flush=True)  # fmt: skip
    # the pipeline: on the CPU the model on 1 and 2 worker replicas (the window's call
    # split over them); on a GPU one replica, the loop driven from here (window) and
    # inside the replica (batch)
    import tilegraph

    if dev == "cuda":
        runs = [("local-cuda", "window"), ("local-cuda", "batch")]
    else:
        runs = [("local:1", "window"), ("local:2", "window")]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/ddpm"
        pipe = diffusers.DDPMPipeline(unet=net.to("cpu"), scheduler=diffusers.DDPMScheduler())
        pipe.save_pretrained(path)
        for spec, parallel in runs:
            sets = ["model=diffusers", f"diffusers.path={path}", f"steps={T}",
                    f"window={max(args.windows)}", f"tol={args.tol}", f"n_samples={n}",
                    f"batch_size={n}", "dtype=float32", "guard=false", f"device={dev}",
                    f"parallel={parallel}"]  # fmt: skip
            try:
                m = tilegraph.run("picard", sets=sets, cluster=spec, store=f"{tmp}/r").metrics
            except Exception as error:
                failed(f"pipeline {spec} {parallel}", max(args.windows), error)
                continue
            # against the same sequential baseline as the rows above (the faster of
            # tilegraph's and diffusers' loops in this process), gated by the same rule
            err = m["max_abs_diff_vs_sequential"]
            limit = wrong_limit(args.tol, plain_err.get(max(args.windows)))
            speed = base / m["sampling_s"] if err <= limit else None
            rows.append({"method": f"pipeline {spec} {parallel}", "window": max(args.windows),
                         "iters": m["iterations"], "evals": m["model_evals"],
                         "wall_s": m["sampling_s"], "speedup": speed, "err": err,
                         "err_limit": limit, "speedup_vs_own_sequential": m["speedup_wall"],
                         "device": dev})  # fmt: skip
            shown = "WRONG" if speed is None else f"{speed:.2f}"
            print(f"pipeline {spec} {parallel}: sampling {m['sampling_s']:.2f} s, speed-up "
                  f"{shown} (baseline {base:.2f} s as above; against the pipeline's own "
                  f"sequential run of {m['sequential_wall_s']:.2f} s: "
                  f"{m['speedup_wall']:.2f}), {m['iterations']} iterations, "
                  f"err {err:.1e}")  # fmt: skip
    return rows


def trained_unet_part() -> list[dict]:
    """Part 5 rows: diffusers' ParaDiGMS loop against tilegraph's plain and accelerated
    Picard, guard off and on, on the ``digits-unet`` preset's UNet (trained here as the
    preset trains it), DDPM-100 and DDIM-100 without clipping, 16 samples: iterations and
    max |parallel - sequential| per sampler, window and tolerance."""
    import diffusers
    from tilegraph.pipelines.picard.config import DigitsUNetConfig
    from tilegraph.tasks.picard.paradigms_peer import paradigms_loop
    from tilegraph.tasks.picard.torch_models import TorchDenoiser
    from tilegraph.tasks.picard.unet_training import build_unet, train_unet

    u = DigitsUNetConfig()
    train_abar = make_schedule("linear", 1000)  # the preset's (float64, as it trains)
    t0 = time.perf_counter()
    with threadpool_limits(limits=None):
        config, weights, losses = train_unet(
            digits_data(), train_abar, tuple(u.channels), u.iterations, u.batch, u.lr, u.seed
        )
    print(f"trained in {time.perf_counter() - t0:.0f} s, final loss {losses[-1]:.3f}")
    net = build_unet(config, weights)
    T, n, shape = 100, 16, (1, 8, 8)
    rows = []
    for kind in ("ddpm", "ddim"):
        cls = getattr(diffusers, f"{kind.upper()}ParallelScheduler")
        sched = cls(clip_sample=False)
        sched.set_timesteps(T)
        abar = sched.alphas_cumprod.numpy().astype(np.float64)
        st = make_steps(kind, abar, T)
        model = TorchDenoiser(net, abar, shape)
        x_T, z = draw_noise(np.random.SeedSequence(3), n, shape, T)
        x_T, z = x_T.astype(np.float32), z.astype(np.float32)
        xs = sequential(model.eps, st, x_T, z)  # TorchDenoiser runs in inference mode
        for p in (8, 32):
            for tol in (0.1, 0.01):
                x, its = paradigms_loop(net, sched, x_T, z, p, tol)
                row = {"sampler": f"{kind.upper()}-{T}", "window": p, "tol": tol,
                       "diffusers": [its, float(np.abs(x - xs).max())]}  # fmt: skip
                for acc, guard in ((False, False), (True, False), (False, True), (True, True)):
                    kw = {"guard": guard, **(ACCEL if acc else {})}
                    r = picard(model.eps, st, x_T, z, p, tol, **kw)
                    name = ("accelerated" if acc else "plain") + (" + guard" if guard else "")
                    row[name] = [r.iterations, float(np.abs(r.x - xs).max())]
                rows.append(row)
                cells = " ".join(
                    f"{v[0]:4d} ({v[1]:.2g})" for k, v in row.items() if isinstance(v, list)
                )
                print(f"{row['sampler']:9} {p:3d} {tol:5.2f}  {cells}", flush=True)
    # the few-step samplers diffusers' users sample with (no peer: diffusers has no
    # parallel DPM-Solver or UniPC): plain Picard, guard off and on
    print("sampler     p   tol  plain (err)  plain + guard (err)  [sequential steps]")
    abar = sched.alphas_cumprod.numpy().astype(np.float64)
    model = TorchDenoiser(net, abar, shape)
    for kind, T in itertools.product(("ddim", "dpmpp2m", "unipc"), (20, 50)):
        st = make_steps(kind, abar, T)
        x_T, z = draw_noise(np.random.SeedSequence(3), n, shape, T)
        x_T, z = x_T.astype(np.float32), z.astype(np.float32)
        xs = sequential(model.eps, st, x_T, z)
        for p in (8, T):
            for tol in (0.1, 0.02):
                row = {"sampler": f"{kind}-{T}", "window": p, "tol": tol}
                for guard in (False, True):
                    r = picard(model.eps, st, x_T, z, p, tol, guard=guard)
                    row["plain + guard" if guard else "plain"] = [
                        r.iterations,
                        float(np.abs(r.x - xs).max()),
                    ]
                rows.append(row)
                cells = " ".join(
                    f"{v[0]:4d} ({v[1]:.2g})" for k, v in row.items() if isinstance(v, list)
                )
                print(f"{row['sampler']:11} {p:3d} {tol:5.2f}  {cells}  [{T}]", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer windows and tolerances (default: off)"
    )
    ap.add_argument(
        "--samples", type=positive(int), default=4, help="samples per batch (counts) (%(default)s)"
    )
    ap.add_argument(
        "--spread",
        type=positive(float),
        default=0.25,
        help="mixture component std of the counts part (the reference does not give it; "
        "0.25 reproduces the published counts and errors, see docs/picard.md) (%(default)s)",
    )
    ap.add_argument(
        "--dim", type=positive(int), default=128, help="GMM dimension (wall clock) (%(default)s)"
    )
    ap.add_argument(
        "--components",
        type=positive(int),
        default=8192,
        help="GMM components (throughput) (%(default)s)",
    )
    ap.add_argument(
        "--wall-steps",
        type=positive(int),
        default=200,
        help="DDPM steps (wall clock) (%(default)s)",
    )
    ap.add_argument(
        "--wall-samples", type=positive(int), default=64, help="samples (throughput) (%(default)s)"
    )
    ap.add_argument(
        "--latency-components",
        type=positive(int),
        default=131072,
        help="GMM components (latency) (%(default)s)",
    )
    ap.add_argument(
        "--latency-samples", type=positive(int), default=1, help="samples (latency) (%(default)s)"
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        choices=["throughput", "latency"],
        default=["throughput", "latency"],
        help="wall-clock settings to run (default: %(default)s)",
    )
    ap.add_argument(
        "--windows",
        type=positive(int),
        nargs="+",
        default=[8, 32],
        help="windows p (parts 3 and 4) (default: %(default)s)",
    )
    ap.add_argument(
        "--tol", type=positive(float), default=0.1, help="tolerance (wall clock) (%(default)s)"
    )
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="parts 3, 4 (%(default)s)"
    )
    ap.add_argument(
        "--wall-workers",
        type=positive(int),
        nargs="+",
        default=[1, 2],
        help="model replicas (part 3) (default: %(default)s)",
    )
    ap.add_argument(
        "--skip-wall", action="store_true", help="no part 3 (keeps the stored one; default: off)"
    )
    ap.add_argument(
        "--skip-counts", action="store_true", help="no part 1 (keeps the stored one; default: off)"
    )
    ap.add_argument(
        "--skip-learned",
        action="store_true",
        help="no part 2 (keeps the stored one; default: off)",
    )
    ap.add_argument(
        "--learned-samples", type=positive(int), default=8, help="samples (part 2) (%(default)s)"
    )
    ap.add_argument(
        "--diffusers", action="store_true", help="part 4 (the torch extra; default: off)"
    )
    ap.add_argument(
        "--trained-unet",
        action="store_true",
        help="part 5 (the torch extra; trains 1-2 min; default: off)",
    )
    ap.add_argument(
        "--unet-size",
        type=positive(int),
        default=16,
        help="UNet image side (part 4) (%(default)s)",
    )
    ap.add_argument(
        "--unet-steps", type=positive(int), default=100, help="DDPM steps (part 4) (%(default)s)"
    )
    ap.add_argument(
        "--unet-samples", type=positive(int), default=4, help="samples (part 4) (%(default)s)"
    )
    ap.add_argument("--out", default=str(RESULTS), help="JSON written (%(default)s)")
    args = ap.parse_args(argv)

    target = pathlib.Path(args.out)
    src = target if target.exists() else RESULTS
    stored = json.loads(src.read_text()) if src.exists() else {}
    kept: dict[str, str] = {}  # part -> where its rows came from (an earlier run)

    def keep(part: str, title: str, rows, printer=None, header=None):
        """An earlier run's rows of ``part``: marked and printed "(stored)"."""
        if not rows:
            print(f"\n{title}: not run here, none stored")
            return rows
        kept[part] = str(src)
        for r in rows:
            if isinstance(r, dict):
                r["stored"] = True
        print(f"\n{title}: (stored) {len(rows)} rows of an earlier run, from {src}")
        if printer is not None:
            try:
                print(header)
                for r in rows:
                    printer(r, " (stored)")
            except (KeyError, TypeError, ValueError):  # an older file's rows
                print("(stored rows of another format: not printed)")
        return rows

    if args.skip_counts:
        rows = keep("counts", "Part 1", stored.get("counts"), print_row, HEADER)
    else:
        print("Part 1: 64-D GMM (exact eps), iterations / model evals / max|parallel - seq.|")
        print(HEADER)
        with threadpool_limits(limits=1, user_api="blas"):
            rows = counts(args.samples, args.quick, args.spread)
    out = {
        "host": platform.node(),
        "python": platform.python_version(),
        "args": vars(args),
        "counts": rows,
    }
    if args.skip_learned:
        out["learned"] = keep("learned", "Part 2", stored.get("learned"), print_row, HEADER)
    else:
        print("\nPart 2: denoiser learned on the digits (256-256 ReLU MLP), draft: its twin")
        print(HEADER)
        with threadpool_limits(limits=1, user_api="blas"):
            out["learned"] = learned(args.learned_samples, args.quick)
    wall_header = (
        "method                  wrk    p  iters  evals   wall_s speedup   max_err  med_err"
        "  call_ms"
    )
    if args.skip_wall:  # what an earlier run measured, if any
        out["wall"] = keep("wall", "Part 3", stored.get("wall"), print_wall, wall_header)
    else:
        print(
            f"\nPart 3: wall clock, {args.dim}-D GMM, DDPM-{args.wall_steps}, "
            f"tol={args.tol}, device={args.device}"
        )
        print(LEGEND)
        print(wall_header)
        measured = wall(args)
        # keep what an earlier run measured for the settings not run this time
        old = [r for r in stored.get("wall") or [] if r.get("setting") not in args.settings]
        if old:
            keep("wall", "Part 3, the other settings", old, print_wall, wall_header)
        out["wall"] = old + measured
    part4 = "diffusers" if args.device == "cpu" else "diffusers_cuda"
    if args.diffusers:
        print(f"\nPart 4: UNet2DModel {args.unet_size}x{args.unet_size}, DDPM-{args.unet_steps}, "
              f"tol={args.tol}, {args.unet_samples} samples, device={args.device}")  # fmt: skip
        print(LEGEND)
        print("method               p   iters  evals   wall_s speedup       err")
        out[part4] = diffusers_part(args)
    # the other device's rows stay as an earlier run measured them
    for key in sorted({"diffusers", "diffusers_cuda"} - ({part4} if args.diffusers else set())):
        out[key] = keep(key, f"Part 4 ({key})", stored.get(key))
    if args.trained_unet:
        print("\nPart 5: the digits-unet preset's UNet, iterations (max |parallel - seq.|)")
        print("sampler     p   tol  diffusers      plain          accelerated    "
              "plain + guard  accelerated + guard")  # fmt: skip
        out["trained_unet"] = trained_unet_part()
    else:
        out["trained_unet"] = keep("trained_unet", "Part 5", stored.get("trained_unet"))
    out["stored_parts"] = kept
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
