"""Zarr's own event loop, for calling its asynchronous store API from synchronous code.

Zarr's stores keep their asynchronous clients (an object store's connections) on the
event loop Zarr runs in a thread of its own, so their coroutines must run there.
``zarr.core.sync.sync`` does that; it is not public API (Zarr 3.1.3 and later, which
``pyproject.toml`` asks for, have it), and this module is the one place that imports it:
a Zarr that moves it fails here, at import.
"""

from __future__ import annotations

from zarr.core.sync import sync

__all__ = ["sync"]
