"""The generic pipeline suite: every registered pipeline (the four built-in ones and the
test plugin ``jacobi``, registered through the entry point) on every backend, with the
runs each pipeline names in its ``Pipeline.checks``.

* **Same bits**: the small run on ``local:2`` and ``ray:2`` gives the bits of ``sync`` for
  every metric and variable that measures the answer.
* **Killed worker**: the busiest worker process of the long run is killed; the run ends
  with the uninterrupted answer, and where a lost worker made it continue, it continued
  from a checkpoint (steps skipped).
* **Killed driver**: the driver of the long run is killed; every process it started
  exits by itself; ``--resume`` restores a checkpoint (steps skipped) and ends with the
  uninterrupted answer.
* **Bad config**: an unknown field and a bad common field exit 2 with one line, and
  write nothing.

Each pipeline meets each backend once per fault (the fault's backend alternates over the
sorted pipelines); ``TILEGRAPH_ALL_FAULTS=1`` runs every pipeline on every backend.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import tilegraph
from helpers import assert_same_answer as _assert_same_answer
from helpers import last_json
from tilegraph import storage
from tilegraph.pipelines.config import ConfigError, build_config

NAMES = sorted(tilegraph.available())
BACKENDS = ("local:2", "ray:2")


def _checks(name: str):
    return tilegraph.get_pipeline(name).checks


def _sets(values: dict) -> list[str]:
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, executors):
    """``reference(name, kind)``: the uninterrupted ``sync`` run of a check."""
    cache = {}

    def get(name: str, kind: str):
        if (name, kind) not in cache:
            store = tmp_path_factory.mktemp(f"ref-{name}-{kind}")
            sets = getattr(_checks(name), kind)
            cache[name, kind] = tilegraph.run(
                name, sets=sets, cluster=executors("sync"), store=store
            )
        return cache[name, kind]

    return get


@pytest.mark.parametrize("spec", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_same_bits_as_sync(tmp_path, executors, reference, name, spec):
    ref = reference(name, "small")
    run = tilegraph.run(name, sets=_checks(name).small, cluster=executors(spec), store=tmp_path)
    datasets = [g for g in ("result", "history") if ref.has(g)]
    assert _assert_same_answer(run, ref, datasets) or not datasets


@pytest.mark.parametrize("name", NAMES)
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, name):
    store = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "tilegraph.pipelines.cli", "run", name, "--cluster", "sync"]
        + ["--set", "no_such_field=1", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and "no_such_field" in lines[0]
    assert not store.exists()
    pipeline = tilegraph.get_pipeline(name)
    for bad in ("checkpoint_s=-1", "checkpoint_s=.nan", "keep_work=maybe"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            build_config(pipeline, sets=[bad])


# --- faults -------------------------------------------------------------------------
def _pairs(shift: int) -> list[tuple[str, str]]:
    if os.environ.get("TILEGRAPH_ALL_FAULTS") == "1":
        return [(n, s) for n in NAMES for s in BACKENDS]
    return [(n, BACKENDS[(i + shift) % 2]) for i, n in enumerate(NAMES)]


def _start(name: str, store, spec: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "tilegraph.pipelines.cli", "run", name, "--cluster", spec]
    args += [f"--set={s}" for s in _sets(_checks(name).long)]
    args += ["--store", str(store), "--json", "--debug"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_dir(store, name):
    runs = list(store.glob(f"{name}/*"))
    return runs[0] if runs else None


def _wait_for_checkpoints(proc, store, name, n=2, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        run = _run_dir(store, name)
        if run is not None and len(list((run / "checkpoints").glob("*/zarr.json"))) >= n:
            return
        time.sleep(0.05)
    out, err = proc.communicate() if proc.poll() is not None else ("", "")
    pytest.fail(f"no {n} checkpoints before the run ended or {timeout} s passed: {err[-2000:]}")


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _busiest_worker(driver_pid: int, spec: str) -> tuple[psutil.Process, bool]:
    """The driver's worker process that used the most CPU over 0.5 s, and whether it was
    busy: on Ray, running an actor or task (its title is not ``ray::IDLE``); on Dask,
    using more than 4 % of a core (an idle worker's heartbeats use far less)."""
    procs = psutil.Process(driver_pid).children(recursive=True)
    if spec.startswith("ray"):
        # ray::<Actor or task>; not the raylet's agents, whose death takes the node down
        pool = [p for p in procs if _cmd(p).startswith("ray::") and "Agent" not in _cmd(p)]
    else:
        pool = [p for p in procs if "spawn_main" in _cmd(p) and "resource_tracker" not in _cmd(p)]
    assert pool, f"no worker process found under the driver for {spec}"

    def cpu(p):
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    before = {p.pid: cpu(p) for p in pool}
    time.sleep(0.5)
    used = {p.pid: cpu(p) - before[p.pid] for p in pool}
    if spec.startswith("ray"):
        working = [p for p in pool if not _cmd(p).startswith("ray::IDLE")]
        if working:
            return max(working, key=lambda p: used[p.pid]), True
    victim = max(pool, key=lambda p: used[p.pid])
    return victim, used[victim.pid] > 0.02


def _past_the_start(restored: dict) -> bool:
    """A resume restored a checkpoint past the start: progress steps skipped, or a step
    inside one (a picard batch's Picard iteration)."""
    step = restored["checkpoint"]
    return step is not None and (step > 0 or restored["skipped"] > 0)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "spec"), _pairs(0))
def test_killed_worker_run_completes_with_the_same_answer(tmp_path, reference, name, spec):
    ref = reference(name, "long")
    store = tmp_path / "runs"
    proc = _start(name, store, spec)
    _wait_for_checkpoints(proc, store, name)
    victim, busy = _busiest_worker(proc.pid, spec)
    victim.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert busy, f"the killed worker was idle: {_cmd(victim)[:80]}"
    assert proc.returncode == 0, err
    run = storage.Root(str(store)).open(last_json(out)["run_id"])
    _assert_same_answer(run, ref, _checks(name).datasets)
    assert run.metrics.get("worker_restarts", 0) >= 1, "the kill did not reach the run"
    if "a worker was lost" in err:  # state on the workers: the run went on from a checkpoint
        assert run.restored and _past_the_start(run.restored[-1]), run.restored


@pytest.mark.slow
@pytest.mark.parametrize(("name", "spec"), _pairs(1))
def test_killed_driver_resumes_with_the_same_answer(tmp_path, reference, name, spec):
    ref = reference(name, "long")
    store = tmp_path / "runs"
    proc = _start(name, store, spec)
    _wait_for_checkpoints(proc, store, name)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children or spec == "sync"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # every process the driver started goes by itself (its parent's pipe closes, or the
    # Ray watchdog stops it): nothing is left holding cores or ports
    gone, alive = psutil.wait_procs(children, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"outlived the driver: {[_cmd(p)[:80] for p in alive]}"
    run = storage.Root(str(store)).open(_run_dir(store, name).name)
    assert run.status == "running"  # never 'complete' with chunks missing

    args = [sys.executable, "-m", "tilegraph.pipelines.cli", "run", name]
    args += ["--resume", run.run_id, "--cluster", spec, "--store", str(store), "--json"]
    out = subprocess.run(args + ["--debug"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = storage.Root(str(store)).open(run.run_id)
    _assert_same_answer(run, ref, _checks(name).datasets)
    assert run.restored and _past_the_start(run.restored[-1]), run.restored


@pytest.mark.parametrize("name", ["bilevel", "domain-split", "picard", "ttn"])
def test_every_dataset_opens_and_says_what_it_holds(reference, name):
    """Every group a run lists opens as one xarray Dataset (ttn's `state` did not: its
    node tensors shared dimension names of different lengths), and every variable and
    coordinate says what it is (`long_name`) and, for numbers, in what (`units`)."""
    run = reference(name, "small")
    assert "result" in run.datasets or name == "ttn"
    missing = []
    for group in run.datasets:
        ds = run.open_dataset(group)
        for var in [*ds.data_vars, *ds.coords]:
            attrs = ds[var].attrs
            if "long_name" not in attrs:
                missing.append(f"{group}/{var}: long_name")
            if ds[var].dtype.kind in "iufc" and "units" not in attrs:
                missing.append(f"{group}/{var}: units")
    assert not missing, missing
