"""Picard at the step counts diffusers' users sample with: which tolerances keep every
sample in its component.

On the ``quick`` preset's mixture (64-D, 4 components, spread 0.15), ``--seeds`` x 4
batches of 16 samples, each sampler (``ddim``, ``dpmpp2m``, ``unipc``) at each step count
and window, Picard with the guard over a ladder of tolerances: how many samples end
nearer another component's mean than the sequential sampler's sample ("flips"), the mean
iterations per batch and the largest |Picard - sequential| of the batches without a
flip. No speed-up is measured (the model is the exact mixture, in this process).

    python benchmarks/picard_few_steps.py                      # about 70 s on 1 core
    python benchmarks/picard_few_steps.py --steps 50 --windows 16 --tols 0.02,0.01

Results go to ``benchmarks/results/picard_few_steps.json`` (``--out``); the table is in
docs/picard.md ("Few steps").
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from argtypes import positive  # noqa: E402
from tilegraph.tasks.picard.models import GaussianMixture  # noqa: E402
from tilegraph.tasks.picard.samplers import draw_noise, picard, sequential  # noqa: E402
from tilegraph.tasks.picard.schedules import make_schedule, make_steps  # noqa: E402

SAMPLERS = ("ddim", "dpmpp2m", "unipc")


def numbers(kind):
    def parse(text: str):
        return [positive(kind)(v) for v in text.split(",") if v]

    parse.__name__ = f"comma-separated positive {kind.__name__}s"
    return parse


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=numbers(int), default=[20, 50, 100, 200])
    ap.add_argument("--windows", type=numbers(int), default=[8, 16, 32])
    ap.add_argument("--tols", type=numbers(float), default=[0.1, 0.05, 0.02, 0.01, 0.005])
    ap.add_argument("--seeds", type=positive(int), default=5)
    ap.add_argument("--out", type=pathlib.Path,
                    default=REPO / "benchmarks" / "results" / "picard_few_steps.json")  # fmt: skip
    args = ap.parse_args(argv)

    abar = make_schedule("linear", 1000)
    gmm = GaussianMixture.random(64, 4, 0.15, abar, mean_scale=1.0, seed=0)

    def component(x):
        return np.argmin(((x[:, None, :] - gmm.means[None]) ** 2).sum(-1), axis=1)

    rows = []
    print("sampler   T    p  " + "  ".join(f"tol={t:<12g}" for t in args.tols))
    print("                  (flips / mean iterations / max error without a flip)")
    for T in args.steps:
        for kind in SAMPLERS:
            st = make_steps(kind, abar, T)
            batches = []
            for seed in range(args.seeds):
                for batch in range(4):
                    ss = np.random.SeedSequence(seed, spawn_key=(batch,))
                    x_T, z = draw_noise(ss, 16, (64,), T)
                    xs = sequential(gmm.eps, st, x_T, z)
                    batches.append((x_T, z, xs, component(xs)))
            for p in args.windows:
                if p > T:
                    continue
                cells = []
                for tol in args.tols:
                    flips, its, errs = 0, [], []
                    for x_T, z, xs, want in batches:
                        r = picard(gmm.eps, st, x_T, z, p, tol, guard=True)
                        wrong = int(np.sum(component(r.x) != want))
                        flips += wrong
                        its.append(r.iterations)
                        if not wrong:
                            errs.append(float(np.abs(r.x - xs).max()))
                    row = {"sampler": kind, "steps": T, "window": p, "tol": tol,
                           "flips": flips, "samples": 16 * len(batches),
                           "mean_iterations": float(np.mean(its)),
                           "max_error_no_flip": max(errs) if errs else None}  # fmt: skip
                    rows.append(row)
                    err = f"{max(errs):.0e}" if errs else "-"
                    cells.append(f"{flips:2d} / {np.mean(its):5.1f} / {err:5s}")
                print(f"{kind:8s} {T:4d} {p:3d}  " + "  ".join(cells), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
            "seeds": args.seeds}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
