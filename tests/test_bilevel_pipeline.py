"""The bilevel pipeline end to end: real executors, real Zarr stores read back with
xarray, judged against the closed-form optimum and against the same iteration run
sequentially in one process."""

import os

import numpy as np
import pytest
import tilegraph as tg
import xarray as xr
from tilegraph import storage
from tilegraph.pipelines import cli
from tilegraph.pipelines.bilevel import PIPELINE
from tilegraph.pipelines.config import build_config
from tilegraph.tasks.bilevel.methods import METHODS
from tilegraph.tasks.bilevel.sequential import run_sequential


def run_pipeline(tmp_path, executor, preset="quick", sets=(), name="run"):
    run = tg.run(
        PIPELINE.name, preset=preset, sets=list(sets), cluster=executor, store=tmp_path / name
    )
    return run, run.metrics


def _open(store, name):
    return xr.open_zarr(store.url + "/" + name, consolidated=False)


def test_quick_reaches_x_star_and_equals_the_sequential_iteration(tmp_path, executors):
    store, m = run_pipeline(tmp_path, executors("sync"), sets=["eval_every=100"])
    assert m["converged"] and m["rel_dist_to_optimum"] <= 1e-2
    hist = _open(store, "history")
    assert hist.rel_dist.values[0] == pytest.approx(1.0)  # x0 = 0
    assert hist.rel_dist.values[-1] == m["rel_dist_to_optimum"]
    assert int(hist.iteration.values[-1]) == m["iterations"]
    assert hist.grad_norm.values[-1] < 0.05 * hist.grad_norm.values[0]
    res = _open(store, "result")
    assert res.y.dims == ("block", "y_dim") and res.y.shape == (50, 5)
    x_star = res.x_star.values
    assert np.linalg.norm(res.x.values - x_star) <= 1e-2 * np.linalg.norm(x_star)

    cfg = build_config(PIPELINE, "quick", sets=["eval_every=100"])
    p = cfg.problem.build()
    np.testing.assert_array_equal(x_star, p.x_star)
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
        p.x_star,
        cfg.tol,
    )
    np.testing.assert_array_equal(res.x.values, x)
    assert len(dist) == m["iterations"]
    assert store.plot_path and os.path.getsize(store.plot_path) > 10_000
    assert "checkpoints" not in store.group


SHORT = ["max_iter=12", "tol=null", "eval_every=4", "checkpoint_s=0", "problem.m=12"]


@pytest.mark.parametrize(
    "preset,sets",
    [
        *[("quick", [*SHORT, f"method={mm}", "blocks_per_iter=4"]) for mm in METHODS],
        # logistic-hpo: the batch gathers and the scatter-add of the x-gradients
        ("paper", ["max_iter=4", "eval_every=2", "problem.m=10", "blocks_per_iter=4"]),
    ],
    ids=[*METHODS, "paper"],
)
def test_generic_device_path_gives_the_numpy_answer(tmp_path, executors, preset, sets):
    # device=array-api-strict runs the block tasks on array-api-strict arrays: the code
    # path CuPy takes, checked on a CPU (tests/test_gpu.py runs it on a GPU)
    ex = executors("sync")
    ref_store, ref = run_pipeline(tmp_path, ex, preset, sets, name="numpy")
    store, m = run_pipeline(tmp_path, ex, preset, [*sets, "device=array-api-strict"], "strict")
    assert m["iterations"] == ref["iterations"] > 0
    for key in ("rel_dist_to_optimum", "grad_norm", "upper_objective"):
        if ref[key] is None:
            assert m[key] is None
        else:
            assert m[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-12)
    for name in ("result", "history"):
        a, b = _open(store, name), _open(ref_store, name)
        assert set(a.data_vars) == set(b.data_vars)
        for var in a.data_vars:
            np.testing.assert_allclose(a[var].values, b[var].values, rtol=1e-10, atol=1e-12)
    method = m["method"]
    np.testing.assert_allclose(
        store.array(f"state/{method}").read(),
        ref_store.array(f"state/{method}").read(),
        rtol=1e-10,
        atol=1e-12,
    )


def test_f2sa_run_writes_its_state_per_block(tmp_path, executors):
    store, m = run_pipeline(tmp_path, executors("sync"), sets=[*SHORT, "method=f2sa"])
    st = store.group["state/f2sa"]
    assert st.shape == (12, 3, 10) and st.chunks == (1, 1, 10)
    assert tuple(st.metadata.dimension_names) == ("block", "slot", "component")
    assert np.isfinite(m["upper_objective"]) and m["iterations"] == 12


def test_paper_preset_without_known_optimum(tmp_path, executors):
    """Logistic HPO (x* unknown): no distance is reported, F and |grad F| are."""
    store, m = run_pipeline(
        tmp_path, executors("sync"), preset="paper", sets=["max_iter=6", "eval_every=3"]
    )
    assert m["rel_dist_to_optimum"] is None and not m["converged"]
    hist = _open(store, "history")
    assert "rel_dist" not in hist and list(hist.iteration.values) == [0, 3, 6]
    assert np.all(np.isfinite(hist.upper_objective.values))
    assert hist.grad_norm.values[0] > 0
    res = _open(store, "result")
    assert "x_star" not in res and res.x.shape == (400,) and res.y.shape == (100, 31)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "blocks_per_iter=51"], "blocks_per_iter"),
        (["--set", "method=adam"], "method"),
        (["--set", "problem.kind=digits-ridge", "--set", "problem.m=5"], "m must be 10"),
        (["--set", "eta=-1"], "eta"),
        (["--set", "problem.model=logistic"], "model applies to kind=dataset, not kind=quadratic"),
        (["--set", "problem.kind=digits-ridge", "--set", "problem.dim_x=3"], "dim_x applies"),
        (["--set", "bogus=1"], "bogus"),
        (["--set", "device=gpu"], "device"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, needle):
    store = tmp_path / "runs"
    code = cli.main(["run", "bilevel", "--store", str(store), "--cluster", "sync", *args])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert not store.exists()


def test_compared_method_and_resume_after_it_failed(tmp_path, executors, monkeypatch):
    import tilegraph.pipelines.bilevel.runner as runner

    ex = executors("sync")
    sets = [*SHORT, "method=bsvrb-v1", "compare=[sgd]"]
    ref, m = run_pipeline(tmp_path, ex, sets=sets, name="ref")
    # a compared method's history is that of its own run
    alone, m_sgd = run_pipeline(tmp_path, ex, sets=[*SHORT, "method=sgd"], name="alone")
    for var in ("rel_dist", "grad_norm", "upper_objective"):
        np.testing.assert_array_equal(
            _open(ref, "compare_sgd")[var].values, _open(alone, "history")[var].values
        )
    assert m["sgd_iterations"] == m_sgd["iterations"] == 12
    assert "done" not in ref.group and "checkpoints" not in ref.group
    write = runner.write_history

    def failing(st, name, *args, **kwargs):
        if name == "compare_sgd":
            raise OSError("disk full")
        return write(st, name, *args, **kwargs)

    monkeypatch.setattr(runner, "write_history", failing)
    with pytest.raises(OSError):
        tg.run(PIPELINE.name, sets=sets, cluster=ex, store=tmp_path / "broken")
    monkeypatch.setattr(runner, "write_history", write)
    (info,) = storage.Root(tmp_path / "broken").runs()
    store = storage.Root(tmp_path / "broken").open(info["run_id"])
    assert store.status == "failed"
    assert store.has("done/bsvrb-v1")  # the main method is finished and kept
    tg.run(PIPELINE.name, resume=store.run_id, cluster=ex, store=tmp_path / "broken")
    # the finished main method's 12 iterations count as skipped, with sgd's 12
    assert store.restored == [{"checkpoint": 25, "skipped": 24}]
    for name in ("history", "result", "compare_sgd"):
        a, b = _open(store, name), _open(ref, name)
        for var in b.data_vars:
            np.testing.assert_array_equal(a[var].values, b[var].values)


def test_an_unset_rho_stays_unset_in_a_stored_config():
    """A resume rebuilds the config from the stored one, which holds every field: the
    dataset kind's rho = 0 must not turn into the synthetic problems' 0.1 there."""
    from tilegraph.pipelines.bilevel.config import RHO
    from tilegraph.pipelines.config import build_config

    sets = ["problem.kind=dataset", "problem.dataset=blocks.zarr"]
    cfg = build_config(PIPELINE, sets=sets)
    again = build_config(PIPELINE, base=cfg.model_dump(mode="json"))
    assert cfg.problem.rho is None and again.problem.rho is None
    quad = build_config(PIPELINE, base=build_config(PIPELINE).model_dump(mode="json"))
    assert quad.problem.build().rho == RHO


@pytest.mark.parametrize("damaged", [1, 2])
def test_a_damaged_newest_checkpoint_starts_the_method_over(tmp_path, executors, damaged):
    """The blocks' state lives in slots outside the checkpoints; once a newer checkpoint
    was complete, the slots an older one refers to may be overwritten. A resume whose
    newest checkpoint fails its checksum starts over instead of continuing from the
    older one with a mix of states, and gives the uninterrupted run's bits."""
    import zarr

    ex = executors("sync")
    ref, m = run_pipeline(tmp_path, ex, sets=[*SHORT, "keep_work=true"])
    steps = ref.checkpoint_steps()
    assert steps[-1] == 12 and len(steps) == 3
    want = {n: _open(ref, n).load() for n in ("history", "result")}
    for step in steps[-damaged:]:
        x = zarr.open_group(ref.url, mode="r+")[f"checkpoints/{step:08d}/x"]
        x[0] = x[0] + 1.0
    ref.delete("done")
    ref.mark_failed("killed")
    again = tg.run(PIPELINE.name, resume=ref.run_id, cluster=ex, store=tmp_path / "run")
    assert again.restored == [{"checkpoint": None, "skipped": 0}]
    assert again.metrics["iterations"] == m["iterations"] == 12
    for name, ds in want.items():
        got = _open(again, name)
        for var in ds.data_vars:
            np.testing.assert_array_equal(got[var].values, ds[var].values)
