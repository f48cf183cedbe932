"""Dirichlet solves on the boxes ("holes") that the skeleton cuts out of the fine grid.

Box ``j`` (a multi-index) spans the fine nodes ``j_k s .. (j_k + 1) s`` along every axis:
``(s - 1)^d`` interior unknowns whose boundary is skeleton (or domain boundary). Boxes
are independent; a block of boxes is one task.
"""

from __future__ import annotations

import itertools

import numpy as np
from array_api_compat import array_namespace
from scipy.sparse.linalg import splu

from ..devices import to_host
from .combine import skeleton
from .grid import Block, GridLayout
from .operator import PERMC, apply_stencil, assemble
from .problems import Problem
from .separable import SeparableSolver, StackedSeparable


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
    """

    def __init__(
        self, problem: Problem, layout: GridLayout, scheme: str = "central", frozen: bool = False
    ):
        self.problem, self.layout, self.scheme = problem, layout, scheme
        self.frozen = frozen and not problem.constant_coefficients
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

    def stacked(self, sizes, boxes):
        """The :class:`StackedSeparable` of these boxes' frozen operators, and which
        boxes it holds (fast diagonalisation may not apply to some). Cached: a block's
        boxes, and its shifted boxes, are the same every preconditioner application.

        Returns
        -------
        stack : StackedSeparable or None
        ok : tuple of bool
            Per box of ``boxes``, whether it is in ``stack``.
        """
        key = ("stacked", tuple(sizes), boxes)
        if key not in self._factors:
            solvers = [self.frozen_solver(lo, hi) for lo, hi in boxes]
            ok = tuple(fd is not None for fd in solvers)
            kept = [fd for fd in solvers if fd is not None]
            self._factors[key] = (StackedSeparable(kept) if kept else None, ok)
        return self._factors[key]

    def frozen_solver(self, lo, hi):
        """Fast diagonalisation of the box's operator with the coefficients frozen at its
        centre (an approximate solve of a variable-coefficient box), or None where it
        does not apply (advection too strong for it). Not cached: :meth:`stacked` keeps
        the boxes' solvers stacked."""
        n, d = self.layout.n_fine, len(lo)
        mid = tuple(np.full((1,) * d, 0.5 * (a + b) / n) for a, b in zip(lo, hi, strict=True))
        alpha = tuple(float(np.ravel(self.problem.alpha_k(k, mid))[0]) for k in range(d))
        beta = tuple(float(np.ravel(self.problem.beta_k(k, mid))[0]) for k in range(d))
        sizes = [b - a - 1 for a, b in zip(lo, hi, strict=True)]
        return SeparableSolver.build(
            Problem("constant", d, alpha, beta), sizes, [1.0 / n] * d, self.scheme
        )

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

    def solve_boxes(self, z: np.ndarray, v: np.ndarray, start, boxes) -> np.ndarray:
        """Solve Dirichlet problems on boxes of a region, in place.

        Parameters
        ----------
        z : numpy.ndarray
            Region values; box boundaries hold the Dirichlet data, box interiors are
            overwritten with the solution.
        v : numpy.ndarray, same shape as ``z``
            Right-hand side; only box interiors are read.
        start : tuple of int
            Fine index of ``z[0, ..., 0]``.
        boxes : iterable of (lo, hi)
            Boxes as inclusive fine-node ranges, each inside the region.

        Returns
        -------
        numpy.ndarray
            ``z``, filled.

        Notes
        -----
        With constant coefficients, boxes are solved by fast diagonalisation in stacks
        of equal size; the couplings to the box boundaries come from one stencil
        application to ``z`` with the box interiors zeroed. Otherwise each box size (or
        box) has a sparse LU.
        """
        groups: dict = {}
        fd_groups: dict = {}
        frozen: dict = {}  # sizes -> [(box, slices)]: solved stacked
        for lo, hi in boxes:
            sl = tuple(slice(a - o, b - o + 1) for a, b, o in zip(lo, hi, start, strict=True))
            sizes = tuple(b - a for a, b in zip(lo, hi, strict=True))
            if min(sizes) < 2:
                continue  # no interior nodes
            if self.problem.constant_coefficients:
                fd, group = self.separable(sizes), sizes
            elif self.frozen:
                frozen.setdefault(sizes, []).append(((tuple(lo), tuple(hi)), sl))
                continue
            else:
                fd = None
            if fd is not None:
                inner = tuple(slice(s.start + 1, s.stop - 1) for s in sl)
                fd_groups.setdefault(group, (fd, []))[1].append(inner)
                continue
            lu_key = self.system(lo, hi)
            groups.setdefault(id(lu_key), (lu_key, []))[1].append(sl)
        stacks = []
        for sizes, members in frozen.items():
            stack, ok = self.stacked(sizes, tuple(box for box, _ in members))
            inner = [
                tuple(slice(s.start + 1, s.stop - 1) for s in sl)
                for (_, sl), use in zip(members, ok, strict=True)
                if use
            ]
            if inner:
                stacks.append((stack, inner))
            for (box, sl), use in zip(members, ok, strict=True):
                if not use:  # fast diagonalisation does not apply: a sparse LU
                    lu_key = self.system(*box)
                    groups.setdefault(id(lu_key), (lu_key, []))[1].append(sl)
        xp = array_namespace(z)
        if fd_groups or stacks:
            zb = xp.asarray(z, copy=True)
            for _, members in fd_groups.values():
                for inner in members:
                    zb[inner] = 0.0
            for _, members in stacks:
                for inner in members:
                    zb[inner] = 0.0
            Lz = apply_stencil(self.problem, pad1(zb), start, self.layout.n_fine, self.scheme)
            for fd, members in fd_groups.values():
                sol = fd.solve(xp.stack([v[inner] - Lz[inner] for inner in members]))
                for i, inner in enumerate(members):
                    z[inner] = sol[i, ...]
            for stack, members in stacks:
                sol = stack.solve(xp.stack([v[inner] - Lz[inner] for inner in members]))
                for i, inner in enumerate(members):
                    z[inner] = sol[i, ...]
        if groups:  # sparse LU: on the host
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


def box_ranges(cuts_per_axis):
    """Boxes ``(lo, hi)`` of the tensor product of 1-D cut lists (consecutive cuts)."""
    segs = [list(zip(c[:-1], c[1:], strict=True)) for c in cuts_per_axis]
    for combo in itertools.product(*segs):
        yield tuple(a for a, _ in combo), tuple(b for _, b in combo)


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
    boxes.solve_boxes(z, vw, start, box_ranges(cuts))
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
    boxes.solve_boxes(z, v_region, start, box_ranges(cuts))
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
