"""Manufactured steady advection-diffusion problems on the unit cube.

Every problem is ``-sum_k alpha_k(x) d2u/dx_k^2 + sum_k beta_k(x) du/dx_k = f`` on
``[0, 1]^d`` with Dirichlet data taken from a known exact solution, so the error of any
discrete solution can be measured. Problems are plain frozen dataclasses: picklable,
hashable and cheap to ship to workers.

Coefficient functions take ``coords``, a tuple of ``d`` arrays that broadcast against
each other (for example ``numpy.meshgrid(..., indexing="ij", sparse=True)``), and return
arrays of the broadcast shape. They use only array-API operations, so they work on NumPy
and CuPy arrays alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from array_api_compat import array_namespace

KINDS = ("constant", "variable", "boundary-layer")


@dataclass(frozen=True)
class Problem:
    """One manufactured problem.

    Parameters
    ----------
    kind : {"constant", "variable", "boundary-layer"}
        ``constant``: constant ``alpha`` and ``beta``, exact ``u = sin(pi * sum_k x_k)``.
        ``variable``: the paper's coefficients, in 2-D ``alpha = (1 + x^2, 2 + x y)``,
        ``beta = (2 - x, 1 + y)`` (3-D adds ``alpha_3 = 3 + y z``, ``beta_3 = 1 + z``),
        exact ``u = sin(pi * sum_k x_k)``.
        ``boundary-layer``: ``-eps Laplace(u) + beta . grad(u) = 0`` with the exact
        solution ``u = prod_k (exp(beta_k x_k / eps) - 1) / (exp(beta_k / eps) - 1)``,
        which has boundary layers of width ``eps / beta_k`` at ``x_k = 1``.
    d : int
        Space dimension, 2 or 3 (the kernels work for any ``d >= 1``).
    alpha, beta : tuple of float
        Constant diffusion and advection coefficients (``constant`` only; ``beta`` is
        also the advection velocity of ``boundary-layer``).
    eps : float
        Diffusion coefficient of ``boundary-layer``.
    """

    kind: str = "constant"
    d: int = 2
    alpha: tuple[float, ...] = (1.0, 1.0)
    beta: tuple[float, ...] = (0.0, 0.0)
    eps: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"problem.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("constant", "boundary-layer") and len(self.beta) != self.d:
            raise ValueError(f"problem.beta needs {self.d} entries, got {len(self.beta)}")
        if self.kind == "constant" and len(self.alpha) != self.d:
            raise ValueError(f"problem.alpha needs {self.d} entries, got {len(self.alpha)}")
        if self.kind == "variable" and self.d not in (2, 3):
            raise ValueError("problem.kind 'variable' is defined for d = 2 and 3")

    @property
    def constant_coefficients(self) -> bool:
        """True when alpha and beta do not depend on x (all boxes share one matrix)."""
        return self.kind != "variable"

    has_exact = True

    # -- coefficients -----------------------------------------------------------------
    def alpha_k(self, k: int, coords):
        """Diffusion coefficient ``alpha_k`` at ``coords`` (dimensionless)."""
        xp = array_namespace(*coords)
        shape = _bshape(coords)
        if self.kind == "constant":
            return xp.full(shape, float(self.alpha[k]), dtype=coords[0].dtype)
        if self.kind == "boundary-layer":
            return xp.full(shape, float(self.eps), dtype=coords[0].dtype)
        x = coords
        val = (1.0 + x[0] ** 2, 2.0 + x[0] * x[1], 3.0 + x[1] * x[-1])[k]
        return xp.broadcast_to(val, shape)

    def beta_k(self, k: int, coords):
        """Advection velocity component ``beta_k`` at ``coords``."""
        xp = array_namespace(*coords)
        shape = _bshape(coords)
        if self.kind in ("constant", "boundary-layer"):
            return xp.full(shape, float(self.beta[k]), dtype=coords[0].dtype)
        x = coords
        val = (2.0 - x[0], 1.0 + x[1], 1.0 + x[-1])[k]
        return xp.broadcast_to(val, shape)

    # -- solution and data ------------------------------------------------------------
    def exact(self, coords):
        """Exact solution ``u`` at ``coords``."""
        xp = array_namespace(*coords)
        if self.kind == "boundary-layer":
            out = None
            for k, x in enumerate(coords):
                fk = _layer(xp, x, self.beta[k], self.eps)
                out = fk if out is None else out * fk
            return xp.broadcast_to(out, _bshape(coords))
        return xp.sin(math.pi * _sum(coords))

    def rhs(self, coords):
        """Right-hand side ``f = L u`` of the exact solution, evaluated analytically."""
        xp = array_namespace(*coords)
        shape = _bshape(coords)
        if self.kind == "boundary-layer":
            return xp.zeros(shape, dtype=coords[0].dtype)
        s = _sum(coords)
        sin, cos = xp.sin(math.pi * s), xp.cos(math.pi * s)
        f = xp.zeros(shape, dtype=coords[0].dtype)
        for k in range(self.d):
            f = f + self.alpha_k(k, coords) * (math.pi**2) * sin
            f = f + self.beta_k(k, coords) * math.pi * cos
        return f

    def boundary(self, coords):
        """Dirichlet data ``g`` (the exact solution) at ``coords``."""
        return self.exact(coords)

    def max_cell_peclet(self, h: float, n_samples: int = 9) -> float:
        """Largest cell Peclet number ``|beta_k| h / (2 alpha_k)`` over a sample grid.

        Parameters
        ----------
        h : float
            Mesh width of the cell.
        n_samples : int
            Points per direction at which variable coefficients are sampled.
        """
        import numpy as np

        t = np.linspace(0.0, 1.0, n_samples)
        coords = tuple(np.meshgrid(*([t] * self.d), indexing="ij", sparse=True))
        worst = 0.0
        for k in range(self.d):
            pe = np.abs(self.beta_k(k, coords)) * h / (2.0 * self.alpha_k(k, coords))
            worst = max(worst, float(np.max(pe)))
        return worst


@dataclass(frozen=True)
class OnBox:
    """A problem given on a box ``[a_1, b_1] x ... x [a_d, b_d]``, as the solver sees it
    on the unit cube.

    With ``x_k = a_k + L_k xi_k`` (``L_k = b_k - a_k``) the PDE
    ``-sum alpha_k u_{x_k x_k} + sum beta_k u_{x_k} = f`` becomes one on the unit cube
    with ``alpha_k / L_k^2`` and ``beta_k / L_k``; ``f`` and the boundary data are the
    same values. The solver, its grids and kernels stay on the unit cube.

    Parameters
    ----------
    inner : object
        The problem in physical coordinates: ``alpha_k(k, coords)``,
        ``beta_k(k, coords)``, ``rhs(coords)``, ``boundary(coords)`` and, optionally,
        ``exact(coords)`` and ``constant_coefficients`` (default False). ``coords`` is a
        tuple of ``d`` broadcastable arrays; results may be scalars or broadcastable.
    domain : tuple of (float, float)
        ``(a_k, b_k)`` per axis, ``a_k < b_k``.
    kind : str
        Name shown in titles.
    """

    inner: object
    domain: tuple[tuple[float, float], ...]
    kind: str = "custom"

    def __post_init__(self):
        if any(not (a < b) for a, b in self.domain):
            raise ValueError(f"problem.domain: every axis needs a < b (got {self.domain})")

    @property
    def d(self) -> int:
        return len(self.domain)

    @property
    def constant_coefficients(self) -> bool:
        return bool(getattr(self.inner, "constant_coefficients", False))

    @property
    def has_exact(self) -> bool:
        """Whether the problem knows its exact solution."""
        known = getattr(self.inner, "has_exact", None)
        return bool(known) if known is not None else callable(getattr(self.inner, "exact", None))

    def physical(self, coords):
        """Unit-cube coordinates to the box's."""
        return tuple(a + (b - a) * c for c, (a, b) in zip(coords, self.domain, strict=True))

    def _full(self, value, coords):
        xp = array_namespace(*coords)
        value = xp.asarray(value, dtype=coords[0].dtype)
        return xp.broadcast_to(value, _bshape(coords))

    def alpha_k(self, k: int, coords):
        length = self.domain[k][1] - self.domain[k][0]
        return self._full(self.inner.alpha_k(k, self.physical(coords)), coords) / length**2

    def beta_k(self, k: int, coords):
        length = self.domain[k][1] - self.domain[k][0]
        return self._full(self.inner.beta_k(k, self.physical(coords)), coords) / length

    def rhs(self, coords):
        return self._full(self.inner.rhs(self.physical(coords)), coords)

    def boundary(self, coords):
        return self._full(self.inner.boundary(self.physical(coords)), coords)

    def exact(self, coords):
        return self._full(self.inner.exact(self.physical(coords)), coords)

    max_cell_peclet = Problem.max_cell_peclet


def _bshape(coords):
    shape: tuple[int, ...] = ()
    for c in coords:
        shape = _broadcast_shapes(shape, tuple(c.shape))
    return shape


def _broadcast_shapes(a, b):
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def _sum(coords):
    s = coords[0]
    for c in coords[1:]:
        s = s + c
    return s


def _layer(xp, x, b: float, eps: float):
    """``(exp(b x / eps) - 1) / (exp(b / eps) - 1)`` without overflow (any sign of b)."""
    if b == 0.0:
        return x
    r = b / eps
    if r > 0:
        return (xp.exp(r * (x - 1.0)) - math.exp(-r)) / (1.0 - math.exp(-r))
    return (xp.exp(r * x) - 1.0) / (math.exp(r) - 1.0)
