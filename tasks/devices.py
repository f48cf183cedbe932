"""Array namespaces by device name, and moving arrays between the host and a device.

Every kernel in :mod:`tasks` is written against the array API; a pipeline's ``device``
field picks the namespace its workers run them on: ``cpu`` (NumPy, the reference bits),
``cuda`` (CuPy on the worker's GPU) or ``array-api-strict`` (the same code path as
CuPy, checked on a CPU).
"""

from __future__ import annotations

import numpy as np

DEVICES = ("cpu", "cuda", "array-api-strict")


def array_module(device: str):
    """The array namespace of ``device``: NumPy, CuPy or array-api-strict."""
    if device == "cpu":
        return np
    if device == "cuda":
        import cupy

        return cupy
    if device == "array-api-strict":
        import array_api_strict

        return array_api_strict
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def to_device(xp, a):
    """Host data as a float64 array of ``xp`` (``a`` itself on NumPy: no copy, the same
    bits)."""
    return a if xp is np else xp.asarray(np.asarray(a, dtype=np.float64))


def to_host(x) -> np.ndarray:
    """``x`` as a NumPy array: itself (no copy) for NumPy, ``x.get()`` for CuPy, DLPack
    for other array-API arrays (array-api-strict refuses ``__array__``)."""
    if isinstance(x, np.ndarray):
        return x
    get = getattr(x, "get", None)
    if callable(get):
        return np.asarray(get())
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)
