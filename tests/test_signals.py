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


def test_a_closed_terminal_interrupts_the_run_cleanly(tmp_path):
    """SIGHUP to the whole process group (an SSH session closed on a login node) killed
    the driver without a word (exit 129, batch jobs left queued, the run `running`),
    and multiprocessing's resource tracker with it: a KeyError traceback per worker. It
    is handled as SIGTERM now; `--resume` continues the run."""
    proc, root = _start(tmp_path, "local:2")
    children = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 129
    (info,) = root.runs()
    assert err.strip().splitlines() == [
        f"error: run {info['run_id']} interrupted; continue it with --resume {info['run_id']}"
    ]
    assert "interrupted (SIGHUP)" in root.open(info["run_id"]).error
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


def test_an_interrupt_dropped_by_a_finalizer_is_delivered_again():
    """Python reports an exception raised in a finalizer and drops it: a SIGTERM that
    landed in one while a cluster started left the run going on. The CLI's hook sends
    it again, and it lands."""
    import logging

    from tilegraph.pipelines import cli

    levels = {n: logging.getLogger(n).level for n in ("distributed", "ray", "tornado", "asyncio")}
    old_int = signal.getsignal(signal.SIGINT)
    hook, old = sys.unraisablehook, signal.signal(signal.SIGTERM, cli._on_sigterm)
    sys.unraisablehook = cli._interrupts_again(hook)

    class Dropper:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler raises in here, and Python drops it

    try:
        with pytest.raises(cli.Terminated):
            Dropper()
            for _ in range(300):
                time.sleep(0.01)
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_an_interrupted_cluster_start_is_closed_and_forgotten():
    """Ctrl-C or SIGTERM while a LocalCluster started printed distributed's traceback
    from its exit hook (closing a cluster whose workers were still starting)."""
    import distributed
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster
    from tilegraph.cluster.dask_backend import _half_built_closed

    made = []
    with pytest.raises(KeyboardInterrupt):
        with _half_built_closed():
            made.append(distributed.LocalCluster(n_workers=1, processes=False,
                                                 dashboard_address=None))  # fmt: skip
            raise KeyboardInterrupt
    assert made[0] not in SpecCluster._instances and made[0].status == Status.closed


def test_an_interrupt_that_broke_a_lock_while_connecting_stays_an_interrupt(monkeypatch):
    """An interrupt inside the cluster's start can surface as the RuntimeError of a lock
    it broke ("release unlocked lock"): that is an interrupt, not "cannot reach it"."""
    import tilegraph.cluster
    from tilegraph.pipelines.launch import connect

    def broken(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock") from None

    monkeypatch.setattr(tilegraph.cluster, "connect", broken)
    with pytest.raises(KeyboardInterrupt):
        connect("local:2")


def test_the_first_interrupt_ignores_the_next_ones():
    """A second SIGTERM (``timeout`` passes its own on to the command it runs) raised in
    the first one's cleanup left logging's lock held where it landed: the command hung
    at exit. The handler ignores further interrupts before it raises."""
    import logging

    from tilegraph.pipelines import cli

    levels = {n: logging.getLogger(n).level for n in ("distributed", "ray", "tornado", "asyncio")}
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(cli.Terminated):
            cli._on_sigterm(signal.SIGTERM, None)
        # absorbed by a Python handler: processes started meanwhile do not inherit it
        assert signal.getsignal(signal.SIGTERM) is cli._absorb
        assert signal.getsignal(signal.SIGINT) is cli._absorb
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
