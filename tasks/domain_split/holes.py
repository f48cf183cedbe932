"""Dirichlet solves on the boxes ("holes") that the skeleton cuts out of the fine grid.

Box ``j`` (a multi-index) spans the fine nodes ``j_k s .. (j_k + 1) s`` along every axis:
``(s - 1)^d`` interior unknowns whose boundary is skeleton (or domain boundary). Boxes
are independent; a block of boxes is one task.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from array_api_compat import array_namespace
from scipy.sparse.linalg import splu

from ..devices import to_host
from .combine import skeleton
from .grid import Block, GridLayout
from .operator import PERMC, StencilCache, assemble
from .problems import Problem
from .separable import FrozenStack, SeparableSolver


class BoxSolver:
    """Factorised box operators, shared by all boxes when the coefficients are constant.

    Parameters
    ----------
    problem : Problem
    layout : GridLayout
    scheme : {"central", "upwind"}
    frozen : bool
        Variable coefficients: solve each box approximately, by fast diagonalisation of
        its operator frozen at the box centre, instead of exactly by a sparse LU (an
        inexact preconditioner, for FGMRES: less memory and time, more iterations).
    stencil : StencilCache, optional
        Where the couplings to the box boundaries are computed (one that keeps the
        coefficients of the regions its caller works on; default: none kept).
    corrections : int
        Frozen boxes: defect-correction steps after the first solve (each solves again
        for the residual of the true operator: a box's error shrinks by about the
        relative variation of its coefficients per step). The default of the hole
        solves; the smoother's sweeps take none (:func:`smooth_block`).
    compact : bool
        Frozen boxes: keep ``2 d n`` numbers per box instead of ``2 n^d`` (for runs out
        of core; see :class:`FrozenStack`).
    """

    def __init__(
        self,
        problem: Problem,
        layout: GridLayout,
        scheme: str = "central",
        frozen: bool = False,
        stencil=None,
        corrections: int = 0,
        compact: bool = False,
    ):
        self.problem, self.layout, self.scheme = problem, layout, scheme
        self.frozen = frozen and not problem.constant_coefficients
        self.corrections, self.compact = corrections, compact
        self.stencil = stencil or StencilCache(problem, layout.n_fine, scheme)
        self._factors: dict = {}

    def system(self, lo, hi):
        """``(lu, A_ib, interior)`` of the box spanning fine nodes ``lo .. hi`` (inclusive).

        Factorised once, then cached: per box size when the coefficients are constant
        (all boxes of one size share a matrix), per box otherwise.
        """
        sizes = tuple(b - a for a, b in zip(lo, hi, strict=True))
        key = sizes if self.problem.constant_coefficients else (tuple(lo), tuple(hi))
        if key not in self._factors:
            n = self.layout.n_fine
            if self.problem.constant_coefficients:  # one matrix per size, built at x = 0
                lo, hi = (0,) * len(sizes), sizes
            axes = [np.arange(a, b + 1) / n for a, b in zip(lo, hi, strict=True)]
            A_ii, A_ib, interior = assemble(self.problem, axes, self.scheme)
            self._factors[key] = (splu(A_ii, permc_spec=PERMC), A_ib, interior)
        return self._factors[key]

    def stacked(self, lattice: Lattice):
        """The :class:`FrozenStack` of a lattice's boxes, each with the coefficients
        frozen at its centre (an approximate solve of variable-coefficient boxes), and
        which boxes it holds (fast diagonalisation may not apply to some: advection too
        strong). Cached: a block's boxes, and its shifted boxes, are the same every
        preconditioner application.

        Returns
        -------
        stack : FrozenStack or None
        ok : numpy.ndarray of bool, shape ``(n_boxes,)``
            Per box of the lattice (C order), whether it is in ``stack``.
        """
        key = ("stacked", lattice)
        if key not in self._factors:
            n, d = self.layout.n_fine, len(lattice.size)
            axes = [
                (c + (np.arange(m) + 0.5) * L) / n
                for c, L, m in zip(lattice.origin, lattice.size, lattice.count, strict=True)
            ]
            mid = tuple(np.ravel(g) for g in np.meshgrid(*axes, indexing="ij"))
            nb = mid[0].size
            alpha = [np.broadcast_to(self.problem.alpha_k(k, mid), (nb,)) for k in range(d)]
            beta = [np.broadcast_to(self.problem.beta_k(k, mid), (nb,)) for k in range(d)]
            sizes = [L - 1 for L in lattice.size]
            self._factors[key] = FrozenStack.build(
                alpha, beta, sizes, 1.0 / n, self.scheme, compact=self.compact
            )
        return self._factors[key]

    def separable(self, sizes):
        """The fast-diagonalisation solver of boxes of ``sizes`` intervals per axis, or
        None (variable coefficients, or advection too strong for it)."""
        key = ("fd", tuple(sizes))
        if key not in self._factors:
            n = self.layout.n_fine
            self._factors[key] = SeparableSolver.build(
                self.problem, [m - 1 for m in sizes], [1.0 / n] * len(sizes), self.scheme
            )
        return self._factors[key]

    def solve_boxes(
        self, z, v, start, lattices, zero: bool = False, corrections: int | None = None
    ) -> np.ndarray:
        """Solve Dirichlet problems on boxes of a region, in place.

        Parameters
        ----------
        z : array
            Region values; box boundaries hold the Dirichlet data, box interiors are
            overwritten with the solution (NumPy, CuPy or any array-API namespace).
        v : array, same shape as ``z``
            Right-hand side; only box interiors are read.
        start : tuple of int
            Fine index of ``z[0, ..., 0]``.
        lattices : iterable of Lattice
            The boxes, as lattices of equal boxes (see :func:`lattices`), each inside
            the region.
        zero : bool
            ``z`` is zero everywhere (zero Dirichlet data, as in the smoother's sweeps):
            the couplings to the box boundaries vanish and are not computed.
        corrections : int, optional
            Frozen boxes: defect-correction steps (default: the solver's
            ``corrections``).

        Returns
        -------
        array
            ``z``, filled.

        Notes
        -----
        Fast diagonalisation (constant coefficients, or variable ones frozen per box)
        solves a lattice's boxes as one stack, gathered and scattered by reshaping the
        region (no loop over boxes); the couplings to the box boundaries come from one
        stencil application to ``z`` with the box interiors zeroed. Boxes it does not
        apply to have a sparse LU each (per size with constant coefficients), on the
        host.
        """
        xp = array_namespace(z)
        lattices = [lat for lat in lattices if min(lat.size) >= 2]  # else no interior
        stacks, lu_boxes = [], []
        for lat in lattices:
            if self.problem.constant_coefficients:
                fd = self.separable(lat.size)
                ok = np.ones(lat.n_boxes, dtype=bool) if fd is not None else None
            elif self.frozen:
                fd, ok = self.stacked(lat)
            else:
                fd, ok = None, None
            if fd is not None:
                stacks.append((lat, fd, ok))
            if ok is None or not ok.all():
                use = np.zeros(lat.n_boxes, dtype=bool) if ok is None else ok
                lu_boxes += [box for box, u in zip(lat.boxes(), use, strict=True) if not u]
        if stacks:
            Lz = None  # the couplings to the box boundaries (none with zero data)
            if not zero:
                zb = xp.asarray(z, copy=True)
                for lat, _, _ in stacks:
                    _scatter(zb, lat, start, None)
                Lz = self.stencil(pad1(zb), start)
            for lat, fd, ok in stacks:
                f = _gather(v, lat, start)
                f = f if Lz is None else f - _gather(Lz, lat, start)
                _scatter(z, lat, start, _stack_solve(fd, ok, f))
            # frozen boxes: defect correction with the true operator's residual
            steps = self.corrections if corrections is None else corrections
            for _ in range(steps if self.frozen else 0):
                Lz = self.stencil(pad1(z), start)
                for lat, fd, ok in stacks:
                    f = _gather(v, lat, start) - _gather(Lz, lat, start)
                    _scatter(z, lat, start, _gather(z, lat, start) + _stack_solve(fd, ok, f))
        if lu_boxes:  # sparse LU: on the host
            groups: dict = {}
            for lo, hi in lu_boxes:
                sl = tuple(slice(a - o, b - o + 1) for a, b, o in zip(lo, hi, start, strict=True))
                key = self.system(lo, hi)
                groups.setdefault(id(key), (key, []))[1].append(sl)
            on_host = isinstance(z, np.ndarray)
            zh, vh = (z, v) if on_host else (to_host(z), to_host(v))
            for (lu, A_ib, interior), members in groups.values():
                rhs = np.stack(
                    [vh[sl][interior] - A_ib @ zh[sl][~interior] for sl in members], axis=1
                )
                sol = lu.solve(rhs)
                for i, sl in enumerate(members):
                    zh[sl][interior] = sol[:, i]
                    if not on_host:
                        z[sl] = xp.asarray(zh[sl])
        return z


class Lattice(NamedTuple):
    """Equal boxes side by side: ``count[k]`` boxes of ``size[k]`` intervals along axis
    ``k``, the first with its lower corner at fine index ``origin``."""

    origin: tuple
    size: tuple
    count: tuple

    @property
    def n_boxes(self) -> int:
        return math.prod(self.count)

    def boxes(self):
        """Each box as inclusive fine-node ranges ``(lo, hi)``, in C order."""
        for j in itertools.product(*(range(m) for m in self.count)):
            lo = tuple(c + jk * L for c, jk, L in zip(self.origin, j, self.size, strict=True))
            yield lo, tuple(a + L for a, L in zip(lo, self.size, strict=True))


def lattices(cuts_per_axis) -> list[Lattice]:
    """The boxes of the tensor product of 1-D cut lists (consecutive cuts), as lattices:
    along each axis, runs of consecutive segments of equal length."""
    runs = []
    for cuts in cuts_per_axis:
        axis: list = []  # (first cut, length, count)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if axis and axis[-1][1] == b - a:
                c, L, m = axis[-1]
                axis[-1] = (c, L, m + 1)
            else:
                axis.append((a, b - a, 1))
        runs.append(axis)
    return [
        Lattice(*(tuple(r[i] for r in combo) for i in range(3)))
        for combo in itertools.product(*runs)
    ]


def box_lattice(lo, hi) -> Lattice:
    """One box ``lo .. hi`` (inclusive fine-node ranges) as a lattice."""
    return Lattice(tuple(lo), tuple(b - a for a, b in zip(lo, hi, strict=True)), (1,) * len(lo))


def _stack_solve(fd, ok, f):
    """``fd.solve`` on the boxes ``ok`` of ``f``; zeros for the others (their LU solve
    comes after)."""
    if ok.all():
        return fd.solve(f)
    xp = array_namespace(f)
    sol = xp.zeros(tuple(f.shape), dtype=f.dtype)
    mask = xp.asarray(ok)
    sol[mask] = fd.solve(f[mask])
    return sol


def _lattice_region(lat: Lattice, start):
    """Slices of the nodes ``origin .. origin + count * size - 1`` of each axis in a
    region starting at ``start``, and the shape that splits axis ``k`` into
    ``(count[k], size[k])``."""
    sl = tuple(
        slice(c - o, c - o + m * L)
        for c, L, m, o in zip(lat.origin, lat.size, lat.count, start, strict=True)
    )
    split = tuple(x for m, L in zip(lat.count, lat.size, strict=True) for x in (m, L))
    return sl, split


def _gather(x, lat: Lattice, start):
    """The box interiors of a lattice, shape ``(n_boxes, size_0 - 1, ...)``, C order."""
    xp = array_namespace(x)
    d = len(lat.size)
    sl, split = _lattice_region(lat, start)
    y = xp.reshape(x[sl], split)  # (m_0, L_0, m_1, L_1, ...)
    y = xp.permute_dims(y, tuple(range(0, 2 * d, 2)) + tuple(range(1, 2 * d, 2)))
    y = y[(slice(None),) * d + (slice(1, None),) * d]
    return xp.reshape(y, (lat.n_boxes, *(L - 1 for L in lat.size)))


def _scatter(x, lat: Lattice, start, values) -> None:
    """Write ``values`` (as :func:`_gather` returns them; None: zeros) into the box
    interiors of a lattice in ``x``, in place."""
    xp = array_namespace(x)
    d = len(lat.size)
    sl, split = _lattice_region(lat, start)
    full = xp.reshape(x[sl], split)
    if values is None:
        inner = xp.zeros(tuple(n for m, L in zip(lat.count, lat.size, strict=True)
                               for n in (m, L - 1)), dtype=x.dtype)  # fmt: skip
    else:
        inner = xp.reshape(values, (*lat.count, *(L - 1 for L in lat.size)))
        order = [None] * (2 * d)
        for k in range(d):
            order[2 * k], order[2 * k + 1] = k, d + k
        inner = xp.permute_dims(inner, tuple(order))  # (m_0, L_0 - 1, m_1, ...)
    idx = tuple(s for _ in range(d) for s in (slice(None), slice(1, None)))
    if isinstance(x, np.ndarray) and np.may_share_memory(full, x):
        full[idx] = inner  # NumPy splits the axes of a view without a copy
        return
    full = xp.asarray(full, copy=True)
    full[idx] = inner
    x[sl] = xp.reshape(full, tuple(s.stop - s.start for s in sl))


def fill_block(
    layout: GridLayout, boxes: BoxSolver, corrected: dict, v: np.ndarray, block: Block
) -> np.ndarray:
    """One block of ``T v``: skeleton values from the corrected sub-mesh solutions, then
    the box solves.

    Parameters
    ----------
    layout : GridLayout
    boxes : BoxSolver
    corrected : dict
        ``S -> w'_S`` restricted to :func:`work_region` of the block (or whole).
    v : array, shape ``block.shape``
        The vector ``T`` is applied to, on the block's owned region (NumPy, CuPy or any
        array-API namespace; the result is in the same one).
    block : Block

    Returns
    -------
    numpy.ndarray, shape ``block.shape``
        ``T v`` on the block's owned region.
    """
    start, shape = work_region(layout, block)
    xp = array_namespace(v)
    z = skeleton(layout, corrected, start, shape, xp)
    vw = xp.zeros(tuple(shape), dtype=xp.float64)
    vw[tuple(slice(0, n) for n in block.shape)] = v
    s = layout.stride
    cuts = [[j * s for j in range(r.start, r.stop + 1)] for r in block.boxes]
    boxes.solve_boxes(z, vw, start, lattices(cuts))
    return z[tuple(slice(0, n) for n in block.shape)]


def shift_offsets(layout: GridLayout, count: int) -> list[int]:
    """Offsets of ``count`` shifted skeletons, spread evenly over one coarse interval:
    ``j s // (count + 1)`` for ``j = 1 .. count`` (duplicates and 0 dropped when the
    stride ``s`` is too small)."""
    s = layout.stride
    return sorted({j * s // (count + 1) for j in range(1, count + 1)} - {0})


def shifted_cuts(layout: GridLayout, shift: int | None = None) -> list[int]:
    """Fine indices of a shifted skeleton along one axis: ``0``, ``j s + shift``,
    ``n_fine`` (``shift`` defaults to ``s // 2``). The shifted boxes straddle the
    skeleton."""
    s, n = layout.stride, layout.n_fine
    shift = s // 2 if shift is None else shift
    return sorted({0, n, *(j * s + shift for j in range(layout.n_coarse))})


def smooth_region(layout: GridLayout, block: Block, shift: int | None = None):
    """Region a block's shifted-box solves read: every shifted box that meets the block's
    owned nodes or their one-node halo.

    Returns
    -------
    start, stop : tuple of int
        Fine range ``[start, stop)``.
    cuts : list of list of int
        Shifted cuts inside the region, per axis.
    """
    c = shifted_cuts(layout, shift)
    start, stop, cuts = [], [], []
    for a, b in zip(block.start, block.stop, strict=True):
        lo, hi = max(a - 1, 0), min(b, layout.n_fine)
        first = max(i for i in range(len(c)) if c[i] <= lo)
        last = min(i for i in range(len(c)) if c[i] >= hi)
        start.append(c[first])
        stop.append(c[last] + 1)
        cuts.append(c[first : last + 1])
    return tuple(start), tuple(stop), cuts


def smooth_block(
    layout: GridLayout,
    boxes: BoxSolver,
    v_region: np.ndarray,
    block: Block,
    shift: int | None = None,
):
    """Shifted-box (overlapping Schwarz) solves of ``L z = v`` with ``z = 0`` on the
    shifted skeleton, on a block's owned nodes plus a one-node halo.

    Parameters
    ----------
    v_region : numpy.ndarray
        ``v`` on :func:`smooth_region` of the block (same ``shift``).
    shift : int, optional
        Offset of the shifted skeleton (see :func:`shifted_cuts`).

    Returns
    -------
    numpy.ndarray, shape ``block.shape + 2`` per axis
        ``z`` on the owned nodes with a one-node halo (zero outside the domain).
    """
    start, stop, cuts = smooth_region(layout, block, shift)
    xp = array_namespace(v_region)
    z = xp.zeros(tuple(v_region.shape), dtype=xp.float64)
    # no defect correction here: an inexact smoother is still a smoother (measured: the
    # same FGMRES iterations as with one correction, for half the stencil applications)
    boxes.solve_boxes(z, v_region, start, lattices(cuts), zero=True, corrections=0)
    zp = pad1(z)
    sl = tuple(
        slice(a - 1 - s0 + 1, b + 1 - s0 + 1)
        for a, b, s0 in zip(block.start, block.stop, start, strict=True)
    )
    return zp[sl]


def work_region(layout: GridLayout, block: Block):
    """The region a block's box solves touch: its boxes and their upper faces.

    Returns
    -------
    start, shape : tuple of int
    """
    s = layout.stride
    start = tuple(r.start * s for r in block.boxes)
    shape = tuple(len(r) * s + 1 for r in block.boxes)
    return start, shape


def pad1(x):
    """``x`` with a one-node zero halo on every side (array-API generic ``numpy.pad``)."""
    xp = array_namespace(x)
    out = xp.zeros(tuple(n + 2 for n in x.shape), dtype=x.dtype)
    out[(slice(1, -1),) * x.ndim] = x
    return out
