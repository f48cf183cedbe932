"""The user's own modules, made ready to travel to workers that never saw them.

A user names code by import path (``mymodel:factory``, ``mypkg.problems:make``); the
driver finds the top-level module's source (one ``.py`` file or a package folder) and
each backend ships it with its own mechanism: Dask a worker plugin that uploads the file
(a package goes as a zip, which the worker puts on ``sys.path``), Ray the job's
``runtime_env["py_modules"]``, in-process backends the parent folder on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

__all__ = ["MAX_CODE_BYTES", "check_code_paths", "zip_package"]

#: Largest user module (file or package folder) that is shipped, in bytes.
MAX_CODE_BYTES = 64 * 2**20

_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def _files(package: Path):
    for folder, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".venv"))
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(folder) / name


def check_code_paths(paths) -> tuple[str, ...]:
    """Absolute paths of user modules to ship: ``.py`` files or package folders.

    Raises
    ------
    ValueError
        A path that does not exist, is neither a ``.py`` file nor a folder with an
        ``__init__.py``, or is larger than :data:`MAX_CODE_BYTES`.
    """
    if isinstance(paths, str | os.PathLike):  # one path, not its characters
        paths = (paths,)
    out: list[str] = []
    for raw in paths:
        path = Path(raw).resolve()
        if path.is_file() and path.suffix == ".py":
            size = path.stat().st_size
        elif path.is_dir() and (path / "__init__.py").is_file():
            size = sum(f.stat().st_size for f in _files(path))
        else:
            raise ValueError(f"user code {str(raw)!r}: not a .py file or a package folder")
        if size > MAX_CODE_BYTES:
            raise ValueError(
                f"user code {str(path)!r} is {size / 2**20:.0f} MiB; at most "
                f"{MAX_CODE_BYTES // 2**20} MiB is shipped to workers (install it on them)"
            )
        if str(path) not in out:
            out.append(str(path))
    return tuple(out)


def zip_package(package: str, folder: str) -> str:
    """Zip the package folder ``package`` into ``folder``/<name>.zip (importable from it).

    Returns
    -------
    str
        The zip's path; ``sys.path`` holding it makes ``import <name>`` work.
    """
    root = Path(package)
    target = Path(folder) / f"{root.name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(root):
            zf.write(path, Path(root.name) / path.relative_to(root))
    return str(target)


def add_to_sys_path(paths) -> None:
    """In-process backends: make each module importable here (its parent folder first)."""
    for path in paths:
        parent = str(Path(path).parent)
        if parent not in sys.path:
            sys.path.insert(0, parent)
