"""ttn: the parallel BUG on 1 and 2 workers against the sequential BUG, in one run.

Part 1, the ``paper`` preset (d = 16 long-range Ising, binary tree, h = 0.01, theta =
1e-8, r_min = 2, r_max = 40): the parallel BUG (``subtrees`` schedule) on a local Dask
cluster of 1 and of 2 workers, the ``nodes`` schedule on 2 workers, and the sequential
rank-adaptive BUG; wall time of the run and of its steps alone, norm and energy drift
(error proxies: the exact flow conserves both), max rank, and speed-up ratios: the
1-worker run's seconds over this row's ("wall 1w/this", "steps 1w/this"), the sequential
BUG's wall seconds over this row's ("wall seq/this") next to this row's energy drift over
the sequential BUG's ("E drift/seq"; marked "!" beyond ``DRIFT_GATE`` = 10x), so that a
faster run at a much larger drift shows. ``--repeats`` rounds (default 3), the order
reversed every other round; medians are reported (seconds with 3 decimals), and the
2-against-1-worker ratio of every round.

Part 2, d <= 10 (default d = 10, the same Hamiltonian): error against ``expm`` at T as a
function of wall time for both integrators over a range of step sizes, to answer
whether the parallel BUG reaches a given accuracy in less wall time than the sequential
one.

Part 3, Hamiltonians given as terms (``model.kind=terms``): the long-range Ising chain on
64 sites written out as 2080 terms (binary tree, r_max 40) and a Bose-Hubbard chain of
16 sites (n_max = 3): seconds per step on 1 and 2 workers and for the sequential BUG,
and the seconds to build the operator (parse, Hermiticity check, layout) as a share of
the run. Goals (issue 18): building < 5 % of the run; the parallel BUG on 2 workers at
least as fast per step as the sequential BUG at d = 64. A last run holds the parallel
BUG to the sequential BUG's largest rank: at the paper's theta its ranks grow far
beyond (40 against 11 at d = 64); with the first-step ramp that rank buys a smaller
energy drift (1.8e-2 against 0.24; without the ramp both were 3.4, docs/ttn.md).

Part 4, the first step (``ramp``): error against ``expm`` at T with one first step of h
(``ramp=0``) and with the default ramp, in process, on the cases of docs/ttn.md's table
("The first step"): the quick preset, the isotropic chain from the tilted Neel and a
free start, the Bose-Hubbard Fock start, the long-range chain at d = 8 and 12.

    python benchmarks/ttn.py                 # T = 1 (several minutes on 2 cores)
    python benchmarks/ttn.py --T 0.25        # a short run
    python benchmarks/ttn.py --skip-nodes --skip-accuracy --repeats 5

Writes ``benchmarks/results/ttn.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from argtypes import positive

# single-threaded BLAS everywhere: the kernels are many small products
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

ROOT = Path(__file__).resolve().parents[1]
#: part 1: a run's energy drift beyond this many times the sequential BUG's is marked "!"
DRIFT_GATE = 10.0


def step_sizes(text: str) -> str:
    """argparse type of ``--hs``: a comma list of numbers > 0."""
    parse = positive(float)
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("want a comma list of step sizes > 0")
    for x in items:
        try:
            parse(x)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"step size {x!r}: {exc}") from None
    return ",".join(items)


def run_once(preset: str, sets: list[str], spec: str, root: str) -> dict:
    import tilegraph
    from tilegraph import cluster

    with cluster.connect(spec) as ex:
        t0 = time.perf_counter()
        run = tilegraph.run("ttn", preset=preset, sets=sets, cluster=ex, store=root)
        m = dict(run.metrics)
        m["wall_s"] = time.perf_counter() - t0
        hist = run.open_dataset("history")
        m["step_s_total"] = float(hist.step_s.sum())
        # the steps after the first (row 0 is t = 0, row 1 the first step and its ramp)
        m["step_s_after_first"] = float(hist.step_s[2:].sum())
    return m


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


PAPER_RUNS = [
    ("parallel BUG, subtrees, 1 worker", "local:1", ["method=parallel"]),
    ("parallel BUG, subtrees, 2 workers", "local:2", ["method=parallel"]),
    ("parallel BUG, nodes, 2 workers", "local:2", ["schedule=nodes"]),
    ("sequential BUG (in process)", "sync", ["method=sequential"]),
]


def paper(args, T: list[str], root: str, out: dict) -> None:
    """Part 1: every run of ``PAPER_RUNS`` ``--repeats`` times, the order of the runs
    reversed every other round (the shared machine's speed drifts), medians reported."""
    runs = [r for r in PAPER_RUNS if not (args.skip_nodes and "nodes" in r[0])]
    # warm the imports (matplotlib, zarr, the kernels) outside the timed runs
    run_once("paper", ["T=0.02", "checkpoint_s=null"], "local:1", root)
    got: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
    for rep in range(args.repeats):
        for name, spec, sets in runs if rep % 2 == 0 else runs[::-1]:
            # the same steps for every method (ramp=auto ramps the sequential BUG's
            # first step over 8 halvings, the parallel one's over 4)
            m = run_once("paper", T + ["ramp=4"] + sets, spec, root)
            got[name].append(m)
            wall, steps = m["wall_s"], m["step_s_total"]
            print(f"round {rep + 1}: {name}: wall {wall:.3f} s, steps {steps:.3f} s", flush=True)

    def med(name, key):
        return statistics.median(m[key] for m in got[name])

    base = runs[0][0]
    seq = next(name for name, _, _ in runs if "sequential" in name)
    seq_drift = got[seq][0]["energy_drift"]
    rows = []
    for name, _, _ in runs:
        m = got[name][0]
        # the gate: this run's energy drift against the sequential BUG's
        if seq_drift > 0:
            ratio = m["energy_drift"] / seq_drift
            gate = f"{ratio:.3g}" + (" !" if ratio > DRIFT_GATE else "")
        else:
            gate = "-" if m["energy_drift"] == 0 else "inf !"
        rows.append(
            [
                name,
                f"{med(name, 'wall_s'):.3f}",
                f"{med(base, 'wall_s') / med(name, 'wall_s'):.2f}",
                f"{med(name, 'step_s_total'):.3f}",
                f"{med(base, 'step_s_total') / med(name, 'step_s_total'):.2f}",
                f"{med(seq, 'wall_s') / med(name, 'wall_s'):.2f}",
                f"{m['norm_drift']:.2e}",
                f"{m['energy_drift']:.2e}",
                gate,
                m["max_rank"],
                m["rejected_steps"],
            ]
        )
    out["paper"] = got
    two = runs[1][0]
    pairs = list(zip(got[base], got[two], strict=True))
    out["paper_ratios"] = {
        "wall_per_round": [a["wall_s"] / b["wall_s"] for a, b in pairs],
        "steps_per_round": [a["step_s_total"] / b["step_s_total"] for a, b in pairs],
    }
    m1 = got[base][0]
    if "subtree_busy_s" in m1:
        # from the compute seconds of the 1-worker run: what 2 workers could give at best
        # (driver work + the slowest subtree, communication ignored)
        busy = [m["subtree_busy_s"] for m in got[base]]
        sub = [statistics.median(x) for x in zip(*busy, strict=True)]
        drv = med(base, "driver_busy_s")
        out["work_split"] = {"driver_s": drv, "subtrees_s": sub}
        print(
            f"work split of the 1-worker run: driver {drv:.3f} s, subtrees "
            + ", ".join(f"{x:.3f} s" for x in sub)
            + f"; bound on the 2-worker speed-up {(drv + sum(sub)) / (drv + max(sub)):.2f}"
        )
    print(
        "2 workers against 1, per round: wall "
        + ", ".join(f"{r:.2f}" for r in out["paper_ratios"]["wall_per_round"])
        + "; steps "
        + ", ".join(f"{r:.2f}" for r in out["paper_ratios"]["steps_per_round"])
    )
    print(f"\npaper preset (d=16 long-range Ising, h=0.01, T={args.T}), medians of {args.repeats}")
    header = ["run", "wall s", "wall 1w/this", "steps s", "steps 1w/this", "wall seq/this"]
    header += ["norm drift", "energy drift", "E drift/seq", "max rank", "rejected"]
    print(table(rows, header))
    print(
        "(1w/this, seq/this: the 1-worker / sequential BUG's median seconds over this row's; "
        f"E drift/seq: this row's energy drift over the sequential BUG's, '!' beyond "
        f"{DRIFT_GATE:g}x: a faster run there is not at the same accuracy)"
    )


USER_CASES = {
    # ~2000 terms: the lr-ising chain on 64 sites written as terms
    "lr-ising d=64 (2080 terms)": (
        "paper",
        ["d=64", "r_max=40", "model.kind=terms", "exact_reference=false"],
        lambda d: (
            [[1.0, f"X {i}"] for i in range(d)]
            + [[1.0, f"Pup {i}"] for i in range(d)]
            + [
                [2.0 * abs(i - j) ** -1.0, f"Pup {i} Pup {j}"]
                for i in range(d)
                for j in range(i + 1, d)
            ]
        ),
    ),  # fmt: skip
    "Bose-Hubbard d=16, n_max=3": (
        "paper",
        [
            "d=16",
            "sites=Boson:3",
            "r_max=24",
            "model.kind=terms",
            "exact_reference=false",
            "start=[[0.6, 0.8, 0, 0]]",
        ],
        lambda d: (
            [
                t
                for i in range(d - 1)
                for t in ([-1.0, f"Bdag {i} B {i + 1}"], [-1.0, f"B {i} Bdag {i + 1}"])
            ]
            + [[2.0, f"N {i} N {i}"] for i in range(d)]
            + [[-2.0, f"N {i}"] for i in range(d)]
        ),
    ),  # fmt: skip
}


def user_systems(args, root: str, out: dict) -> None:
    """Part 3: user Hamiltonians given as terms: seconds per step on 1 and 2 workers and
    for the sequential BUG, and the seconds spent building the operator (terms parsed,
    Hermiticity checked, the layout of every node's restricted terms) against the run."""
    from tilegraph.pipelines.ttn.config import TTNConfig
    from tilegraph.tasks.ttn.integrator import OperatorLayout

    rows = []
    for name, (preset, sets, terms_of) in USER_CASES.items():
        d = int(next(s for s in sets if s.startswith("d="))[2:])
        terms = terms_of(d)
        start = [s for s in sets if s.startswith("start=")]
        sets = [s for s in sets if not s.startswith("start=")] + [
            "model.terms=" + json.dumps(terms),
            f"T={args.user_T}",
            "checkpoint_s=null",
        ]
        if start:  # one state for every site
            sets.append("start=" + json.dumps(json.loads(start[0][6:])[0]))
        cfg = TTNConfig(**_as_dict(preset, sets))
        t0 = time.perf_counter()
        op = cfg.make_operator()
        OperatorLayout(cfg.make_tree(), op)
        build_s = time.perf_counter() - t0
        res = {"case": name, "terms": len(terms), "build_s": build_s, "runs": {}}
        runs = [
            ("parallel, 1 worker", "local:1", ["method=parallel"]),
            ("parallel, 2 workers", "local:2", ["method=parallel"]),
            ("sequential", "sync", ["method=sequential"]),
        ]
        for label, spec, extra in runs:
            m = run_once(preset, sets + extra, spec, root)
            # without the first step, whose ramp differs between the methods
            per_step = m["step_s_after_first"] / (m["steps"] - 1)
            res["runs"][label] = {**m, "s_per_step": per_step}
            rows.append([name, label, f"{per_step:.3f}", f"{build_s:.2f}",
                         f"{100 * build_s / m['wall_s']:.1f}%", m["max_rank"],
                         f"{m['energy_drift']:.1e}"])  # fmt: skip
            print(rows[-1], flush=True)
            if label == "sequential":  # the parallel BUG held to the sequential's ranks
                runs.append(
                    (
                        f"parallel, 2 workers, r_max={m['max_rank']}",
                        "local:2",
                        ["method=parallel", f"r_max={m['max_rank']}"],
                    )
                )
        out.setdefault("user", []).append(res)
    print(f"\nuser Hamiltonians as terms, T={args.user_T}")
    header = ["case", "run", "s per step", "build s", "build / run", "max rank", "energy drift"]
    print(table(rows, header))


#: Part 4, the first-step ramp (docs/ttn.md, "The first step"): ``{label: (--set items on
#: the quick preset, step sizes)}``; each runs with ``ramp=0`` and the default ramp.
_FOCK = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
_CHAIN = ["d=6", "model.kind=xxz", "model.anisotropy=1", "r_max=40"]
_FREE = "start=" + json.dumps(["+", "up", "down", "+", "-", "up"])
RAMP_CASES = {
    "quick (TFI d=8), parallel": ([], [0.1, 0.05, 0.025]),
    "quick (TFI d=8), sequential": (["method=sequential"], [0.1, 0.05, 0.025]),
    "xxz tilted-neel d=6, sequential": ([*_CHAIN, "start=tilted-neel", "method=sequential"],
                                        [0.1, 0.05]),
    "xxz tilted-neel d=6, parallel": ([*_CHAIN, "start=tilted-neel"], [0.05, 0.025]),
    "xxz free start d=6, sequential": ([*_CHAIN, _FREE, "method=sequential"], [0.1, 0.05]),
    "xxz free start d=6, parallel": ([*_CHAIN, _FREE], [0.05, 0.025]),
    "Bose-Hubbard Fock d=4, sequential": (["bh", "method=sequential"], [0.05, 0.025]),
    "Bose-Hubbard Fock d=4, parallel": (["bh"], [0.05, 0.025]),
    "xxz (0.5) tilted-neel d=8, sequential": (["model.kind=xxz", "start=tilted-neel",
                                               "method=sequential"], [0.05]),
    "lr-ising d=8, parallel": (["model.kind=lr-ising", "r_max=40"], [0.05, 0.025]),
    "lr-ising d=12 T=0.3, parallel": (["d=12", "model.kind=lr-ising", "r_max=40", "T=0.3"],
                                      [0.025, 0.0125, 0.00625]),
}  # fmt: skip


def first_step(root: str, out: dict) -> None:
    """Part 4: error against expm with one first step of h (``ramp=0``) and with the
    default ramp, in process (``sync``)."""
    bh = USER_CASES["Bose-Hubbard d=16, n_max=3"][2](4)
    bh_sets = ["d=4", "sites=Boson:3", "model.kind=terms", "model.terms=" + json.dumps(bh),
               "start=" + json.dumps(_FOCK), "T=0.5", "r_max=40"]  # fmt: skip
    rows, out["first_step"] = [], []
    for label, (sets, hs) in RAMP_CASES.items():
        sets = [x for s in sets for x in (bh_sets if s == "bh" else [s])] + ["checkpoint_s=null"]
        got = {}
        for ramp in ("0", "auto"):
            ms = [run_once("quick", [*sets, f"h={h}", f"ramp={ramp}"], "sync", root) for h in hs]
            got[ramp] = [m["final_error_vs_exact"] for m in ms]
            out["first_step"].append({"case": label, "ramp": ramp, "h": hs, "runs": ms})
        rows.append([label, " / ".join(f"{h:g}" for h in hs),
                     " / ".join(f"{e:.2g}" for e in got["0"]),
                     " / ".join(f"{e:.2g}" for e in got["auto"])])  # fmt: skip
        print(rows[-1], flush=True)
    print("\nerror vs expm at T, one first step of h (ramp=0) against the default ramp")
    print(table(rows, ["case", "h", "ramp=0", "default ramp"]))


def _as_dict(preset: str, sets: list[str]) -> dict:
    from tilegraph.pipelines.config import build_config
    from tilegraph.pipelines.registry import get_pipeline

    return build_config(get_pipeline("ttn"), preset, None, sets).model_dump()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--T", type=positive(float), default=1.0, help="final time of parts 1, 2 (%(default)s)"
    )
    ap.add_argument(
        "--d-small",
        type=positive(int),
        default=10,
        help="d of the expm comparison (%(default)s)",
    )
    ap.add_argument(
        "--hs",
        type=step_sizes,
        default="0.1,0.05,0.025,0.0125",
        help="step sizes of the expm comparison (%(default)s)",
    )
    ap.add_argument("--skip-paper", action="store_true", help="no part 1 (default: off)")
    ap.add_argument(
        "--skip-nodes", action="store_true", help="part 1 without the nodes run (default: off)"
    )
    ap.add_argument("--skip-accuracy", action="store_true", help="no part 2 (default: off)")
    ap.add_argument(
        "--skip-user", action="store_true", help="no part 3 (terms Hamiltonians; default: off)"
    )
    ap.add_argument(
        "--user-T", type=positive(float), default=0.05, help="final time of part 3 (%(default)s)"
    )
    ap.add_argument(
        "--skip-ramp", action="store_true", help="no part 4 (the first step; default: off)"
    )
    ap.add_argument(
        "--repeats",
        type=positive(int),
        default=3,
        help="rounds of part 1 (medians are reported) (%(default)s)",
    )
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "ttn.json"),
        help="JSON written (%(default)s)",
    )
    args = ap.parse_args()
    from tilegraph.pipelines.config import ConfigError

    T = [f"T={args.T}", "checkpoint_s=null"]
    checks = [] if args.skip_paper else [("part 1", T)]
    for h in [] if args.skip_accuracy else args.hs.split(","):
        checks.append((f"part 2, h={h}", T + [f"d={args.d_small}", f"h={h}",
                                               "exact_reference=true"]))  # fmt: skip
    for part, sets in checks:  # the configs of parts 1 and 2, before any run
        try:
            _as_dict("paper", sets)
        except ConfigError as exc:
            ap.error(f"{part}: {exc}")
    out: dict = {"T": args.T, "paper": {}, "accuracy": []}
    root = tempfile.mkdtemp(prefix="ttn-bench-")

    if not args.skip_paper:
        paper(args, T, root, out)

    rows = []
    for h in [] if args.skip_accuracy else [float(x) for x in args.hs.split(",")]:
        for method, spec in (("parallel", "local:2"), ("sequential", "sync")):
            sets = T + [f"d={args.d_small}", f"h={h}", f"method={method}", "exact_reference=true"]
            m = run_once("paper", sets, spec, root)
            out["accuracy"].append({"h": h, "method": method, "spec": spec, **m})
            rows.append(
                [
                    method,
                    spec,
                    h,
                    f"{m['wall_s']:.1f}",
                    f"{m['final_error_vs_exact']:.2e}",
                    f"{m['norm_drift']:.1e}",
                    m["max_rank"],
                ]
            )
            print(rows[-1], flush=True)
    if rows:
        print(f"\nerror vs expm at T={args.T}, d={args.d_small} long-range Ising")
        print(table(rows, ["method", "cluster", "h", "wall s", "error", "norm drift", "max rank"]))
    if not args.skip_user:
        user_systems(args, root, out)
    if not args.skip_ramp:
        first_step(root, out)
    res = Path(args.out)
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {res}")


if __name__ == "__main__":
    main()
