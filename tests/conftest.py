"""Shared fixtures.

Executors are expensive to start (a LocalCluster, a Ray instance), so tests that need a
backend share one per spec for the whole module through ``executors``; at most one Ray
instance may exist per process.

``tests/plugin`` holds a pipeline registered the way a user's package registers one (an
entry point in a ``.dist-info`` folder); it goes on ``sys.path`` and ``PYTHONPATH`` here,
before anything starts, so that this process, the CLI subprocesses and every worker of
every backend see it.
"""

import os
import sys
from pathlib import Path

import pytest

PLUGIN = str(Path(__file__).parent / "plugin")
if PLUGIN not in sys.path:
    sys.path.insert(0, PLUGIN)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [PLUGIN, *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
    )


# --- pipeline fixtures ---
@pytest.fixture(scope="module")
def executors():
    """``executors(spec)`` -> an open, shared ``cluster.Executor`` (closed at the end)."""
    from tilegraph import cluster

    opened: dict = {}

    def get(spec: str):
        if spec not in opened:
            opened[spec] = cluster.connect(spec).__enter__()
        return opened[spec]

    yield get
    for ex in opened.values():
        ex.__exit__(None, None, None)


# --- GPU tests: run only where CuPy sees a CUDA device ---
def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    from tilegraph.cluster.gpus import local_gpu_count

    if local_gpu_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs CUDA and CuPy (no GPU visible here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
