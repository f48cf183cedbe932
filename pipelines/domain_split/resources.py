"""Memory and store size of a ``domain-split`` run, estimated from its config.

What grows with the config, and where it lives (``N = n_fine + 1`` nodes per axis,
``V = 8 N^d`` bytes: one fine-grid vector in float64):

* **workers** (:class:`~tilegraph.pipelines.domain_split.worker.BlockWorker`): with
  ``out_of_core=false`` every block a worker owns keeps every vector it wrote in memory
  (``B``, the iterates ``x0 .. x2``, the FGMRES bases ``V_0 .. V_m`` and
  ``Z_0 .. Z_{m-1}`` with ``m = min(restart, max_iter)``, the scratch
  ``w, z, r, s0, s1``): about ``2 m + 10`` vectors shared out over the workers (the
  last pass lets them go before it writes the results), and receives the halos of one
  pass from the workers next to it. With
  ``out_of_core=true`` a worker keeps no vectors, only the arrays of the block pass
  running (``m + 1`` blocks of the Gram-Schmidt dots and the smoother's region
  temporaries). On top: the box solvers (fast-diagonalisation bases per box size, or a
  sparse LU per box size or, with variable coefficients, per box) and the sub-mesh
  solvers (fast diagonalisation: two ``N x N`` matrices per fine axis; SuperLU or pyamg
  otherwise).
* **driver**: sub-mesh sized arrays (right-hand sides, solutions, merge, spline
  correction) and, in memory on several workers, the halos of one pass (workers hold
  contiguous runs of blocks: two vectors, both sides of every interface, about four
  faces of the grid a box deep per pair of neighbouring workers), except with
  ``direct_reference=true``: SciPy assembles the whole fine matrix and factorises it
  with SuperLU (fill measured on these grids: about
  ``n (5.6 log2 n - 34)`` entries in 2-D, ``1.57 n^1.55`` in 3-D for ``n`` unknowns), and
  holds a handful of fine vectors besides. That is the largest item of most in-memory
  runs.
* **store**: the solution buffers ``x0 .. x2`` (every work vector with
  ``out_of_core=true``), uncompressed, and the three result fields; the work vectors
  are deleted at the end unless ``keep_work``, so this is the peak on disk.

Only array memory is estimated (what grows with the config): the Python process with its
imported modules comes on top (a few hundred MiB).
"""

from __future__ import annotations

import math

from ..base import Estimate

#: Bytes of a float64.
F8 = 8
#: Bytes per stored nonzero of a SciPy CSR/CSC matrix (float64 value, int32 index).
NNZ_BYTES = 12
#: Bytes per nonzero of SuperLU's factors (measured: 9.7 in 2-D) ...
LU_BYTES = 10
#: ... and while factorising, with its workspace (measured peaks: 17-20 in 2-D, 11 in
#: 3-D, where the supernodes are larger)
LU_PEAK_BYTES = {2: 20, 3: 12}
#: Temporaries of one block pass, in units of the pass's region (stencil, box solves).
PASS_TEMPS = 14
#: Every estimate is capped here (1 ZiB): sizes beyond are refused anyway.
CAP = 2**70


def _cap(n: float) -> int:
    return int(min(max(n, 0), CAP))


def _float(n: int) -> float:
    """``n`` as a float, clamped where a config's integers would overflow one."""
    return float(min(n, 10**300))


def lu_nonzeros(n: int, d: int) -> int:
    """Nonzeros of SuperLU's ``L + U`` (``MMD_AT_PLUS_A`` ordering) of the finite-difference
    operator on ``n`` unknowns of a ``d``-dimensional grid (fitted to measured fill,
    at most dense)."""
    if n <= 0:
        return 0
    nf = _float(n)
    if d <= 1:
        per_row = 3.0
    elif d == 2:
        per_row = max(5.6 * math.log2(nf) - 34.0, 5.0)
    else:
        per_row = max(1.57 * nf**0.55, 7.0)
    return int(min(nf * per_row, nf * nf, 1e300))


def _matrix_bytes(n: int, d: int) -> int:
    """A sparse ``(2 d + 1)``-point operator on ``n`` unknowns (CSR/CSC)."""
    return (2 * d + 1) * n * NNZ_BYTES + 4 * n


def _box_sizes(layout, offsets) -> set[int]:
    """Interval counts of the boxes along one axis: the regular ones (``s``) and, per
    shifted skeleton at offset ``o``, the first (``o``), inner (``s``) and last
    (``s - o``) ones."""
    s = layout.stride
    sizes = {s}
    for off in offsets:
        sizes |= {off, s - off} - {0}
    return sizes


def _fd_applies(problem, scheme: str, sizes, h) -> bool:
    """Whether :meth:`SeparableSolver.build` gives a solver (constant coefficients, mild
    advection) for ``sizes`` interior nodes with spacings ``h``."""
    if not problem.constant_coefficients or min(h) < 1e-100:  # (no grid is that fine)
        return False
    from tilegraph.tasks.domain_split.separable import MAX_LOG_SCALE, tridiagonal

    for k, (n, hk) in enumerate(zip(sizes, h, strict=True)):
        if n <= 1:
            continue
        lower, _, upper = tridiagonal(problem, k, hk, scheme)
        if lower * upper <= 0:
            return False
        if _float(n) * abs(0.5 * math.log(upper / lower)) > MAX_LOG_SCALE:
            return False
    return True


def _fd_bytes(sizes) -> int:
    """A fast-diagonalisation solver: ``V`` and ``V^-1`` per axis and ``1/lambda``."""
    return sum(2 * F8 * n * n for n in sizes) + F8 * math.prod(sizes)


def _fd_build_bytes(sizes) -> int:
    """Peak while building one: the dense tridiagonal, its eigenvectors and scalings."""
    return 6 * F8 * max(n * n for n in sizes)


def _box_solver_bytes(cfg, layout, problem, offsets) -> tuple[int, int]:
    """``(kept, transient)`` bytes of one worker's box solvers (every box size it may
    meet: regular and shifted boxes, in every combination along the axes)."""
    d, nc = cfg.d, cfg.n_coarse
    h = [1.0 / _float(cfg.n_fine)] * d
    per_axis = sorted(n - 1 for n in _box_sizes(layout, offsets) if n >= 2)  # interior
    if not per_axis:
        return 0, 0
    k = len(per_axis)
    big = per_axis[-1]
    if _fd_applies(problem, cfg.scheme, [big] * d, h):
        # one solver per combination of sizes: per axis V and V^-1, and 1/lambda
        bases = d * k ** (d - 1) * sum(2 * F8 * n * n for n in per_axis)
        inv_lam = F8 * sum(per_axis) ** d
        return _cap(bases + inv_lam), _fd_build_bytes([big])
    if not problem.constant_coefficients and cfg.boxes == "frozen":
        # per box its eigenvalue sums and (in 3-D) scalings on its grid (the sine bases
        # are shared; 2-D applies the scalings axis by axis); while a stack is built,
        # about four more such arrays. Out of core only their per-axis factors, the
        # grids formed for one block's boxes at a time
        boxes = (1 + len(offsets)) * (nc + 1) ** d
        per_box = (1 if d < 3 else 2) * F8 * big**d
        if cfg.out_of_core:
            in_block = (layout.boxes_per_block + 2) ** d
            return _cap(boxes * 2 * F8 * d * big), _cap(4 * per_box * in_block)
        return _cap(boxes * per_box), _cap(4 * per_box * (nc + 1) ** d)
    unknowns = big**d
    nnz = lu_nonzeros(unknowns, d)
    one = LU_BYTES * nnz + _matrix_bytes(unknowns, d)
    work = (LU_PEAK_BYTES[d] - LU_BYTES) * nnz + 2 * _matrix_bytes(unknowns, d)
    if problem.constant_coefficients:  # one factorisation per box size
        return _cap(one * k**d), _cap(work)
    # variable coefficients: one per box, for the regular and each shifted set
    boxes = (1 + len(offsets)) * (nc + 1) ** d
    return _cap(one * boxes), _cap(work)


def _submesh_bytes(cfg, layout, problem, actors: int) -> tuple[int, int]:
    """``(solvers, meshes)``: bytes of the sub-mesh solvers and solve temporaries the
    busiest worker holds (sub-meshes go to workers largest first, each to the least
    loaded, as :class:`~tilegraph.pipelines.domain_split.solver.BlockDriver` does), and of
    all sub-mesh arrays together."""
    total = 0
    load, held, peak = [0] * actors, [0] * actors, [0] * actors
    for S in sorted(layout.subsets, key=lambda S: -math.prod(layout.mesh_shape(S))):
        shape = layout.mesh_shape(S)
        nodes = math.prod(shape)
        total += F8 * nodes
        a = load.index(min(load))
        load[a] += nodes
        kept, transient = _submesh_solver(cfg, layout, problem, S)
        held[a] += kept + 4 * F8 * nodes
        peak[a] = max(peak[a], transient)  # one set-up at a time per worker
    return max(h + p for h, p in zip(held, peak, strict=True)), total


def _submesh_solver(cfg, layout, problem, S) -> tuple[int, int]:
    """``(kept, transient)`` bytes of the solver of sub-mesh ``S``: what is kept between
    solves, and what its set-up needs on top while it runs."""
    d, nc = cfg.d, cfg.n_coarse
    sizes = [n - 2 for n in layout.mesh_shape(S)]
    h = [1.0 / _float(nc if k in S else cfg.n_fine) for k in range(d)]
    if cfg.submesh in ("auto", "fd") and _fd_applies(problem, cfg.scheme, sizes, h):
        return _fd_bytes(sizes), _fd_build_bytes(sizes)
    unknowns = math.prod(max(n, 0) for n in sizes)
    auto_amg = cfg.submesh == "auto" and d == 3 and unknowns > 20_000
    if cfg.submesh in ("amg", "amg-lean") or auto_amg:
        # the matrix, the AMG hierarchy (tasks/domain_split/amg.py: coarse operators, P,
        # R a view) and BiCGStab's vectors, plus the set-up's transients, in matrices,
        # measured with tracemalloc on the 26 x 601 x 601 plane of 600^3 (dataset
        # coefficients): classical 3.08 kept, 3.52 during set-up; lean 1.94 and 1.66
        lean = cfg.submesh == "amg-lean" or (auto_amg and cfg.out_of_core)
        kept, setup = (30, 17) if lean else (41, 36)
        mat = _matrix_bytes(unknowns, d)
        return _cap(kept * mat // 10 + 4 * F8 * unknowns), _cap(setup * mat // 10)
    # SuperLU: a sub-mesh is thin along its coarse axes; the fill of the grid of its
    # fine axes, times the nodes across the coarse ones squared (at most a full grid's)
    fine = [n for k, n in enumerate(sizes) if k not in S]
    across = max(1, math.prod(max(n, 1) for k, n in enumerate(sizes) if k in S))
    per_slab = lu_nonzeros(math.prod(fine), len(fine)) if fine else 1
    nnz = min(per_slab * across * across, lu_nonzeros(unknowns, d))
    kept = LU_BYTES * nnz + 2 * _matrix_bytes(unknowns, d)
    return _cap(kept), _cap((LU_PEAK_BYTES[d] - LU_BYTES) * nnz + _matrix_bytes(unknowns, d))


def _direct_bytes(cfg) -> int:
    """Peak of ``direct_solution`` and the comparison after it (driver)."""
    d = cfg.d
    nodes = (cfg.n_fine + 1) ** d
    unknowns = (cfg.n_fine - 1) ** d
    vec = F8 * nodes
    A = _matrix_bytes(unknowns, d)
    nnz = lu_nonzeros(unknowns, d)
    assemble = 2 * vec + 5 * _matrix_bytes(nodes, d)  # B, the mask; the sums of terms
    factor = 2 * vec + A + LU_PEAK_BYTES[d] * nnz
    solve = 6 * vec + A + LU_BYTES * nnz  # the factors, B, U, the right-hand side
    compare = 6 * vec  # U, Ud, ue and their differences
    return _cap(max(assemble, factor, solve, compare))


#: FGMRES steps an in-memory run's basis keeps at least, where the workers' memory is
#: short (the benchmark's problems converged in 2-5 at tol=1e-8)
BASIS_FLOOR = 8


def work_vectors(cfg, offsets) -> tuple[int, int]:
    """``(all, written to Zarr)`` fine-grid scratch vectors of the solver."""
    between = 0
    if cfg.smoother:
        between = min(2, max(len(offsets) - 1, 0))  # s0, s1
    if cfg.solver == "krylov":
        m = min(cfg.restart, cfg.max_iter)
        vectors = 4 + (m + 1) + m + 3 + between  # B, x0-x2, V, Z, w z r, s0 s1
    else:
        vectors = 4 + 2 + 2 + between  # B, x0-x2, res, e, z r, s0 s1
    # in memory, only the solution buffers x0-x2 (what a resume reads) go to Zarr
    written = vectors if cfg.out_of_core else 3
    return vectors, written


def estimate(cfg, workers: int) -> Estimate:
    """Peak memory of the driver and of one worker, and the store size, of a run.

    Parameters
    ----------
    cfg : DomainSplitConfig
    workers : int
        Workers the blocks are shared out over (at least 1).

    Returns
    -------
    Estimate
        Bytes of array memory (the driver's includes the SciPy reference with
        ``direct_reference``); ``field`` is ``n_fine``, ``alternative`` names
        ``out_of_core=true`` (and ``direct_reference=false``) or more workers.
    """
    from tilegraph.tasks.domain_split.holes import shift_offsets

    from .worker import layout_for

    d, N = cfg.d, cfg.n_fine + 1
    problem = cfg.to_problem()
    layout = layout_for(d, cfg.n_fine, cfg.n_coarse, cfg.boxes_per_block)
    offsets = shift_offsets(layout, cfg.shifts) if cfg.smoother else []
    vec = F8 * N**d

    # -- one worker ----------------------------------------------------------------
    n_blocks = layout.blocks_per_axis**d
    actors = max(1, min(int(workers), n_blocks))
    mine = -(-n_blocks // actors)  # blocks per worker, of n_blocks
    block = F8 * min(layout.chunks[0] + 1, N) ** d
    # the shifted boxes a block's smoothing pass reads reach one box beyond it
    region = F8 * min(layout.chunks[0] + layout.stride + 3, N + 2) ** d
    vectors, written = work_vectors(cfg, offsets)
    if cfg.out_of_core:
        kept = 0
        m = min(cfg.restart, cfg.max_iter) if cfg.solver == "krylov" else 1
        passes = (m + 2) * block + PASS_TEMPS * region
    else:
        kept = vec * vectors * mine // n_blocks
        # the stencil's 2 d + 1 coefficient arrays on each block reaching one box beyond
        reach = min(layout.chunks[0] + 2 * layout.stride + 5, N)
        kept += mine * (2 * d + 1) * F8 * reach**d
        passes = PASS_TEMPS * region
    # the halos of one pass (of two vectors): one side of an interface between two
    # workers' runs of blocks is a face of the grid a box (and two nodes) deep
    side = F8 * min(layout.stride + 2, N) * N ** (d - 1)
    halos = 0 if cfg.out_of_core or actors < 2 else 2 * 2 * side  # (two sides)
    passes += halos
    boxes, box_build = _box_solver_bytes(cfg, layout, problem, offsets)
    subs, sub_total = _submesh_bytes(cfg, layout, problem, actors)
    # its blocks' restriction parts (they overlap: about twice their share of the
    # sub-meshes) and corrected sub-mesh pieces; the restriction matrix
    parts = 3 * sub_total * mine // n_blocks + F8 * (cfg.n_coarse + 1) * N
    worker = _cap(kept + passes + boxes + box_build + subs + parts)
    # in memory, FGMRES's basis shrinks to what the workers' memory holds (the runner's
    # `basis_that_fits`), down to BASIS_FLOOR steps of two vectors
    m = min(cfg.restart, cfg.max_iter)
    floor = None
    if cfg.solver == "krylov" and not cfg.out_of_core and m > BASIS_FLOOR:
        spare = vec * 2 * (m - BASIS_FLOOR) * mine // n_blocks
        floor = _cap(kept - spare + passes + boxes + box_build + subs + parts)

    # -- the driver ----------------------------------------------------------------
    # every block's restriction parts (about twice the sub-meshes), the right-hand
    # sides, solutions and corrected solutions, the spline matrix
    driver = 6 * sub_total + F8 * N * (cfg.n_coarse + 1)
    driver += halos * (actors - 1)  # every interface's, both sides
    if cfg.direct_reference:
        driver += _direct_bytes(cfg)
    driver = _cap(driver)

    # -- the store -----------------------------------------------------------------
    # work vectors are stored block-padded (one whole chunk per block); Zarr writes
    # the results' upper-boundary one-node chunks as whole ones
    c = layout.chunks[0]
    padded = F8 * math.prod(layout.padded_shape)
    stored = F8 * (-(-N // c) * c) ** d
    store = _cap(padded * written + stored * 3 + F8 * d * N)

    alternative = "more workers"
    if cfg.direct_reference:
        alternative = "set direct_reference=false (the SciPy reference solve) and out_of_core=true"
    elif not cfg.out_of_core:
        alternative = "set out_of_core=true, or use more workers"
        if floor is not None:
            alternative = (
                f"set restart below {BASIS_FLOOR}, or out_of_core=true, or use more workers"
            )
    return Estimate(driver, worker, store, "n_fine", alternative, worker_floor_bytes=floor)


__all__ = ["BASIS_FLOOR", "estimate", "lu_nonzeros", "work_vectors"]
