"""Each pipeline's quick preset on the CPU and, where a GPU is visible, with CuPy.

    python benchmarks/gpu_check.py [--cluster sync] [--pipelines picard,ttn] [--preset quick]
    python benchmarks/gpu_check.py --pipelines domain-split --set n_fine=1024 \
        --set n_coarse=auto --set problem.kind=variable --set tol=1e-8 \
        --set direct_reference=false       # a larger run: the solve phase on each device

Runs ``tilegraph run NAME --preset quick --set device=cpu|cuda`` as subprocesses (one
pipeline at a time, the CPU run first, in the same invocation so the two times are
comparable) and prints a table of wall times, the speed-up (``cpu/gpu``: the CPU run's
wall seconds over the GPU run's) and the largest relative difference of the headline
metrics. The speed-up is given only where the metrics agree (that difference below
``--agree``, default 1e-6); otherwise the column says ``DIFFERS``. A pipeline without a
``device`` field has no GPU path and is listed as such. Without CUDA the GPU column says
why it was skipped. Results go to ``benchmarks/results/gpu_check.json`` (``--out``).
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

from argtypes import cluster_spec, positive_float

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"


def key_value(text: str) -> str:
    """argparse type: ``KEY=VALUE`` with a non-empty key."""
    if not text.partition("=")[0].strip() or "=" not in text:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE (got {text!r})")
    return text


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


def agree(a: dict, b: dict, names) -> float:
    """The largest relative difference of the numeric metrics ``names`` (timings left out)."""
    worst = 0.0
    for n in names:
        x, y = a.get(n), b.get(n)
        if isinstance(x, int | float) and isinstance(y, int | float) and not n.endswith("_s"):
            scale = max(abs(x), abs(y), 1e-300)
            worst = max(worst, abs(x - y) / scale)
    return worst


def main() -> int:
    from tilegraph.pipelines.registry import load_pipelines

    pipes = load_pipelines()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cluster", type=cluster_spec, default="sync", help="tilegraph's (%(default)s)"
    )
    p.add_argument("--preset", default="quick", help="every pipeline's preset (%(default)s)")
    p.add_argument(
        "--pipelines",
        default=None,
        help=f"comma-separated names of {', '.join(sorted(pipes))} (default: all)",
    )
    p.add_argument(
        "--set",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a config field, repeatable (default: none)",
    )
    p.add_argument(
        "--agree",
        type=positive_float,
        default=1e-6,
        help="largest relative metric difference at which a speed-up is shown (%(default)s)",
    )
    p.add_argument("--out", default=str(RESULTS), help="JSON written (%(default)s)")
    args = p.parse_args()

    names = [x.strip() for x in args.pipelines.split(",")] if args.pipelines else sorted(pipes)
    unknown = [n for n in names if n not in pipes]
    if not names or unknown:
        p.error(f"argument --pipelines: unknown {unknown}; choose from {', '.join(sorted(pipes))}")
    no_preset = [n for n in names if args.preset not in pipes[n].presets]
    if no_preset:
        p.error(f"argument --preset: {args.preset!r} is not a preset of {', '.join(no_preset)}")
    from tilegraph.pipelines.config import ConfigError, build_config

    for n in names:  # the --set items on every pipeline with a GPU path, before any run
        if "device" in pipes[n].config.model_fields:
            try:
                build_config(pipes[n], args.preset, None, [*args.set, "device=cpu"])
            except ConfigError as exc:
                p.error(f"argument --set: {n}: {exc}")
    why_not = cuda_available()
    rows, results = [], {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every run: a check cut short keeps what it measured
        out.write_text(json.dumps({"cuda": why_not, "runs": results}, indent=2))

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
            both = cpu["ok"] and gpu["ok"]
            worst = agree(cpu["metrics"], gpu["metrics"], pipe.metric_names) if both else None
            diff = "-" if worst is None else f"{worst:.1e}" if math.isfinite(worst) else "nan"
            # a speed-up only where the two runs agree (their results, not just their times)
            speed = "-"
            if cpu_s and gpu_s and worst is not None:
                speed = f"{cpu_s / gpu_s:.2f}" if worst < args.agree else "DIFFERS"
            results[name]["max_rel"] = worst
            results[name]["agree"] = worst is not None and worst < args.agree
            note = "; ".join(r["error"] for r in (cpu, gpu) if not r["ok"])
            rows.append([name, f"{cpu_s:.2f}" if cpu_s else "fail",
                         f"{gpu_s:.2f}" if gpu_s else "fail", cpu_solve, gpu_solve, speed,
                         diff, note])  # fmt: skip
    header = ["pipeline", "cpu wall_s", "gpu wall_s", "cpu solve_s", "gpu solve_s",
              "speed-up cpu/gpu", "max rel metric diff", "note"]  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"(speed-up cpu/gpu: CPU wall s over GPU wall s, where the metrics agree within "
          f"{args.agree:g}; else DIFFERS)  wrote {out}")  # fmt: skip
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
