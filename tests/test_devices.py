"""The device layer of ``tasks.devices``: moving trees of arrays between the host and a
device, the parallel slots of an executor, deterministic BLAS, and the one ``Device``
type every pipeline config uses."""

import subprocess
import sys
import threading
from collections import namedtuple
from types import SimpleNamespace
from typing import get_args

import array_api_strict as xps
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits
from tilegraph.pipelines.registry import load_pipelines
from tilegraph.tasks import devices
from tilegraph.tasks.devices import (
    DEVICES,
    Device,
    array_module,
    deterministic_blas,
    slots,
    to_device,
    to_host,
)

Pair = namedtuple("Pair", "a b")


def _tree():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    return {
        "a": a,
        "z": rng.standard_normal(5) + 1j * rng.standard_normal(5),
        "nested": [a, (rng.integers(0, 9, 6), 2.5, None), {"s": "text", "k": 3}],
        "pair": Pair(rng.standard_normal(2), np.float64(1.5)),
    }


def _same(got, want):
    """``got`` has the structure, leaf types and bits of ``want`` (NumPy leaves)."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for k in want:
            _same(got[k], want[k])
    elif isinstance(want, list | tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _same(g, w)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    else:
        assert got == want


def test_device_names_are_the_device_type():
    assert DEVICES == get_args(Device) == ("cpu", "cuda", "array-api-strict")
    assert array_module("cpu") is np and array_module("array-api-strict") is xps
    with pytest.raises(ValueError, match="device must be one of"):
        array_module("tpu")


def test_numpy_round_trip_is_the_same_objects():
    tree = _tree()
    assert to_device(np, tree) is tree
    assert to_host(tree) is not tree  # containers are rebuilt ...
    _same(to_host(tree), tree)
    a = tree["a"]
    assert to_device(np, a) is a and to_host(a) is a  # ... arrays never copied
    assert to_host(a, copy=True) is a
    assert to_host(to_host(tree))["nested"][0] is a


def test_strict_round_trip_keeps_structure_dtypes_and_bits():
    tree = _tree()
    dev = to_device(xps, tree)
    assert type(dev["a"]).__module__.startswith("array_api_strict")
    assert dev["z"].dtype == xps.complex128 and dev["nested"][1][0].dtype == xps.int64
    # an array that occurs twice is moved once: kernels may group factors by identity
    assert dev["nested"][0] is dev["a"]
    assert isinstance(dev["pair"], Pair) and dev["pair"].b == 1.5
    assert dev["nested"][1][1:] == (2.5, None) and dev["nested"][2] == {"s": "text", "k": 3}
    for copy in (False, True):
        back = to_host(dev, copy=copy)
        _same(back, tree)
        assert all(type(x) is np.ndarray for x in (back["a"], back["z"], back["pair"].a))


def test_single_arrays_as_before():
    a = np.linspace(0.0, 1.0, 7)
    d = to_device(xps, a)
    assert d.dtype == xps.float64
    h = to_host(d)
    assert type(h) is np.ndarray and h.tobytes() == a.tobytes()
    # copy=True: nothing returned shares memory with the device array
    assert not np.shares_memory(to_host(d, copy=True), h)
    # an array with ``get()`` (CuPy's way) is fetched through it
    fake = SimpleNamespace(shape=(2,), dtype=np.float64, get=lambda: np.array([1.0, 2.0]))
    np.testing.assert_array_equal(to_host(fake), [1.0, 2.0])
    # leaves that are no arrays are left alone
    assert to_host(3.0) == 3.0 and to_host(None) is None
    assert to_device(xps, 3.0) == 3.0


class _Executor:
    """Counts reads: on Dask each property is a scheduler round trip."""

    def __init__(self, n_workers, n_gpus):
        self._w, self._g = n_workers, n_gpus
        self.reads: list[str] = []

    @property
    def n_workers(self):
        self.reads.append("n_workers")
        return self._w

    @property
    def n_gpus(self):
        self.reads.append("n_gpus")
        return self._g


@pytest.mark.parametrize(
    ("device", "items", "per_item", "want"),
    [
        ("cpu", None, False, 4),
        ("array-api-strict", None, False, 4),
        ("cuda", None, False, 2),
        ("cpu", 3, False, 3),  # at most one slot per item
        ("cpu", 9, False, 4),
        ("cuda", 9, False, 2),
        ("cpu", 9, True, 9),  # ttn: one stateful worker per subtree on the CPU ...
        ("array-api-strict", 9, True, 9),
        ("cuda", 9, True, 2),  # ... but only one per GPU
        ("cuda", 1, True, 1),
    ],
)
def test_slots(device, items, per_item, want):
    ex = _Executor(4, 2)
    assert slots(ex, device, items, cpu_per_item=per_item) == want
    assert ex.reads == (["n_gpus"] if device == "cuda" else [] if per_item else ["n_workers"])


def test_slots_are_at_least_one():
    assert slots(SimpleNamespace(n_workers=3, n_gpus=0), "cuda") == 1
    assert slots(SimpleNamespace(n_workers=0, n_gpus=None), "cpu") == 1
    assert slots(SimpleNamespace(n_workers=3, n_gpus=None), "cuda", 5) == 1
    assert slots(SimpleNamespace(n_workers=3, n_gpus=2), "cpu", 0) == 1
    with pytest.raises(ValueError, match="needs items"):
        slots(SimpleNamespace(n_workers=3, n_gpus=2), "cpu", cpu_per_item=True)


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_deterministic_blas_limits_inside_and_restores_outside():
    assert _blas_threads()
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        with deterministic_blas():
            assert set(_blas_threads()) == {1}
            with deterministic_blas():  # nested: still one thread, one limit
                assert set(_blas_threads()) == {1}
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before

        @deterministic_blas()
        def inside():
            return _blas_threads()

        assert set(inside()) == {1}
        assert _blas_threads() == before
        with pytest.raises(KeyError), deterministic_blas():
            raise KeyError("restored on errors too")
        assert _blas_threads() == before
    assert devices._BLAS["depth"] == 0 and not devices._BLAS["limiters"]


def test_deterministic_blas_across_threads():
    """Tasks of the threads executor share the limit: one leaving does not lift it while
    another is still inside."""
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        entered, left = threading.Event(), threading.Event()
        seen = []

        def other():
            with deterministic_blas():
                entered.set()
                left.wait(10)
            seen.append("left")

        t = threading.Thread(target=other)
        with deterministic_blas():
            t.start()
            assert entered.wait(10)
        # this thread has left; the other is still inside
        seen.append(_blas_threads())
        left.set()
        t.join(10)
        assert seen[0] and set(seen[0]) == {1}
        assert _blas_threads() == before


def test_deterministic_blas_limits_a_blas_loaded_inside():
    """A library loaded after the first entry (SciPy's own OpenBLAS, imported by a task)
    is limited by the next entry, and restored with the others."""
    code = """
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from tilegraph.tasks.devices import deterministic_blas

def blas():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info()
            if i["user_api"] == "blas"}

with threadpool_limits(limits=2, user_api="blas"):
    first = blas()  # NumPy's
    with deterministic_blas():
        import scipy.linalg  # noqa: F401

        loaded = {k: v for k, v in blas().items() if k not in first}  # SciPy's, unlimited
        with deterministic_blas():
            inside = blas()
    after = blas()
assert loaded and len(inside) == len(first) + len(loaded), inside
assert set(inside.values()) == {1}, inside
assert after == {**first, **loaded}, (first, loaded, after)
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", sorted(load_pipelines()))
def test_every_config_uses_the_device_type(name):
    """Every registered pipeline with a ``device`` field types it with ``Device``."""
    config = load_pipelines()[name].config
    field = config.model_fields.get("device")
    if field is None:
        pytest.skip(f"{name} has no device field")
    assert get_args(field.annotation) == get_args(Device)
    assert field.default == "cpu"


def test_picard_refuses_array_api_strict_in_one_line():
    from pydantic import ValidationError
    from tilegraph.pipelines.config import describe_error

    config = load_pipelines()["picard"].config
    with pytest.raises(ValidationError) as err:
        config(device="array-api-strict")
    line = describe_error(config, err.value)
    assert "\n" not in line and "device" in line and "array-api-strict" in line
