"""The finite-difference operator: sparse assembly and the matrix-free stencil.

The discrete operator on a tensor grid with spacing ``h_k`` along axis ``k`` is

    (L u)_i = sum_k alpha_k(x_i) (2 u_i - u_{i+e_k} - u_{i-e_k}) / h_k^2
            + sum_k beta_k(x_i) (D_k u)_i

with ``D_k`` the central difference ``(u_{i+e_k} - u_{i-e_k}) / (2 h_k)`` or, for
``scheme="upwind"``, the first-order one-sided difference against the flow. On a full
grid (boundary nodes included) tilegraph uses the square operator ``L~`` whose rows at
boundary nodes are the identity, so the whole Dirichlet problem reads ``L~ U = B`` with
``B = f`` inside and ``B = g`` on the boundary.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from array_api_compat import array_namespace

from .problems import Problem

SCHEMES = ("central", "upwind")

#: SuperLU column ordering for the grid operators: minimum degree on A^T + A fills in
#: about half as much as the default COLAMD on these stencils (measured on 3-D slabs).
PERMC = "MMD_AT_PLUS_A"


#: Nodes per slab of :func:`assemble` (about 0.4 GiB of temporaries in 3-D).
SLAB_NODES = 1 << 20


def assemble(
    problem: Problem,
    axes,
    scheme: str = "central",
    slab_nodes: int = SLAB_NODES,
    fmt: str = "csc",
):
    """Assemble ``L`` on the tensor grid with node coordinates ``axes``.

    Parameters
    ----------
    problem : Problem
    axes : sequence of 1-D numpy arrays
        Node coordinates along each axis, both end nodes included, uniformly spaced.
    scheme : {"central", "upwind"}
    slab_nodes : int
        The coefficients are evaluated and the rows built slab by slab along axis 0,
        about this many nodes at a time, so that the peak memory is about twice the
        matrix's own (every slab's rows, then the rows joined) rather than seven times.
        The matrix does not depend on it.
    fmt : {"csc", "csr"}
        Format of ``A_ii``: CSC for SuperLU, CSR for pyamg (no second copy to convert).

    Returns
    -------
    A_ii : scipy.sparse.csc_matrix or csr_matrix, shape (n_int, n_int)
        The operator on interior nodes (C order).
    A_ib : scipy.sparse.csr_matrix, shape (n_int, n_bnd)
        Coupling of interior rows to boundary nodes (C order over boundary nodes).
    interior : numpy.ndarray of bool, shape ``tuple(len(a) for a in axes)``
        Interior-node mask of the grid.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    sizes = tuple(len(a) for a in axes)
    d = len(sizes)
    coords = tuple(np.meshgrid(*axes, indexing="ij", sparse=True))
    interior = np.zeros(sizes, dtype=bool)
    interior[(slice(1, -1),) * d] = True
    flat = interior.ravel()
    n_int = int(np.count_nonzero(flat))
    index = np.int32 if flat.size < 2**31 - 1 else np.int64
    where = np.empty(flat.size, dtype=index)  # node -> interior or boundary column
    where[flat] = np.arange(n_int, dtype=index)
    n_bnd = flat.size - n_int
    where[~flat] = np.arange(n_bnd, dtype=index)
    plane = flat.size // sizes[0]  # nodes per index along axis 0
    step = max(1, int(slab_nodes) // max(plane, 1))
    inner, outer = [], []
    for lo in range(1, sizes[0] - 1, step):
        hi = min(lo + step, sizes[0] - 1)
        part = (slice(lo, hi),) + (slice(None),) * (d - 1)
        slab = tuple(c[part] if c.shape[0] > 1 else c for c in coords)
        shape = (hi - lo,) + sizes[1:]
        ii, ib = _slab_rows(problem, axes, scheme, flat, where, n_int, slab, shape, lo * plane)
        inner.append(ii)
        outer.append(ib)
    A_ii = sp.vstack(inner, format="csr") if inner else sp.csr_matrix((0, 0))
    A_ib = sp.vstack(outer, format="csr") if outer else sp.csr_matrix((0, n_bnd))
    del inner, outer
    if fmt == "csc":
        A_ii = A_ii.tocsc()
    elif fmt != "csr":
        raise ValueError(f"fmt must be 'csc' or 'csr', got {fmt!r}")
    A_ii.sort_indices()
    A_ib.sort_indices()
    return A_ii, A_ib, interior


def _slab_rows(problem, axes, scheme, flat, where, n_int, coords, shape, offset):
    """The interior rows of one slab of :func:`assemble` (nodes ``offset ..`` of the
    flat grid, ``shape`` of them; ``n_int`` interior nodes in all): ``(A_ii rows, A_ib
    rows)`` as CSR blocks."""
    d = len(axes)
    sizes = tuple(len(a) for a in axes)
    n_bnd = flat.size - n_int
    local = flat[offset : offset + int(np.prod(shape))]
    rows = np.flatnonzero(local)
    strides = [int(np.prod(sizes[k + 1 :])) for k in range(d)]
    # Entries are summed in the order the Kronecker-sum assembly used (axis by axis,
    # diffusion before advection), so that every entry, and the factorisation, has the
    # same bits as before this vectorised form.
    diag = np.zeros(rows.size)
    cols, vals = [], []
    for k in range(d):
        h = float(axes[k][1] - axes[k][0])
        a = np.broadcast_to(problem.alpha_k(k, coords), shape).ravel()[rows]
        b = np.broadcast_to(problem.beta_k(k, coords), shape).ravel()[rows]
        diag = diag + a * (2.0 / h**2)
        lower = a * (-1.0 / h**2)
        upper = a * (-1.0 / h**2)
        if scheme == "central":
            lower = lower + b * -(0.5 / h)
            upper = upper + b * (0.5 / h)
        else:
            bp, bm = np.maximum(b, 0.0), np.minimum(b, 0.0)
            diag = diag + bp * (1.0 / h)
            lower = lower + bp * -(1.0 / h)
            diag = diag + bm * (-1.0 / h)
            upper = upper + bm * (1.0 / h)
        del a, b
        cols += [rows + (offset - strides[k]), rows + (offset + strides[k])]
        vals += [lower, upper]
    cols.append(rows + offset)
    vals.append(diag)
    row_of = np.tile(np.arange(rows.size, dtype=where.dtype), len(cols))
    cols, vals = np.concatenate(cols), np.concatenate(vals)
    keep = vals != 0.0  # as sparse sums drop exact zeros
    row_of, cols, vals = row_of[keep], cols[keep], vals[keep]
    inside = flat[cols]
    shape_ii, shape_ib = (rows.size, n_int), (rows.size, n_bnd)
    out = []
    for sel, shp in ((inside, shape_ii), (~inside, shape_ib)):
        out.append(sp.csr_matrix((vals[sel], (row_of[sel], where[cols[sel]])), shape=shp))
    return out


def fine_axes(n_fine: int, d: int):
    """Node coordinates of the fine grid along each axis."""
    return [np.linspace(0.0, 1.0, n_fine + 1)] * d


def apply_stencil(problem: Problem, u_ext, start, n_fine: int, scheme: str = "central"):
    """Matrix-free ``L~ u`` on a block of the fine grid.

    Parameters
    ----------
    problem : Problem
    u_ext : array, shape ``tuple(n_k + 2)``
        The block's values with a halo of one node on every side. Halo entries outside
        the domain must be finite; they are not used (rows at boundary nodes are the
        identity).
    start : tuple of int
        Fine index of the block's first (non-halo) node along each axis.
    n_fine : int
        Fine intervals per direction (``h = 1 / n_fine``).
    scheme : {"central", "upwind"}

    Returns
    -------
    array, shape ``tuple(n_k)``
        ``L u`` at interior nodes of the domain, ``u`` at its boundary nodes.
    """
    shape = tuple(int(n) - 2 for n in u_ext.shape)
    xp = array_namespace(u_ext)
    return Stencil(problem, start, shape, n_fine, scheme, xp).apply(u_ext, start)


class Stencil:
    """The stencil's coefficients on a region of the fine grid, evaluated once, so that
    ``L~ u`` on the region or any part of it costs ``2 d + 1`` multiply-adds per node:

        (L~ u)_i = c_i u_i + sum_k (lower_k,i u_{i-e_k} + upper_k,i u_{i+e_k})

    (at boundary nodes ``c = 1`` and no neighbours: the identity rows).

    Parameters
    ----------
    problem : Problem
    start, shape : tuple of int
        The region: first fine index and nodes per axis.
    n_fine : int
    scheme : {"central", "upwind"}
    xp : array namespace
        Where the coefficients live (that of the vectors it is applied to).
    """

    def __init__(self, problem: Problem, start, shape, n_fine: int, scheme: str, xp=np):
        d = len(shape)
        h = 1.0 / n_fine
        self.start = tuple(int(a) for a in start)
        self.stop = tuple(a + int(n) for a, n in zip(self.start, shape, strict=True))
        coords, inner = [], None
        for k in range(d):
            idx = xp.arange(start[k], start[k] + shape[k], dtype=xp.float64)
            view = [1] * d
            view[k] = shape[k]
            coords.append(xp.reshape(idx * h, tuple(view)))
            edge = xp.reshape((idx > 0) & (idx < n_fine), tuple(view))
            inner = edge if inner is None else inner & edge
        coords = tuple(coords)
        zero = xp.zeros(tuple(shape), dtype=xp.float64)
        inner = xp.astype(xp.broadcast_to(inner, tuple(shape)), xp.float64)  # 1 inside
        center = zero
        self.lower, self.upper = [], []
        for k in range(d):
            a = problem.alpha_k(k, coords) + zero
            b = problem.beta_k(k, coords) + zero
            lower, diag, upper = -a / h**2, 2.0 * a / h**2, -a / h**2
            if scheme == "central":
                lower, upper = lower - b / (2.0 * h), upper + b / (2.0 * h)
            else:  # a backward difference where b > 0, forward elsewhere
                back = b > 0
                lower = xp.where(back, lower - b / h, lower)
                upper = xp.where(back, upper, upper + b / h)
                diag = diag + xp.abs(b) / h
            center = center + diag
            self.lower.append(lower * inner)
            self.upper.append(upper * inner)
        self.center = center * inner + (1.0 - inner)

    def covers(self, start, shape) -> bool:
        """Whether the region ``[start, start + shape)`` lies inside this one."""
        return all(
            a0 <= a and a + n <= b0
            for a, n, a0, b0 in zip(start, shape, self.start, self.stop, strict=True)
        )

    def apply(self, u_ext, start):
        """``L~ u`` on the region (or part of it) at ``start`` that ``u_ext`` covers
        with its one-node halo, as :func:`apply_stencil`."""
        d = u_ext.ndim
        shape = tuple(int(n) - 2 for n in u_ext.shape)
        sub = tuple(
            slice(a - a0, a - a0 + n) for a, n, a0 in zip(start, shape, self.start, strict=True)
        )
        inner = (slice(1, -1),) * d
        out = self.center[sub] * u_ext[inner]
        for k in range(d):
            plus, minus = list(inner), list(inner)
            plus[k], minus[k] = slice(2, None), slice(0, -2)
            out = out + self.lower[k][sub] * u_ext[tuple(minus)]
            out = out + self.upper[k][sub] * u_ext[tuple(plus)]
        return out


class StencilCache:
    """:func:`apply_stencil` with the coefficients of some regions kept (see
    :class:`Stencil`): a region inside a kept one costs only the multiply-adds; any
    other is computed afresh. The same arithmetic either way, so the same bits.

    Parameters
    ----------
    problem : Problem
    n_fine : int
    scheme : {"central", "upwind"}
    """

    def __init__(self, problem: Problem, n_fine: int, scheme: str = "central"):
        self.problem, self.n_fine, self.scheme = problem, n_fine, scheme
        self.kept: dict = {}

    def keep(self, key, start, stop, xp=np) -> None:
        """Keep the coefficients of region ``[start, stop)`` under ``key`` (once)."""
        if key not in self.kept:
            shape = tuple(b - a for a, b in zip(start, stop, strict=True))
            self.kept[key] = Stencil(self.problem, start, shape, self.n_fine, self.scheme, xp)

    def __call__(self, u_ext, start):
        """``L~ u`` as :func:`apply_stencil` gives it."""
        shape = tuple(int(n) - 2 for n in u_ext.shape)
        for st in self.kept.values():
            if st.covers(start, shape):
                return st.apply(u_ext, start)
        return apply_stencil(self.problem, u_ext, start, self.n_fine, self.scheme)


def rhs_block(problem: Problem, start, shape, n_fine: int, xp=np):
    """The fine right-hand side ``B`` on a block: ``f`` inside, ``g`` on the boundary.

    Parameters
    ----------
    start, shape : tuple of int
        First fine index and number of nodes of the block along each axis.
    xp : array namespace
        Where to build the array (NumPy by default).
    """
    d = len(shape)
    coords = []
    for k in range(d):
        idx = xp.arange(start[k], start[k] + shape[k], dtype=xp.float64)
        view = [1] * d
        view[k] = shape[k]
        coords.append(xp.reshape(idx / n_fine, tuple(view)))
    out = xp.zeros(tuple(shape), dtype=xp.float64) + problem.rhs(tuple(coords))
    # g only where it is used: on the faces of the domain the block touches
    for k in range(d):
        for node in (0, n_fine):
            if start[k] <= node < start[k] + shape[k]:
                face = list(coords)
                face[k] = xp.reshape(xp.asarray([node / n_fine], dtype=xp.float64), (1,) * d)
                at = [slice(None)] * d
                at[k] = slice(node - start[k], node - start[k] + 1)
                face_shape = tuple(1 if j == k else shape[j] for j in range(d))
                g = xp.zeros(face_shape, dtype=xp.float64) + problem.boundary(tuple(face))
                out[tuple(at)] = g
    return out


def exact_block(problem: Problem, start, shape, n_fine: int, xp=np):
    """The exact solution sampled on a block of fine nodes."""
    coords = []
    for k in range(len(shape)):
        idx = xp.arange(start[k], start[k] + shape[k], dtype=xp.float64)
        view = [1] * len(shape)
        view[k] = shape[k]
        coords.append(xp.reshape(idx / n_fine, tuple(view)))
    out = problem.exact(tuple(coords))
    return xp.broadcast_to(out, tuple(shape))
