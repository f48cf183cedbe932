"""Fast diagonalisation: direct solves of constant-coefficient operators on tensor grids.

With constant ``alpha`` and ``beta`` the discrete operator on a box (or a sub-mesh) with
Dirichlet data is a Kronecker sum ``A = sum_k I x .. x T_k x .. x I`` of 1-D tridiagonal
matrices ``T_k``. Each ``T_k`` is similar to a symmetric matrix through the diagonal
scaling ``D = diag(rho^i)``, ``rho = sqrt(upper / lower)`` (both off-diagonals have the
same sign for central differences below cell Peclet number 1 and for upwinding), so
``T_k = V_k diag(lambda_k) V_k^-1`` with ``V_k = D^-1 Q_k`` real and

    A^-1 f = (V_1 x .. x V_d) [ (V_1^-1 x .. x V_d^-1) f / (lambda_1 + .. + lambda_d) ].

A solve costs ``2 d n^(d+1)`` flops for an ``n^d`` box, in dense matrix products, instead
of a sparse LU's fill-dominated triangular solves, and needs no factorisation storage.
The scaling ``D`` grows like ``rho^n``: :meth:`SeparableSolver.build` refuses sizes where
it would cost more than a few digits (strong advection over many nodes).
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace

from .problems import Problem

#: largest ``n |log rho|`` accepted: the eigenvector basis has condition ~exp(2 of this)
MAX_LOG_SCALE = 8.0


def tridiagonal(problem: Problem, k: int, h: float, scheme: str) -> tuple[float, float, float]:
    """``(lower, diag, upper)`` of the 1-D operator along axis ``k`` with spacing ``h``
    (constant-coefficient problems only)."""
    origin = (np.zeros(1),) * problem.d
    a = float(np.asarray(problem.alpha_k(k, origin)).ravel()[0])
    b = float(np.asarray(problem.beta_k(k, origin)).ravel()[0])
    lower, diag, upper = -a / h**2, 2.0 * a / h**2, -a / h**2
    if scheme == "central":
        lower, upper = lower - b / (2.0 * h), upper + b / (2.0 * h)
    elif b > 0:
        lower, diag = lower - b / h, diag + b / h
    else:
        diag, upper = diag - b / h, upper + b / h
    return lower, diag, upper


class SeparableSolver:
    """Direct solver for one grid shape by fast diagonalisation.

    Use :meth:`build`, which returns None where the method does not apply.

    Parameters
    ----------
    bases : list of tuple
        Per axis ``(V, V_inv, lam)``.
    edges : list of tuple
        Per axis ``(lower, upper)``: the couplings of the first and last interior node
        to the boundary nodes.
    """

    def __init__(self, bases, edges):
        self.bases, self.edges = bases, edges
        lam = [b[2] for b in bases]
        d = len(lam)
        total = 0.0
        for k, lk in enumerate(lam):
            shape = [1] * d
            shape[k] = lk.size
            total = total + lk.reshape(shape)
        self.inv_lam = 1.0 / total
        self.shape = tuple(lk.size for lk in lam)
        self._on: dict = {}  # namespace name -> (bases, inv_lam) as that namespace's arrays

    def _arrays(self, xp):
        key = xp.__name__
        if key not in self._on:
            if is_numpy_namespace(xp):  # the host arrays as they are
                self._on[key] = ([(V, Vi) for V, Vi, _ in self.bases], self.inv_lam)
            else:
                self._on[key] = (
                    [(xp.asarray(V), xp.asarray(Vi)) for V, Vi, _ in self.bases],
                    xp.asarray(self.inv_lam),
                )
        return self._on[key]

    @classmethod
    def build(cls, problem: Problem, sizes, spacings, scheme: str = "central"):
        """The solver for ``sizes`` interior nodes per axis with the given spacings, or
        None when the coefficients vary or the scaling would be ill-conditioned.

        Parameters
        ----------
        problem : Problem
        sizes : tuple of int
            Interior nodes per axis.
        spacings : tuple of float
            Grid spacing per axis.
        scheme : {"central", "upwind"}
        """
        if not problem.constant_coefficients:
            return None
        bases, edges = [], []
        for k, (n, h) in enumerate(zip(sizes, spacings, strict=True)):
            lower, diag, upper = tridiagonal(problem, k, h, scheme)
            if n > 1 and lower * upper <= 0:
                return None
            log_rho = 0.5 * math.log(upper / lower) if n > 1 else 0.0
            if n * abs(log_rho) > MAX_LOG_SCALE:
                return None
            off = -math.sqrt(lower * upper) if n > 1 else 0.0
            Ts = np.diag(np.full(n, diag)) + np.diag(np.full(n - 1, off), 1)
            Ts += np.diag(np.full(n - 1, off), -1)
            lam, Q = np.linalg.eigh(Ts)
            scale = np.exp(log_rho * np.arange(n))  # D = diag(rho^i)
            V = np.ascontiguousarray(Q / scale[:, None])  # D^-1 Q
            V_inv = np.ascontiguousarray(Q.T * scale[None, :])  # Q^T D
            bases.append((V, V_inv, lam))
            edges.append((lower, upper))
        return cls(bases, edges)

    def _apply(self, f, which: int, bases, xp):
        """Multiply every axis of the trailing ``d`` axes of ``f`` by ``V`` (``which=0``)
        or ``V^-1`` (``which=1``). Each product is a stack of small matrix products of
        one box's shape, so a box's bits do not depend on how many boxes share a call."""
        lead = tuple(f.shape[: f.ndim - len(self.shape)])
        nb = math.prod(lead)
        for k, n in enumerate(self.shape):
            pre = nb * math.prod(self.shape[:k])
            post = math.prod(self.shape[k + 1 :])
            f = xp.matmul(bases[k][which], xp.reshape(f, (pre, n, post)))
        return xp.reshape(f, (*lead, *self.shape))

    def solve(self, f):
        """Solve ``A u = f`` for a stack of right-hand sides.

        Parameters
        ----------
        f : array, shape ``(..., *self.shape)``
            Right-hand sides at interior nodes (boundary couplings already moved over),
            float64, any array-API namespace (NumPy, CuPy, ...).

        Returns
        -------
        array, same shape and namespace
        """
        xp = array_namespace(f)
        bases, inv_lam = self._arrays(xp)
        if isinstance(f, np.ndarray):
            f = np.ascontiguousarray(f, dtype=np.float64)
        return self._apply(self._apply(f, 1, bases, xp) * inv_lam, 0, bases, xp)

    def solve_dirichlet(self, v: np.ndarray) -> np.ndarray:
        """Solve on a whole grid: ``v`` holds the right-hand side inside and the Dirichlet
        data on the boundary (shape ``self.shape + 2`` per axis); returns the solution
        with the boundary copied from ``v``."""
        d = len(self.shape)
        inner = (slice(1, -1),) * d
        rhs = np.array(v[inner], dtype=np.float64)
        for k, (lower, upper) in enumerate(self.edges):
            for coef, src, dst in ((lower, 0, 0), (upper, -1, -1)):
                face = [slice(1, -1)] * d
                face[k] = slice(src, src + 1) if src == 0 else slice(src, None)
                at = [slice(None)] * d
                at[k] = slice(dst, dst + 1) if dst == 0 else slice(dst, None)
                rhs[tuple(at)] -= coef * v[tuple(face)]
        out = np.array(v, dtype=np.float64)
        out[inner] = self.solve(rhs)
        return out


class StackedSeparable:
    """Fast-diagonalisation solvers of boxes of one shape but different (frozen)
    coefficients, applied together: per axis a stack of ``V`` and ``V^-1``, one per box,
    and batched matrix products, instead of a Python call per box.

    Parameters
    ----------
    solvers : sequence of SeparableSolver
        One per box, all of the same ``shape``.
    """

    def __init__(self, solvers):
        self.shape = solvers[0].shape
        d = len(self.shape)
        self.V = [np.stack([s.bases[k][0] for s in solvers]) for k in range(d)]
        self.Vi = [np.stack([s.bases[k][1] for s in solvers]) for k in range(d)]
        self.inv_lam = np.stack([s.inv_lam for s in solvers])
        self._on: dict = {}

    def _arrays(self, xp):
        key = xp.__name__
        if key not in self._on:
            conv = (lambda a: a) if is_numpy_namespace(xp) else xp.asarray
            self._on[key] = (
                [conv(a) for a in self.V],
                [conv(a) for a in self.Vi],
                conv(self.inv_lam),
            )
        return self._on[key]

    def _apply(self, f, mats, xp):
        nb = f.shape[0]
        for k, n in enumerate(self.shape):
            pre = math.prod(self.shape[:k])
            post = math.prod(self.shape[k + 1 :])
            # (nb, 1, n, n) @ (nb, pre, n, post): box b's own matrix on its own axis k
            f = xp.matmul(mats[k][:, None, ...], xp.reshape(f, (nb, pre, n, post)))
        return xp.reshape(f, (nb, *self.shape))

    def solve(self, f):
        """Solve box ``b``'s system for ``f[b]``, every box at once.

        Parameters
        ----------
        f : array, shape ``(n_boxes, *self.shape)``

        Returns
        -------
        array, same shape and namespace
        """
        xp = array_namespace(f)
        V, Vi, inv_lam = self._arrays(xp)
        if isinstance(f, np.ndarray):
            f = np.ascontiguousarray(f, dtype=np.float64)
        return self._apply(self._apply(f, Vi, xp) * inv_lam, V, xp)
