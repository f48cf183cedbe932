"""The ttn pipeline end to end: same bits on sync, Dask and Ray, results readable with
xarray, bad input refused before a store exists, and a killed run resumed to the
uninterrupted answer."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tilegraph as tg
import xarray as xr
from scipy.sparse.linalg import expm_multiply
from tilegraph.tasks.ttn import operators, trees
from tilegraph.tasks.ttn import state as st

ROOT = Path(__file__).resolve().parents[1]
SETS = ["T=0.5", "h=0.05", "checkpoint_s=0"]


def run_on(executor, tmp_path, preset="quick", sets=SETS):
    run = tg.run("ttn", preset=preset, sets=list(sets), cluster=executor, store=tmp_path / "runs")
    return run, run.metrics


@pytest.fixture(scope="module")
def sync_result(executors, tmp_path_factory):
    return run_on(executors("sync"), tmp_path_factory.mktemp("sync"))


def test_quick_run_writes_history_checkpoints_and_summary(sync_result):
    run, m = sync_result
    for key in ("final_error_vs_exact", "max_rank", "norm_drift", "energy_drift", "steps"):
        assert key in m
    assert m["steps"] == 10
    ds = xr.open_zarr(run.url + "/history", consolidated=False)
    assert ds.sizes["time"] == 11 and ds.magnetization.shape == (11, 8)
    np.testing.assert_allclose(ds.time.values, np.arange(11) * 0.05)
    # every recorded observable agrees with the metrics and is physical
    assert m["max_rank"] == int(ds.max_rank.max()) <= 16
    assert abs(m["norm_drift"] - float(abs(ds.norm - ds.norm[0]).max())) < 1e-15
    assert float(ds.error[0]) < 1e-14
    # the final TTN is a result: its dense vector reproduces the recorded norm, energy
    # and magnetisation; the checkpoints are gone with the complete run
    assert run.load_checkpoint() is None
    tree = trees.balanced_binary(8)
    y = st.to_dense(tree, [run.array(f"state/node_{i:03d}").read() for i in range(tree.n_nodes)])
    H = operators.to_dense(operators.transverse_field_ising(8))
    assert abs(np.linalg.norm(y) - float(ds.norm[-1])) < 1e-12
    assert abs(np.vdot(y, H @ y).real - float(ds.energy[-1])) < 1e-10
    Z = np.array([1.0, -1.0])
    for site in range(8):
        zs = np.kron(np.kron(np.ones(2**site), Z), np.ones(2 ** (7 - site)))
        assert abs(np.vdot(y, zs * y).real - float(ds.magnetization[-1, site])) < 1e-12
    # against the exact evolution of the all-up start: the run's own error metric, and
    # small (the ramp-less first step alone makes 1.3e-2)
    np.testing.assert_array_equal(ds.magnetization[0], np.ones(8))
    y0 = np.zeros(2**8, dtype=complex)
    y0[0] = 1.0
    err = np.linalg.norm(y - expm_multiply(-0.5j * H, y0))
    assert err == pytest.approx(m["final_error_vs_exact"], rel=1e-6) and err < 1e-3
    assert os.path.getsize(run.plot_path) > 10_000


def test_a_history_cut_short_mid_append_resumes(executors, tmp_path):
    """A kill while history rows were appended leaves its arrays unequal in length
    (seen: magnetization 12 rows, energy 11); a resume cuts them back to the checkpoint's
    rows instead of failing on xarray's "conflicting sizes" for ever."""
    import zarr

    run, _ = run_on(executors("sync"), tmp_path, sets=[*SETS, "T=0.3", "keep_work=true"])
    hist = zarr.open_group(run.url, mode="r+")["history"]
    for var in ("magnetization", "max_rank"):  # one more (garbage) row than the others
        arr = hist[var]
        arr.resize((arr.shape[0] + 1, *arr.shape[1:]))
    run.mark_failed("killed mid-append")
    resumed = tg.run(
        "ttn", resume=run.run_id, cluster=executors("sync"), store=run.url.rsplit("/", 2)[0]
    )
    ds = xr.open_zarr(resumed.url + "/history", consolidated=False)
    assert resumed.status == "complete" and ds.sizes["time"] == 7
    np.testing.assert_allclose(ds.time.values, np.arange(7) * 0.05)


def test_rows_resized_but_unwritten_do_not_restart_the_step_counter(executors, tmp_path):
    """A kill between the resize of the history's arrays and the write of the new rows
    leaves rows that read as the fill value (step 0, time 0). A resume from the
    checkpoint before took them for its rows: it restarted the step counter at 0 from
    the checkpoint's state and integrated past T (seen: error 1.79 instead of 0.013)."""
    import zarr

    run, ref = run_on(executors("sync"), tmp_path, sets=[*SETS, "T=0.3", "keep_work=true"])
    want = xr.open_zarr(run.url + "/history", consolidated=False).load()
    run.delete(f"checkpoints/{run.checkpoint_steps()[-1]:08d}")  # continue from step 5
    hist = zarr.open_group(run.url, mode="r+")["history"]
    for _, arr in hist.arrays():
        if "time" in (arr.metadata.dimension_names or ()):
            arr.resize((arr.shape[0] + 3, *arr.shape[1:]))
    run.mark_failed("killed mid-append")
    resumed = tg.run(
        "ttn", resume=run.run_id, cluster=executors("sync"), store=run.url.rsplit("/", 2)[0]
    )
    assert resumed.restored == [{"checkpoint": 5, "skipped": 5}]
    got = xr.open_zarr(resumed.url + "/history", consolidated=False)
    np.testing.assert_array_equal(got.step.values, np.arange(7))
    np.testing.assert_allclose(got.error.values, want.error.values, rtol=1e-12)
    assert resumed.metrics["final_error_vs_exact"] == pytest.approx(
        ref["final_error_vs_exact"], rel=1e-12
    )


@pytest.mark.parametrize("column", ["step", "time"])
def test_a_history_missing_the_checkpoints_rows_starts_over(executors, tmp_path, column):
    """A checkpoint whose history rows are not all there (rows of other steps in their
    place, or not written: the fill value) is not continued from: the run starts over
    and gives the same answer."""
    import zarr

    run, ref = run_on(executors("sync"), tmp_path, sets=[*SETS, "T=0.3", "keep_work=true"])
    arr = zarr.open_group(run.url, mode="r+")[f"history/{column}"]
    arr[3] = 0
    run.mark_failed("damaged")
    resumed = tg.run(
        "ttn", resume=run.run_id, cluster=executors("sync"), store=run.url.rsplit("/", 2)[0]
    )
    assert resumed.restored == [{"checkpoint": None, "skipped": 0}]
    got = xr.open_zarr(resumed.url + "/history", consolidated=False)
    np.testing.assert_array_equal(got.step.values, np.arange(7))
    assert resumed.metrics["final_error_vs_exact"] == pytest.approx(
        ref["final_error_vs_exact"], rel=1e-12
    )


def _namespaces(monkeypatch, name: str, arg: int) -> set:
    """Record the array namespace of argument ``arg`` of every call of ``integrator.name``
    (of ``subtree_update``: the workers' calls, not the driver's from the root)."""
    from array_api_compat import array_namespace
    from tilegraph.tasks.ttn import integrator

    seen = set()
    fn = getattr(integrator, name)

    def spy(*args, **kwargs):
        if name != "subtree_update" or args[2] != 0:
            seen.add(array_namespace(args[arg]).__name__)
        return fn(*args, **kwargs)

    monkeypatch.setattr(integrator, name, spy)
    return seen


def _assert_same_history(got, ref, atol=1e-10):
    assert got.sizes["time"] == ref.sizes["time"]
    for var in ("ranks", "rejected"):
        np.testing.assert_array_equal(got[var].values, ref[var].values)
    for var in ("norm", "energy", "magnetization", "error"):
        np.testing.assert_allclose(got[var].values, ref[var].values, rtol=0, atol=atol)


@pytest.mark.parametrize(("spec", "depth", "tops"), [("local:2", 2, 4), ("sync", 3, 8)])
def test_deeper_subtrees_give_the_same_bits(executors, sync_result, tmp_path, spec, depth, tops):
    """``subtree_depth`` only moves nodes between the stateful workers: the subtrees, one
    branch worker per child of the root (which holds the nodes above them, the driver
    relaying between the two) and the driver (the root). The arithmetic is the same, so
    the run is the depth-1 run bit for bit, steps redone by the rejection test (a
    branch's two-call K-step and its restart) included."""
    ref_run, ref_m = sync_result
    assert ref_m["rejected_steps"] > 0  # the rejection test's eta path ran
    run, m = run_on(executors(spec), tmp_path, sets=[*SETS, f"subtree_depth={depth}"])
    assert len(m["subtree_busy_s"]) == tops
    assert len(m["branch_busy_s"]) == 2 and min(m["branch_busy_s"]) > 0
    assert m["rejected_steps"] == ref_m["rejected_steps"]
    got = xr.open_zarr(run.url + "/history", consolidated=False)
    ref = xr.open_zarr(ref_run.url + "/history", consolidated=False)
    _assert_same_history(got, ref, atol=0)
    for i in range(trees.balanced_binary(8).n_nodes):
        np.testing.assert_array_equal(
            run.array(f"state/node_{i:03d}").read(), ref_run.array(f"state/node_{i:03d}").read()
        )


def test_cuts_cover_every_path_once():
    """``Tree.cut``: the subtree tops for each depth, on a balanced, a Tucker and an
    unbalanced tree (a leaf above the depth is its own top)."""
    b = trees.balanced_binary(8)
    assert b.cut(1) == tuple(b.children[0])
    assert len(b.cut(2)) == 4 and len(b.cut(3)) == 8
    assert b.cut(3) == b.cut(9) == tuple(sorted(b.leaf_nodes, key=b.subtree(0).index))
    assert trees.tucker(5).cut(2) == trees.tucker(5).cut(1) == tuple(range(1, 6))
    odd = trees.from_spec([0, [1, [2, 3]]])
    for depth in (1, 2, 3):
        tops = odd.cut(depth)
        for leaf in odd.leaf_nodes:  # exactly one top on every root-to-leaf path
            path, n = [], leaf
            while n != 0:
                path.append(n)
                n = odd.parent[n]
            assert sum(t in path for t in tops) == 1, (depth, tops, leaf)
    assert [len(odd.cut(k)) for k in (1, 2, 3)] == [2, 3, 4]


@pytest.mark.parametrize("case", ["subtrees", "grouped", "nodes"])
def test_generic_device_path_gives_the_numpy_answer(
    executors, tmp_path, sync_result, monkeypatch, case
):
    """device=array-api-strict runs the workers' kernels on array-api-strict arrays (the
    CuPy code path, on a CPU) and gives the NumPy answer: ``subtrees`` (one actor per
    child of the root), ``grouped`` (several subtrees per actor, as with fewer GPUs than
    subtrees) and ``nodes`` (every K-step and Galerkin step a task)."""
    from tilegraph.pipelines.ttn import driver

    sets = [*SETS, "device=array-api-strict"]
    ref_run, ref_m = sync_result
    if case == "grouped":
        slots = []

        def one_slot(ex, device, n):
            slots.append(n)
            return 1

        monkeypatch.setattr(driver, "subtree_slots", one_slot)
    if case == "nodes":
        cpu = ["T=0.2", "h=0.05", "schedule=nodes"]
        ref_run, ref_m = run_on(executors("sync"), tmp_path / "cpu", sets=cpu)
        sets = [*cpu, "device=array-api-strict"]
    # the workers' kernels: the subtree K-step (subtrees), each task (nodes)
    spied = ("_dispatch", 1) if case == "nodes" else ("subtree_update", 3)
    seen = _namespaces(monkeypatch, *spied)
    run, m = run_on(executors("sync"), tmp_path / "strict", sets=sets)
    assert seen == {"array_api_strict"}
    if case == "grouped":
        assert slots == [2]  # both subtrees of the binary tree in one actor
    assert m["steps"] == ref_m["steps"] and m["max_rank"] == ref_m["max_rank"]
    got = xr.open_zarr(run.url + "/history", consolidated=False)
    ref = xr.open_zarr(ref_run.url + "/history", consolidated=False)
    _assert_same_history(got, ref)
    # the final state went back to the host and is the NumPy run's
    for i in range(trees.balanced_binary(8).n_nodes):
        np.testing.assert_allclose(
            run.array(f"state/node_{i:03d}").read(),
            ref_run.array(f"state/node_{i:03d}").read(),
            rtol=0,
            atol=1e-12,
        )


def test_convergence_study_is_first_order(executors, tmp_path):
    sets = ["h_list=[0.25, 0.125, 0.0625]"]
    run, m = run_on(executors("sync"), tmp_path, "convergence", sets)
    conv = xr.open_zarr(run.url + "/convergence", consolidated=False)
    assert list(conv.h.values) == [0.25, 0.125, 0.0625]
    assert m["convergence_slope"] >= 0.85
    assert float(conv.error[-1]) == m["final_error_vs_exact"] < float(conv.error[0])


def tilegraph(*args, timeout=240):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "tilegraph.pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["r_min=5", "r_max=3"], "r_max"),
        (["h=0.3"], "whole number of steps"),
        (["d=20"], "exact_reference"),
        (["tree=spec", "tree_spec=[0, [1, 1]]"], "tree_spec"),
        (["model.kind=heisenberg"], "model.kind"),
        (["device=gpu"], "device"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_no_store(tmp_path, sets, needle):
    args = [a for s in sets for a in ("--set", s)]
    out = tilegraph("run", "ttn", *args, "--store", str(tmp_path / "s"), "--cluster", "sync")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not (tmp_path / "s").exists()


def test_a_step_failing_half_way_leaves_no_branch_waiting(executors, monkeypatch):
    """A step that fails between a branch's two calls (here: while the driver gathers
    the subtrees' K-steps) ends the branches' background steps, which would otherwise
    wait for results and hold the branches; the next step after loading the state again
    is the step of a fresh driver."""
    from tilegraph import get_pipeline
    from tilegraph.pipelines.config import build_config
    from tilegraph.pipelines.ttn import driver

    cfg = build_config(get_pipeline("ttn"), "quick", sets=["subtree_depth=2"])
    ex = executors("sync")

    def waiting():
        return [t for t in threading.enumerate() if t.name.startswith("ttn-branch")]

    fresh = driver.BUGDriver(cfg, ex)
    start = fresh.initial()
    fresh.load(start)
    fresh.advance(cfg.h)

    drv = driver.BUGDriver(cfg, ex)
    drv.load(start)
    gather = driver._Relay.gather

    def fail(self, tokens):
        raise RuntimeError("the driver failed")

    monkeypatch.setattr(driver._Relay, "gather", fail)
    with pytest.raises(RuntimeError, match="the driver failed"):
        drv.advance(cfg.h)
    assert len(drv.branches) == 2 and waiting() == []
    monkeypatch.setattr(driver._Relay, "gather", gather)
    drv.load(start)
    drv.advance(cfg.h)
    for a, b in zip(drv.full_state(), fresh.full_state(), strict=True):
        np.testing.assert_array_equal(a, b)
