"""The architecture as a test: ``tasks``, ``cluster`` and ``storage`` never import each
other or ``pipelines``; ``tasks`` does no I/O and no scheduling; pipelines reach Dask
and Ray only through ``cluster``; everything is imported under ``tilegraph``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> modules it must not import (tilegraph's own named without ``tilegraph.``)
FORBIDDEN = {
    "tasks": {"cluster", "storage", "pipelines", "dask", "distributed", "ray", "zarr",
              "xarray", "fsspec"},
    "cluster": {"tasks", "storage", "pipelines"},
    "storage": {"tasks", "cluster", "pipelines", "ray"},
    "pipelines": {"dask", "distributed", "ray", "zarr"},
}  # fmt: skip

PACKAGES = ("tasks", "cluster", "storage", "pipelines")


def _imports(path: Path):
    """Absolute imports of ``path``, ``from tilegraph import x`` as ``tilegraph.x``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "tilegraph":
                yield from (f"tilegraph.{alias.name}" for alias in node.names)
            else:
                yield node.module or ""


def _target(name: str) -> str:
    """The package an import reaches: ``tilegraph.cluster.x`` -> ``cluster``."""
    parts = name.split(".")
    if parts[0] == "tilegraph" and len(parts) > 1:
        return parts[1]
    return parts[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in _imports(path)
        if _target(name) in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_only_tilegraph_names():
    """No module imports the folders by their bare names: installed, only ``tilegraph``
    exists, and a user's own ``tasks.py`` or ``storage.py`` must not shadow ours."""
    files = [p for p in REPO.rglob("*.py") if not {".venv", ".venv-ci", "build"} & set(p.parts)]
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in PACKAGES
    ]
    assert not bad, "\n".join(bad)


def test_kernels_import_without_the_framework():
    """``import tilegraph.tasks...`` on a worker does not pull in pipelines, Dask or Ray."""
    code = (
        "import sys, tilegraph.tasks.ttn.integrator, tilegraph.tasks.picard.samplers;"
        "print(sorted(m for m in ('tilegraph.pipelines', 'tilegraph.cluster', 'distributed',"
        " 'ray', 'zarr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert out.stdout.strip() == "[]"


def test_tasks_do_no_file_io():
    bad = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} calls open()")
    assert not bad, "\n".join(bad)


def test_pipelines_reach_stores_only_through_runstore():
    """No raw Zarr group in ``pipelines/``: ``RunStore`` offers has, delete, node_attrs,
    set_node_attrs, clear_checkpoints, arrays and datasets."""
    bad = []
    for path in sorted((REPO / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "group":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} uses .group")
    assert not bad, "\n".join(bad)
