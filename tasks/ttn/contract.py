"""Small tensor helpers shared by the integrators: mode products, sums of Kronecker
products of per-leg factors, term merging, orthonormal augmentation and projections."""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from ..devices import to_host
from .state import bond_matrix

__all__ = [
    "apply_terms",
    "augment",
    "merge_terms",
    "mode",
    "project_node",
]


def mode(xp, X, f, axis: int):
    """Mode product: ``f`` (shape ``(p, X.shape[axis])``) applied to ``axis`` of ``X``."""
    Y = xp.tensordot(f, X, axes=([1], [axis]))
    if axis == 0:
        return Y
    perm = list(range(1, X.ndim))
    perm.insert(axis, 0)
    return xp.permute_dims(Y, tuple(perm))


def apply_factors(xp, X, factors):
    """``(factors[0] (x) factors[1] (x) ...) X`` with ``None`` for the identity."""
    for j, f in enumerate(factors):
        if f is not None:
            X = mode(xp, X, f, j)
    return X


def apply_terms(C, terms):
    """``sum_t coef_t (x)_j factors_t[j]`` applied to the tensor ``C``.

    Parameters
    ----------
    C : array, shape ``(r_0, ..., r_m)``
    terms : list of (complex, list of (array or None))
        One factor per axis of ``C`` (``None``: identity), shapes ``(r_j, r_j)``.
    """
    xp = array_namespace(C)
    out = None
    for coef, factors in terms:
        Y = apply_factors(xp, C, factors)
        if coef != 1:
            Y = Y * coef
        out = Y if out is None else out + Y
    return out if out is not None else C * 0


def merge_terms(terms, shape):
    """The same operator with fewer terms (exact algebra, deterministic order).

    Coefficients are folded into the last non-identity factor; then, leg by leg, terms
    that share every other factor (the same object) are summed on that leg.
    """
    ident = 0.0
    out = []
    for coef, factors in terms:
        factors = list(factors)
        nz = [j for j, f in enumerate(factors) if f is not None]
        if not nz:
            ident += coef
            continue
        if coef != 1:
            factors[nz[-1]] = factors[nz[-1]] * coef
        out.append(factors)
    for leg in range(len(shape)):
        groups: dict = {}
        for factors in out:
            sig = tuple(
                (id(f) if f is not None else None) for j, f in enumerate(factors) if j != leg
            )
            groups.setdefault(sig, []).append(factors)
        merged = []
        for members in groups.values():
            if len(members) == 1:
                merged.append(members[0])
                continue
            xp = array_namespace(*[m[leg] for m in members if m[leg] is not None])
            acc = None
            for m in members:
                f = m[leg] if m[leg] is not None else xp.eye(shape[leg], dtype=xp.complex128)
                acc = f if acc is None else acc + f
            new = list(members[0])
            new[leg] = acc
            merged.append(new)
        out = merged
    result = [(1.0, f) for f in out]
    if ident != 0:
        result.append((ident, [None] * len(shape)))
    return result


def augment(old, new, rtol: float = 1e-13):
    """Orthonormal directions of ``new`` outside the span of the orthonormal ``old``.

    Parameters
    ----------
    old : array, shape ``(N, r)``
        Orthonormal columns, kept first in the augmented basis ``[old, Q]``.
    new : array, shape ``(N, k)``
    rtol : float
        Directions with a singular value below ``rtol * max(1, ||new||)`` are dropped.

    Returns
    -------
    Q : array, shape ``(N, p)``, ``p <= min(k, N - r)``
        Orthonormal, orthogonal to ``old``.
    coeff : array, shape ``(p, k)``
        ``Q^H new``.
    """
    xp = array_namespace(old, new)
    W = new - old @ (xp.conj(old.T) @ new)
    W = W - old @ (xp.conj(old.T) @ W)
    N, r = old.shape
    room = N - r
    if room <= 0 or W.shape[1] == 0:
        return xp.zeros((N, 0), dtype=new.dtype), xp.zeros((0, new.shape[1]), dtype=new.dtype)
    U, s, _ = xp.linalg.svd(W, full_matrices=False)
    scale = max(1.0, math.sqrt(float(xp.sum(xp.abs(new) ** 2))))
    # counting the kept directions is a scan over a few values: on the host (one
    # transfer, no copy on NumPy)
    p = min(room, sum(1 for v in to_host(s) if float(v) > rtol * scale))
    Q = U[:, :p]
    if p:
        Q = Q - old @ (xp.conj(old.T) @ Q)
        Q, _ = xp.linalg.qr(Q)
    return Q, xp.conj(Q.T) @ new


def project_node(T, kid_projs, keys, splits):
    """``X^H A_key X`` for every key, from the children's projections.

    Parameters
    ----------
    T : array, shape ``(r_1, ..., r_m, r)``
        The node's (orthonormal) connecting tensor; for a leaf, its basis ``(n, r)``.
    kid_projs : list of dict
        Per child, ``key|child -> (r_j, r_j)`` matrices (for a leaf: the local operators).
    keys : iterable of Key
    splits : callable
        ``splits(key) -> tuple`` of the key's restriction to each child (``()`` = identity).

    Returns
    -------
    dict of Key to array, shape ``(r, r)``
    """
    xp = array_namespace(T)
    B = bond_matrix(xp, T)
    Bh = xp.conj(B.T)
    out = {}
    for key in keys:
        factors = [kp[k] if k else None for kp, k in zip(kid_projs, splits(key), strict=True)]
        G = apply_factors(xp, T, factors + [None])
        out[key] = Bh @ bond_matrix(xp, G)
    return out
