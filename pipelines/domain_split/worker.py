"""The stateful worker of ``domain-split``: block passes over the fine-grid vectors.

Every fine-grid vector is cut into blocks (the chunks of its Zarr array). A
:class:`BlockWorker` runs on a worker (a Dask or Ray actor, see
``cluster.Executor.actor``) and handles a fixed list of blocks: it keeps its blocks of
the vectors in memory (in-memory runs; only the iterate is also written to Zarr) or
reads and writes them in Zarr (out of core), takes the halos a pass reads of other
workers' blocks from the driver (:meth:`BlockWorker.export`) or from Zarr, calls the
kernels of :mod:`tilegraph.tasks.domain_split`, and returns small per-block results
(partial sums, restrictions) that the driver reduces in block order. Its results do not
depend on which blocks it holds.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys

import numpy as np
from array_api_compat import array_namespace
from tilegraph.tasks.devices import array_module, deterministic_blas, to_device, to_host
from tilegraph.tasks.domain_split.combine import SubmeshSolver, restrict, restriction_matrix
from tilegraph.tasks.domain_split.grid import GridLayout
from tilegraph.tasks.domain_split.holes import (
    BoxSolver,
    fill_block,
    pad1,
    smooth_block,
    smooth_region,
)
from tilegraph.tasks.domain_split.operator import StencilCache, exact_block, rhs_block
from tilegraph.tasks.domain_split.problems import Problem

#: Arguments of the passes that read beyond their blocks: the stencil's halo, the
#: smoother's shifted boxes (at most ``stride + 2`` nodes beyond).
HALO_READS = {"matvec": ("u",), "smooth_step": ("v", "z_in")}


class BlockWorker:
    """Block passes for one worker.

    Every pass runs with single-threaded BLAS
    (:func:`~tilegraph.tasks.devices.deterministic_blas`): a multi-threaded ``gemm`` or
    ``trsm`` may round differently, and a run must give the same bits in a one-thread
    worker process and in the driver (``sync``).

    Parameters
    ----------
    problem : Problem
    layout : GridLayout
    scheme : {"central", "upwind"}
    cache : bool
        Keep the blocks this worker wrote in memory. Off in out-of-core runs.
    local : iterable of str
        Paths of scratch vectors that no resume reads: with ``cache`` they stay in
        memory and skip Zarr, and the parts of them that other workers' blocks read
        (halos) are sent through the driver (:meth:`export`, then the ``halos`` of the
        pass that reads them). Other vectors are written through to Zarr, and halos
        of them are read from there.
    submesh : tuple
        ``(method, tol, lean)`` of the sub-mesh solves this worker is given (see
        :class:`tilegraph.tasks.domain_split.combine.SubmeshSolver`).
    device : {"cpu", "cuda", "array-api-strict"}
        Where the block kernels (stencils, box solves, vector updates) run: NumPy, CuPy
        on the worker's GPU, or array-api-strict arrays (the GPU code path, checked on
        a CPU). Zarr I/O and the sub-mesh solves stay on the host.
    boxes : {"lu", "frozen"}
        How variable-coefficient boxes are solved (see ``BoxSolver``'s ``frozen``).
    corrections : int
        Defect-correction steps of frozen box solves (see ``BoxSolver``).
    """

    def __init__(
        self,
        problem: Problem,
        layout: GridLayout,
        scheme: str,
        cache: bool = True,
        local=(),
        submesh=("auto", 1e-10),
        device: str = "cpu",
        boxes: str = "lu",
        corrections: int = 0,
    ):
        self.problem, self.layout, self.scheme = problem, layout, scheme
        self.xp = array_module(device)
        self.stencil = StencilCache(problem, layout.n_fine, scheme)
        self.boxes = BoxSolver(
            problem,
            layout,
            scheme,
            frozen=boxes == "frozen",
            stencil=self.stencil,
            corrections=corrections,
            compact=not cache,
        )
        self.sub = SubmeshSolver(problem, layout, scheme, *submesh)
        self.R = restriction_matrix(layout.n_coarse, layout.n_fine)
        self.cache = cache
        self.local = frozenset(local) if cache else frozenset()
        self._arrays: dict = {}
        self._blocks: dict = {}
        self._halo: dict = {}  # (path, block index) -> [(first node, array)]: sent halos

    # -- I/O ----------------------------------------------------------------------------
    def _arr(self, ref):
        if ref not in self._arrays:
            self._arrays[ref] = ref.open()
        return self._arrays[ref]

    def _read(self, ref, start, stop, halo: int = 0):
        """``ref`` on the fine nodes ``[start, stop)`` with ``halo`` more on every side
        (zeros outside the domain), on this worker's device."""
        n = self.layout.n_fine + 1
        lo = [max(a - halo, 0) for a in start]
        hi = [min(b + halo, n) for b in stop]
        data = self._region(ref, lo, hi)
        if not halo:
            return data
        shape = tuple(b - a + 2 * halo for a, b in zip(start, stop, strict=True))
        out = self.xp.zeros(shape, dtype=self.xp.float64)
        at = tuple(
            slice(a0 - (a - halo), b0 - (a - halo))
            for a, a0, b0 in zip(start, lo, hi, strict=True)
        )
        out[at] = data
        return out

    def _region(self, ref, lo, hi):
        """Fine nodes ``[lo, hi)`` of ``ref`` on this worker's device: the parts in
        blocks this worker wrote from memory (with ``cache``), the rest from Zarr."""
        if not self.cache:
            return self._dev(self._get(ref, lo, hi))
        c, last = self.layout.chunks[0], self.layout.blocks_per_axis - 1
        per_axis = []  # per axis: (block, first node, stop node) of each piece
        for a, b in zip(lo, hi, strict=True):
            pieces = []
            for j in range(min(a // c, last), min((b - 1) // c, last) + 1):
                pieces.append((j, max(a, j * c), b if j == last else min(b, (j + 1) * c)))
            per_axis.append(pieces)
        combos = list(itertools.product(*per_axis))
        hits = [
            self._piece(ref, *(tuple(p[k] for p in combo) for k in range(3))) for combo in combos
        ]
        if all(h is None for h in hits):  # one read of the whole region
            return self._dev(self._get(ref, lo, hi))
        shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
        out = self.xp.zeros(shape, dtype=self.xp.float64)
        for combo, hit in zip(combos, hits, strict=True):
            dst = tuple(slice(a - a0, b - a0) for (_, a, b), a0 in zip(combo, lo, strict=True))
            if hit is None:
                out[dst] = self._dev(self._get(ref, [p[1] for p in combo], [p[2] for p in combo]))
                continue
            first, data = hit
            at = tuple(slice(a - f, b - f) for (_, a, b), f in zip(combo, first, strict=True))
            out[dst] = self._dev(data[at])
        return out

    def _piece(self, ref, index, lo, hi):
        """``(first node, array)`` holding nodes ``[lo, hi)`` of block ``index`` of
        ``ref`` here: the block itself when this worker wrote it, else a part of it sent
        as a halo; None when they are to be read from Zarr."""
        hit = self._blocks.get((ref.path, index))
        if hit is not None:
            return tuple(j * self.layout.chunks[0] for j in index), hit
        for first, data in self._halo.get((ref.path, index), ()):
            if all(
                f <= a and b <= f + n for a, b, f, n in zip(lo, hi, first, data.shape, strict=True)
            ):
                return first, data
        if ref.path in self.local:
            raise RuntimeError(
                f"{ref.path} is kept in worker memory, and nodes {lo}..{hi} of block "
                f"{index} are neither this worker's nor sent to it"
            )
        return None

    @contextlib.contextmanager
    def _received(self, halos):
        """Hold the halos a pass was sent (see :meth:`export`), ``{path: {block id:
        [(first node, array), ...]}}``, while it runs."""
        self._halo = {
            (path, self.layout.blocks[j].index): pieces
            for path, parts in (halos or {}).items()
            for j, pieces in parts.items()
        }
        try:
            yield
        finally:
            self._halo = {}

    def _padded(self, ref) -> bool:
        """Whether ``ref`` is stored block-padded (the work vectors; see
        ``GridLayout.padded_shape``) rather than plain (the results)."""
        return tuple(ref.shape) != self.layout.shape

    def _get(self, ref, lo, hi) -> np.ndarray:
        """Fine nodes ``[lo, hi)`` of ``ref``, on the host."""
        arr = self._arr(ref)
        if not self._padded(ref):
            return np.asarray(arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
        stored, take = zip(
            *(self.layout.padded_range(a, b) for a, b in zip(lo, hi, strict=True)), strict=True
        )
        data = np.asarray(arr[stored])
        for k, t in enumerate(take):
            if t is not None:
                data = np.take(data, t, axis=k)
        return data

    def _dev(self, data):
        """Host data as an array of this worker's device (no copy on the CPU)."""
        return to_device(self.xp, data)

    def _write(self, ref, block, data, keep: bool = True) -> None:
        if ref.path not in self.local:
            if self._padded(ref):  # the block's chunk, written whole
                region = ref.check(self.layout.padded_block(block))
                host = np.zeros(self.layout.padded_chunks)
                host[tuple(slice(0, m) for m in block.shape)] = to_host(data)
            else:
                region, host = ref.check(block.region), to_host(data)
            self._arr(ref)[region] = host
        if self.cache and keep:
            if self.xp is np:
                data = np.array(data, dtype=np.float64)
            self._blocks[ref.path, block.index] = data

    def _own(self, ref, block) -> np.ndarray:
        """The block's owned part of ``ref`` (from memory when this worker wrote it)."""
        hit = self._blocks.get((ref.path, block.index)) if self.cache else None
        return hit if hit is not None else self._read(ref, block.start, block.stop)

    def _halo1(self, ref, b) -> np.ndarray:
        """The block with a one-node halo for the stencil: the owned part (from memory
        when cached) and the 2 d face slabs from Zarr (corners are not needed)."""
        if not self.cache:
            return self._read(ref, b.start, b.stop, halo=1)
        ext = pad1(self._own(ref, b))
        n = self.layout.n_fine + 1
        for k in range(self.layout.d):
            for idx, pos in ((b.start[k] - 1, 0), (b.stop[k], -1)):
                if 0 <= idx < n:
                    lo, hi = list(b.start), list(b.stop)
                    lo[k], hi[k] = idx, idx + 1
                    dst = [slice(1, -1)] * self.layout.d
                    dst[k] = slice(0, 1) if pos == 0 else slice(-1, None)
                    ext[tuple(dst)] = self._region(ref, lo, hi)
        return ext

    def _block(self, i):
        """Block ``i``; with ``cache``, the stencil coefficients of every region its
        passes apply the stencil to (the block reaching one box and a node beyond,
        where its shifted boxes reach) are kept from the first pass on."""
        b = self.layout.blocks[i]
        if self.cache:
            reach, n = self.layout.stride + 2, self.layout.n_fine + 1
            start = tuple(max(a - reach, 0) for a in b.start)
            stop = tuple(min(e + reach, n) for e in b.stop)
            self.stencil.keep(i, start, stop, self.xp)
        return b

    def _stencil(self, u_ext, block):
        return self.stencil(u_ext, block.start)

    @staticmethod
    def _dots(y, others) -> list[float]:
        return [_dot(y, o) for o in others]

    # -- passes ---------------------------------------------------------------------------
    @deterministic_blas()
    def rhs(self, ids, out):
        """Write ``B`` (``f`` inside, ``g`` on the boundary); return ``sum(B^2)``."""
        res = []
        for i in ids:
            b = self._block(i)
            v = self._dev(rhs_block(self.problem, b.start, b.shape, self.layout.n_fine))
            self._write(out, b, v)
            res.append(_dot(v, v))
        return res

    @deterministic_blas()
    def submesh_solve(self, subsets, rhs):
        """Solve the sub-mesh problems ``subsets`` (a list of ``S``) for the right-hand
        sides ``rhs`` (same order); this worker keeps their factorisations."""
        return [self.sub.solve(S, v) for S, v in zip(subsets, rhs, strict=True)]

    @deterministic_blas()
    def restrict(self, ids, v):
        """Per-block parts of the restriction of ``v`` to every sub-mesh."""
        res = []
        for i in ids:
            b = self._block(i)
            res.append(restrict(self.layout, self._own(v, b), b.start, self.R))
        return res

    @deterministic_blas()
    def smooth_step(self, ids, v, z_in, z_out, shift, r_out=None, drop=(), halos=None):
        """One sweep of shifted-box solves: ``z = z_in + Sh (v - L z_in)`` (``z_in`` None
        means zero); write ``z``. With ``r_out``, also write ``r = v - L z`` and return
        its restriction (the last sweep before the coarse step). ``drop``: vectors no
        longer needed (not read here), let go first.

        A block solves every shifted box that meets its nodes or their one-node halo, so
        it gets ``z`` on the halo without waiting for its neighbours; boxes shared with a
        neighbour are solved from the same data there, so both get the same bits.
        ``halos``: the parts of other workers' blocks of ``v`` and ``z_in`` it reads,
        where those vectors are kept in memory (see :meth:`export`).
        """
        self._drop(ids, drop)
        with self._received(halos):
            return self._smooth_step(ids, v, z_in, z_out, shift, r_out)

    def _smooth_step(self, ids, v, z_in, z_out, shift, r_out):
        res = []
        d = self.layout.d
        for i in ids:
            b = self._block(i)
            start, stop, _ = smooth_region(self.layout, b, shift)
            v_region = self._read(v, start, stop)
            own = tuple(
                slice(a - s0, e - s0) for a, e, s0 in zip(b.start, b.stop, start, strict=True)
            )
            if z_in is None:
                r_region = v_region
                z_ext = smooth_block(self.layout, self.boxes, r_region, b, shift)
            else:
                z_reg = self._read(z_in, start, stop, halo=1)
                r_region = v_region - self.stencil(z_reg, start)
                halo = tuple(slice(o.start, o.stop + 2) for o in own)  # owned + 1, in z_reg
                z_ext = z_reg[halo] + smooth_block(self.layout, self.boxes, r_region, b, shift)
            self._write(z_out, b, z_ext[(slice(1, -1),) * d])
            if r_out is not None:
                r = v_region[own] - self._stencil(z_ext, b)
                self._write(r_out, b, r)
                res.append(restrict(self.layout, r, b.start, self.R))
            else:
                res.append(None)
        return res

    @deterministic_blas()
    def fill(self, ids, corrected, v, base, out, drop=(), spent=()):
        """``out = base + (skeleton + box solves of v)`` on each block (``base`` may be
        None). ``corrected`` holds, per block, the corrected sub-mesh solutions on the
        block's work region. ``drop``: vectors no longer needed, let go first;
        ``spent``: vectors read here for the last time, let go after a pass that
        succeeded."""
        self._drop(ids, drop)
        for i, corr in zip(ids, corrected, strict=True):
            b = self._block(i)
            z = fill_block(self.layout, self.boxes, corr, self._own(v, b), b)
            if base is not None:
                z = z + self._own(base, b)
            self._write(out, b, z)
        self._drop(ids, spent)
        return [None] * len(ids)

    @deterministic_blas()
    def matvec(self, ids, u, rhs=None, out=None, dots=(), halos=None):
        """``y = L u`` (or ``rhs - L u``); write ``y`` to ``out`` if given. ``halos``:
        the faces of other workers' blocks of ``u`` it reads (see :meth:`export`).

        Returns, per block, ``(sum(y^2), [<y, d> for d in dots])``.
        """
        with self._received(halos):
            return self._matvec(ids, u, rhs, out, dots)

    def _matvec(self, ids, u, rhs, out, dots):
        res = []
        for i in ids:
            b = self._block(i)
            y = self._stencil(self._halo1(u, b), b)
            if rhs is not None:
                y = self._own(rhs, b) - y
            if out is not None:
                self._write(out, b, y)
            others = [self._own(d, b) for d in dots]
            res.append((_dot(y, y), self._dots(y, others)))
        return res

    @deterministic_blas()
    def lincomb(self, ids, out, terms, dots=(), drop=()):
        """``y = sum_k c_k v_k`` for ``terms = [(c_k, v_k), ...]``; write ``y`` to ``out``;
        then let go of the vectors ``drop`` (no longer needed).

        Returns, per block, ``(sum(y^2), [<y, d> for d in dots])``.
        """
        res = []
        for i in ids:
            b = self._block(i)
            y = None
            for c, ref in terms:
                t = float(c) * self._own(ref, b)
                y = t if y is None else y + t
            others = [self._own(d, b) for d in dots]
            self._write(out, b, y)
            res.append((_dot(y, y), self._dots(y, others)))
        self._drop(ids, drop)
        return res

    def _drop(self, ids, refs) -> None:
        """Forget this worker's blocks ``ids`` of the in-memory vectors ``refs``."""
        for ref in refs:
            for i in ids:
                self._blocks.pop((ref.path, self.layout.blocks[i].index), None)

    def export(self, ids, refs, wanted):
        """The parts of this worker's blocks that other workers' blocks read.

        Parameters
        ----------
        ids : list of int
            Blocks of this worker.
        refs : list
            Vectors kept in memory (see ``local``; they have a ``path``) that the next
            pass reads with halos.
        wanted : list of list of tuple
            Per block, the boxes ``(lo, hi)`` (fine-node ranges) to send.

        Returns
        -------
        list
            Per vector, per block, per box: a host copy of the vector there.
        """
        out = []
        for ref in refs:
            per_block = []
            for i, boxes in zip(ids, wanted, strict=True):
                b = self.layout.blocks[i]
                own = self._blocks.get((ref.path, b.index))
                if own is None:
                    raise RuntimeError(f"{ref.path}: block {b.index} is not in this worker")
                at = [tuple(slice(a - s, e - s) for a, e, s in zip(lo, hi, b.start, strict=True))
                      for lo, hi in boxes]  # fmt: skip
                per_block.append([np.array(to_host(own[s]), copy=True) for s in at])
            out.append(per_block)
        return out

    @deterministic_blas()
    def sumsq(self, ids, u):
        """Return per block ``sum(u^2)`` of the block's owned part (read, not written)."""
        return [_dot(y, y) for y in (self._own(u, self._block(i)) for i in ids)]

    @deterministic_blas()
    def finalize(self, ids, x, solution, exact=None, error=None):
        """Write the solution and, when ``exact`` is given, the exact solution and the
        error; return per block ``(sum(err^2), sum(exact^2), max|err|)`` (zeros without
        ``exact``). The last pass: the other vectors and the solvers are let go first,
        so that the output does not add to the solve's peak memory."""
        self._blocks = {k: v for k, v in self._blocks.items() if k[0] == x.path}
        self.stencil.kept.clear()
        self.boxes = self.sub = None
        res = [self._output(self.layout.blocks[i], x, solution, exact, error) for i in ids]
        self._blocks.clear()  # x is in the store
        _trim_heap()
        return res

    def _output(self, b, x, solution, exact, error) -> tuple[float, float, float]:
        """Block ``b``'s part of :meth:`finalize` (its arrays go when it returns)."""
        u = self._own(x, b)
        self._write(solution, b, u, keep=False)
        if exact is None:
            return 0.0, 0.0, 0.0
        ue = self._dev(exact_block(self.problem, b.start, b.shape, self.layout.n_fine))
        err = u - ue
        self._write(exact, b, ue, keep=False)
        self._write(error, b, err, keep=False)
        return _dot(err, err), _dot(ue, ue), float(self.xp.max(self.xp.abs(err)))


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` through the symbols already loaded (no library search:
    ``ctypes.util.find_library`` runs ``ldconfig`` or a compiler); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim  # musl has none: AttributeError
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        return fn
    except Exception:
        return None


def _trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc only; elsewhere nothing).

    glibc raises its mmap threshold to the largest array freed, so a pass's block-sized
    temporaries come from the heap and what they leave stays in the process after the
    last pass: at 1023^2 on two workers each stayed at 250 MiB, 110 MiB of it freed
    heap, while the driver wrote the results and drew the summary.
    """
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


def _dot(a, b) -> float:
    """``sum(a * b)`` by NumPy's pairwise summation: unlike BLAS ``ddot``, whose
    rounding depends on how many threads split the sum, this gives the same bits in a
    one-thread worker process and in a multi-threaded driver."""
    if isinstance(a, np.ndarray):
        return float(np.sum(np.multiply(a, b)))
    xp = array_namespace(a)
    return float(xp.sum(xp.multiply(a, b)))


def layout_for(d: int, n_fine: int, n_coarse: int, boxes_per_block: int | None) -> GridLayout:
    """The block layout: ``boxes_per_block`` given, or chosen so a chunk holds about
    2^20 nodes and there are at least two blocks per axis when possible."""
    if boxes_per_block is None:
        s = n_fine // n_coarse
        side = round(2 ** (20 / d))
        boxes_per_block = max(1, min(side // s, -(-n_coarse // 2)))
    return GridLayout(d, n_fine, n_coarse, min(boxes_per_block, n_coarse))
