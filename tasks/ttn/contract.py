"""Small tensor helpers shared by the integrators: mode products, sums of Kronecker
products of per-leg factors, term merging, orthonormal augmentation and projections."""

from __future__ import annotations

import functools
import math
import numbers

from array_api_compat import array_namespace

from ..devices import to_host
from .state import bond_matrix

__all__ = [
    "TermSum",
    "apply_each",
    "apply_terms",
    "augment",
    "merge_plan",
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


def _batched_mode(xp, Y, F, axis: int):
    """``F[k]`` applied to ``axis`` of ``Y[k]`` (or of ``Y[0]`` for every ``k``).

    ``Y`` has shape ``(K or 1, d_0, ..., d_m)``, ``F`` shape ``(K, p, d_axis)``; the result
    ``(K, d_0, .., p, .., d_m)``. One batched matrix product instead of ``K`` mode products.
    """
    lead, shape = Y.shape[0], tuple(Y.shape[1:])
    d, K, p = shape[axis], F.shape[0], F.shape[1]
    out_shape = (K,) + shape[:axis] + (p,) + shape[axis + 1 :]
    m = math.prod(shape[:axis]) * math.prod(shape[axis + 1 :])  # no -1: sizes may be 0
    if axis == 0:  # (p, d) @ (d, rest): no transposes
        Z = F @ xp.reshape(Y, (lead, d, m))
        return xp.reshape(Z, out_shape)
    ax = axis + 1
    rest = [a for a in range(1, Y.ndim) if a != ax]
    Yp = xp.permute_dims(Y, (0, ax, *rest))
    Z = F @ xp.reshape(Yp, (lead, d, m))
    Z = xp.reshape(Z, (K, p) + tuple(Yp.shape[2:]))
    back = [0] * Y.ndim
    for pos, a in enumerate((0, ax, *rest)):
        back[a] = pos
    return xp.permute_dims(Z, tuple(back))


def _lift(xp, X):
    """``X`` with a leading batch axis of length 1."""
    return xp.reshape(X, (1,) + tuple(X.shape))


def apply_each(X, factor_lists):
    """``(x)_j factors[j]`` applied to ``X`` for each entry of ``factor_lists``, stacked.

    Parameters
    ----------
    X : array, shape ``(r_0, ..., r_m)``
    factor_lists : list of list of (array or None)
        ``K >= 1`` lists with one factor per axis of ``X`` (``None``: identity), every
        list with its non-identity factors on the same axes, of the same shape
        ``(p_j, r_j)`` per axis.

    Returns
    -------
    array, shape ``(K, p_0, ..., p_m)``
    """
    xp = array_namespace(X)
    legs = [j for j, f in enumerate(factor_lists[0]) if f is not None]
    Y = _lift(xp, X)
    for j in legs:
        Y = _batched_mode(xp, Y, xp.stack([fs[j] for fs in factor_lists]), j)
    if Y.shape[0] != len(factor_lists):  # every factor is the identity
        Y = xp.broadcast_to(Y, (len(factor_lists),) + tuple(X.shape))
    return Y


class TermSum:
    """``sum_t coef_t (x)_j factors_t[j]``, prepared to be applied many times.

    Terms with their non-identity factors on the same axes are stacked once, so one
    application costs a few batched matrix products instead of a mode product per factor
    and term (the sub-flows of the BUG apply their operator tens of times).

    Parameters
    ----------
    terms : list of (complex, list of (array or None))
        One factor per axis of the tensors it is applied to (``None``: identity), shapes
        ``(p_j, r_j)``: square for an operator, ``p_j != r_j`` for a block of one (every
        term then with the same ``p_j`` on the same axes).
    """

    def __init__(self, terms):
        self.ident = 0.0
        groups: dict = {}
        for coef, factors in terms:
            legs = tuple(j for j, f in enumerate(factors) if f is not None)
            if not legs:
                self.ident += coef
                continue
            groups.setdefault(legs, []).append((coef, list(factors)))
        self.groups = []
        self.xp = None
        for legs, members in groups.items():
            xp = self.xp = array_namespace(*[fs[j] for _, fs in members for j in legs])
            # the coefficients are folded into the first factor of every term
            first = [fs[legs[0]] * c if c != 1 else fs[legs[0]] for c, fs in members]
            stacks = [xp.stack(first)] + [xp.stack([fs[j] for _, fs in members]) for j in legs[1:]]
            self.groups.append((legs, stacks))

    def __call__(self, C):
        """The operator applied to ``C`` (shape ``(r_0, ..., r_m)``)."""
        xp = self.xp or array_namespace(C)
        out = C * self.ident if self.ident != 0 else None
        for legs, stacks in self.groups:
            Y = _lift(xp, C)
            for j, F in zip(legs, stacks, strict=True):
                Y = _batched_mode(xp, Y, F, j)
            Y = xp.sum(Y, axis=0) if Y.shape[0] > 1 else Y[0, ...]
            out = Y if out is None else out + Y
        return out if out is not None else C * 0


def apply_terms(C, terms):
    """``sum_t coef_t (x)_j factors_t[j]`` applied to the tensor ``C``.

    Parameters
    ----------
    C : array, shape ``(r_0, ..., r_m)``
    terms : list of (complex, list of (array or None))
        One factor per axis of ``C`` (``None``: identity), shapes ``(r_j, r_j)``.
    """
    return TermSum(terms)(C)


def merge_plan(terms, n_legs: int):
    """How :func:`merge_terms` combines terms, worked out on the identities of their
    factors alone (the memory estimate counts the terms a step will stack with it).

    Coefficients are folded into the last non-identity factor; then, leg by leg, terms
    equal on every other leg become one whose factor on that leg is the sum of theirs.
    Factors are compared structurally, a sum's entries as a multiset (in the order of
    their first appearance), so sums of the same factors merge again on a later leg:
    ``a⊗c + b⊗c + b⊗d + a⊗d`` becomes ``(a + b)⊗(c + d)``.

    Parameters
    ----------
    terms : list of (complex, sequence of (hashable or None))
        Per leg a token standing for a factor (equal tokens: the same matrix) or None
        (the identity).
    n_legs : int
        Legs per term (the length of every factor sequence).

    Returns
    -------
    ident : complex or float
        The summed coefficient of the terms without a factor.
    plan : list of tuple
        One per merged term, one entry per leg: None (the identity), ``("f", token)``,
        ``("f", token, coef)`` (the factor times ``coef``) or ``("sum", entries)``
        (the sum of those entries, None in them standing for the identity).
    """
    ident = 0.0
    out = []
    rank: dict = {None: -1}  # entries by first appearance: a sum's canonical order
    for coef, factors in terms:
        toks = [None if f is None else ("f", f) for f in factors]
        nz = [j for j, t in enumerate(toks) if t is not None]
        if not nz:
            ident += coef
            continue
        if coef != 1:
            toks[nz[-1]] = ("f", factors[nz[-1]], coef)
        for t in toks:
            rank.setdefault(t, len(rank))
        out.append(tuple(toks))
    for leg in range(n_legs):
        groups: dict = {}
        for toks in out:
            groups.setdefault(toks[:leg] + toks[leg + 1 :], []).append(toks)
        out = [g[0] if len(g) == 1 else _summed(g, leg, rank) for g in groups.values()]
    return ident, out


def _summed(group, leg: int, rank: dict):
    """One plan entry for terms equal but on ``leg``: theirs, summed on ``leg`` (the
    entries sorted by ``rank``, so equal multisets give equal sums; they are never sums
    themselves, as every leg is merged once)."""
    first = group[0]
    entries = sorted((t[leg] for t in group), key=rank.__getitem__)
    return (*first[:leg], ("sum", tuple(entries)), *first[leg + 1 :])


#: Sums of more entries than this are built as one weighted sum of the stacked factors.
_STACKED = 4


@functools.lru_cache(maxsize=512)
def _cached_plan(key: tuple, n_legs: int):
    """:func:`merge_plan` of ``[(coef, tokens)]`` given as ``((type, coef, tokens), ...)``
    (the type keeps ``2.0`` and ``2+0j`` apart: they hash alike but scale differently)."""
    return merge_plan([(c, toks) for _, c, toks in key], n_legs)


def merge_terms(terms, shape):
    """The same operator with fewer terms (exact algebra, deterministic order), as
    :func:`merge_plan` combines them; factors are the same when they are the same
    object.

    Parameters
    ----------
    terms : list of (complex, list of (array or None))
        One factor per axis (``None``: identity), shapes ``(shape[j], shape[j])``.
    shape : tuple of int

    Returns
    -------
    list of (complex, list of (array or None))
        The merged terms; the summed coefficient of terms without a factor, if not 0,
        last with no factors.
    """
    # the plan is worked out on tokens numbered by first appearance, so a step that
    # merges the same structure as an earlier one (every step, at a fixed rank) reuses it
    arrays: list = []
    index: dict = {}
    key = []
    for c, factors in terms:
        toks = []
        for f in factors:
            if f is not None and id(f) not in index:
                index[id(f)] = len(arrays)
                arrays.append(f)
            toks.append(None if f is None else index[id(f)])
        key.append((type(c), c, tuple(toks)))
    ident, plan = _cached_plan(tuple(key), len(shape))
    built: dict = {}

    def build(tok, leg):
        if (leg, tok) in built:
            return built[leg, tok]
        if tok[0] == "f":
            val = arrays[tok[1]] if len(tok) == 2 else arrays[tok[1]] * tok[2]
        else:
            entries = [t for t in tok[1] if t is not None]
            if len(entries) > _STACKED:  # one weighted sum, not many small adds
                mats = [arrays[t[1]] for t in entries]
                coefs = [t[2] if len(t) == 3 else 1.0 for t in entries]
                xp = array_namespace(mats[0])
                real = all(isinstance(c, numbers.Real) for c in coefs)
                w = xp.asarray(
                    coefs if real else [complex(c) for c in coefs],
                    dtype=xp.float64 if real else xp.complex128,
                )
                parts = [xp.tensordot(w, xp.stack(mats), axes=1)]
            else:
                parts = [build(t, leg) for t in entries]
            n_eye = len(tok[1]) - len(entries)
            if n_eye:  # identities in the sum: one scaled eye (any factor's namespace
                # and dtype when the sum holds nothing else)
                ref = parts[0] if parts else arrays[0]
                parts.append(array_namespace(ref).eye(shape[leg], dtype=ref.dtype) * n_eye)
            val = parts[0]
            for f in parts[1:]:
                val = val + f
        built[leg, tok] = val
        return val

    result = [
        (1.0, [None if t is None else build(t, leg) for leg, t in enumerate(toks)])
        for toks in plan
    ]
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


def project_node(T, kid_projs, keys, expand, bra=None):
    """``X^H A_key X`` for every key, from the children's projections.

    Parameters
    ----------
    T : array, shape ``(r_1, ..., r_m, r)``
        The node's (orthonormal) connecting tensor; for a leaf, its basis ``(n, r)``.
    kid_projs : list of dict
        Per child, ``key|child -> (r_j, r_j)`` matrices (for a leaf: the local operators).
    keys : iterable of hashable
    expand : callable
        ``expand(key) -> [(coef, parts), ...]``: the key as a sum of products over the
        children, ``parts`` a key of each child (``()`` = identity). Most keys are one
        product; a node's summed inside terms are many.
    bra : array, shape ``(r_1 * ... * r_m, p)``, optional
        Basis coefficients ``W`` for the mixed projections ``W^H A_key X``; default ``X``.

    Returns
    -------
    dict of key to array, shape ``(r, r)`` (``(p, r)`` with ``bra``)
    """
    xp = array_namespace(T)
    Bh = xp.conj((bond_matrix(xp, T) if bra is None else bra).T)
    keys = list(keys)
    rows = math.prod(T.shape[:-1])
    groups: dict = {}  # keys whose factors sit on the same children, applied together
    out = {}
    for key in keys:
        prods = [
            (c, [kp[k] if k else None for kp, k in zip(kid_projs, parts, strict=True)] + [None])
            for c, parts in expand(key)
        ]
        if len(prods) == 1 and prods[0][0] == 1:
            legs = tuple(f is not None for f in prods[0][1])
            groups.setdefault(legs, []).append((key, prods[0][1]))
            continue
        # a sum (a node's inside terms): merged, then applied once
        G = TermSum(merge_terms(prods, T.shape))(T)
        out[key] = Bh @ xp.reshape(G, (rows, G.shape[-1]))
    for members in groups.values():
        G = apply_each(T, [fs for _, fs in members])
        G = Bh @ xp.reshape(G, (G.shape[0], rows, G.shape[-1]))
        for k, (key, _) in enumerate(members):
            out[key] = G[k, ...]
    return {key: out[key] for key in keys}
