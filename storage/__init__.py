"""Where data lives: run stores on Zarr v3, checkpoints, xarray results and provenance.

A run is a Zarr v3 group at ``<root>/<pipeline>/<run-id>/`` (root a local path or any fsspec
URL).  ``storage`` never imports ``tasks``, ``cluster`` or ``pipelines``.

Examples
--------
>>> from tilegraph import storage
>>> root = storage.Root("memory://doc-runs")
>>> run = root.create("demo", config={"n": 4}, backend="sync")
>>> ref = run.create_array("u", shape=(4,), chunks=(2,), dimension_names=("x",))
>>> ref.write((slice(0, 2),), [1.0, 2.0])
>>> run.mark_complete({"n": 4})
>>> root.open(run.run_id).status
'complete'
"""

from .checkpoint import Checkpoint
from .chunks import ArrayRef, check_whole_chunks, chunk_regions
from .errors import ChunkOwnershipError, DatasetIncomplete, RunNotFound
from .lease import Lease, LeaseHeld, LeaseLost
from .provenance import collect_provenance, jsonable
from .runstore import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    TRACEBACK_FILE,
    Root,
    RunStore,
    new_run_id,
)
from .sweeps import SweepStore, sweep_url
from .urls import normalize_url

__all__ = [
    "COMPLETE",
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "RUNNING",
    "TRACEBACK_FILE",
    "ArrayRef",
    "Checkpoint",
    "ChunkOwnershipError",
    "DatasetIncomplete",
    "Root",
    "RunNotFound",
    "RunStore",
    "SweepStore",
    "check_whole_chunks",
    "chunk_regions",
    "collect_provenance",
    "jsonable",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "new_run_id",
    "normalize_url",
    "sweep_url",
]
