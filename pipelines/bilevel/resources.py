"""Memory and store size of a ``bilevel`` run, estimated from its config.

What grows with the config (``m`` blocks, float64):

* **the problem's data**, built on the driver and shipped once to every worker
  (``Executor.put``): for ``quadratic`` the lower samples ``A`` (``m x n_lower x
  dim_y``), the couplings ``P`` (``m x dim_y x dim_x``) and the lower Hessians ``Q``
  (``m x dim_y x dim_y``); for ``logistic-hpo`` the scaled labels (``m x 569``);
  ``digits-ridge`` is fixed (the 8x8 digits). Usually the largest item, on the driver
  and on every worker alike.
* **the block states**: ``m x 3`` slots of ``n_state`` values in Zarr (``n_state = 3
  dim_y + dim_y^2`` for ``bsvrb-v1``, ``6 dim_y`` for ``bsvrb-v2``, ``2 dim_y``
  otherwise). Tasks read and write one slot; the driver reads them all once, for the
  result.
* **a block task**: its batch's rows and, for ``bsvrb-v1`` (and the exact lower
  solutions of the history points, on the driver), ``dim_y x dim_y`` Hessians.

The store holds the state array of every method run (``method`` and ``compare``), the
histories, the result (``x``, ``y`` per block) and up to three checkpoints of the upper
iterates (deleted at the end). Only array memory is estimated (what grows with the
config): the Python process with its imported modules comes on top.
"""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.bilevel.methods import state_size

from ..base import Estimate

#: Bytes of a float64.
F8 = 8
#: Rows and columns (with the constant one) of the data sets the problems load: the 8x8
#: digits (constant pixels dropped) and breast-cancer.
DIGITS_ROWS, DIGITS_COLS = 1797, 62
CANCER_ROWS, CANCER_COLS = 569, 31
#: Every estimate is capped here (1 ZiB): sizes beyond are refused anyway.
CAP = 2**70


def _cap(n: float) -> int:
    return int(min(max(n, 0), CAP))


def problem_bytes(p) -> tuple[int, int, dict]:
    """``(data, peak while built, per-field data)`` bytes of the problem ``p``
    (a :class:`~tilegraph.pipelines.bilevel.config.ProblemConfig`)."""
    if p.kind == "quadratic":
        m, dx, dy, n = p.m, p.dim_x, p.dim_y, p.n_lower
        A, P, Q = F8 * m * n * dy, F8 * m * dy * dx, F8 * m * dy * dy
        small = F8 * m * dy * 4  # c, t and the draws behind them
        data = A + P + Q + small
        # drawn, scaled and summed in place (NumPy reuses the temporaries' buffers); x*
        # solves the upper normal equations
        built = data + F8 * (2 * dx * dx + dy * dx)
        parts = {"problem.n_lower": A, "problem.dim_x": P, "problem.dim_y": Q}
        return data, built, parts
    if p.kind == "digits-ridge":
        data = F8 * (3 * DIGITS_ROWS * DIGITS_COLS + 3 * 10 * DIGITS_ROWS)
        return data, 2 * data, {"problem.n_train": data}
    if p.kind == "dataset":
        # a process holds the blocks it has read: at most all of them (the driver: none,
        # one at a time while checking); the largest block while it is read
        prob = p.build()
        rows = (prob.n_lower + prob.n_upper) * (prob.dim_y + 1)
        data = F8 * int(rows.sum())
        return data, F8 * int(rows.max()), {"problem.dataset": data}
    if p.kind == "custom":  # the factory's own data: not known here
        return 0, 0, {"problem.factory": 0}
    # logistic-hpo: the data, and the labels divided by each block's temperature
    labels = F8 * p.m * CANCER_ROWS
    data = F8 * 3 * CANCER_ROWS * CANCER_COLS + labels
    return data, data + labels, {"problem.m": labels}


def _dims(cfg) -> tuple[int, int, int, int]:
    """``(dim_x, dim_y, n_lower, n_upper)`` of the configured problem."""
    p = cfg.problem
    if p.kind == "quadratic":
        return p.dim_x, p.dim_y, p.n_lower, 1
    if p.kind == "digits-ridge":
        return DIGITS_COLS, DIGITS_COLS, p.n_train, DIGITS_ROWS - p.n_train
    if p.kind in ("dataset", "custom"):
        prob = p.build()
        return prob.dim_x, prob.dim_y, int(np.max(prob.n_lower)), int(np.max(prob.n_upper))
    return p.n_train, CANCER_COLS, p.n_train, CANCER_ROWS - p.n_train


def estimate(cfg, workers: int) -> Estimate:
    """Peak memory of the driver and of one worker, and the store size, of a run.

    Parameters
    ----------
    cfg : BilevelConfig
    workers : int
        Workers (each holds a copy of the problem; at least 1).

    Returns
    -------
    Estimate
        Bytes of array memory; ``field`` is the problem field behind the largest array
        (``problem.m`` when the number of blocks is what makes it large).
    """
    m = cfg.m
    dx, dy, n_lower, _ = _dims(cfg)
    data, built, parts = problem_bytes(cfg.problem)
    methods = [cfg.method, *(mm for mm in dict.fromkeys(cfg.compare) if mm != cfg.method)]
    n_state = max(state_size(mm, dy) for mm in methods)
    states = F8 * m * 3 * n_state

    # a block task: its batch's rows, Hessians (bsvrb-v1), the F2SA / logistic one-hot
    B = cfg.batch
    hess = F8 * 4 * dy * dy if "bsvrb-v1" in methods else 0
    task = F8 * (4 * B * dy + 2 * B * dx + 6 * n_state + 8 * dx) + hess
    # the exact lower solutions and hypergradient of a history point (one block at a
    # time, a Hessian each) and the upper iterates
    exact = F8 * (3 * dy * dy + 2 * m * dy + 10 * dx)
    # the result: every state read back, one slot per block picked, y stacked
    result = states + F8 * m * (n_state + dy)
    if cfg.problem.kind == "dataset":  # the driver reads no block (but while checking)
        driver = max(built, exact + result)
    else:
        driver = max(built, data + max(exact, result))
    worker = data + task * -(-cfg.blocks_per_iter // max(1, int(workers)))

    # -- the store -----------------------------------------------------------------
    # slot 0 of every block, then one slot per sampled block and iteration (at most the
    # other two slots of every block), one chunk each
    chunks = m + min(2 * m, cfg.blocks_per_iter * cfg.max_iter)
    store = sum(F8 * chunks * state_size(mm, dy) for mm in methods)
    evals = cfg.max_iter // cfg.eval_every + 2
    store += F8 * (len(methods) * 4 * evals + m * dy + 2 * dx)  # histories, result
    store += 3 * F8 * (3 * dx + 4 * evals)  # the newest three checkpoints

    # the field behind the largest array: a dimension, or the number of blocks
    field, largest = max(parts.items(), key=lambda kv: kv[1])
    if states > largest:
        field = "problem.dim_y"
    if cfg.problem.kind == "quadratic" and m > max(n_lower, dx, dy):
        field = "problem.m"
    if cfg.problem.kind == "digits-ridge":
        alternative = "more workers"  # a fixed data set: nothing to make smaller
    elif field == "problem.m":
        alternative = "smaller block dimensions"
    else:
        alternative = "fewer blocks (problem.m)"
    return Estimate(_cap(driver), _cap(worker), _cap(store), field, alternative)


__all__ = ["estimate", "problem_bytes"]
