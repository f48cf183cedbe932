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
    lower, diag, upper = stencil_1d(a, b, h, scheme)
    return float(lower), float(diag), float(upper)


def stencil_1d(a, b, h: float, scheme: str):
    """``(lower, diag, upper)`` of ``-a u'' + b u'`` on a uniform 1-D grid of spacing
    ``h``: scalars or NumPy arrays of coefficients alike (elementwise)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lower, diag, upper = -a / h**2, 2.0 * a / h**2, -a / h**2
    if scheme == "central":
        return lower - b / (2.0 * h), diag, upper + b / (2.0 * h)
    back = b > 0  # upwind: a backward difference where b > 0, forward elsewhere
    return (
        np.where(back, lower - b / h, lower),
        np.where(back, diag + b / h, diag - b / h),
        np.where(back, upper, upper + b / h),
    )


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


def sine_basis(n: int) -> np.ndarray:
    """The orthonormal DST-I matrix ``Q_ij = sqrt(2 / (n + 1)) sin(pi i j / (n + 1))``,
    ``i, j = 1 .. n``: symmetric, orthogonal, and the eigenvector basis of every
    symmetric tridiagonal Toeplitz matrix of order ``n``."""
    j = np.arange(1, n + 1)
    return np.sqrt(2.0 / (n + 1)) * np.sin(np.pi * np.outer(j, j) / (n + 1))


class FrozenStack:
    """Fast-diagonalisation solvers of boxes of one shape, each with its own constant
    (frozen) coefficients, applied together.

    A constant-coefficient 1-D operator is tridiagonal Toeplitz; its symmetrised form
    ``D T D^-1`` (``D = diag(rho^i)``, see :class:`SeparableSolver`) is symmetric
    Toeplitz, whose eigenvectors are the sine basis whatever the coefficients, with
    eigenvalues ``diag - 2 sqrt(lower upper) cos(pi j / (n + 1))``. So every box of a
    shape shares one matrix ``Q`` per axis, and a box is its scalings ``D`` and its
    eigenvalues, ``2 d n`` numbers: no eigendecomposition per box, and the products are
    shared-matrix products over the whole stack.

    Use :meth:`build`.

    Parameters
    ----------
    Q : list of array, shape ``(n_k, n_k)``
        The sine basis of each axis.
    scales, lams : list of array, shape ``(n_boxes, n_k)``
        Per axis, the diagonal of ``D_k`` and the eigenvalues of each box.
    compact : bool
        Form the per-box grids ``1 / sum_k lambda_k`` and (in 3-D) ``D_1 x .. x D_d``
        at every solve instead of keeping them (``n^d`` numbers each per box; a solve
        then takes about twice as long). In 2-D the scalings are applied axis by axis
        and never kept as a grid: two passes over the boxes cost no measurable time
        there, while in 3-D three cost 5 % of the solve, so the grid is kept.
    """

    def __init__(self, Q, scales, lams, compact: bool = False):
        self.Q, self.scales, self.lams = Q, scales, lams
        self.compact = compact
        self.shape = tuple(q.shape[0] for q in Q)
        self._on: dict = {}

    @classmethod
    def build(cls, alpha, beta, sizes, h: float, scheme: str = "central", compact=False):
        """The stack for boxes with coefficients ``alpha[k, b]``, ``beta[k, b]`` (axis
        ``k``, box ``b``) and ``sizes`` interior nodes per axis, spacing ``h``
        (``compact``: see the class).

        Returns
        -------
        stack : FrozenStack or None
            The solvers of the boxes where fast diagonalisation applies (None if none).
        ok : numpy.ndarray of bool, shape ``(n_boxes,)``
            Which boxes are in ``stack``: not those whose off-diagonals differ in sign
            (central differences above cell Peclet number 1) or whose scaling ``D``
            would be ill-conditioned (``n |log rho| > MAX_LOG_SCALE``).
        """
        alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
        nb = alpha.shape[1]
        ok = np.ones(nb, dtype=bool)
        per_axis = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, n in enumerate(sizes):
                lower, diag, upper = stencil_1d(alpha[k], beta[k], h, scheme)
                if n > 1:
                    ok &= lower * upper > 0
                    log_rho = np.where(ok, 0.5 * np.log(np.abs(upper / lower)), 0.0)
                    ok &= n * np.abs(log_rho) <= MAX_LOG_SCALE
                    off = -np.sqrt(np.abs(lower * upper))
                else:
                    log_rho, off = np.zeros(nb), np.zeros(nb)
                per_axis.append((diag, off, log_rho))
        if not ok.any():
            return None, ok
        scales, lams = [], []
        for n, (diag, off, log_rho) in zip(sizes, per_axis, strict=True):
            j = np.arange(1, n + 1)
            lams.append(diag[ok, None] + 2.0 * off[ok, None] * np.cos(np.pi * j / (n + 1)))
            scales.append(np.exp(log_rho[ok, None] * np.arange(n)))
        return cls([sine_basis(n) for n in sizes], scales, lams, compact), ok

    def _arrays(self, xp):
        key = xp.__name__
        if key not in self._on:
            conv = (lambda a: a) if is_numpy_namespace(xp) else xp.asarray
            self._on[key] = tuple(
                [conv(a) for a in arrays] for arrays in (self.Q, self.scales, self.lams)
            )
        return self._on[key]

    def _grid(self, per_axis, combine, xp, out=None):
        """Per-box grids ``combine``-d from per-axis vectors (onto ``out`` if given):
        shape ``(n_boxes, *shape)``."""
        d = len(self.shape)
        for k, a in enumerate(per_axis):
            view = [1] * d
            view[k] = self.shape[k]
            a = xp.reshape(a, (a.shape[0], *view))
            out = a if out is None else combine(out, a)
        return out

    def _sines(self, f, Q, xp):
        """``Q`` along every box axis of ``f`` (``Q`` is symmetric: its own transpose)."""
        nb = f.shape[0]
        for k, n in enumerate(self.shape):
            pre = nb * math.prod(self.shape[:k])
            post = math.prod(self.shape[k + 1 :])
            if post == 1:  # the last axis: one product for the whole stack
                f = xp.matmul(xp.reshape(f, (pre, n)), Q[k])
            else:
                f = xp.matmul(Q[k], xp.reshape(f, (pre, n, post)))
        return xp.reshape(f, (nb, *self.shape))

    def solve(self, f):
        """Solve box ``b``'s frozen system for ``f[b]``, every box at once.

        Parameters
        ----------
        f : array, shape ``(n_boxes, *self.shape)``
            float64, any array-API namespace (NumPy, CuPy, ...).

        Returns
        -------
        array, same shape and namespace
        """
        xp = array_namespace(f)
        Q = self._arrays(xp)[0]
        inv_lam, scale = self._grids(xp)
        g = self._sines(self._scaled(f, scale, xp, xp.multiply), Q, xp)
        return self._scaled(self._sines(g * inv_lam, Q, xp), scale, xp, xp.divide)

    def _scaled(self, f, scale, xp, op):
        """``op(f, D_1 x .. x D_d)``: with the grid, or axis by axis from the per-axis
        scalings (a list)."""
        return self._grid(scale, op, xp, out=f) if isinstance(scale, list) else op(f, scale)

    def _grids(self, xp):
        """``(inv_lam, scale)``: the per-box grid ``1 / sum_k lambda_k`` and the
        scalings (a grid in 3-D, the per-axis list in 2-D), kept unless ``compact``."""
        key = ("grids", xp.__name__)
        if key in self._on:
            return self._on[key]
        _, scales, lams = self._arrays(xp)
        inv_lam = 1.0 / self._grid(lams, lambda a, b: a + b, xp)
        scale = scales if len(self.shape) < 3 else self._grid(scales, lambda a, b: a * b, xp)
        if not self.compact:
            self._on[key] = (inv_lam, scale)
        return inv_lam, scale
