"""Every pipeline's resource estimate (``pipelines/<name>/resources.py``) against what its
runs really allocate and write, and the command line refusing runs that cannot fit.

Measured: the peak of traced allocations (``tracemalloc``; NumPy reports its buffers to
it) while a run executes in-process on ``sync``, where driver and worker share the
process, so it is compared with ``driver_bytes + worker_bytes``; and the uncompressed
bytes of every Zarr chunk the run wrote, compared with ``store_bytes``.
"""

import contextlib
import functools
import io
import math
import time
import timeit
import tracemalloc
import warnings

import pytest
import tilegraph
from tilegraph.pipelines import cli, resources
from tilegraph.pipelines.config import build_config
from tilegraph.pipelines.registry import get_pipeline

#: Per pipeline: the quick preset (bilevel's with fewer iterations: it runs hundreds to
#: converge) and a larger config where the arrays dominate (a measured peak of at least
#: 50 MB, a few seconds on ``sync``). Work vectors, checkpoints and the digits of the
#: reference the runs would delete at the end are kept (``keep_work``, no mid-batch
#: checkpoints) so that what is on disk afterwards is the peak the estimate describes.
CASES = {
    "domain-split": (
        [],
        ["n_fine=600", "n_coarse=10", "restart=4", "direct_reference=false", "keep_work=true"],
    ),
    # r_min = r_max: full ranks from the first step; the reference's dense state at the
    # root (2^12 x 64 x 64 complex) is the largest array
    "ttn": ([], ["d=12", "r_max=64", "r_min=64", "T=0.15"]),
    "picard": (
        [],
        ["n_samples=64", "batch_size=64", "gmm.dim=256", "checkpoint_s=null"],
    ),
    "bilevel": (
        ["max_iter=100"],
        [
            "problem.m=100",
            "problem.n_lower=2000",
            "problem.dim_y=50",
            "problem.dim_x=100",
            "max_iter=20",
        ],
    ),
}

#: Allowed ratio of estimate to measurement, both ways.
FACTOR = 3.0


def _estimate(name: str, sets, workers: int = 1):
    pipeline = get_pipeline(name)
    return pipeline.estimate(build_config(pipeline, "quick", None, list(sets)), workers)


def _traced_run(name: str, sets, store):
    """``(run, peak traced bytes)`` of one in-process run on ``sync``."""
    tracemalloc.start()
    try:
        run = tilegraph.run(name, preset="quick", sets=list(sets), cluster="sync", store=store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert run.status == "complete"
    return run, peak


def _written(run) -> int:
    """Uncompressed bytes of every chunk written to the run's Zarr arrays."""
    total = 0
    with warnings.catch_warnings():  # summary.png is no Zarr node
        warnings.simplefilter("ignore")
        members = run.group.members(max_depth=None)
    for _, node in members:
        if hasattr(node, "nchunks_initialized"):
            total += node.nchunks_initialized * math.prod(node.chunks) * node.dtype.itemsize
    return total


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimate_matches_what_runs_allocate_and_write(name, tmp_path):
    quick_sets, large_sets = CASES[name]
    # the quick preset first: it also imports what the pipeline needs, so that the
    # larger run's peak is its arrays, not module objects
    _, quick_peak = _traced_run(name, quick_sets, tmp_path / "quick")
    quick = _estimate(name, quick_sets)
    # small arrays: the process's own objects dominate; the estimate must not exceed
    # what the run used by more than the allowed factor (no false refusals)
    assert quick.driver_bytes + quick.worker_bytes <= FACTOR * quick_peak

    run, peak = _traced_run(name, large_sets, tmp_path / "large")
    est = _estimate(name, large_sets)
    assert peak >= 40 * 2**20, f"{name}: choose a larger config (peak {peak / 2**20:.0f} MiB)"
    ratio = (est.driver_bytes + est.worker_bytes) / peak
    assert 1 / FACTOR <= ratio <= FACTOR, (
        f"{name}: estimate {resources.fmt_bytes(est.driver_bytes + est.worker_bytes)}, "
        f"measured {resources.fmt_bytes(peak)}"
    )
    written = _written(run)
    assert 1 / FACTOR <= est.store_bytes / written <= FACTOR, (
        f"{name}: store estimate {resources.fmt_bytes(est.store_bytes)}, "
        f"written {resources.fmt_bytes(written)}"
    )


def test_superlu_fill_model_matches_scipy():
    """The direct reference's SuperLU factors are invisible to tracemalloc (C memory):
    the fill model behind them is checked against the factors SciPy computes."""
    from scipy.sparse.linalg import splu
    from tilegraph.pipelines.domain_split.resources import lu_nonzeros
    from tilegraph.tasks.domain_split.operator import PERMC, assemble, fine_axes
    from tilegraph.tasks.domain_split.problems import Problem

    for d, n_fine in ((2, 150), (3, 18)):
        problem = Problem("constant", d, (1.0,) * d, (1.0,) * d)
        A, _, _ = assemble(problem, fine_axes(n_fine, d), "central")
        lu = splu(A, permc_spec=PERMC)
        ratio = lu_nonzeros(A.shape[0], d) / (lu.L.nnz + lu.U.nnz)
        assert 1 / 1.5 <= ratio <= 1.5, (d, n_fine, ratio)


def test_direct_reference_and_workers_change_the_estimate():
    base = ["n_fine=1000", "n_coarse=10"]
    with_ref = _estimate("domain-split", base)
    without = _estimate("domain-split", [*base, "direct_reference=false"])
    assert with_ref.driver_bytes > 20 * without.driver_bytes  # the factorisation
    assert "direct_reference=false" in with_ref.alternative
    ooc = _estimate("domain-split", [*base, "direct_reference=false", "out_of_core=true"])
    assert ooc.worker_bytes < without.worker_bytes / 3  # no vectors kept in workers
    assert ooc.store_bytes > without.store_bytes  # w, z, r go to Zarr too
    two = _estimate("domain-split", [*base, "direct_reference=false"], workers=2)
    assert two.worker_bytes < 0.75 * without.worker_bytes  # blocks shared out


CUBE = ["problem.alpha=[1,1,1]", "problem.beta=[1,1,1]"]

#: Valid configs with extreme values: the estimate is quick and never raises.
EXTREME = {
    "domain-split": [
        ["n_fine=100000000"],
        ["d=3", "n_fine=1000000000000", "n_coarse=4", *CUBE],
        ["n_fine=5" + "0" * 400, "direct_reference=false", "out_of_core=true"],
        ["d=3", "n_coarse=100000000", "n_fine=200000000", "problem.kind=variable"],
        ["d=3", "n_coarse=4", "n_fine=400", "problem.alpha=[1,1,1]", "problem.beta=[0,0,0]"],
    ],
    "ttn": [
        ["d=128", "r_max=" + "9" * 400, "exact_reference=false"],
        ["d=128", "tree=tucker", "exact_reference=false"],
        ["d=14", "tree=tucker", "r_max=100000"],
        ["d=64", "method=sequential", "schedule=nodes", "model.kind=lr-ising"]
        + ["exact_reference=false", "r_max=100000"],
    ],
    "picard": [
        ["n_samples=" + "9" * 400, "batch_size=" + "9" * 300, "gmm.dim=4096"],
        ["model=digits", "digits.hidden=[8192, 8192, 8192]", "anderson_memory=20"]
        + ["steps=100000", "train_steps=100000", "window=100000", "accelerate=true"],
    ],
    "bilevel": [
        ["problem.m=" + "9" * 400, "problem.dim_y=" + "9" * 300, "method=bsvrb-v1"],
        ["problem.kind=logistic-hpo", "problem.m=1000000000000", "problem.n_train=400"]
        + ["batch=1000000"],
        ["problem.kind=digits-ridge", "problem.m=10", "compare=[bsvrb-v1, sgd, f2sa]"],
    ],
}


@pytest.mark.parametrize("name", sorted(EXTREME))
def test_extreme_configs_estimate_quickly_without_raising(name):
    pipeline = get_pipeline(name)
    configs = [build_config(pipeline, "quick", None, [])]
    configs += [build_config(pipeline, "quick", None, sets) for sets in EXTREME[name]]
    configs += [build_config(pipeline, preset, None, []) for preset in pipeline.presets]
    for cfg in configs:
        for workers in (1, 3, 1000):
            est = pipeline.estimate(cfg, workers)
            # from the config alone: well under 10 ms (the best of three, on a busy machine)
            call = functools.partial(pipeline.estimate, cfg, workers)
            best = min(timeit.repeat(call, number=1, repeat=3))
            assert best < 0.01, (cfg, best)
            for n in (est.driver_bytes, est.worker_bytes, est.store_bytes):
                assert isinstance(n, int) and 0 <= n <= 2**70
            assert est.field and est.alternative
            resources.describe(est, workers)  # formats without overflowing
    # the refusal names a config field that exists (dotted for nested ones)
    for cfg in configs:
        field = pipeline.estimate(cfg, 1).field
        node = cfg
        for part in field.split("."):
            node = getattr(node, part)


def _cli(argv):
    """``tilegraph run ...`` in process: ``(exit status, stdout, stderr lines, seconds)``."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue().strip("\n").split("\n"), time.perf_counter() - t0


#: Sizes that fit nowhere (terabytes) but are below the "no machine has it" threshold,
#: and one that is absurd (petabytes): ``(pipeline, --set items, field, alternative)``.
TOO_LARGE = [
    ("domain-split", ["n_fine=100000000"], "n_fine", None),
    ("domain-split", ["n_fine=30000"], "n_fine", "out_of_core=true"),
    ("domain-split", ["n_fine=30000", "direct_reference=false"], "n_fine", "out_of_core=true"),
    ("ttn", ["d=64", "r_max=1000", "exact_reference=false"], "r_max", "more workers"),
    ("picard", ["n_samples=10000", "batch_size=10000", "gmm.dim=4096"], "batch_size", "steps"),
    ("bilevel", ["problem.m=500", "problem.dim_y=20000"], "problem.dim_y", "problem.m"),
]


@pytest.mark.parametrize(("name", "sets", "field", "alternative"), TOO_LARGE)
def test_cli_refuses_runs_that_cannot_fit(name, sets, field, alternative, tmp_path):
    store = tmp_path / "runs"
    argv = ["run", name, "--store", str(store), "--cluster", "sync"]
    rc, out, err, seconds = _cli(argv + [f"--set={s}" for s in sets])
    assert rc == 2, (out, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert f"config field '{field}'" in err[0], err[0]
    if alternative is not None:
        assert alternative in err[0], err[0]
    assert seconds < 10
    assert not store.exists()


def test_an_in_memory_krylov_basis_shrinks_to_what_the_workers_hold():
    """The in-memory estimate holds all ``restart`` FGMRES steps (two vectors each); the
    check before the run asks only for BASIS_FLOOR of them, and the runner takes the
    largest restart whose estimate fits the workers' memory limit (a real Dask worker
    with a limit of 190 MiB here: 126 MiB at the floor, 166 MiB with all 30 steps)."""
    import distributed
    from tilegraph import cluster
    from tilegraph.pipelines.domain_split.resources import BASIS_FLOOR
    from tilegraph.pipelines.domain_split.runner import basis_that_fits

    pipeline = get_pipeline("domain-split")
    sets = ["d=3", "n_fine=48", "n_coarse=auto", "problem.kind=variable"]
    cfg = build_config(pipeline, "quick", None, [*sets, "direct_reference=false"])
    full = pipeline.estimate(cfg, 1)
    step = 2 * 8 * 49**3  # two float64 vectors a step, one worker
    assert full.worker_bytes - full.worker_floor_bytes == pytest.approx(
        (30 - BASIS_FLOOR) * step, rel=0.01
    )
    ooc = pipeline.estimate(cfg.model_copy(update={"out_of_core": True}), 1)
    assert ooc.worker_floor_bytes is None
    limit = 190 * 2**20
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit=limit,
            host="127.0.0.1",
            dashboard_address=None,
        ) as lc,
        cluster.connect(lc.scheduler_address) as ex,
    ):
        assert ex.memory_limit == limit
        resources.check_executor(full, ex)  # passes at the floor
        k = basis_that_fits(cfg, ex, 1)

        def need(r):
            return pipeline.estimate(cfg.model_copy(update={"restart": r}), 1).worker_bytes

        assert BASIS_FLOOR < k < 30
        assert need(k) <= resources.HEADROOM * limit < need(k + 1)
    # with room to spare (this machine, threads) the configured restart stays
    with cluster.connect("threads:1") as ex:
        assert basis_that_fits(cfg, ex, 1) == 30


def test_tucker_reference_that_fits_is_not_refused():
    """The Tucker tree's dense reference at d=14 (2^14 x 2^14 complex, 4 GiB) is what the
    estimate charges; the same tree without it is small."""
    ref = _estimate("ttn", ["d=14", "tree=tucker"])
    assert 4 * 2**30 <= ref.driver_bytes <= 16 * 2**30
    assert _estimate("ttn", ["d=14", "tree=tucker", "exact_reference=false"]).driver_bytes < 2**30


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_prints_the_three_sizes(name, tmp_path):
    store = tmp_path / "runs"
    rc, out, err, _ = _cli(["run", name, "--dry-run", "--cluster", "sync", "--store", str(store)])
    assert rc == 0, err
    est = _estimate(name, [])
    for label, value in (
        ("driver memory (peak)", est.driver_bytes),
        ("worker memory (peak)", est.worker_bytes),
        ("store size", est.store_bytes),
    ):
        line = next(x for x in out.splitlines() if label in x)
        assert resources.fmt_bytes(value) in line, line
    assert not store.exists()
