"""Exact (full-data) lower solutions, hypergradients and upper objectives: the
references the stochastic methods are judged against.

``grad F(x) = (1/m) sum_i [grad_x f_i - (d^2 g_i / dx dy) (d^2 g_i / dy^2)^-1 grad_y f_i]``
at ``y = y_i*(x)``; every term is a full-batch oracle call and one linear solve.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .problems import BlockProblem


def solve_lower(problem: BlockProblem, i: int, x, y0=None, tol=1e-12, max_iter=50):
    """``y_i*(x)`` by damped Newton on the full-data ``g_i`` (one step for quadratics).

    Parameters
    ----------
    problem : BlockProblem
    i : int
        Block.
    x : array, shape (dim_x,)
    y0 : array, shape (dim_y,), optional
        Start (zeros by default).
    tol : float
        Stop when the Newton decrement ``|step| <= tol (1 + |y|)``.

    Returns
    -------
    array, shape (dim_y,)
    """
    xp = array_namespace(x)
    y = xp.zeros(problem.dim_y, dtype=x.dtype) if y0 is None else y0
    for _ in range(max_iter):
        grad = problem.grad_y_g(i, x, y)
        step = xp.linalg.solve(problem.hess_yy_g(i, x, y), grad)
        g0, t = float(problem.g(i, x, y)), 1.0
        # backtracking keeps Newton monotone on the non-quadratic (logistic) levels
        while t > 1e-8 and float(problem.g(i, x, y - t * step)) > g0 - 0.25 * t * float(
            xp.sum(grad * step)
        ):
            t *= 0.5
        y = y - t * step
        if float(xp.linalg.vector_norm(t * step)) <= tol * (1.0 + float(xp.linalg.vector_norm(y))):
            break
    return y


def block_hypergradient(problem: BlockProblem, i: int, x, y):
    """Block ``i``'s full-data hypergradient term at ``(x, y)`` (``y = y_i*(x)`` gives
    the exact one), shape (dim_x,)."""
    xp = array_namespace(x, y)
    v = xp.linalg.solve(problem.hess_yy_g(i, x, y), problem.grad_y_f(i, x, y))
    return problem.grad_x_f(i, x, y) - problem.cross_xy_g(i, x, y, v)


def lower_solutions(problem: BlockProblem, x):
    """All ``y_i*(x)``, shape (m, dim_y)."""
    xp = array_namespace(x)
    return xp.stack([solve_lower(problem, i, x) for i in range(problem.m)])


def upper_objective(problem: BlockProblem, x, ys=None) -> float:
    """``F(x) = (1/m) sum_i f_i(x, y_i*(x))`` on the full upper data."""
    if ys is None:
        ys = lower_solutions(problem, x)
    return float(sum(float(problem.f(i, x, ys[i, ...])) for i in range(problem.m)) / problem.m)


def hypergradient(problem: BlockProblem, x, ys=None):
    """Exact ``grad F(x)``, shape (dim_x,); ``ys`` are the lower solutions if known."""
    if ys is None:
        ys = lower_solutions(problem, x)
    total = block_hypergradient(problem, 0, x, ys[0, ...])
    for i in range(1, problem.m):
        total = total + block_hypergradient(problem, i, x, ys[i, ...])
    return total / problem.m


def reference_optimum(problem: BlockProblem, x0=None, gtol=1e-10) -> np.ndarray:
    """``x*``: the closed form where the problem has one, else L-BFGS-B (SciPy) on the
    exact objective and hypergradient from ``x0`` (a local minimiser for non-convex
    ``F``).

    Returns
    -------
    numpy.ndarray, shape (dim_x,)
    """
    if problem.x_star is not None:
        return np.asarray(problem.x_star)
    from scipy.optimize import minimize

    def fun(x):
        ys = lower_solutions(problem, x)
        return upper_objective(problem, x, ys), np.asarray(hypergradient(problem, x, ys))

    start = problem.x0 if x0 is None else np.asarray(x0, dtype=np.float64)
    res = minimize(fun, start, jac=True, method="L-BFGS-B", options={"gtol": gtol})
    return res.x
