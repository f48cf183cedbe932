"""Each pipeline's quick preset on the CPU and, where a GPU is visible, with CuPy.

    python benchmarks/gpu_check.py [--cluster sync] [--pipelines picard,ttn] [--preset quick]
    python benchmarks/gpu_check.py --pipelines domain-split --set n_fine=1024 \
        --set n_coarse=auto --set problem.kind=variable --set tol=1e-8 \
        --set direct_reference=false       # a larger run: the solve phase on each device

Runs ``tilegraph run NAME --preset quick --set device=cpu|cuda`` as subprocesses (one
pipeline at a time, the CPU run first, in the same invocation so the two times are
comparable) and prints a table of wall times, the speed-up and whether the headline
metrics agree. A pipeline without a ``device`` field has no GPU path and is listed as
such. Without CUDA the GPU column says why it was skipped. Results go to
``benchmarks/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cuda_available() -> str | None:
    """None if CuPy sees a GPU, else the reason it does not."""
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        return None if n > 0 else "no CUDA device"
    except Exception as exc:  # ImportError, CUDARuntimeError …
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def run(name: str, preset: str, device: str, cluster: str, store: str, sets=()) -> dict:
    args = [sys.executable, "-m", "tilegraph.pipelines.cli", "run", name, "--preset", preset]
    for item in sets:
        args += ["--set", item]
    args += ["--set", f"device={device}", "--cluster", cluster, "--store", store, "--json"]
    env = dict(os.environ)
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"ok": False, "error": tail, "process_s": wall}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"ok": True, "process_s": wall, "metrics": res["metrics"]}


def _fmt(x) -> str:
    return f"{x:.2f}" if isinstance(x, int | float) else "-"


def agree(a: dict, b: dict, names) -> str:
    worst = 0.0
    for n in names:
        x, y = a.get(n), b.get(n)
        if isinstance(x, int | float) and isinstance(y, int | float) and not n.endswith("_s"):
            scale = max(abs(x), abs(y), 1e-300)
            worst = max(worst, abs(x - y) / scale)
    return f"{worst:.1e}" if math.isfinite(worst) else "nan"


def main() -> int:
    from tilegraph.pipelines.registry import load_pipelines

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cluster", default="sync")
    p.add_argument("--preset", default="quick")
    p.add_argument("--pipelines", default=None, help="comma-separated names (default: all)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config field"
    )
    args = p.parse_args()

    pipes = load_pipelines()
    names = args.pipelines.split(",") if args.pipelines else sorted(pipes)
    why_not = cuda_available()
    rows, results = [], {}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every run: a check cut short keeps what it measured
        (out / "gpu_check.json").write_text(
            json.dumps({"cuda": why_not, "runs": results}, indent=2)
        )

    with tempfile.TemporaryDirectory() as store:
        for name in names:
            pipe = pipes[name]
            if "device" not in pipe.config.model_fields:
                rows.append([name, *["-"] * 6, "no GPU path (no 'device' field)"])
                continue
            cpu = run(name, args.preset, "cpu", args.cluster, store, args.set)
            results[name] = {"cpu": cpu, "gpu": None}
            save()
            gpu = None
            if not why_not:
                gpu = run(name, args.preset, "cuda", args.cluster, store, args.set)
            results[name] = {"cpu": cpu, "gpu": gpu}
            save()
            cpu_s = cpu["metrics"].get("wall_s") if cpu["ok"] else None
            cpu_solve = _fmt(cpu["metrics"].get("solve_s")) if cpu["ok"] else "-"
            if gpu is None:
                rows.append(
                    [name, f"{cpu_s:.2f}" if cpu_s else "fail", "-", cpu_solve, "-", "-", "-",
                     why_not if cpu["ok"] else cpu["error"]]
                )  # fmt: skip
                continue
            gpu_s = gpu["metrics"].get("wall_s") if gpu["ok"] else None
            gpu_solve = _fmt(gpu["metrics"].get("solve_s")) if gpu["ok"] else "-"
            speed = f"{cpu_s / gpu_s:.2f}" if cpu_s and gpu_s else "-"
            both = cpu["ok"] and gpu["ok"]
            diff = agree(cpu["metrics"], gpu["metrics"], pipe.metric_names) if both else "-"
            note = "; ".join(r["error"] for r in (cpu, gpu) if not r["ok"])
            rows.append([name, f"{cpu_s:.2f}" if cpu_s else "fail",
                         f"{gpu_s:.2f}" if gpu_s else "fail", cpu_solve, gpu_solve, speed,
                         diff, note])  # fmt: skip
    header = ["pipeline", "cpu wall_s", "gpu wall_s", "cpu solve_s", "gpu solve_s", "speed-up",
              "max rel metric diff", "note"]  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
