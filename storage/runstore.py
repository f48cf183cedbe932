"""Run stores: one Zarr v3 group per run at ``<root>/<pipeline>/<run-id>/``.

:class:`Root` creates, finds and lists runs under a root (a local path or any fsspec URL);
:class:`RunStore` is one run: its attributes (config, provenance, status, metrics), its
arrays, its xarray results, its checkpoints and its summary plot.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from . import checkpoint as _ckpt
from .chunks import ArrayRef
from .errors import DatasetIncomplete, RunNotFound
from .lease import Lease, LeaseLost
from .metadata_last import MetadataLast
from .provenance import collect_provenance, jsonable, utc_now
from .urls import filesystem, is_local, join, normalize_url, open_store
from .zarr_loop import sync

if TYPE_CHECKING:
    import xarray

__all__ = [
    "COMPLETE",
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "RUNNING",
    "TRACEBACK_FILE",
    "Root",
    "RunStore",
    "new_run_id",
]

PENDING = "pending"  # created, its work not started yet (a sweep point waiting for a worker)
RUNNING = "running"
COMPLETE = "complete"
FAILED = "failed"
#: What ``Root.runs`` lists for a run whose record cannot be read (not a stored status).
UNREADABLE = "unreadable"
#: What ``Root.runs`` lists for a ``running`` run whose process is gone (killed without
#: recording it; see ``RunStore.interrupted``), or a ``pending`` sweep point whose
#: sweep's process is gone (``Root.stranded_points``): not a stored status.
INTERRUPTED = "interrupted"
#: Side file of a failed run holding the traceback of the exception that ended it.
TRACEBACK_FILE = "traceback.txt"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESERVED = {_ckpt.CHECKPOINTS}
#: Where :meth:`Run.write_dataset` writes before moving into place (and the earlier
#: dataset while it does); names like these are not a user's to take.
_SCRATCH = re.compile(r".+\.(partial|old)-[0-9a-f]{8}")


async def _has_keys_under(store: Any, prefix: str) -> bool:
    """Whether ``store`` holds a key below ``prefix`` (fsspec stores list a file
    ``NAME`` itself for the prefix ``NAME/``)."""
    async for key in store.list_prefix(prefix):
        if key.startswith(prefix):
            return True
    return False


def new_run_id(now: _dt.datetime | None = None) -> str:
    """A fresh run id ``YYYYMMDD-HHMMSS-<6 hex>`` (UTC time; sortable by start time)."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{now.astimezone(_dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _umask() -> int:
    """The process's umask (from /proc where it is, else set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {kind} {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def _check_path(kind: str, path: str) -> str:
    parts = path.split("/") if isinstance(path, str) else [""]
    if not all(_NAME.fullmatch(p) for p in parts):
        raise ValueError(
            f"invalid {kind} {path!r}: '/'-separated names of letters, digits, '.', '_', '-'"
        )
    if parts[0] in _RESERVED:
        raise ValueError(f"invalid {kind} {path!r}: {parts[0]!r} is reserved")
    return path


#: The attributes of a run or sweep record and the types they must have.
_ATTR_TYPES = {"pipeline": str, "status": str, "config": dict, "metrics": dict,
               "provenance": dict, "error": (str, type(None))}  # fmt: skip


def _malformed(attrs: Any, id_key: str = "run_id") -> str | None:
    """What is wrong with a record's attributes (a store may come from anyone), or None."""
    if not isinstance(attrs, dict):
        return f"attributes are a {type(attrs).__name__}, not a mapping"
    for key, kind in {id_key: str, **_ATTR_TYPES}.items():
        if key in attrs and not isinstance(attrs[key], kind):
            return f"attribute {key!r} is a {type(attrs[key]).__name__}"
    return None


def _summary(attrs: Mapping[str, Any], url: str) -> dict[str, Any]:
    prov = attrs.get("provenance") or {}
    return {
        "run_id": attrs.get("run_id"),
        "pipeline": attrs.get("pipeline"),
        "status": attrs.get("status"),
        "started": prov.get("started"),
        "ended": prov.get("ended"),
        "metrics": dict(attrs.get("metrics") or {}),
        "error": attrs.get("error"),
        "url": url,
    }


class RunStore:
    """One run: a Zarr v3 group holding a pipeline's config, state and results.

    Usually obtained from :meth:`Root.create` or :meth:`Root.open`.

    Parameters
    ----------
    url : str or os.PathLike
        Location of the run group (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options for non-local URLs.

    Raises
    ------
    RunNotFound
        If there is no run group at ``url``.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        kind: str = "run",
        id_key: str = "run_id",
    ) -> None:
        # what it is and the attribute that holds its id: a sweep's record is a "sweep"
        self._KIND, self._ID = kind, id_key
        self._url = normalize_url(url)
        self._options = dict(storage_options or {})
        fs, path = filesystem(self._url, self._options)
        if not fs.exists(join(path, "zarr.json")):
            raise RunNotFound(f"no {self._KIND} group at {self._url}")
        self._store = open_store(self._url, self._options)
        try:
            attrs = self.group.attrs.asdict()
        except Exception as exc:  # a zarr.json that is not a Zarr group's
            raise ValueError(
                f"the {self._KIND} at {self._url} is unreadable "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            ) from None
        if self._ID not in attrs or "pipeline" not in attrs:
            raise RunNotFound(f"the Zarr group at {self._url} is not a tilegraph {self._KIND}")
        bad = _malformed(attrs, self._ID)
        if bad:
            raise ValueError(f"the {self._KIND} at {self._url} is unreadable ({bad})")
        self._run_id: str = attrs[self._ID]
        self._pipeline: str = attrs["pipeline"]
        self._leases: list[Lease] = []  # those handed out by lease(): see _check_owner

    # -- identity -------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The run id, ``YYYYMMDD-HHMMSS-<6 hex>`` unless given explicitly."""
        return self._run_id

    @property
    def pipeline(self) -> str:
        """Name of the pipeline that made the run."""
        return self._pipeline

    @property
    def url(self) -> str:
        """Location of the run group: an absolute path for local roots, else a URL."""
        return self._url

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options used for non-local stores (a copy)."""
        return dict(self._options)

    @property
    def is_local(self) -> bool:
        """True when the run lives on the local file system."""
        return is_local(self._url)

    @property
    def group(self) -> zarr.Group:
        """The run's :class:`zarr.Group`, freshly opened (attributes read now)."""
        return zarr.open_group(self._store, mode="r+", zarr_format=3)

    def __repr__(self) -> str:
        return f"RunStore({self._pipeline}/{self._run_id} at {self._url!r})"

    # -- nodes inside the run (what pipelines need instead of the raw group) -------------
    def has(self, path: str) -> bool:
        """Whether an array or group exists at ``path`` (``"work/x0"``, ``"model"``)."""
        return path in self.group

    def delete(self, path: str) -> None:
        """Remove the array or group at ``path`` with everything below it; no error
        when it does not exist."""
        self._check_owner()  # a taken-over owner must not delete what the new one resumed
        group = self.group
        if path in group:
            del group[path]

    def node_attrs(self, path: str) -> dict[str, Any]:
        """The attributes of the array or group at ``path`` (``{}`` when it is missing)."""
        group = self.group
        return group[path].attrs.asdict() if path in group else {}

    def set_node_attrs(self, path: str, changes: Mapping[str, Any]) -> None:
        """Update the attributes of the group or array at ``path`` in one atomic write
        (a group is created when missing): use the last such write as a commit marker."""
        group = self.group
        node = group[path] if path in group else group.require_group(path)
        node.update_attributes(jsonable(dict(changes)))

    def clear_checkpoints(self) -> None:
        """Remove every checkpoint (a resume then starts over)."""
        self.delete("checkpoints")

    # -- attributes -----------------------------------------------------------------------
    def _attrs(self) -> dict[str, Any]:
        return self.group.attrs.asdict()

    def _check_owner(self) -> None:
        """Raise :class:`~tilegraph.storage.lease.LeaseLost` when a lease this object
        acquired was taken over by another process: its writes would mix with the new
        owner's."""
        if any(lease.lost for lease in self._leases):
            raise LeaseLost(
                f"{self._KIND} {self._run_id}: another process took over its lease (this "
                "one looked dead: stopped, or its clock far off); stopping without writing"
            )

    def watch(self, lease: Lease) -> None:
        """Refuse this object's writes once ``lease`` (acquired elsewhere, e.g. before the
        group existed) is lost, as for leases from :meth:`lease`."""
        self._leases.append(lease)

    def _update(self, changes: Mapping[str, Any]) -> None:
        self._check_owner()
        # one atomic zarr.json write (``attrs.update`` writes once per key: a kill between
        # them could leave a run "complete" without its metrics)
        self.group.update_attributes(jsonable(dict(changes)))

    @property
    def config(self) -> dict[str, Any]:
        """The validated config the run was created with."""
        return dict(self._attrs().get("config") or {})

    @property
    def status(self) -> str:
        """``"pending"``, ``"running"``, ``"complete"`` or ``"failed"``."""
        return self._attrs()["status"]

    @property
    def metrics(self) -> dict[str, Any]:
        """Headline metrics recorded so far."""
        return dict(self._attrs().get("metrics") or {})

    @property
    def provenance(self) -> dict[str, Any]:
        """Versions, host, backend, git commit, argv and start / end / resume times."""
        return dict(self._attrs().get("provenance") or {})

    @property
    def error(self) -> str | None:
        """The error message of a failed run, else ``None``."""
        return self._attrs().get("error")

    def summary(self) -> dict[str, Any]:
        """``run_id, pipeline, status, started, ended, metrics, error, url`` of this run."""
        return _summary(self._attrs(), self._url)

    def set_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Merge ``metrics`` into the recorded metrics (NumPy scalars and NaN made JSON-safe).

        Parameters
        ----------
        metrics : mapping of str to JSON-able
            Headline numbers, e.g. ``{"residual": 1e-9, "wall_s": 12.3}``.
        """
        merged = self.metrics
        merged.update(jsonable(dict(metrics), "metrics"))
        self._update({"metrics": merged})

    def _finish(self, status: str, error: str | None, metrics: Mapping[str, Any] | None) -> None:
        attrs = self._attrs()
        prov = dict(attrs.get("provenance") or {})
        prov["ended"] = utc_now()
        merged = dict(attrs.get("metrics") or {})
        merged.update(jsonable(dict(metrics or {}), "metrics"))
        self._update({"status": status, "error": error, "metrics": merged, "provenance": prov})

    def mark_complete(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Set status ``complete`` and the end time, merging ``metrics`` in the same write."""
        self._finish(COMPLETE, None, metrics)

    @property
    def reports(self) -> list[str]:
        """Performance reports written for this run (``--report``), oldest first."""
        return list(self._attrs().get("reports") or [])

    def add_report(self, path: str) -> None:
        """Record that a performance report of this run was written to ``path``."""
        self._update({"reports": [*self.reports, str(path)]})

    def lease(self, *, ttl: float = 30.0, interval: float = 5.0) -> Lease:
        """The lease that makes one process at a time the owner of this run.

        Use as ``with run.lease():`` or ``run.lease().acquire(wait=…)``; see
        :class:`tilegraph.storage.lease.Lease` (raises ``LeaseHeld`` naming the owner).
        Once a lease handed out here is lost to another process, this object's status,
        metrics and checkpoint writes raise ``LeaseLost``.
        """
        lease = self._lease_of(ttl=ttl, interval=interval)
        self._leases.append(lease)
        return lease

    def _lease_of(self, **kwargs: float) -> Lease:
        return Lease(self._url, f"{self._KIND} {self._run_id}", self._options, **kwargs)

    @property
    def interrupted(self) -> bool:
        """Whether the run says ``running`` but the process that ran it is gone: killed
        without a chance to record it (SIGKILL, a lost node). Its lease is left with a
        dead owner; ``--resume`` continues it."""
        # a lease object of its own: one that is never acquired need not be watched
        return self.status == RUNNING and self._lease_of().abandoned()

    def mark_pending(self) -> None:
        """Set status ``pending`` (queued to run again; its work not started yet).

        Clears the error; the start time and the checkpoints are kept.
        """
        self._update({"status": PENDING, "error": None})

    def mark_failed(
        self, error: str | BaseException, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Set status ``failed``, the error message and the end time.

        Parameters
        ----------
        error : str or BaseException
            The message; an exception is recorded as ``"TypeName: message"`` and its
            traceback is kept in the side file ``traceback.txt`` of the run.
        metrics : mapping, optional
            Merged into the metrics in the same write.
        """
        self._check_owner()
        if isinstance(error, BaseException):
            tb = "".join(traceback.format_exception(error))
            try:
                self.write_bytes(TRACEBACK_FILE, tb.encode())
            except Exception:  # the status below matters more than the traceback
                pass
            error = f"{type(error).__name__}: {error}"
        self._finish(FAILED, str(error), metrics)

    @property
    def traceback_path(self) -> str | None:
        """Location of the traceback a failure left (``traceback.txt``), else ``None``."""
        target = self._side_path(TRACEBACK_FILE)
        fs, path = filesystem(target, self._options)
        return target if fs.exists(path) else None

    def mark_running(self) -> None:
        """Set status to ``running``: a ``pending`` run starts, or a run resumes.

        A run never started gets its start time. Otherwise the original start time is
        kept and the current time appended to ``provenance["resumed"]``. Clears
        ``ended``, the error and the traceback file.
        """
        prov = self.provenance
        if prov.get("started") is None:
            prov["started"] = utc_now()
        else:
            prov["resumed"] = [*(prov.get("resumed") or []), utc_now()]
        prov["ended"] = None
        self._update({"status": RUNNING, "error": None, "provenance": prov})
        stale = self.traceback_path
        if stale is not None:
            fs, path = filesystem(stale, self._options)
            fs.rm(path)

    @property
    def restored(self) -> list[dict[str, Any]]:
        """What each resume of this run restored, oldest first: ``checkpoint`` (the step
        of the checkpoint it continued from, None if it started its part over) and
        ``skipped`` (steps it did not do again)."""
        return list(self.provenance.get("restored") or [])

    def record_resume(self, checkpoint: int | None, skipped: int) -> None:
        """Append what a resume restored to ``provenance["restored"]``."""
        prov = self.provenance
        entry = {"checkpoint": checkpoint, "skipped": int(skipped)}
        prov["restored"] = [*(prov.get("restored") or []), entry]
        self._update({"provenance": prov})

    # -- arrays ---------------------------------------------------------------------------
    def create_array(
        self,
        name: str,
        shape: Sequence[int],
        chunks: Sequence[int],
        dtype: Any = "float64",
        dimension_names: Sequence[str] | None = None,
        fill_value: Any = 0.0,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        shards: Sequence[int] | None = None,
        compressors: Any = "auto",
    ) -> ArrayRef:
        """Create a chunked array in the run and return a worker handle on it.

        Parameters
        ----------
        name : str
            Array path inside the run (``"u"`` or ``"fields/u"``).
        shape, chunks : sequence of int
            Array and chunk shape (same length).
        dtype : dtype-like
            Element type, default ``float64``.
        dimension_names : sequence of str, optional
            One name per axis, stored as Zarr v3 ``dimension_names`` (default
            ``dim_0, dim_1, …``).
        fill_value : scalar
            Value of never-written elements (cast to ``dtype``).
        attrs : mapping, optional
            Free-form attributes, e.g. ``{"units": "m/s"}``.
        overwrite : bool
            Replace an existing array of that name.
        shards : sequence of int, optional
            Shard shape (a multiple of ``chunks``); the shard is then the unit each task
            must write whole.
        compressors : "auto" or None or codec list
            Passed to zarr; ``None`` stores raw bytes (scratch vectors that are rewritten
            every iteration are faster uncompressed).

        Returns
        -------
        ArrayRef
        """
        _check_path("array name", name)
        shape_t = tuple(int(n) for n in shape)
        chunks_t = tuple(int(c) for c in chunks)
        if len(chunks_t) != len(shape_t):
            raise ValueError(f"chunks {chunks_t} do not match shape {shape_t}")
        if dimension_names is None:
            dims = tuple(f"dim_{i}" for i in range(len(shape_t)))
        else:
            dims = tuple(str(d) for d in dimension_names)
        if len(dims) != len(shape_t):
            raise ValueError(f"dimension_names {dims} do not match shape {shape_t}")
        np_dtype = np.dtype(dtype)
        fill = np.asarray(fill_value).astype(np_dtype).item() if fill_value is not None else None
        self.group.create_array(
            name,
            shape=shape_t,
            chunks=chunks_t,
            shards=tuple(int(s) for s in shards) if shards is not None else None,
            dtype=np_dtype,
            dimension_names=dims,
            fill_value=fill,
            attributes=jsonable(dict(attrs or {}), "attrs"),
            overwrite=overwrite,
            compressors=compressors,
        )
        return self.array(name)

    def require_array(
        self,
        name: str,
        shape: Sequence[int],
        chunks: Sequence[int],
        dtype: Any = "float64",
        **kwargs: Any,
    ) -> ArrayRef:
        """The array ``name`` as it is when it exists with this shape, chunks and dtype
        (what a resumed run wrote before), else created anew (as :meth:`create_array`,
        replacing an array of that name that does not match).

        Returns
        -------
        ArrayRef
        """
        if self.has(name):
            ref = self.array(name)
            same = (
                ref.shape == tuple(int(n) for n in shape)
                and ref.chunks == tuple(int(c) for c in kwargs.get("shards") or chunks)
                and np.dtype(ref.dtype) == np.dtype(dtype)
            )
            if same:
                return ref
        return self.create_array(name, shape, chunks, dtype, overwrite=True, **kwargs)

    def array(self, name: str) -> ArrayRef:
        """Return an :class:`ArrayRef` on the existing array ``name``.

        Raises
        ------
        KeyError
            If the run has no array of that name.
        """
        try:
            node = self.group[name]
        except KeyError:
            node = None
        if not isinstance(node, zarr.Array):
            raise KeyError(f"run {self._run_id} has no array {name!r} (at {self._url})")
        unit = node.shards if node.shards is not None else node.chunks
        return ArrayRef(
            store_url=self._url,
            path=name,
            shape=tuple(node.shape),
            chunks=tuple(unit),
            dtype=str(np.dtype(node.dtype)),
            storage_options=dict(self._options) or None,
        )

    def dataset_variable(self, name: str, var: str) -> np.ndarray:
        """The whole array of variable (or coordinate) ``var`` of dataset ``name``, read
        without xarray (which refuses a dataset whose arrays disagree in length)."""
        return np.asarray(self.group[f"{name}/{var}"][...])

    def truncate_dataset(self, name: str, dim: str, length: int) -> None:
        """Cut every array of dataset ``name`` that has dimension ``dim`` to at most
        ``length`` entries along it.

        Rows appended after a checkpoint can differ in length between the dataset's
        arrays (a process killed while it appended them); a resume cuts them back to
        the checkpoint's rows before it opens the dataset.
        """
        for _, arr in self.group[name].arrays():
            dims = tuple(arr.metadata.dimension_names or ())
            if dim in dims and arr.shape[dims.index(dim)] > length:
                shape = list(arr.shape)
                shape[dims.index(dim)] = length
                arr.resize(tuple(shape))

    # -- xarray results -------------------------------------------------------------------
    def write_dataset(self, name: str, ds: xarray.Dataset, **to_zarr_kwargs: Any) -> str:
        """Write ``ds`` to the subgroup ``name`` with ``Dataset.to_zarr``.

        Zarr v3, unconsolidated, replacing an earlier dataset of that name; attributes are
        made JSON-safe first.  Anyone can read it back with
        ``xarray.open_zarr(run.url + "/" + name)``.

        Parameters
        ----------
        name : str
            Subgroup name.
        ds : xarray.Dataset
            The result, with coordinates and units in attrs.
        **to_zarr_kwargs
            Passed to ``to_zarr`` (e.g. ``encoding``); may override ``mode``.

        Returns
        -------
        str
            The dataset's location.
        """
        _check_path("dataset name", name)
        if any(_SCRATCH.fullmatch(part) for part in name.split("/")):
            raise ValueError(
                f"invalid dataset name {name!r}: names ending in '.partial-' or '.old-' and 8 "
                "hex digits are where a write in progress goes"
            )
        ds = ds.copy(deep=False)
        ds.attrs = jsonable(dict(ds.attrs), "dataset attrs")
        for var in ds.variables.values():
            var.attrs = jsonable(dict(var.attrs), "variable attrs")
        # NumPy's fixed-width strings have no Zarr v3 data type (zarr warns on every
        # write); Python strings are stored as variable-length UTF-8, which has one
        text = {
            k: (v.dims, v.values.astype(object), v.attrs)
            for k, v in ds.variables.items()
            if v.dtype.kind == "U"
        }
        ds = ds.assign_coords({k: v for k, v in text.items() if k in ds.coords})
        for k, v in text.items():
            if k not in ds.coords:
                ds[k] = v
        kwargs = {"mode": "w", **to_zarr_kwargs, "zarr_format": 3, "consolidated": False}
        if not (self.is_local and kwargs["mode"] == "w"):
            if kwargs["mode"] != "w":  # appending to a dataset already there
                ds.to_zarr(self._store, group=name, **kwargs)
                return join(self._url, name)
            # in place (object stores rename nothing): the group's zarr.json, by which
            # Zarr finds it, is deleted first and written last, so that a write stopped
            # half-way leaves no dataset that opens (it is refused, not read as whole)
            if kwargs.get("compute") is False:
                raise ValueError(
                    "write_dataset: compute=False cannot be used on an object store "
                    "(the dataset appears only once it is written)"
                )
            key = f"{name}/zarr.json"
            sync(self._store.delete(key))
            store = MetadataLast(self._store, key)
            ds.to_zarr(store, group=name, **kwargs)
            store.release()
            return join(self._url, name)
        # written beside it and moved into place: a kill mid-write leaves the earlier
        # dataset (or none), never one that opens with variables missing
        final = os.path.join(self._url, *name.split("/"))
        for stale in glob.glob(glob.escape(final) + ".*-*"):
            if _SCRATCH.fullmatch(os.path.basename(stale)) and stale.rsplit(".", 1)[0] == final:
                shutil.rmtree(stale, ignore_errors=True)  # an earlier write's, killed
        token = secrets.token_hex(4)
        ds.to_zarr(self._store, group=f"{name}.partial-{token}", **kwargs)
        old = f"{final}.old-{token}"
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(f"{final}.partial-{token}", final)
        shutil.rmtree(old, ignore_errors=True)
        return join(self._url, name)

    @property
    def datasets(self) -> list[str]:
        """Names of the run's groups that :meth:`open_dataset` opens (``result``,
        ``history`` …), sorted; checkpoints and writes in progress are not listed."""
        with warnings.catch_warnings():  # summary.png and the lease are no Zarr nodes
            warnings.simplefilter("ignore", UserWarning)
            keys = list(self.group.group_keys())
        return sorted(k for k in keys if k != _ckpt.CHECKPOINTS and not _SCRATCH.fullmatch(k))

    def open_dataset(self, name: str, **open_zarr_kwargs: Any) -> xarray.Dataset:
        """Open the dataset ``name`` written by :meth:`write_dataset` (lazily, via dask).

        Raises
        ------
        KeyError
            If the run has no group of that name (the message lists the ones it has).
        DatasetIncomplete
            If its write was stopped before its end (object stores only; on disk the
            earlier dataset stays).
        """
        import xarray

        try:
            node = self.group[name] if name else None
        except KeyError:
            node = None
        if not isinstance(node, zarr.Group):
            if node is None and name and sync(_has_keys_under(self._store, name + "/")):
                raise DatasetIncomplete(
                    f"run {self._run_id}: dataset {name!r} was not completely written (its "
                    "write was stopped); resume the run (--resume) to write it again"
                )
            have = self.datasets
            raise KeyError(
                f"run {self._run_id} has no dataset {name!r} (it has: {', '.join(have) or 'none'})"
            )
        kwargs = {"consolidated": False, "zarr_format": 3, **open_zarr_kwargs}
        return xarray.open_zarr(self._store, group=name, **kwargs)

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(
        self,
        step: int,
        arrays: Mapping[str, Any],
        scalars: Mapping[str, Any] | None = None,
        keep: int | None = 3,
    ) -> None:
        """Save the state of ``step`` atomically.

        See :func:`tilegraph.storage.checkpoint.save_checkpoint`.

        Parameters
        ----------
        step : int
            Iteration number (>= 0).
        arrays : mapping of str to array_like
            State arrays, any shape and numeric dtype.
        scalars : mapping, optional
            JSON-able values (NaN/inf are stored as ``None``).
        keep : int or None
            Newest complete checkpoints to keep, default 3; ``None`` keeps all.
        """
        self._check_owner()
        _ckpt.save_checkpoint(self.group, step, arrays, scalars, keep=keep)

    def load_checkpoint(self) -> _ckpt.Checkpoint | None:
        """The newest complete, checksum-verified checkpoint as ``(step, arrays, scalars)``.

        Returns ``None`` when there is none.
        """
        return _ckpt.load_checkpoint(self.group)

    def checkpoint_steps(self) -> list[int]:
        """Steps with a checkpoint directory (complete or not), ascending."""
        return _ckpt.checkpoint_steps(self.group)

    def checkpoint_superseded(self, step: int) -> bool:
        """Whether a checkpoint newer than ``step`` was completed (and may be damaged
        now: the newest *loadable* one is then older than the state outside it)."""
        return _ckpt.completed_after(self.group, step)

    # -- side files (summary plot) --------------------------------------------------------
    @property
    def plot_path(self) -> str | None:
        """Local path of ``summary.png`` inside the run directory; ``None`` for remote runs.

        For remote runs write the image with :meth:`write_bytes` or :meth:`save_figure`.
        """
        return os.path.join(self._url, "summary.png") if self.is_local else None

    def _side_path(self, name: str) -> str:
        parts = name.split("/") if isinstance(name, str) else [""]
        if not all(p and p not in (".", "..") for p in parts):
            raise ValueError(f"invalid file name {name!r}: use a relative path inside the run")
        return join(self._url, name)

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write a side file (e.g. ``"summary.png"``) into the run directory atomically.

        Returns
        -------
        str
            The file's location (a local path or a URL).
        """
        target = self._side_path(name)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; Zarr's files follow umask
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            fs, path = filesystem(target, self._options)
            fs.pipe_file(path, bytes(data))
        return target

    def read_bytes(self, name: str) -> bytes:
        """Read a side file written with :meth:`write_bytes`."""
        fs, path = filesystem(self._side_path(name), self._options)
        return fs.cat_file(path)

    def save_figure(self, fig: Any, name: str = "summary.png", **savefig_kwargs: Any) -> str:
        """Save a Matplotlib figure into the run (local or remote) and return its location."""
        buf = io.BytesIO()
        savefig_kwargs.setdefault("format", name.rsplit(".", 1)[-1] if "." in name else "png")
        fig.savefig(buf, **savefig_kwargs)
        return self.write_bytes(name, buf.getvalue())


class Root:
    """The root under which runs live, as ``<root>/<pipeline>/<run-id>/``.

    Parameters
    ----------
    url : str or os.PathLike
        ``./runs`` (default), any local path, ``file://…``, ``memory://…`` (tests) or an
        object store URL such as ``s3://bucket/prefix``.
    storage_options : dict, optional
        fsspec options for non-local URLs (credentials, endpoint …).
    """

    def __init__(
        self,
        url: str | os.PathLike[str] = "./runs",
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self._url = normalize_url(url)
        self._options = dict(storage_options or {})

    @property
    def url(self) -> str:
        """Normalised root: an absolute path for local roots, else the URL."""
        return self._url

    @property
    def options(self) -> dict[str, Any]:
        """fsspec options for non-local roots (a copy)."""
        return dict(self._options)

    def __repr__(self) -> str:
        return f"Root({self._url!r})"

    def run_url(self, pipeline: str, run_id: str) -> str:
        """Location of run ``run_id`` of ``pipeline`` (whether it exists or not)."""
        return join(self._url, check_name("pipeline", pipeline), check_name("run id", run_id))

    def _fs(self):
        return filesystem(self._url, self._options)

    def create(
        self,
        pipeline: str,
        config: Mapping[str, Any] | Any | None = None,
        *,
        backend: str | None = None,
        run_id: str | None = None,
        pending: bool = False,
    ) -> RunStore:
        """Create a new run with status ``running`` and its provenance recorded.

        Parameters
        ----------
        pipeline : str
            Pipeline name (letters, digits, ``.``, ``_``, ``-``).
        config : mapping or pydantic model, optional
            The validated config; stored JSON-safe in ``attrs["config"]``.
        backend : str, optional
            The cluster spec, recorded in the provenance.
        run_id : str, optional
            Explicit id; default a fresh ``YYYYMMDD-HHMMSS-<6 hex>``.
        pending : bool
            Create it ``pending`` instead, without a start time, for work queued to start
            later (:meth:`RunStore.mark_running` starts it).

        Returns
        -------
        RunStore

        Raises
        ------
        FileExistsError
            If an explicit ``run_id`` already exists for this pipeline.
        """
        check_name("pipeline", pipeline)
        config_json = jsonable(config if config is not None else {}, "config")
        if not isinstance(config_json, dict):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        fs, base = self._fs()
        now = _dt.datetime.now(_dt.UTC)
        for _attempt in range(20):
            rid = check_name("run id", run_id) if run_id is not None else new_run_id(now)
            url = self.run_url(pipeline, rid)
            if not fs.exists(join(base, pipeline, rid, "zarr.json")):
                break
            if run_id is not None:
                raise FileExistsError(f"run {rid} of pipeline {pipeline!r} exists at {url}")
        else:  # pragma: no cover - 20 collisions of 24 random bits
            raise FileExistsError(f"could not find a free run id under {self._url}")
        attrs = {
            "run_id": rid,
            "pipeline": pipeline,
            "status": PENDING if pending else RUNNING,
            "error": None,
            "metrics": {},
            "config": config_json,
            "provenance": collect_provenance(backend, now.isoformat()),
        }
        if pending:
            attrs["provenance"]["started"] = None
        zarr.open_group(
            open_store(url, self._options), mode="w-", zarr_format=3, attributes=jsonable(attrs)
        )
        return RunStore(url, storage_options=self._options)

    def open(self, run_id: str, pipeline: str | None = None) -> RunStore:
        """Open an existing run by id, looking under every pipeline unless one is given.

        Raises
        ------
        RunNotFound
            If no such run exists (the message names the root and what was searched).
        ValueError
            If the id exists under several pipelines and ``pipeline`` is not given.
        """
        fs, base = self._fs()
        where = f"pipeline {pipeline!r}" if pipeline else "any pipeline"
        if not isinstance(run_id, str) or not _NAME.fullmatch(run_id):
            raise RunNotFound(f"no run {run_id!r} under {self._url}: not a valid run id")
        if pipeline is not None:
            check_name("pipeline", pipeline)
            hits = [pipeline] if fs.exists(join(base, pipeline, run_id, "zarr.json")) else []
        else:
            hits = sorted(
                p[len(base) :].strip("/").split("/")[0]
                for p in fs.glob(join(base, "*", run_id, "zarr.json"))
            )
        if not hits and pipeline is not None:
            elsewhere = sorted(
                p[len(base) :].strip("/").split("/")[0]
                for p in fs.glob(join(base, "*", run_id, "zarr.json"))
            )
            if elsewhere == ["sweeps"]:
                raise RunNotFound(
                    f"{run_id!r} is a sweep, not a run: run the same `tilegraph sweep` "
                    "command again to continue it (complete points are kept)"
                )
            if elsewhere:
                raise RunNotFound(
                    f"run {run_id!r} belongs to pipeline {elsewhere[0]!r}, not {pipeline!r} "
                    f"(`tilegraph run {elsewhere[0]} --resume {run_id}`)"
                )
        if not hits:
            known = len(self.runs(pipeline))
            raise RunNotFound(
                f"no run {run_id!r} under {self._url} ({where}; {known} runs there). "
                f"List them with `tilegraph runs --store {self._url}`."
            )
        if len(hits) > 1:
            raise ValueError(
                f"run id {run_id!r} exists under pipelines {', '.join(hits)} in {self._url}; "
                "pass pipeline="
            )
        return RunStore(self.run_url(hits[0], run_id), storage_options=self._options)

    def resume(self, run_id: str, pipeline: str | None = None) -> RunStore:
        """Open a run and set it back to ``running`` (see :meth:`RunStore.mark_running`).

        Take its lease (:meth:`RunStore.lease`) to own it against other processes.

        Raises
        ------
        ValueError
            If the run is complete (its checkpoints are gone: nothing to continue).
        """
        run = self.open(run_id, pipeline)
        if run.status == COMPLETE:
            raise ValueError(f"run {run_id} is complete: nothing to resume")
        run.mark_running()
        return run

    def runs(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Summaries of all runs (of one pipeline if given), sorted by run id.

        Returns
        -------
        list of dict
            ``run_id, pipeline, status, started, ended, metrics, error, url`` per run,
            and ``sweep``: the id of the sweep it is a point of, or None.
        """
        fs, base = self._fs()
        pattern = join(base, check_name("pipeline", pipeline) if pipeline else "*", "*")
        paths = fs.glob(join(pattern, "zarr.json"))
        blobs = fs.cat(paths, on_error="omit") if paths else {}
        out = []
        for path in paths:
            parts = path[len(base) :].strip("/").split("/")
            try:  # a file that could not be read (permissions, I/O) is not in blobs
                meta = json.loads(blobs[path])
            except (KeyError, ValueError):
                meta = None
            if len(parts) != 3 or parts[0] == "sweeps":
                continue
            url = join(self._url, parts[0], parts[1])
            attrs = meta.get("attributes") if isinstance(meta, dict) else None
            if isinstance(meta, dict) and meta.get("node_type") != "group":
                continue
            if isinstance(attrs, dict) and "run_id" not in attrs:
                continue  # some other group
            if attrs is None or _malformed(attrs):
                # listed, not hidden: the user should see what cannot be read
                attrs = {"run_id": parts[1], "pipeline": parts[0], "status": UNREADABLE}
            summary = _summary(attrs, url)
            if summary["status"] == RUNNING and Lease(url, "run", self._options).abandoned():
                summary["status"] = INTERRUPTED
            out.append(summary)
        records = self._sweep_records()  # read once: the sweep of each point, and
        stranded = self._stranded(records) if any(r["status"] == PENDING for r in out) else ()
        sweep_of: dict[str, Any] = {}
        for _, attrs in records:
            for run_id in attrs["points"].values():
                sweep_of.setdefault(str(run_id), attrs.get("sweep_id"))
        for r in out:
            r["sweep"] = sweep_of.get(str(r["run_id"]))
            if r["status"] == PENDING and r["run_id"] in stranded:
                r["status"] = INTERRUPTED
        out.sort(key=lambda r: (str(r["run_id"]), str(r["pipeline"])))
        return out

    def stranded_points(self) -> set[str]:
        """Run ids of the points of sweeps whose driving process is gone.

        A sweep killed without a chance to record it (SIGKILL, a lost node) leaves the
        points it had not started ``pending``, and they would say so forever; running
        the same sweep command again continues them.

        Returns
        -------
        set of str
            The points of every sweep that says ``running`` while no live process
            holds its lease. Sweeps that cannot be read are skipped.
        """
        return self._stranded(self._sweep_records())

    def _stranded(self, records) -> set[str]:
        out: set[str] = set()
        for url, attrs in records:
            if self._sweep_gone(url, attrs):
                out.update(str(v) for v in attrs["points"].values())
        return out

    def _sweep_gone(self, url: str, attrs: Mapping[str, Any]) -> bool:
        """Whether a sweep record says ``running`` but no live process runs it: its lease
        has a dead owner, or it was let go without the record being marked."""
        if attrs.get("status") != RUNNING:
            return False
        lease = Lease(url, "sweep", self._options)
        held = lease.read() or lease._unreadable()  # a lease file being written: held
        return held is None or lease.abandoned()

    def sweeps(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Summaries of the sweeps under the root (of one pipeline if given), oldest first.

        Returns
        -------
        list of dict
            ``sweep_id, pipeline, status, points, complete, failed, grid, created, url``
            per sweep; ``status`` is ``interrupted`` for a sweep that says ``running``
            whose process is gone.
        """
        out = []
        for url, attrs in self._sweep_records():
            if pipeline is not None and attrs.get("pipeline") != pipeline:
                continue
            status = INTERRUPTED if self._sweep_gone(url, attrs) else attrs.get("status")
            counts = attrs.get("metrics") if isinstance(attrs.get("metrics"), dict) else {}
            configs = attrs.get("point_configs")
            out.append(
                {
                    "sweep_id": attrs.get("sweep_id"),
                    "pipeline": attrs.get("pipeline"),
                    "status": status,
                    "points": len(configs) if isinstance(configs, list) else len(attrs["points"]),
                    "complete": counts.get("complete"),
                    "failed": counts.get("failed"),
                    "grid": attrs.get("grid"),
                    "created": attrs.get("created"),
                    "url": url,
                }
            )
        out.sort(key=lambda r: (str(r["created"]), str(r["sweep_id"])))
        return out

    def _sweep_records(self) -> list[tuple[str, dict[str, Any]]]:
        """``(url, attributes)`` of every readable sweep record under the root."""
        fs, base = self._fs()
        paths = fs.glob(join(base, "sweeps", "*", "zarr.json"))
        blobs = fs.cat(paths, on_error="omit") if paths else {}
        out = []
        for path, blob in blobs.items():
            try:
                attrs = json.loads(blob).get("attributes")
            except (ValueError, AttributeError):
                continue
            if isinstance(attrs, dict) and isinstance(attrs.get("points"), dict):
                name = path[len(base) :].strip("/").split("/")[1]
                out.append((join(self._url, "sweeps", name), attrs))
        return out

    @contextlib.contextmanager
    def _deleting(self, run: RunStore):
        """Hold the leases that keep ``run`` from being run while it is deleted: its own
        and those of the sweeps that record it as a point (a sweep started meanwhile
        waits, or is refused, instead of running a point that is going)."""
        leases = []
        try:
            leases.append(run.lease().acquire(wait=0.0))  # a dead owner's is taken over
            for url, attrs in self._sweep_records():
                if run.run_id in {str(v) for v in attrs["points"].values()}:
                    name = url.rstrip("/").rsplit("/", 1)[-1]
                    what = f"sweep {name}, whose point it is,"
                    leases.append(Lease(url, what, self._options).acquire(wait=0.0))
            yield
        finally:
            for lease in reversed(leases):
                lease.release()

    def check_deletable(self, run: RunStore) -> None:
        """Refuse to delete ``run`` while a live process runs it or a live sweep has it
        as one of its points (it will start it, or read its results).

        Raises
        ------
        LeaseHeld
            Naming the process.
        """
        with self._deleting(run):
            pass

    def delete(self, run_id: str, pipeline: str | None = None) -> str:
        """Delete a run: its record, results, checkpoints and figures.

        The run's record goes first, so that a delete stopped half-way leaves no run
        that lists or opens; on a local store the folder is then moved aside, and what
        a stopped delete left is cleared by the next one. A point of a sweep is run
        again by the next run of the same sweep command.

        Parameters
        ----------
        run_id : str
        pipeline : str, optional
            Look only under this pipeline's folder.

        Returns
        -------
        str
            Where the run was.

        Raises
        ------
        RunNotFound
            If there is no such run.
        LeaseHeld
            If a live process runs it, or a live sweep has it as a point.
        """
        fs, base = self._fs()
        local = is_local(self._url)
        if local:  # what deletes stopped half-way left
            for left in glob.glob(os.path.join(glob.escape(base), "*", ".deleting-*")):
                shutil.rmtree(left, ignore_errors=True)
        run = self.open(run_id, pipeline)
        fs, path = filesystem(run.url, self._options)
        with self._deleting(run):
            fs.rm_file(join(path, "zarr.json"))  # from here on no run lists or opens
            if local:
                aside = os.path.join(
                    os.path.dirname(path), f".deleting-{run.run_id}-{secrets.token_hex(4)}"
                )
                os.rename(path, aside)
        # the leases are released: their files go with the rest
        if local:
            shutil.rmtree(aside)
        else:
            fs.rm(path, recursive=True)
        return run.url
