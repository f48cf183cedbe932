"""A worker plugin that makes Dask workers import tilegraph's own top-level packages.

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

#: tilegraph's top-level packages (what a worker may need by name).
PACKAGES = ("storage", "tasks", "cluster", "pipelines")


class OwnPackagesFirst(WorkerPlugin):
    """Import :data:`PACKAGES` on each worker without the worker's folder on the path."""

    name = "tilegraph-own-packages-first"

    def setup(self, worker) -> None:
        local = os.path.abspath(worker.local_directory)
        for name in PACKAGES:
            mod = sys.modules.get(name)
            if mod is not None and getattr(mod, "__file__", None) is None:
                for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[key]
        saved = list(sys.path)
        sys.path[:] = [p for p in saved if not os.path.abspath(p or ".").startswith(local)]
        try:
            for name in PACKAGES:
                try:
                    importlib.import_module(name)
                except ImportError:  # a worker without tilegraph: tasks will say so
                    pass
        finally:
            sys.path[:] = saved
