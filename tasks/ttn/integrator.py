"""One time step of the parallel BUG and of the rank-adaptive (sequential) BUG on a TTN.

Notation (see ``docs/ttn.md``): for ``y' = -i H y`` with ``H = sum_k c_k (x)_s A_{k,s}``
and an orthonormal TTN, every subtree ``tau`` gets a *sub-problem*: its connecting
tensor with the bond weighted (``C_in``, shape ``(r_1, ..., r_m, k)``) and its restricted
operator ``sum_key (x)_{s in tau} A_{key,s} (x) B_key`` where ``B_key`` (``k x k``) acts
on the bond. The environment of child ``i`` comes from a QR of ``Mat_i(C_in)^T``.

The step is split into pure kernels (``leaf_step``, ``galerkin_step``) that a scheduler
may run anywhere, and cheap driver-side glue (environments, assembly, truncation).
``step`` runs one whole step; give it ``map_fn`` (e.g. an executor's map+gather) to run
every leaf K-step and every node Galerkin step of the step as independent tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from array_api_compat import array_namespace

from ..devices import to_host
from .contract import TermSum, apply_each, apply_terms, augment, merge_terms, mode, project_node
from .expm import expm_apply
from .operators import SumOfProducts
from .state import bond_matrix, matricize, unmatricize
from .trees import Tree


@dataclass(frozen=True)
class Truncation:
    """Rank truncation: keep the fewest singular values whose discarded tail has 2-norm
    ``<= theta`` (``relative``: ``<= theta * ||sigma||``), then clamp to
    ``[r_min, r_max]``."""

    theta: float = 1e-8
    relative: bool = False
    r_min: int = 1
    r_max: int = 64


@dataclass
class StepInfo:
    """What one step did: ranks per edge after truncation, augmented ranks, Lanczos
    tolerance used, and whether every augmented edge kept all its directions."""

    ranks: list[int] = field(default_factory=list)
    augmented: list[int] = field(default_factory=list)
    untruncated: bool = False
    #: The start state written in the augmented bases (same vector, larger ranks): the
    #: state a rejected step is redone from.
    start_augmented: list | None = None
    #: ``||h F(Y0)||`` on the blocks with two new indices (0 unless asked for).
    eta: float = 0.0


# -- the operator's structure on a tree ------------------------------------------------


@dataclass(frozen=True)
class Inside:
    """The key of the operator's terms that lie entirely inside the subtree under
    ``node``, summed: one ``r x r`` projection per node instead of one per term (the
    "block Hamiltonian" of DMRG; what a tree tensor network operator compresses)."""

    node: int


class OperatorLayout:
    """Which operator keys live on which subtree, and how they split over children.

    A key is a tuple of ``(site, op name)`` factors (``()``: the identity) or an
    :class:`Inside`. Every node needs the projections of its keys: the restrictions of the
    operator's terms that reach out of its subtree, one :class:`Inside` for the terms
    that do not, and the restrictions of ``extra_keys`` (observables). Built once per
    (tree, operator); picklable.

    Parameters
    ----------
    tree : Tree
    op : SumOfProducts
    extra_keys : iterable of Key
        Keys whose projections are kept too (observables), restriction by restriction.
    compress : bool
        Sum the terms inside a subtree into its :class:`Inside` key. Without (``False``),
        every distinct restriction of every term is a key of its own: the number of keys
        of a node of ``m`` sites under all-to-all couplings grows as ``m^2`` instead of
        ``m`` (the integrators' results agree to rounding; kept as a check).
    """

    def __init__(self, tree: Tree, op: SumOfProducts, extra_keys=(), compress: bool = True):
        self.tree = tree
        self.op = op
        self.compress = compress
        self.extra = tuple(extra_keys)
        self.leafsets = [frozenset(lv) for lv in tree.leaves]
        terms = list(zip(op.keys, op.coefs, strict=True))
        self.keys: list[list] = []  # per node: the keys of its projections
        # per node: the summed inside terms as products over its children (coef, parts)
        self.inside: list[list] = [[] for _ in range(tree.n_nodes)]
        if compress:
            for key, c in terms:
                node = self._lowest(key)
                if tree.is_leaf(node):
                    self.inside[node].append((c, key))
                else:
                    self.inside[node].append((c, self.splitter(node)(key)))
            # a subtree whose inside is not empty is summed into its parent's inside
            for node in reversed(range(1, tree.n_nodes)):
                if self.inside[node]:
                    par = tree.parent[node]
                    parts = tuple(Inside(c) if c == node else () for c in tree.children[par])
                    self.inside[par].insert(0, (1.0, parts))
        for node in range(tree.n_nodes):
            seen = {}
            if self.inside[node]:
                seen[Inside(node)] = None
            for k in op.keys:
                r = self.restrict(k, node)
                if r and (not compress or len(r) < len(k)):
                    seen[r] = None
            for k in self.extra:
                r = self.restrict(k, node)
                if r:
                    seen[r] = None
            self.keys.append(list(seen))
        self._local = {node: self._leaf_ops(node) for node in tree.leaf_nodes}
        self._crossing: dict = {}  # node -> crossing(node), filled on first use

    def _lowest(self, key) -> int:
        """The smallest subtree holding every site of ``key`` (the root for ``()``)."""
        sites = {f[0] for f in key}
        node = 0
        while sites and not self.tree.is_leaf(node):
            inner = [c for c in self.tree.children[node] if sites <= self.leafsets[c]]
            if not inner:
                break
            node = inner[0]
        return node

    def crossing(self, node: int) -> frozenset:
        """The restrictions to ``node``'s subtree of the operator's terms that reach both
        into and out of it (computed once per node)."""
        if node not in self._crossing:
            inside = self.leafsets[node]
            self._crossing[node] = frozenset(
                self.restrict(k, node) for k in self.op.keys if any(f[0] not in inside for f in k)
            ) - {()}
        return self._crossing[node]

    def restrict(self, key, node: int):
        s = self.leafsets[node]
        return tuple(f for f in key if f[0] in s)

    def splitter(self, node: int) -> Callable:
        """``split(key)``: the factors of a tuple key on each child of ``node``."""
        kids = self.tree.children[node]
        sets = [self.leafsets[c] for c in kids]

        def split(key):
            return tuple(tuple(f for f in key if f[0] in s) for s in sets)

        return split

    def expander(self, node: int) -> Callable:
        """``expand(key) -> [(coef, parts), ...]``: a key of ``node`` as a sum of
        products of keys of its children (one product except for :class:`Inside`)."""
        split = self.splitter(node)
        inside = self.inside[node]

        def expand(key):
            if isinstance(key, Inside):
                return inside
            return [(1.0, split(key))]

        return expand

    def _leaf_ops(self, node: int) -> dict:
        out = {}
        for k in self.keys[node]:
            if isinstance(k, Inside):
                out[k] = sum(
                    c * np.asarray(self.op.ops[key[0][1]]) for c, key in self.inside[node]
                )
            else:
                out[k] = self.op.ops[k[0][1]]
        return out

    def local_ops(self, node: int) -> dict:
        """For a leaf: its keys -> local matrices (its single-site terms summed)."""
        return self._local[node]


def below(tree: Tree, tops) -> set:
    """The nodes strictly below the nodes ``tops``."""
    out: set = set()
    for t in tops:
        out.update(n for n in tree.subtree(t) if n != t)
    return out


def held(tree: Tree, top: int, cut=()) -> list[int]:
    """The nodes of the subtree under ``top`` outside the subtrees under ``cut`` (those
    a process holds when the subtrees under ``cut`` are held elsewhere), top-down."""
    away = below(tree, cut) | set(cut)
    return [n for n in tree.subtree(top) if n not in away]


@dataclass(frozen=True)
class Remote:
    """Subtrees whose K-steps and truncations run elsewhere (the ``subtrees`` schedule).

    Attributes
    ----------
    tops : tuple of int
        The tops of the subtrees held elsewhere; every path from the root to a leaf
        passes through at most one.
    kstep : callable
        ``kstep(node, S, bond_terms, need_p) -> token``: start the K-step of the subtree
        under ``node`` from its environment (``S``, ``bond_terms`` as
        :func:`child_environment` returns them); ``need_p`` are the keys of the top's
        augmented projections the step-rejection test needs (None without it).
    truncate : callable
        ``truncate(node, P, sig) -> token``: truncate that subtree with what its parent
        kept on the edge above it.
    gather : callable
        ``gather(tokens) -> results``. A K-step gives ``coeff`` (``p x k``), or with the
        rejection test ``(coeff, eta2, mixed, phat)``; a truncation gives ``(R, top
        projections, edges below the top)``.
    """

    tops: tuple
    kstep: Callable
    truncate: Callable
    gather: Callable


def projections(layout: OperatorLayout, state, top: int = 0, known=None) -> list[dict]:
    """``X^H A_key X`` for every node (of the subtree under ``top``) and key of the layout,
    bottom-up, in the state's array namespace. The root entry is empty (its bond is 1).

    ``known`` (node -> projections) gives the tops of subtrees held elsewhere: their
    entries are taken as given and their tensors below are not needed."""
    tree = layout.tree
    proj: list[dict] = [{} for _ in range(tree.n_nodes)]
    xp = array_namespace(state[top])
    known = known or {}
    hidden = below(tree, known)
    for node in reversed(tree.subtree(top)):
        if node == 0:
            break
        if node in hidden:
            continue
        if node in known:
            proj[node] = known[node]
            continue
        if tree.is_leaf(node):
            U = state[node]
            Uh = xp.conj(U.T)
            proj[node] = {k: Uh @ (xp.asarray(m) @ U) for k, m in layout.local_ops(node).items()}
        else:
            kids = [proj[c] for c in tree.children[node]]
            proj[node] = project_node(state[node], kids, layout.keys[node], layout.expander(node))
    return proj


def root_terms(layout: OperatorLayout, proj, keys_coefs):
    """Terms of ``sum coef * key`` at the root as per-child factors (bond 1 folded in)."""
    expand = layout.expander(0)
    kids = layout.tree.children[0]
    terms = []
    for key, c in keys_coefs:
        for a, parts in expand(key):
            fs = [proj[ch][p] if p else None for ch, p in zip(kids, parts, strict=True)]
            terms.append((c * a, fs + [None]))
    return terms


def expectation(layout: OperatorLayout, state, proj, keys_coefs) -> complex:
    """``<Y| sum coef * key |Y>`` of an orthonormal state with projections ``proj``."""
    xp = array_namespace(state[0])
    C = state[0]
    G = apply_terms(C, root_terms(layout, proj, keys_coefs))
    return complex(xp.sum(xp.conj(C) * G))


def expectations(layout: OperatorLayout, state, proj, keys) -> list[complex]:
    """``<Y| key |Y>`` for each tuple key (e.g. every site's magnetisation), the keys with
    factors on the same children of the root applied in one batch."""
    xp = array_namespace(state[0])
    C = state[0]
    terms = root_terms(layout, proj, [(k, 1.0) for k in keys])
    groups: dict = {}
    for idx, (_, fs) in enumerate(terms):
        groups.setdefault(tuple(f is not None for f in fs), []).append((idx, fs))
    out = [0j] * len(terms)
    for members in groups.values():
        G = apply_each(C, [fs for _, fs in members])
        vals = xp.sum(xp.reshape(xp.conj(C) * G, (G.shape[0], -1)), axis=1)
        for (idx, _), v in zip(members, to_host(vals), strict=True):
            out[idx] = complex(v)
    return out


def energy(layout: OperatorLayout, state, proj) -> float:
    return expectation(layout, state, proj, root_bond_terms(layout).items()).real


# -- pure task kernels -----------------------------------------------------------------


def leaf_step(U0, K0, terms, h: float, tol: float):
    """The K-step of a leaf and its augmentation.

    Parameters
    ----------
    U0 : array, shape ``(n, r)``
        Old orthonormal leaf basis.
    K0 : array, shape ``(n, k)``
        ``U0 S`` with ``S`` from the environment.
    terms : list of (complex, [A or None, B or None])
        ``K' = -i sum coef A K B^T``.
    h : float
        Step size.
    tol : float
        Lanczos tolerance.

    Returns
    -------
    K1 : array ``(n, k)``; Q : array ``(n, p)`` new orthonormal directions;
    coeff : array ``(p, k)`` = ``Q^H K1``.
    """
    K1 = expm_apply(TermSum(terms), K0, h, tol=tol)
    Q, coeff = augment(U0, K1)
    return K1, Q, coeff


def galerkin_step(C0, terms, h: float, tol: float):
    """Integrate ``C' = -i sum coef (x)_j factors_j C`` from ``C0`` over ``h``."""
    return expm_apply(TermSum(terms), C0, h, tol=tol)


# -- driver-side glue ------------------------------------------------------------------


def _scalar(B) -> bool:
    """Bond terms are ``k x k`` arrays or plain numbers (multiples of the identity)."""
    return isinstance(B, int | float | complex)


def node_terms(layout: OperatorLayout, node: int, bond_terms, kid_proj):
    """The restricted operator at ``node`` as per-leg factors (children then bond)."""
    expand = layout.expander(node)
    terms = []
    for key, B in bond_terms.items():
        for a, parts in expand(key):
            factors = [kp[p] if p else None for kp, p in zip(kid_proj, parts, strict=True)]
            if _scalar(B):
                terms.append((a * complex(B), factors + [None]))
            else:
                terms.append((a, factors + [B]))
    return terms


def child_environment(layout: OperatorLayout, node: int, i: int, C_in, bond_terms, kid_proj):
    """Environment of child ``i`` of ``node``.

    Returns
    -------
    S : array ``(r_i, k_i)``
        The child's state is its old basis times ``S``.
    Qt : array ``(rest, k_i)``
        Orthonormal; ``Mat_i(C_in) = S Qt^T``.
    child_bond_terms : dict Key -> array ``(k_i, k_i)``
        The child's restricted operator on its bond, per key restricted to the child.
    """
    xp = array_namespace(C_in)
    tree = layout.tree
    child = tree.children[node][i]
    M = matricize(xp, C_in, i)
    Qt, R = xp.linalg.qr(M.T)
    S = R.T
    k_i = Qt.shape[1]
    rest_shape = tuple(s for a, s in enumerate(C_in.shape) if a != i)
    Qtens = xp.reshape(Qt, rest_shape + (k_i,))
    Qh = xp.conj(Qt.T)
    expand = layout.expander(node)
    groups: dict = {}
    for key, B in bond_terms.items():
        for a, parts in expand(key):
            others = [
                kp[p] if p else None
                for j, (kp, p) in enumerate(zip(kid_proj, parts, strict=True))
                if j != i
            ]
            groups.setdefault(parts[i], []).append((others, B, a))
    # Per child key the terms are merged (a long-range coupling's many terms on one leg
    # become one sum); then the merged terms of every key with factors on the same legs
    # are applied in one batch, not one small TermSum per key.
    idents: dict = {}
    batches: dict = {}  # legs -> [(child key, factors)]
    for ck, members in groups.items():
        ident = 0.0
        terms = []
        for others, B, a in members:
            coef, bf = (a * complex(B), None) if _scalar(B) else (a, B)
            factors = others + [bf, None]
            if all(f is None for f in factors):
                ident += coef
            else:
                terms.append((coef, factors))
        idents[ck] = ident
        for _, fs in merge_terms(terms, Qtens.shape) if terms else ():
            legs = tuple(f is not None for f in fs)
            batches.setdefault(legs, []).append((ck, fs))
    parts: dict = {}
    for members in batches.values():
        Y = apply_each(Qtens, [fs for _, fs in members])
        Y = Qh @ xp.reshape(Y, (Y.shape[0], Qt.shape[0], k_i))
        for k, (ck, _) in enumerate(members):
            parts.setdefault(ck, []).append(Y[k, ...])
    out = {}
    for ck, ident in idents.items():
        if ck not in parts:
            if ident != 0:
                out[ck] = ident  # a multiple of the identity stays a scalar
            continue
        mat = parts[ck][0]
        for more in parts[ck][1:]:
            mat = mat + more
        if ident != 0:
            mat = mat + xp.eye(k_i, dtype=xp.complex128) * ident
        out[ck] = mat
    del child
    return S, Qt, out


def pad(xp, C, shape):
    out = xp.zeros(shape, dtype=C.dtype)
    out[tuple(slice(0, s) for s in C.shape)] = C
    return out


def _rank(sigma, trunc: Truncation, cap: int) -> int:
    """How many of the singular values ``sigma`` (host floats) to keep."""
    s = np.asarray(sigma, dtype=float)
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])  # tail[r] = ||s[r:]||
    tol = trunc.theta * (float(np.linalg.norm(s)) if trunc.relative else 1.0)
    r = next((j for j in range(len(s)) if tail[j] <= tol), len(s))
    return int(max(1, min(max(r, trunc.r_min), trunc.r_max, cap)))


def truncate_edge(W, axis: int, trunc: Truncation):
    """Left singular vectors ``P`` (``r_hat x r``) and values (length ``r``, zero-padded)
    kept on ``axis`` of the weighted tensor ``W``."""
    xp = array_namespace(W)
    M = matricize(xp, W, axis)
    # reduced SVD already gives every left vector when rows <= cols (the usual case)
    U, s, _ = xp.linalg.svd(M, full_matrices=M.shape[0] > M.shape[1])
    # the rank is a sequential scan over a few singular values: on the host, after one
    # transfer (no copy on NumPy), not one device synchronisation per value
    s_host = to_host(s)
    r = _rank([float(v) for v in s_host], trunc, M.shape[0])
    sig = [float(s_host[j]) if j < s_host.shape[0] else 0.0 for j in range(r)]
    return U[:, :r], xp.asarray(sig, dtype=xp.complex128)


def truncate_subtree(
    tree: Tree, aug, top: int, trunc: Truncation, P=None, sig=None, remote: Remote | None = None
):
    """Truncate the augmented subtree under ``top`` towards its leaves.

    ``P`` and ``sig`` are what the parent kept on the edge above ``top`` (``None`` at the
    root). Returns the truncated, not yet orthonormal, tensors (a list, ``None`` outside
    the subtree). With ``remote``, the subtrees under ``remote.tops`` are truncated by
    ``remote.truncate``, and the return is ``(tensors, {node: token})``.
    """
    xp = array_namespace(aug[top])
    cut = set(remote.tops) if remote is not None else set()
    hidden = below(tree, cut)
    sent: dict = {}
    T: list = [None] * tree.n_nodes
    W: list = [None] * tree.n_nodes
    for n in tree.subtree(top):
        T[n] = aug[n]
    last = T[top].ndim - 1
    if P is None:
        W[top] = T[top]
    elif tree.is_leaf(top):
        T[top] = T[top] @ P
    else:
        W[top] = xp.tensordot(T[top], P * sig[None, :], axes=([last], [0]))
        T[top] = xp.tensordot(T[top], P, axes=([last], [0]))
    for node in tree.subtree(top):
        if tree.is_leaf(node) or node in cut or node in hidden:
            continue
        for i, c in enumerate(tree.children[node]):
            Pc, sc = truncate_edge(W[node], i, trunc)
            T[node] = mode(xp, T[node], xp.conj(Pc.T), i)
            if c in cut:
                sent[c] = remote.truncate(c, Pc, sc)
            elif tree.is_leaf(c):
                T[c] = T[c] @ Pc
            else:
                last = T[c].ndim - 1
                W[c] = xp.tensordot(T[c], Pc * sc[None, :], axes=([last], [0]))
                T[c] = xp.tensordot(T[c], Pc, axes=([last], [0]))
    return (T, sent) if remote is not None else T


def edge_changes(tree: Tree, top: int, aug, old, T, got) -> list[tuple[int, int, int, int]]:
    """``(node, augmented, old, new rank)`` of every edge below ``top`` after a step.

    ``aug``, ``old`` and ``T`` (truncated, orthonormalized) hold the nodes kept here (None
    elsewhere); ``got`` (node -> ``(R, projections, edges below it)``) holds the subtrees
    truncated elsewhere, whose top edge is read off its parent here and whose own edges
    they report.
    """
    edges = []
    for n in tree.subtree(top):
        if n == top:
            continue
        if n in got:
            par = tree.parent[n]
            i = tree.children[par].index(n)
            rank_old = int(old[par].shape[i])
            edges.append((n, int(aug[par].shape[i]), rank_old, int(got[n][0].shape[0])))
            edges.extend(got[n][2])
        elif aug[n] is not None:
            edges.append((n, int(aug[n].shape[-1]), int(old[n].shape[-1]), int(T[n].shape[-1])))
    return edges


def orthonormalize_subtree(tree: Tree, T, top: int, R_of=None):
    """QR from the leaves of the subtree up to ``top`` (in place on the list ``T``).

    Returns the ``R`` factor of ``top`` (``T[top]`` becomes orthonormal), or ``None`` at
    the root (which keeps the norm). ``R_of`` (node -> ``R``) gives the factors of
    subtrees orthonormalized elsewhere; they are applied to their parents in the same
    order as a local one's.
    """
    xp = array_namespace(T[top])
    R_of = R_of or {}
    hidden = below(tree, R_of)
    for node in reversed(tree.subtree(top)):
        if node in hidden:
            continue
        if node in R_of:
            R = R_of[node]
        else:
            if node == 0:
                return None
            Q, R = xp.linalg.qr(bond_matrix(xp, T[node]) if T[node].ndim > 2 else T[node])
            T[node] = xp.reshape(Q, T[node].shape[:-1] + (Q.shape[1],))
            if node == top:
                return R
        par = tree.parent[node]
        T[par] = mode(xp, T[par], R, tree.children[par].index(node))
    return None


def truncate(tree: Tree, aug, trunc: Truncation):
    """Truncate an augmented orthonormal TTN from the root towards the leaves.

    Returns
    -------
    state : list
        Orthonormal, ranks in ``[r_min, r_max]`` where the dimensions allow.
    """
    T = truncate_subtree(tree, aug, 0, trunc)
    orthonormalize_subtree(tree, T, 0)
    return T


def assemble(C_bar, coeffs, envs):
    """The augmented connecting tensor of the parallel BUG.

    Parameters
    ----------
    C_bar : array, shape ``(r_1, ..., r_m, k)``
        The Galerkin step from the old bases (the all-old block).
    coeffs : list of array, shapes ``(p_i, k_i)``
        Child ``i``'s evolved sub-problem in its new basis directions.
    envs : list of array, shapes ``(rest_i, k_i)``
        The environments ``Qt`` of the children.

    Returns
    -------
    array, shape ``(r_1 + p_1, ..., r_m + p_m, k)``
        Blocks with one new index ``i`` hold ``coeff_i Qt_i^T``; two or more new: zero.
    """
    xp = array_namespace(C_bar)
    m = C_bar.ndim - 1
    shape = tuple(C_bar.shape[a] + coeffs[a].shape[0] for a in range(m)) + (C_bar.shape[-1],)
    C_hat = pad(xp, C_bar, shape)
    for i in range(m):
        p = coeffs[i].shape[0]
        if p == 0:
            continue
        blk = coeffs[i] @ envs[i].T
        rest = tuple(C_bar.shape[a] for a in range(m + 1) if a != i)
        blk = unmatricize(xp, blk, rest[:i] + (p,) + rest[i:], i)
        idx = tuple(
            slice(C_bar.shape[i], shape[i]) if a == i else slice(0, C_bar.shape[a])
            for a in range(m + 1)
        )
        C_hat[idx] = blk
    return C_hat


def _serial_map(fn, *iterables):
    return [fn(*args) for args in zip(*iterables, strict=True)]


def root_bond_terms(layout: OperatorLayout) -> dict:
    """The operator at the root (the bond is 1): its :class:`Inside`, or every key with
    its coefficient without compression."""
    if layout.compress:
        return {Inside(0): 1.0}
    return dict(zip(layout.op.keys, layout.op.coefs, strict=True))


def ramp_steps(h: float, k: int) -> list[float]:
    """The sizes that take one step ``h`` as a geometric ramp: ``h/2^k, h/2^k,
    h/2^(k-1), ..., h/2`` (``k + 1`` steps; ``[h]`` for ``k = 0``).

    From a product start the first step makes most of a run's error (measured against
    expm: proportional to that step's size, or its square; docs/ttn.md), because the
    bases have not yet grown; the later steps start from grown bases. The sizes are
    dyadic multiples of ``h``, so they add up to ``h`` exactly.

    Parameters
    ----------
    h : float
        Step size (time units of ``H``).
    k : int
        Halvings, ``>= 0``.

    Returns
    -------
    list of float, length ``k + 1``
    """
    if k < 0:
        raise ValueError(f"k must be >= 0 (got {k})")
    return [h / 2**k] + [h / 2**j for j in range(k, 0, -1)]


def step(
    layout: OperatorLayout,
    state,
    h: float,
    trunc: Truncation,
    method: str = "parallel",
    tol: float = 1e-12,
    proj=None,
    map_fn: Callable | None = None,
    eta: bool = False,
):
    """One step ``t -> t + h`` of the parallel or the rank-adaptive sequential BUG.

    Parameters
    ----------
    layout : OperatorLayout
    state : list
        Orthonormal TTN at ``t``.
    h : float
        Step size (1/energy).
    trunc : Truncation
    method : {"parallel", "sequential"}
    tol : float
        Tolerance of the Lanczos sub-flows.
    proj : list of dict, optional
        ``projections(layout, state)`` if already known.
    map_fn : callable, optional
        ``map_fn(fn, *iterables) -> list`` of results in order; defaults to a serial map.
        With ``method="parallel"`` every leaf K-step and node Galerkin step of the step
        goes through one call of it.
    eta : bool
        Also compute ``info.eta``, the norm of ``h F(Y0)`` on the blocks with two new
        indices that the parallel BUG drops (for the step-rejection test).

    Returns
    -------
    state : list
        Orthonormal TTN at ``t + h``.
    info : StepInfo
    """
    tree = layout.tree
    xp = array_namespace(state[0])
    if proj is None:
        proj = projections(layout, state)
    aug, _, eta2 = subtree_update(
        layout,
        state,
        0,
        state[0],
        root_bond_terms(layout),
        proj,
        h,
        method,
        tol,
        map_fn,
        eta=eta and method == "parallel",
    )
    new = truncate(tree, aug, trunc)
    info = StepInfo(
        ranks=[int(new[n].shape[-1]) for n in range(1, tree.n_nodes)],
        augmented=[int(aug[n].shape[-1]) for n in range(1, tree.n_nodes)],
    )
    grown = [e for e in range(1, tree.n_nodes) if info.augmented[e - 1] > int(state[e].shape[-1])]
    info.untruncated = bool(grown) and all(
        info.ranks[e - 1] == info.augmented[e - 1] for e in grown
    )
    start_aug = list(aug)
    start_aug[0] = pad(xp, state[0], aug[0].shape)
    info.start_augmented = start_aug
    info.eta = math.sqrt(eta2)
    return new, info


def subtree_update(
    layout: OperatorLayout,
    state,
    top: int,
    c_in_top,
    bterms_top: dict,
    proj,
    h: float,
    method: str = "parallel",
    tol: float = 1e-12,
    map_fn: Callable | None = None,
    eta: bool = False,
    remote: Remote | None = None,
    need_p_top=None,
):
    """The augmented bases of the subtree under ``top`` for one step (its K-step).

    At the root this is the whole step before truncation; below it, it is the recursive
    K-step of the parallel (or sequential) BUG for the sub-problem ``(c_in_top,
    bterms_top)`` that the parent's environment defines.

    Parameters
    ----------
    state, proj : list
        Old tensors and projections; only entries of the subtree are used.
    remote : Remote, optional
        Subtrees (parallel method) whose K-steps run elsewhere: their tensors are not
        needed, only their tops' projections in ``proj``. Their K-steps are started as
        soon as every environment is known and gathered after this process's own jobs.
    need_p_top : set, optional
        With ``eta``: the keys of ``top``'s augmented projections the caller needs (its
        parent's part of the rejection test, when that parent is elsewhere).

    Returns
    -------
    aug : list
        Augmented orthonormal tensors of the subtree (at ``top = 0``: the assembled
        augmented root tensor).
    top_new : tuple (Q, coeff) or None
        For ``top != 0``: the new directions of ``top``'s basis and the coefficients of
        the evolved sub-problem in them, shape ``(p, k)``; with ``eta`` also the mixed
        projections ``Q^H A_key X_old`` of ``top`` and its augmented projections for the
        keys ``need_p_top`` (dicts by key).
    eta2 : float
        With ``eta`` (parallel method): the squared norm of ``h F(Y0)`` on the blocks
        with two new indices at the inner nodes of the subtree.
    """
    tree = layout.tree
    xp = array_namespace(c_in_top)
    map_fn = map_fn or _serial_map
    if remote is not None and method != "parallel":
        raise ValueError("subtrees held elsewhere need method='parallel'")
    cut = tuple(remote.tops) if remote is not None else ()
    nodes = held(tree, top, cut)
    c_in: list = [None] * tree.n_nodes
    bterms: list = [None] * tree.n_nodes
    env: list = [None] * tree.n_nodes
    c_in[top] = c_in_top
    bterms[top] = bterms_top
    inner = [n for n in nodes if not tree.is_leaf(n)]
    leaves = [n for n in nodes if tree.is_leaf(n)]
    S_cut: dict = {}
    for node in inner:
        kids = tree.children[node]
        kid_proj = [proj[c] for c in kids]
        env[node] = []
        for i, c in enumerate(kids):
            S, Qt, cb = child_environment(layout, node, i, c_in[node], bterms[node], kid_proj)
            env[node].append(Qt)
            bterms[c] = cb
            if c in cut:
                S_cut[c] = S
            elif tree.is_leaf(c):
                c_in[c] = state[c] @ S
            else:
                c_in[c] = xp.tensordot(state[c], S, axes=([state[c].ndim - 1], [0]))

    if eta and method == "parallel":
        need_m, need_p = _eta_keys(layout, top, bterms, nodes, need_p_top)
    started = [remote.kstep(c, S_cut[c], bterms[c], need_p[c] if eta else None) for c in S_cut]
    leaf_terms = []
    for leaf in leaves:
        ops = layout.local_ops(leaf)
        terms = []
        for key, B in bterms[leaf].items():
            A = xp.asarray(ops[key]) if key else None
            if _scalar(B):
                terms.append((complex(B), [A, None]))
            else:
                terms.append((1.0, [A, B]))
        leaf_terms.append(merge_terms(terms, c_in[leaf].shape))
    if method == "parallel":
        node_jobs = [
            merge_terms(
                node_terms(layout, n, bterms[n], [proj[c] for c in tree.children[n]]),
                c_in[n].shape,
            )
            for n in inner
        ]
        fns = ["leaf"] * len(leaves) + ["node"] * len(inner)
        a0 = [state[n] for n in leaves] + [c_in[n] for n in inner]
        a1 = [c_in[n] for n in leaves] + node_jobs
        a2 = leaf_terms + [h] * len(inner)
        a3 = [h] * len(leaves) + [tol] * len(inner)
        a4 = [tol] * len(leaves) + [None] * len(inner)
        results = map_fn(_dispatch, fns, a0, a1, a2, a3, a4)
        res = dict(zip(leaves + inner, results, strict=True))
    elif method == "sequential":
        results = map_fn(
            leaf_step,
            [state[n] for n in leaves],
            [c_in[n] for n in leaves],
            leaf_terms,
            [h] * len(leaves),
            [tol] * len(leaves),
        )
        res = dict(zip(leaves, results, strict=True))
    else:
        raise ValueError(f"unknown method {method!r}")

    # bottom-up: augmented bases and assembled connecting tensors
    aug: list = [None] * tree.n_nodes
    new_part: list = [None] * tree.n_nodes  # (Q, coeff) of each non-root node
    phat: list = [None] * tree.n_nodes  # sequential: projections in the augmented bases
    # the step-rejection test needs, per child, the new directions applied to the old
    # basis (mixed projections) and, for that, projections in the augmented bases
    track = method == "sequential" or eta
    mixed: list = [None] * tree.n_nodes
    eta2 = 0.0
    if method == "sequential":
        need_p = {n: layout.keys[n] for n in nodes}
    # the subtrees elsewhere: their ranks after augmentation and what their parents need
    rank_aug: dict = {}
    for c, got in zip(S_cut, remote.gather(started) if started else [], strict=True):
        coeff = got[0] if eta else got
        if eta:
            eta2 += got[1]
            mixed[c], phat[c] = got[2], got[3]
        new_part[c] = (None, coeff)
        rank_aug[c] = int(S_cut[c].shape[0] + coeff.shape[0])
    for node in reversed(nodes):
        if tree.is_leaf(node):
            K1, Q, coeff = res[node]
            aug[node] = xp.concat([state[node], Q], axis=1)
            new_part[node] = (Q, coeff)
            if track:
                U = aug[node]
                Uh = xp.conj(U.T)
                ops = layout.local_ops(node)
                phat[node] = {k: Uh @ (xp.asarray(m) @ U) for k, m in ops.items()}
                Qh = xp.conj(Q.T)
                mixed[node] = {k: Qh @ (xp.asarray(m) @ state[node]) for k, m in ops.items()}
            continue
        kids = tree.children[node]
        ranks = (rank_aug[c] if c in rank_aug else aug[c].shape[-1] for c in kids)
        shape = tuple(ranks) + (c_in[node].shape[-1],)
        if method == "parallel":
            C_hat = assemble(res[node], [new_part[c][1] for c in kids], env[node])
            if eta:
                eta2 += _two_new_blocks(
                    layout,
                    node,
                    c_in[node],
                    bterms[node],
                    [proj[c] for c in kids],
                    [mixed[c] for c in kids],
                    h,
                )
        else:
            C0 = pad(xp, c_in[node], shape)
            terms = node_terms(layout, node, bterms[node], [phat[c] for c in kids])
            C_hat = galerkin_step(C0, merge_terms(terms, shape), h, tol)
        if node == 0:
            aug[0] = C_hat
            return aug, None, eta2
        old_t = pad(xp, state[node], shape[:-1] + (state[node].shape[-1],))
        old = bond_matrix(xp, old_t)
        Q, coeff = augment(old, bond_matrix(xp, C_hat))
        full = xp.concat([old, Q], axis=1)
        aug[node] = xp.reshape(full, shape[:-1] + (full.shape[1],))
        new_part[node] = (Q, coeff)
        if track:
            kid_phat = [phat[c] for c in kids]
            expand = layout.expander(node)
            phat[node] = project_node(aug[node], kid_phat, need_p[node], expand)
            if eta:
                mixed[node] = project_node(old_t, kid_phat, need_m[node], expand, bra=Q)
    if eta:
        return aug, (*new_part[top], mixed[top], phat[top]), eta2
    return aug, new_part[top], eta2


def _eta_keys(layout: OperatorLayout, top: int, bterms, nodes, need_p_top=None):
    """Keys whose mixed (``need_m``) and augmented (``need_p``) projections the
    rejection test needs at each inner node of the subtree: only terms that reach into
    two children of a node can feed a block with two new indices."""
    tree = layout.tree
    need_m: dict = {}
    need_p: dict = {top: set(need_p_top or ())}
    # the top's parent is not here: any key reaching both into and out of the subtree
    need_m[top] = set(layout.crossing(top))
    for node in nodes:
        if tree.is_leaf(node):
            continue
        kids = tree.children[node]
        expand = layout.expander(node)
        wanted = need_m[node] | need_p[node]
        for i, c in enumerate(kids):
            need_m.setdefault(c, set())
            need_p[c] = {parts[i] for k in wanted for _, parts in expand(k)} - {()}
        for key in bterms[node]:
            for _, parts in expand(key):
                if sum(1 for p in parts if p) >= 2:
                    for c, p in zip(kids, parts, strict=True):
                        if p:
                            need_m[c].add(p)
    return need_m, need_p


def _two_new_blocks(layout, node, c_in, bond_terms, kid_proj, kid_mixed, h):
    """``sum ||h F(Y0)||^2`` over the blocks of ``node`` with exactly two new indices.

    These blocks are set to zero by the parallel BUG; their size is the ``eta`` of the
    step-rejection test (the matrix case's ``||Ut^H F(Y0) Vt||``).
    """
    xp = array_namespace(c_in)
    expand = layout.expander(node)
    m = len(kid_proj)
    # new directions per child (every mixed projection of a child has its p rows)
    new = [next(iter(km.values())).shape[0] if km else 0 for km in kid_mixed]
    total = 0.0
    for i in range(m):
        for j in range(i + 1, m):
            if not new[i] or not new[j]:
                continue  # a child without new directions: no such block
            terms = []
            for key, B in bond_terms.items():
                for a, parts in expand(key):
                    if not parts[i] or not parts[j]:
                        continue  # the identity maps the old basis to nothing new
                    fs = [
                        kid_mixed[b][p] if b in (i, j) else (kid_proj[b][p] if p else None)
                        for b, p in enumerate(parts)
                    ]
                    if _scalar(B):
                        terms.append((a * complex(B), fs + [None]))
                    else:
                        terms.append((a, fs + [B]))
            if terms:
                acc = TermSum(merge_terms(terms, c_in.shape))(c_in)
                total += float(xp.sum(xp.abs(acc) ** 2)) * h * h
    return total


def _dispatch(fn: str, a, b, c, d, e):
    """One task of the parallel step (a leaf K-step or a node Galerkin step)."""
    if fn == "node":
        return galerkin_step(a, b, c, d)
    return leaf_step(a, b, c, d, e)
