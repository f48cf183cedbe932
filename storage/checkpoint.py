"""Atomic checkpoints of iterative state inside a run group.

Layout: ``checkpoints/<step:08d>/`` holds one Zarr array per state array.  The subgroup is
created with ``{"complete": false}`` and, as the very last write, its attributes are replaced
by the manifest ``{"complete": true, "step", "arrays": {name: {"sha256", "shape", "dtype"}},
"scalars", "saved"}``.  Rewriting one ``zarr.json`` is a single atomic object write on object
stores and an atomic rename on local disks, so a crash at any point leaves either no manifest
or a complete one, and :func:`load_checkpoint` also verifies every checksum before trusting
a checkpoint.  Object stores need no rename for this to hold.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import zarr

from .chunks import to_numpy
from .provenance import jsonable, utc_now

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "checkpoint_steps",
    "completed_after",
    "load_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

#: Name of the subgroup of a run that holds the checkpoints.
CHECKPOINTS = "checkpoints"


class Checkpoint(NamedTuple):
    """A loaded checkpoint; unpacks as ``step, arrays, scalars``."""

    step: int
    arrays: dict[str, np.ndarray]
    scalars: dict[str, Any]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(a, order="C").tobytes()).hexdigest()


def _step_name(step: int) -> str:
    return f"{step:08d}"


def _checkpoints(run: zarr.Group, create: bool) -> zarr.Group | None:
    if create:
        return run.require_group(CHECKPOINTS)
    try:
        node = run[CHECKPOINTS]
    except KeyError:
        return None
    return node if isinstance(node, zarr.Group) else None


def checkpoint_steps(run: zarr.Group) -> list[int]:
    """All checkpoint steps present under ``run`` (complete or not), ascending."""
    ck = _checkpoints(run, create=False)
    if ck is None:
        return []
    return sorted(int(k) for k in ck.group_keys() if k.isdigit())


def completed_after(run: zarr.Group, step: int) -> bool:
    """Whether a checkpoint newer than ``step`` was ever completed (its whole manifest
    was written), whether or not its arrays are intact now.

    A run whose state lives partly outside its checkpoints (blocks of a state array that
    it rotates through) cannot fall back past such a checkpoint: it has overwritten the
    parts the older one refers to since. An unreadable manifest counts as completed.
    """
    ck = _checkpoints(run, create=False)
    if ck is None:
        return False
    return any(_is_complete(ck, s, unreadable=True) for s in checkpoint_steps(run) if s > step)


def _is_complete(ck: zarr.Group, step: int, unreadable: bool = False) -> bool:
    """Whether checkpoint ``step`` has its whole manifest (older versions wrote its keys
    one at a time, and a kill between them left "complete" without "arrays");
    ``unreadable`` is the answer when its metadata cannot be read."""
    try:
        attrs = ck[_step_name(step)].attrs
        return attrs.get("complete") is True and attrs.get("step") == step and "arrays" in attrs
    except Exception:
        return unreadable


def _delete(ck: zarr.Group, step: int) -> None:
    name = _step_name(step)
    try:  # drop the manifest first so a half-deleted checkpoint is never "complete"
        ck[name].update_attributes({"complete": False})
    except Exception:
        pass
    del ck[name]


def save_checkpoint(
    run: zarr.Group,
    step: int,
    arrays: Mapping[str, Any],
    scalars: Mapping[str, Any] | None = None,
    keep: int | None = 3,
) -> None:
    """Write the state of ``step`` atomically, then prune old checkpoints.

    Parameters
    ----------
    run : zarr.Group
        The run group.
    step : int
        Non-negative step number; a checkpoint already stored for this step is replaced.
    arrays : mapping of str to array_like
        State arrays (NumPy or CuPy, any numeric/bool dtype, any shape incl. 0-d). Names
        must not contain ``/``.
    scalars : mapping, optional
        JSON-able values stored in the manifest (NaN/inf come back as ``None``).
    keep : int or None
        Number of newest complete checkpoints to keep (``None``: keep all).
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    data: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("__"):
            raise ValueError(f"invalid checkpoint array name {name!r}")
        arr = np.asarray(to_numpy(value), order="C")
        if arr.dtype.hasobject:
            raise TypeError(f"checkpoint array {name!r} has object dtype")
        data[name] = arr
    safe_scalars = jsonable(dict(scalars or {}), "scalars")

    ck = _checkpoints(run, create=True)
    name = _step_name(step)
    _delete(ck, step)  # a leftover (partial or complete) from an earlier life of the run
    sub = ck.create_group(name, attributes={"complete": False, "step": step})
    manifest: dict[str, Any] = {}
    for key, arr in data.items():
        sub.create_array(key, data=arr)
        manifest[key] = {"sha256": _digest(arr), "shape": list(arr.shape), "dtype": arr.dtype.str}
    # The very last write: the manifest that makes this checkpoint exist. One zarr.json
    # write: ``attrs.update`` would write once per key, and a kill between those writes
    # left "complete" manifests without their scalars.
    sub.update_attributes(
        {
            "complete": True,
            "step": step,
            "arrays": manifest,
            "scalars": safe_scalars,
            "saved": utc_now(),
        }
    )
    _prune(ck, step, keep)


def _prune(ck: zarr.Group, newest: int, keep: int | None) -> None:
    present = sorted((int(k) for k in ck.group_keys() if k.isdigit()), reverse=True)
    # steps above the one just saved belong to an earlier life of the run that this one
    # did not continue from (steps only grow within one life)
    doomed = {s for s in present if s > newest}
    present = [s for s in present if s <= newest]
    complete = [s for s in present if _is_complete(ck, s)]
    if keep is not None:
        doomed |= set(complete[keep:])
    doomed |= {s for s in present if s < newest and s not in complete}
    for s in sorted(doomed):
        _delete(ck, s)


def _load_one(ck: zarr.Group, step: int) -> Checkpoint:
    sub = ck[_step_name(step)]
    attrs = sub.attrs.asdict()
    if attrs.get("complete") is not True or attrs.get("step") != step:
        raise ValueError("no complete manifest")
    arrays: dict[str, np.ndarray] = {}
    for key, meta in attrs["arrays"].items():
        arr = np.asarray(sub[key][...])
        if list(arr.shape) != meta["shape"] or arr.dtype.str != meta["dtype"]:
            raise ValueError(f"array {key!r} has shape/dtype {arr.shape}/{arr.dtype.str}")
        if _digest(arr) != meta["sha256"]:
            raise ValueError(f"array {key!r} fails its sha256 check")
        arrays[key] = arr
    return Checkpoint(step, arrays, dict(attrs.get("scalars") or {}))


def load_checkpoint(run: zarr.Group) -> Checkpoint | None:
    """Return the newest complete, verified checkpoint of ``run``, or ``None``.

    Checkpoints without a manifest (interrupted writes) and ones whose arrays are missing
    or fail their checksum are skipped with a log warning.

    Parameters
    ----------
    run : zarr.Group
        The run group.

    Returns
    -------
    Checkpoint or None
        ``(step, arrays, scalars)``; ``arrays`` maps names to NumPy arrays.
    """
    ck = _checkpoints(run, create=False)
    if ck is None:
        return None
    for step in reversed(checkpoint_steps(run)):
        try:
            return _load_one(ck, step)
        except Exception as exc:  # any corruption: fall back to the previous checkpoint
            log.warning("skipping checkpoint %s of %s: %s", step, run.store_path, exc)
    return None
