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


class SweepStore:
    """One sweep: its definition, the run id of each point, and the gathered results.

    A sweep is not a run: it holds a record (a Zarr group with status, metrics, the
    result Dataset and a figure, kept by a :class:`RunStore` of kind ``"sweep"``) and
    offers only what a sweep needs.

    Parameters
    ----------
    url : str or os.PathLike
        Location of the sweep group.
    storage_options : dict, optional
        fsspec options for non-local URLs.
    """

    def __init__(
        self, url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None
    ) -> None:
        self._record = RunStore(
            url, storage_options=storage_options, kind="sweep", id_key="sweep_id"
        )

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
        """The sweep id."""
        return self._record.run_id

    @property
    def pipeline(self) -> str:
        """The swept pipeline."""
        return self._record.pipeline

    @property
    def url(self) -> str:
        """The sweep group's location."""
        return self._record.url

    @property
    def status(self) -> str:
        """``running``, ``complete`` or ``failed``."""
        return self._record.status

    @property
    def metrics(self) -> dict[str, Any]:
        """Counts of the points (``points``, ``complete``, ``failed``)."""
        return self._record.metrics

    @property
    def definition(self) -> dict[str, Any]:
        """Everything recorded at creation (``pipeline``, ``grid``, ``point_configs`` …)."""
        return self._record._attrs()

    @property
    def points(self) -> dict[str, str]:
        """Point key -> run id, for the points that have a run."""
        return dict(self.definition.get("points") or {})

    def set_point(self, key: str, run_id: str) -> None:
        """Record that point ``key`` is (being) computed by run ``run_id``."""
        points = self.points
        points[key] = run_id
        self.set_points(points)

    def set_points(self, points: Mapping[str, str]) -> None:
        """Replace the record of point key -> run id (one atomic write)."""
        self._record._update({"points": dict(points)})

    # -- status, results and figure, kept by the record -------------------------------
    def mark_running(self) -> None:
        """Set the sweep ``running`` (again)."""
        self._record.mark_running()

    def watch(self, lease: Any) -> None:
        """Refuse the record's writes once the sweep's ``lease`` is lost
        (:meth:`RunStore.watch`)."""
        self._record.watch(lease)

    def mark_failed(
        self, error: str | BaseException, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Set the sweep ``failed`` with ``error`` (and its counts, in the same write)."""
        self._record.mark_failed(error, metrics)

    def mark_complete(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Set the sweep ``complete`` (with its counts)."""
        self._record.mark_complete(metrics)

    def set_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Record the sweep's counts."""
        self._record.set_metrics(metrics)

    def write_dataset(self, name: str, ds: Any, **to_zarr_kwargs: Any) -> str:
        """Write the sweep's ``name`` Dataset (see :meth:`RunStore.write_dataset`)."""
        return self._record.write_dataset(name, ds, **to_zarr_kwargs)

    @property
    def datasets(self) -> list[str]:
        """Names of the sweep's datasets (``result``)."""
        return self._record.datasets

    def open_dataset(self, name: str, **open_zarr_kwargs: Any) -> Any:
        """The sweep's ``name`` Dataset (``result``)."""
        return self._record.open_dataset(name, **open_zarr_kwargs)

    def save_figure(self, fig: Any, name: str = "summary.png", **kwargs: Any) -> str:
        """Save the sweep's figure next to its record."""
        return self._record.save_figure(fig, name, **kwargs)

    @property
    def plot_path(self) -> str | None:
        """Location of ``summary.png``, or None."""
        return self._record.plot_path

    def __repr__(self) -> str:
        return f"SweepStore({self.pipeline}/{self.sweep_id} at {self.url!r})"
