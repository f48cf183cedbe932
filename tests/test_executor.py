"""Tests of `cluster`: one generic suite run on every backend, plus spec and Dask checks.

`TestExecutor` holds the assertions every backend must pass (as zarr-python's
`StoreTests` does for stores); the `ex` fixture runs it on ``sync``, ``threads``,
``local:2`` (Dask) and ``ray:2``. Each backend starts once per module: the module-scoped
`backend` parameter groups the tests by backend, and `_EXECUTORS` keeps the open
executor until the group ends (or until the shutdown test closes it).

Helpers are module-level so that Dask and Ray workers can import them by name.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from tilegraph import cluster

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = ["sync", "threads", "local:2", "ray:2"]
BACKEND_NAMES = {"sync": "sync", "threads": "threads", "local:2": "dask", "ray:2": "ray"}


# -- helpers run on the workers ---------------------------------------------------------


class TaskError(Exception):
    """Raised by `fail`, to check the original exception type comes back."""


def add(x, y=0):
    return x + y


def slow_identity(i, delay):
    time.sleep(delay)
    return i


def fail(message):
    raise TaskError(message)


def fail_once(marker):
    """Fail on the first call (creating `marker`), succeed on later ones."""
    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise TaskError(f"first attempt ({marker})")
    return "ok"


def array_stat(arr, offset=0.0):
    return float(arr[::1000].sum()) + offset, arr.shape


def pid_at_barrier(arr, folder, name, parties, timeout=10.0):
    """The process that ran this task, once ``parties`` tasks have reached the barrier
    in ``folder`` (or after ``timeout`` s): tasks queued at one worker cannot all get
    there together, however long a worker takes to start."""
    pathlib.Path(folder, name).touch()
    deadline = time.monotonic() + timeout
    while len(list(pathlib.Path(folder).iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def pid_then_wait(path, seconds):
    """Append this process's pid to ``path``; on the first attempt (no file yet), wait
    ``seconds`` first, to be killed meanwhile."""
    p = pathlib.Path(path)
    first = not p.exists()
    with p.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if first:
        time.sleep(seconds)
    return "ok"


def computes_a_collection(i):
    """A task that computes a Dask collection (as xarray does reading a store lazily):
    ``(pid, start, end)``."""
    import dask.array as da

    t0 = time.time()
    for _ in range(3):
        float(da.ones(2_000_000, chunks=100_000).sum().compute())
    time.sleep(0.3)
    return os.getpid(), t0, time.time()


def dask_scheduler_here(_):
    import dask

    return dask.config.get("scheduler", None)


def _text(path: pathlib.Path) -> str:
    return path.read_text() if path.exists() else ""


def offset_stat(offset, arr):
    return array_stat(arr, offset)


def make_adder(k):
    def adder(x):
        return x + k

    return adder


class Counter:
    def __init__(self, start=0, step=1, data=None):
        self.count = start
        self.step = step
        self.data = data

    def incr(self, times=1):
        self.count += self.step * times
        return self.count

    def stat(self, arr, scale=1.0):
        return float(arr[::1000].sum()) * scale, arr.shape

    def data_size(self):
        return None if self.data is None else int(self.data.size)

    def pid(self):
        return os.getpid()

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds

    def where(self):
        from distributed import get_worker

        return get_worker().address


# -- process bookkeeping ----------------------------------------------------------------


def _children() -> set[int]:
    """Pids of live child processes (recursive) of this test process.

    The multiprocessing resource tracker is left out: Python starts it for the first
    spawned process (Dask's workers) and keeps it, by design, until the interpreter exits.
    """
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any("resource_tracker" in part for part in proc.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        pids.add(proc.pid)
    return pids


def _new_children(baseline: set[int], wait: float = 15.0) -> set[int]:
    """Children not in `baseline`, polling up to `wait` seconds for them to go."""
    deadline = time.monotonic() + wait
    while True:
        left = _children() - baseline
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


class _Executors:
    """Open executors by spec; remembers the child processes from before each start."""

    def __init__(self) -> None:
        self.open: dict[str, cluster.Executor] = {}
        self.baseline: dict[str, set[int]] = {}

    def get(self, spec: str) -> cluster.Executor:
        ex = self.open.get(spec)
        if ex is None or ex.closed:
            self.baseline[spec] = _children()
            ex = self.open[spec] = cluster.connect(spec)
        return ex

    def close(self, spec: str) -> None:
        ex = self.open.pop(spec, None)
        if ex is not None:
            ex.close()


_EXECUTORS = _Executors()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    """The spec under test; module scope makes pytest run the tests backend by backend."""
    yield request.param
    _EXECUTORS.close(request.param)


@pytest.fixture
def ex(backend):
    return _EXECUTORS.get(backend)


# -- the generic suite ------------------------------------------------------------------


class TestExecutor:
    """Assertions every backend must pass."""

    def test_spread_places_actors_on_different_workers(self, ex):
        actors = [ex.actor(Counter, spread=i) for i in range(ex.n_workers)]
        pids = ex.gather([a.pid() for a in actors])
        if ex.backend in ("dask", "ray"):  # one process per worker / per actor
            assert len(set(pids)) == ex.n_workers
        else:
            assert set(pids) == {os.getpid()}

    def test_describe(self, ex, backend):
        spec = cluster.parse_spec(backend)
        assert ex.spec == str(spec)
        assert ex.backend == BACKEND_NAMES[backend] == spec.backend
        assert ex.n_workers == (spec.n or 1)
        assert ex.n_gpus == 0
        assert ex.dashboard_link is None or ex.dashboard_link.startswith("http")
        assert ex.spec in repr(ex)

    def test_memory_limit(self, ex):
        import psutil

        limit = ex.memory_limit
        if ex.backend in ("sync", "threads"):
            assert limit is None  # the driver's own memory: checked separately
        else:
            assert isinstance(limit, int) and 0 < limit <= psutil.virtual_memory().total

    def test_submit_result(self, ex):
        f = ex.submit(add, 1, y=2)
        assert isinstance(f, cluster.Future)
        assert f.result(timeout=60) == 3
        assert f.done()
        assert ex.gather(f) == 3

    def test_map_gather_in_submission_order(self, ex):
        n = 6
        delays = [0.05 * (n - 1 - i) for i in range(n)]  # the last ones finish first
        futures = ex.map(slow_identity, range(n), delays)
        assert len(futures) == n
        assert ex.gather(futures) == list(range(n))
        assert ex.gather(ex.map(add, [1, 2, 3], [10, 20])) == [11, 22]  # shortest wins
        assert ex.gather(ex.map(add, [1, 2, 3], y=100)) == [101, 102, 103]
        assert ex.map(add, []) == []
        assert ex.gather([]) == []

    def test_as_completed_yields_each_future_once(self, ex):
        futures = ex.map(slow_identity, range(5), [0.1, 0.0, 0.05, 0.0, 0.02])
        seen = list(ex.as_completed(futures))
        assert sorted(map(id, seen)) == sorted(map(id, futures))
        assert sorted(f.result() for f in seen) == list(range(5))
        assert all(f.done() for f in seen)

    def test_exception_keeps_original_type(self, ex):
        f = ex.submit(fail, "boom", pure=False)
        with pytest.raises(TaskError, match="boom") as info:
            f.result()
        assert type(info.value) is TaskError
        with pytest.raises(TaskError, match="boom"):
            ex.gather([ex.submit(add, 1), f])
        [done] = ex.as_completed([f])
        assert done is f

    def test_identical_submissions_get_right_results(self, ex):
        assert ex.gather([ex.submit(add, 1, 2), ex.submit(add, 1, 2)]) == [3, 3]
        adders = [make_adder(k) for k in range(3)]  # same code, different closures
        assert ex.gather([ex.submit(a, 1) for a in adders]) == [1, 2, 3]
        assert ex.gather(ex.map(add, [5, 5, 5], [1, 1, 1])) == [6, 6, 6]

    def test_put_large_array_for_tasks_and_actors(self, ex):
        arr = np.arange(2_500_000, dtype=np.float64)  # 20 MB
        expected = float(arr[::1000].sum())
        ref = ex.put(arr)
        assert isinstance(ref, cluster.Ref)
        futures = [
            ex.submit(array_stat, ref),
            ex.submit(array_stat, ref, offset=1.0),
            ex.submit(array_stat, arr=ref, offset=2.0),
            *ex.map(array_stat, [ref, ref], [3.0, 4.0]),
            *ex.map(offset_stat, [5.0, 6.0], arr=ref),
        ]
        results = ex.gather(futures)
        assert [r[0] - expected for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        assert all(r[1] == arr.shape for r in results)
        counter = ex.actor(Counter, data=ref)
        assert counter.data_size().result() == arr.size
        assert counter.stat(ref).result() == (expected, arr.shape)
        assert counter.stat(arr=ref, scale=2.0).result() == (2 * expected, arr.shape)

    def test_two_tasks_reading_put_data_run_side_by_side(self, ex, tmp_path):
        """Two tasks that read the same ``put`` data run at once in two worker processes
        (the barrier holds each until both have started). On Dask the copy on every
        worker is what keeps them from queueing at one worker; that the copies stay is
        checked in ``test_dask_put_data_stays_on_every_worker``."""
        if ex.backend in ("sync", "threads"):
            pytest.skip("tasks run in this process")
        ref = ex.put(np.ones(1000))
        folder = str(tmp_path)
        pids = ex.gather(ex.map(pid_at_barrier, [ref, ref], [folder] * 2, ["a", "b"], [2, 2]))
        assert len(set(pids)) == 2 and os.getpid() not in pids

    def test_actor_keeps_state(self, ex):
        counter = ex.actor(Counter, 10, step=2)
        assert isinstance(counter, cluster.ActorHandle)
        assert [counter.incr().result() for _ in range(3)] == [12, 14, 16]
        assert counter.incr(times=2).result() == 20
        other = ex.actor(Counter, 10, step=2)  # same arguments, yet a separate actor
        assert other.incr().result() == 12
        assert ex.gather([counter.incr(), counter.incr()]) == [22, 24]
        with pytest.raises(AttributeError):
            counter.no_such_method  # noqa: B018

    def test_actor_constructor_error_raises_at_creation(self, ex):
        with pytest.raises(TypeError):
            ex.actor(Counter, 1, 2, 3, 4)

    def test_actors_are_built_together_spread_and_in_order(self, ex):
        calls = [((10 * i,), {"step": i + 1}) for i in range(ex.n_workers)]
        actors = ex.actors(Counter, calls)
        assert ex.gather([a.incr() for a in actors]) == [11 * i + 1 for i in range(ex.n_workers)]
        pids = ex.gather([a.pid() for a in actors])
        if ex.backend in ("dask", "ray"):
            assert len(set(pids)) == ex.n_workers
        with pytest.raises(TypeError):
            ex.actors(Counter, [((1,), {}), ((1, 2, 3, 4), {})])

    def test_pure_task_is_retried(self, ex, tmp_path):
        assert ex.submit(fail_once, str(tmp_path / "pure"), pure=True).result(timeout=60) == "ok"
        assert (tmp_path / "pure").exists()
        with pytest.raises(TaskError, match="first attempt"):
            ex.submit(fail_once, str(tmp_path / "impure"), pure=False).result(timeout=60)
        assert ex.submit(fail_once, str(tmp_path / "impure"), pure=False).result() == "ok"

    def test_gpu_request_without_gpu_raises_at_once(self, ex):
        assert ex.n_gpus == 0
        start = time.monotonic()
        with pytest.raises(cluster.ResourceError, match="no GPU available"):
            ex.submit(add, 1, gpus=1)
        with pytest.raises(cluster.ResourceError, match="no GPU available"):
            ex.map(add, [1, 2], gpus=1)
        with pytest.raises(cluster.ResourceError, match="no GPU available"):
            ex.actor(Counter, gpus=1)
        with pytest.raises(ValueError, match="gpus"):
            ex.submit(add, 1, gpus=-1)
        assert time.monotonic() - start < 5

    def test_result_timeout(self, ex, backend):
        f = ex.submit(slow_identity, 1, 0.5, pure=False)
        if backend != "sync":  # sync ran the task inside submit
            with pytest.raises(TimeoutError):
                f.result(timeout=0.01)
        assert f.result(timeout=60) == 1

    def test_close_is_clean_and_idempotent(self, ex, backend):
        """Runs last for its backend: closes the shared executor and checks its processes."""
        baseline = _EXECUTORS.baseline[backend]
        assert ex.submit(add, 2, 3).result() == 5
        _EXECUTORS.close(backend)
        ex.close()  # idempotent
        assert ex.closed
        with pytest.raises(RuntimeError, match="closed"):
            ex.submit(add, 1)
        assert _new_children(baseline) == set()


# -- specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sync", ("sync", None, None, "sync")),
        (" Threads:3 ", ("threads", 3, None, "threads:3")),
        ("threads", ("threads", os.cpu_count(), None, f"threads:{os.cpu_count()}")),
        ("local", ("local", min(os.cpu_count(), 4), None, f"local:{min(os.cpu_count(), 4)}")),
        (None, ("local", min(os.cpu_count(), 4), None, f"local:{min(os.cpu_count(), 4)}")),
        ("local:8", ("local", 8, None, "local:8")),
        ("local-cuda", ("local-cuda", None, None, "local-cuda")),
        ("tcp://10.0.0.5:8786", ("tcp", None, "tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786")),
        ("tcp://head", ("tcp", None, "tcp://head:8786", "tcp://head:8786")),
        ("ray", ("ray", os.cpu_count(), None, f"ray:{os.cpu_count()}")),
        ("ray:2", ("ray", 2, None, "ray:2")),
        ("ray:auto", ("ray", None, "auto", "ray:auto")),
        ("ray://head:10001", ("ray", None, "ray://head:10001", "ray://head:10001")),
        ("slurm", ("slurm", None, None, "slurm")),
        ("pbs", ("pbs", None, None, "pbs")),
        ("sge", ("sge", None, None, "sge")),
        ("lsf:4", ("lsf", 4, None, "lsf:4")),
    ],
)
def test_parse_spec_accepts(text, expected):
    spec = cluster.parse_spec(text)
    assert (spec.kind, spec.n, spec.address, str(spec)) == expected
    assert cluster.parse_spec(spec) is spec


@pytest.mark.parametrize(
    "text",
    ["dask", "local:0", "local:-1", "local:x", "threads:", "sync:2", "tcp://", "tcp://h:99999",
     "ray:two", "http://host:80", "local:2:3", "kubernetes"],
)  # fmt: skip
def test_parse_spec_rejects_with_one_clear_line(text):
    with pytest.raises(cluster.SpecError) as info:
        cluster.parse_spec(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text.strip()) in message
    assert cluster.SPECS_HELP in message
    assert isinstance(info.value, ValueError)


def test_local_cuda_needs_dask_cuda():
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(cluster.SpecError, match="dask-cuda"):
            cluster.connect("local-cuda")
    else:
        pytest.skip("dask-cuda is installed; 'local-cuda' is exercised by GPU tests")


def test_specs_help_lists_every_form():
    for form in ["sync", "threads", "local", "local-cuda", "tcp://", "ray", "ray:auto",
                 "ray://", "slurm", "pbs", "sge", "lsf"]:  # fmt: skip
        assert form in cluster.SPECS_HELP


# -- package hygiene ----------------------------------------------------------------------


def test_import_is_cheap_and_lazy():
    code = "import cluster, sys; print(sorted({'dask', 'distributed', 'ray'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# -- Dask specifics -----------------------------------------------------------------------


def test_unguarded_script_gets_told_to_guard_its_cluster(tmp_path):
    """A script that starts ``local:N`` at import time: the spawned workers import it
    again; each says so in one line instead of starting a cluster of its own, and the
    script's own error names the file and the guard."""
    script = tmp_path / "unguarded.py"

    def run(text: str) -> subprocess.CompletedProcess:
        script.write_text(text)
        return subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    out = run("import tilegraph\n\ntilegraph.connect('local:1').close()\n")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "local:1 could not start its worker processes" in last
    assert str(script) in last and 'if __name__ == "__main__":' in last
    assert "a worker process imported the main script" in out.stderr
    # a guard further down does not help a connect above it
    out = run(
        "import tilegraph\n\nex = tilegraph.connect('local:1')\n\n"
        "if __name__ == '__main__':\n    ex.close()\n"
    )
    assert "could not start its worker processes" in out.stderr.strip().splitlines()[-1]
    # the same script, guarded, runs
    ok = run("import tilegraph\n\nif __name__ == '__main__':\n    tilegraph.connect('local:1')\n")
    assert ok.returncode == 0, ok.stderr
    # an in-process executor at import time stays fine in the script's own spawned pool
    ok = run(
        "import concurrent.futures, multiprocessing\nimport tilegraph\n\n"
        "ex = tilegraph.connect('sync')\n\ndef square(x):\n    return x * x\n\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:\n"
        "        print(list(pool.map(square, range(3))))\n"
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "[0, 1, 4]", ok.stderr


def test_tcp_connects_to_existing_scheduler_and_leaves_it_running():
    import logging

    import distributed

    with distributed.LocalCluster(
        n_workers=1,
        processes=True,
        threads_per_worker=1,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as local:
        address = local.scheduler_address
        with cluster.connect(address) as ex:
            assert ex.backend == "dask"
            assert ex.spec == address
            assert ex.n_workers == 1
            assert ex.gather(ex.map(add, [1, 2], [3, 4])) == [4, 6]
            counter = ex.actor(Counter, 1)
            assert counter.incr().result() == 2
        assert ex.closed
        with distributed.Client(address, set_as_default=False) as client:  # still serving
            assert client.submit(add, 20, 22).result(timeout=30) == 42
            assert len(client.scheduler_info()["workers"]) == 1


def test_dask_actor_gets_put_data_held_by_another_worker():
    """Dask actors get no future resolution: check the copy-to-the-actor's-worker path."""
    started_here = "local:2" not in _EXECUTORS.open
    ex = _EXECUTORS.get("local:2")
    try:
        counter = ex.actor(Counter)
        home = counter.where().result()
        other = next(w for w in ex.client.scheduler_info()["workers"] if w != home)
        arr = np.ones(10_000)
        [fut] = ex.client.scatter([arr], workers=[other], hash=False)
        ref = cluster.Ref(fut, ex, "ndarray")
        assert ex.client.who_has([fut])[fut.key] == (other,)
        assert counter.stat(ref).result() == (10.0, arr.shape)
        assert counter.stat(arr=ref, scale=3.0).result() == (30.0, arr.shape)
    finally:
        if started_here:
            _EXECUTORS.close("local:2")


def test_dask_put_data_stays_on_every_worker():
    """Dask's active memory manager would drop the broadcast copies within ~2 s (nothing
    waits on them); tilegraph's own schedulers run without it."""
    started_here = "local:2" not in _EXECUTORS.open
    ex = _EXECUTORS.get("local:2")
    try:
        ref = ex.put(np.ones(1000))
        workers = set(ex.client.scheduler_info()["workers"])
        time.sleep(2.5)  # past a pass of the memory manager (every 2 s by default)
        key = ref._payload.key
        assert set(ex.client.who_has([ref._payload])[key]) == workers
        assert len(workers) == 2
    finally:
        if started_here:
            _EXECUTORS.close("local:2")


def _worker_settings():
    import os

    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get(
        "distributed.worker.profile.enabled"
    )


def test_local_dask_workers_skip_the_malloc_trim_and_the_stack_sampler(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ makes every large temporary a fresh mmap on the
    workers; local clusters start them without it (and without the 10 ms sampler)."""
    # a plain LocalCluster started earlier in this process leaves Dask's value in
    # os.environ (its nannies export it there), and the OS environment wins
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with cluster.connect("local:1") as ex:
        assert ex.submit(_worker_settings).result() == (None, False)


def test_dask_actor_call_fails_soon_after_its_worker_left_the_cluster(monkeypatch):
    """A call to an actor whose worker the scheduler has dropped fails as a lost worker
    within seconds, through result() and through as_completed (Dask alone can wait out its
    30 s connect timeout); a timeout still raises TimeoutError while the worker is there."""
    ex = cluster.connect("local:1")
    try:
        napper = ex.actor(Counter)
        assert napper.nap(2.5).result() == 2.5  # spans liveness checks of a live worker
        with pytest.raises(TimeoutError):
            napper.nap(3.0).result(timeout=1.5)
        call = napper.nap(20.0)
        monkeypatch.setattr(ex.client, "scheduler_info", lambda *a, **k: {"workers": {}})
        t0 = time.perf_counter()
        with pytest.raises(OSError) as info:
            call.result()
        assert time.perf_counter() - t0 < 5.0
        assert cluster.is_worker_lost(info.value)
        t0 = time.perf_counter()  # as_completed polls done(): it must not wait either
        assert list(ex.as_completed([napper.nap(20.0)])) and time.perf_counter() - t0 < 5.0
    finally:
        monkeypatch.undo()
        ex.close()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["local:2", "ray:2"])
def test_killed_worker_process_is_a_lost_worker_and_its_pure_task_runs_again(spec, tmp_path):
    """The backend half of surviving a worker's death (SIGKILL), on every distributed
    backend: a call to an actor the process held fails with an error that
    `cluster.is_worker_lost` knows (the pipelines then go on from a checkpoint), and a
    pure task it was running runs again elsewhere. tests/test_faults.py kills workers
    under each pipeline, on one backend per pipeline."""
    ex = cluster.connect(spec)
    try:
        actor = ex.actor(Counter)
        pid = actor.pid().result(timeout=60)
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception) as info:  # the type is the backend's
            actor.incr().result(timeout=60)
        assert cluster.is_worker_lost(info.value), repr(info.value)

        marker = tmp_path / "pids"
        fut = ex.submit(pid_then_wait, str(marker), 60.0, pure=True)
        deadline = time.monotonic() + 60
        # the file appears before its first line is written: wait for the line
        while not _text(marker).endswith("\n") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _text(marker).endswith("\n"), "the task did not start within 60 s"
        first = int(_text(marker).split()[0])
        assert first != os.getpid()
        os.kill(first, signal.SIGKILL)
        assert fut.result(timeout=120) == "ok"
        pids = [int(p) for p in marker.read_text().split()]
        assert len(pids) >= 2 and pids[-1] != first
    finally:
        ex.close()


# -- telling a lost worker from a failure --------------------------------------------------


@pytest.mark.slow
def test_data_put_on_workers_that_all_left_is_a_lost_worker():
    """Every worker leaves gracefully, as batch jobs renewed before their walltime can,
    all at once: the data put on them goes too, and a task reading it fails with
    `cluster.DataLost`, which `cluster.is_worker_lost` knows (the pipelines then go on
    from a checkpoint), instead of Dask's "cancelled for reason: unknown"."""
    with cluster.connect("local:2") as ex:
        ref = ex.put(np.arange(5.0))
        assert ex.submit(len, ref).result(timeout=60) == 5
        client = ex.client
        # a task cancelled while its input is still there is no lost data
        sleeper = ex.submit(time.sleep, 30, pure=False)
        client.cancel([sleeper._fut])
        with pytest.raises(Exception) as info:
            sleeper.result(timeout=60)
        assert type(info.value).__name__ == "FutureCancelledError"
        assert not cluster.is_worker_lost(info.value)
        client.run(lambda dask_worker: dask_worker.loop.add_callback(dask_worker.close_gracefully))
        deadline = time.monotonic() + 60
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(cluster.DataLost) as info:
            ex.submit(len, ref).result(timeout=60)
        assert cluster.is_worker_lost(info.value)
        with pytest.raises(cluster.DataLost):
            ex.gather(ex.map(len, [ref, ref]))


def _named(name: str, message: str = "") -> Exception:
    return type(name, (Exception,), {})(message)


@pytest.mark.parametrize(
    "exc, lost",
    [
        (_named("KilledWorker"), True),
        (_named("ActorDiedError"), True),
        (
            _named(
                "ActorDiedError",
                "The actor died because of an error raised in its "
                "creation task, ray::ModelReplica.__init__()",
            ),
            False,
        ),  # fmt: skip
        (OSError("Unable to contact Actor's worker"), True),
        (_named("FutureCancelledError", "t cancelled for reason: lost dependencies."), True),
        (_named("FutureCancelledError", "t cancelled for reason: already forgotten."), True),
        (_named("FutureCancelledError", "t cancelled for reason: unknown"), False),
        (ValueError("bad input"), False),
    ],
)
def test_is_worker_lost(exc, lost):
    assert cluster.is_worker_lost(exc) is lost


def test_is_worker_lost_follows_explicit_causes_only():
    try:
        try:
            raise _named("KilledWorker")
        except Exception as inner:
            raise RuntimeError("pipeline step failed") from inner
    except RuntimeError as exc:
        assert cluster.is_worker_lost(exc)
    try:
        try:
            raise _named("KilledWorker")
        except Exception:
            raise ValueError("unrelated bug while handling it")  # noqa: B904
    except ValueError as exc:
        assert not cluster.is_worker_lost(exc)


@pytest.mark.slow
def test_a_task_computing_a_collection_keeps_its_worker():
    """Dask sent a collection computed inside a task to the cluster and let the task
    secede from the worker's one thread: the worker started its next task meanwhile,
    and a sweep ran three points at once on two one-thread workers. Now the tasks of
    one worker run one after the other."""
    with cluster.connect("local:1") as ex:
        spans = sorted(ex.gather(ex.map(computes_a_collection, range(3))), key=lambda s: s[1])
    assert len({pid for pid, _, _ in spans}) == 1
    for (_, _, end), (_, start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end - 0.05, spans


@pytest.mark.slow
def test_local_ray_tasks_compute_collections_in_their_thread():
    """As on Dask: not a machine-wide thread pool under each one-CPU Ray task."""
    with cluster.connect("ray:1") as ex:
        assert ex.gather(ex.map(dask_scheduler_here, range(2))) == ["synchronous"] * 2
