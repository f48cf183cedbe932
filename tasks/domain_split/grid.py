"""Index bookkeeping of the two-level method: fine grid, sub-meshes, boxes and blocks.

The fine grid has ``n_fine`` intervals per direction on ``[0, 1]^d``: nodes
``i = 0 .. n_fine`` with ``x = i / n_fine``, boundary nodes included, so every fine-grid
array has shape ``(n_fine + 1,) * d``. The coarse grid has ``n_coarse`` intervals and
stride ``s = n_fine / n_coarse``: coarse nodes are the fine nodes with ``i % s == 0``.

A *sub-mesh* ``S`` (a non-empty tuple of axes) is coarse along the axes in ``S`` and fine
along the others. ``S = (k,)`` are the anisotropic meshes of the paper (fine in ``d - 1``
directions); larger ``S`` are the intersections (lines in 3-D, the coarse grid itself
when ``S`` is every axis). The *skeleton* is the set of fine nodes with at least one
coordinate on a coarse level; it cuts the grid into ``n_coarse^d`` *boxes* of
``(s - 1)^d`` interior nodes each.

A *block* is a group of ``boxes_per_block^d`` boxes together with the skeleton nodes at
their lower faces: a union of whole chunks of the fine-grid Zarr array, so the task that
handles a block owns the chunks it writes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Block:
    """A block of boxes: its index, its owned region and the boxes it contains.

    Attributes
    ----------
    index : tuple of int
        Block index along each axis.
    start, stop : tuple of int
        Owned fine-node range ``[start, stop)`` along each axis (whole chunks).
    boxes : tuple of range
        Box indices along each axis (box ``j`` spans nodes ``j s .. (j + 1) s``).
    """

    index: tuple[int, ...]
    start: tuple[int, ...]
    stop: tuple[int, ...]
    boxes: tuple[range, ...]

    @property
    def region(self) -> tuple[slice, ...]:
        """The owned region as slices of the fine grid."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))


@dataclass(frozen=True)
class GridLayout:
    """Fine/coarse grids and the block decomposition.

    Parameters
    ----------
    d : int
        Space dimension.
    n_fine : int
        Fine intervals per direction.
    n_coarse : int
        Coarse intervals per direction; must divide ``n_fine``.
    boxes_per_block : int
        Boxes per block along each axis (the chunk size is ``boxes_per_block * s``).
    """

    d: int
    n_fine: int
    n_coarse: int
    boxes_per_block: int = 1

    def __post_init__(self):
        if self.n_coarse < 1 or self.n_fine % self.n_coarse:
            raise ValueError(
                f"n_fine ({self.n_fine}) must be a multiple of n_coarse ({self.n_coarse})"
            )
        if self.n_fine // self.n_coarse < 2:
            raise ValueError("n_fine / n_coarse must be at least 2 so that boxes are not empty")

    @property
    def stride(self) -> int:
        """Fine nodes per coarse interval, ``s``."""
        return self.n_fine // self.n_coarse

    @property
    def h_fine(self) -> float:
        return 1.0 / self.n_fine

    @property
    def h_coarse(self) -> float:
        return 1.0 / self.n_coarse

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of a fine-grid array (boundary nodes included)."""
        return (self.n_fine + 1,) * self.d

    @property
    def chunks(self) -> tuple[int, ...]:
        """Zarr chunk shape of fine-grid arrays: one block per chunk (the last block also
        owns the one-node chunk of the upper boundary)."""
        return (self.stride * self.boxes_per_block,) * self.d

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Shape of a fine-grid vector stored block-padded: block ``j`` along an axis at
        ``j (c + 1)`` (``c`` the chunk size), one chunk of ``c + 1`` per block, so the
        last block, which owns the upper boundary node too, is one chunk like the
        others (in the plain layout it also owns a nearly empty boundary chunk, which
        Zarr stores and rewrites whole). Work vectors are stored so."""
        return (self.blocks_per_axis * (self.chunks[0] + 1),) * self.d

    @property
    def padded_chunks(self) -> tuple[int, ...]:
        """Chunk shape of the block-padded layout: one block per chunk."""
        return (self.chunks[0] + 1,) * self.d

    def padded_range(self, lo: int, hi: int):
        """Where fine nodes ``lo .. hi - 1`` of one axis lie in the block-padded layout.

        Returns
        -------
        stored : slice
            The stored range from the first node to the last.
        take : numpy.ndarray or None
            Positions of the nodes in that range (None when it holds nothing else; it
            holds the unused last slot of each block it crosses).
        """
        c, last = self.chunks[0], self.blocks_per_axis - 1
        k_lo, k_hi = min(lo // c, last), min((hi - 1) // c, last)
        stored = slice(lo + k_lo, hi + k_hi)
        if k_lo == k_hi:
            return stored, None
        i = np.arange(lo, hi)
        return stored, i + np.minimum(i // c, last) - (lo + k_lo)

    def padded_block(self, block: Block) -> tuple[slice, ...]:
        """The chunk of the block-padded layout that holds ``block``."""
        c = self.chunks[0] + 1
        return tuple(slice(j * c, (j + 1) * c) for j in block.index)

    @property
    def unknowns(self) -> int:
        """Interior unknowns of the fine problem, ``(n_fine - 1)^d``."""
        return (self.n_fine - 1) ** self.d

    @cached_property
    def subsets(self) -> tuple[tuple[int, ...], ...]:
        """All sub-meshes ``S``: non-empty sets of coarse axes, by size then lexically."""
        out = []
        for r in range(1, self.d + 1):
            out.extend(itertools.combinations(range(self.d), r))
        return tuple(out)

    def mesh_shape(self, S) -> tuple[int, ...]:
        """Node shape of sub-mesh ``S`` (boundary included)."""
        return tuple(self.n_coarse + 1 if k in S else self.n_fine + 1 for k in range(self.d))

    def mesh_axes(self, S) -> list[np.ndarray]:
        """1-D node coordinates of sub-mesh ``S`` along each axis."""
        return [np.linspace(0.0, 1.0, n) for n in self.mesh_shape(S)]

    # -- blocks -----------------------------------------------------------------------
    @property
    def blocks_per_axis(self) -> int:
        return -(-self.n_coarse // self.boxes_per_block)

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """Every block, in C order of the block index (a fixed order on every backend)."""
        m, b, c = self.blocks_per_axis, self.boxes_per_block, self.chunks[0]
        ranges = []
        for j in range(m):
            start = j * c
            stop = self.n_fine + 1 if j == m - 1 else (j + 1) * c
            ranges.append((start, stop, range(j * b, min((j + 1) * b, self.n_coarse))))
        out = []
        for idx in itertools.product(range(m), repeat=self.d):
            rs = [ranges[j] for j in idx]
            out.append(
                Block(
                    index=idx,
                    start=tuple(r[0] for r in rs),
                    stop=tuple(r[1] for r in rs),
                    boxes=tuple(r[2] for r in rs),
                )
            )
        return tuple(out)

    def mesh_slices(self, S, start, stop):
        """Where sub-mesh ``S`` meets the fine range ``[start, stop)``.

        Returns
        -------
        fine : tuple of slice
            Fine-grid slices (relative to ``start``) of the mesh nodes in the range.
        mesh : tuple of slice
            The same nodes as slices of the sub-mesh array.
        """
        s = self.stride
        fine, mesh = [], []
        for k in range(self.d):
            a, b = start[k], stop[k]
            if k in S:
                first = -(-a // s)
                last = (b - 1) // s
                if last < first:
                    fine.append(slice(0, 0))
                    mesh.append(slice(0, 0))
                    continue
                fine.append(slice(first * s - a, last * s - a + 1, s))
                mesh.append(slice(first, last + 1))
            else:
                fine.append(slice(0, b - a))
                mesh.append(slice(a, b))
        return tuple(fine), tuple(mesh)

    def coarse_view(self, S):
        """Slices that pick the coarse nodes out of a sub-mesh ``S`` array."""
        s = self.stride
        return tuple(slice(None) if k in S else slice(None, None, s) for k in range(self.d))


def halo_plan(layout: GridLayout, groups, reads) -> dict[int, list]:
    """What each worker reads of other workers' blocks in one pass: the halo exchange
    of in-memory vectors.

    Parameters
    ----------
    layout : GridLayout
    groups : sequence of sequence of int
        Block ids (positions in ``layout.blocks``) held by each worker.
    reads : sequence of tuple
        Per block id, the fine-node box ``(lo, hi)`` its pass reads (its owned nodes
        and the halo beyond them).

    Returns
    -------
    dict
        ``{j: [(g, lo, hi), ...]}``: for every block ``j`` that blocks of another worker
        ``g`` read, the boxes ``[lo, hi)`` (within ``j``'s owned nodes) they read of it,
        one per reading block, less those inside another of the same worker (so a block
        read from both sides sends two faces, not itself whole), in order of ``g``.
    """
    m, c, d = layout.blocks_per_axis, layout.chunks[0], layout.d
    group_of = {j: g for g, ids in enumerate(groups) for j in ids}
    boxes: dict[tuple[int, int], list] = {}
    for i, (lo, hi) in enumerate(reads):
        g = group_of[i]
        near = [
            range(min(a // c, m - 1), min((e - 1) // c, m - 1) + 1)
            for a, e in zip(lo, hi, strict=True)
        ]
        for idx in itertools.product(*near):
            j = int(np.ravel_multi_index(idx, (m,) * d))
            if group_of[j] != g:
                bj = layout.blocks[j]
                a = tuple(max(x, y) for x, y in zip(lo, bj.start, strict=True))
                e = tuple(min(x, y) for x, y in zip(hi, bj.stop, strict=True))
                boxes.setdefault((j, g), []).append((a, e))
    out: dict[int, list] = {}
    for (j, g), found in sorted(boxes.items()):
        for k, (a, e) in enumerate(found):
            inside = any(
                all(a0 <= x and y <= e0 for x, y, a0, e0 in zip(a, e, b0, f0, strict=True))
                and (k2 < k or (b0, f0) != (a, e))
                for k2, (b0, f0) in enumerate(found)
                if k2 != k
            )
            if not inside:
                out.setdefault(j, []).append((g, a, e))
    return out


def merge_weights(layout: GridLayout, rule: str = "richardson") -> dict[tuple[int, ...], float]:
    """Weights ``c_S`` of the merge ``M = sum_S c_S w_S`` at the coarse nodes.

    ``combination`` is the sparse-grid combination technique,
    ``c_S = (-1)^(|S| - 1)``: with the error model ``sum_k C_k h_k^2`` it reproduces the
    fine discrete solution. ``richardson`` scales the proper sub-meshes by
    ``lambda = h_c^2 / (h_c^2 - h_f^2)`` and fixes the all-coarse weight so that the
    weights sum to one and the ``h_k^2`` terms cancel against the exact solution; it
    tends to the combination technique as ``h_f -> 0`` (the paper's choice).

    Parameters
    ----------
    layout : GridLayout
    rule : {"richardson", "combination"}
    """
    d = layout.d
    if rule == "combination":
        lam = 1.0
    elif rule == "richardson":
        hc2, hf2 = layout.h_coarse**2, layout.h_fine**2
        lam = hc2 / (hc2 - hf2)
    else:
        raise ValueError(f"merge rule must be 'richardson' or 'combination', got {rule!r}")
    sign_full = (-1) ** (d - 1)
    weights = {}
    for S in layout.subsets:
        if len(S) < d:
            weights[S] = lam * (-1) ** (len(S) - 1)
        else:
            weights[S] = 1.0 - lam * (1 - sign_full)
    return weights
