"""Overhead of tilegraph's Executor over raw Dask and raw Ray on many small tasks.

Runs the same ``--tasks`` tasks of about 1 ms of CPU work each

* through ``cluster.connect("local:W")`` (``ex.map`` + ``ex.gather``) and through the raw
  ``Client.map`` + ``Client.gather`` of the same ``LocalCluster``;
* through ``cluster.connect("ray:W")`` and through raw ``remote.remote`` + ``ray.get`` on
  the same Ray instance;

repeats each ``--repeats`` times (raw and tilegraph alternating), keeps the best time, and
prints a table of the ratios (tilegraph's best seconds over raw's; goal: tilegraph / raw
<= 1.2). Results are written to ``benchmarks/results/executor_overhead.json`` (``--out``).

    python benchmarks/executor_overhead.py [--tasks 2000] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from argtypes import positive_int  # noqa: E402
from tilegraph import cluster  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "executor_overhead.json"
GOAL = 1.2
BACKENDS = ("dask", "ray")


def backend_list(text: str) -> list[str]:
    """argparse type: a comma list of ``BACKENDS``, each at most once."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in BACKENDS]
    if not items or bad or len(set(items)) < len(items):
        raise argparse.ArgumentTypeError(
            f"want a comma list of {', '.join(BACKENDS)}, each at most once (got {text!r})"
        )
    return items


def work(i: int, iterations: int, salt: int) -> int:
    """About 1 ms of pure-Python CPU work; `salt` makes every run's task keys new."""
    total = 0
    for k in range(iterations):
        total += k ^ i
    return total + salt


def calibrate(target_s: float = 1e-3) -> int:
    """Iterations of `work` that take about `target_s` seconds here."""
    iterations = 10_000
    while True:
        start = time.perf_counter()
        for _ in range(5):
            work(0, iterations, 0)
        elapsed = (time.perf_counter() - start) / 5
        if elapsed > 2e-4:
            return max(1, round(iterations * target_s / elapsed))
        iterations *= 4


def best_of(repeats: int, runs: dict) -> dict[str, list[float]]:
    """Time each callable in `runs` `repeats` times, alternating between them."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(rep)
            times[name].append(time.perf_counter() - start)
    return times


def bench_dask(n: int, iterations: int, workers: int, repeats: int) -> dict:
    with cluster.connect(f"local:{workers}") as ex:
        client = ex.client
        items = list(range(n))
        its = [iterations] * n

        def raw(rep: int) -> None:
            salts = [1_000_000 + rep] * n
            results = client.gather(client.map(work, items, its, salts))
            assert len(results) == n

        def tilegraph(rep: int) -> None:
            salts = [2_000_000 + rep] * n
            results = ex.gather(ex.map(work, items, its, salts))
            assert len(results) == n

        raw(-1), tilegraph(-1)  # warm up workers and imports
        return best_of(repeats, {"raw": raw, "tilegraph": tilegraph})


def bench_ray(n: int, iterations: int, workers: int, repeats: int) -> dict:
    import ray

    with cluster.connect(f"ray:{workers}") as ex:
        remote = ray.remote(num_cpus=1)(work)

        def raw(rep: int) -> None:
            results = ray.get([remote.remote(i, iterations, rep) for i in range(n)])
            assert len(results) == n

        def tilegraph(rep: int) -> None:
            results = ex.gather(ex.map(work, range(n), [iterations] * n, [rep] * n))
            assert len(results) == n

        raw(-1), tilegraph(-1)  # warm up the worker pool
        return best_of(repeats, {"raw": raw, "tilegraph": tilegraph})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON results.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", type=positive_int, default=2000, help="tasks per run (%(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="runs per variant, best kept (%(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes / Ray CPUs (%(default)s)",
    )
    parser.add_argument(
        "--backends",
        type=backend_list,
        default="dask,ray",
        help="comma-separated subset of dask,ray (%(default)s)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="JSON written (%(default)s)")
    args = parser.parse_args(argv)

    iterations = calibrate()
    start = time.perf_counter()
    work(0, iterations, 0)
    task_ms = (time.perf_counter() - start) * 1e3
    print(
        f"{args.tasks} tasks of ~{task_ms:.2f} ms ({iterations} iterations), "
        f"{args.workers} workers, best of {args.repeats}",
        flush=True,
    )
    runners = {"dask": bench_dask, "ray": bench_ray}
    rows = []
    for name in args.backends:
        times = runners[name](args.tasks, iterations, args.workers, args.repeats)
        raw, ours = min(times["raw"]), min(times["tilegraph"])
        rows.append(
            {
                "backend": name,
                "raw_s": raw,
                "tilegraph_s": ours,
                "ratio": ours / raw,
                "raw_runs_s": times["raw"],
                "tilegraph_runs_s": times["tilegraph"],
            }
        )

    print(f"\n{'backend':<8} {'raw s':>8} {'tilegraph s':>12} {'tilegraph/raw':>13}")
    for row in rows:
        flag = "" if row["ratio"] <= GOAL else f"  (goal <= {GOAL})"
        print(
            f"{row['backend']:<8} {row['raw_s']:>8.3f} {row['tilegraph_s']:>12.3f} "
            f"{row['ratio']:>13.2f}{flag}"
        )

    import dask
    import distributed

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # a dask-only run without the ray extra
        ray_version = None
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "executor_overhead",
        "tasks": args.tasks,
        "repeats": args.repeats,
        "workers": args.workers,
        "task_ms": task_ms,
        "iterations": iterations,
        "goal_ratio": GOAL,
        "results": rows,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            "dask": dask.__version__,
            "distributed": distributed.__version__,
            "ray": ray_version,
        },
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
