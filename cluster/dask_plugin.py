"""A worker plugin that makes Dask workers import this distribution's top-level packages.

A Dask worker puts its local directory first on ``sys.path`` and keeps spilled data in
a sub-folder of it called ``storage``. Python then resolves ``import storage`` to that
folder (as an empty namespace package) whenever tilegraph is installed in editable mode
or through a path hook that comes after the normal path search, and every task that uses
the run store fails with "module 'storage' has no attribute …". The plugin imports the
real packages once per worker, with the worker's folder left out of the search.
"""

from __future__ import annotations

import importlib
import os
import sys

from distributed.diagnostics.plugin import WorkerPlugin


def sibling_packages() -> tuple[str, ...]:
    """Top-level packages installed by the distribution that installed this one."""
    from importlib.metadata import packages_distributions

    top = __name__.split(".")[0]
    mapping = packages_distributions()
    dists = set(mapping.get(top, ()))
    return tuple(sorted(name for name, d in mapping.items() if dists & set(d)))


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path or "."), folder]) == folder
    except ValueError:  # different drives
        return False


class OwnPackagesFirst(WorkerPlugin):
    """Import the distribution's packages on each worker, the worker's folder unsearched.

    Parameters
    ----------
    packages : tuple of str
        Top-level package names (:func:`sibling_packages` on the client).
    """

    name = "tilegraph-own-packages-first"

    def __init__(self, packages: tuple[str, ...]) -> None:
        self.packages = tuple(packages)

    def setup(self, worker) -> None:
        local = os.path.abspath(worker.local_directory)
        for name in self.packages:
            mod = sys.modules.get(name)
            if mod is not None and getattr(mod, "__file__", None) is None:
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[key]
        saved = list(sys.path)
        sys.path[:] = [p for p in saved if not _inside(p, local)]
        try:
            for name in self.packages:
                try:
                    importlib.import_module(name)
                except ImportError:  # a worker without tilegraph: tasks will say so
                    pass
        finally:
            sys.path[:] = saved
