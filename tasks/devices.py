"""Devices: array namespaces by name, moving data between the host and a device, the
parallel slots a pipeline gets on an executor, and deterministic BLAS.

Every kernel in :mod:`tasks` is written against the array API; a pipeline's ``device``
field (of type :data:`Device`, shared by every config) picks the namespace its workers
run them on: ``cpu`` (NumPy, the reference bits), ``cuda`` (CuPy on the worker's GPU) or
``array-api-strict`` (the same code path as CuPy, checked on a CPU).

This module is the one dispatch point for all of that: pipelines call
:func:`array_module`, :func:`to_device`, :func:`to_host`, :func:`slots` and
:func:`deterministic_blas` rather than spelling out the device cases themselves. It
stays free of the framework: an executor is anything with ``n_workers`` and ``n_gpus``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Literal, get_args

import numpy as np

#: Where a pipeline runs its kernels: the type of every config's ``device`` field.
Device = Literal["cpu", "cuda", "array-api-strict"]

#: The values of :data:`Device`, in order.
DEVICES: tuple[str, ...] = get_args(Device)


def array_module(device: str):
    """The array namespace of ``device``.

    Parameters
    ----------
    device : {"cpu", "cuda", "array-api-strict"}

    Returns
    -------
    module
        NumPy, CuPy or array-api-strict.

    Raises
    ------
    ValueError
        For a name not in :data:`DEVICES`.
    """
    if device == "cpu":
        return np
    if device == "cuda":
        import cupy

        return cupy
    if device == "array-api-strict":
        import array_api_strict

        return array_api_strict
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


def _rebuild(tree, items):
    """A list, tuple or named tuple of the same type as ``tree`` holding ``items``."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*items)
    return type(tree)(items)


def to_device(xp, tree, _seen=None):
    """``tree`` with every NumPy array in it as an array of ``xp``.

    Parameters
    ----------
    xp : module
        The target namespace (see :func:`array_module`).
    tree : numpy.ndarray, list, tuple, dict or any other object
        Lists, tuples (named ones too) and dict values are walked recursively; NumPy
        arrays are converted (same dtype, same values); other leaves (Python numbers,
        NumPy scalars, ``None``, strings, arrays already on a device) are returned
        unchanged.

    Returns
    -------
    object
        ``tree`` itself when ``xp`` is NumPy: no copy, the same objects and bits. Else a
        new tree of the same shape; an array that occurs several times in ``tree`` is
        moved once and stays one object (kernels may group factors by identity).
    """
    if xp is np:
        return tree
    seen = {} if _seen is None else _seen
    if isinstance(tree, np.ndarray):
        if id(tree) not in seen:
            seen[id(tree)] = (tree, xp.asarray(tree))  # keep ``tree`` alive: ids stay unique
        return seen[id(tree)][1]
    if isinstance(tree, dict):
        return {k: to_device(xp, v, seen) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return _rebuild(tree, [to_device(xp, v, seen) for v in tree])
    return tree


def _host_array(x) -> np.ndarray:
    """One device array as a NumPy array: ``x.get()`` for CuPy, DLPack for other array-API
    arrays (array-api-strict refuses ``__array__``)."""
    get = getattr(x, "get", None)
    if callable(get):
        return np.asarray(get())
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


def _is_device_array(x) -> bool:
    return not isinstance(x, np.generic) and (
        hasattr(x, "__dlpack__") or (hasattr(x, "shape") and hasattr(x, "dtype"))
    )


def to_host(tree, copy: bool = False):
    """``tree`` with every device array in it as a NumPy array.

    Parameters
    ----------
    tree : array, list, tuple, dict or any other object
        Lists, tuples (named ones too) and dict values are walked recursively. NumPy
        arrays are returned as they are (no copy); CuPy arrays through ``.get()``; other
        array-API arrays (array-api-strict) through DLPack. Other leaves (Python numbers,
        NumPy scalars, ``None``, strings) are returned unchanged.
    copy : bool
        Copy every converted device array, so that nothing returned shares memory with
        the device's (DLPack may share it on a CPU). NumPy arrays are never copied.

    Returns
    -------
    object
        A NumPy array for a single array; else a tree of the same shape.
    """
    if isinstance(tree, np.ndarray):
        return tree
    if isinstance(tree, dict):
        return {k: to_host(v, copy) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return _rebuild(tree, [to_host(v, copy) for v in tree])
    if not _is_device_array(tree):
        return tree
    out = _host_array(tree)
    fresh = callable(getattr(tree, "get", None))  # CuPy's get() already copies
    return np.array(out, copy=True) if copy and not fresh else out


def slots(executor, device: str, items: int | None = None, *, cpu_per_item: bool = False) -> int:
    """How many parallel slots (stateful workers, task groups) a pipeline gets.

    A slot is a worker on the CPU devices (``cpu``, ``array-api-strict``) and a GPU with
    ``cuda``, where every slot holds a GPU of its own.

    Parameters
    ----------
    executor : object
        Anything with ``n_workers`` and ``n_gpus`` (a ``cluster.Executor``); only the
        one the device needs is read (on Dask each is a scheduler round trip).
    device : {"cpu", "cuda", "array-api-strict"}
    items : int, optional
        How many things there are to share out (blocks, subtrees, sampled blocks): at
        most one slot each.
    cpu_per_item : bool
        On the CPU devices, one slot per item whatever the number of workers (stateful
        workers may share a worker process; ``ttn`` keeps every subtree of the root in
        its own). Only GPUs then limit the slots. Needs ``items``.

    Returns
    -------
    int
        At least 1 (a count of 0 or None, e.g. ``cuda`` on an executor without GPUs,
        gives one slot).
    """
    if device == "cuda":
        n = executor.n_gpus
    elif cpu_per_item:
        if items is None:
            raise ValueError("slots: cpu_per_item needs items")
        n = items
    else:
        n = executor.n_workers
    n = max(1, int(n or 0))
    return n if items is None else max(1, min(n, int(items)))


# -- deterministic BLAS -------------------------------------------------------------------
# BLAS thread pools are mostly process-wide (OpenBLAS on pthreads, MKL, BLIS): the
# contexts of concurrent tasks (the threads executor) and nested ones (a task inside the
# ttn driver's context) must agree, so the first to enter limits them and the last to
# leave restores them. OpenBLAS on OpenMP has one pool per calling thread instead: each
# thread limits and restores its own.
_LOCK = threading.Lock()
_BLAS: dict = {"found": None, "modules": -1, "depth": 0, "limiters": []}
_THREAD = threading.local()  # depth and limiters of the per-thread pools


def _libraries(state: dict):
    """``(shared, per_thread, new)``: threadpoolctl controllers of the BLAS libraries
    loaded now, with process-wide and with per-thread pools, and whether they were just
    found. Finding the libraries costs milliseconds (more than many tasks), limiting
    through found controllers tens of microseconds: they are found again only once
    modules were imported since (an import may load another BLAS, e.g. SciPy's)."""
    n = len(sys.modules)
    if state["found"] is not None and state["modules"] == n:
        return (*state["found"], False)
    from threadpoolctl import ThreadpoolController

    everything = ThreadpoolController()
    blas = [c for c in everything.lib_controllers if c.user_api == "blas"]
    own = [
        c.filepath
        for c in blas
        if c.internal_api == "openblas" and getattr(c, "threading_layer", "") == "openmp"
    ]
    shared = [c.filepath for c in blas if c.filepath not in own]
    state["found"] = (everything.select(filepath=shared), everything.select(filepath=own))
    state["modules"] = n
    return (*state["found"], True)


@contextlib.contextmanager
def _in_control():
    """threadpoolctl >= 3.8 lets one thread at a time change a process-wide OpenBLAS pool
    (the first to try, until it lets go) and silently ignores the others; the first task
    in and the last out may be different threads, so the acting one takes control for
    the moment and lets go again."""
    import threadpoolctl

    clear = getattr(
        getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None
    )
    if clear is not None:
        clear(force=True)
    try:
        yield
    finally:
        if clear is not None:
            clear(force=True)


@contextlib.contextmanager
def deterministic_blas():
    """Single-threaded BLAS inside: the same bits in a one-thread worker process, in a
    multi-threaded driver and on every backend (a multi-threaded ``gemm``, ``trsm`` or
    ``dot`` may split, and so round, a sum differently).

    Limits every BLAS library loaded in the process (threadpoolctl's ``user_api="blas"``;
    OpenMP pools are left alone) to one thread and restores their thread counts on
    leaving. Nested and concurrent uses (threads) share one limit: the first to enter
    sets it, the last to leave restores it (pools that are per thread, OpenBLAS on
    OpenMP, are limited and restored by each thread). Entering costs tens of
    microseconds, and next to nothing while limited. Also a decorator:
    ``@deterministic_blas()``.

    Yields
    ------
    None
    """
    with _LOCK:
        shared, own, new = _libraries(_BLAS)
        # limit when first in, and again when a library may have been loaded since
        if (_BLAS["depth"] == 0 or new) and shared.lib_controllers:
            with _in_control():
                _BLAS["limiters"].append(shared.limit(limits=1))
        _BLAS["depth"] += 1
    depth = getattr(_THREAD, "depth", 0)
    if depth == 0:
        _THREAD.limiters = []
    if (depth == 0 or new) and own.lib_controllers:
        _THREAD.limiters.append(own.limit(limits=1))
    _THREAD.depth = depth + 1
    try:
        yield
    finally:
        _THREAD.depth -= 1
        if _THREAD.depth == 0:
            while _THREAD.limiters:
                _THREAD.limiters.pop().restore_original_limits()
        with _LOCK:
            _BLAS["depth"] -= 1
            if _BLAS["depth"] == 0 and _BLAS["limiters"]:
                with _in_control():
                    while _BLAS["limiters"]:
                        _BLAS["limiters"].pop().restore_original_limits()
