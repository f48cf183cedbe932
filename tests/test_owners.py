"""One live owner per run and per sweep: a lease in the store (atomic create,
heartbeat, taken over only when stale); a second command exits 2 naming the owner."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from helpers import last_json
from tilegraph import storage
from tilegraph.pipelines.config import build_config
from tilegraph.pipelines.registry import get_pipeline
from tilegraph.storage.lease import LEASE_FILE, Lease, LeaseHeld


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"memory://tg-lease-{os.getpid()}-{time.time_ns()}"


def test_one_owner_at_a_time(folder):
    first = Lease(folder, "run A", interval=0.2).acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"run A is already running \(pid \d+, host "):
            Lease(folder, "run A").acquire()
        beat = first.read()["heartbeat"]
        time.sleep(0.6)
        assert first.read()["heartbeat"] > beat  # the heartbeat keeps it fresh
        with pytest.raises(LeaseHeld):
            Lease(folder, "run A", ttl=0.5).acquire()
    finally:
        first.release()
    assert first.read() is None
    with Lease(folder, "run A") as second:
        assert second.read()["token"] == second.token


def test_a_stale_lease_is_taken_over(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"token": "x", "pid": int(dead.stdout), "host": socket.gethostname(),
              "heartbeat": time.time()}  # fmt: skip
    with open(os.path.join(folder, LEASE_FILE), "w") as fh:
        json.dump(record, fh)
    with Lease(folder, "run B") as lease:  # its owner's process is gone: at once
        assert lease.read()["pid"] == os.getpid()
    record.update(pid=1, host="another-host", heartbeat=time.time() - 100)
    with open(os.path.join(folder, LEASE_FILE), "w") as fh:
        json.dump(record, fh)
    with pytest.raises(LeaseHeld, match="another-host"):
        Lease(folder, "run B", ttl=1000).acquire()
    with Lease(folder, "run B", ttl=30) as lease:  # no heartbeat for 100 s: stale
        assert lease.read()["host"] == socket.gethostname()
    assert not os.listdir(folder)


def test_an_unreadable_lease_file_is_judged_by_its_age(tmp_path):
    """A lease file that cannot be read (an older version killed between creating it and
    writing it left it empty) is held while young and taken over once older than the
    ttl: neither a hang nor two owners."""
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    path = os.path.join(folder, LEASE_FILE)
    open(path, "wb").close()
    t0 = time.monotonic()
    with pytest.raises(LeaseHeld, match=r"a lease file that cannot be read, written \d+ s ago"):
        Lease(folder, "run C", ttl=30).acquire(wait=0.3)
    assert time.monotonic() - t0 < 5
    assert not Lease(folder, "run C", ttl=30).abandoned()
    os.utime(path, (time.time() - 100, time.time() - 100))
    assert Lease(folder, "run C", ttl=30).abandoned()  # `tilegraph runs`: interrupted
    with Lease(folder, "run C", ttl=30) as lease:
        assert lease.read()["token"] == lease.token
    assert not os.listdir(folder)  # no temporary files left either


def test_two_takeovers_of_one_stale_lease_leave_one_owner(tmp_path):
    """A and B both find the same stale lease. A moves it away and creates its own;
    B's rename then moves A's fresh lease: B puts it back, and stays out."""
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    stale = {"token": "s", "pid": 1, "host": "another-host", "heartbeat": time.time() - 100}
    with open(os.path.join(folder, LEASE_FILE), "w") as fh:
        json.dump(stale, fh)
    a, b = Lease(folder, "run D"), Lease(folder, "run D")
    seen = a.read()
    assert a._stale(seen) and b._stale(seen)
    a._remove_stale(seen)
    assert a._create()
    b._remove_stale(seen)  # B still acts on what it read before A took over
    assert a.read()["token"] == a.token
    assert not b._create()
    assert sorted(os.listdir(folder)) == [LEASE_FILE]


def test_an_owner_whose_lease_was_taken_over_writes_nothing(tmp_path):
    """An owner that looked dead (stopped past the ttl) finds at its next heartbeat that
    another process holds the run: the run store then refuses its status, metrics and
    checkpoint writes and its deletes, so they never mix with the new owner's."""
    root = storage.Root(tmp_path / "runs")
    run = root.create("demo", config={"a": 1})
    lease = run.lease(interval=0.05).acquire()
    try:
        run.save_checkpoint(0, arrays={"x": np.ones(2)})  # what the new owner resumes from
        taker = Lease(run.url, "run", ttl=30)
        taker._write()  # the new owner's record replaces this one's
        deadline = time.time() + 10
        while not lease.lost and time.time() < deadline:
            time.sleep(0.02)
        assert lease.lost
        with pytest.raises(storage.LeaseLost, match="another process took over its lease"):
            run.mark_complete({"answer": 1.0})
        with pytest.raises(storage.LeaseLost):
            run.mark_failed(RuntimeError("boom"))
        with pytest.raises(storage.LeaseLost):
            run.save_checkpoint(1, arrays={"x": np.zeros(2)})
        with pytest.raises(storage.LeaseLost):
            run.clear_checkpoints()  # the end of a run: would delete the new owner's
        again = root.open(run.run_id)
        assert again.status == "running" and again.checkpoint_steps() == [0]
        assert again.traceback_path is None
        assert taker.read()["token"] == taker.token  # the old owner's beat left it alone
    finally:
        lease.release()


def test_a_running_run_whose_owner_is_gone_is_listed_interrupted(tmp_path):
    """A SIGKILLed driver cannot record its end: the run stays ``running``, with its
    lease left behind. Listings say ``interrupted`` then (a live owner's run, and a
    run without a lease, stay ``running``); the stored status is not changed."""
    from helpers import run_cli

    root = storage.Root(str(tmp_path / "store"))
    run = root.create("picard", config={})
    with run.lease():
        assert not run.interrupted
        assert [r["status"] for r in root.runs()] == ["running"]
    assert not run.interrupted  # no lease: nobody may have taken one
    _leave_dead_lease(run)
    assert run.interrupted and run.status == "running"
    assert [r["status"] for r in root.runs()] == ["interrupted"]
    rc, out, _ = run_cli("show", run.run_id, "--store", root.url)
    assert (
        rc == 0
        and f"interrupted (its process is gone; continue it with --resume {run.run_id})" in out
    )
    rc, out, _ = run_cli("runs", "--store", root.url, "--json")
    assert rc == 0 and json.loads(out)["runs"][0]["status"] == "interrupted"
    os.remove(os.path.join(run.url, LEASE_FILE))
    os.mkdir(os.path.join(run.url, LEASE_FILE))  # unreadable: listed as it says
    assert not run.interrupted and [r["status"] for r in root.runs()] == ["running"]
    run.mark_failed("stopped")
    assert not run.interrupted and [r["status"] for r in root.runs()] == ["failed"]


def _leave_dead_lease(run) -> None:
    """The lease a SIGKILLed driver leaves: its owner's pid dead on this host."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"token": "x", "pid": int(dead.stdout), "host": socket.gethostname(),
              "heartbeat": time.time()}  # fmt: skip
    with open(os.path.join(run.url, LEASE_FILE), "w") as fh:
        json.dump(record, fh)


def _killed_run(root):
    """A ttn run as a SIGKILLed driver leaves it: ``running``, its lease's owner dead."""
    cfg = build_config(get_pipeline("ttn"), "quick")
    run = root.create("ttn", config=cfg.model_dump(mode="json"))
    _leave_dead_lease(run)
    assert run.interrupted
    return run


@pytest.mark.parametrize(
    "extra, needle",
    [(["--cluster", "local:1000"], "--cluster local:1000"),
     (["--cluster", "sync", "--report", "/nonexistent/r.html"], "--report")],
)  # fmt: skip
def test_a_refused_resume_leaves_the_run_shown_interrupted(tmp_path, extra, needle):
    """A --resume refused after it took the killed run's lease (a bad cluster, a bad
    --report) released that lease and left the run saying ``running``, so listings
    showed a run that nothing runs as running. It is marked failed as interrupted, and
    the next --resume continues it."""
    from helpers import run_cli

    root = storage.Root(str(tmp_path / "store"))
    run = _killed_run(root)
    rc, _, err = run_cli("run", "ttn", "--resume", run.run_id, "--store", root.url, *extra)
    assert rc == 2 and err.startswith("error: ") and needle in err, err
    assert run.status == "failed" and not run.interrupted
    said = f"interrupted (its process was killed); continue it with --resume {run.run_id}"
    assert run.error == said
    assert [r["status"] for r in root.runs()] == ["failed"]
    rc, _, err = run_cli("run", "ttn", "--resume", run.run_id, "--store", root.url, "--dry-run")
    assert rc == 0, err
    assert run.status == "failed"  # a dry run owns nothing and writes nothing


def _cli(*args):
    return [sys.executable, "-m", "tilegraph.pipelines.cli", *args]


BILEVEL = ["--set=max_iter=250", "--set=tol=1e-9"]


@pytest.mark.slow
def test_two_resumes_of_one_run(tmp_path):
    """Started together: one continues the run, the other exits 2 naming it; the answer
    is the uninterrupted one."""
    store = tmp_path / "runs"
    pipeline = get_pipeline("bilevel")
    config = build_config(pipeline, sets=[s.removeprefix("--set=") for s in BILEVEL])
    run = storage.Root(store).create("bilevel", config=config.model_dump(mode="json"),
                                     backend="sync")  # fmt: skip
    run.mark_failed("stopped before its first step")
    procs = [
        subprocess.Popen(_cli("run", "bilevel", "--resume", run.run_id, "--cluster", "sync",
                              "--store", str(store), "--json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
    assert f"run {run.run_id} is already running (pid" in loser or "already complete" in loser
    assert len(loser.strip().splitlines()) == 1
    ref = subprocess.run(_cli("run", "bilevel", *BILEVEL, "--cluster", "sync",
                              "--store", str(tmp_path / "ref"), "--json"),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    a = xr.open_zarr(run.url + "/result", consolidated=False)
    b = xr.open_zarr(last_json(ref.stdout)["path"] + "/result", consolidated=False)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert storage.Root(store).open(run.run_id).status == "complete"
    hist = xr.open_zarr(run.url + "/history", consolidated=False)
    steps = hist[list(hist.dims)[0]].values
    assert len(np.unique(steps)) == len(steps)  # no step written twice


@pytest.mark.slow
def test_two_identical_sweeps(tmp_path):
    store = tmp_path / "runs"
    argv = _cli("sweep", "bilevel", "--grid", "max_iter=150,175,200", "--set=tol=1e-9",
                "--cluster", "sync", "--store", str(store), "--json")  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outs
    winner = next(out for p, (out, _) in zip(procs, outs, strict=True) if p.returncode == 0)
    loser = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
    info = last_json(winner)
    assert f"sweep {info['sweep_id']} is already running" in loser
    assert info["complete"] == 3
    assert len(storage.Root(store).runs("bilevel")) == 3  # one run per point, no more
    ds = xr.open_zarr(info["path"] + "/result", consolidated=False)
    assert set(ds.status.values.ravel()) == {"complete"}
    assert len(set(ds.run_id.values.ravel())) == 3
