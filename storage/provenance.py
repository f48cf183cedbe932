"""Provenance of a run (versions, host, backend, git commit, times) and JSON sanitising."""

from __future__ import annotations

import datetime as _dt
import enum
import getpass
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["PACKAGES", "collect_provenance", "git_commit", "jsonable", "utc_now"]

#: Distributions whose versions are recorded when installed (looked up by metadata only:
#: nothing is imported, so recording provenance never starts Ray or CUDA).
PACKAGES = (
    "numpy",
    "scipy",
    "dask",
    "distributed",
    "ray",
    "zarr",
    "xarray",
    "fsspec",
    "cupy-cuda12x",
    "dask-cuda",
)


def utc_now() -> str:
    """Current UTC time as an ISO 8601 string with offset, to the microsecond."""
    return _dt.datetime.now(_dt.UTC).isoformat()


def jsonable(obj: Any, _where: str = "value") -> Any:
    """Convert ``obj`` to plain JSON types, as Zarr attributes require.

    NumPy scalars become Python scalars, arrays / tuples / sets become lists, mapping keys
    become strings, non-finite floats (NaN, ±inf) become ``None``, paths become strings,
    datetimes ISO strings, enums their values, and objects with ``model_dump`` (pydantic)
    their JSON dump.

    Parameters
    ----------
    obj : Any
        The value to convert.

    Returns
    -------
    Any
        A value made of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``.

    Raises
    ------
    TypeError
        For a value that has no JSON form; the message says where it sits.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), _where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, complex):
        raise TypeError(f"{_where}: complex numbers have no JSON form ({obj!r})")
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v, f"{_where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), _where)
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v, f"{_where}[{i}]") for i, v in enumerate(items)]
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, _where)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if hasattr(obj, "model_dump"):
        return jsonable(obj.model_dump(mode="json"), _where)
    raise TypeError(f"{_where}: {type(obj).__name__} value {obj!r} has no JSON form")


def _git(args: list[str], cwd: str, timeout: float) -> list[str] | None:
    """The output lines of ``git ARGS`` in ``cwd``, or None when it fails."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return lines if proc.returncode == 0 and lines else None


def git_commit(cwd: str | None = None, timeout: float = 2.0) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (default: the working dir), or ``None`` if unknown."""
    words = _git(["rev-parse", "HEAD"], cwd or os.getcwd(), timeout)
    return words[0] if words else None


def tilegraph_commit(timeout: float = 2.0) -> str | None:
    """The commit of tilegraph's own code when it runs from a git checkout of tilegraph
    (an editable install), else ``None`` (a wheel: its version says it)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package
    words = _git(["rev-parse", "--show-toplevel", "HEAD"], here, timeout)
    if words is None or len(words) != 2:
        return None
    # a wheel inside someone's repository (a venv in a project) is not a checkout of it
    return words[1] if os.path.realpath(words[0]) == os.path.realpath(here) else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry / no env var in some containers
        return "unknown"


def collect_provenance(backend: str | None = None, started: str | None = None) -> dict[str, Any]:
    """Describe where and with what a run is made.

    Parameters
    ----------
    backend : str, optional
        The cluster spec the run uses (``"local:2"``, ``"ray"`` …).
    started : str, optional
        ISO start time; default now (UTC).

    Returns
    -------
    dict
        JSON-safe: ``tilegraph`` (version or ``"unknown"``), ``python``, one key per
        installed distribution of :data:`PACKAGES`, ``host``, ``user``, ``platform``,
        ``backend``, ``git_commit`` (of the working directory, the user's project;
        ``None`` outside a git checkout), ``tilegraph_commit`` (of tilegraph's own code
        when it runs from a checkout of it, else ``None``), ``argv``, ``cwd``,
        ``pid``, ``started``, ``ended`` (``None``) and ``resumed`` (an empty list).
    """
    prov: dict[str, Any] = {
        "tilegraph": _version("tilegraph") or "unknown",
        "python": platform.python_version(),
    }
    for dist in PACKAGES:
        version = _version(dist)
        if version is not None:
            prov[dist] = version
    prov.update(
        host=socket.gethostname(),
        user=_user(),
        platform=platform.platform(),
        backend=backend,
        git_commit=git_commit(),
        tilegraph_commit=tilegraph_commit(),
        argv=list(sys.argv),
        cwd=os.getcwd(),
        pid=os.getpid(),
        started=started or utc_now(),
        ended=None,
        resumed=[],
    )
    return jsonable(prov)
