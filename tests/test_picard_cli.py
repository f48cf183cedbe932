"""``tilegraph run picard`` as a user runs it: bad input exits 2 and writes nothing, the
JSON contract, and a SIGKILLed run resumed to the uninterrupted answer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr
from tilegraph import storage

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)


def tilegraph(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "tilegraph.pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path):
    store = tmp_path / "runs"
    out = tilegraph("run", "picard", "--set", "window=5000", "--store", str(store))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "window" in lines[0]
    assert not store.exists()


SETS = [
    *("--set", "n_samples=16", "--set", "batch_size=4", "--set", "steps=200"),
    *("--set", "window=24", "--cluster", "sync"),
]


def test_killed_run_resumes_to_the_uninterrupted_answer(tmp_path):
    ref = tilegraph("run", "picard", *SETS, "--store", str(tmp_path / "ref"), "--json")
    assert ref.returncode == 0, ref.stderr
    ref = json.loads(ref.stdout.strip().splitlines()[-1])
    assert ref["status"] == "complete" and ref["metrics"]["sequential_steps"] == 200

    store = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tilegraph.pipelines.cli",
            "run",
            "picard",
            *SETS,
            "--store",
            str(store),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    done = []
    while len(done) < 1 and time.time() < deadline and proc.poll() is None:
        done = list(store.glob("picard/*/result/iterations/c/*"))
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = next(store.glob("picard/*")).name
    run = storage.Root(str(store)).open(run_id)
    assert run.status == "running"
    assert 0 < (run.array("result/iterations").read() > 0).sum() < 4

    out = tilegraph(
        "run", "picard", "--resume", run_id, "--cluster", "sync", "--store", str(store), "--json"
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["run_id"] == run_id and res["status"] == "complete"
    assert res["metrics"]["iterations"] == ref["metrics"]["iterations"]
    a = xr.open_zarr(res["path"] + "/result", consolidated=False)
    b = xr.open_zarr(ref["path"] + "/result", consolidated=False)
    np.testing.assert_array_equal(a.samples.values, b.samples.values)
    np.testing.assert_array_equal(a.iterations.values, b.iterations.values)
    assert storage.Root(str(store)).open(run_id).provenance.get("resumed")
