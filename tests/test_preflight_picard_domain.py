"""Bad models, weights, pipeline directories, factories and datasets of picard,
domain-split and bilevel: refused before anything is written (exit 2, one ``error:``
line naming the field, no run in the store), or, where only the run can see it (a model
that returns NaN, a coefficient that is NaN in a corner the preflight did not sample),
a failed run whose message names the model or method and where."""

import contextlib
import io
import json
import shutil
import struct

import numpy as np
import pytest
import xarray as xr
import zarr
from tilegraph import storage
from tilegraph.pipelines import cli
from tilegraph.tasks.picard.samplers import ModelOutputError, picard, sequential
from tilegraph.tasks.picard.schedules import make_schedule, make_steps

MODELS = """
import numpy as np


class Gaussian:
    sample_shape = (3,)

    def __init__(self, abar):
        self.abar = np.asarray(abar)

    def eps(self, x, t):
        ab = self.abar[np.asarray(t)][:, None]
        return np.sqrt(1 - ab) * (x - np.sqrt(ab)) / (0.25 * ab + 1 - ab)


def good(abar):
    return Gaussian(abar)


def _with(**attrs):
    def factory(abar):
        model = Gaussian(abar)
        for k, v in attrs.items():
            setattr(model, k, v)
        return model
    return factory


text_shape = _with(sample_shape="abc")
negative_shape = _with(sample_shape=(-3,))
zero_shape = _with(sample_shape=(0,))
huge_shape = _with(sample_shape=(100000, 100000))
nan_out = _with(eps=lambda x, t: np.full(x.shape, np.nan))
wrong_out = _with(eps=lambda x, t: np.zeros((x.shape[0], 5)))
text_out = _with(eps=lambda x, t: "nope")
complex_out = _with(eps=lambda x, t: np.zeros(x.shape, dtype=complex))
"""

SMALL = ["n_samples=4", "batch_size=4", "steps=20", "window=4"]


def _main(*argv) -> tuple[int, str]:
    """The CLI in this process: exit status and standard error."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def _run(name, sets, store, *extra):
    args = [a for s in sets for a in ("--set", s)]
    return _main("run", name, *args, "--cluster", "sync", "--store", store, *extra)


def _refused(rc, err, store, *needles):
    """Exit 2, one ``error:`` line holding every needle, nothing in the store."""
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not store.exists() or not storage.Root(store).runs()


def _failed(rc, err, store, *needles):
    """Exit 1 and one run, failed, whose error holds every needle."""
    assert rc == 1, err
    (info,) = storage.Root(store).runs()
    assert info["status"] == "failed"
    for needle in needles:
        assert needle in info["error"], (needle, info["error"])
    return info


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    (folder / "tgpf_models.py").write_text(MODELS)
    return folder


@pytest.fixture
def project(models, monkeypatch):
    monkeypatch.chdir(models)
    monkeypatch.syspath_prepend(str(models))
    return models


# --- picard: the custom model --------------------------------------------------------


@pytest.mark.parametrize(
    "factory, needles",
    [
        ("text_shape", ["'custom'", "sample_shape", "not a str"]),
        ("negative_shape", ["'custom'", "sample_shape", "(-3,)"]),
        ("zero_shape", ["'custom'", "sample_shape", "(0,)"]),
        # the estimate sees the model's own sample shape (not gmm.dim)
        ("huge_shape", ["'batch_size'", "TiB", "10000000000 values: its sample_shape"]),
    ],
)
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_a_bad_sample_shape_is_refused_before_anything_is_written(
    project, tmp_path, factory, needles, dry
):
    store = tmp_path / "runs"
    sets = ["model=custom", f"custom=tgpf_models:{factory}", *SMALL]
    rc, err = _run("picard", sets, store, *(["--dry-run"] if dry else []))
    _refused(rc, err, store, *needles)


@pytest.mark.parametrize(
    "factory, needles",
    [
        ("nan_out", ["returned non-finite eps", "training timesteps 950..800"]),
        ("wrong_out", ["returned shape (4, 5), expected (4, 3)", "training timestep 950"]),
        ("text_out", ["returned a str, not an array", "training timestep 950"]),
        ("complex_out", ["returned complex128 values", "training timestep"]),
    ],
)
@pytest.mark.parametrize("parallel", ["window", "batch"])
def test_a_model_returning_nan_or_a_wrong_shape_fails_the_run(
    project, tmp_path, factory, needles, parallel
):
    store = tmp_path / "runs"
    sets = ["model=custom", f"custom=tgpf_models:{factory}", f"parallel={parallel}", *SMALL]
    rc, err = _run("picard", sets, store)
    _failed(rc, err, store, f"the model tgpf_models:{factory}", *needles)


def test_a_replica_names_its_model_when_the_sequential_sampler_fails(project):
    from tilegraph.pipelines.picard.worker import ModelReplica

    abar, steps = _steps()
    replica = ModelReplica({"kind": "custom", "target": "tgpf_models:nan_out", "abar": abar})
    x_T, z = np.zeros((2, 3)), np.zeros((20, 2, 3))
    with pytest.raises(ModelOutputError, match="^the model tgpf_models:nan_out returned non-"):
        replica.sequential(steps, x_T, z)


def _steps(T=20):
    abar = make_schedule("linear", 1000)
    return abar, make_steps("ddpm", abar, T)


def test_both_samplers_check_the_model_output():
    """The check sits in every model call: the sequential sampler's, a window's and a
    list of numbers is taken as an array; good output gives the same bits as before."""
    abar, steps = _steps()
    rng = np.random.default_rng(0)
    x_T, z = rng.standard_normal((2, 3)), rng.standard_normal((20, 2, 3))

    def eps(x, t):
        return 0.1 * x

    def late_nan(x, t):
        return np.where(np.asarray(t)[:, None] < 100, np.nan, 0.1 * x)

    with pytest.raises(ModelOutputError, match=r"non-finite eps .* training timestep 50$"):
        sequential(late_nan, steps, x_T, z)
    with pytest.raises(ModelOutputError, match=r"training timesteps 50..0$"):
        picard(late_nan, steps, x_T, z, window=20, tol=0.1)
    with pytest.raises(ModelOutputError, match=r"returned shape \(2, 4\), expected \(2, 3\)"):
        sequential(lambda x, t: np.zeros((2, 4)), steps, x_T, z)
    ref = sequential(eps, steps, x_T, z)
    listed = sequential(lambda x, t: (0.1 * x).tolist(), steps, x_T, z)
    np.testing.assert_array_equal(listed, ref)
    err = ModelOutputError("returned nothing")
    assert str(err.naming("the model m:f")) == "the model m:f returned nothing"


# --- picard: digits weights from another run -----------------------------------------


def _fake_run(root, pipeline, model_attrs=None, arrays=()):
    run = storage.Root(root).create(pipeline, {"model": "digits"})
    for name, shape in arrays:
        run.create_array(
            name, shape, shape, dimension_names=tuple(f"d{i}" for i, _ in enumerate(shape))
        )
        ref = run.array(name)
        ref.write((slice(None),) * len(shape), 0.01 * np.ones(shape))
    if model_attrs is not None:
        run.set_node_attrs("model", model_attrs)
    return run.url


MLP = [("model/w0", (80, 8)), ("model/b0", (8,)), ("model/w1", (8, 64)), ("model/b1", (64,))]
MLP_ATTRS = {"layers": 2, "train_steps": 1000, "sample_shape": [8, 8], "n_freq": 8,
             "complete": True, "final_loss": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("other")
    plain = root / "plain.zarr"
    zarr.open_group(str(plain), mode="w")
    return {
        "missing": str(root / "nothing-here"),
        "empty": "",  # the working folder
        "plain": str(plain),
        "no-weights": _fake_run(root / "a", "picard"),
        "domain-split": _fake_run(root / "b", "domain-split"),
        "mlp": _fake_run(root / "c", "picard", MLP_ATTRS, MLP),
        "mlp-200": _fake_run(root / "d", "picard", {**MLP_ATTRS, "train_steps": 200}, MLP),
        "mlp-cut": _fake_run(root / "e", "picard", MLP_ATTRS, MLP[:2]),
    }


@pytest.mark.parametrize(
    "model, source, needle",
    [
        ("digits", "missing", "no run group at"),
        ("digits", "empty", "no run group at"),
        ("digits", "plain", "is not a tilegraph run"),
        ("digits", "no-weights", "holds no trained MLP"),
        ("digits", "domain-split", "is a run of pipeline domain-split"),
        ("digits", "mlp-200", "with train_steps=200, this run has train_steps=1000"),
        ("digits", "mlp-cut", "lacks the weights model/w1, model/b1"),
        ("digits-unet", "mlp", "holds no trained UNet"),
        ("digits-unet", "missing", "no run group at"),
    ],
)
@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_weights_from_must_be_a_picard_run_with_the_weights(
    tmp_path, monkeypatch, other_runs, model, source, needle, dry
):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "runs"
    field = "digits.weights_from" if model == "digits" else "digits_unet.weights_from"
    sets = [f"model={model}", f"{field}={other_runs[source]}", *SMALL]
    rc, err = _run("picard", sets, store, *(["--dry-run"] if dry else []))
    _refused(rc, err, store, f"'{field}'", needle)


def test_weights_from_a_run_that_holds_them_still_runs(tmp_path, other_runs):
    store = tmp_path / "runs"
    sets = ["model=digits", f"digits.weights_from={other_runs['mlp']}", *SMALL]
    rc, err = _run("picard", sets, store)
    assert rc == 0, err
    (info,) = storage.Root(store).runs()
    assert info["status"] == "complete"


# --- picard: diffusers pipeline directories ------------------------------------------


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("pipe") / "ddpm"
    sched = diffusers.DDPMScheduler(num_train_timesteps=100)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(path))
    return path


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _edit_json(name, **changes):
    def edit(path):
        f = path / name
        f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))

    return edit


def _cut(path):
    f = path / WEIGHTS
    f.write_bytes(f.read_bytes()[:-100])


def _header_only(path):
    f = path / WEIGHTS
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    f.write_bytes(data[: 8 + n])


BAD_DIRS = {
    "unet-list": (lambda p: (p / "unet/config.json").write_text("[1, 2, 3]"),
                  ["unet/config.json holds a JSON list"]),
    "no-weights": (lambda p: (p / WEIGHTS).unlink(), ["has no weights file"]),
    "garbage": (lambda p: (p / WEIGHTS).write_bytes(b"garbage" * 10),
                ["is not a safetensors file"]),
    "cut": (_cut, ["is cut or corrupt"]),
    "header-only": (_header_only, ["is cut or corrupt"]),
    "groups": (_edit_json("unet/config.json", block_out_channels=[3, 5]),
               ["does not build a UNet2DModel", "divisible by num_groups"]),
    "other-net": (_edit_json("unet/config.json", block_out_channels=[16, 32]),
                  ["has shape (8", "but unet/config.json builds (16"]),
    "out-channels": (_edit_json("unet/config.json", out_channels=2),
                     ["out_channels=2 differs from in_channels=1"]),
    "sample-size": (_edit_json("unet/config.json", sample_size="big"),
                    ["sample_size must be positive integers"]),
    "timesteps": (_edit_json("scheduler/scheduler_config.json", num_train_timesteps=-5),
                  ["scheduler/scheduler_config.json has num_train_timesteps=-5"]),
    "betas": (_edit_json("scheduler/scheduler_config.json", beta_start=0.5, beta_end=0.1),
              ["scheduler/scheduler_config.json has beta_end=0.1 <= beta_start=0.5"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_DIRS))
def test_a_bad_pipeline_directory_is_refused_before_anything_is_written(tmp_path, ddpm_dir, case):
    edit, needles = BAD_DIRS[case]
    path = tmp_path / "dir"
    shutil.copytree(ddpm_dir, path)
    edit(path)
    store = tmp_path / "runs"
    sets = ["model=diffusers", f"diffusers.path={path}", "steps=10", "window=4",
            "n_samples=2", "batch_size=2"]  # fmt: skip
    rc, err = _run("picard", sets, store)
    _refused(rc, err, store, "diffusers.path", *needles)


def test_a_good_pipeline_directory_passes_the_checks(ddpm_dir):
    from tilegraph.pipelines.picard.diffusers_dir import check_network

    check_network(str(ddpm_dir))


# --- domain-split: the user's factory ------------------------------------------------

PDE = """
import numpy as np


class Base:
    def alpha_k(self, k, c):
        return 1.0 + 0.0 * c[0]

    def beta_k(self, k, c):
        return 0.5

    def rhs(self, c):
        return np.sin(c[1])  # shape (1, n): broadcasts, one axis of the grid's

    def boundary(self, c):
        return 0.0


class Five(Base):
    def rhs(self, c):
        return np.ones(5)


class Flat(Base):
    def rhs(self, c):
        return np.ones(np.broadcast(*c).shape).ravel()


class Complex(Base):
    def rhs(self, c):
        return 1j + 0 * c[0]


class Text(Base):
    def boundary(self, c):
        return "zero"


class NaNStrip(Base):
    def alpha_k(self, k, c):
        x = c[0] + 0 * c[1]
        return np.where((x > 1.27) & (x < 1.33), np.nan, 1.0)


class NegStrip(Base):
    def alpha_k(self, k, c):
        x = c[0] + 0 * c[1]
        return np.where((x > 1.27) & (x < 1.33), -1.0, 1.0)


def make(kind="Base"):
    return globals()[kind]()
"""

DOMAIN = "problem.domain=[[0, 2], [-1, 1]]"


@pytest.fixture
def pde(tmp_path, monkeypatch):
    (tmp_path / "tgpf_pde.py").write_text(PDE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tgpf_pde", raising=False)
    return tmp_path


def _pde_sets(kind):
    return ["problem.kind=custom", "problem.factory=tgpf_pde:make", f"problem.params.kind={kind}",
            DOMAIN, "n_fine=20", "n_coarse=4"]  # fmt: skip


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("Five", ["rhs(coords) gave shape (5,) on a (5, 6) grid"]),
        ("Flat", ["rhs(coords) gave shape (30,) on a (5, 6) grid"]),
        ("Complex", ["rhs(coords) returned values of dtype complex128"]),
        ("Text", ["boundary(coords) returned values of dtype <U4"]),
    ],
)
def test_a_factory_of_the_wrong_shape_or_type_is_refused(pde, kind, needles):
    store = pde / "runs"
    rc, err = _run("domain-split", _pde_sets(kind), store)
    _refused(rc, err, store, "'problem.factory'", *needles)


def test_scalars_and_arrays_of_fewer_axes_of_size_one_pass(pde):
    from tilegraph.pipelines.config import build_config
    from tilegraph.pipelines.domain_split import PIPELINE

    PIPELINE.preflight(build_config(PIPELINE, sets=_pde_sets("Base")))


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("NaNStrip", "alpha_k(0, coords) gave NaN or infinite values at x in [1.3, 1.3]"),
        ("NegStrip", "alpha_k(0, coords) gave values <= 0 (diffusion must be > 0) at x in [1.3"),
    ],
)
def test_coefficients_bad_where_the_preflight_did_not_look_fail_naming_the_region(
    pde, kind, needle
):
    """The preflight's sample grids miss a strip at x = 1.3: the worker that evaluates
    the coefficients says which method and where, not the box LU's "singular"."""
    store = pde / "runs"
    rc, err = _run("domain-split", _pde_sets(kind), store)
    info = _failed(rc, err, store, "problem.factory tgpf_pde:make", needle)
    assert "singular" not in info["error"]


# --- datasets: real numbers only -----------------------------------------------------


def _coefficients(path, **changes):
    x, y = np.linspace(0, 1, 9), np.linspace(0, 1, 7)
    one = np.ones((x.size, y.size))
    names = ("alpha_x", "alpha_y", "beta_x", "beta_y", "f", "g")
    data = {k: (("x", "y"), changes.get(k, one)) for k in names}
    xr.Dataset(data, coords={"x": x, "y": y}).to_zarr(path, mode="w", consolidated=False)


@pytest.mark.filterwarnings("ignore:The data type")  # zarr on strings: not the point
@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"f": np.full((9, 7), "a")}, "variable 'f' has dtype <U1"),
        ({"f": np.ones((9, 7)) + 1j}, "variable 'f' has dtype complex128"),
        ({"alpha_y": np.ones((9, 7), dtype=np.complex64)}, "'alpha_y' has dtype complex64"),
    ],
    ids=["text", "complex", "complex64"],
)
def test_a_dataset_of_other_than_real_numbers_is_refused(tmp_path, changes, needle):
    _coefficients(tmp_path / "c.zarr", **changes)
    store = tmp_path / "runs"
    sets = ["problem.kind=dataset", f"problem.dataset={tmp_path / 'c.zarr'}", "n_fine=20",
            "n_coarse=4"]  # fmt: skip
    rc, err = _run("domain-split", sets, store)
    _refused(rc, err, store, "'problem.dataset'", needle)


def _blocks(path, y_train):
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(0)
    for b in range(3):
        g = root.create_group(f"task{b}")
        g.create_array("X_train", data=rng.normal(size=(10, 3)))
        g.create_array("y_train", data=y_train if b == 1 else rng.normal(size=10))
        g.create_array("X_val", data=rng.normal(size=(6, 3)))
        g.create_array("y_val", data=rng.normal(size=6))


@pytest.mark.filterwarnings("ignore:The data type")
@pytest.mark.parametrize(
    "y_train, needle",
    [
        (np.ones(10) + 1j, "block 'task1': y_train has dtype complex128"),
        (np.full(10, "a"), "block 'task1': y_train has dtype <U1"),
    ],
    ids=["complex", "text"],
)
def test_bilevel_blocks_of_other_than_real_numbers_are_refused(tmp_path, y_train, needle):
    _blocks(tmp_path / "b.zarr", y_train)
    store = tmp_path / "runs"
    sets = ["problem.kind=dataset", f"problem.dataset={tmp_path / 'b.zarr'}", "blocks_per_iter=2"]
    rc, err = _run("bilevel", sets, store)
    _refused(rc, err, store, "'problem.dataset'", needle)


def test_sample_shapes_and_outputs_of_other_libraries():
    """An ndarray sample_shape is a shape; a property that raises is one line; a torch
    tensor returned for NumPy samples is named as such."""
    from tilegraph.pipelines.picard.worker import custom_model_problem, shape_problem

    assert shape_problem(np.array([1, 8, 8])) is None

    class Raising:
        def eps(self, x, t):
            return x

        @property
        def sample_shape(self):
            raise RuntimeError("not loaded yet")

    msg = custom_model_problem(Raising(), "m:f")
    assert "sample_shape" in msg and "raised RuntimeError: not loaded yet" in msg
    torch = pytest.importorskip("torch")
    abar, steps = _steps()
    x_T, z = np.zeros((2, 3)), np.zeros((20, 2, 3))
    with pytest.raises(ModelOutputError, match=r"returned a torch.Tensor, not an array of"):
        sequential(lambda x, t: torch.zeros(2, 3, dtype=torch.float64), steps, x_T, z)
