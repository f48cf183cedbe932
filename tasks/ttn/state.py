"""TTN states: leaf bases and connecting tensors on a :class:`~tilegraph.tasks.ttn.trees.Tree`.

A state is a list indexed by node id. A leaf holds its basis ``U`` of shape
``(n_site, r)``; an inner node holds its connecting tensor ``C`` of shape
``(r_child_1, ..., r_child_m, r_bond)`` (``r_bond = 1`` at the root). The subtree
tensor of a node is ``X = (X_1 (x) ... (x) X_m) reshape(C, (prod r_children, r_bond))``
with the Kronecker product in C (row-major) order. In an *orthonormal* state every
non-root ``X`` has orthonormal columns, so the root tensor carries the norm.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

from .trees import Tree


def matricize(xp, C, axis: int):
    """Matricisation ``(r_axis, rest)`` with the other axes in order."""
    perm = (axis,) + tuple(a for a in range(C.ndim) if a != axis)
    Ct = xp.permute_dims(C, perm)
    return xp.reshape(Ct, (C.shape[axis], math.prod(Ct.shape[1:])))


def unmatricize(xp, M, shape, axis: int):
    """Inverse of :func:`matricize` for a tensor of ``shape`` with ``M.shape[0]`` at ``axis``."""
    rest = tuple(s for a, s in enumerate(shape) if a != axis)
    T = xp.reshape(M, (M.shape[0],) + rest)
    inv = list(range(1, T.ndim))
    inv.insert(axis, 0)
    return xp.permute_dims(T, tuple(inv))


def bond_matrix(xp, C):
    """``reshape(C, (prod(C.shape[:-1]), C.shape[-1]))``: the subtree basis coefficients."""
    return xp.reshape(C, (math.prod(C.shape[:-1]), C.shape[-1]))


#: Local dimensions up to which a leaf's basis comes from a QR of ``[v, I]`` (O(n^3));
#: above, from a Householder reflection (O(n r)), whose extra columns differ.
QR_MAX_DIM = 256


def _basis_from(xp, v, r: int):
    """``r`` orthonormal columns (n, r), complex128, the first exactly the unit vector
    ``v`` (n,)."""
    n = v.shape[0]
    if n <= QR_MAX_DIM:
        return _qr_after(xp, v, xp.eye(n, dtype=xp.complex128), r)
    # H = I - 2 w w^H / |w|^2 with w = a e_0 - v (|a| = 1, a conj(v_0) real) maps a e_0
    # to v; its columns 1..r-1 are orthonormal and orthogonal to v
    v0 = complex(v[0])
    a = v0 / abs(v0) if abs(v0) > 0 else 1.0
    w = -v + a * xp.eye(n, 1, dtype=xp.complex128)[:, 0]
    ww = float(xp.sum(xp.abs(w) ** 2))
    E = xp.eye(n, r - 1, k=-1, dtype=xp.complex128)
    if ww > 1e-24:
        E = E - (2.0 / ww) * xp.reshape(w, (n, 1)) * xp.reshape(xp.conj(w[1:r]), (1, r - 1))
    return xp.concat([xp.reshape(v, (n, 1)), E], axis=1)


#: Seed of ``padding="random"`` (with the node id): a start is the same array on every
#: backend and in every run.
PAD_SEED = 20240601


def _qr_after(xp, v, A, r: int):
    """The first ``r`` columns of the QR of ``[v, A]``, the first exactly the unit vector
    ``v`` (QR's phase on it undone)."""
    Q, R = xp.linalg.qr(xp.concat([xp.reshape(v, (v.shape[0], 1)), A], axis=1))
    ph = complex(R[0, 0]) / abs(complex(R[0, 0]))
    return Q[:, :r] * ph


def _random_basis_from(xp, v, r: int, node: int):
    """Like :func:`_basis_from`, the columns after ``v`` seeded random directions
    orthogonal to it (a reduced QR of ``[v, G]``, O(n r^2))."""
    n = v.shape[0]
    if r <= 1:
        return xp.reshape(v, (n, 1))
    rng = np.random.default_rng([PAD_SEED, node])
    G = rng.standard_normal((n, r - 1)) + 1j * rng.standard_normal((n, r - 1))
    return _qr_after(xp, v, xp.asarray(G), r)


def product_state(tree: Tree, vectors, rank: int = 1, padding: str = "unit") -> list:
    """The product state ``(x)_s vectors[s]`` as an orthonormal TTN of bond rank ``rank``.

    The extra basis directions (for ``rank > 1``) carry zero weight; they give the
    integrators room to grow the rank from the start. Which directions matters (see
    docs/ttn.md, "Your own system"): ``"unit"`` takes the next unit vectors (at an
    inner node, one child's extra direction at a time), ``"random"`` seeded random
    ones. From the tilted Neel start of the isotropic Heisenberg chain (d = 6, T = 1)
    the sequential BUG stays 0.60 from ``expm`` at every h with unit directions and
    converges with random ones; from a free product start of that chain the unit
    directions were 6-13x more accurate with one first step of h and 1600-1900x with the
    pipeline's first-step ramp (its ``padding="auto"`` picks per start).

    Parameters
    ----------
    tree : Tree
    vectors : array, shape ``(d, n)``, or sequence of d arrays
        Local states (normalised here); a sequence when sites differ in dimension.
    rank : int
        Bond rank wanted on every edge (clamped to what the dimensions allow).
    padding : {"unit", "random"}
        The zero-weight directions.

    Returns
    -------
    list of arrays (complex128)
    """
    if padding not in ("unit", "random"):
        raise ValueError(f"padding must be 'unit' or 'random', not {padding!r}")
    vecs = [
        vectors[s] if isinstance(vectors, list | tuple) else vectors[s, ...] for s in range(tree.d)
    ]
    xp = array_namespace(*vecs)
    dims = [int(v.shape[0]) for v in vecs]
    state: list = [None] * tree.n_nodes
    ranks = [0] * tree.n_nodes
    total = math.prod(dims)
    for node in tree.postorder():
        under = math.prod(dims[s] for s in tree.leaves[node])
        cap = min(under, total // under)
        if tree.is_leaf(node):
            v = xp.astype(vecs[tree.site[node]], xp.complex128)
            v = v / math.sqrt(float(xp.sum(xp.abs(v) ** 2)))
            r = max(1, min(rank, cap))
            if padding == "random":
                state[node], ranks[node] = _random_basis_from(xp, v, r, node), r
            else:
                state[node], ranks[node] = _basis_from(xp, v, r), r
            continue
        kids = tree.children[node]
        rows = math.prod(ranks[c] for c in kids)
        r = 1 if node == 0 else max(1, min(rank, cap, rows))
        M = xp.eye(rows, r, dtype=xp.complex128)
        if padding == "random":  # the first column keeps every child's weighted direction
            M = _random_basis_from(xp, M[:, 0], r, node)
        state[node] = xp.reshape(M, tuple(ranks[c] for c in kids) + (r,))
        ranks[node] = r
    return state


def edge_ranks(tree: Tree, state) -> list[int]:
    """Bond rank of the edge above every non-root node (root: 1)."""
    return [int(state[n].shape[-1]) if n else 1 for n in range(tree.n_nodes)]


def subtree_dense(tree: Tree, state, node: int):
    """``X`` of ``node``: shape ``(prod of site dims under node, r_bond)``, tree order."""
    xp = array_namespace(state[node])
    if tree.is_leaf(node):
        return state[node]
    X = None
    for c in tree.children[node]:
        Xc = subtree_dense(tree, state, c)
        if X is None:
            X = Xc
        else:  # kron of the columns, row-major
            X = xp.reshape(
                X[:, None, :, None] * Xc[None, :, None, :],
                (X.shape[0] * Xc.shape[0], X.shape[1] * Xc.shape[1]),
            )
    return X @ bond_matrix(xp, state[node])


def to_dense(tree: Tree, state, dims=None):
    """The full state vector (site 0 the slowest index); for small d only.

    Returns
    -------
    array, shape ``(prod(dims),)``
    """
    xp = array_namespace(state[0])
    X = subtree_dense(tree, state, 0)[:, 0]
    order = tree.leaves[0]
    if list(order) == sorted(order):
        return X
    ns = [0] * tree.d if dims is None else list(dims)
    if dims is None:
        for leaf in tree.leaf_nodes:
            ns[tree.site[leaf]] = int(state[leaf].shape[0])
    T = xp.reshape(X, tuple(ns[s] for s in order))
    T = xp.permute_dims(T, tuple(int(np.argsort(order)[s]) for s in range(tree.d)))
    return xp.reshape(T, (-1,))


def orthonormalize(tree: Tree, state) -> list:
    """An orthonormal copy of ``state`` (QR from the leaves up; the root keeps the norm)."""
    xp = array_namespace(state[0])
    out = list(state)
    for node in tree.postorder():
        if node == 0:
            break
        par = tree.parent[node]
        T = out[node]
        Q, R = xp.linalg.qr(bond_matrix(xp, T) if T.ndim > 2 else T)
        out[node] = xp.reshape(Q, T.shape[:-1] + (Q.shape[1],))
        i = tree.children[par].index(node)
        P = out[par]
        out[par] = unmatricize(
            xp, R @ matricize(xp, P, i), P.shape[:i] + (R.shape[0],) + P.shape[i + 1 :], i
        )
    return out


def norm(state) -> float:
    """Norm of an orthonormal state (the root tensor's Frobenius norm)."""
    xp = array_namespace(state[0])
    return math.sqrt(float(xp.sum(xp.abs(state[0]) ** 2)))
