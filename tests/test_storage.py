"""Tests of ``storage``: run stores on real Zarr v3, on disk, on ``memory://`` and on an
S3 object store (moto's server on loopback, through s3fs).

The generic suite is :class:`RunStoreTests`; each backend subclasses it with its own
``root`` fixture (the way zarr-python's ``StoreTests`` run one suite per store).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import re
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from tilegraph import storage
from tilegraph.storage import checkpoint as ckpt

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


@pytest.fixture
def local_root(tmp_path):
    return storage.Root(tmp_path / "runs")


CONFIG = {"n": 8, "tol": 1e-8, "name": "quick", "shape": [4, 4]}


# -- roots, creation, attributes --------------------------------------------------------------
def test_root_url_is_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.Root().url == str(tmp_path / "runs")
    assert storage.Root("sub/dir/").url == str(tmp_path / "sub" / "dir")
    assert storage.Root(f"file://{tmp_path}/x").url == str(tmp_path / "x")
    assert storage.Root("memory://abc/").url == "memory://abc"
    assert storage.Root("S3://bucket/prefix/").url == "s3://bucket/prefix"


# -- arrays -------------------------------------------------------------------------------


# -- chunk ownership --------------------------------------------------------------------------
def test_chunk_regions_tile_the_array_once():
    shape, chunks = (7, 5), (3, 2)
    count = np.zeros(shape, dtype=int)
    regions = list(storage.chunk_regions(shape, chunks))
    for region in regions:
        count[region] += 1
        assert storage.check_whole_chunks(shape, chunks, region) == region
    assert len(regions) == 3 * 3 and (count == 1).all()
    assert list(storage.chunk_regions((), ())) == [()]


def test_check_whole_chunks_rules():
    shape, chunks = (10, 6), (4, 3)
    ok = storage.check_whole_chunks(shape, chunks, (slice(8, None), slice(3, 6)))
    assert ok == (slice(8, 10), slice(3, 6))  # stop at the array end is fine
    assert storage.check_whole_chunks(shape, chunks, (slice(4, 8),)) == (
        slice(4, 8),
        slice(0, 6),
    )
    with pytest.raises(storage.ChunkOwnershipError, match=r"axis 0.*2:8.*0, 4, 8, 10"):
        storage.check_whole_chunks(shape, chunks, (slice(2, 8),), name="u")
    with pytest.raises(storage.ChunkOwnershipError, match=r"'u'.*axis 1.*0:4.*0, 3, 6"):
        storage.check_whole_chunks(shape, chunks, (slice(0, 4), slice(0, 4)), name="u")
    assert issubclass(storage.ChunkOwnershipError, ValueError)
    with pytest.raises(ValueError, match="step"):
        storage.check_whole_chunks(shape, chunks, (slice(0, 8, 2),))


def _write_blocks(ref: storage.ArrayRef, regions: list[tuple[slice, ...]]) -> str:
    """Worker: write this worker's own chunks; also try (and fail) to write a shared chunk."""
    ref = pickle.loads(pickle.dumps(ref))
    for region in regions:
        rows, cols = region
        ii, jj = np.meshgrid(
            np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop), indexing="ij"
        )
        ref.write(region, 100.0 * ii + jj)
    try:
        ref.write((slice(1, 9), slice(0, 5)), np.zeros((8, 5)))
    except storage.ChunkOwnershipError:
        return "refused"
    return "wrote"


def test_four_processes_write_their_own_chunks(local_root):
    run = local_root.create("p", backend="local:4")
    ref = run.create_array("field", (40, 30), (10, 15), dimension_names=("y", "x"))
    regions = list(ref.regions())
    assert len(regions) == 8
    jobs = [(ref, regions[k::4]) for k in range(4)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        outcomes = pool.starmap(_write_blocks, jobs)
    assert outcomes == ["refused"] * 4
    ii, jj = np.meshgrid(np.arange(40), np.arange(30), indexing="ij")
    np.testing.assert_array_equal(ref.read(), 100.0 * ii + jj)


# -- xarray results ---------------------------------------------------------------------------
def _dataset() -> xr.Dataset:
    x = np.linspace(0.0, 1.0, 5)
    t = np.arange(3)
    return xr.Dataset(
        {
            "u": (("t", "x"), np.arange(15.0).reshape(3, 5), {"units": "m/s"}),
            "err": (("t",), np.array([1e-3, 1e-6, 1e-9]), {"units": "1"}),
        },
        coords={"x": ("x", x, {"units": "m"}), "t": ("t", t, {"units": "step"})},
        attrs={"title": "test", "tol": np.float64(1e-8), "n": np.int64(5)},
    )


def test_write_dataset_readable_by_xarray_open_zarr(local_root):
    run = local_root.create("p", config=CONFIG)
    ref = run.create_array("state", (4,), (2,), dimension_names=("i",))
    ref.write((slice(0, 4),), np.arange(4.0))
    ds = _dataset()
    where = run.write_dataset("result", ds)
    assert where == run.url + "/result"
    back = xr.open_zarr(run.url + "/result", consolidated=False, zarr_format=3).load()
    xr.testing.assert_identical(back, ds)
    with pytest.warns(RuntimeWarning, match="consolidated"):  # plain call works too
        plain = xr.open_zarr(run.url + "/result")
    xr.testing.assert_identical(plain.load(), ds)
    meta = zarr.open_array(run.url + "/result/u", mode="r").metadata
    assert meta.dimension_names == ("t", "x")
    # the rest of the run is untouched
    assert run.config == CONFIG and run.status == "running"
    np.testing.assert_array_equal(run.array("state").read(), np.arange(4.0))


def test_datasets_named_like_a_write_in_progress_are_kept_apart(local_root):
    """Writing `result` clears what a killed write of `result` left; a user's dataset
    that merely starts with `result.` is left alone, and the scratch names are refused."""
    run = local_root.create("p", config=CONFIG)
    ds = _dataset()
    run.write_dataset("result.partial-run2", ds + 3)
    run.write_dataset("result", ds)
    run.write_dataset("result", ds + 1)
    xr.testing.assert_identical(run.open_dataset("result.partial-run2").load(), ds + 3)
    for name in ("result.old-0123abcd", "a.partial-0123abcd/x"):
        with pytest.raises(ValueError, match="write in progress"):
            run.write_dataset(name, ds)
    with pytest.raises(KeyError, match=r"it has: result, result\.partial-run2\)"):
        run.open_dataset("nope")


def test_text_coordinates_and_variables_are_written_without_zarr_warnings(local_root):
    """NumPy fixed-width strings (observable names, block names) have no Zarr v3 data
    type; they are stored as variable-length UTF-8 and read back as the same text."""
    import warnings

    run = local_root.create("p", config=CONFIG)
    ds = xr.Dataset(
        {"v": ("name", [1.0, 2.0]), "label": ("name", np.array(["x", "yz"]), {"units": "1"})},
        coords={"name": ("name", np.array(["N 0", "Bdag 0 B 1"]), {"long_name": "term"})},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.write_dataset("result", ds)
    back = xr.open_zarr(run.url + "/result", consolidated=False).load()
    assert (
        list(back.name.values) == ["N 0", "Bdag 0 B 1"] and back.name.attrs["long_name"] == "term"
    )
    assert list(back.label.values) == ["x", "yz"] and back.label.attrs == {"units": "1"}
    np.testing.assert_array_equal(back.v.values, [1.0, 2.0])


# -- status, listing, lookup ------------------------------------------------------------------


# -- checkpoints ------------------------------------------------------------------------------
def _state(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "x": rng.standard_normal((5, 7)),
        "k": np.arange(step, step + 3, dtype=np.int32),
        "t": np.array(0.1 * step),
    }


def _assert_checkpoint(loaded, step: int) -> None:
    assert loaded is not None
    got_step, arrays, scalars = loaded
    assert got_step == step
    want = _state(step)
    assert set(arrays) == set(want)
    for name, value in want.items():
        assert arrays[name].dtype == value.dtype and arrays[name].shape == value.shape
        np.testing.assert_array_equal(arrays[name], value)
    assert scalars == {"step": step, "energy": 1.5 * step, "nan": None}


def _save(run, step: int, **kw) -> None:
    scalars = {"step": np.int64(step), "energy": np.float64(1.5 * step), "nan": math.nan}
    run.save_checkpoint(step, _state(step), scalars, **kw)


def test_checkpoint_functions_work_on_a_plain_group(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    ckpt.save_checkpoint(group, 4, {"a": np.eye(2)}, {"s": "x"})
    step, arrays, scalars = ckpt.load_checkpoint(group)
    assert step == 4 and scalars == {"s": "x"}
    np.testing.assert_array_equal(arrays["a"], np.eye(2))


class _Killed(Exception):
    """Stands for the process dying before a store write."""


class _DyingStore(zarr.storage.LocalStore):
    """A local store that lets ``writes_left[0]`` more writes (sets and deletes) through,
    then fails every one: the on-disk state of a process killed at that point."""

    writes_left = [math.inf]

    def _spend(self, key):
        if self.writes_left[0] <= 0:
            raise _Killed(key)
        self.writes_left[0] -= 1

    async def _set(self, key, value, exclusive=False):
        self._spend(key)
        return await super()._set(key, value, exclusive=exclusive)

    async def delete(self, key):
        self._spend(key)
        return await super().delete(key)

    async def delete_dir(self, prefix):
        self._spend(prefix)
        return await super().delete_dir(prefix)


def _killed_after(writes, action):
    """Run ``action`` allowing ``writes`` store writes; True when it was cut short."""
    _DyingStore.writes_left[0] = writes
    try:
        action()
    except _Killed:
        return True
    finally:
        _DyingStore.writes_left[0] = math.inf
    return False


def test_a_checkpoint_killed_before_any_write_loads_whole(tmp_path):
    """Kill ``save_checkpoint`` before each of its writes in turn: the newest checkpoint
    then loads whole, either the previous one or the new one with every scalar."""
    old = ({"a": np.arange(3.0)}, {"i": 1, "x": 0})
    new = ({"a": np.arange(3.0) + 1, "b": np.ones((2, 2))}, {"i": 2, "x": 1, "r": 0.5})
    seen = []
    for writes in range(100):
        path = tmp_path / f"g{writes}"
        group = zarr.open_group(path, mode="w", zarr_format=3)
        ckpt.save_checkpoint(group, 1, *old)
        dying = zarr.open_group(_DyingStore(path), mode="r+", zarr_format=3)
        killed = _killed_after(writes, lambda g=dying: ckpt.save_checkpoint(g, 2, *new))
        step, arrays, scalars = ckpt.load_checkpoint(zarr.open_group(path, mode="r"))
        want_arrays, want_scalars = old if step == 1 else new
        assert scalars == want_scalars, f"killed after {writes} writes"
        assert arrays.keys() == want_arrays.keys()
        for key, value in want_arrays.items():
            np.testing.assert_array_equal(arrays[key], value)
        seen.append(step)
        if not killed:
            break
    assert seen[0] == 1 and seen[-1] == 2 and len(seen) > 3


def test_a_run_killed_while_marked_complete_is_running_or_complete_with_metrics(local_root):
    for writes in range(10):
        run = local_root.create("p")
        run._store = _DyingStore(run.url)  # the same directory, through a dying process
        killed = _killed_after(writes, lambda r=run: r.mark_complete({"err": 1e-9}))
        after = local_root.open(run.run_id)
        assert (after.status, after.metrics) in (("running", {}), ("complete", {"err": 1e-9}))
        if not killed:
            break
    assert writes > 0 and after.status == "complete"


# -- side files, JSON, layering ---------------------------------------------------------------


def test_jsonable():
    value = {
        "i": np.int16(3),
        "f": np.float32(0.5),
        "nan": np.float64("nan"),
        "inf": float("inf"),
        "arr": np.arange(3),
        "t": (1, 2.0),
        "b": np.bool_(True),
        1: Path("/a"),
    }
    assert storage.jsonable(value) == {
        "i": 3,
        "f": 0.5,
        "nan": None,
        "inf": None,
        "arr": [0, 1, 2],
        "t": [1, 2.0],
        "b": True,
        "1": "/a",
    }
    assert type(storage.jsonable(np.int64(2))) is int
    with pytest.raises(TypeError, match=r"cfg\['x'\]"):
        storage.jsonable({"x": object()}, "cfg")


class RunStoreTests:
    """Assertions every store backend must pass; a subclass per backend provides the
    ``root`` fixture (as zarr-python's ``StoreTests`` and rechunker's executor tests)."""

    def test_create_records_config_provenance_and_status(self, root):
        run = root.create("domain-split", config=CONFIG, backend="local:2")
        assert RUN_ID.match(run.run_id)
        assert run.pipeline == "domain-split"
        assert run.url == f"{root.url}/domain-split/{run.run_id}"
        assert run.config == CONFIG
        assert run.status == "running"
        assert run.error is None
        assert run.metrics == {}
        prov = run.provenance
        for key in ("tilegraph", "python", "numpy", "zarr", "xarray", "host", "user", "platform"):
            assert isinstance(prov[key], str) and prov[key], key
        assert prov["backend"] == "local:2"
        assert "git_commit" in prov and "argv" in prov
        import tilegraph
        from tilegraph.storage.provenance import git_commit

        code = os.path.dirname(tilegraph.__file__)  # a checkout of tilegraph, or a wheel's
        mine = git_commit(code) if os.path.exists(os.path.join(code, ".git")) else None
        assert prov["tilegraph_commit"] == mine
        assert prov["started"].startswith(run.run_id[:4]) and prov["ended"] is None
        # the same, read straight from the Zarr group as anyone else would
        store = storage.urls.open_store(run.url, root.options)
        attrs = zarr.open_group(store, mode="r").attrs.asdict()
        assert attrs["status"] == "running" and attrs["run_id"] == run.run_id
        assert attrs["pipeline"] == "domain-split" and attrs["config"] == CONFIG

    def test_many_chunks_read_and_written_together(self, root):
        """read_regions / write_regions (one pass of Zarr's event loop for several
        chunks, as bilevel's tasks use them) give what one region at a time gives; a
        bad value raises."""
        from tilegraph.storage.chunks import read_regions, write_regions

        run = root.create("bilevel", config=CONFIG)
        ref = run.create_array("state", shape=(5, 3, 4), chunks=(1, 1, 4), compressors=None)
        arr = ref.open()
        at = ((0, 0), (3, 2), (4, 1))
        regions = [ref.check((slice(i, i + 1), slice(s, s + 1))) for i, s in at]
        values = [np.full((1, 1, 4), k + 0.5) for k in range(3)]
        write_regions(arr, regions, values)
        full = ref.read()
        for (i, s), v in zip(at, values, strict=True):
            np.testing.assert_array_equal(full[i, s], v[0, 0])
        assert np.count_nonzero(full) == 12  # nothing but the three chunks
        got = read_regions(ref.open("r"), regions)
        assert [g.shape for g in got] == [(1, 1, 4)] * 3
        for g, v in zip(got, values, strict=True):
            np.testing.assert_array_equal(g, v)
        with pytest.raises(ValueError, match="2 regions but 1 values"):
            write_regions(arr, regions[:2], values[:1])
        with pytest.raises(ValueError, match="a region given twice"):
            write_regions(arr, [regions[0], regions[0]], values[:2])
        with pytest.raises(ValueError):
            write_regions(arr, regions[:2], [values[0], np.zeros((1, 1, 3))])

    def test_run_ids_are_unique_and_sortable(self, root):
        ids = [root.create("p").run_id for _ in range(3)]
        assert len(set(ids)) == 3
        assert all(RUN_ID.match(i) for i in ids)
        assert storage.new_run_id() > "20240101-000000-000000"

    def test_explicit_run_id_and_bad_names(self, root):
        run = root.create("p", run_id="sweep-0001")
        assert run.run_id == "sweep-0001"
        with pytest.raises(FileExistsError, match="sweep-0001"):
            root.create("p", run_id="sweep-0001")
        with pytest.raises(ValueError, match="pipeline"):
            root.create("../evil")
        with pytest.raises(ValueError, match="run id"):
            root.create("p", run_id="a/b")

    def test_config_must_be_json(self, root):
        with pytest.raises(TypeError, match="config"):
            root.create("p", config={"f": object()})

    def test_array_roundtrip_with_dimension_names(self, root):
        run = root.create("p")
        ref = run.create_array(
            "u",
            shape=(6, 5),
            chunks=(3, 2),
            dimension_names=("y", "x"),
            attrs={"units": "m/s", "scale": np.float32(2.0)},
        )
        assert ref.shape == (6, 5) and ref.chunks == (3, 2) and ref.dtype == "float64"
        assert pickle.loads(pickle.dumps(ref)) == ref
        data = np.arange(30.0).reshape(6, 5)
        for region in ref.regions():
            ref.write(region, data[region])
        np.testing.assert_array_equal(ref.read(), data)
        np.testing.assert_array_equal(ref.read((slice(1, 4), slice(0, 5))), data[1:4])
        arr = ref.open("r")
        assert arr.metadata.dimension_names == ("y", "x")
        assert arr.attrs.asdict() == {"units": "m/s", "scale": 2.0}
        assert run.array("u") == ref
        ints = run.create_array("n", (4,), (2,), dtype="int32", dimension_names=("i",))
        assert ints.dtype == "int32" and ints.read().tolist() == [0, 0, 0, 0]
        with pytest.raises(KeyError, match="nope"):
            run.array("nope")
        with pytest.raises(ValueError, match="dimension_names"):
            run.create_array("bad", (4,), (2,), dimension_names=("a", "b"))

    def test_sharded_array_owns_whole_shards(self, root):
        run = root.create("p")
        ref = run.create_array("s", (8,), (2,), shards=(4,), dimension_names=("x",))
        assert ref.chunks == (4,)
        ref.write((slice(4, 8),), np.ones(4))
        with pytest.raises(storage.ChunkOwnershipError):
            ref.write((slice(0, 2),), np.ones(2))
        np.testing.assert_array_equal(ref.read(), [0, 0, 0, 0, 1, 1, 1, 1])

    def test_refused_write_writes_nothing(self, root):
        run = root.create("p")
        ref = run.create_array("u", (10, 6), (4, 3), dimension_names=("y", "x"), fill_value=-1.0)
        for bad in [(slice(1, 4), slice(0, 3)), (slice(0, 4), slice(0, 5))]:
            block = np.full((3 if bad[0].start else 4, bad[1].stop - bad[1].start), 7.0)
            with pytest.raises(storage.ChunkOwnershipError, match=r"'u'"):
                ref.write(bad, block)
        arr = ref.open("r")
        assert arr.nchunks_initialized == 0
        np.testing.assert_array_equal(arr[...], -1.0)
        ref.write((slice(8, 10), slice(3, 6)), np.full((2, 3), 5.0))  # the partial last chunk
        assert ref.open("r").nchunks_initialized == 1
        assert (ref.read()[8:, 3:] == 5.0).all() and (ref.read()[:8] == -1.0).all()

    def test_write_and_open_dataset(self, root):
        run = root.create("p")
        run.write_dataset("result", _dataset())
        run.write_dataset("result", _dataset().isel(t=[0]))  # replaces
        back = run.open_dataset("result").load()
        xr.testing.assert_identical(back, _dataset().isel(t=[0]))
        with pytest.raises(ValueError, match="reserved"):
            run.write_dataset("checkpoints", _dataset())

    def test_status_running_to_complete(self, root):
        run = root.create("p")
        run.set_metrics({"iterations": np.int64(12), "residual": np.float32(0.5)})
        run.mark_complete({"residual": np.float64(1e-9), "bad": float("nan")})
        assert run.status == "complete" and run.error is None
        assert run.metrics == {"iterations": 12, "residual": 1e-9, "bad": None}
        assert run.provenance["ended"] >= run.provenance["started"]

    def test_status_running_to_failed(self, root):
        run = root.create("p")
        run.mark_failed("solver diverged at step 3")
        assert run.status == "failed" and run.error == "solver diverged at step 3"
        assert run.provenance["ended"] is not None
        run2 = root.create("p")
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            run2.mark_failed(exc)
        assert run2.error == "RuntimeError: boom"
        tb = run2.read_bytes(storage.TRACEBACK_FILE).decode()
        assert "Traceback" in tb and "test_status_running_to_failed" in tb and "boom" in tb

    def test_resume_after_failure(self, root):
        run = root.create("p", backend="sync")
        started = run.provenance["started"]
        run.mark_failed(RuntimeError("killed"))
        assert run.read_bytes(storage.TRACEBACK_FILE)
        again = root.resume(run.run_id)
        assert again.status == "running" and again.error is None
        with pytest.raises(FileNotFoundError):  # the old failure's traceback went with it
            again.read_bytes(storage.TRACEBACK_FILE)
        prov = again.provenance
        assert prov["started"] == started and prov["ended"] is None
        assert len(prov["resumed"]) == 1 and prov["resumed"][0] >= started
        again.mark_running()
        assert len(again.provenance["resumed"]) == 2

    def test_a_pending_run_starts_once_and_can_queue_again(self, root):
        run = root.create("p", backend="sync", pending=True)
        assert run.status == "pending" and run.provenance["started"] is None
        run.mark_running()  # its first start: a start time, no resume
        prov = run.provenance
        assert run.status == "running" and prov["started"] and prov["resumed"] == []
        run.mark_failed(RuntimeError("lost"))
        run.mark_pending()  # queued again: the start time stays, the error goes
        assert run.status == "pending" and run.error is None
        assert run.provenance["started"] == prov["started"]
        run.mark_running()
        assert len(run.provenance["resumed"]) == 1

    def test_runs_listing_and_open_across_pipelines(self, root):
        a = root.create("domain-split", config={"k": 1})
        b = root.create("picard")
        c = root.create("domain-split")
        c.mark_complete({"err": 0.1})
        listing = root.runs()
        assert [r["run_id"] for r in listing] == sorted([a.run_id, b.run_id, c.run_id])
        by_id = {r["run_id"]: r for r in listing}
        assert by_id[b.run_id]["pipeline"] == "picard"
        assert by_id[c.run_id]["status"] == "complete" and by_id[c.run_id]["metrics"] == {
            "err": 0.1
        }
        assert by_id[c.run_id]["ended"] is not None and by_id[a.run_id]["ended"] is None
        assert by_id[a.run_id]["url"] == a.url
        assert set(by_id[a.run_id]) >= {
            "run_id",
            "pipeline",
            "status",
            "started",
            "ended",
            "metrics",
        }
        assert {r["run_id"] for r in root.runs("domain-split")} == {a.run_id, c.run_id}
        assert root.runs("nothing-here") == []

        opened = root.open(b.run_id)
        assert opened.pipeline == "picard" and opened.url == b.url
        assert root.open(a.run_id, pipeline="domain-split").config == {"k": 1}
        with pytest.raises(storage.RunNotFound, match="picard"):
            root.open(a.run_id, pipeline="picard")
        with pytest.raises(KeyError) as info:
            root.open("20000101-000000-abcdef")
        assert isinstance(info.value, storage.RunNotFound)
        assert "20000101-000000-abcdef" in str(info.value) and root.url in str(info.value)

    def test_runs_ignores_foreign_content(self, root):
        run = root.create("p")
        fs, base = storage.urls.filesystem(root.url, root.options)
        fs.pipe_file(f"{base}/p/notes.txt", b"hello")
        zarr.open_group(
            storage.urls.open_store(f"{root.url}/p/plain-group", root.options), mode="w"
        )
        assert [r["run_id"] for r in root.runs()] == [run.run_id]
        with pytest.raises(storage.RunNotFound, match="not a tilegraph run"):
            storage.RunStore(f"{root.url}/p/plain-group", storage_options=root.options)

    def test_empty_root(self, root):
        assert root.runs() == []
        with pytest.raises(storage.RunNotFound):
            root.open("20000101-000000-abcdef")

    def test_checkpoint_save_two_load_newest(self, root):
        run = root.create("p")
        assert run.load_checkpoint() is None
        _save(run, 1)
        _save(run, 2)
        _assert_checkpoint(run.load_checkpoint(), 2)
        _assert_checkpoint(root.open(run.run_id).load_checkpoint(), 2)

    def test_interrupted_checkpoint_is_skipped(self, root):
        run = root.create("p")
        _save(run, 1)
        _save(run, 2)
        # a crash after the arrays of step 3 were written but before its manifest
        ck = run.group["checkpoints"]
        sub = ck.create_group("00000003", attributes={"complete": False, "step": 3})
        for name, value in _state(3).items():
            sub.create_array(name, data=value)
        assert run.checkpoint_steps() == [1, 2, 3]
        _assert_checkpoint(run.load_checkpoint(), 2)

    @pytest.mark.parametrize("damage", ["overwrite", "delete"])
    def test_corrupt_complete_checkpoint_is_skipped(self, root, damage):
        run = root.create("p")
        _save(run, 1)
        _save(run, 2)
        _save(run, 3)
        sub = run.group["checkpoints/00000003"]
        assert sub.attrs["complete"] is True
        if damage == "overwrite":
            arr = sub["x"]
            arr[0, 0] = arr[0, 0] + 1.0
        else:
            del sub["k"]
        _assert_checkpoint(run.load_checkpoint(), 2)

    def test_checkpoint_retention_keeps_three(self, root):
        run = root.create("p")
        for step in range(1, 6):
            _save(run, step)
        assert run.checkpoint_steps() == [3, 4, 5]
        _assert_checkpoint(run.load_checkpoint(), 5)
        _save(run, 6, keep=None)
        _save(run, 7, keep=None)
        assert run.checkpoint_steps() == [3, 4, 5, 6, 7]
        _save(run, 8, keep=1)
        assert run.checkpoint_steps() == [8]

    def test_checkpoint_resave_same_step_and_leftovers(self, root):
        run = root.create("p")
        _save(run, 1)
        ck = run.group["checkpoints"]
        ck.create_group("00000002", attributes={"complete": False, "step": 2})  # crashed save
        _save(run, 2)  # the resumed run saves step 2 again
        _save(run, 3)
        _assert_checkpoint(run.load_checkpoint(), 3)
        partial = ck.create_group("00000004", attributes={"complete": False, "step": 4})
        partial.create_array("x", data=np.zeros(3))
        _save(run, 5)
        assert run.checkpoint_steps() == [2, 3, 5]  # the stale partial step 4 is gone

    def test_checkpoint_rejects_bad_input(self, root):
        run = root.create("p")
        with pytest.raises(ValueError, match="step"):
            run.save_checkpoint(-1, {"x": np.zeros(2)}, {})
        with pytest.raises(ValueError, match="name"):
            run.save_checkpoint(1, {"a/b": np.zeros(2)}, {})
        with pytest.raises(TypeError, match="object"):
            run.save_checkpoint(1, {"x": np.array([object()])}, {})
        assert run.load_checkpoint() is None

    def test_plot_path_and_side_files(self, root):
        run = root.create("p")
        png = b"\x89PNG\r\n\x1a\nfake"
        where = run.write_bytes("summary.png", png)
        assert where == run.url + "/summary.png"
        assert run.read_bytes("summary.png") == png
        if run.is_local:
            assert run.plot_path == str(Path(run.url) / "summary.png")
            assert Path(run.plot_path).read_bytes() == png
        else:
            assert run.plot_path is None
        with pytest.raises(ValueError, match="relative"):
            run.write_bytes("../escape.png", png)
        assert [r["run_id"] for r in root.runs()] == [run.run_id]

    def test_save_figure_uses_savefig(self, root):
        class Fig:
            def savefig(self, buf, format):
                buf.write(f"image/{format}".encode())

        run = root.create("p")
        run.save_figure(Fig())
        assert run.read_bytes("summary.png") == b"image/png"

    def test_nodes_inside_a_run(self, root):
        """What pipelines use instead of the raw group: has, delete, node attributes."""
        run = root.create("demo", config={}, backend="sync")
        assert not run.has("work/x0")
        run.create_array("work/x0", shape=(4,), chunks=(2,), dimension_names=("i",))
        assert run.has("work/x0") and run.has("work")
        run.delete("work")
        run.delete("work")  # already gone: nothing to do
        assert not run.has("work/x0") and not run.has("work")
        assert run.node_attrs("model") == {}
        run.set_node_attrs("model", {"layers": 2, "complete": True})
        run.set_node_attrs("model", {"final_loss": 0.5})
        assert run.node_attrs("model") == {"layers": 2, "complete": True, "final_loss": 0.5}
        run.save_checkpoint(1, arrays={"h": np.zeros(2)}, scalars={"t": 1})
        assert run.checkpoint_steps() == [1]
        run.clear_checkpoints()
        assert run.checkpoint_steps() == [] and run.load_checkpoint() is None

    def test_require_array_keeps_what_matches(self, root):
        run = root.create("demo", config={}, backend="sync")
        a = run.require_array("result/n", (4,), (2,), "int64", dimension_names=("batch",))
        a.write((slice(0, 2),), np.array([7, 8]))
        again = run.require_array("result/n", (4,), (2,), "int64", dimension_names=("batch",))
        np.testing.assert_array_equal(again.read(), [7, 8, 0, 0])  # kept: a resume's data
        other = run.require_array("result/n", (6,), (2,), "int64", dimension_names=("batch",))
        assert other.shape == (6,) and not other.read().any()  # replaced: another shape

    @pytest.mark.parametrize("when", ["before", "half-way"])
    def test_a_dataset_write_stopped_is_never_read_as_whole(self, root, monkeypatch, when):
        """A write stopped at its start (while the earlier dataset is deleted) or after
        part of the dataset (a sweep's driver killed while it wrote its gathered result
        left one that opened with 6 of its 19 variables): on disk the earlier dataset
        stays (the write goes beside it and is moved into place, and the next write
        clears what the stopped one left); on object stores, which rename nothing, what
        is there does not open (the group's ``zarr.json`` is deleted first and written
        last) until a write mends it."""
        run = root.create("p", config=CONFIG)
        ds = _dataset()
        run.write_dataset("result", ds)
        xr.testing.assert_identical(run.open_dataset("result").load(), ds)
        real = xr.Dataset.to_zarr

        def stopped(self, store, **kwargs):
            if when == "half-way":
                real(self[["u"]], store, **kwargs)  # part of it written, then the kill
            raise KeyboardInterrupt

        monkeypatch.setattr(xr.Dataset, "to_zarr", stopped)
        with pytest.raises(KeyboardInterrupt):
            run.write_dataset("result", ds * 2)
        monkeypatch.setattr(xr.Dataset, "to_zarr", real)
        if run.is_local:
            xr.testing.assert_identical(run.open_dataset("result").load(), ds)
        else:
            with pytest.raises(storage.DatasetIncomplete, match="'result' was not completely"):
                run.open_dataset("result")
            # nor by xarray itself: the group's zarr.json is written last
            with pytest.raises(FileNotFoundError):
                xr.open_zarr(run._store, group="result", consolidated=False, zarr_format=3)
            assert "result" not in run.datasets
        run.write_dataset("result", ds + 1)
        xr.testing.assert_identical(run.open_dataset("result").load(), ds + 1)
        if run.is_local:
            assert sorted(os.listdir(run.url)) == ["result", "zarr.json"]
        run.write_bytes("notes.txt", b"a side file")  # not a dataset stopped half-way
        with pytest.raises(KeyError, match="no dataset 'notes.txt'"):
            run.open_dataset("notes.txt")

    def test_resumes_are_recorded_in_order(self, root):
        run = root.create("demo", config={}, backend="sync")
        assert run.restored == []
        run.record_resume(12, 3)
        run.record_resume(None, 0)
        assert run.restored == [
            {"checkpoint": 12, "skipped": 3},
            {"checkpoint": None, "skipped": 0},
        ]


class TestLocalStore(RunStoreTests):
    @pytest.fixture
    def root(self, tmp_path):
        return storage.Root(tmp_path / "runs")


class TestMemoryStore(RunStoreTests):
    @pytest.fixture
    def root(self):
        name = f"tg-test-{uuid.uuid4().hex}"
        yield storage.Root(f"memory://{name}")
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible object store on loopback (moto's server), for the module."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging
    import socket

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing"}
    server.stop()


class TestS3Store(RunStoreTests):
    """The suite on ``s3://`` through fsspec's s3fs: an object store, where folders do
    not exist and nothing is renamed."""

    @pytest.fixture
    def root(self, s3_endpoint):
        import s3fs

        bucket = f"tg-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**s3_endpoint).mkdir(bucket)
        return storage.Root(f"s3://{bucket}/runs", storage_options=s3_endpoint)
