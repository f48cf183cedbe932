"""domain-split against the solvers a user would pick instead, measured in one run.

For each problem the script runs, each in its own subprocess so that peak memory is
the process tree's own: SciPy ``spsolve`` (SuperLU), pyamg's Ruge-Stueben solver the way
its users call it (``ml.solve(b, tol)``) with every ``accel`` it offers (``None``: the
V-cycle alone, ``"bicgstab"``, ``"gmres"``, ``"fgmres"``), setup included, and tilegraph
(``krylov``, on a local Dask cluster, after a small run of the same kind on it so that
its workers have imported tilegraph, as the baselines' processes have imported pyamg and
SciPy before their clocks start; the small run's time is reported as
``warm_up_run_s``; and again on ``threads:N`` (``--clusters local,threads``), threads of one
process, whose memory is then one process's like the baselines'). Every solver works on
the same assembled fine system (the problem as tilegraph's config describes it) and
stops at the same relative residual. SciPy's ``spsolve`` runs with both of SuperLU's
column orderings ``COLAMD`` (its default) and ``MMD_AT_PLUS_A`` (about 1.8x faster on
these stencil matrices), each in its own subprocess; the faster is reported, named in
the solver column. It prints one table with wall time, peak memory (resident set of the
whole process tree, sampled every 50 ms) and the ratio of each baseline's time to
tilegraph's (``local``), given only where both reached the relative residual ``--tol``
(else ``MISSED TOL``), and writes JSON to ``benchmarks/results/``: ``domain_split.json``
(``domain_split_xS.json`` with ``--scale S``) for a run of every problem, cluster and
accel of the defaults; a run of fewer writes ``domain_split[_xS].subset.json`` unless
``--out`` names the file.

    python benchmarks/domain_split.py                          # every problem below
    python benchmarks/domain_split.py --problems 2d-var,3d-var --workers 2
    python benchmarks/domain_split.py --problems 2d-var --scale 2 --skip spsolve \
        --out benchmarks/results/domain_split_x2.json                        # 2047^2
    python benchmarks/domain_split.py --problems 3d-var --scale 2 --skip spsolve \
        --accels none,bicgstab,gmres --out benchmarks/results/domain_split_x2.json  # 255^3
    python benchmarks/domain_split.py --problems ooc --ooc-n 240
    python benchmarks/domain_split.py --problems ooc-data --ooc-n 240 --ooc-nc 15

Problems: ``2d``/``3d`` constant coefficients (1023^2, 127^3), ``2d-var``/``3d-var`` the
paper's variable coefficients, ``2d-data`` coefficients interpolated from a dataset
(written by the script: 129^2 smooth random fields), ``ooc`` the 3-D out-of-core case,
``ooc-data`` the same with coefficients from a 3-D dataset (129^3 fields).

Goals (issue 17): on variable coefficients, 2-D 1023^2 and 3-D 127^3, tilegraph on
``local:2`` at least as fast as pyamg's best with lower peak memory; a 3-D problem of
>= 2e8 unknowns with variable coefficients from a dataset and peak worker memory
<= 8 GiB (``--problems ooc-data --ooc-n 600 --ooc-nc 25 --ooc-restart 6 --workers 3``:
about 60 GB of disk, 78 minutes on 2 cores; met on 2026-12-05, see docs/domain_split.md;
set TILEGRAPH_BENCH_DIR to a disk with room).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from argtypes import comma_list, positive

ROOT = Path(__file__).resolve().parents[1]

#: name -> domain-split config (dotted keys); every solver gets its fine system
#: (``n_coarse`` is tilegraph's own parameter, not the problem's: every solver gets the
#: same fine system. ``auto``, the default, takes 32 in 2-D and 8 in 3-D here; until
#: 2026-12-06 the 3-D cases ran with 16, 1.3x slower on variable coefficients.)
PROBLEMS = {
    "2d": {"d": 2, "n_fine": 1024, "n_coarse": "auto", "problem.alpha": [1.0, 1.0],
           "problem.beta": [1.0, 0.5]},
    "2d-var": {"d": 2, "n_fine": 1024, "n_coarse": "auto", "problem.kind": "variable"},
    "2d-data": {"d": 2, "n_fine": 1024, "n_coarse": "auto", "problem.kind": "dataset"},
    "3d": {"d": 3, "n_fine": 128, "n_coarse": "auto", "problem.alpha": [1.0, 1.0, 1.0],
           "problem.beta": [1.0, 0.5, 0.25]},
    "3d-var": {"d": 3, "n_fine": 128, "n_coarse": "auto", "problem.kind": "variable"},
}  # fmt: skip

#: pyamg's Krylov options for ``ml.solve``; each is run and the fastest is its best
ACCELS = (None, "bicgstab", "gmres", "fgmres")
#: SuperLU's column orderings for ``spsolve``; each is run and the faster is reported
ORDERINGS = ("COLAMD", "MMD_AT_PLUS_A")
#: the out-of-core problems (tilegraph alone)
OOC = ("ooc", "ooc-data")
#: tilegraph's cluster kinds for ``--clusters`` (each as ``KIND:--workers``)
CLUSTER_KINDS = ("local", "threads", "local-cuda", "ray")
DEFAULT_PROBLEMS = "2d,2d-var,2d-data,3d,3d-var"
DEFAULT_CLUSTERS = "local,threads"
DEFAULT_ACCELS = "none,bicgstab,gmres,fgmres"
DEFAULT_SKIP = "3d:spsolve,3d-var:spsolve"
RESULTS = ROOT / "benchmarks" / "results"


def skip_list(text: str) -> str:
    """argparse type: a comma list of CASE or PROBLEM:CASE."""
    problems = (*PROBLEMS, *OOC)
    for item in filter(None, (x.strip() for x in text.split(","))):
        prob, _, case = item.rpartition(":")
        if case not in CASES or (prob and prob not in problems):
            raise argparse.ArgumentTypeError(
                f"{item!r}: want CASE or PROBLEM:CASE with CASE in {', '.join(CASES)} and "
                f"PROBLEM in {', '.join(problems)}"
            )
    return text


def write_dataset(path: str, d: int = 2, n: int = 129, seed: int = 0) -> str:
    """Smooth random coefficient fields on ``[0, 1]^d`` (a few low Fourier modes) as a
    Zarr dataset for ``problem.kind=dataset``."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    grids = np.meshgrid(*([t] * d), indexing="ij")

    def smooth(scale, offset):
        f = np.zeros_like(grids[0])
        for _ in range(6):
            k = rng.integers(1, 4, size=d)
            phase = rng.uniform(0, 2 * np.pi)
            f += np.cos(sum(np.pi * kk * g for kk, g in zip(k, grids, strict=True)) + phase)
        return offset + scale * f / 6

    dims = ("x", "y", "z")[:d]
    data = {f"alpha_{a}": smooth(0.5, 1.5) for a in dims}
    data |= {f"beta_{a}": smooth(1.0, 0.0) for a in dims}
    data |= {"f": smooth(1.0, 1.0), "g": np.zeros_like(grids[0])}
    ds = xr.Dataset({k: (dims, v) for k, v in data.items()}, coords={a: t for a in dims})
    ds.chunk({a: 64 for a in dims}).to_zarr(path, mode="w", consolidated=False)
    return path


def _config(sets: dict):
    from tilegraph.pipelines.config import build_config
    from tilegraph.pipelines.registry import get_pipeline

    items = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]
    return build_config(get_pipeline("domain-split"), sets=items)


def _fine_system(sets: dict):
    from tilegraph.tasks.domain_split.operator import assemble, fine_axes, rhs_block

    cfg = _config(sets)
    p, d, n = cfg.to_problem(), cfg.d, cfg.n_fine
    B = rhs_block(p, (0,) * d, (n + 1,) * d, n)
    A_ii, A_ib, interior = assemble(p, fine_axes(n, d))
    b = B[interior] - A_ib @ B[~interior]
    return A_ii.tocsr(), b


def case_spsolve(sets, tol, workers, permc_spec="COLAMD"):
    from scipy.sparse.linalg import spsolve

    A, b = _fine_system(sets)
    t0 = time.perf_counter()
    x = spsolve(A, b, permc_spec=permc_spec)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "permc_spec": permc_spec,
        "rel_residual": float(np.linalg.norm(b - A @ x) / np.linalg.norm(b)),
    }


def case_pyamg(sets, tol, workers, accel=None):
    import pyamg

    A, b = _fine_system(sets)
    t0 = time.perf_counter()
    ml = pyamg.ruge_stuben_solver(A)
    setup = time.perf_counter() - t0
    res: list = []
    x = ml.solve(b, tol=tol, accel=accel, residuals=res, maxiter=500)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "setup_s": setup,
        "iterations": len(res) - 1,
        "rel_residual": float(np.linalg.norm(b - A @ x) / np.linalg.norm(b)),
    }


def case_tilegraph(sets, tol, workers, out_of_core=False, box_solver="auto", cluster_kind="local"):
    import tilegraph
    from tilegraph import cluster

    over = {**sets, "tol": tol, "direct_reference": False, "max_iter": 100}
    if "problem.kind" in sets and sets["problem.kind"] in ("variable", "dataset", "custom"):
        over["box_solver"] = box_solver
    over["out_of_core"] = out_of_core
    items = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in over.items()]
    # a small run of the same kind first: workers import tilegraph's kernels once per
    # lifetime, as the baselines' processes import pyamg and SciPy before their clocks
    small = {**over, "n_fine": 32, "n_coarse": 4}
    small = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in small.items()]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TILEGRAPH_BENCH_DIR")) as tmp:
        t0 = time.perf_counter()
        with cluster.connect(f"{cluster_kind}:{workers}") as ex:
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            if not out_of_core:
                tilegraph.run("domain-split", sets=small, cluster=ex, store=f"{tmp}/warm",
                              progress=None)  # fmt: skip
            warm = time.perf_counter() - t0
            run = tilegraph.run("domain-split", sets=items, cluster=ex, store=tmp, progress=None)
            m = run.metrics
    return {
        # time to solution, as for the baselines; writing the result dataset and the
        # summary plot is reported apart (total_s)
        "wall_s": m["setup_s"] + m["solve_s"],
        "total_s": m["wall_s"],
        "cluster_start_s": start,
        "warm_up_run_s": warm,
        "iterations": m["iterations"],
        "rel_residual": m["rel_residual"],
        "rel_error_exact": m.get("rel_error_exact"),
        "unknowns": m["unknowns"],
    }


CASES = {"spsolve": case_spsolve, "pyamg": case_pyamg, "tilegraph": case_tilegraph}


def _watch(proc: subprocess.Popen, samples: dict, stop: threading.Event):
    import psutil

    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            samples["tree"] = max(samples.get("tree", 0), sum(rss))
            samples["largest"] = max(samples.get("largest", 0), max(rss, default=0))
        except psutil.Error:
            pass
        time.sleep(0.05)


def run_case(case: str, sets: dict, tol: float, workers: int, timeout: float, extra=None):
    """Run one case in a subprocess, sampling the memory of its process tree."""
    args = {"case": case, "sets": sets, "tol": tol, "workers": workers, **(extra or {})}
    cmd = [sys.executable, __file__, "--child", json.dumps(args)]
    env = dict(os.environ)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    samples: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc, samples, stop), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.communicate()
        return {"case": case, "status": f"timeout > {timeout:.0f} s"}
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        return {"case": case, "status": f"failed: {last}"}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(
        case=case,
        status="ok",
        peak_tree_gib=samples.get("tree", 0) / 2**30,
        peak_process_gib=samples.get("largest", 0) / 2**30,
    )
    return res


def child(spec: str) -> None:
    args = json.loads(spec)
    fn = CASES[args["case"]]
    keys = ("out_of_core", "accel", "box_solver", "cluster_kind", "permc_spec")
    kwargs = {k: args[k] for k in keys if k in args}
    res = fn(args["sets"], args["tol"], args["workers"], **kwargs)
    print(json.dumps(res))


def _label(case: str, extra: dict) -> str:
    if case == "pyamg":
        return f"pyamg accel={extra.get('accel')}"
    if case == "spsolve":
        return f"spsolve {extra.get('permc_spec', 'COLAMD')}"
    if extra.get("cluster_kind", "local") != "local":
        return f"{case} {extra['cluster_kind']}"
    return case


def faster_spsolve(results: dict) -> None:
    """Replace the ``spsolve ORDERING`` entries of ``results`` by one ``spsolve`` entry,
    the faster ordering's (of those that ran), at the first one's place."""
    keys = [k for k in results if k.startswith("spsolve ")]
    if not keys:
        return
    ok = [results[k] for k in keys if results[k].get("status") == "ok"]
    best = min(ok, key=lambda r: r["wall_s"]) if ok else dict(results[keys[0]])
    best = {**best, "orderings": {k.split(" ", 1)[1]: results[k].get("wall_s",
                                  results[k].get("status")) for k in keys}}  # fmt: skip
    merged = {}
    for k, v in results.items():
        if k == keys[0]:
            merged["spsolve"] = best
        elif k not in keys:
            merged[k] = v
    results.clear()
    results.update(merged)


def reached(r: dict, tol: float) -> bool:
    """A run that finished and whose true relative residual is at most ``tol``."""
    res = r.get("rel_residual")
    return r.get("status") == "ok" and res is not None and res <= tol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--problems",
        type=comma_list((*PROBLEMS, *OOC), "problem"),
        default=DEFAULT_PROBLEMS,
        help="comma list of " + ", ".join([*PROBLEMS, *OOC]) + " (%(default)s)",
    )
    ap.add_argument(
        "--tol", type=positive(float), default=1e-8, help="relative residual (%(default)s)"
    )
    ap.add_argument(
        "--workers", type=positive(int), default=2, help="tilegraph's workers (%(default)s)"
    )
    ap.add_argument(
        "--clusters",
        type=comma_list(CLUSTER_KINDS, "cluster kind"),
        default=DEFAULT_CLUSTERS,
        help="comma list of tilegraph's clusters (each with --workers): local (worker "
        "processes; the ratios are against it), threads (worker threads in one process), "
        "local-cuda, ray (%(default)s)",
    )
    ap.add_argument(
        "--timeout", type=positive(float), default=900.0, help="seconds per case (%(default)s)"
    )
    ap.add_argument(
        "--box-solver",
        default="auto",
        choices=("auto", "lu", "frozen"),
        help="tilegraph's box_solver on variable coefficients (auto: its default) (%(default)s)",
    )
    ap.add_argument(
        "--scale",
        type=positive(int),
        default=1,
        help="multiply n_fine of the 2d*/3d* problems by this (2: 2047^2 and 255^3, where "
        "the process tree's imports weigh less against the arrays; skip spsolve, and in 3-D "
        "pyamg's fgmres, which took 8.8 GiB at 127^3) (%(default)s)",
    )
    ap.add_argument(
        "--accels",
        default=DEFAULT_ACCELS,
        help="comma list of pyamg's accel options to run (none: the V-cycle alone; leave "
        "out fgmres on large 3-D grids: 8.8 GiB at 127^3) (%(default)s)",
    )
    ap.add_argument(
        "--ooc-n",
        type=positive(int),
        default=240,
        help="n_fine of the out-of-core 3-D case (%(default)s)",
    )
    ap.add_argument(
        "--ooc-nc",
        type=positive(int),
        default=40,
        help="n_coarse of the out-of-core case (%(default)s)",
    )
    ap.add_argument(
        "--ooc-restart",
        type=positive(int),
        default=10,
        help="FGMRES restart of the out-of-core case (each one more pair of stored vectors) "
        "(%(default)s)",
    )
    ap.add_argument(
        "--skip",
        type=skip_list,
        default=DEFAULT_SKIP,
        help="comma list of CASE or PROBLEM:CASE to skip (default: %(default)s: SuperLU on "
        "127^3 needs far more than 24 GiB)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="JSON written (default: benchmarks/results/domain_split[_xS].json for a run of "
        "every default problem, cluster and accel, else domain_split[_xS].subset.json, so "
        "that a partial run keeps the full run's file)",
    )
    args = ap.parse_args()
    names = {"none": None, **{a: a for a in ACCELS if a}}
    accels = [a.strip().lower() for a in args.accels.split(",") if a.strip()]
    if not accels or set(accels) - set(names):
        ap.error(f"argument --accels: choose from {', '.join(names)} (got {args.accels!r})")
    accels = [names[a] for a in accels]
    if args.child:
        child(args.child)
        return

    skip = set(filter(None, args.skip.split(",")))
    from tilegraph.pipelines.config import ConfigError

    for name in args.problems.split(","):  # every problem's config, before any run
        ooc = name in OOC
        sets = {"d": 3, "n_fine": args.ooc_n, "n_coarse": args.ooc_nc} if ooc else {
            **PROBLEMS[name], "n_fine": PROBLEMS[name]["n_fine"] * args.scale}  # fmt: skip
        if ooc:
            sets["restart"] = args.ooc_restart
        if sets.get("problem.kind") == "variable":
            sets["box_solver"] = args.box_solver
        if sets.get("problem.kind") == "dataset":
            sets.pop("problem.kind")  # its dataset is written later: checked as constant
        if sets["d"] == 3 and "problem.kind" not in sets:
            sets |= {"problem.alpha": [1.0, 1.0, 1.0], "problem.beta": [1.0, 0.5, 0.25]}
        try:
            _config({**sets, "tol": args.tol, "out_of_core": ooc, "direct_reference": False})
        except ConfigError as exc:
            ap.error(f"--problems {name}: {exc}")
    data_dir = tempfile.mkdtemp(dir=os.environ.get("TILEGRAPH_BENCH_DIR"))
    rows = []
    for name in args.problems.split(","):
        if name in ("ooc", "ooc-data"):
            sets = {"d": 3, "n_fine": args.ooc_n, "n_coarse": args.ooc_nc}
            sets["restart"] = args.ooc_restart
            if name == "ooc":
                sets |= {"problem.alpha": [1.0, 1.0, 1.0], "problem.beta": [1.0, 0.5, 0.25]}
            else:  # variable coefficients interpolated from a 3-D dataset
                sets["problem.kind"] = "dataset"
            cases = [("tilegraph", {"out_of_core": True})]
        else:
            sets = dict(PROBLEMS[name])
            sets["n_fine"] *= args.scale
            cases = [("spsolve", {"permc_spec": o}) for o in ORDERINGS]
            cases += [("pyamg", {"accel": a}) for a in accels]
            for kind in args.clusters.split(","):
                extra = {"box_solver": args.box_solver}
                if kind != "local":
                    extra["cluster_kind"] = kind
                cases.append(("tilegraph", extra))
        if sets.get("problem.kind") == "dataset":
            sets["problem.dataset"] = write_dataset(f"{data_dir}/{name}.zarr", sets["d"])
        cases = [(c, e) for c, e in cases if c not in skip and f"{name}:{c}" not in skip]
        results = {}
        for case, extra in cases:
            label = _label(case, extra)
            print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
            results[label] = run_case(case, sets, args.tol, args.workers, args.timeout, extra)
        faster_spsolve(results)
        base = results.get("tilegraph", {})
        # pyamg's best: the fastest run that reached the tolerance (its stopping test is
        # on a preconditioned residual; the true one is checked here)
        amg = [
            r
            for k, r in results.items()
            if k.startswith("pyamg") and r["status"] == "ok" and r["rel_residual"] <= args.tol
        ]
        best = min(amg, key=lambda r: r["wall_s"]) if amg else None
        for label, res in results.items():
            res["case"] = label
            res["problem"] = name
            res["unknowns"] = (sets["n_fine"] - 1) ** sets["d"]
            res["best_pyamg"] = res is best
            ours = label.startswith("tilegraph")
            # a ratio only where both sides reached the tolerance (true residual)
            res["reached_tol"] = reached(res, args.tol)
            if res.get("status") == "ok" and base.get("status") == "ok" and not ours:
                both = res["reached_tol"] and reached(base, args.tol)
                res["speedup_of_tilegraph"] = res["wall_s"] / base["wall_s"] if both else None
            if ours and best is not None and res.get("status") == "ok":
                if res["reached_tol"]:
                    res["vs_best_pyamg"] = best["wall_s"] / res["wall_s"]
                    res["memory_vs_best_pyamg"] = res["peak_tree_gib"] / best["peak_tree_gib"]
                else:
                    res["vs_best_pyamg"] = None
            rows.append(res)

    header = [
        "problem",
        "unknowns",
        "solver",
        "wall s",
        "peak tree GiB",
        "peak proc GiB",
        "rel residual",
        "its",
        "baseline/tilegraph",
    ]
    table = [header]
    for r in rows:
        ok = r.get("status") == "ok"
        if r.get("speedup_of_tilegraph") is not None:
            ratio = f"{r['speedup_of_tilegraph']:.2f}x"
        elif "speedup_of_tilegraph" in r or (ok and not r["reached_tol"]):
            ratio = "MISSED TOL"
        else:
            ratio = "-"
        solver = r["case"]
        if r["case"] == "spsolve" and "permc_spec" in r:
            solver = f"spsolve {r['permc_spec']} (faster of {'/'.join(ORDERINGS)})"
        table.append(
            [
                r["problem"],
                f"{r['unknowns']:,}",
                solver + (" (best)" if r.get("best_pyamg") else ""),
                f"{r['wall_s']:.2f}" if ok else r["status"],
                f"{r['peak_tree_gib']:.2f}" if ok else "-",
                f"{r['peak_process_gib']:.2f}" if ok else "-",
                f"{r['rel_residual']:.1e}" if ok else "-",
                str(r.get("iterations", "-")),
                ratio,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"(baseline/tilegraph: that row's wall s over tilegraph local's; MISSED TOL: one "
          f"of the two has a relative residual above --tol {args.tol:g})")  # fmt: skip
    for r in rows:
        if r.get("vs_best_pyamg", 0) is None:
            print(f"{r['problem']}: {r['case']} MISSED TOL (relative residual "
                  f"{r['rel_residual']:.1e} > {args.tol:g}): not compared")  # fmt: skip
        elif "vs_best_pyamg" in r:
            ratio = r["vs_best_pyamg"]
            shown = ratio if ratio >= 1 else 1 / ratio
            verdict = f"{shown:.2f}x {'faster' if ratio >= 1 else 'slower'} than"
            if f"{shown:.2f}" == "1.00":  # not "1.00x slower": a tie at this precision
                verdict = f"as fast as ({ratio:.3f}x)"
            mem = r["memory_vs_best_pyamg"]
            print(
                f"{r['problem']}: {r['case']} {verdict} pyamg's best, "
                f"peak memory (process tree) {mem:.2f}x of its"
            )
    stem = "domain_split" if args.scale == 1 else f"domain_split_x{args.scale}"
    full = (
        set(args.problems.split(",")) >= set(DEFAULT_PROBLEMS.split(","))
        and set(args.clusters.split(",")) >= set(DEFAULT_CLUSTERS.split(","))
        and set(accels) >= set(ACCELS)
        and skip <= set(DEFAULT_SKIP.split(","))
    )
    out = Path(args.out) if args.out else RESULTS / f"{stem}{'' if full else '.subset'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
