"""Exceptions raised by :mod:`storage`."""

from __future__ import annotations

__all__ = ["ChunkOwnershipError", "DatasetIncomplete", "RunNotFound"]


class RunNotFound(KeyError):
    """No run with the requested id exists under a root.

    A :class:`KeyError` subclass, so ``except KeyError`` also catches it; unlike a plain
    ``KeyError`` its ``str()`` is the message itself, not its ``repr``.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class ChunkOwnershipError(ValueError):
    """A write region does not consist of whole chunks (or whole shards).

    Raised before anything is written, so a refused write leaves the array untouched.
    """


class DatasetIncomplete(RuntimeError):
    """A dataset on an object store whose write was stopped before its end (it is
    written in place there, nothing is renamed, and its group's ``zarr.json`` last, so
    that it does not open); writing it again mends it."""
