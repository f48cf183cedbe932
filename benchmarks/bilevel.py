"""bilevel: iterations and wall time to reach 1e-2 relative distance to x* on the quick
problem, over blocks per iteration I, batch size B and methods, measured in one run.

Two parts:

1. Iterations to ``|x - x*| <= 1e-2 |x*|`` for every (method, I, B): the iteration is
   deterministic given the seed and identical on every backend (the pipeline's tests
   check this bit for bit), so it is counted with the one-process reference
   (:func:`tilegraph.tasks.bilevel.sequential.run_sequential`) at the quick preset's settings
   (upper step ``eta * I / m``, halved every 60 epochs). The count is a first passage
   and varies several-fold with the sampling seed (at I = 1, B = 32: 1661 to > 10000
   over 8 seeds), so every cell runs ``--seeds`` sampling seeds and reports the median;
   ratios are of medians, against I = 1.
2. Wall seconds per iteration of the pipeline itself (tasks on a local Dask cluster,
   block state in Zarr) for each I on 1 and 2 workers, and the wall time to the target
   estimated as iterations x seconds per iteration. On each cluster the I values take
   turns, ``--repeats`` rounds; the median is reported, and ratios are of medians
   against I = 1 on the same cluster.

    python benchmarks/bilevel.py                  # the full grid
    python benchmarks/bilevel.py --short          # I in {1, 10}, B = 8, two methods
    python benchmarks/bilevel.py --parts heavy    # only the heavy-block timing

3. The same timing with heavier blocks (v1, dim_y = 200, B = 256, m = 20: an
   eigendecomposition and solves of 200 x 200 per block), where a task's compute is
   not dwarfed by its Zarr and scheduling overhead.

Goals (issue 6): >= 5x fewer iterations at I = 10 than at I = 1; seconds per iteration
that do not grow with I up to the worker count. Writes ``benchmarks/results/bilevel.json``
(``--out``). A part not run keeps an earlier run's rows (read from ``--out`` if it exists,
else from ``benchmarks/results/bilevel.json``); with ``--parts timing`` the estimated time
to the target uses those stored iteration counts and is marked "(stored)".
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from argtypes import positive_int

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("bsvrb-v1", "bsvrb-v2", "sgd", "f2sa")
RESULTS = ROOT / "benchmarks" / "results" / "bilevel.json"


def iterations(method: str, I: int, B: int, cap: int, seeds: int) -> dict:
    """Iterations to the target for sampling seeds ``0 .. seeds - 1`` (the problem's data
    seed fixed): the median (a run that never gets there counts as infinite), min, max
    and how many got there."""
    from tilegraph.pipelines.bilevel.config import BilevelConfig
    from tilegraph.tasks.bilevel.sequential import run_sequential

    counts, finals = [], []
    t0 = time.perf_counter()
    for seed in range(seeds):
        cfg = BilevelConfig.model_validate(
            {"method": method, "blocks_per_iter": I, "batch": B, "max_iter": cap, "seed": seed}
        )
        p = cfg.problem.build()
        _, dist = run_sequential(
            p, method, cfg.steps(), cap, I, B, cfg.upper_step, cfg.beta, seed, p.x_star, cfg.tol
        )
        reached = bool(dist) and dist[-1] <= cfg.tol
        counts.append(len(dist) if reached else None)
        finals.append(float(dist[-1]))
    med = float(np.median([np.inf if c is None else c for c in counts]))
    got = [c for c in counts if c is not None]
    return {
        "method": method,
        "I": I,
        "B": B,
        "iterations": None if np.isinf(med) else med,
        "iterations_all": counts,
        "min": min(got) if got else None,
        "max": max(got) if len(got) == len(counts) else None,
        "reached": len(got),
        "seeds": seeds,
        "final_rel_dist": finals,
        "seq_s": time.perf_counter() - t0,
    }


HEAVY = [
    "method=bsvrb-v1",
    "problem.m=20",
    "problem.dim_y=200",
    "problem.dim_x=20",
    "problem.n_lower=1024",
    "batch=256",
    "eta=0.05",
]


def seconds_per_iteration(ex, I: int, n_iter: int, method: str, extra=()) -> float:
    """Wall seconds per iteration of one pipeline run on the executor ``ex``."""
    import tilegraph

    sets = [
        f"blocks_per_iter={I}",
        f"max_iter={n_iter}",
        "tol=null",
        f"method={method}",
        f"eval_every={n_iter + 1}",
        "checkpoint_s=null",
        *extra,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        m = tilegraph.run("bilevel", sets=sets, cluster=ex, store=tmp).metrics
    return m["s_per_iter"]


def timed(workers: int, Is, repeats: int, n_iter: int, method: str, extra=()) -> dict:
    """Seconds per iteration for every I on one ``local:{workers}`` cluster, the I values
    interleaved ``repeats`` times (so that a slow spell of the machine hits them all):
    ``{I: [s, ...]}``."""
    from tilegraph import cluster

    out = {I: [] for I in Is}
    with cluster.connect(f"local:{workers}") as ex:
        seconds_per_iteration(ex, Is[0], 2, method, extra)  # warm the workers up
        for _ in range(repeats):
            for I in Is:
                out[I].append(seconds_per_iteration(ex, I, n_iter, method, extra))
    return out


def timing_rows(
    workers: int, per_I: dict, its: dict | None = None, stored: bool = False
) -> list[dict]:
    """Median seconds per iteration, spread and ratio against I = 1; printed. ``stored``:
    the iteration counts ``its`` come from an earlier run (marked "(stored)")."""
    rows = []
    base = float(np.median(per_I[min(per_I)]))
    for I, ss in per_I.items():
        med = float(np.median(ss))
        n = (its or {}).get(I)
        rows.append(
            {
                "workers": workers,
                "I": I,
                "s_per_iter": med,
                "s_per_iter_all": ss,
                "ratio_vs_I1": med / base,
                "est_s_to_target": n * med if n else None,
                **({"iterations_stored": True} if stored and its is not None else {}),
            }
        )
        mark = " (stored)" if stored else ""
        est = "" if its is None else f" {n * med:15.1f}{mark}" if n else f" {'-':>15}"
        print(
            f"{workers:>7} {I:>3} {med:8.4f} {min(ss):8.4f} {max(ss):8.4f} "
            f"{med / base:12.2f}x{est}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--short", action="store_true", help="I in {1, 10}, B = 8, v2 and sgd (default: off)"
    )
    ap.add_argument(
        "--cap", type=positive_int, default=20000, help="iterations at most per run (%(default)s)"
    )
    ap.add_argument(
        "--seeds",
        type=positive_int,
        default=5,
        help="sampling seeds per (method, I, B) (%(default)s)",
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods of the iterations part (default: %(default)s)",
    )
    ap.add_argument(
        "--batches",
        type=positive_int,
        nargs="+",
        default=[1, 8, 32],
        help="batch sizes B (default: %(default)s)",
    )
    ap.add_argument(
        "--timing-iters",
        type=positive_int,
        default=40,
        help="iterations per timing run (%(default)s)",
    )
    ap.add_argument(
        "--workers",
        type=positive_int,
        nargs="+",
        default=[1, 2],
        help="local:W clusters of the timing parts (default: %(default)s)",
    )
    ap.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timing runs per (workers, I) (%(default)s)",
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["iterations", "timing", "heavy"],
        choices=["iterations", "timing", "heavy"],
        help="parts to run; the others keep the stored rows (default: %(default)s)",
    )
    ap.add_argument(
        "--out",
        default=str(RESULTS),
        help="JSON written (and read for the parts not run, falling back to the default "
        "file) (%(default)s)",
    )
    args = ap.parse_args()
    Is = (1, 10) if args.short else (1, 2, 5, 10)
    Bs = (8,) if args.short else tuple(args.batches)
    methods = ("bsvrb-v2", "sgd") if args.short else tuple(args.methods)
    from tilegraph.pipelines.bilevel.config import BilevelConfig

    for method, I, B in itertools.product(methods, Is, Bs):  # every config, before any run
        try:
            BilevelConfig.model_validate(
                {"method": method, "blocks_per_iter": I, "batch": B, "max_iter": args.cap}
            )
        except ValueError as exc:  # pydantic's ValidationError is one
            ap.error(f"method={method} I={I} B={B}: {str(exc).splitlines()[-1].strip()}")

    out = Path(args.out)
    src = out if out.exists() else RESULTS
    result = json.loads(src.read_text()) if src.exists() else {}
    rows = result.get("iterations", []) if "iterations" not in args.parts else []
    its_stored = "iterations" not in args.parts and bool(rows)

    def show(v):  # an iteration count, or more than the cap
        return f">{args.cap}" if v is None else f"{v:.0f}"

    if "iterations" in args.parts:
        print(f"iterations to 1e-2, median over sampling seeds 0..{args.seeds - 1}")
        print(
            f"{'method':9} {'I':>3} {'B':>3} {'median':>8} {'min':>6} {'max':>6} "
            f"{'reached':>7} {'iters I=1/I':>11}"
        )
    for method in methods if "iterations" in args.parts else ():
        for B in Bs:
            base = None
            for I in Is:
                r = iterations(method, I, B, args.cap, args.seeds)
                if I == 1:
                    base = r["iterations"]
                it = r["iterations"]
                r["ratio_vs_I1"] = (base / it) if (base and it) else None
                rows.append(r)
                ratio = f"{r['ratio_vs_I1']:.1f}x" if r["ratio_vs_I1"] else "-"

                print(
                    f"{method:9} {I:>3} {B:>3} {show(it):>8} {show(r['min']):>6} "
                    f"{show(r['max']):>6} {r['reached']:>4}/{r['seeds']:<2} {ratio:>11}",
                    flush=True,
                )

    timing = result.get("timing", []) if "timing" not in args.parts else []
    its = {r["I"]: r["iterations"] for r in rows if r["method"] == "bsvrb-v2" and r["B"] == 8}
    header = f"{'workers':>7} {'I':>3} {'median':>8} {'min':>8} {'max':>8} {'s/iter I/I=1':>13}"
    if "timing" in args.parts:
        print(f"\nseconds per iteration (v2, B = 8; {args.repeats} interleaved runs each)")
        if its_stored:
            print(f"(stored): est. s to 1e-2 uses the iteration counts stored in {src}")
        print(f"{header} {'est. s to 1e-2':>15}")
    for w in args.workers if "timing" in args.parts else ():
        per_I = timed(w, Is, args.repeats, args.timing_iters, "bsvrb-v2")
        timing += timing_rows(w, per_I, its, stored=its_stored)

    heavy = result.get("heavy", []) if "heavy" not in args.parts else []
    if "heavy" in args.parts:
        print(f"\nheavy blocks ({' '.join(HEAVY)})")
        print(header)
    for w in args.workers if "heavy" in args.parts else ():
        n_iter = max(4, args.timing_iters // 4)
        per_I = timed(w, Is, args.repeats, n_iter, "bsvrb-v1", HEAVY)
        heavy += timing_rows(w, per_I)

    out.parent.mkdir(parents=True, exist_ok=True)
    stored = [k for k in ("iterations", "timing", "heavy") if k not in args.parts]
    result = {"iterations": rows, "timing": timing, "heavy": heavy, "args": vars(args)}
    result["stored_parts"] = {k: str(src) for k in stored}  # kept from an earlier run
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
