"""The domain-split pipeline end to end: real executors, real Zarr stores, read back
with xarray, judged against SciPy's direct solve of the fine system."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import tilegraph as tg
import xarray as xr
from tilegraph.pipelines.domain_split import PIPELINE
from tilegraph.pipelines.domain_split.config import DomainSplitConfig


def run_pipeline(tmp_path, executor, preset="quick", sets=(), name="run"):
    run = tg.run(
        PIPELINE.name, preset=preset, sets=list(sets), cluster=executor, store=tmp_path / name
    )
    return run, run.metrics


def test_quick_krylov_reaches_the_direct_solution(tmp_path, executors):
    store, m = run_pipeline(tmp_path, executors("sync"))
    assert m["rel_error_direct"] <= 1e-10
    assert m["rel_residual"] <= 1e-10 and m["converged"]
    assert m["iterations"] < 30
    assert m["rel_error_exact"] == pytest.approx(m["discretisation_error"], rel=1e-6)
    assert m["unknowns"] == 99**2
    ds = xr.open_zarr(store.url + "/result", consolidated=False)
    assert ds.solution.dims == ("x", "y")
    assert ds.x.size == 101 and float(ds.x[-1]) == 1.0
    np.testing.assert_allclose(ds.error.values, ds.solution.values - ds.exact.values)
    hist = xr.open_zarr(store.url + "/history", consolidated=False).rel_residual.values
    assert hist[-1] <= 1e-10 and hist[0] > 1e-4
    assert (
        tmp_path / "run" / "domain-split" / store.run_id / "summary.png"
    ).stat().st_size > 10_000
    assert "work" not in store.group  # scratch vectors removed


@pytest.mark.parametrize(
    "d, n_fine, want",
    [(2, 1024, 32), (3, 128, 8), (3, 592, 37), (3, 600, 40), (2, 100, 4), (2, 6, 2)],
)
def test_n_coarse_auto_takes_the_divisor_nearest_the_measured_stride(d, n_fine, want):
    """Stride 32 in 2-D, 16 in 3-D (nearest on a log scale among the divisors)."""
    cfg = DomainSplitConfig(d=d, n_fine=n_fine, problem={"kind": "variable"})
    assert cfg.n_coarse == want and n_fine % want == 0


def test_n_coarse_auto_keeps_the_coarse_peclet_number_below_one():
    """Strong advection: the stride nearest 32 would oscillate; auto takes the nearest
    divisor that does not (the next coarser grid would), instead of failing."""
    problem = {"kind": "constant", "alpha": [1.0, 1.0], "beta": [200.0, 0.0]}
    cfg = DomainSplitConfig(d=2, n_fine=1024, problem=problem)
    pe = cfg.to_problem().max_cell_peclet
    assert pe(1.0 / cfg.n_coarse) <= 1.0 < pe(1.0 / (cfg.n_coarse // 2))
    assert cfg.n_coarse == 128
    with pytest.raises(ValueError, match="Peclet number"):
        DomainSplitConfig(d=2, n_fine=1024, n_coarse=32, problem=problem)


def test_a_run_with_n_coarse_auto_records_the_grid_it_took(tmp_path, executors):
    run, m = run_pipeline(tmp_path, executors("sync"), sets=["n_fine=64", "n_coarse=auto"])
    assert run.config["n_coarse"] == 2  # stride 32
    assert m["rel_error_direct"] <= 1e-10


def test_quick_stationary_reaches_the_direct_solution(tmp_path, executors):
    _, m = run_pipeline(tmp_path, executors("sync"), sets=["solver=stationary", "tol=1e-9"])
    assert m["rel_error_direct"] <= 1e-6
    assert m["converged"]


def test_krylov_converges_with_variable_coefficients(tmp_path, executors):
    _, m = run_pipeline(tmp_path, executors("sync"), sets=["problem.kind=variable"])
    assert m["converged"] and m["rel_error_direct"] <= 1e-9
    # the discrete solution is second-order close to the exact one
    assert m["rel_error_exact"] < 1e-4


@pytest.mark.parametrize("d", [2, 3])
def test_frozen_box_solver_reaches_the_direct_solution(tmp_path, executors, d):
    """Boxes solved inexactly (fast diagonalisation, coefficients frozen at each box's
    centre) inside FGMRES: the same discrete solution, in a few more iterations, and the
    same bits on two workers."""
    sets = ["problem.kind=variable", "box_solver=frozen", "tol=1e-10"]
    if d == 3:
        sets += ["d=3", "n_fine=20", "n_coarse=5"]
    _, exact = run_pipeline(tmp_path, executors("sync"), sets=sets[:1] + sets[2:], name="lu")
    ref, m = run_pipeline(tmp_path, executors("sync"), sets=sets, name="frozen")
    assert m["converged"] and m["rel_error_direct"] <= 1e-8
    assert exact["iterations"] <= m["iterations"] <= 3 * exact["iterations"] + 2
    got, m2 = run_pipeline(tmp_path, executors("local:2"), sets=sets, name="frozen2")
    np.testing.assert_array_equal(
        got.array("result/solution").read(), ref.array("result/solution").read()
    )
    assert m2["iterations"] == m["iterations"]


def test_three_dimensional_run(tmp_path, executors):
    sets = ["n_fine=20", "n_coarse=5", "tol=1e-7"]
    store, m = run_pipeline(tmp_path, executors("sync"), preset="paper3d", sets=sets)
    assert m["converged"] and m["rel_error_direct"] <= 1e-7
    assert m["unknowns"] == 19**3
    ds = xr.open_zarr(store.url + "/result", consolidated=False)
    assert ds.solution.dims == ("x", "y", "z")


SKEW3D = ["problem.alpha=[1, 1, 1]", "problem.beta=[1, 0.5, 0.25]", "tol=1e-9"]


def test_three_shifted_sweeps_keep_3d_iterations_low(tmp_path, executors):
    # stride 8 in 3-D: one shifted sweep (the single s/2 shift) left FGMRES above 100
    # iterations on 127^3; three sweeps converge in a handful
    sets = ["n_fine=32", "n_coarse=4", *SKEW3D]
    ex = executors("sync")
    _, m3 = run_pipeline(tmp_path, ex, preset="paper3d", sets=sets, name="three")
    one = [*sets, "shifts=1", "max_iter=16", "direct_reference=false"]
    _, m1 = run_pipeline(tmp_path, ex, preset="paper3d", sets=one, name="one")
    assert m3["converged"] and m3["rel_error_direct"] <= 1e-8
    assert m3["iterations"] <= 8
    assert not m1["converged"] and m1["rel_residual"] > 100 * m3["rel_residual"]


def test_amg_submeshes_on_workers_give_the_same_bits(tmp_path, executors):
    sets = ["n_fine=16", "n_coarse=4", "submesh=amg", "direct_reference=false", *SKEW3D]
    ref_store, ref = run_pipeline(tmp_path, executors("sync"), "paper3d", sets, name="sync")
    store, m = run_pipeline(tmp_path, executors("local:2"), "paper3d", sets, name="local")
    assert m["workers"] == 2 and m["converged"]
    assert m["iterations"] == ref["iterations"]
    np.testing.assert_array_equal(
        store.array("result/solution").read(), ref_store.array("result/solution").read()
    )
    # and the inexact (pyamg) sub-mesh solves still reach the fine discrete solution
    direct = run_pipeline(tmp_path, executors("sync"), "paper3d", sets[:2] + SKEW3D, "d")[1]
    assert direct["rel_error_exact"] == pytest.approx(ref["rel_error_exact"], rel=1e-5)


def test_lean_amg_submeshes_out_of_core_reach_the_discrete_solution(tmp_path, executors):
    base = ["n_fine=16", "n_coarse=4", "direct_reference=false", *SKEW3D]
    ex = executors("sync")
    lean = run_pipeline(tmp_path, ex, "paper3d", [*base, "submesh=amg-lean", "out_of_core=true"])
    direct = run_pipeline(tmp_path, ex, "paper3d", [*base, "submesh=direct"], "d")[1]
    assert lean[1]["converged"] and lean[1]["rel_residual"] <= 1e-8
    assert lean[1]["rel_error_exact"] == pytest.approx(direct["rel_error_exact"], rel=1e-5)


@pytest.mark.parametrize(
    "preset, sets",
    [
        ("quick", ["n_fine=40", "n_coarse=4"]),  # constant: fast-diagonalisation boxes
        ("quick", ["n_fine=40", "n_coarse=4", "problem.kind=variable"]),  # sparse LU boxes
        ("paper3d", ["n_fine=16", "n_coarse=4"]),
    ],
    ids=["2d-constant", "2d-variable", "3d"],
)
def test_generic_device_path_gives_the_numpy_answer(tmp_path, executors, preset, sets):
    # device=array-api-strict runs the workers' kernels on array-api-strict arrays: the
    # code path CuPy takes, checked on a CPU (tests/test_gpu.py runs it on a GPU)
    ex = executors("sync")
    sets = [*sets, "direct_reference=false"]
    ref_store, ref = run_pipeline(tmp_path, ex, preset, sets, name="numpy")
    store, m = run_pipeline(tmp_path, ex, preset, [*sets, "device=array-api-strict"], "strict")
    assert m["converged"] and m["iterations"] == ref["iterations"]
    np.testing.assert_allclose(
        store.array("result/solution").read(),
        ref_store.array("result/solution").read(),
        rtol=0,
        atol=1e-12,
    )


def test_upwind_boundary_layer(tmp_path, executors):
    sets = [
        "problem.kind=boundary-layer",
        "problem.eps=0.01",
        "problem.beta=[1.0, 1.0]",
        "scheme=upwind",
        "n_fine=80",
        "n_coarse=8",
        "tol=1e-9",
    ]
    _, m = run_pipeline(tmp_path, executors("sync"), sets=sets)
    assert m["converged"] and m["rel_error_direct"] <= 1e-7


def test_out_of_core_mode_gives_the_same_answer(tmp_path, executors):
    ex = executors("sync")
    ref_store, ref = run_pipeline(tmp_path, ex, sets=["direct_reference=false"], name="mem")
    store, m = run_pipeline(
        tmp_path, ex, sets=["out_of_core=true", "direct_reference=false"], name="ooc"
    )
    assert m["converged"] and m["iterations"] == ref["iterations"]
    np.testing.assert_array_equal(
        store.array("result/solution").read(), ref_store.array("result/solution").read()
    )


def test_a_resumed_run_counts_the_passes_of_an_uninterrupted_one(tmp_path, executors):
    """``passes`` continues from the checkpoint (it counted the last session only)."""
    ex = executors("sync")
    sets = ["checkpoint_s=0", "keep_work=true", "solver=stationary", "max_iter=6", "tol=1e-14"]
    run = tg.run(PIPELINE.name, preset="quick", sets=sets, cluster=ex, store=tmp_path / "r")
    store = run.url.rsplit("/", 2)[0]
    ckpts = run.checkpoint_steps()
    run.mark_failed("killed")
    for step in ckpts[-1:]:  # resume from the one before the last: the solve continues
        run.delete(f"checkpoints/{step:08d}")
    again = tg.run(PIPELINE.name, resume=run.run_id, cluster=ex, store=store)
    assert again.metrics["iterations"] == run.metrics["iterations"] == 6
    assert again.metrics["passes"] == run.metrics["passes"]


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_resume_from_a_damaged_iterate_starts_over(tmp_path, executors, damage):
    """The checkpoint's checksums cover its own arrays; the iterate it refers to is a
    scratch vector, checked on resume against the per-block sums of squares recorded when
    it was written. A damaged one makes the resume start over instead of continuing
    from wrong values (or failing on an unreadable chunk)."""
    from pathlib import Path

    ex = executors("sync")
    sets = ["checkpoint_s=0", "keep_work=true", "solver=stationary", "max_iter=6", "tol=1e-14"]
    run = tg.run(PIPELINE.name, preset="quick", sets=sets, cluster=ex, store=tmp_path / "r")
    store = run.url.rsplit("/", 2)[0]
    ref = run.array("result/solution").read()
    run.mark_failed("killed")
    run.delete(f"checkpoints/{run.checkpoint_steps()[-1]:08d}")
    saved = run.load_checkpoint()
    assert saved.step == 5 and len(saved.scalars["x_sumsq"]) == 4
    chunks = sorted(
        p
        for p in (Path(run.url) / "work" / f"x{saved.scalars['x']}").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    assert chunks
    if damage == "deleted":
        chunks[-1].unlink()
    else:
        chunks[-1].write_bytes(chunks[-1].read_bytes()[:7])
    again = tg.run(PIPELINE.name, resume=run.run_id, cluster=ex, store=store)
    assert again.metrics["iterations"] == 6
    assert again.restored == [{"checkpoint": None, "skipped": 0}]
    assert again.metrics["passes"] == run.metrics["passes"]  # the check is not a pass
    assert "checkpoints" not in again.group or again.checkpoint_steps()[0] <= 6
    np.testing.assert_array_equal(again.array("result/solution").read(), ref)


@pytest.mark.parametrize(
    "solver, device, cluster",
    [
        ("krylov", "cpu", "local:2"),
        ("stationary", "cpu", "local:2"),
        ("krylov", "array-api-strict", "local:2"),
        ("krylov", "cpu", "threads:5"),
    ],
)
def test_halos_sent_between_workers_give_the_out_of_core_bits(
    tmp_path, executors, solver, device, cluster
):
    """In memory, work vectors stay in the workers and the parts of them that other
    workers' blocks read are sent through the driver. Blocks of one box (the smoother
    reads past the neighbouring block) in contiguous runs: on two worker processes one
    interface; on five workers 36 blocks split 8/7/7/7/7, so runs end mid-row (a
    staircase) and middle workers are read from both sides. The same bits as out of
    core, where every vector goes through Zarr, and only the solution buffers reached
    Zarr; also where the block kernels run on another array library (the GPU code path,
    halos sent from and to its arrays)."""
    sets = [
        "problem.kind=variable", "n_fine=30", "n_coarse=6", "boxes_per_block=1",
        "direct_reference=false", f"solver={solver}", "max_iter=8", "tol=1e-9",
        "keep_work=true", f"device={device}",
    ]  # fmt: skip
    ref, m_ref = run_pipeline(tmp_path, executors("sync"), sets=[*sets, "out_of_core=true"])
    got, m = run_pipeline(tmp_path, executors(cluster), sets=sets, name="mem")
    assert m["workers"] == int(cluster.split(":")[1]) and m["blocks"] == 36
    assert m["iterations"] == m_ref["iterations"] and m["passes"] == m_ref["passes"]
    np.testing.assert_array_equal(
        got.array("result/solution").read(), ref.array("result/solution").read()
    )

    def written(run):
        work = run.group["work"]
        return {name for name, a in work.arrays() if a.nchunks_initialized}

    assert {"x0", "x1"} <= written(got) <= {"x0", "x1", "x2"}
    assert written(ref) > {"x0", "x1", "B", "s0", "z"}


TRIM = """
import numpy as np, psutil
from tilegraph.pipelines.domain_split.worker import _malloc_trim, _trim_heap
assert _malloc_trim() is not None
big = np.ones(2 << 20)
del big  # a freed 16 MiB mapping raises glibc's mmap threshold to its size
keep = [np.ones(1 << 17) for _ in range(100)]  # 100 x 1 MiB, now from the heap
last = keep.pop()
del keep  # free, but below a chunk still in use: the heap cannot shrink by itself
before = psutil.Process().memory_info().rss
_trim_heap()
print((before - psutil.Process().memory_info().rss) / 2**20)
"""


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
    reason="malloc_trim is glibc's",
)
def test_the_last_pass_hands_freed_heap_pages_back():
    """What `finalize` calls last: free heap pages left below a chunk in use go back to
    the OS (a worker kept 110 MiB of them through the output phase)."""
    # glibc's malloc settings from the environment (or another allocator) change what
    # stays in the heap: the check is of glibc's defaults, which workers start with
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }
    out = subprocess.run(
        [sys.executable, "-c", TRIM], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 50, out.stdout  # of the 99 MiB freed
