"""The picard pipeline end to end: real executors, real Zarr stores read back with
xarray, judged against the sequential sampler run on the same pre-drawn noise."""

import numpy as np
import pytest
import tilegraph as tg
import xarray as xr
from tilegraph import storage
from tilegraph.pipelines.config import ConfigError, build_config
from tilegraph.pipelines.picard import PIPELINE
from tilegraph.tasks.picard.samplers import HISTORY_COLUMNS

SMALL = ["n_samples=8", "batch_size=4"]


def run_pipeline(tmp_path, executor, preset="quick", sets=(), name="run"):
    run = tg.run(
        PIPELINE.name, preset=preset, sets=list(sets), cluster=executor, store=tmp_path / name
    )
    return run, run.metrics


def run_killed(tmp_path, executor, sets, bar, name="cut"):
    """A run that ``bar`` kills (raises ``Killed``): its store, marked failed."""
    with pytest.raises(Killed):
        tg.run(PIPELINE.name, sets=sets, cluster=executor, store=tmp_path / name,
                      progress=lambda total=None, desc=None: bar)  # fmt: skip
    (info,) = storage.Root(tmp_path / name).runs()
    return storage.Root(tmp_path / name).open(info["run_id"])


def resume(tmp_path, executor, store, bar=None, name="cut"):
    """Continue ``store``'s run (with ``bar`` as its progress bar): its metrics."""
    progress = False if bar is None else (lambda total=None, desc=None: bar)
    run = tg.run(PIPELINE.name, resume=store.run_id, cluster=executor,
                        store=tmp_path / name, progress=progress)  # fmt: skip
    return run.metrics


def test_quick_gmm_run_writes_readable_results(tmp_path, executors):
    store, m = run_pipeline(tmp_path, executors("sync"), sets=["n_samples=4", "batch_size=4"])
    for key in PIPELINE.metric_names:
        assert key in m
    assert m["sequential_steps"] == 1000 and m["batches"] == 1
    assert m["iterations"] <= 40
    assert m["max_abs_diff_vs_sequential"] <= 1e-3
    assert m["model_evals"] <= 96 * m["iterations"]
    ds = xr.open_zarr(store.url + "/result", consolidated=False)
    assert ds.samples.dims == ("sample", "feature") and ds.samples.shape == (4, 64)
    diff = np.abs(ds.samples.values - ds.sequential.values).max()
    assert diff == pytest.approx(m["max_abs_diff_vs_sequential"])
    assert ds.iterations.values.max() == m["iterations"]
    hist = xr.open_zarr(store.url + "/history", consolidated=False)
    n0 = int(ds.iterations.values[0])
    adv = hist.advance.values[0]
    # the windows' advances add up to the whole trajectory, and each is where the next begins
    assert adv[:n0].sum() == 1000 and np.isnan(adv[n0:]).all()
    np.testing.assert_array_equal(hist.begin.values[0, 1:n0], np.cumsum(adv[: n0 - 1]))
    assert np.all(np.diff(hist.begin.values[0, :n0]) > 0)
    png = tmp_path / "run" / "picard" / store.run_id / "summary.png"
    assert png.stat().st_size > 10_000


def test_a_run_that_returns_another_sample_says_so(tmp_path, executors, capsys):
    """DPM-Solver++-50 at p = 16 on the quick mixture: at tol = 0.1 one sample of batch
    1 ends in another component (4.3 from the sequential sampler's), and the run warns,
    naming the batch, on standard error and in its metrics; at tol = 0.02 (docs/picard.md,
    "Few steps") it does not."""
    from tilegraph.pipelines.picard.runner import another_sample, rounding_eps

    sets = ["sampler=dpmpp2m", "steps=50", "window=16", "n_samples=32"]
    _, loose = run_pipeline(tmp_path, executors("sync"), sets=[*sets, "tol=0.1"])
    err = capsys.readouterr().err
    assert loose["max_abs_diff_vs_sequential"] > 3
    (line,) = [x for x in err.splitlines() if x.startswith("warning:")]
    assert "batch(es) 1:" in line and "another sample" in line
    assert loose["warnings"] == [line.removeprefix("warning: ")]
    _, tight = run_pipeline(tmp_path, executors("sync"), sets=[*sets, "tol=0.02"], name="t")
    assert "warning:" not in capsys.readouterr().err and "warnings" not in tight
    assert tight["max_abs_diff_vs_sequential"] < 10 * 0.02
    # the limit: 10 tol, at most 1, at least 100 x the coarsest precision's epsilon
    assert another_sample(np.array([0.009, 0.011]), 1e-3).startswith("batch(es) 1:")
    assert another_sample(np.array([0.9, 0.99]), 0.5) is None
    assert another_sample(np.array([0.9, 1.01]), 0.5).startswith("batch(es) 1:")
    assert another_sample(np.array([0.05]), 1e-3, 2.0**-10) is None  # a float16 network
    assert another_sample(np.array([2e-5]), 1e-7, 2.0**-23).startswith("batch(es) 0:")
    assert another_sample(np.array([1e-5]), 1e-7, 2.0**-23) is None
    cfg = build_config(PIPELINE, "quick", None, ["dtype=float32"])
    assert rounding_eps(cfg) == np.finfo(np.float32).eps


def test_window_one_reproduces_the_sequential_sampler(tmp_path, executors):
    sets = ["n_samples=4", "batch_size=4", "window=1", "steps=50", "sampler=ddim"]
    store, m = run_pipeline(tmp_path, executors("sync"), sets=sets)
    assert m["iterations"] == 50 and m["max_abs_diff_vs_sequential"] == 0.0
    np.testing.assert_array_equal(
        store.array("result/samples").read(), store.array("result/sequential").read()
    )


def test_accelerated_run_needs_fewer_iterations(tmp_path, executors):
    ex = executors("sync")
    sets = ["n_samples=4", "batch_size=4", "steps=100", "window=50"]
    _, plain = run_pipeline(tmp_path, ex, sets=sets, name="plain")
    _, fast = run_pipeline(tmp_path, ex, sets=[*sets, "accelerate=true"], name="fast")
    assert fast["iterations"] < plain["iterations"]
    assert fast["max_abs_diff_vs_sequential"] <= 1e-2


BACKEND_SETS = [*SMALL, "steps=100", "window=16", "accelerate=true", "eval_parts=3"]
# the quick preset's window pieces: 24 steps x 16 samples = 384 rows per model call,
# large enough for NumPy/OpenBLAS to round differently on unaligned (unpickled) operands
QUICK_LIKE_SETS = ["n_samples=16", "batch_size=16", "steps=200", "window=96"]


@pytest.mark.parametrize(
    "spec,parallel,sets",
    [
        ("local:2", "batch", BACKEND_SETS),
        ("local:2", "window", QUICK_LIKE_SETS),
        ("local:2", "batch", QUICK_LIKE_SETS),
    ],
    ids=["local-batch", "local-window-quick", "local-batch-quick"],
)
def test_identical_samples_on_every_backend(tmp_path, executors, spec, parallel, sets):
    ref_store, ref = run_pipeline(tmp_path, executors("sync"), sets=sets, name="sync")
    store, m = run_pipeline(
        tmp_path,
        executors(spec),
        sets=[*sets, f"parallel={parallel}"],
        name=spec.replace(":", "-"),
    )
    assert m["workers"] == 2
    for name in ("result/samples", "result/sequential", "result/iterations", "history/advance"):
        np.testing.assert_array_equal(store.array(name).read(), ref_store.array(name).read())


def test_float32_run_is_the_same_on_a_cluster_and_close_to_float64(tmp_path, executors):
    sets = [*BACKEND_SETS, "dtype=float32"]
    ref_store, ref = run_pipeline(tmp_path, executors("sync"), sets=sets, name="sync")
    store, m = run_pipeline(tmp_path, executors("local:2"), sets=sets, name="local")
    for name in ("result/samples", "result/sequential", "result/iterations"):
        np.testing.assert_array_equal(store.array(name).read(), ref_store.array(name).read())
    wide_store, _ = run_pipeline(tmp_path, executors("sync"), sets=BACKEND_SETS, name="f64")
    got, wide = store.array("result/samples").read(), wide_store.array("result/samples").read()
    assert not np.array_equal(got, wide)  # it did sample in float32
    np.testing.assert_allclose(got, wide, rtol=0, atol=1e-3)
    assert m["workers"] == 2


def test_resume_redoes_only_unfinished_batches(tmp_path, executors):
    ex = executors("sync")
    sets = ["n_samples=12", "batch_size=4", "steps=50", "window=16"]
    ref_store, ref = run_pipeline(tmp_path, ex, sets=sets, name="ref")
    store, _ = run_pipeline(tmp_path, ex, sets=sets, name="cut")
    # a run killed inside batch 1: its marker never written, its chunk half garbage
    store.array("result/iterations").write((slice(1, 2),), np.zeros(1, dtype=np.int64))
    store.array("result/samples").write((slice(4, 8), slice(None)), np.full((4, 64), 7.0))
    kept = store.array("result/wall_s").read()
    store.mark_failed("killed inside batch 1")  # what a killed run's store says
    m = resume(tmp_path, ex, store)
    np.testing.assert_array_equal(
        store.array("result/samples").read(), ref_store.array("result/samples").read()
    )
    assert m["iterations"] == ref["iterations"]
    walls = store.array("result/wall_s").read()
    assert walls[0] == kept[0] and walls[2] == kept[2] and walls[1] != kept[1]


class Killed(Exception):
    pass


class Bar:
    """A progress bar that records the Picard iterations it is shown and, like a
    SIGKILL, stops the run when it reaches ``kill_at``."""

    def __init__(self, kill_at=None):
        self.kill_at, self.seen = kill_at, []

    def __call__(self, total=None, desc=None):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix_str(self, text):
        it = int(text.split("iteration ")[1].split(",")[0])
        self.seen.append(it)
        if it == self.kill_at:
            raise Killed


def test_resume_inside_a_batch_continues_from_its_checkpoint(tmp_path, executors):
    ex = executors("sync")
    sets = ["n_samples=4", "batch_size=4", "steps=200", "window=16", "tol=0.01"]
    sets += ["accelerate=true"]
    ref_store, ref = run_pipeline(tmp_path, ex, sets=sets, name="ref")
    store = run_killed(tmp_path, ex, [*sets, "checkpoint_s=0"], Bar(kill_at=8))
    # checkpoints after every iteration (checkpoint_s=0); the newest is iteration 8's
    assert store.load_checkpoint().scalars["it"] == 8
    bar = Bar()
    m = resume(tmp_path, ex, store, bar)
    assert bar.seen[0] == 9  # it went on from the checkpoint of iteration 8
    assert m["iterations"] == ref["iterations"]
    np.testing.assert_array_equal(
        store.array("result/samples").read(), ref_store.array("result/samples").read()
    )
    np.testing.assert_array_equal(
        store.array("history/max_error").read(), ref_store.array("history/max_error").read()
    )
    assert "checkpoints" not in store.group


def test_resumed_history_has_the_uninterrupted_bits(tmp_path, executors):
    """Quick-preset windows (96 steps x 16 samples): a run resumed from a mid-batch
    checkpoint writes the uninterrupted history bit for bit, ``max_error`` included
    (a reduction over each sample's features, whose order followed the trajectory
    buffer's memory layout: the fresh buffer's differed from the restored one's)."""
    ex = executors("sync")
    sets = ["n_samples=16", "batch_size=16", "steps=200", "window=96"]
    sets += ["compare_sequential=false", "checkpoint_s=0"]
    ref_store, ref = run_pipeline(tmp_path, ex, sets=sets, name="ref")
    store = run_killed(tmp_path, ex, sets, Bar(kill_at=2))
    bar = Bar()
    m = resume(tmp_path, ex, store, bar)
    assert bar.seen[0] == 3 and m["iterations"] == ref["iterations"] > 3
    for name in ("result/samples", *(f"history/{c}" for c in HISTORY_COLUMNS)):
        np.testing.assert_array_equal(store.array(name).read(), ref_store.array(name).read())


def test_digits_model_is_trained_stored_and_reused(tmp_path, executors):
    ex = executors("sync")
    sets = [
        "digits.hidden=[32]",
        "digits.epochs=3",
        "digits.repeats=1",
        "steps=100",
        "window=1",
        "n_samples=4",
        "batch_size=4",
    ]
    store, m = run_pipeline(tmp_path, ex, preset="digits", sets=sets, name="train")
    grp = store.group["model"]
    assert grp.attrs["complete"] and grp.attrs["layers"] == 2
    losses = grp.attrs["losses"]
    assert losses[-1] < losses[0] and m["train_loss"] == losses[-1]
    assert store.array("model/w0").shape == (64 + 16, 32)
    ds = xr.open_zarr(store.url + "/result", consolidated=False)
    assert ds.samples.dims == ("sample", "row", "col") and ds.samples.shape == (4, 8, 8)
    # a barely trained network is a poor sampler, but p = 1 must still be exact
    assert m["iterations"] == 100 and m["max_abs_diff_vs_sequential"] == 0.0
    # a second run loads the stored weights instead of training: same samples
    again, m2 = run_pipeline(
        tmp_path, ex, preset="digits", sets=[*sets, f"digits.weights_from={store.url}"], name="b"
    )
    assert "model" not in again.group
    np.testing.assert_array_equal(
        again.array("result/samples").read(), store.array("result/samples").read()
    )


SMALL_MIXTURE = """
from tilegraph.tasks.picard.models import GaussianMixture


def small_mixture(abar):
    # any object with eps and sample_shape (here an exact 3-D mixture)
    return GaussianMixture([[2.0, 0.0, 0.0], [-2.0, 1.0, 0.0]], [0.3, 0.7], 0.2, abar)
"""


def test_custom_model_from_an_import_path(tmp_path, executors, monkeypatch):
    """A user's model factory for ``model=custom`` in a module of the working folder,
    through ``tilegraph.run`` (the resolver makes the folder importable)."""

    (tmp_path / "tg_usermixture.py").write_text(SMALL_MIXTURE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    sets = ["model=custom", "custom=tg_usermixture:small_mixture", *SMALL]
    run = tg.run("picard", sets=sets, cluster=executors("sync"), store=tmp_path / "runs")
    m = run.metrics
    assert run.status == "complete"
    ds = run.open_dataset("result")
    assert ds.samples.shape == (8, 3) and ds.samples.dims == ("sample", "axis_0")
    assert m["iterations"] <= 40 and m["max_abs_diff_vs_sequential"] <= 1e-3
    # the samples sit at the two means (spread 0.2)
    x = ds.samples.values
    d = np.minimum(np.linalg.norm(x - [2, 0, 0], axis=1), np.linalg.norm(x - [-2, 1, 0], axis=1))
    assert d.max() < 1.5


@pytest.mark.parametrize(
    "sets,needle",
    [
        (["window=2000"], "window"),
        (["steps=2000"], "steps must be <= train_steps"),
        (["batch_size=100"], "batch_size"),
        (["sampler=euler"], "sampler"),
        (["tol=0"], "tol"),
        (["eta=0.5"], "eta applies to sampler=ddim"),
        (["digits.hidden=[]"], "hidden"),
        (["model=custom"], "model=custom needs custom"),
        (["model=custom", "custom=nocolon"], "package.module:attribute"),
        (["custom=m:f"], "custom is used only with model=custom .here model=gmm."),
        (["diffusers.path=some/dir"], "diffusers.path is used only with model=diffusers"),
        (["conditioning=c.zarr"], "conditioning applies to model=diffusers"),
        (["null_class=3"], "null_class applies with class_labels"),
    ],
)
def test_bad_config_names_the_field(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(PIPELINE, "quick", sets=sets)


def test_a_replica_runs_the_whole_picard_loop_with_the_same_bits(executors):
    """``ModelReplica.picard`` (the whole loop on one worker, no round trip per
    iteration; benchmarks/picard.py's "here" rows) gives the bits of the loop driven from
    this process, the guarded accelerated variant included."""
    from tilegraph.pipelines.picard.runner import WindowEvaluator
    from tilegraph.pipelines.picard.worker import ModelReplica
    from tilegraph.tasks.picard.models import GaussianMixture
    from tilegraph.tasks.picard.samplers import draw_noise, picard
    from tilegraph.tasks.picard.schedules import make_schedule, make_steps

    abar = make_schedule("linear", 1000)
    g = GaussianMixture.random(16, 8, 0.15, abar, mean_scale=1.0, seed=0)
    spec = {"kind": "gmm", "means": g.means, "weights": g.weights, "spread": 0.15, "abar": abar}
    st = make_steps("ddpm", abar, 100)
    x_T, z = draw_noise(np.random.SeedSequence(3), 4, (16,), 100)
    ex = executors("local:2")
    replica = ex.actor(ModelReplica, spec, "cpu")
    opts = {"guard": True, "secant": True, "extrapolate": True}
    x, its, evals, wall = ex.gather(replica.picard(st, x_T, z, 8, 0.1, opts))
    ref = picard(WindowEvaluator(ex, [replica], 4, parts=1), st, x_T, z, 8, 0.1, **opts)
    np.testing.assert_array_equal(x, ref.x)
    assert (its, evals) == (ref.iterations, ref.model_evals) and its < 100 and wall > 0
