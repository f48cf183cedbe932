"""A third-party pipeline for the tests: Jacobi iteration on the 1-D Poisson problem.

It is registered the way a user's package registers one (an entry point in the group
``tilegraph.pipelines``, here through the ``.dist-info`` folder next to it, which
``tests/conftest.py`` puts on the path), so that the generic pipeline suite
(``tests/test_pipelines.py``) covers it without naming it. Each iteration is one pure task
per block of unknowns; ``spin_s`` keeps a task busy (CPU, not sleep) so that a killed
worker is a busy one.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field
from tilegraph.pipelines.base import Checks, Pipeline, PipelineConfig, RunContext


class JacobiConfig(PipelineConfig):
    n: int = Field(default=64, ge=2, le=100_000, description="interior grid points")
    blocks: int = Field(default=2, ge=1, le=64, description="tasks per iteration")
    iterations: int = Field(default=100, ge=1, description="Jacobi iterations")
    spin_s: float = Field(default=0.0, ge=0, le=1, description="busy seconds per task")


def sweep(block: tuple[int, int], x: np.ndarray, f: np.ndarray, h: float, spin_s: float):
    """One Jacobi update of unknowns ``block = (lo, hi)`` of ``-u'' = f``, ``u(0)=u(1)=0``.

    Returns
    -------
    numpy.ndarray, shape ``(hi - lo,)``
    """
    end = time.perf_counter() + spin_s
    while time.perf_counter() < end:
        pass
    lo, hi = block
    padded = np.concatenate([[0.0], x, [0.0]])
    return 0.5 * (h * h * f[lo:hi] + padded[lo:hi] + padded[lo + 2 : hi + 2])


def run(cfg: JacobiConfig, ctx: RunContext) -> dict:
    import xarray as xr
    from scipy.linalg import solve_banded

    n, h = cfg.n, 1.0 / (cfg.n + 1)
    grid = np.linspace(h, 1 - h, n)
    f = np.pi**2 * np.sin(np.pi * grid)
    edges = np.linspace(0, n, cfg.blocks + 1).astype(int)
    blocks = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ctx.enter("solve")
    saved = ctx.restore()
    x, it = (saved.arrays["x"], int(saved.scalars["it"])) if saved else (np.zeros(n), 0)
    with ctx.progress(cfg.iterations, "jacobi", done=it) as bar:
        while it < cfg.iterations:
            parts = ctx.executor.gather(
                ctx.executor.map(sweep, blocks, x=x, f=f, h=h, spin_s=cfg.spin_s)
            )
            x, it = np.concatenate(parts), it + 1
            bar.update(1)
            ctx.checkpoint(it, {"x": x}, {"it": it})
    ctx.enter("output")
    bands = np.vstack([np.full(n, -1.0), np.full(n, 2.0), np.full(n, -1.0)])
    direct = solve_banded((1, 1), bands, h * h * f)
    ds = xr.Dataset({"x": ("grid", x), "direct": ("grid", direct)}, coords={"grid": grid})
    ctx.store.write_dataset("result", ds)
    return {
        "iterations": it,
        "rel_error_direct": float(np.linalg.norm(x - direct) / np.linalg.norm(direct)),
    }


PIPELINE = Pipeline(
    name="jacobi",
    description="test plugin: Jacobi iteration on the 1-D Poisson problem",
    config=JacobiConfig,
    presets={"quick": {}},
    run=run,
    metric_names=("iterations", "rel_error_direct", "wall_s"),
    checks=Checks(
        small={"iterations": 20},
        long={"iterations": 100, "spin_s": 0.02, "checkpoint_s": 0},
        datasets=("result",),
    ),
)
