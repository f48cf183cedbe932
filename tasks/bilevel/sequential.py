"""The whole iteration in one process: the reference the distributed pipeline must
reproduce bit for bit, and a quick way to try settings."""

from __future__ import annotations

import numpy as np

from .methods import StepSizes, block_step, init_state, state_size, upper_step
from .problems import BlockProblem
from .sampling import draw, init_batches


def run_sequential(
    problem: BlockProblem,
    method: str,
    steps: StepSizes,
    iterations: int,
    n_blocks: int,
    batch: int,
    eta,
    beta: float,
    seed: int = 0,
    x_star=None,
    tol: float | None = None,
):
    """Run ``iterations`` iterations (or until ``|x - x*| <= tol |x*|``).

    ``eta`` is the upper step, a float or a function of the iteration ``t``; the other
    parameters are as in the pipeline's config.

    Returns
    -------
    x : numpy.ndarray, shape (dim_x,)
    dist : list of float
        ``|x_t - x*| / |x*|`` after each iteration (empty without ``x_star``).
    """
    m = problem.m
    x = np.asarray(problem.x0, dtype=np.float64)
    init_idx = init_batches(seed, m, batch, problem.n_lower)
    state = np.stack([init_state(problem, method, i, x, steps, init_idx[i]) for i in range(m)])
    assert state.shape[1] == state_size(method, problem.dim_y)
    last = np.full(m, -1)
    x_prev, z = x, np.zeros_like(x)
    dist = []
    for t in range(iterations):
        d = draw(seed, t, m, n_blocks, batch, problem.n_lower, problem.n_upper)
        G_new = np.zeros_like(x)
        G_old = np.zeros_like(x)
        for k, i in enumerate(d.blocks):
            state[i], gn, go = block_step(
                problem,
                method,
                int(i),
                state[i],
                x,
                x_prev,
                d.idx_g[k],
                d.idx_f[k],
                int(t - last[i] - 1),
                steps,
                first=(t == 0),
            )
            G_new, G_old = G_new + gn, G_old + go
            last[i] = t
        eta_t = eta(t) if callable(eta) else eta
        x_next, z = upper_step(
            method, x, z, G_new / n_blocks, G_old / n_blocks, eta_t, beta, t == 0
        )
        x_prev, x = x, x_next
        if x_star is not None:
            dist.append(float(np.linalg.norm(x - x_star) / np.linalg.norm(x_star)))
            if tol is not None and dist[-1] <= tol:
                break
    return x, dist
