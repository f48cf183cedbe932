"""The lifecycle the framework owns (``execute`` and ``RunContext``): phases and common
metrics with one meaning, scratch arrays and done markers removed once a run is
complete (kept with ``keep_work``), figures saved and closed."""

import pickle
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tilegraph  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from tilegraph import cluster, storage  # noqa: E402
from tilegraph.pipelines import launch  # noqa: E402
from tilegraph.pipelines.base import Deferred, Pipeline, PipelineConfig  # noqa: E402
from tilegraph.pipelines.execute import execute  # noqa: E402


class Config(BaseModel):
    keep_work: bool = False
    fail_in_output: bool = False


def _run(cfg: Config, ctx) -> dict:
    """Sleeps a known time per phase, makes scratch, a done marker, a checkpoint and a
    figure, the way the built-in pipelines do."""
    time.sleep(0.05)
    if ctx.is_done("part-1"):
        assert ctx.resume and ctx.has_scratch("x")
    v = ctx.scratch("x", (4,), (2,), ("i",), reuse=True)
    ctx.enter("solve")
    time.sleep(0.15)
    v.write((slice(None),), np.arange(4.0))
    ctx.store.save_checkpoint(1, arrays={"h": np.zeros(1)}, scalars={"t": 1})
    ctx.mark_done("part-1")
    ctx.enter("output")
    if cfg.fail_in_output:
        raise OSError("disk full")
    fig = plt.figure()
    ctx.save_figure(fig)
    assert not plt.fignum_exists(fig.number)  # saved and closed
    time.sleep(0.05)
    return {"answer": 42.0}


PIPE = Pipeline(name="lifecycle-demo", description="test", config=Config, run=_run)


@pytest.fixture
def ex():
    with cluster.connect("sync") as e:
        yield e


def _new(tmp_path, cfg):
    return storage.Root(tmp_path / "runs").create(PIPE.name, config=cfg.model_dump())


def test_phases_and_common_metrics(tmp_path, ex):
    run = _new(tmp_path, Config())
    t0 = time.perf_counter()
    m = execute(PIPE, Config(), run, ex)
    total = time.perf_counter() - t0
    assert m["answer"] == 42.0 and run.status == "complete"
    assert m["setup_s"] >= 0.05 and m["solve_s"] >= 0.15 and m["output_s"] >= 0.05
    assert m["setup_s"] + m["solve_s"] + m["output_s"] <= m["wall_s"] <= total
    assert "worker_restarts" not in m
    # what only a running run needs is gone: checkpoints, scratch, done markers
    assert not run.has("work") and not run.has("done") and run.checkpoint_steps() == []
    assert run.read_bytes("summary.png")[:8] == b"\x89PNG\r\n\x1a\n"  # saved, as a PNG


def test_keep_work_keeps_scratch_and_checkpoints(tmp_path, ex):
    cfg = Config(keep_work=True)
    run = _new(tmp_path, cfg)
    execute(PIPE, cfg, run, ex)
    assert run.has("work/x") and run.has("done/part-1") and run.checkpoint_steps() == [1]


def test_a_failed_run_keeps_what_resume_needs(tmp_path, ex):
    cfg = Config(fail_in_output=True)
    run = _new(tmp_path, cfg)
    with pytest.raises(OSError):
        execute(PIPE, cfg, run, ex)
    assert run.status == "failed"
    assert run.has("work/x") and run.has("done/part-1") and run.checkpoint_steps() == [1]
    ok = Config()
    run.mark_running()
    m = execute(PIPE, ok, run, ex, resume=True)
    assert m["answer"] == 42.0 and not run.has("work")


# --- checkpoints: one cadence field, restore and validity owned by the framework ----
class Counter(PipelineConfig):
    steps: int = 6
    fail_at: int | None = None
    fail_resumed_at: int | None = None


def _count(cfg: Counter, ctx) -> dict:
    """Sums 1..steps, offering a checkpoint after every step; fails once at ``fail_at``."""
    saved = ctx.restore(valid=lambda c: c.scalars["steps"] == cfg.steps)
    k, total = (saved.scalars["k"], saved.scalars["total"]) if saved else (0, 0)
    with ctx.progress(cfg.steps, "count", done=k) as bar:
        while k < cfg.steps:
            k, total = k + 1, total + k + 1
            bar.update(1)
            if k == (cfg.fail_resumed_at if ctx.resume else cfg.fail_at):
                raise RuntimeError("boom")
            ctx.checkpoint(k, {"none": np.zeros(1)}, {"k": k, "total": total, "steps": cfg.steps})
    return {"total": total, "per_step_s": bar.seconds_per_step()}


COUNT = Pipeline(name="count", description="test", config=Counter, run=_count)


@pytest.mark.parametrize(("every", "saved"), [(0, [2, 3, 4]), (None, []), (3600, [])])
def test_checkpoint_cadence_is_the_config_field(tmp_path, ex, every, saved):
    cfg = Counter(checkpoint_s=every, fail_at=5)
    run = storage.Root(tmp_path / "runs").create("count", config=cfg.model_dump())
    with pytest.raises(RuntimeError):
        execute(COUNT, cfg, run, ex)
    assert run.checkpoint_steps() == saved  # 0: every step (newest 3 kept); else none due


def test_resume_restores_the_newest_checkpoint_and_records_it(tmp_path, ex):
    cfg = Counter(checkpoint_s=0, fail_at=5)
    run = storage.Root(tmp_path / "runs").create("count", config=cfg.model_dump())
    with pytest.raises(RuntimeError):
        execute(COUNT, cfg, run, ex)
    run.mark_running()
    m = execute(COUNT, cfg, run, ex, resume=True)
    assert m["total"] == 21 and run.status == "complete"  # 1 + ... + 6, from step 4
    assert run.restored == [{"checkpoint": 4, "skipped": 4}]
    assert run.checkpoint_steps() == []  # removed once complete
    assert m["per_step_s"] >= 0


def test_a_resume_that_fails_records_what_it_restored(tmp_path, ex):
    cfg = Counter(checkpoint_s=0, fail_at=3, fail_resumed_at=5)
    run = storage.Root(tmp_path / "runs").create("count", config=cfg.model_dump())
    with pytest.raises(RuntimeError):
        execute(COUNT, cfg, run, ex)
    run.mark_running()
    with pytest.raises(RuntimeError):
        execute(COUNT, cfg, run, ex, resume=True)
    assert run.status == "failed" and run.restored == [{"checkpoint": 2, "skipped": 2}]
    run.mark_running()
    m = execute(COUNT, Counter(checkpoint_s=0), run, ex, resume=True)
    assert m["total"] == 21
    assert run.restored == [{"checkpoint": 2, "skipped": 2}, {"checkpoint": 4, "skipped": 4}]


def test_a_run_started_over_leaves_no_checkpoints_of_its_earlier_life(tmp_path, ex):
    """Starting over (the newest checkpoint refused) removes the earlier life's
    checkpoints: their steps are above the new ones, so they stayed the newest and were
    refused again at every later resume, which started over each time."""
    run = storage.Root(tmp_path / "runs").create("count", config={})
    with pytest.raises(RuntimeError):
        execute(COUNT, Counter(checkpoint_s=0, fail_at=5), run, ex)
    assert run.checkpoint_steps() == [2, 3, 4]
    run.mark_running()
    again = Counter(steps=7, checkpoint_s=0, fail_resumed_at=3)  # refuses steps=6 ones
    with pytest.raises(RuntimeError):
        execute(COUNT, again, run, ex, resume=True)
    assert run.restored == [{"checkpoint": None, "skipped": 0}]
    assert run.checkpoint_steps() == [1, 2]
    run.mark_running()
    m = execute(COUNT, Counter(steps=7, checkpoint_s=0), run, ex, resume=True)
    assert m["total"] == 28 and run.restored[-1] == {"checkpoint": 2, "skipped": 2}


def test_an_invalid_checkpoint_starts_over(tmp_path, ex):
    cfg = Counter(checkpoint_s=0, fail_at=5)
    run = storage.Root(tmp_path / "runs").create("count", config=cfg.model_dump())
    with pytest.raises(RuntimeError):
        execute(COUNT, cfg, run, ex)
    run.mark_running()
    m = execute(COUNT, Counter(steps=7, checkpoint_s=0), run, ex, resume=True)
    assert m["total"] == 28 and run.restored == [{"checkpoint": None, "skipped": 0}]


# --- runners imported when a run starts ------------------------------------------------
SLOW_RUNNER = """
import time

time.sleep(0.3)  # a runner whose imports take a while


def run(cfg, ctx):
    return {"answer": 1.0}
"""


def test_a_deferred_runner_is_imported_before_the_clock_starts(tmp_path, ex, monkeypatch):
    (tmp_path / "slow_runner_mod.py").write_text(SLOW_RUNNER)
    monkeypatch.syspath_prepend(str(tmp_path))
    pipe = Pipeline(
        name="lifecycle-demo", description="test", config=Config,
        run=Deferred("slow_runner_mod:run"),
    )  # fmt: skip
    run = _new(tmp_path, Config())
    m = execute(pipe, Config(), run, ex)
    assert m["answer"] == 1.0 and run.status == "complete"
    assert m["wall_s"] < 0.3  # the import's 0.3 s is not the run's
    loaded = pickle.loads(pickle.dumps(pipe.run))  # by name, not with the function
    assert loaded.target == "slow_runner_mod:run" and loaded._fn is None


def test_a_runner_that_cannot_be_imported_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    broken = Pipeline(
        name="broken-runner", description="test", config=Config, presets={"quick": {}},
        run=Deferred("no_such_module_of_tilegraph:run"),
    )  # fmt: skip
    monkeypatch.setattr(launch, "get_pipeline", lambda name: broken)
    store = tmp_path / "runs"
    with pytest.raises(launch.UsageError, match="cannot import its runner no_such_module"):
        tilegraph.run("broken-runner", cluster="sync", store=store)
    assert not store.exists() or not any(store.rglob("*.json"))
    with pytest.raises(ValueError, match="module:name"):
        Deferred("no_colon")


class KilledWorker(Exception):
    """Named as Dask's: ``cluster.is_worker_lost`` knows it."""


def _losing(losses: int, progress: bool):
    """A run that loses a worker ``losses`` times, saving a newer checkpoint before each
    loss when ``progress`` (a run that gets on between losses), then completes."""
    calls = []

    def run(cfg: Config, ctx) -> dict:
        calls.append(ctx.resume)
        if len(calls) <= losses:
            step = len(calls) if progress else 1
            ctx.store.save_checkpoint(step, arrays={"h": np.zeros(1)}, scalars={"t": step})
            raise KilledWorker(f"loss {len(calls)}")
        return {"answer": 1.0}

    return Pipeline(name="losing-demo", description="test", config=Config, run=run), calls


def test_retries_count_losses_in_a_row_without_a_new_checkpoint(tmp_path, ex):
    """Five losses, each after a newer checkpoint: the run gets on, so it completes
    (a batch run renewed for hours loses workers any number of times); three losses with
    no checkpoint saved in between exhaust retries=2."""
    pipe, calls = _losing(5, progress=True)
    lines = []
    run = storage.Root(tmp_path / "a").create(pipe.name, config=Config().model_dump())
    m = execute(pipe, Config(), run, ex, retries=2, log=lines.append)
    assert m["worker_restarts"] == 5 and run.status == "complete"
    assert calls == [False, True, True, True, True, True]
    assert "retry 1 of 2)" in lines[0] and "retry 1 of 2; 5 in all)" in lines[-1]

    pipe, calls = _losing(5, progress=False)
    lines = []
    run = storage.Root(tmp_path / "b").create(pipe.name, config=Config().model_dump())
    with pytest.raises(KilledWorker, match="loss 3"):
        execute(pipe, Config(), run, ex, retries=2, log=lines.append)
    assert run.status == "failed" and len(calls) == 3
    assert ["retry 1 of 2)" in lines[0], "retry 2 of 2)" in lines[1]] == [True, True]
