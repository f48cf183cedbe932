"""Kernels of the two-level solver against independent references: closed forms,
assembled sparse matrices and SciPy's direct solver."""

import itertools

import numpy as np
import pytest
from scipy.sparse.linalg import spsolve
from tilegraph.tasks.domain_split.amg import classical_hierarchy
from tilegraph.tasks.domain_split.combine import (
    SubmeshSolver,
    correct,
    merge,
    restrict,
    restriction_matrix,
    skeleton,
    spline_matrix,
)
from tilegraph.tasks.domain_split.grid import GridLayout, halo_plan, merge_weights
from tilegraph.tasks.domain_split.holes import (
    BoxSolver,
    box_lattice,
    fill_block,
    lattices,
    shift_offsets,
    shifted_cuts,
    smooth_block,
    smooth_region,
)
from tilegraph.tasks.domain_split.operator import apply_stencil, assemble, fine_axes, rhs_block
from tilegraph.tasks.domain_split.problems import OnBox, Problem

CONST = Problem("constant", 2, (1.0, 1.0), (2.0, 1.0))
VAR = Problem("variable", 2)


def direct(problem, n, scheme="central"):
    d = problem.d
    B = rhs_block(problem, (0,) * d, (n + 1,) * d, n)
    A_ii, A_ib, interior = assemble(problem, fine_axes(n, d), scheme)
    U = np.array(B, dtype=float)
    U[interior] = spsolve(A_ii.tocsr(), B[interior] - A_ib @ B[~interior])
    return U


def exact(problem, n):
    d = problem.d
    axes = np.meshgrid(*fine_axes(n, d), indexing="ij", sparse=True)
    return np.broadcast_to(problem.exact(tuple(axes)), (n + 1,) * d)


@pytest.mark.parametrize("problem", [CONST, VAR], ids=["constant", "variable"])
def test_second_order_convergence(problem):
    ns = [25, 50, 100, 200]
    errs = [np.abs(direct(problem, n) - exact(problem, n)).max() for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - 2.0) <= 0.1, (slope, errs)


def test_one_dimensional_closed_form_and_oscillation():
    eps, b = 0.05, 1.0
    p = Problem("boundary-layer", 1, (eps,), (b,), eps)
    errs = []
    for n in (40, 80, 160):
        errs.append(np.abs(direct(p, n) - exact(p, n)).max())
    slope = -np.polyfit(np.log([40, 80, 160]), np.log(errs), 1)[0]
    assert slope > 1.8
    # cell Peclet b h / (2 eps) = 2.5 > 1: central differences oscillate, upwind does not
    p = Problem("boundary-layer", 1, (0.01,), (1.0,), 0.01)
    n = 20
    u_c, u_u = direct(p, n, "central"), direct(p, n, "upwind")
    assert np.any(np.diff(u_c) < -1e-3)
    assert np.all(np.diff(u_u) >= -1e-12)
    assert p.max_cell_peclet(1.0 / n) == pytest.approx(2.5)


@pytest.mark.parametrize("scheme", ["central", "upwind"])
@pytest.mark.parametrize(
    "problem", [VAR, Problem("constant", 3, (1.0, 2.0, 3.0), (1.0, -2.0, 3.0))]
)
def test_stencil_matches_assembled_matrix(problem, scheme):
    n = 12
    d = problem.d
    A_ii, A_ib, interior = assemble(problem, fine_axes(n, d), scheme)
    u = np.random.default_rng(1).standard_normal((n + 1,) * d)
    ref = u.copy()
    ref[interior] = A_ii @ u[interior] + A_ib @ u[~interior]
    got = apply_stencil(problem, np.pad(u, 1), (0,) * d, n, scheme)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)
    # a block with a halo gives the same rows as the whole grid
    blk = (slice(3, 9),) * d
    halo = (slice(2, 10),) * d
    np.testing.assert_allclose(
        apply_stencil(problem, u[halo], (3,) * d, n, scheme), got[blk], rtol=1e-12, atol=1e-9
    )


def test_stencil_is_array_api_generic():
    xps = pytest.importorskip("array_api_strict")
    u = np.random.default_rng(2).standard_normal((11, 11))
    ref = apply_stencil(VAR, np.pad(u, 1), (0, 0), 10)
    got = apply_stencil(VAR, xps.asarray(np.pad(u, 1)), (0, 0), 10)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-13)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("rule", ["richardson", "combination"])
def test_merge_weights_cancel_the_h2_terms(d, rule):
    lay = GridLayout(d, 40, 5)
    w = merge_weights(lay, rule)
    assert sum(w.values()) == pytest.approx(1.0)
    hf, hc = lay.h_fine**2, lay.h_coarse**2
    target = 0.0 if rule == "richardson" else hf
    for k in range(d):  # coefficient of C_k in sum_S c_S h_k(S)^2
        coeff = sum(c * (hc if k in S else hf) for S, c in w.items())
        assert coeff == pytest.approx(target, abs=1e-15)


def test_spline_interpolates_and_reproduces_cubics():
    P = spline_matrix(6, 24)
    xc, xf = np.linspace(0, 1, 7), np.linspace(0, 1, 25)
    np.testing.assert_array_equal(P[::4], np.eye(7))
    cubic = lambda x: 1 - 2 * x + 3 * x**2 - 5 * x**3  # noqa: E731
    np.testing.assert_allclose(P @ cubic(xc), cubic(xf), atol=1e-12)


def test_restriction_conserves_a_line_source():
    R = restriction_matrix(5, 20)
    v = np.zeros(21)
    v[8] = 1.0  # a source between coarse nodes 1 (i=4) and 2 (i=8)
    r = R @ v
    assert r.sum() == pytest.approx(1.0 / 4)  # integral of a unit source, h_f / h_c
    assert np.allclose(R[1:-1].sum(axis=1), 1.0)  # smooth functions are kept


def test_restrict_parts_add_up_to_whole_grid_restriction():
    lay = GridLayout(2, 24, 4, boxes_per_block=1)
    R = restriction_matrix(4, 24)
    v = np.random.default_rng(3).standard_normal(lay.shape)
    whole = restrict(lay, v, (0, 0), R)
    for S in lay.subsets:
        acc = np.zeros(lay.mesh_shape(S))
        for b in lay.blocks:
            mesh, part = restrict(lay, v[b.region], b.start, R)[S]
            acc[mesh] += part
        np.testing.assert_allclose(acc, whole[S][1], atol=1e-13)


def test_skeleton_is_single_valued_at_coarse_nodes():
    lay = GridLayout(3, 12, 3)
    rng = np.random.default_rng(4)
    w = {S: rng.standard_normal(lay.mesh_shape(S)) for S in lay.subsets}
    M = merge(lay, w, merge_weights(lay))
    wc = {S: correct(lay, S, w[S], M, spline_matrix(3, 12)) for S in lay.subsets}
    for S in lay.subsets:
        np.testing.assert_allclose(wc[S][lay.coarse_view(S)], M, atol=1e-12)
    z = skeleton(lay, wc, (0, 0, 0), lay.shape)
    np.testing.assert_allclose(z[::4, ::4, ::4], M, atol=1e-12)
    # planes carry their own sub-mesh: z on plane x = 1/3 (S = (0,)) away from lines
    np.testing.assert_allclose(z[4, 1:4, 1:4], wc[(0,)][1, 1:4, 1:4])


def test_box_solves_are_exact_dirichlet_solves():
    lay = GridLayout(2, 20, 4, boxes_per_block=4)
    boxes = BoxSolver(VAR, lay)
    rng = np.random.default_rng(5)
    z = rng.standard_normal(lay.shape)
    v = rng.standard_normal(lay.shape)
    filled = boxes.solve_boxes(z.copy(), v, (0, 0), [box_lattice((5, 10), (10, 15))])
    # the box interior satisfies L z = v with the untouched boundary as data
    Lz = apply_stencil(VAR, np.pad(filled, 1), (0, 0), 20)
    np.testing.assert_allclose(Lz[6:10, 11:15], v[6:10, 11:15], atol=1e-9)
    np.testing.assert_array_equal(filled[5, :], z[5, :])


@pytest.mark.parametrize("d", [2, 3])
def test_batched_variable_box_solves_are_exact_dirichlet_solves(d):
    """All boxes of a region in one block-diagonal LU: every interior satisfies
    ``L z = v`` with its own boundary as data (the stencil, applied independently), and
    nothing else changes; a non-contiguous region gets its values too."""
    n = 12 if d == 2 else 8
    lay = GridLayout(d, n, 4 if d == 2 else 2, boxes_per_block=4)
    problem = Problem("variable", d)
    boxes = BoxSolver(problem, lay)
    rng = np.random.default_rng(9)
    z = rng.standard_normal(lay.shape)
    v = rng.standard_normal(lay.shape)
    s = lay.stride
    cuts = [list(range(0, n + 1, s))] * d
    lats = lattices(cuts)
    ranges = [box for lat in lats for box in lat.boxes()]
    big = np.zeros(tuple(2 * m for m in lay.shape))[(slice(None, None, 2),) * d]
    big[...] = z  # a strided view: reshape(-1) copies
    for target in (z.copy(), big):
        filled = boxes.solve_boxes(target, v, (0,) * d, lats)
        Lz = apply_stencil(problem, np.pad(filled, 1), (0,) * d, n)
        inner = np.zeros(lay.shape, dtype=bool)
        for lo, hi in ranges:
            inner[tuple(slice(a + 1, b) for a, b in zip(lo, hi, strict=True))] = True
        np.testing.assert_allclose(Lz[inner], v[inner], atol=1e-9)
        np.testing.assert_array_equal(filled[~inner], z[~inner])


def _two_level(problem, lay, v):
    sub, boxes = SubmeshSolver(problem, lay), BoxSolver(problem, lay)
    R, P = restriction_matrix(lay.n_coarse, lay.n_fine), spline_matrix(lay.n_coarse, lay.n_fine)
    parts = restrict(lay, v, (0,) * lay.d, R)
    w = {S: sub.solve(S, parts[S][1]) for S in lay.subsets}
    M = merge(lay, w, merge_weights(lay))
    wc = {S: correct(lay, S, w[S], M, P) for S in lay.subsets}
    return fill_block(lay, boxes, wc, v, lay.blocks[0])


@pytest.mark.parametrize("problem", [CONST, VAR], ids=["constant", "variable"])
def test_first_guess_is_close_to_the_fine_solution(problem):
    n, nc = 100, 5
    lay = GridLayout(2, n, nc, boxes_per_block=nc)
    B = rhs_block(problem, (0, 0), lay.shape, n)
    U = _two_level(problem, lay, B)
    Ud = direct(problem, n)
    assert np.linalg.norm(U - Ud) / np.linalg.norm(Ud) < 2e-3
    # boundary data are reproduced exactly, box interiors satisfy the PDE
    np.testing.assert_allclose(U[0], Ud[0], atol=1e-14)
    r = B - apply_stencil(problem, np.pad(U, 1), (0, 0), n)
    inside = np.ones(lay.shape, bool)
    for k in range(2):
        idx = [slice(None)] * 2
        idx[k] = slice(None, None, lay.stride)
        inside[tuple(idx)] = False
    assert np.abs(r[inside]).max() < 1e-8 * np.abs(B).max()


def test_smoother_blocks_agree_with_whole_grid():
    lay1 = GridLayout(2, 24, 4, boxes_per_block=4)
    lay4 = GridLayout(2, 24, 4, boxes_per_block=2)
    v = np.random.default_rng(6).standard_normal(lay1.shape)
    whole = smooth_block(lay1, BoxSolver(VAR, lay1), v, lay1.blocks[0])[1:-1, 1:-1]
    bs = BoxSolver(VAR, lay4)
    for b in lay4.blocks:
        start, stop, _ = smooth_region(lay4, b)
        part = smooth_block(lay4, bs, v[tuple(map(slice, start, stop))], b)[1:-1, 1:-1]
        np.testing.assert_allclose(part, whole[b.region], atol=1e-12)


def test_shift_offsets_spread_over_a_coarse_interval():
    assert shift_offsets(GridLayout(2, 32, 4), 3) == [2, 4, 6]
    assert shift_offsets(GridLayout(2, 32, 4), 1) == [4]
    assert shift_offsets(GridLayout(2, 8, 4), 3) == [1]  # stride 2: one distinct shift
    assert shifted_cuts(GridLayout(2, 32, 4), 2) == [0, 2, 10, 18, 26, 32]


def test_smoother_blocks_agree_with_whole_grid_for_every_shift():
    lay1 = GridLayout(2, 32, 4, boxes_per_block=4)
    lay4 = GridLayout(2, 32, 4, boxes_per_block=2)
    v = np.random.default_rng(7).standard_normal(lay1.shape)
    for shift in shift_offsets(lay1, 3):
        whole = smooth_block(lay1, BoxSolver(VAR, lay1), v, lay1.blocks[0], shift)
        bs = BoxSolver(VAR, lay4)
        for b in lay4.blocks:
            start, stop, _ = smooth_region(lay4, b, shift)
            part = smooth_block(lay4, bs, v[tuple(map(slice, start, stop))], b, shift)
            np.testing.assert_allclose(part[1:-1, 1:-1], whole[1:-1, 1:-1][b.region], atol=1e-12)


@pytest.mark.parametrize("method", ["amg", "amg-lean", "fd"])
def test_submesh_solve_matches_superlu(method):
    problem = Problem("constant", 3, (1.0, 2.0, 3.0), (1.0, 0.5, 0.25))
    lay = GridLayout(3, 40, 4)
    S = (0,)  # a plane sub-mesh: 3 x 39 x 39 unknowns
    v = np.random.default_rng(8).standard_normal(lay.mesh_shape(S))
    direct = SubmeshSolver(problem, lay, method="direct").solve(S, v)
    other = SubmeshSolver(problem, lay, method=method, tol=1e-10)
    assert other.method_for(S) == method
    got = other.solve(S, v)
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-8 * np.abs(direct).max())
    np.testing.assert_array_equal(got[0], v[0])  # Dirichlet data kept


def test_submesh_auto_method():
    const = Problem("constant", 3, (1.0, 2.0, 3.0), (1.0, 0.5, 0.25))
    var = Problem("variable", 3)
    assert SubmeshSolver(const, GridLayout(3, 40, 4)).method_for((0,)) == "fd"
    assert SubmeshSolver(var, GridLayout(3, 40, 4)).method_for((0,)) == "direct"  # 4563 unknowns
    assert SubmeshSolver(var, GridLayout(3, 160, 4)).method_for((0,)) == "amg"
    assert SubmeshSolver(var, GridLayout(3, 160, 4), lean=True).method_for((0,)) == "amg-lean"
    assert SubmeshSolver(const, GridLayout(3, 160, 4), lean=True).method_for((0,)) == "fd"
    with pytest.raises(ValueError, match="constant coefficients"):
        SubmeshSolver(var, GridLayout(3, 40, 4), method="fd").method_for((0,))


@pytest.mark.parametrize("problem", [CONST, Problem("boundary-layer", 2, (1, 1), (1.0, 1.0), 0.1)])
def test_separable_box_solves_match_sparse_lu(problem):
    lay = GridLayout(2, 24, 4)
    rng = np.random.default_rng(9)
    z, v = rng.standard_normal(lay.shape), rng.standard_normal(lay.shape)
    boxes = [((0, 6), (6, 12)), ((6, 6), (12, 12)), ((12, 0), (18, 6))]
    fd = BoxSolver(problem, lay)
    assert fd.separable((6, 6)) is not None
    got = fd.solve_boxes(z.copy(), v, (0, 0), [box_lattice(*b) for b in boxes])
    # the same boxes by sparse LU: variable-coefficient path forced through system()
    lu = BoxSolver(problem, lay)
    lu.separable = lambda sizes: None
    want = lu.solve_boxes(z.copy(), v, (0, 0), [box_lattice(*b) for b in boxes])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_layout_blocks_cover_the_grid_once():
    lay = GridLayout(3, 30, 5, boxes_per_block=2)
    seen = np.zeros(lay.shape, int)
    for b in lay.blocks:
        seen[b.region] += 1
        for k in range(3):  # whole chunks: starts on chunk boundaries
            assert b.start[k] % lay.chunks[k] == 0
    assert (seen == 1).all()
    assert sorted(
        itertools.chain.from_iterable(b.boxes[0] for b in lay.blocks if b.index[1:] == (0, 0))
    ) == list(range(5))


# --- the vectorised assembly against the Kronecker-sum form it replaced -------------
import scipy.sparse as sp  # noqa: E402


def _ref_diff_1d(n: int, h: float, scheme: str):
    """1-D second- and first-difference matrices on ``n`` nodes (rows at the two end
    nodes are zero; they are never used)."""
    main = np.full(n, 2.0 / h**2)
    off = np.full(n - 1, -1.0 / h**2)
    d2 = sp.diags([off, main, off], [-1, 0, 1], shape=(n, n), format="lil")
    if scheme == "central":
        up = np.full(n - 1, 0.5 / h)
        d1 = [sp.diags([-up, up], [-1, 1], shape=(n, n), format="lil")]
    else:
        one = np.full(n - 1, 1.0 / h)
        back = sp.diags([-one, np.full(n, 1.0 / h)], [-1, 0], shape=(n, n), format="lil")
        fwd = sp.diags([np.full(n, -1.0 / h), one], [0, 1], shape=(n, n), format="lil")
        d1 = [back, fwd]
    for m in [d2, *d1]:
        m[0, :] = 0.0
        m[n - 1, :] = 0.0
    return d2.tocsr(), [m.tocsr() for m in d1]


def _ref_kron_axis(mat, k: int, sizes):
    out = None
    for j, n in enumerate(sizes):
        f = mat if j == k else sp.identity(n, format="csr")
        out = f if out is None else sp.kron(out, f, format="csr")
    return out


def _reference_assemble(problem, axes, scheme="central"):
    """``L`` as a sum of Kronecker products per axis (tilegraph's assembly until the
    vectorised one replaced it)."""
    sizes = [len(a) for a in axes]
    coords = tuple(np.meshgrid(*axes, indexing="ij", sparse=True))
    n = int(np.prod(sizes))
    L = sp.csr_matrix((n, n))
    L = sp.csr_matrix((n, n))
    for k, a in enumerate(axes):
        h = float(a[1] - a[0])
        d2, d1 = _ref_diff_1d(len(a), h, scheme)
        alpha = np.broadcast_to(problem.alpha_k(k, coords), sizes).ravel()
        beta = np.broadcast_to(problem.beta_k(k, coords), sizes).ravel()
        L = L + sp.diags(alpha) @ _ref_kron_axis(d2, k, sizes)
        if scheme == "central":
            L = L + sp.diags(beta) @ _ref_kron_axis(d1[0], k, sizes)
        else:
            L = L + sp.diags(np.maximum(beta, 0.0)) @ _ref_kron_axis(d1[0], k, sizes)
            L = L + sp.diags(np.minimum(beta, 0.0)) @ _ref_kron_axis(d1[1], k, sizes)
    interior = np.ones(sizes, dtype=bool)
    for k in range(len(sizes)):
        idx = [slice(None)] * len(sizes)
        idx[k] = 0
        interior[tuple(idx)] = False
        idx[k] = -1
        interior[tuple(idx)] = False
    flat = interior.ravel()
    rows = L[np.flatnonzero(flat)]
    return rows[:, flat].tocsc(), rows[:, ~flat].tocsr(), interior


@pytest.mark.parametrize("scheme", ["central", "upwind"])
@pytest.mark.parametrize(
    "problem",
    [
        Problem("constant", 2, (1.0, 2.0), (3.0, -1.0)),
        Problem("variable", 2),
        Problem("variable", 3),
        Problem("boundary-layer", 3, beta=(1.0, -0.5, 0.25), eps=0.05),
        OnBox(Problem("variable", 2), ((0.0, 2.0), (-1.0, 1.0))),
    ],
    ids=["constant", "variable-2d", "variable-3d", "layer-3d", "box"],
)
def test_vectorised_assembly_has_the_bits_of_the_kronecker_form(problem, scheme):
    axes = [np.linspace(0.1, 0.1 + 0.05 * (m - 1), m) for m in (9, 7, 6)[: problem.d]]
    ref = _reference_assemble(problem, axes, scheme)
    ref[1].sort_indices()  # the same entries; the old column selection left rows unsorted
    # the default (one slab here), one plane of axis 0 per slab, and two planes
    for slab in (None, 1, 2 * 7 * 6):
        got = (
            assemble(problem, axes, scheme)
            if slab is None
            else assemble(problem, axes, scheme, slab_nodes=slab)
        )
        np.testing.assert_array_equal(got[2], ref[2])
        for a, b in zip(got[:2], ref[:2], strict=True):
            assert a.format == b.format and a.shape == b.shape
            for attr in ("indptr", "indices", "data"):
                np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("scheme", ["central", "upwind"])
def test_frozen_stack_equals_one_solver_per_box(scheme, compact):
    """Boxes of one shape with different frozen coefficients, solved together through the
    shared sine basis, give what each box's own eigendecomposition (``eigh``) gives; a
    box whose advection is too strong for fast diagonalisation is left out."""
    from tilegraph.tasks.domain_split.separable import FrozenStack, SeparableSolver

    rng = np.random.default_rng(3)
    sizes, h = [5, 4, 3], 0.1
    alpha = rng.uniform(0.5, 2, (3, 5))
    beta = rng.uniform(-1, 1, (3, 5))
    beta[0, 2] = 40.0  # cell Peclet number 2 along x: off-diagonals of opposite sign
    stack, ok = FrozenStack.build(alpha, beta, sizes, h, scheme, compact=compact)
    assert ok.tolist() == ([True, True, scheme == "upwind", True, True])
    f = rng.standard_normal((5, *sizes))
    got = stack.solve(f[ok])
    for row, b in enumerate(np.flatnonzero(ok)):
        prob = Problem("constant", 3, tuple(alpha[:, b]), tuple(beta[:, b]))
        fd = SeparableSolver.build(prob, sizes, [h] * 3, scheme)
        np.testing.assert_allclose(got[row], fd.solve(f[b][None])[0], rtol=1e-11, atol=1e-13)


def test_lattices_group_equal_consecutive_boxes():
    lats = lattices([[0, 3, 11, 19, 24], [0, 4, 8]])
    assert [(lat.origin, lat.size, lat.count) for lat in lats] == [
        ((0, 0), (3, 4), (1, 2)),
        ((3, 0), (8, 4), (2, 2)),
        ((19, 0), (5, 4), (1, 2)),
    ]
    assert list(lats[1].boxes()) == [
        ((3, 0), (11, 4)),
        ((3, 4), (11, 8)),
        ((11, 0), (19, 4)),
        ((11, 4), (19, 8)),
    ]


@pytest.mark.parametrize("d", [2, 3])
def test_frozen_lattice_solves_are_each_box_frozen_at_its_centre(d):
    """Every box of shifted lattices (boxes of three sizes) solved through the shared
    sine basis equals a sparse direct solve of that box's operator with the
    coefficients frozen at its centre (assembled independently, box by box), with the
    true (variable) couplings to the box boundary on the right; box boundaries stay as
    they were."""
    from scipy.sparse.linalg import spsolve

    n = 24 if d == 2 else 12
    lay = GridLayout(d, n, 4 if d == 2 else 2, boxes_per_block=4)
    problem = Problem("variable", d)
    boxes = BoxSolver(problem, lay, frozen=True)
    rng = np.random.default_rng(2)
    z, v = rng.standard_normal(lay.shape), rng.standard_normal(lay.shape)
    cuts = [[0, 2, 2 + lay.stride, n - 1, n]] * d  # sizes 2, s, ..., 1 (no interior)
    lats = lattices(cuts)
    filled = boxes.solve_boxes(z.copy(), v, (0,) * d, lats)
    inner = np.zeros(lay.shape, dtype=bool)
    for lat in lats:
        for lo, hi in lat.boxes():
            sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
            if min(b - a for a, b in zip(lo, hi, strict=True)) < 2:
                continue
            mid = tuple(np.full(1, 0.5 * (a + b) / n) for a, b in zip(lo, hi, strict=True))
            frozen = Problem(
                "constant",
                d,
                tuple(float(problem.alpha_k(k, mid)[0]) for k in range(d)),
                tuple(float(problem.beta_k(k, mid)[0]) for k in range(d)),
            )
            axes = [np.arange(a, b + 1) / n for a, b in zip(lo, hi, strict=True)]
            A_ii, _, interior = assemble(frozen, axes)
            _, A_ib, _ = assemble(problem, axes)
            want = spsolve(A_ii.tocsc(), v[sl][interior] - A_ib @ z[sl][~interior])
            np.testing.assert_allclose(filled[sl][interior], want, rtol=1e-9, atol=1e-11)
            inner[tuple(slice(a + 1, b) for a, b in zip(lo, hi, strict=True))] = True
    assert inner.any()
    np.testing.assert_array_equal(filled[~inner], z[~inner])


@pytest.mark.parametrize("n_coarse", [12, 10])  # blocks of 4 boxes; the last one full or not
def test_padded_layout_holds_each_block_in_one_chunk(n_coarse):
    """A vector stored block-padded (each block at the start of its own chunk) reads back
    any node range, across blocks, as the plain vector."""
    lay = GridLayout(2, 2 * n_coarse, n_coarse, boxes_per_block=4)
    rng = np.random.default_rng(0)
    plain = rng.standard_normal(lay.shape)
    stored = np.full(lay.padded_shape, np.nan)
    for b in lay.blocks:
        chunk = lay.padded_block(b)
        assert all(s.stop - s.start == c for s, c in zip(chunk, lay.padded_chunks, strict=True))
        stored[chunk][tuple(slice(0, m) for m in b.shape)] = plain[b.region]
    n = lay.n_fine + 1
    for lo, hi in [(0, n), (3, 9), (7, 8), (8, 9), (5, 20), (n - 2, n), (16, n)]:
        sl, take = lay.padded_range(lo, hi)
        for col in (0, n - 1):  # along axis 0, in the first and the last block of axis 1
            cs, ct = lay.padded_range(col, col + 1)
            got = stored[sl, cs][:, 0] if ct is None else stored[sl, cs][:, ct[0]]
            got = got if take is None else got[take]
            np.testing.assert_array_equal(got, plain[lo:hi, col])


def test_defect_correction_brings_frozen_boxes_to_the_exact_solve():
    """Each correction step shrinks the error of the frozen box solves against the exact
    (sparse LU) Dirichlet solves of the variable-coefficient boxes, by at least 5x."""
    lay = GridLayout(2, 32, 4, boxes_per_block=4)
    problem = Problem("variable", 2)
    rng = np.random.default_rng(4)
    z, v = rng.standard_normal(lay.shape), rng.standard_normal(lay.shape)
    lats = lattices([[0, 8, 16, 24, 32]] * 2)
    exact = BoxSolver(problem, lay).solve_boxes(z.copy(), v, (0, 0), lats)
    errors = []
    for k in range(3):
        boxes = BoxSolver(problem, lay, frozen=True, corrections=k)
        got = boxes.solve_boxes(z.copy(), v, (0, 0), lats)
        errors.append(np.abs(got - exact).max() / np.abs(exact).max())
    assert errors[0] > 1e-3  # frozen coefficients are an approximation here
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5, errors


def test_zero_data_skips_the_couplings_and_the_smoother_takes_no_correction():
    """With ``z = 0`` the couplings to the box boundaries vanish: ``zero=True`` (which
    does not compute them) gives the same bits; the smoother's sweeps are the frozen
    solve without defect correction, whatever the solver's ``corrections``."""
    lay = GridLayout(2, 32, 4, boxes_per_block=4)
    problem = Problem("variable", 2)
    v = np.random.default_rng(5).standard_normal(lay.shape)
    lats = lattices([[0, 8, 16, 24, 32]] * 2)
    full = {}
    for k in (0, 2):
        boxes = BoxSolver(problem, lay, frozen=True, corrections=k)
        full[k] = boxes.solve_boxes(np.zeros(lay.shape), v, (0, 0), lats)
        skip = boxes.solve_boxes(np.zeros(lay.shape), v, (0, 0), lats, zero=True)
        np.testing.assert_array_equal(skip, full[k])
    plain = BoxSolver(problem, lay, frozen=True, corrections=0)
    corrected = BoxSolver(problem, lay, frozen=True, corrections=2)
    b = lay.blocks[0]
    start, stop, _ = smooth_region(lay, b)
    v_reg = v[tuple(map(slice, start, stop))]
    np.testing.assert_array_equal(
        smooth_block(lay, corrected, v_reg, b), smooth_block(lay, plain, v_reg, b)
    )
    assert np.abs(full[2] - full[0]).max() > 1e-6  # corrections do change a hole solve


@pytest.mark.parametrize("start", [(0, 0, 0), (4, 0, 9), (3, 5, 2)])
def test_rhs_block_is_f_inside_and_g_on_the_boundary(start):
    problem = Problem("variable", 3)
    n, shape = 12, (9, 6, 4)
    got = rhs_block(problem, start, shape, n)
    idx = [np.arange(a, a + m) for a, m in zip(start, shape, strict=True)]
    X = np.meshgrid(*[i / n for i in idx], indexing="ij")
    edge = np.zeros(shape, dtype=bool)
    for k, i in enumerate(idx):
        edge |= np.reshape((i == 0) | (i == n), [-1 if j == k else 1 for j in range(3)])
    want = np.where(edge, problem.boundary(tuple(X)), problem.rhs(tuple(X)))
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


def _plane_matrix(n_fine=96, n_coarse=4):
    lay = GridLayout(3, n_fine, n_coarse)
    A, _, _ = assemble(Problem("variable", 3), lay.mesh_axes((0,)), "central", fmt="csr")
    return A


def _bytes(M):
    return sum(a.nbytes for a in (M.data, M.indices, M.indptr))


def test_classical_hierarchy_is_pyamgs_with_restrictions_as_views():
    import pyamg

    A = _plane_matrix()
    ours, theirs = classical_hierarchy(A), pyamg.ruge_stuben_solver(A)
    assert len(ours.levels) == len(theirs.levels)
    for a, b in zip(ours.levels, theirs.levels, strict=True):
        assert a.A.shape == b.A.shape and abs(a.A - b.A).max() <= 1e-12 * abs(b.A).max()
    for lv in ours.levels[:-1]:
        # one forward sweep before the coarse correction, one backward sweep after
        assert "sweep='forward'" in repr(lv.presmoother)
        assert "sweep='backward'" in repr(lv.postsmoother)
        assert np.shares_memory(lv.R.data, lv.P.data)  # no second copy of P
        assert abs(lv.R - lv.P.T).max() == 0
    b = np.random.default_rng(3).standard_normal(A.shape[0])
    x = ours.solve(b, tol=1e-10, accel="bicgstab", maxiter=100)
    np.testing.assert_allclose(x, spsolve(A.tocsc(), b), rtol=0, atol=1e-8 * np.abs(x).max())


def test_lean_hierarchy_keeps_less_and_still_solves():
    A = _plane_matrix()
    kept = {}
    for kind in ("classical", "lean"):
        ml = classical_hierarchy(A, kind)
        kept[kind] = sum(_bytes(lv.A) for lv in ml.levels) + sum(
            _bytes(lv.P) for lv in ml.levels[:-1]
        )
        b = np.random.default_rng(4).standard_normal(A.shape[0])
        x = ml.solve(b, tol=1e-10, accel="bicgstab", maxiter=200)
        np.testing.assert_allclose(x, spsolve(A.tocsc(), b), rtol=0, atol=1e-8 * np.abs(x).max())
    assert kept["lean"] < 0.8 * kept["classical"]
    with pytest.raises(ValueError, match="kind must be one of"):
        classical_hierarchy(A, "smoothed")


@pytest.mark.parametrize(
    "d, n_fine, n_coarse, per_block, workers, contiguous",
    [
        (2, 24, 6, 1, 2, False),
        (2, 24, 6, 2, 3, False),
        (3, 12, 4, 1, 2, False),
        (2, 20, 5, 2, 2, True),
        (2, 48, 12, 3, 2, False),
        (3, 24, 6, 2, 3, True),
    ],
)
def test_halo_plan_sends_what_each_block_reads_of_other_workers(
    d, n_fine, n_coarse, per_block, workers, contiguous
):
    """Against the node grid: every box a block's smoother pass or stencil reads of a
    block of another worker lies inside one box that block sends (the worker then
    takes it from one piece), what is sent lies in the sending block, nothing goes to
    the worker holding it, and a block read from both sides sends two faces, not
    itself whole (in volume: at most what the reading blocks read of it)."""
    lay = GridLayout(d, n_fine, n_coarse, per_block)
    n, nb = n_fine + 1, len(lay.blocks)
    if contiguous:
        groups = [list(map(int, ids)) for ids in np.array_split(range(nb), workers)]
    else:
        groups = [list(range(a, nb, workers)) for a in range(workers)]
    group_of = {j: g for g, ids in enumerate(groups) for j in ids}
    owner = np.zeros((n,) * d, dtype=int)
    for j, b in enumerate(lay.blocks):
        owner[b.region] = j
    for shift in [None, *shift_offsets(lay, 3)]:
        reads = []
        for b in lay.blocks:
            start, stop = (b.start, b.stop) if shift is None else smooth_region(lay, b, shift)[:2]
            reads.append((tuple(max(a - 1, 0) for a in start), tuple(min(e + 1, n) for e in stop)))
        plan = halo_plan(lay, groups, reads)
        sent = {(j, g): [] for j, boxes in plan.items() for g, _, _ in boxes}
        for j, boxes in plan.items():
            b = lay.blocks[j]
            for g, lo, hi in boxes:
                assert g != group_of[j]
                inside = zip(lo, hi, b.start, b.stop, strict=True)
                assert all(b0 <= x < y <= e0 for x, y, b0, e0 in inside)
                sent[j, g].append((lo, hi))
        needed, volume = set(), 0
        for i, (lo, hi) in enumerate(reads):
            seen = owner[tuple(slice(a, e) for a, e in zip(lo, hi, strict=True))]
            for j in map(int, np.unique(seen)):
                if group_of[j] == group_of[i]:
                    continue
                at = np.argwhere(seen == j) + np.array(lo)
                a, e = at.min(axis=0), at.max(axis=0) + 1
                assert len(at) == np.prod(e - a)  # a box
                boxes = sent[j, group_of[i]]
                assert any(
                    all(x0 <= x and y <= y0 for x, y, x0, y0 in zip(a, e, b0, f0, strict=True))
                    for b0, f0 in boxes
                ), (i, j, a, e, boxes)
                needed.add((j, group_of[i]))
                volume += len(at)
        assert set(sent) == needed
        assert sum(np.prod(np.subtract(hi, lo)) for v in sent.values() for lo, hi in v) <= volume
        assert needed
