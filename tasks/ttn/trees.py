"""Trees of a tree tensor network: which sites sit under which node.

A tree is given by a nested spec of site indices: ``(0, 1)`` is the matrix case,
``(0, 1, 2, 3)`` a Tucker tensor (one node over all leaves), ``((0, 1), (2, 3))`` a
balanced binary tree. Nodes are numbered in pre-order; node 0 is the root.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tree:
    """A rooted tree whose leaves are the sites ``0 .. d-1``.

    Attributes
    ----------
    children : tuple of tuple of int
        Child node ids of every node (empty for a leaf).
    site : tuple of (int or None)
        The site of a leaf node, None for an inner node.
    parent : tuple of int
        Parent node id, -1 for the root.
    leaves : tuple of tuple of int
        The sites under every node, in tree order.
    """

    children: tuple[tuple[int, ...], ...]
    site: tuple[int | None, ...]
    parent: tuple[int, ...]
    leaves: tuple[tuple[int, ...], ...]

    @property
    def n_nodes(self) -> int:
        return len(self.children)

    @property
    def d(self) -> int:
        """Number of sites."""
        return len(self.leaves[0])

    def is_leaf(self, node: int) -> bool:
        return self.site[node] is not None

    @property
    def inner(self) -> tuple[int, ...]:
        """Inner node ids in pre-order (root first)."""
        return tuple(n for n in range(self.n_nodes) if self.site[n] is None)

    @property
    def leaf_nodes(self) -> tuple[int, ...]:
        return tuple(n for n in range(self.n_nodes) if self.site[n] is not None)

    def subtree(self, node: int) -> tuple[int, ...]:
        """``node`` and its descendants in pre-order."""
        out = [node]
        for c in self.children[node]:
            out.extend(self.subtree(c))
        return tuple(out)

    def cut(self, depth: int) -> tuple[int, ...]:
        """The nodes ``depth`` edges below the root and the leaves above that depth, in
        depth-first order: the tops of disjoint subtrees that, with the nodes above
        them, cover the tree (every root-to-leaf path passes through exactly one)."""
        tops: list[int] = []
        stack = [(0, 0)]
        while stack:
            node, level = stack.pop()
            if node != 0 and (level == depth or self.is_leaf(node)):
                tops.append(node)
                continue
            stack.extend((c, level + 1) for c in reversed(self.children[node]))
        return tuple(tops)

    def postorder(self) -> tuple[int, ...]:
        """Node ids with every child before its parent."""
        return tuple(reversed(range(self.n_nodes)))

    def spec(self):
        """The nested spec this tree was built from."""

        def rec(n):
            if self.site[n] is not None:
                return self.site[n]
            return tuple(rec(c) for c in self.children[n])

        return rec(0)


def from_spec(spec) -> Tree:
    """Build a :class:`Tree` from a nested spec of site indices.

    Parameters
    ----------
    spec : nested tuples/lists of int
        Every inner node needs at least two children; the sites must be ``0 .. d-1``,
        each exactly once.

    Raises
    ------
    ValueError
        On a malformed spec.
    """
    children: list[list[int]] = []
    site: list[int | None] = []
    parent: list[int] = []

    def rec(s, par: int) -> int:
        node = len(children)
        children.append([])
        parent.append(par)
        if isinstance(s, bool) or not isinstance(s, int | list | tuple):
            raise ValueError(f"tree spec entries must be ints or nested lists, got {s!r}")
        if isinstance(s, int):
            site.append(s)
            return node
        site.append(None)
        if len(s) < 2:
            raise ValueError(f"an inner node needs at least 2 children, got {list(s)!r}")
        for c in s:
            children[node].append(rec(c, node))
        return node

    if isinstance(spec, int):
        raise ValueError("a tree needs at least 2 sites")
    rec(spec, -1)
    leaves: list[tuple[int, ...]] = [()] * len(children)
    for n in reversed(range(len(children))):
        leaves[n] = (
            (site[n],) if site[n] is not None else sum((leaves[c] for c in children[n]), ())
        )
    sites = sorted(leaves[0])
    if sites != list(range(len(sites))):
        raise ValueError(f"tree sites must be 0..d-1 each once, got {sorted(leaves[0])}")
    return Tree(tuple(tuple(c) for c in children), tuple(site), tuple(parent), tuple(leaves))


def tucker(d: int) -> Tree:
    """One node over all ``d`` leaves (a Tucker tensor); ``d = 2`` is the matrix case."""
    return from_spec(tuple(range(d)))


def balanced_binary(d: int) -> Tree:
    """A balanced binary tree over sites ``0 .. d-1`` (halves split recursively)."""

    def rec(lo: int, hi: int):
        if hi - lo == 1:
            return lo
        mid = (lo + hi + 1) // 2
        return (rec(lo, mid), rec(mid, hi))

    if d < 2:
        raise ValueError(f"a tree needs at least 2 sites, got d={d}")
    return from_spec(rec(0, d))


def make_tree(kind: str, d: int, spec=None) -> Tree:
    """``kind`` is ``"binary"``, ``"tucker"`` or ``"spec"`` (then ``spec`` is used)."""
    if kind == "binary":
        return balanced_binary(d)
    if kind == "tucker":
        return tucker(d)
    if kind == "spec":
        t = from_spec(spec)
        if t.d != d:
            raise ValueError(f"tree spec has {t.d} sites but d={d}")
        return t
    raise ValueError(f"unknown tree kind {kind!r}")
