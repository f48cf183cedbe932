"""Ctrl-C gives one ``error:`` line and nothing else (no worker tracebacks, no
scheduler errors); a SIGKILLed driver leaves no process of its cluster behind."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from tilegraph import storage

pytestmark = pytest.mark.slow

#: A domain-split run that lasts well beyond the moment the test interrupts it.
LONG = ["--set=n_fine=1000", "--set=n_coarse=10", "--set=tol=1e-13"]


def _start(tmp_path, spec):
    store = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilegraph.pipelines.cli", "run", "domain-split", *LONG,
         "--cluster", spec, "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal job has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    root = storage.Root(store)
    deadline = time.time() + 120
    while time.time() < deadline and not root.runs():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(3.0)  # into the solve, workers busy
    assert proc.poll() is None, proc.communicate()
    return proc, root


def _living(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    return out


def _none_left(procs, within: float):
    deadline = time.time() + within
    while _living(procs) and time.time() < deadline:
        time.sleep(0.25)
    assert not _living(procs), _living(procs)


@pytest.mark.parametrize("spec", ["local:2", "ray:2"])
def test_ctrl_c_prints_one_line(tmp_path, spec):
    proc, root = _start(tmp_path, spec)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    (info,) = root.runs()
    assert err.strip().splitlines() == [
        f"error: run {info['run_id']} interrupted; continue it with --resume {info['run_id']}"
    ]
    assert "interrupted (KeyboardInterrupt)" in root.open(info["run_id"]).error
    _none_left(children, within=10)


def test_sigkill_of_the_driver_leaves_no_ray_process(tmp_path):
    proc, _ = _start(tmp_path, "ray:2")
    children = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(p.name() for p in children)
    assert "raylet" in names and "gcs_server" in names
    proc.kill()
    proc.communicate(timeout=60)
    _none_left(children, within=5)


@pytest.mark.parametrize("spec", ["local:2", "sync"])
def test_ctrl_c_of_a_sweep_leaves_no_point_running(tmp_path, spec):
    """A sweep interrupted while its points run: exit 130, one line saying how to go on,
    and every unfinished point marked failed ("interrupted"), none left `running`."""
    store = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilegraph.pipelines.cli", "sweep", "domain-split",
         "--set=n_fine=1000", "--set=tol=1e-13", "--grid", "n_coarse=10,20",
         "--cluster", spec, "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    root = storage.Root(store)
    deadline = time.time() + 120
    while time.time() < deadline and len(root.runs()) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    time.sleep(3.0)  # the points' solves under way
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: sweep "), err
    runs = root.runs()
    assert len(runs) == 2 and all(r["status"] == storage.FAILED for r in runs), runs
    errors = [root.open(r["run_id"]).error for r in runs]
    assert all("interrupted" in e for e in errors), errors
    if spec == "sync":  # one point at a time: the second never started
        assert sum("before it started" in e for e in errors) == 1, errors
