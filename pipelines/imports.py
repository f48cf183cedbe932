"""The user's own code by import path: ``package.module:attribute``, resolved once for
every pipeline, and the source files to ship to the workers.

A config field typed :data:`ImportPath` holds such a path. Before anything is written,
:func:`prepare_user_code` imports every one on the driver (the working directory and the
``--config`` file's folder are importable, as users expect of tools that take import
paths), checks that the attribute exists and is callable, and returns the files to ship:
the top-level module of each path when it is not installed in this environment (a
``.py`` file or a package folder). The executor ships them with its backend's own
mechanism (``cluster.Executor.add_code``), so workers that never saw them import them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel

from .config import ConfigError

__all__ = [
    "IMPORT_PATH_RE",
    "ExternalURL",
    "followed_references",
    "ImportPath",
    "ImportPathError",
    "check_trusted",
    "import_paths",
    "prepare_user_code",
    "resolve",
    "search_dirs",
]

#: ``package.module:attribute`` (the attribute may be dotted: ``mod:Class.method``).
IMPORT_PATH_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class ImportPathError(ConfigError):
    """An import path that does not resolve: one line naming the field and the reason."""


def _check_syntax(value: str) -> str:
    if not IMPORT_PATH_RE.fullmatch(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValueError(f"expected 'package.module:attribute', got {shown!r}")
    return value


class _Marker:
    """Marks a config field as an import path (found by :func:`import_paths`)."""

    def __repr__(self) -> str:
        return "ImportPath"


IMPORT_PATH = _Marker()

#: A config field holding ``package.module:attribute``.
ImportPath = Annotated[str, AfterValidator(_check_syntax), IMPORT_PATH]


class _URLMarker:
    def __repr__(self) -> str:
        return "ExternalURL"


EXTERNAL_URL = _URLMarker()


def _absolute(value: str) -> str:
    # a worker started elsewhere, or a resume from another folder, must find it
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


#: A config field holding a path or URL that a run reads (another run's weights, data);
#: a local path is stored absolute.
ExternalURL = Annotated[str, AfterValidator(_absolute), EXTERNAL_URL]


def _marked(annotation: Any, marker: object) -> bool:
    """Whether ``annotation`` carries ``marker``, possibly inside a union."""
    if marker in getattr(annotation, "__metadata__", ()):
        return True
    return any(_marked(arg, marker) for arg in typing.get_args(annotation))


def _values(config: BaseModel, marker: object, prefix: str = "") -> dict[str, str]:
    found: dict[str, str] = {}
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        where = f"{prefix}{name}"
        if value is None:
            continue
        if isinstance(value, str) and (
            marker in field.metadata or _marked(field.annotation, marker)
        ):
            found[where] = value
        elif isinstance(value, BaseModel):
            found.update(_values(value, marker, f"{where}."))
    return found


def import_paths(config: BaseModel) -> dict[str, str]:
    """Every :data:`ImportPath` value set in ``config``, by dotted field name."""
    return _values(config, IMPORT_PATH)


def followed_references(config: BaseModel) -> dict[str, str]:
    """The code (:data:`ImportPath`) and data (:data:`ExternalURL`) that running
    ``config`` would import or open, by dotted field name: what ``--resume`` refuses to
    follow from a stored config unless the user trusts the store."""
    return {**_values(config, IMPORT_PATH), **_values(config, EXTERNAL_URL)}


def search_dirs(config_file: str | None = None) -> list[str]:
    """Folders made importable for user code: the working directory, then the folder of
    the ``--config`` file (when given)."""
    dirs = [os.getcwd()]
    if config_file:
        folder = str(Path(config_file).resolve().parent)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def _make_importable(dirs: Iterable[str]) -> None:
    for folder in reversed(list(dirs)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    importlib.invalidate_caches()


def resolve(
    target: str,
    *,
    field: str = "import path",
    dirs: Iterable[str] = (),
    must_call: bool = True,
) -> Any:
    """The object ``target`` (``package.module:attribute``) names.

    Parameters
    ----------
    target : str
    field : str
        The config field, for the error message.
    dirs : iterable of str
        Folders to make importable first (see :func:`search_dirs`).
    must_call : bool
        Refuse an attribute that is not callable.

    Raises
    ------
    ImportPathError
        One line: malformed, module not found, attribute missing, not callable, or the
        module raised while importing.
    """
    dirs = list(dirs)
    try:
        _check_syntax(target)
    except ValueError as exc:
        raise ImportPathError(f"config field '{field}': {exc}") from None
    _make_importable(dirs)
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f" (looked in {', '.join(dirs)} and the installed packages)" if dirs else ""
        missing = exc.name or module_name
        raise ImportPathError(
            f"config field '{field}': {target!r}: no module named {missing!r}{where}"
        ) from None
    except (Exception, SystemExit) as exc:  # the user's module raised (or exited) importing
        raise ImportPathError(
            f"config field '{field}': {target!r}: importing {module_name!r} raised "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(
                f"config field '{field}': {target!r}: module {module_name!r} has no "
                f"attribute {attr!r}"
            )
        obj = getattr(obj, part)
    if must_call and not callable(obj):
        raise ImportPathError(
            f"config field '{field}': {target!r} is a {type(obj).__name__}, not callable"
        )
    return obj


def _installed_roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix}
    return sorted(os.path.realpath(r) for r in roots if r)


def _source(module_name: str) -> str | None:
    """The ``.py`` file or package folder of top-level ``module_name`` when it lives
    outside this environment's installed packages (the user's own code), else None."""
    top = module_name.split(".")[0]
    if top == "tilegraph":
        return None
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = os.path.realpath(spec.origin)
    if any(origin.startswith(root + os.sep) for root in _installed_roots()):
        return None
    if spec.submodule_search_locations:  # a package: ship its folder
        return os.path.dirname(origin)
    return origin if origin.endswith(".py") else None


def prepare_user_code(
    configs: Iterable[BaseModel], config_file: str | None = None
) -> tuple[str, ...]:
    """Resolve every import path of ``configs`` on the driver; the modules to ship.

    Parameters
    ----------
    configs : iterable of pydantic.BaseModel
        Validated configs (one run, or every point of a sweep).
    config_file : str, optional
        The ``--config`` file, whose folder is importable too.

    Returns
    -------
    tuple of str
        Absolute paths of ``.py`` files and package folders to ship to the workers.

    Raises
    ------
    ImportPathError
        A path that does not resolve (nothing has been written yet).
    """
    dirs = search_dirs(config_file)
    ship: list[str] = []
    for config in configs:
        for field, target in import_paths(config).items():
            resolve(target, field=field, dirs=dirs)
            source = _source(target.partition(":")[0])
            if source is not None and source not in ship:
                ship.append(source)
    return tuple(ship)


def check_trusted(config: BaseModel, run_id: str, trusted: bool) -> None:
    """Refuse to resume a run whose stored config names code or URLs, unless trusted.

    A run store may come from someone else; its config would otherwise make
    ``--resume`` import and call any ``module:attribute`` or open any URL it names.

    Raises
    ------
    ConfigError
        One line naming the first such field, its value and ``--trust-store``.
    """
    if trusted:
        return
    refs = followed_references(config)
    if refs:
        field, value = next(iter(refs.items()))
        shown = value if len(value) <= 120 else value[:117] + "..."
        raise ConfigError(
            f"--resume {run_id}: the stored config names {shown!r} (field '{field}'), which "
            "resuming would import or open; pass --trust-store if you trust this store"
        )
