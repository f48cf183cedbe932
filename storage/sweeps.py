"""Sweep records: one Zarr v3 group per parameter sweep at ``<root>/sweeps/<sweep-id>/``.

A sweep's points are ordinary runs (``<root>/<pipeline>/<run-id>/``); the sweep group
records which run belongs to which point and holds the gathered metrics as an xarray
Dataset. Only the process that drives the sweep writes the sweep group, and it holds the
sweep's lease (:mod:`tilegraph.storage.lease`) while it does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import zarr

from .provenance import jsonable, utc_now
from .runstore import RUNNING, RunStore, check_name
from .urls import filesystem, join, normalize_url, open_store

__all__ = ["SWEEPS", "SweepStore", "sweep_url"]

#: Folder under a root that holds the sweep groups.
SWEEPS = "sweeps"


def sweep_url(root: str | os.PathLike[str], sweep_id: str) -> str:
    """Location of sweep ``sweep_id`` under ``root`` (whether it exists or not)."""
    return join(normalize_url(root), SWEEPS, check_name("sweep id", sweep_id))


class SweepStore(RunStore):
    """One sweep: its definition, the run id of each point, and the gathered results.

    Inherits the attribute, dataset and figure methods of :class:`RunStore`; ``run_id``
    is the sweep id.

    Parameters
    ----------
    url : str or os.PathLike
        Location of the sweep group.
    storage_options : dict, optional
        fsspec options for non-local URLs.
    """

    _ID = "sweep_id"
    _KIND = "sweep"

    @classmethod
    def open_or_create(
        cls,
        root: str | os.PathLike[str],
        sweep_id: str,
        definition: Mapping[str, Any],
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> SweepStore:
        """Open sweep ``sweep_id`` under ``root``, creating it with ``definition`` if new.

        Parameters
        ----------
        root : str or os.PathLike
            The run-store root.
        sweep_id : str
        definition : mapping
            Must hold ``pipeline``; stored JSON-safe in the attributes (grid, base config).

        Raises
        ------
        ValueError
            If a sweep of that id exists for another pipeline.
        """
        url = sweep_url(root, sweep_id)
        fs, path = filesystem(url, storage_options)
        if not fs.exists(join(path, "zarr.json")):
            attrs = {
                **jsonable(dict(definition), "sweep definition"),
                "sweep_id": sweep_id,
                "status": RUNNING,
                "created": utc_now(),
                "points": {},
            }
            # under the sweep's lease: no other writer; the folder holds the lease file
            zarr.create_group(open_store(url, storage_options), zarr_format=3, attributes=attrs)
        sweep = cls(url, storage_options=storage_options)
        if sweep.pipeline != definition["pipeline"]:
            raise ValueError(
                f"sweep {sweep_id} at {url} belongs to pipeline {sweep.pipeline!r}, "
                f"not {definition['pipeline']!r}"
            )
        return sweep

    @property
    def sweep_id(self) -> str:
        """The sweep id (also ``run_id``)."""
        return self._run_id

    @property
    def definition(self) -> dict[str, Any]:
        """Everything recorded at creation (``pipeline``, ``grid``, ``point_configs`` …)."""
        return self._attrs()

    @property
    def points(self) -> dict[str, str]:
        """Point key -> run id, for the points that have a run."""
        return dict(self._attrs().get("points") or {})

    def set_point(self, key: str, run_id: str) -> None:
        """Record that point ``key`` is (being) computed by run ``run_id``."""
        points = self.points
        points[key] = run_id
        self._update({"points": points})
