"""A Zarr store through which a group's metadata document is written last.

Object stores rename nothing, so a dataset is written there in place. Zarr finds a
group by its ``zarr.json``; writing that one object only after every array and chunk
below it (and deleting the earlier one first) makes the group appear whole or not at
all, to tilegraph and to anyone's ``xarray.open_zarr`` alike (an array below it is still
found by its own path meanwhile).
"""

from __future__ import annotations

from typing import Any

from zarr.abc.store import Store
from zarr.storage import WrapperStore

from .zarr_loop import sync

__all__ = ["MetadataLast"]


class MetadataLast(WrapperStore):
    """Wrap ``store`` so that writes of ``key`` (a group's ``zarr.json``) are held back
    until :meth:`release`; the writer itself reads what it wrote.

    Parameters
    ----------
    store : zarr.abc.store.Store
        The store written to.
    key : str
        The key held back, e.g. ``"result/zarr.json"``.
    """

    def __init__(self, store: Store, key: str, held: dict | None = None) -> None:
        super().__init__(store)
        self._key = key
        self._held = {} if held is None else held  # shared with read-only views

    def _with_store(self, store: Store) -> MetadataLast:
        return type(self)(store, self._key, self._held)

    async def set(self, key: str, value: Any) -> None:
        if key == self._key:
            self._held[key] = value
        else:
            await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        if key == self._key:
            self._held.setdefault(key, value)
        else:
            await self._store.set_if_not_exists(key, value)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if key in self._held and byte_range is None:
            return self._held[key]
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return key in self._held or await self._store.exists(key)

    async def delete(self, key: str) -> None:
        self._held.pop(key, None)
        await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        for key in [k for k in self._held if k.startswith(prefix.rstrip("/") + "/")]:
            del self._held[key]
        await self._store.delete_dir(prefix)

    def release(self) -> None:
        """Write the held-back document: the group appears, whole."""
        if self._key in self._held:
            sync(self._store.set(self._key, self._held.pop(self._key)))
