"""The user's own code by import path: one resolver for every pipeline, the working
directory and the ``--config`` folder importable, modules shipped to workers that never
saw them, bad paths refused before anything is written, stored code not followed."""

import os
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from helpers import last_json, tilegraph
from tilegraph import cluster
from tilegraph.pipelines.config import build_config
from tilegraph.pipelines.imports import (
    ImportPathError,
    followed_references,
    import_paths,
    prepare_user_code,
    resolve,
)
from tilegraph.pipelines.registry import get_pipeline

FACTORY = textwrap.dedent(
    """
    from tilegraph.tasks.picard.models import GaussianMixture

    LOADED_FROM = __file__

    def factory(abar):
        return GaussianMixture([[2.0, 0.0, 0.0], [-2.0, 1.0, 0.0]], [0.3, 0.7], 0.2, abar)

    NOT_CALLABLE = 3


    class Shapeless:
        def eps(self, x, t):
            return x


    def shapeless(abar):
        return Shapeless()


    def number(abar):
        return 3


    def missing_weights(abar):
        raise FileNotFoundError("no weights.pt here")
    """
)
PICARD = ["--set=model=custom", "--set=n_samples=8", "--set=batch_size=4"]


def _project(tmp_path, name="tg_usermodel", package=False):
    """A user's project folder with the factory as a module or a package."""
    work = tmp_path / "project"
    work.mkdir(exist_ok=True)
    if package:
        (work / name).mkdir()
        (work / name / "__init__.py").write_text("")
        (work / name / "models.py").write_text(FACTORY)
    else:
        (work / f"{name}.py").write_text(FACTORY)
    return work


@pytest.fixture
def clean_imports():
    """Forget modules and path entries a test made importable in this process."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith("tg_user"):
            del sys.modules[name]


@pytest.mark.parametrize(
    "target,needle",
    [
        ("nocolon", "expected 'package.module:attribute'"),
        ("tg_user_absent:f", "no module named 'tg_user_absent'"),
        ("tg_usermodel:nope", "has no attribute 'nope'"),
        ("tg_usermodel:NOT_CALLABLE", "is a int, not callable"),
        ("tg_userbroken:f", "importing 'tg_userbroken' raised ZeroDivisionError"),
        ("tg_userexits:f", "importing 'tg_userexits' raised SystemExit: 3"),
    ],
)
def test_resolver_says_what_is_wrong(tmp_path, clean_imports, target, needle):
    work = _project(tmp_path)
    (work / "tg_userbroken.py").write_text("1 / 0\n")
    (work / "tg_userexits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ImportPathError) as err:
        resolve(target, field="custom", dirs=[str(work)])
    msg = str(err.value)
    assert needle in msg and msg.startswith("config field 'custom': ") and "\n" not in msg


def test_resolver_finds_the_object(tmp_path, clean_imports):
    work = _project(tmp_path, package=True)
    factory = resolve("tg_usermodel.models:factory", dirs=[str(work)])
    assert factory(np.linspace(0.99, 0.01, 10)).sample_shape == (3,)
    assert resolve("numpy.linalg:norm") is np.linalg.norm


def test_import_paths_and_what_is_shipped(tmp_path, clean_imports, monkeypatch):
    work = _project(tmp_path, package=True)
    (work / "tg_userfile.py").write_text(FACTORY)
    monkeypatch.chdir(work)
    picard = get_pipeline("picard")
    configs = [
        build_config(picard, "quick", sets=["model=custom", f"custom={t}"])
        for t in ("tg_usermodel.models:factory", "tg_userfile:factory", "numpy:asarray")
    ]
    assert import_paths(configs[0]) == {"custom": "tg_usermodel.models:factory"}
    # the package folder and the file; installed packages (numpy) stay where they are
    assert prepare_user_code(configs) == (str(work / "tg_usermodel"), str(work / "tg_userfile.py"))
    weights = build_config(picard, "digits", sets=["digits.weights_from=/elsewhere/run"])
    assert followed_references(weights) == {"digits.weights_from": "/elsewhere/run"}
    assert import_paths(weights) == {}


def test_the_config_folder_is_importable(tmp_path, clean_imports, monkeypatch):
    work = _project(tmp_path, package=True)
    (work / "run.yaml").write_text("model: custom\ncustom: tg_usermodel.models:factory\n")
    monkeypatch.chdir(tmp_path)  # not the project folder
    config = build_config(get_pipeline("picard"), "quick", str(work / "run.yaml"))
    assert prepare_user_code([config], str(work / "run.yaml")) == (str(work / "tg_usermodel"),)


@pytest.mark.parametrize("spec", ["sync", "local:1"])
def test_executor_ships_code_to_its_workers(tmp_path, spec):
    """Workers import a module that is on no path of theirs (nor of the driver)."""
    work = _project(tmp_path, name="tg_usershipped", package=True)
    assert str(work) not in sys.path

    def where():
        import importlib

        return importlib.import_module("tg_usershipped.models").LOADED_FROM

    try:
        with cluster.connect(spec, code=[str(work / "tg_usershipped")]) as ex:
            assert ex.code == (str(work / "tg_usershipped"),)
            loaded = ex.gather(ex.submit(where, pure=False))
            assert loaded.endswith(os.path.join("tg_usershipped", "models.py"))
            ex.add_code([str(work / "tg_usershipped")])  # again: nothing to do
            with pytest.raises(ValueError, match="not a .py file or a package folder"):
                ex.add_code([str(work / "missing.py")])
    finally:
        sys.path[:] = [p for p in sys.path if p != str(work)]
        for name in [m for m in sys.modules if m.startswith("tg_usershipped")]:
            del sys.modules[name]


@pytest.mark.slow
def test_module_in_the_working_directory_reaches_local_workers(tmp_path):
    """``custom=module:factory`` with the module in the current folder, no PYTHONPATH:
    a file on ``local:2`` (Dask worker processes), a package through ``--config`` from
    another folder; both give the answer of an in-process run."""
    work = _project(tmp_path)
    _project(tmp_path, name="tg_userpkg", package=True)
    store = str(tmp_path / "runs")
    ref = tilegraph(
        "run", "picard", *PICARD, "--set=custom=tg_usermodel:factory", "--cluster", "sync",
        "--store", store, "--json", cwd=work,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    out = tilegraph(
        "run", "picard", *PICARD, "--set=custom=tg_usermodel:factory", "--cluster", "local:2",
        "--store", store, "--json", cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    a, b = last_json(ref.stdout), last_json(out.stdout)
    assert a["metrics"]["iterations"] == b["metrics"]["iterations"]
    sa = xr.open_zarr(a["path"] + "/result", consolidated=False).samples.values
    sb = xr.open_zarr(b["path"] + "/result", consolidated=False).samples.values
    np.testing.assert_array_equal(sa, sb)

    (work / "pkg.yaml").write_text("custom: tg_userpkg.models:factory\n")
    out = tilegraph(
        "run", "picard", *PICARD, "--config", str(work / "pkg.yaml"), "--cluster", "local:2",
        "--store", store, "--json", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert last_json(out.stdout)["metrics"]["iterations"] == a["metrics"]["iterations"]


@pytest.mark.parametrize(
    "custom,needle",
    [
        ("tg_user_absent:factory", "no module named 'tg_user_absent'"),
        ("tg_usermodel:nope", "has no attribute 'nope'"),
        ("tg_usermodel:NOT_CALLABLE", "not callable"),
        ("tg_usermodel:shapeless", "returned a Shapeless with eps(x, t) but without sample_sh"),
        ("tg_usermodel:number", "returned a int, neither an object with eps(x, t) and"),
        ("tg_usermodel:missing_weights", "(abar) raised FileNotFoundError: no weights.pt here"),
    ],
)
def test_bad_import_path_exits_2_before_any_store(tmp_path, custom, needle):
    work = _project(tmp_path)
    store = tmp_path / "runs"
    out = tilegraph(
        "run", "picard", *PICARD, f"--set=custom={custom}", "--store", str(store), cwd=work
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config field 'custom'")
    assert needle in lines[0]
    assert not store.exists()


def test_resume_does_not_follow_stored_code_unless_trusted(tmp_path):
    """A stored config that names code is not imported on ``--resume`` without
    ``--trust-store`` (``builtins:print`` would run on the driver otherwise)."""
    from tilegraph import storage

    work = _project(tmp_path)
    store = str(tmp_path / "runs")
    out = tilegraph(
        "run", "picard", *PICARD, "--set=custom=tg_usermodel:factory", "--cluster", "sync",
        "--store", store, "--json", cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first = last_json(out.stdout)
    run = storage.Root(store).open(first["run_id"])
    run.mark_failed("stopped by the test")  # a run someone hands over for resuming
    refused = tilegraph("run", "picard", "--resume", first["run_id"], "--store", store, cwd=work)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "'tg_usermodel:factory' (field 'custom')" in line and "--trust-store" in line
    assert storage.Root(store).open(first["run_id"]).status == "failed"
    again = tilegraph(
        "run", "picard", "--resume", first["run_id"], "--trust-store", "--cluster", "sync",
        "--store", store, "--json", cwd=work,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)["status"] == "complete"
