"""The block kernels on the CPU (NumPy) and on the GPU (CuPy), timed alone (issue 21).

Kernels, each on inputs of the sizes the pipelines give them:

* ``picard window call``: the Gaussian-mixture noise prediction ``eps(x, t)`` of a
  window of ``p`` steps for ``--samples`` samples (``p * samples`` rows, ``--dim``
  dimensions, ``--components`` components), for p in ``--windows``;
* ``domain-split box solves``: fast diagonalisation of every box of a block at once —
  constant coefficients (one :class:`SeparableSolver`, 2-D boxes of 31² and 3-D boxes of
  15³) and frozen variable coefficients (:class:`FrozenStack`, one sine basis, per-box scalings);
* ``domain-split stencil``: the variable-coefficient operator on one block
  (:func:`apply_stencil`, coefficients evaluated on the block).

Each is timed as the median of ``--repeats`` calls after two warm-up calls (the GPU
synchronised before the clock is read); the GPU result is checked against the CPU one
(``max_rel``: the largest difference relative to the CPU result's largest entry), and the
speed-up (CPU ms over GPU ms) is printed only where ``max_rel`` is below ``--agree``
(default 1e-9), else ``DIFFERS``. NumPy runs with the machine's BLAS threads as they
are. Without a CUDA device the GPU columns say why. Writes
``benchmarks/results/gpu_kernels.json`` (``--out``).

    python benchmarks/gpu_kernels.py [--repeats 7] [--components 8192]

Goal (issue 21): the GPU >= 5x faster than the CPU on picard's window call and on
domain-split's block solves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from argtypes import positive

ROOT = Path(__file__).resolve().parents[1]


def cupy_or_reason():
    """``(cupy, None)`` where CuPy sees a GPU, else ``(None, why)``."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "no CUDA device"
        return cupy, None
    except Exception as exc:  # ImportError, CUDARuntimeError …
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def timed(fn, args, repeats: int, sync=None) -> tuple[float, object]:
    """Median seconds of ``fn(*args)`` over ``repeats`` calls after two warm-ups."""
    for _ in range(2):
        out = fn(*args)
    if sync:
        sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def kernels(args) -> list[tuple[str, object, tuple]]:
    """``(name, fn, host args)`` of every kernel."""
    from tilegraph.tasks.domain_split.operator import apply_stencil
    from tilegraph.tasks.domain_split.problems import Problem
    from tilegraph.tasks.domain_split.separable import FrozenStack, SeparableSolver
    from tilegraph.tasks.picard.models import GaussianMixture
    from tilegraph.tasks.picard.schedules import make_schedule

    rng = np.random.default_rng(0)
    out = []
    abar = make_schedule("linear", 1000)
    gmm = GaussianMixture.random(args.dim, args.components, 0.25, abar)
    for p in args.windows:
        rows = p * args.samples
        x = rng.standard_normal((rows, args.dim))
        t = rng.integers(0, 1000, rows)
        out.append((f"picard window call, p={p} ({rows} rows)", gmm.eps, (x, t)))
    const2 = Problem("constant", 2, (1.0, 1.0), (2.0, 1.0))
    const3 = Problem("constant", 3, (1.0, 1.0, 1.0), (2.0, 1.0, 0.5))
    for prob, m, nb in ((const2, 31, 1024), (const3, 15, 512)):
        d = prob.d
        fd = SeparableSolver.build(prob, [m] * d, [1.0 / 1024] * d)
        f = rng.standard_normal((nb, *([m] * d)))
        out.append((f"box solves, {d}-D constant, {nb} boxes of {m}^{d}", fd.solve, (f,)))
    for d, m, nb in ((2, 31, 1024), (3, 15, 512)):
        alpha = rng.uniform(0.5, 2, (d, nb))
        beta = rng.uniform(-1, 1, (d, nb))
        stack, _ = FrozenStack.build(alpha, beta, [m] * d, 1.0 / 1024)
        f = rng.standard_normal((nb, *([m] * d)))
        out.append((f"box solves, {d}-D frozen, {nb} boxes of {m}^{d}", stack.solve, (f,)))
    var2 = Problem("variable", 2)
    for d, n, prob in ((2, 1024, var2), (3, 128, Problem("variable", 3))):
        u = rng.standard_normal(tuple(n // 4 + 3 for _ in range(d)))

        def stencil(u_ext, prob=prob, n=n):
            return apply_stencil(prob, u_ext, (n // 8,) * u_ext.ndim, n, "central")

        out.append((f"stencil, {d}-D variable, block of {(n // 4 + 1)}^{d}", stencil, (u,)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--repeats", type=positive(int), default=7, help="timed calls per kernel (%(default)s)"
    )
    ap.add_argument(
        "--dim", type=positive(int), default=128, help="picard GMM dimension (%(default)s)"
    )
    ap.add_argument(
        "--components",
        type=positive(int),
        default=8192,
        help="picard GMM components (%(default)s)",
    )
    ap.add_argument(
        "--samples", type=positive(int), default=64, help="picard samples (%(default)s)"
    )
    ap.add_argument(
        "--windows",
        type=positive(int),
        nargs="+",
        default=[1, 8, 32],
        help="picard window sizes p (default: %(default)s)",
    )
    ap.add_argument(
        "--agree",
        type=positive(float),
        default=1e-9,
        help="largest max_rel at which a speed-up is shown (%(default)s)",
    )
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "gpu_kernels.json"),
        help="JSON written (%(default)s)",
    )
    args = ap.parse_args(argv)

    cp, why = cupy_or_reason()
    rows = []
    print(f"{'kernel':48s} {'cpu ms':>9} {'gpu ms':>9} {'cpu/gpu':>8}  max_rel")
    for name, fn, host in kernels(args):
        cpu_s, ref = timed(fn, host, args.repeats)
        row = {"kernel": name, "cpu_s": cpu_s, "gpu_s": None, "speedup": None, "max_rel": None}
        if cp is not None:
            try:
                dev = tuple(cp.asarray(a) for a in host)
                gpu_s, got = timed(fn, dev, args.repeats, cp.cuda.Device().synchronize)
                got = cp.asnumpy(got)
                scale = float(np.abs(ref).max()) or 1.0
                row.update(gpu_s=gpu_s, speedup=cpu_s / gpu_s,
                           max_rel=float(np.abs(got - ref).max()) / scale)  # fmt: skip
            except Exception as exc:  # report it in the table, go on with the next kernel
                row["error"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(row)
        gpu = f"{row['gpu_s'] * 1e3:9.3f}" if row["gpu_s"] else f"{'-':>9}"
        if row["speedup"] and row["max_rel"] is not None and row["max_rel"] < args.agree:
            sp = f"{row['speedup']:7.1f}x"
        elif row["speedup"]:  # a speed-up at another result is none
            sp = f"{'DIFFERS':>8}"
        else:
            sp = f"{'-':>8}"
        row["agree"] = row["max_rel"] is not None and row["max_rel"] < args.agree
        err = f"{row['max_rel']:.1e}" if row["max_rel"] is not None else (why or "")
        err = row.get("error", err)
        print(f"{name:48s} {cpu_s * 1e3:9.3f} {gpu} {sp}  {err}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cuda": why, "args": vars(args), "rows": rows}, indent=1))
    print(f"(ms: cpu, gpu; speed-up cpu/gpu where max_rel < {args.agree:g}, else DIFFERS; "
          f"max relative difference)  wrote {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
