"""Memory and store size of a ``ttn`` run, estimated from its config.

The state is a tree tensor network of complex128 tensors (16 bytes an entry). The rank
of the edge above a node with ``L`` of the ``d`` sites under it is at most
``r = min(r_max, 2^L, 2^(d - L))``; a step augments it to at most ``2 r`` (a leaf: 2).
A node with children ranks ``r_1 .. r_m`` holds ``r_1 ... r_m r`` entries. What grows
with the config, per inner node:

* its tensor, the sub-problem's start ``C_in``, the Galerkin result, the augmented and
  truncated tensors (``prod(2 r_j) 2 r`` entries), and the projections ``X^H A X`` of
  every operator term restricted to the subtree (``K`` of them, ``r x r`` each);
* while it is worked on: the Lanczos basis of the Galerkin step (up to 41 tensors) and
  the stacked term applications (``K`` tensors at once, ``K`` = the layout's keys:
  ``L + 3`` for ``tfi``, ``L + 7`` for ``xxz``, ``2 L + 1`` for ``lr-ising``: the terms
  inside a subtree are summed into one key).

Where it lives: with ``schedule=subtrees`` (parallel method) each worker keeps the
subtrees it was given (under the nodes ``subtree_depth`` below the root) and the driver
the nodes above them; otherwise the
driver keeps the whole network and a worker holds one node's step at a time.

``exact_reference=true`` adds on the driver the sparse ``2^d x 2^d`` Hamiltonian
(``(d + 1) 2^d`` entries, a few copies inside ``expm_multiply``) and, every step, the
dense state ``to_dense`` builds: at the root a ``2^d x r_1 r_2`` Kronecker product,
usually the largest array of the run.

The store holds the history (one row of ``d + nodes + 9`` float64 per step, in chunks
of 256 rows) and up to three checkpoints of the network. Only array memory is estimated
(what grows with the config): the Python process with its imported modules comes on
top.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from ..base import Estimate
from .config import BUILTIN

#: Bytes of a complex128 entry.
C16 = 16
#: Largest Lanczos basis of one sub-flow (``tasks.ttn.expm.expm_apply``'s ``m_max``), plus
#: the start vector.
KRYLOV = 41
#: Every estimate is capped here (1 ZiB): sizes beyond are refused anyway.
CAP = 2**70


def _cap(n: float) -> int:
    return int(min(max(n, 0), CAP))


def term_count(kind: str, leaves: int) -> int:
    """Keys of a subtree of ``leaves`` sites in
    :class:`tilegraph.tasks.ttn.integrator.OperatorLayout` (magnetisations included): the
    sum of the terms inside, one key per site's magnetisation, and the restrictions of
    the terms reaching out (every site's ``n`` for ``lr-ising``, at most two boundary
    sites of a chain otherwise)."""
    L = leaves
    if kind == "lr-ising":
        return 2 * L + 1
    if kind == "xxz":
        return L + 7
    return L + 3  # tfi


def _shape(cfg, r_max: int):
    """Per node: children, sites under it, rank cap and augmented rank cap."""
    tree = cfg.make_tree()
    n = tree.n_nodes
    dims = [t.dim for t in cfg.site_types()]
    total = math.prod(dims)
    leaves = [len(tree.leaves[k]) for k in range(n)]
    rank = [1] * n
    aug = [1] * n
    for k in reversed(range(n)):  # children before parents (pre-order numbering)
        if k == 0:
            continue
        under = math.prod(dims[s] for s in tree.leaves[k])
        cap = min(under, total // under)
        rank[k] = max(1, min(r_max, cap))
        rank[k] = max(rank[k], min(cfg.r_min, cap))
        kids = tree.children[k]
        rows = dims[tree.site[k]] if tree.is_leaf(k) else math.prod(aug[c] for c in kids)
        aug[k] = min(2 * rank[k], rows, cap)
    return tree, leaves, rank, aug


def group_counts(kind: str, child_leaves) -> tuple[int, int, int]:
    """Most terms applied at once at a node with children of ``child_leaves`` sites:
    ``(projections, Galerkin sub-flow, rejection test)``.

    The projections stack the keys inside one child; the sums (the node's inside terms,
    the sub-flow's and the rejection test's terms) are merged first: the all-to-all
    couplings of ``lr-ising`` between two children to one term per site of one of them
    (measured), the chains' to a few.
    """
    inside = max(term_count(kind, L) for L in child_leaves)
    if kind == "lr-ising":
        most = max(child_leaves)
        return max(inside, most), most, most
    joining = 3 if kind == "xxz" else 1
    return max(inside, joining), max(1, (3 * inside) // 5), joining


def _node_bytes(cfg, tree, leaves, rank, aug, k) -> tuple[int, int]:
    """``(kept, working)`` bytes of inner node ``k``: what stays between its steps and
    the peak while its step (Galerkin sub-flow, projections) runs."""
    kids = tree.children[k]
    size = math.prod(rank[c] for c in kids) * rank[k]  # the tensor
    padded = math.prod(aug[c] for c in kids) * rank[k]  # in the augmented child bases
    big = math.prod(aug[c] for c in kids) * aug[k]  # augmented
    if cfg.model.kind in BUILTIN:
        K = term_count(cfg.model.kind, leaves[k])
        G_proj, G_flow, G_join = group_counts(cfg.model.kind, [leaves[c] for c in kids])
    else:  # counted on the operator itself
        K, G_proj, G_flow, G_join = _layout_counts(cfg)[k]
    # kept: the tensor and its projections; during a step also C_in, the Galerkin
    # result, the assembled and augmented tensors and their truncation
    kept = 3 * size + 2 * big + K * rank[k] ** 2
    # a batched mode product of a stack of G terms holds about 3 G tensors (the stack,
    # its transpose, the product); the sub-flow adds its Lanczos basis
    flow = padded if cfg.method == "sequential" else size  # the sequential one: augmented
    working = max((KRYLOV + 2 + 3 * G_flow) * flow, (G_proj + 1) * size, 2 * big)
    if cfg.method == "sequential":
        working = max(working, (G_proj + 1) * big)  # projections in the augmented bases
    elif cfg.reject:
        working = max(working, 3 * G_join * size)  # the blocks with two new indices
    return C16 * kept, C16 * working


def _layout_counts(cfg) -> dict[int, tuple[int, int, int, int]]:
    """Per inner node of a user's Hamiltonian: ``(K, G_proj, G_flow, G_join)`` of
    :func:`_node_bytes`, from its :class:`~tilegraph.tasks.ttn.integrator.OperatorLayout`
    (the sub-flow counted as unmerged: an upper bound)."""
    key = cfg.model_dump_json()
    if _COUNTS.get("key") != key:
        from tilegraph.tasks.ttn.integrator import OperatorLayout

        from .driver import observable_keys

        tree, op = cfg.make_tree(), cfg.make_operator()
        ops, mag, obs = observable_keys(cfg)
        extra = [k for k in mag if k is not None] + obs
        lay = OperatorLayout(tree, dataclasses.replace(op, ops={**op.ops, **ops}), extra)
        out = {}
        for k in tree.inner:
            kids = tree.children[k]
            inside = max(len(lay.keys[c]) for c in kids)
            expand = lay.expander(k)
            joining = sum(
                1
                for key_ in lay.keys[k]
                for _, parts in expand(key_)
                if sum(1 for p in parts if p) > 1
            )
            g = max(inside, joining)
            out[k] = (len(lay.keys[k]) + len(kids), g, g, _merged_pairs(lay, tree, k))
        _COUNTS.update(key=key, counts=out)
    return _COUNTS["counts"]


_COUNTS: dict = {}


def _merged_pairs(lay, tree, k: int) -> int:
    """Largest stack of the step-rejection test at node ``k``: per pair of children
    ``(i, j)``, the number of terms :func:`~tilegraph.tasks.ttn.contract.merge_terms`
    leaves of those acting on both: its :func:`~tilegraph.tasks.ttn.contract.merge_plan`
    on tokens that stand for the factors."""
    from tilegraph.tasks.ttn.contract import merge_plan
    from tilegraph.tasks.ttn.integrator import root_bond_terms

    expand = lay.expander(k)
    at_root = tree.parent[k] < 0
    keys = list(root_bond_terms(lay)) if at_root else lay.keys[k]
    most = 0
    for i, j in itertools.combinations(range(len(tree.children[k])), 2):
        terms = [
            # the last leg is the bond tensor of the key; the root's is the scalar 1
            (coef, [(b, p) if p else None for b, p in enumerate(parts)] + [bond])
            for key in keys
            for bond in [None if at_root else key]
            for coef, parts in expand(key)
            if parts[i] and parts[j]
        ]
        most = max(most, len(merge_plan(terms, len(tree.children[k]) + 1)[1]))
    return most


def _exact_bytes(cfg, tree, rank) -> int:
    """Driver bytes of the exact reference: the sparse H inside ``expm_multiply`` and
    the dense state ``to_dense`` builds (largest at the root)."""
    dims = [t.dim for t in cfg.site_types()]
    dim = math.prod(dims)
    if cfg.model.kind in BUILTIN:
        offdiag = cfg.d - 1 if cfg.model.kind == "xxz" else cfg.d
    else:  # at most one entry per term and row
        offdiag = min(len(cfg.make_operator().keys), dim)
    H = (offdiag + 1) * dim * (C16 + 4) + 4 * dim
    dense = 0  # the Kronecker product of the children's bases, then the children's
    for k in tree.inner:
        cols = math.prod(rank[c] for c in tree.children[k])
        sub = [math.prod(dims[s] for s in tree.leaves[c]) for c in tree.children[k]]
        below = sum(n * rank[c] for n, c in zip(sub, tree.children[k], strict=True))
        dense = max(dense, C16 * (math.prod(sub) * cols + below))
    return _cap(3 * H + 8 * C16 * dim + dense)


def _sizes(cfg, r_max: int, workers: int) -> tuple[int, int, int]:
    tree, leaves, rank, aug = _shape(cfg, r_max)
    nodes = {k: _node_bytes(cfg, tree, leaves, rank, aug, k) for k in tree.inner}
    most = max(t.dim for t in cfg.site_types())
    leaf_bytes = C16 * 8 * most * max(aug)  # a leaf's basis, K-step and augmentation
    state = C16 * sum(
        math.prod(rank[c] for c in tree.children[k]) * rank[k] if k in nodes else 2 * rank[k]
        for k in range(tree.n_nodes)
    )
    if cfg.method == "parallel" and cfg.schedule == "subtrees":
        # one stateful worker per subtree top; a worker may hold several
        tops = tree.cut(cfg.subtree_depth)
        per = []
        for c in tops:
            sub = [k for k in tree.subtree(c) if k in nodes]
            kept = sum(nodes[k][0] for k in sub) + leaf_bytes * len(tree.subtree(c))
            work = max((nodes[k][1] for k in sub), default=leaf_bytes)
            per.append((kept, work))
        per.sort(reverse=True)
        groups = max(1, min(int(workers), len(tops)))
        share = -(-len(tops) // groups)
        worker = sum(k for k, _ in per[:share]) + max(w for _, w in per)
        # the driver holds the root (its step: environments, assembly, rejection test,
        # truncation); a branch worker per child of the root the nodes between it and
        # the tops, and it may share a worker with subtrees
        inside = {k for c in tops for k in tree.subtree(c)}
        driver = nodes[0][0] + nodes[0][1] + 2 * state  # + observables
        branches = [
            [k for k in tree.subtree(b) if k in nodes and k not in inside]
            for b in tree.children[0]
        ]
        held = sorted(
            (sum(nodes[k][0] for k in ks) + max(nodes[k][1] for k in ks) for ks in branches if ks),
            reverse=True,
        )
        # as many branches per worker as the subtrees' share (their steps overlap)
        worker += sum(held[: -(-len(held) // max(1, int(workers)))])
    else:
        kept = sum(k for k, _ in nodes.values()) + leaf_bytes * tree.n_nodes
        driver = kept + max(w for _, w in nodes.values()) + 2 * state
        worker = max(w for _, w in nodes.values())
    if cfg.exact_reference:
        driver += _exact_bytes(cfg, tree, rank)
    return _cap(driver), _cap(worker), state


def estimate(cfg, workers: int) -> Estimate:
    """Peak memory of the driver and of one worker, and the store size, of a run.

    Parameters
    ----------
    cfg : TTNConfig
    workers : int
        Workers the subtrees are shared out over (at least 1).

    Returns
    -------
    Estimate
        Bytes of array memory at the largest ranks ``r_max`` allows; ``field`` is
        ``r_max`` (``d`` where the tree shape, not the rank, sets the size),
        ``alternative`` names ``exact_reference=false`` when the reference is on.
    """
    driver, worker, state = _sizes(cfg, cfg.r_max, workers)
    hs = cfg.h_list or [cfg.h]
    tree = cfg.make_tree()
    row = 8 * (cfg.d + tree.n_nodes + 9) + 32 * len(cfg.observables)
    history = sum(row * 256 * -(-(cfg.steps(h) + 1) // 256) for h in hs)  # whole chunks
    store = _cap(history + 3 * state)  # the newest three checkpoints are kept

    field = "r_max"
    low_driver, low_worker, _ = _sizes(cfg, cfg.r_min, workers)
    if 2 * max(low_driver, low_worker) > max(driver, worker):
        field = "d"  # the tree's shape (a wide node), not the rank, sets the size
    if cfg.exact_reference:
        alternative = "set exact_reference=false (the dense 2^d reference)"
    elif field == "d" and cfg.tree != "binary":
        alternative = "use tree=binary (nodes with two children)"
    else:
        alternative = "more workers"
    return Estimate(driver, worker, store, field, alternative)


__all__ = ["estimate", "term_count"]
