"""Parallel speed-up on 1, 2, 4, 8 … CPU workers, measured in one run (issue 21).

For every case below and every worker count ``W`` the script runs the pipeline through
``tilegraph.run`` on a ``local:W`` Dask cluster (started once per round and worker
count, outside the timed runs), ``--rounds`` rounds with the order of the worker counts
reversed every other round (a shared machine's speed drifts), and reports the median
time of each and its ratio against 1 worker. Every worker is one process with one BLAS
thread (``OMP_NUM_THREADS=1``), so W workers use W cores.

Cases (``--cases``; the sizes are chosen so that one run on 1 worker takes seconds):

* ``ttn-paper``: the ``paper`` preset (d = 16 long-range Ising, r_max = 40) up to
  ``--ttn-T``; time = the steps alone (the history's ``step_s``), so that the exact-reference
  and output phases do not dilute the ratio.
* ``ttn-d64``: the same Hamiltonian on d = 64 sites (binary tree of 127 nodes), r_max 16,
  up to ``--ttn-d64-T``.
* Both ttn cases split the tree for the workers (``--ttn-depth auto``, the default):
  ``subtree_depth = ceil(log2 W)`` (at least 1), so that W workers get W subtrees and
  the inner nodes above them are held by one branch worker per child of the root; the
  depth changes where the work runs, not its bits. Each ttn line shows the driver's
  busy seconds and the largest branch's and subtree's. ``--ttn-depth 1`` gives the
  one-subtree-per-child-of-the-root schedule of 2026-12-04's table.
* ``bilevel-I<k>``: seconds per iteration (``s_per_iter``) of BSVRB v1 on heavy blocks
  (dim_y = 200, batch 256, m = 20) at I = k blocks per iteration, for each k of ``--Is``.
* ``domain-split-var``: the variable-coefficient problem (2-D, ``--ds-n``, 1024²),
  ``krylov``, its default box solver, ``--ds-boxes`` boxes per block (8: 16 blocks of
  256², so that 8 workers have blocks to take; 2026-12-04's table ran 511² with block
  LU in 4 blocks, which 8 workers could not use). On 2 cores (2026-12-06) the 16 blocks
  cost 6 % more than the default 4 on one worker (2.78 s against 2.63 s); time = the
  solve phase (setup and output excluded).

    python benchmarks/scaling.py                            # 1 2 4 8 workers, 3 rounds
    python benchmarks/scaling.py --workers 1 2 --rounds 1 --small   # a smoke run

In round 0 every cluster first runs a small untimed run of every case (``warm_spec``),
so that its workers have imported and warmed each pipeline's kernels. The final metrics
of every case (its pipeline's ``metric_names`` but timings and worker counts) must agree
across the worker counts: the table's last column gives their largest relative
difference, and a WARNING line names a case where it exceeds ``--agree`` (1e-6).

Goals (issue 21): ttn >= 1.6x on 2 and >= 4x on 8 workers. Writes
``benchmarks/results/scaling.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from argtypes import positive

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]


def depth(text: str) -> str:
    """argparse type of ``--ttn-depth``: ``auto`` or an integer >= 1."""
    if text == "auto":
        return text
    try:
        if int(text) >= 1:
            return str(int(text))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"want auto or an integer >= 1 (got {text!r})")


def cases(args) -> dict[str, tuple[str | None, list[str], str]]:
    """``{case: (preset, --set items, what is timed)}``."""
    out = {
        "ttn-paper": ("paper", [f"T={args.ttn_T}", "checkpoint_s=null"], "steps"),
        "ttn-d64": (
            "paper",
            ["d=64", f"T={args.ttn_d64_T}", "r_max=16", "checkpoint_s=null"],
            "steps",
        ),
        "domain-split-var": (
            None,
            [
                "d=2",
                "problem.kind=variable",
                f"n_fine={args.ds_n}",
                f"n_coarse={args.ds_nc}",
                f"boxes_per_block={args.ds_boxes}",
                "solver=krylov",
                "tol=1e-8",
                "checkpoint_s=null",
            ],
            "solve",
        ),  # fmt: skip
    }
    heavy = ["method=bsvrb-v1", "problem.m=20", "problem.dim_y=200", "problem.dim_x=20",
             "problem.n_lower=1024", "batch=256", "eta=0.05", "tol=null",
             f"max_iter={args.bilevel_iters}", f"eval_every={args.bilevel_iters + 1}",
             "checkpoint_s=null"]  # fmt: skip
    for k in args.Is:
        out[f"bilevel-I{k}"] = (None, [*heavy, f"blocks_per_iter={k}"], "s_per_iter")
    if args.small:  # a smoke run of the script itself
        out["ttn-paper"][1][:] = ["T=0.02", "d=8", "checkpoint_s=null"]
        out["ttn-d64"][1][:] = ["T=0.01", "d=16", "r_max=8", "checkpoint_s=null"]
        out["domain-split-var"][1][2:5] = ["n_fine=64", "n_coarse=8", "boxes_per_block=4"]
    return out


def pipeline_of(case: str) -> str:
    return case.split("-I")[0] if case.startswith("bilevel") else case.rsplit("-", 1)[0]


def run_once(ex, case: str, spec, root: str) -> dict:
    """One run of ``case`` on the open executor: its metrics plus ``time_s``."""
    import tilegraph

    preset, sets, what = spec
    name = pipeline_of(case)
    t0 = time.perf_counter()
    run = tilegraph.run(name, preset=preset, sets=sets, cluster=ex, store=root)
    wall = time.perf_counter() - t0
    m = {k: v for k, v in run.metrics.items() if isinstance(v, int | float | str | bool)}
    for k, v in run.metrics.items():  # per-worker seconds (ttn's busy lists): the largest
        if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
            m[f"{k}_max"] = max(v)
    m["process_wall_s"] = wall
    if what == "steps":
        m["time_s"] = float(run.open_dataset("history").step_s.sum())
    elif what == "s_per_iter":
        m["time_s"] = float(m["s_per_iter"])
    else:  # the solve phase: setup (assembly, factorizations) and output excluded
        m["time_s"] = float(m["solve_s"])
    return m


def warm_spec(case: str, spec):
    """A small untimed run of ``case`` (same pipeline and kind, tiny sizes): its workers
    import and warm the pipeline's kernels before the timed runs."""
    preset, sets, what = spec
    if case.startswith("bilevel"):
        small = ["max_iter=2"]
    elif case.startswith("ttn"):
        small = ["T=0.02", "d=8", "r_max=8"]
    else:  # domain-split
        small = ["n_fine=64", "n_coarse=8", "boxes_per_block=4"]
    return preset, [*sets, *small], what


def agreement(got: dict, case: str, metric_names) -> float:
    """The largest relative difference, across worker counts (and rounds), of the case's
    final metrics: the pipeline's ``metric_names`` but timings and worker counts."""
    worst = 0.0
    runs = [m for ms in got[case].values() for m in ms]
    for k in metric_names:
        if k.endswith("_s") or k in ("workers", "time_s"):
            continue
        vals = [m.get(k) for m in runs]
        if not vals or not all(isinstance(v, int | float) for v in vals):
            continue
        lo, hi = min(vals), max(vals)
        scale = max(abs(lo), abs(hi), 1e-300)
        worst = max(worst, (hi - lo) / scale) if math.isfinite(hi - lo) else math.inf
    return worst


def with_depth(spec, case: str, workers: int, depth: str):
    """A ttn case's spec with its ``subtree_depth`` for ``workers`` (see the module doc)."""
    if not case.startswith("ttn"):
        return spec
    d = max(1, math.ceil(math.log2(workers))) if depth == "auto" else int(depth)
    preset, sets, what = spec
    return preset, [*sets, f"subtree_depth={d}"], what


def table(rows: list[list], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    from tilegraph import cluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--workers",
        type=positive(int),
        nargs="+",
        default=[1, 2, 4, 8],
        help="worker counts, the first the baseline (default: %(default)s)",
    )
    ap.add_argument("--rounds", type=positive(int), default=3, help="rounds (%(default)s)")
    ap.add_argument("--cases", default=None, help="comma-separated (default: all)")
    ap.add_argument(
        "--ttn-T", type=positive(float), default=0.2, help="final time of ttn-paper (%(default)s)"
    )
    ap.add_argument(
        "--ttn-d64-T",
        type=positive(float),
        default=0.05,
        help="final time of ttn-d64 (%(default)s)",
    )
    ap.add_argument(
        "--ttn-depth",
        type=depth,
        default="auto",
        help="subtree_depth of ttn: auto or N (%(default)s)",
    )
    ap.add_argument(
        "--Is",
        type=positive(int),
        nargs="+",
        default=[1, 8],
        help="bilevel I values (default: %(default)s)",
    )
    ap.add_argument(
        "--bilevel-iters",
        type=positive(int),
        default=20,
        help="iterations per bilevel run (%(default)s)",
    )
    ap.add_argument(
        "--ds-n", type=positive(int), default=1024, help="domain-split n_fine, 2-D (%(default)s)"
    )
    ap.add_argument(
        "--ds-nc", type=positive(int), default=32, help="domain-split n_coarse (%(default)s)"
    )
    ap.add_argument(
        "--ds-boxes",
        type=positive(int),
        default=8,
        help="domain-split boxes_per_block (%(default)s)",
    )
    ap.add_argument(
        "--agree",
        type=positive(float),
        default=1e-6,
        help="largest relative difference of a case's final metrics across worker counts "
        "before a WARNING (%(default)s)",
    )
    ap.add_argument("--small", action="store_true", help="tiny sizes: a smoke run (default: off)")
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "scaling.json"),
        help="JSON written (%(default)s)",
    )
    args = ap.parse_args(argv)

    allc = cases(args)
    names = args.cases.split(",") if args.cases else list(allc)
    unknown = sorted(set(names) - set(allc))
    if unknown:
        ap.error(f"--cases: unknown {unknown}; allowed: {sorted(allc)}")
    from tilegraph.pipelines.config import ConfigError, build_config
    from tilegraph.pipelines.registry import get_pipeline

    for c in names:  # every run's config, before any cluster starts
        for w in args.workers:
            preset, sets, _ = with_depth(allc[c], c, w, args.ttn_depth)
            try:
                build_config(get_pipeline(pipeline_of(c)), preset, None, sets)
            except ConfigError as exc:
                ap.error(f"case {c} on {w} workers: {exc}")
    got: dict[str, dict[int, list[dict]]] = {c: {w: [] for w in args.workers} for c in names}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(summary=None):  # after every round too: a run cut short keeps what it measured
        out.write_text(json.dumps({"args": vars(args), "summary": summary, "runs": got},
                                  indent=1, default=str))  # fmt: skip

    with tempfile.TemporaryDirectory() as root:
        for rnd in range(args.rounds):
            order = args.workers if rnd % 2 == 0 else args.workers[::-1]
            for w in order:
                t0 = time.perf_counter()
                with cluster.connect(f"local:{w}") as ex:
                    start = time.perf_counter() - t0
                    if rnd == 0:  # warm the workers' imports and kernels of every case, untimed
                        for c in names:
                            spec = with_depth(allc[c], c, w, args.ttn_depth)
                            run_once(ex, c, warm_spec(c, spec), root)
                    for c in names:
                        m = run_once(ex, c, with_depth(allc[c], c, w, args.ttn_depth), root)
                        m["cluster_start_s"] = start
                        got[c][w].append(m)
                        # ttn: where a step's time goes (compute seconds; branch: CPU)
                        busy = "".join(
                            f"  {k.removesuffix('_busy_s_max').removesuffix('_busy_s')} {m[k]:.2f}"
                            for k in ("driver_busy_s", "branch_busy_s_max", "subtree_busy_s_max")
                            if k in m
                        )
                        print(
                            f"round {rnd + 1}  {w:2d} workers  {c:18s} {m['time_s']:8.3f} s "
                            f"(run {m['process_wall_s']:.1f} s){busy}",
                            flush=True,
                        )
                save()
    from tilegraph.pipelines.registry import get_pipeline

    rows, summary, differ = [], {}, []
    for c in names:
        med = {w: statistics.median(m["time_s"] for m in got[c][w]) for w in args.workers}
        base = med[args.workers[0]]
        worst = agreement(got, c, get_pipeline(pipeline_of(c)).metric_names)
        summary[c] = {"median_s": med, "speedup": {w: base / med[w] for w in med},
                      "metrics_max_rel_diff": worst,
                      "metrics_agree": worst <= args.agree}  # fmt: skip
        if not worst <= args.agree:
            differ.append(c)
        rows.append([c, *(f"{med[w]:.3f} ({base / med[w]:.2f}x)" for w in args.workers),
                     f"{worst:.1e}"])  # fmt: skip
    header = ["case", *(f"{w} worker{'s' * (w > 1)}" for w in args.workers)]
    header.append("metrics max rel diff")
    print(f"\nmedian seconds (speed-up against {args.workers[0]} worker), {args.rounds} rounds")
    print(table(rows, header))
    for c in differ:
        print(f"WARNING: {c}: final metrics differ across worker counts (max rel diff "
              f"{summary[c]['metrics_max_rel_diff']:.1e} > {args.agree:g})")  # fmt: skip
    save(summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
