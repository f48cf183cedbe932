"""Sub-mesh solves, the merge at coarse nodes, the spline correction and the skeleton.

Given a fine-grid vector ``v`` (``f`` or a residual inside, Dirichlet data on the
boundary), one application of the two-level approximation ``T v`` is

1. restrict ``v`` to every sub-mesh ``S`` (injection: sub-mesh nodes are fine nodes);
2. solve the sub-mesh problems ``L_S w_S = v|_S`` (:class:`SubmeshSolver`);
3. merge at the coarse nodes, ``M = sum_S c_S w_S`` (:func:`merge`);
4. add to each ``w_S`` the tensor-product cubic spline of the mismatch ``M - w_S`` at
   the coarse nodes (:func:`correct`), so every corrected ``w'_S`` equals ``M`` there;
5. skeleton values: at a skeleton node ``x`` whose coordinates are coarse along the
   axes ``C(x)``, ``z(x) = sum over non-empty S in C(x) of (-1)^(|S|-1) w'_S(x)``
   (:func:`skeleton`) -- the combination technique on each stratum of the skeleton.
   In 2-D it takes the corrected line solutions on the lines and ``M`` at coarse
   nodes; in 3-D planes, lines and points are treated alike;
6. Dirichlet solves in the boxes (:mod:`.holes`).

Steps 2-4 are small (sub-mesh sizes); 1, 5 and 6 run per block on the workers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse.linalg import SuperLU, splu

from ..devices import to_host
from .grid import GridLayout
from .operator import PERMC, assemble
from .problems import Problem
from .separable import SeparableSolver

METHODS = ("auto", "fd", "direct", "amg", "amg-lean")


class SubmeshSolver:
    """Sub-mesh operators, one per ``S``, set up on first use and kept.

    Parameters
    ----------
    problem : Problem
    layout : GridLayout
    scheme : {"central", "upwind"}
    method : {"auto", "fd", "direct", "amg", "amg-lean"}
        ``fd`` solves by fast diagonalisation (constant coefficients only, see
        :mod:`.separable`); ``direct`` factorises with SuperLU; ``amg`` builds a
        Ruge-Stueben hierarchy (:func:`.amg.classical_hierarchy`) and solves to the
        relative residual ``tol`` by AMG-preconditioned BiCGStab (pyamg's FGMRES runs in
        Python: 4x slower on a 3-D plane mesh); ``amg-lean`` the same with PMIS on the
        finest level (about 40 % less memory, twice the solve time). ``auto`` takes
        ``fd`` where it applies, else ``amg`` (or ``amg-lean`` with ``lean``) for the
        3-D plane sub-meshes above ``AMG_ABOVE`` unknowns (their LU fill grows like a
        3-D problem's) and ``direct`` otherwise.
    tol : float
        Relative residual of the ``amg`` solves. The outer FGMRES tolerates the
        inexact (slightly nonlinear) preconditioner this gives.
    lean : bool
        Whether ``auto`` picks ``amg-lean`` (the out-of-core runs).

    Notes
    -----
    Repeated applications (the refinement steps, the Krylov iterations) pay only for
    triangular solves or V-cycles.
    """

    AMG_ABOVE = 20_000

    def __init__(
        self,
        problem: Problem,
        layout: GridLayout,
        scheme: str = "central",
        method: str = "auto",
        tol: float = 1e-10,
        lean: bool = False,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.problem, self.layout, self.scheme = problem, layout, scheme
        self.method, self.tol, self.lean = method, tol, lean
        self._factors: dict = {}

    def _separable(self, S):
        """The fast-diagonalisation solver of sub-mesh ``S`` or None (built once)."""
        key = ("fd", S)
        if key not in self._factors:
            lay = self.layout
            sizes = [n - 2 for n in lay.mesh_shape(S)]
            h = [lay.h_coarse if k in S else lay.h_fine for k in range(lay.d)]
            self._factors[key] = SeparableSolver.build(self.problem, sizes, h, self.scheme)
        return self._factors[key]

    def method_for(self, S) -> str:
        """``fd``, ``direct``, ``amg`` or ``amg-lean`` for sub-mesh ``S``."""
        if self.method == "fd" and self._separable(S) is None:
            raise ValueError("fd sub-mesh solves need constant coefficients and mild advection")
        if self.method != "auto":
            return self.method
        if self._separable(S) is not None:
            return "fd"
        size = math.prod(n - 2 for n in self.layout.mesh_shape(S))
        if self.layout.d == 3 and size > self.AMG_ABOVE:
            return "amg-lean" if self.lean else "amg"
        return "direct"

    def _factor(self, S):
        if S not in self._factors:
            if self.method_for(S) == "fd":
                self._factors[S] = self._separable(S)
                return self._factors[S]
            method = self.method_for(S)
            amg = method.startswith("amg")
            axes = self.layout.mesh_axes(S)
            A_ii, A_ib, interior = assemble(
                self.problem, axes, self.scheme, fmt="csr" if amg else "csc"
            )
            if amg:
                from .amg import classical_hierarchy  # pyamg: only where it is used

                solver = classical_hierarchy(A_ii, "lean" if method == "amg-lean" else "classical")
            else:
                solver = splu(A_ii, permc_spec=PERMC)
            self._factors[S] = (solver, A_ib, interior)
        return self._factors[S]

    def solve(self, S, v_mesh: np.ndarray) -> np.ndarray:
        """Solve on sub-mesh ``S``.

        Parameters
        ----------
        S : tuple of int
        v_mesh : numpy.ndarray, shape ``layout.mesh_shape(S)``
            Right-hand side at interior nodes, Dirichlet data at boundary nodes.

        Returns
        -------
        numpy.ndarray, shape ``layout.mesh_shape(S)``
            The sub-mesh solution, boundary values copied from ``v_mesh``.
        """
        if isinstance(self._factor(S), SeparableSolver):
            return self._factor(S).solve_dirichlet(v_mesh)
        solver, A_ib, interior = self._factor(S)
        v = np.asarray(v_mesh, dtype=np.float64)
        rhs = v[interior] - A_ib @ v[~interior]
        out = v.copy()
        if isinstance(solver, SuperLU):
            out[interior] = solver.solve(rhs)
        elif np.any(rhs):
            out[interior] = solver.solve(
                rhs, tol=self.tol, accel="bicgstab", maxiter=min(200, rhs.size)
            )
        else:
            out[interior] = 0.0
        return out


def merge(layout: GridLayout, solutions: dict, weights: dict) -> np.ndarray:
    """Merged values ``M = sum_S c_S w_S`` at the coarse nodes.

    Parameters
    ----------
    layout : GridLayout
    solutions : dict
        ``S -> w_S`` sub-mesh solutions, shape ``layout.mesh_shape(S)``.
    weights : dict
        ``S -> c_S`` from :func:`.grid.merge_weights`.

    Returns
    -------
    numpy.ndarray, shape ``(n_coarse + 1,) * d``
    """
    M = None
    for S in layout.subsets:
        term = weights[S] * solutions[S][layout.coarse_view(S)]
        M = term if M is None else M + term
    return M


def spline_matrix(n_coarse: int, n_fine: int) -> np.ndarray:
    """Cubic-spline interpolation from the coarse to the fine nodes of one axis.

    Returns
    -------
    numpy.ndarray, shape (n_fine + 1, n_coarse + 1)
        Row ``i`` holds the weights of the coarse values at fine node ``i``; rows at
        coarse nodes are unit vectors (the spline interpolates).
    """
    xc = np.linspace(0.0, 1.0, n_coarse + 1)
    xf = np.linspace(0.0, 1.0, n_fine + 1)
    k = min(3, n_coarse)
    from scipy.interpolate import make_interp_spline  # the driver's only: workers skip it

    spline = make_interp_spline(xc, np.eye(n_coarse + 1), k=k)
    P = spline(xf)
    s = n_fine // n_coarse
    P[::s] = np.eye(n_coarse + 1)  # exact interpolation at coarse nodes, no round-off
    return P


def correct(layout: GridLayout, S, w: np.ndarray, M: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Add the spline of the mismatch ``M - w_S`` (at coarse nodes) to ``w_S``.

    Parameters
    ----------
    layout : GridLayout
    S : tuple of int
    w : numpy.ndarray, shape ``layout.mesh_shape(S)``
    M : numpy.ndarray, shape ``(n_coarse + 1,) * d``
    P : numpy.ndarray, shape ``(n_fine + 1, n_coarse + 1)``
        From :func:`spline_matrix`.

    Returns
    -------
    numpy.ndarray, shape ``layout.mesh_shape(S)``
        Equal to ``M`` at the coarse nodes; the correction vanishes on the boundary
        because the mismatch does.
    """
    delta = M - w[layout.coarse_view(S)]
    for k in range(layout.d):
        if k not in S:
            delta = np.moveaxis(np.tensordot(P, delta, axes=([1], [k])), 0, k)
    return w + delta


def skeleton(layout: GridLayout, corrected: dict, start, shape, xp=np):
    """Skeleton values on a fine-grid region; zero at the nodes off the skeleton.

    Parameters
    ----------
    layout : GridLayout
    corrected : dict
        ``S -> w'_S``, each either the whole corrected sub-mesh array or, to save
        transfer, the part of it given by ``layout.mesh_slices(S, start, stop)``.
    start, shape : tuple of int
        The fine region ``[start, start + shape)``.
    xp : array namespace of the result

    Returns
    -------
    array, shape ``shape``
    """
    stop = tuple(a + n for a, n in zip(start, shape, strict=True))
    z = xp.zeros(tuple(shape), dtype=xp.float64)
    for S in layout.subsets:
        fine, mesh = layout.mesh_slices(S, start, stop)
        w = corrected[S]
        if tuple(w.shape) == layout.mesh_shape(S):
            w = w[mesh]
        if w.size == 0:
            continue
        sign = (-1.0) ** (len(S) - 1)
        z[fine] = z[fine] + sign * xp.asarray(w)
    return z


def restriction_matrix(n_coarse: int, n_fine: int) -> np.ndarray:
    """Full-weighting restriction from the fine to the coarse nodes of one axis.

    Row ``J`` averages the fine values within one coarse interval of coarse node ``J``
    with hat weights ``(1 - |m| / s) / s``; rows at the two boundary nodes inject (they
    carry Dirichlet data).

    Why not injection, as in the paper: after the box solves the residual lives only on
    the skeleton, a line (2-D) or plane (3-D) source of width ``h_f``. Injected onto a
    sub-mesh with spacing ``h_c`` along the coarse axis it is read as a smooth source
    ``s`` times too strong, so the correction has the wrong size and shape and the
    refinement stalls. Full weighting conserves the source's integral.

    Returns
    -------
    numpy.ndarray, shape (n_coarse + 1, n_fine + 1)
    """
    s = n_fine // n_coarse
    R = np.zeros((n_coarse + 1, n_fine + 1))
    m = np.arange(-s + 1, s)
    w = (1.0 - np.abs(m) / s) / s
    for J in range(1, n_coarse):
        R[J, J * s + m] = w
    R[0, 0] = R[n_coarse, n_fine] = 1.0
    return R


def restrict(layout: GridLayout, v, start, R: np.ndarray) -> dict:
    """A block's contribution to the restriction of a fine vector to every sub-mesh.

    Full weighting (``R``) along the sub-mesh's coarse axes, injection along its fine
    axes. Coarse nodes near a block face receive contributions from both neighbours:
    the caller adds the parts of all blocks (in block order, so the sum does not depend
    on where the blocks ran).

    Parameters
    ----------
    layout : GridLayout
    v : array
        The vector on the block's owned region.
    start : tuple of int
        Fine index of the block's first node.
    R : numpy.ndarray, shape (n_coarse + 1, n_fine + 1)
        From :func:`restriction_matrix`.

    Returns
    -------
    dict
        ``S -> (mesh_slices, partial)``: add ``partial`` into the sub-mesh array at
        ``mesh_slices``.
    """
    v = to_host(v)
    stop = tuple(a + n for a, n in zip(start, v.shape, strict=True))
    out = {}
    for S in layout.subsets:
        part, mesh = v, []
        for k in range(layout.d):
            a, b = start[k], stop[k]
            if k in S:
                Rk = R[:, a:b]
                rows = np.flatnonzero(np.any(Rk != 0.0, axis=1))
                J0, J1 = int(rows[0]), int(rows[-1]) + 1
                part = np.moveaxis(np.tensordot(Rk[J0:J1], part, axes=([1], [k])), 0, k)
                mesh.append(slice(J0, J1))
            else:
                mesh.append(slice(a, b))
        # Dirichlet data: at nodes on the domain boundary the sub-mesh takes the value
        # itself (injection, from the block that owns the node), not an average.
        bnd = np.zeros(part.shape, dtype=bool)
        for k, sl in enumerate(mesh):
            last = layout.n_coarse if k in S else layout.n_fine
            edge = (np.arange(sl.start, sl.stop) == 0) | (np.arange(sl.start, sl.stop) == last)
            shape = [1] * layout.d
            shape[k] = -1
            bnd |= edge.reshape(shape)
        part = np.where(bnd, 0.0, part)
        fine, own = layout.mesh_slices(S, start, stop)
        if all(f.stop > f.start for f in fine):
            inner = tuple(
                slice(o.start - m.start, o.stop - m.start) for o, m in zip(own, mesh, strict=True)
            )
            part[inner] += np.where(bnd[inner], v[fine], 0.0)
        out[S] = (tuple(mesh), part)
    return out
