"""The distribution installs one import name, ``tilegraph``, and a user's own modules
called ``tasks``, ``storage``, ``cluster`` or ``pipelines`` do not shadow it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import xarray as xr
from helpers import ROOT, last_json, tilegraph

OLD_STORE = ROOT / "tests" / "data" / "store-v0.1.0"
OLD_RUN = "20261204-051754-bea5fb"  # domain-split, written by tilegraph 0.1.0 (bare imports)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=280,
    )
    (path,) = out.glob("tilegraph-*.whl")
    return path


def test_wheel_has_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"tilegraph"}
    for sub in ("tasks", "cluster", "storage", "pipelines"):
        assert f"tilegraph/{sub}/__init__.py" in names
    assert "tilegraph/pipelines/domain_split/runner.py" in names
    assert not [n for n in names if n.startswith("tilegraph/tests/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "tilegraph = tilegraph.pipelines.cli:main" in text
    assert "domain-split = tilegraph.pipelines.domain_split:PIPELINE" in text


def test_wheel_installed_beside_user_modules_named_like_ours(wheel, tmp_path):
    """A plain (non-editable) install, run from a folder holding ``storage.py`` and a
    ``tasks`` package: the README's snippet and the pipelines still import."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    work = tmp_path / "project"
    (work / "tasks").mkdir(parents=True)
    (work / "tasks" / "__init__.py").write_text("CELERY = True\n")
    (work / "storage.py").write_text("def Root():\n    raise RuntimeError('user storage')\n")
    code = (
        "import tilegraph, tilegraph.pipelines.domain_split, storage, tasks;"
        "from tilegraph import storage as tg;"
        "print(tilegraph.__file__);"
        "print(type(tg.Root('memory://x')).__name__, tasks.CELERY, tilegraph.Root is tg.Root)"
    )
    import os

    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    where, line = out.stdout.strip().splitlines()
    assert Path(where).is_relative_to(target)
    assert line == "Root True True"


def test_store_written_by_0_1_opens(tmp_path):
    """A run stored by tilegraph 0.1.0 (before the ``tilegraph.*`` names) still opens."""
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    proc = tilegraph("show", OLD_RUN, "--store", str(store), "--json")
    assert proc.returncode == 0, proc.stderr
    info = last_json(proc.stdout)
    assert info["status"] == "complete"
    assert info["provenance"]["tilegraph"] == "0.1.0"
    assert info["config"]["n_fine"] == 20
    ds = xr.open_zarr(f"{info['path']}/result", consolidated=False)
    assert ds.solution.shape == (21, 21)
    assert float(abs(ds.error).max()) == pytest.approx(
        float(abs(ds.solution - ds.exact).max()), rel=1e-12
    )
    listed = tilegraph("runs", "--store", str(store), "--json")
    assert [r["run_id"] for r in last_json(listed.stdout)["runs"]] == [OLD_RUN]
