"""tilegraph: large numerical problems as Dask or Ray task graphs over chunked Zarr arrays.

The repository root is this package (``package-dir = {"tilegraph" = "."}`` in
``pyproject.toml``); its four folders are the subpackages
:mod:`tilegraph.tasks` (kernels), :mod:`tilegraph.cluster` (executors),
:mod:`tilegraph.storage` (run stores) and :mod:`tilegraph.pipelines` (composition, CLI).

What users touch is re-exported here, imported on first use so that
``import tilegraph.tasks`` on a worker stays light:

>>> import tilegraph
>>> run = tilegraph.run("domain-split", preset="quick", cluster="sync",
...                     store="memory://doc")                       # doctest: +SKIP
>>> run.status, run.metrics["rel_error_exact"]                      # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tilegraph")
except PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "connect": "tilegraph.cluster",
    "Root": "tilegraph.storage",
    "RunStore": "tilegraph.storage",
    "run": "tilegraph.pipelines.api",
    "sweep": "tilegraph.pipelines.api",
    "get_pipeline": "tilegraph.pipelines.registry",
    "load_pipelines": "tilegraph.pipelines.registry",
    "available": "tilegraph.pipelines.registry",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tilegraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
