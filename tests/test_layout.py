"""The architecture as a test: ``tasks``, ``cluster`` and ``storage`` never import each
other or ``pipelines``; ``tasks`` does no I/O and no scheduling; pipelines reach Dask
and Ray only through ``cluster``."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> top-level modules it must not import
FORBIDDEN = {
    "tasks": {"cluster", "storage", "pipelines", "dask", "distributed", "ray", "zarr",
              "xarray", "fsspec"},
    "cluster": {"tasks", "storage", "pipelines"},
    "storage": {"tasks", "cluster", "pipelines", "ray"},
    "pipelines": {"dask", "distributed", "ray"},
}  # fmt: skip


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_tasks_do_no_file_io():
    bad = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} calls open()")
    assert not bad, "\n".join(bad)
