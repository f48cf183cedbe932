"""Kernels of the bilevel pipeline: every oracle against finite differences, exact
hypergradients against finite differences of F, the closed-form optimum, and the
sequential BSVRB iteration against the known x*."""

import numpy as np
import pytest
from tilegraph.pipelines.bilevel.config import BilevelConfig
from tilegraph.tasks.bilevel.hypergradient import (
    block_hypergradient,
    hypergradient,
    reference_optimum,
    solve_lower,
    upper_objective,
)
from tilegraph.tasks.bilevel.methods import (
    METHODS,
    StepSizes,
    block_step,
    clip_eigenvalues,
    init_state,
    pack,
    project_ball,
    state_size,
    unpack,
)
from tilegraph.tasks.bilevel.problems import LogisticHPO, QuadraticBlocks, RidgeBlocks
from tilegraph.tasks.bilevel.sampling import draw
from tilegraph.tasks.bilevel.sequential import run_sequential

PROBLEMS = {
    "quadratic": lambda: QuadraticBlocks(m=4, dim_x=3, dim_y=4, n_lower=10),
    "digits-ridge": lambda: RidgeBlocks(n_train=300),
    "logistic-hpo": lambda: LogisticHPO(m=3, n_train=40, lam=1e-2),
}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request):
    return PROBLEMS[request.param]()


def _point(problem, seed=0):
    rng = np.random.default_rng(seed)
    x = 0.3 * rng.standard_normal(problem.dim_x)
    y = 0.3 * rng.standard_normal(problem.dim_y)
    v = rng.standard_normal(problem.dim_y)
    idx_g = rng.integers(0, problem.n_lower, 7)
    idx_g[1] = idx_g[0]  # a repeated sample counts twice
    idx_f = rng.integers(0, problem.n_upper, 5)
    return x, y, v, idx_g, idx_f


def _fd_grad(fun, z, h=1e-6):
    """Central differences of a scalar function, one coordinate at a time."""
    out = np.zeros_like(z)
    for k in range(z.size):
        e = np.zeros_like(z)
        e[k] = h
        out[k] = (float(fun(z + e)) - float(fun(z - e))) / (2 * h)
    return out


def _fd_jac(fun, z, h=1e-6):
    cols = []
    for k in range(z.size):
        e = np.zeros_like(z)
        e[k] = h
        cols.append((fun(z + e) - fun(z - e)) / (2 * h))
    return np.stack(cols, axis=-1)


def test_first_order_oracles_match_finite_differences(problem):
    x, y, _, ig, iff = _point(problem)
    i = problem.m - 1
    for idx in (ig, None):
        np.testing.assert_allclose(
            problem.grad_y_g(i, x, y, idx),
            _fd_grad(lambda yy, idx=idx: problem.g(i, x, yy, idx), y),
            rtol=1e-6,
            atol=1e-8,
        )
        np.testing.assert_allclose(
            problem.grad_x_g(i, x, y, idx),
            _fd_grad(lambda xx, idx=idx: problem.g(i, xx, y, idx), x),
            rtol=1e-6,
            atol=1e-8,
        )
    for idx in (iff, None):
        np.testing.assert_allclose(
            problem.grad_y_f(i, x, y, idx),
            _fd_grad(lambda yy, idx=idx: problem.f(i, x, yy, idx), y),
            rtol=1e-6,
            atol=1e-8,
        )
        np.testing.assert_allclose(
            problem.grad_x_f(i, x, y, idx),
            _fd_grad(lambda xx, idx=idx: problem.f(i, xx, y, idx), x),
            rtol=1e-6,
            atol=1e-8,
        )


def test_second_order_oracles_match_finite_differences(problem):
    x, y, v, ig, _ = _point(problem, seed=1)
    i = 0
    H = problem.hess_yy_g(i, x, y, ig)
    np.testing.assert_allclose(
        H, _fd_jac(lambda yy: problem.grad_y_g(i, x, yy, ig), y), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(problem.hvp_yy_g(i, x, y, v, ig), H @ v, rtol=1e-12, atol=1e-12)
    # d/dx <grad_y g(x, y), v>
    np.testing.assert_allclose(
        problem.cross_xy_g(i, x, y, v, ig),
        _fd_grad(lambda xx: problem.grad_y_g(i, xx, y, ig) @ v, x),
        rtol=1e-5,
        atol=1e-8,
    )


def test_batch_oracles_average_to_the_full_oracle(problem):
    """Unbiasedness: the mean of the one-sample oracles over every sample is the exact
    oracle, and a batch is the mean of its samples (any order, repeats counted)."""
    x, y, v, _, _ = _point(problem, seed=2)
    n = problem.n_lower
    for oracle, args in ((problem.grad_y_g, (x, y)), (problem.cross_xy_g, (x, y, v))):
        full = oracle(1, *args)
        singles = np.stack([oracle(1, *args, [k]) for k in range(n)])
        np.testing.assert_allclose(singles.mean(axis=0), full, rtol=1e-10, atol=1e-12)
        batch = np.random.default_rng(5).integers(0, n, size=7)
        np.testing.assert_allclose(
            oracle(1, *args, batch), singles[batch].mean(axis=0), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("kind", ["quadratic", "digits-ridge"])
def test_exact_hypergradient_matches_finite_differences_of_F(kind):
    problem = PROBLEMS[kind]()
    x = 0.2 * np.random.default_rng(3).standard_normal(problem.dim_x)
    g = hypergradient(problem, x)
    d = np.random.default_rng(4).standard_normal(problem.dim_x)
    for direction in (d, np.eye(problem.dim_x)[0]):
        h = 1e-5
        fd = (
            upper_objective(problem, x + h * direction)
            - upper_objective(problem, x - h * direction)
        ) / (2 * h)
        assert g @ direction == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_quadratic_closed_form_optimum():
    p = QuadraticBlocks(m=6, dim_x=4, dim_y=3, n_lower=9, spread=1.0)
    x = p.x_star
    for i in range(p.m):
        y = solve_lower(p, i, x)
        np.testing.assert_allclose(y, np.linalg.solve(p.Q[i], p.P[i] @ x + p.c[i]), rtol=1e-12)
    assert np.linalg.norm(hypergradient(p, x)) < 1e-12 * (1 + np.linalg.norm(x))
    # and it is a minimum: F grows in every direction
    for d in np.eye(p.dim_x):
        assert upper_objective(p, x + 1e-3 * d) > upper_objective(p, x)


def test_ridge_reference_optimum_is_stationary():
    p = PROBLEMS["digits-ridge"]()
    x = reference_optimum(p)
    assert np.linalg.norm(hypergradient(p, x)) < 1e-5
    assert upper_objective(p, x) < upper_objective(p, p.x0)


def test_state_helpers():
    rng = np.random.default_rng(5)
    for method in METHODS:
        flat = rng.standard_normal(state_size(method, 3))
        np.testing.assert_array_equal(pack(method, 3, unpack(method, 3, flat)), flat)
    A = rng.standard_normal((4, 4))
    H = clip_eigenvalues(A + A.T, 0.7)
    assert np.linalg.eigvalsh(H).min() >= 0.7 - 1e-12
    S = np.diag([1.0, 2.0, 3.0])
    np.testing.assert_allclose(clip_eigenvalues(S, 0.5), S)
    np.testing.assert_allclose(np.linalg.norm(project_ball(3 * np.ones(4), 2.0)), 2.0)
    np.testing.assert_array_equal(project_ball(np.ones(4), 2.0), np.ones(4))


def test_sampling_is_a_function_of_seed_and_iteration():
    a, b = draw(7, 11, 50, 10, 8, 32, 1), draw(7, 11, 50, 10, 8, 32, 1)
    for u, w in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, w)
    assert len(set(a.blocks)) == 10 and np.all(np.diff(a.blocks) > 0)
    assert not np.array_equal(draw(7, 12, 50, 10, 8, 32, 1).blocks, a.blocks)


@pytest.mark.parametrize("method", METHODS)
def test_block_step_under_array_api_strict(method):
    xps = pytest.importorskip("array_api_strict")
    p = PROBLEMS["quadratic"]()
    st = StepSizes(tau=0.3, tau_v=0.3)
    x, _, _, ig, iff = _point(p, seed=6)
    flat = init_state(p, method, 1, x, st, ig)
    ref = block_step(p, method, 1, flat, x, 0.9 * x, ig, iff, 0, st)
    got = block_step(
        p, method, 1, xps.asarray(flat), xps.asarray(x), xps.asarray(0.9 * x), ig, iff, 0, st
    )
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-14)


def test_hypergradient_under_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    p = PROBLEMS["logistic-hpo"]()
    x = 0.1 * np.ones(p.dim_x)
    y = solve_lower(p, 0, x)
    got = block_hypergradient(p, 0, xps.asarray(x), xps.asarray(y))
    np.testing.assert_allclose(np.asarray(got), block_hypergradient(p, 0, x, y), rtol=1e-10)


def _quick(method, **over):
    cfg = BilevelConfig.model_validate({"method": method, **over})
    p = cfg.problem.build()
    x, dist = run_sequential(
        p,
        method,
        cfg.steps(),
        cfg.max_iter,
        cfg.blocks_per_iter,
        cfg.batch,
        cfg.upper_step,
        cfg.beta,
        cfg.seed,
        p.x_star,
        cfg.tol,
    )
    return x, dist


@pytest.mark.parametrize("method", ["bsvrb-v1", "bsvrb-v2"])
def test_bsvrb_reaches_one_percent_of_x_star_on_quick(method):
    x_star = QuadraticBlocks().x_star
    x, dist = _quick(method)
    assert np.linalg.norm(x - x_star) <= 1e-2 * np.linalg.norm(x_star)
    assert len(dist) < 1000
    assert dist[0] > 0.5  # it had a long way to go


def test_more_blocks_per_iteration_need_fewer_iterations():
    _, one = _quick("bsvrb-v2", blocks_per_iter=1, max_iter=20000)
    _, ten = _quick("bsvrb-v2", blocks_per_iter=10)
    assert one[-1] <= 1e-2 and ten[-1] <= 1e-2
    assert 5 * len(ten) <= len(one)


def test_eager_lower_update_catches_up_on_missed_iterations():
    """eager=True: a block that waited k iterations moves by k tau s before its step,
    and its previous iterate is one stale step back."""
    p = PROBLEMS["quadratic"]()
    st = StepSizes(tau=0.2, eager=True)
    x, _, _, ig, iff = _point(p, seed=8)
    flat = init_state(p, "bsvrb-v1", 2, x, st, ig)
    parts = unpack("bsvrb-v1", p.dim_y, flat)
    parts["y"] = np.ones(p.dim_y)
    flat = pack("bsvrb-v1", p.dim_y, parts)
    new, _, _ = block_step(p, "bsvrb-v1", 2, flat, x, x, ig, iff, 3, st)
    got = unpack("bsvrb-v1", p.dim_y, new)
    y_t = np.ones(p.dim_y) - 3 * 0.2 * parts["s"]
    np.testing.assert_allclose(got["y_prev"], y_t, rtol=1e-14)
    np.testing.assert_allclose(got["y"], y_t - 0.2 * got["s"], rtol=1e-14)
    # MSVR with x_t = x_{t-1}: h_old is grad_y g at the stale step y_t + tau s
    h_new = p.grad_y_g(2, x, y_t, ig)
    h_old = p.grad_y_g(2, x, y_t + 0.2 * parts["s"], ig)
    s = 0.1 * parts["s"] + 1.9 * h_new - 1.0 * h_old
    np.testing.assert_allclose(got["s"], s, rtol=1e-12, atol=1e-14)


def test_digits_ridge_bsvrb_approaches_the_lbfgs_optimum():
    """On real data (digits, m = 10, I = 2, B = 32) v2 gets within 2 % of the optimum
    that L-BFGS finds on the exact hypergradient."""
    from tilegraph.pipelines.bilevel.config import PRESETS

    cfg = BilevelConfig.model_validate(PRESETS["digits"])
    p = cfg.problem.build()
    x_star = reference_optimum(p)
    x, dist = run_sequential(
        p,
        cfg.method,
        cfg.steps(),
        cfg.max_iter,
        cfg.blocks_per_iter,
        cfg.batch,
        cfg.upper_step,
        cfg.beta,
        cfg.seed,
        x_star,
        cfg.tol,
    )
    assert dist[-1] <= 2e-2
    assert upper_objective(p, x) <= upper_objective(p, x_star) * (1 + 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["bsvrb-v1", "bsvrb-v2"])
def test_block_step_on_cupy_matches_numpy(method):
    cp = pytest.importorskip("cupy")
    p = PROBLEMS["logistic-hpo"]()
    st = StepSizes(tau=0.3, tau_v=0.3, h_floor=1e-2)
    x, _, _, ig, iff = _point(p, seed=9)
    flat = init_state(p, method, 1, x, st, ig)
    ref = block_step(p, method, 1, flat, x, 0.9 * x, ig, iff, 0, st)
    got = block_step(
        p, method, 1, cp.asarray(flat), cp.asarray(x), cp.asarray(0.9 * x), ig, iff, 0, st
    )
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-10, atol=1e-12)


def test_curvature_of_a_multiple_of_the_identity_is_exact_and_finite():
    """Lower Hessians exactly lam I (no data term): the power iteration on (top I - H)
    meets a zero vector; the estimate is (lam, lam), not NaN (which left h_floor unset
    and bsvrb-v1 failing)."""
    import warnings

    from tilegraph.pipelines.bilevel.steps import block_curvature

    problem = QuadraticBlocks(m=3, dim_x=3, dim_y=4, lam=2.5)
    problem.A = np.zeros_like(problem.A)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = block_curvature([0, 2], problem=problem, x=np.zeros(3))
    for top, low, vstar in stats:
        assert top == pytest.approx(2.5, rel=1e-12) and low == pytest.approx(2.5, rel=1e-12)
        assert np.isfinite(vstar)


@pytest.mark.parametrize(
    "diag", [[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0], [2.0, 1.0, 1.0, -1.0], [-1.0] * 4]
)
def test_curvature_of_a_lower_hessian_not_positive_definite_is_refused(diag):
    from tilegraph.pipelines.bilevel.steps import block_curvature

    problem = QuadraticBlocks(m=2, dim_x=3, dim_y=4, lam=0.0)
    problem.A = np.zeros_like(problem.A)
    problem.hvp_yy_g = lambda i, x, y, v, idx=None: np.asarray(diag) * v
    problem.hess_yy_g = lambda i, x, y, idx=None: np.eye(4)  # solve_lower needs some H
    with pytest.raises(ValueError, match="block 0: the lower Hessian's eigenvalues"):
        block_curvature([0], problem=problem, x=np.zeros(3))


def test_plateau_halvings_from_window_means():
    """A steady descent is never halved, however slow; a flat, noisy objective is halved
    once per two windows; the count up to any point is the count of that prefix (what a
    resumed run recomputes from its checkpointed history)."""
    from tilegraph.pipelines.bilevel.steps import plateau_halvings

    its = np.arange(0, 1001, 10)
    slow = 1.0 + np.exp(-its / 5000.0)
    assert plateau_halvings(its, slow, 100.0) == 0
    noise = 1.0 + 0.01 * np.random.default_rng(0).standard_normal(its.size)
    flat = plateau_halvings(its, noise, 100.0)
    assert 1 <= flat <= 5  # at most one per 2 windows (200 iterations) of 1000
    # halved at 200 exactly when the second window's mean is not lower
    step = np.where(its < 100, 2.0, 1.0)
    assert plateau_halvings(its[:21], step[:21], 100.0) == 0  # 2.0 then 1.0: progress
    assert plateau_halvings(its[:21], np.ones(21), 100.0) == 1
    for k in range(1, its.size + 1, 7):
        head = plateau_halvings(its[:k], noise[:k], 100.0)
        assert head <= flat and head == plateau_halvings(list(its[:k]), list(noise[:k]), 100.0)
