"""Dask backend: ``local[:N]``, ``local-cuda[:N]``, batch jobs, ``tcp://`` and ``tls://``.

`distributed` is imported only when a `DaskExecutor` is created, so ``import cluster``
stays cheap. The worker side of actors (`_ActorHost`) lives here too: workers import this
module to run it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import math
import os
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .base import RETRIES, ActorHandle, Executor, Future, Ref
from .faults import DataLost
from .specs import HPC_KINDS, Spec, SpecError

__all__ = ["DaskExecutor"]

#: Scattered objects an actor handle keeps a copy of on its worker (the most recent ones;
#: the copies live, in the worker's memory, until evicted or the handle is dropped).
_ACTOR_COPIES = 8


class _DaskFuture(Future):
    __slots__ = ("_fut", "_puts")

    def __init__(self, fut: Any, puts: tuple = ()) -> None:
        self._fut = fut  # distributed.Future; holding it keeps the result alive
        self._puts = puts  # futures of the `put` data the call reads: a lost input

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._fut.result(timeout=timeout)
        except Exception as exc:
            _raise_if_put_lost(exc, self._puts)
            raise

    def done(self) -> bool:
        return self._fut.done()


def _puts_of(values: Any) -> tuple:
    """The futures of the `put` data among ``values`` (a call's top-level arguments)."""
    return tuple(v._payload for v in values if isinstance(v, Ref))


def _raise_if_put_lost(exc: BaseException, puts: tuple) -> None:
    """Raise `~tilegraph.cluster.faults.DataLost` from ``exc`` when ``exc`` cancelled a
    task and data it reads, put on the workers, is gone: the last workers holding it
    left (batch jobs renewed before their walltime, all at once), and it cannot be
    computed again, so every task reading it is cancelled, with a reason Dask gives as
    ``already forgotten`` or ``unknown``."""
    if type(exc).__name__ != "FutureCancelledError" or not puts:
        return
    if any(f.status in ("lost", "cancelled", "error") for f in puts):
        raise DataLost(
            "data put on the workers was lost with the last workers holding it"
        ) from exc


#: Seconds between checks, while waiting for an actor call, that the actor's worker is
#: still in the cluster.
_ACTOR_POLL_S = 1.0
#: What such a call raises (a message `cluster.is_worker_lost` knows).
_ACTOR_LEFT = "Unable to contact Actor's worker: it left the cluster"


class _DaskActorFuture(Future):
    """An actor call's result. A call that reaches a worker which died before the
    scheduler noticed would wait out Dask's connect timeout (30 s) before it fails; this
    one fails within a second or two of the scheduler dropping the worker."""

    __slots__ = ("_alive", "_fut", "_keep", "_lost")

    def __init__(self, fut: Any, keep: tuple = (), alive: Callable[[], bool] | None = None):
        self._fut = fut  # distributed.actor.ActorFuture
        self._keep = keep  # scattered data the call refers to, alive until the call ends
        self._alive = alive  # whether the actor's worker is still in the cluster
        self._lost = False

    def result(self, timeout: float | None = None) -> Any:
        if self._alive is None:
            return self._fut.result(timeout=timeout)
        if self._lost and not self._fut.done():
            raise OSError(_ACTOR_LEFT)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._fut.done():
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"actor call not done after {timeout} s")
            try:
                return self._fut.result(timeout=min(_ACTOR_POLL_S, left))
            except TimeoutError:
                if self._fut.done():  # it finished meanwhile, or raised TimeoutError itself
                    return self._fut.result()
            if not self._alive():
                raise OSError(_ACTOR_LEFT)
        return self._fut.result()

    def done(self) -> bool:
        """True once the call ended, or once its worker left the cluster (``result``
        then raises), so ``as_completed`` does not wait on a dead worker either."""
        if self._fut.done() or self._lost:
            return True
        if self._alive is not None and not self._alive():
            self._lost = True
        return self._lost


def _apply(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run ``fn(*args, **kwargs)``; used when a keyword of fn clashes with Client.submit's."""
    return fn(*args, **kwargs)


class _RemoteRef:
    """Stands for scattered data in an actor call; resolved by `_ActorHost` on the worker."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __reduce__(self):
        return _RemoteRef, (self.key,)


def _identity(obj: Any) -> Any:
    """A task that makes Dask copy its argument to the worker it runs on."""
    return obj


class _ActorHost:
    """The Dask actor: holds the user's object and resolves `_RemoteRef` arguments.

    Dask does not resolve futures passed to actor methods. The driver therefore first
    runs `_identity` on the actor's worker for each scattered object (Dask copies the data
    there), then sends the key of that task's result, which the host finds in its
    worker's memory.
    """

    def __init__(self, cls: type, args: tuple, kwargs: dict) -> None:
        self._obj = cls(*args, **kwargs)

    @staticmethod
    def _resolve(value: Any) -> Any:
        if not isinstance(value, _RemoteRef):
            return value
        from distributed import get_worker

        return get_worker().data[value.key]

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        args = tuple(self._resolve(a) for a in args)
        kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
        return getattr(self._obj, name)(*args, **kwargs)


def _remote_ref(value: Any, distributed: Any) -> Any:
    return _RemoteRef(value.key) if isinstance(value, distributed.Future) else value


def _quiet_worker_shutdown() -> None:
    """Silence the worker logger that reports heartbeats cut off by the shutdown.

    Closing a LocalCluster can let a worker heartbeat hit the closing scheduler, which
    logs a spurious "Failed to communicate with scheduler during heartbeat" error
    (dask/distributed#7105); run on the workers just before closing.
    """
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


def _funcname(fn: Callable[..., Any]) -> str:
    from dask.utils import funcname

    return funcname(fn)


#: Dask config for the worker processes a local cluster spawns. Dask's nannies export
#: ``MALLOC_TRIM_THRESHOLD_=65536`` to hand freed memory back to the OS at once; setting
#: it also pins glibc's mmap threshold at 128 KiB, so every temporary array above that
#: size is a fresh mmap with zeroed pages. The many small tensor products of a ttn step
#: ran 2-2.5x slower on a worker than in the driver because of it. ``None`` unsets it (a
#: value in the OS environment still wins). Single-threaded BLAS stays. The workers'
#: statistical profiler (a stack sample every 10 ms, for the dashboard's profile page)
#: is off: it cost those Python-heavy steps another ~13 %.
WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}

#: Dask config for a scheduler that tilegraph starts (local, local-cuda, batch jobs).
#: The active memory manager's only default policy drops every copy of a key that no
#: waiting task needs, within ~2 s; it would undo the broadcast of `put` data, and a
#: task is placed on a worker that holds its inputs, so every task reading that data
#: would queue at one worker again.
SCHEDULER_CONFIG = {"distributed.scheduler.active-memory-manager.start": False}

#: Where the scheduler, nannies, workers and dashboard of a local cluster listen. Dask's
#: dashboard would otherwise take all interfaces, and it serves, unauthenticated, the
#: workers' addresses, folders, logs and call stacks.
LOOPBACK = "127.0.0.1"


def _tls_security(spec: Spec, profile_path: str | None) -> Any:
    """The `distributed.security.Security` for a ``tls://`` scheduler.

    Certificates come from the ``tls`` section of the cluster profile when it has one,
    else from the Dask config (``distributed.comm.tls.ca-file``,
    ``distributed.comm.tls.client.cert`` and ``.key``).

    Raises
    ------
    SpecError
        Neither names a CA file and a client certificate, or a named file is missing.
    """
    from distributed.security import Security

    from .jobqueue import load_tls

    tls = load_tls(profile_path)
    if tls is not None:
        return Security(
            tls_ca_file=tls.ca_file,
            tls_client_cert=tls.cert,
            tls_client_key=tls.key,
            require_encryption=True,
        )
    security = Security()  # reads distributed.comm.tls.* from the Dask config
    if not security.tls_ca_file or not security.tls_client_cert:
        raise SpecError(
            f"{spec}: no TLS certificates configured; set distributed.comm.tls.ca-file, "
            "distributed.comm.tls.client.cert and distributed.comm.tls.client.key in the "
            "Dask config (or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...__CLIENT__CERT, "
            "...__CLIENT__KEY), or a 'tls' section in the cluster profile"
        )
    for key, path in (
        ("ca-file", security.tls_ca_file),
        ("client.cert", security.tls_client_cert),
        ("client.key", security.tls_client_key),
    ):
        if path and not os.path.isfile(path):
            raise SpecError(f"{spec}: distributed.comm.tls.{key}: no such file {path!r}")
    return security


def _probe_scheduler(address: str, security, timeout: float | None = None) -> None:
    """Ask the process at ``address`` who it is, within Dask's connect timeout.

    ``distributed.Client`` waits without end for the handshake of a port that accepts
    connections but never answers (a service that is not a Dask scheduler).

    Raises
    ------
    TimeoutError
        No answer within ``timeout`` seconds (default: ``distributed.comm.timeouts.connect``).
    SpecError
        Something answered that is not a Dask scheduler.
    """
    import asyncio

    import dask
    from dask.utils import parse_timedelta
    from distributed.core import rpc

    if timeout is None:
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
    args = security.get_connection_args("client") if security is not None else {}

    async def identity():
        r = rpc(address, timeout=timeout, connection_args=args)
        try:
            return await r.identity()
        finally:
            await r.close_rpc()

    # on a thread of its own: the caller may be inside a running event loop (Jupyter)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            who = pool.submit(asyncio.run, asyncio.wait_for(identity(), timeout)).result()
    except TimeoutError:
        raise TimeoutError(
            f"{address} did not answer as a Dask scheduler within {timeout:g} s"
        ) from None
    if not isinstance(who, dict) or "Scheduler" not in str(who.get("type")):
        raise SpecError(f"{address} is not a Dask scheduler (it says it is {who!r:.80})")


#: Calls that start a cluster when a script makes them at import time.
_STARTERS = {"connect", "run", "sweep", "LocalCluster", "LocalCUDACluster", "Client"}


def _is_main_guard(node) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "__main__" in ast.unparse(test)


def _unguarded_script() -> str | None:
    """The main script's path when one of its module-level statements outside an
    ``if __name__ == "__main__":`` block calls something that starts a cluster
    (``connect``, ``run``, ``sweep``, ``LocalCluster``, ``Client``)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if _is_main_guard(stmt):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in _STARTERS:
                    return path
    return None


@contextlib.contextmanager
def _half_built_closed():
    """Close a local cluster whose start was interrupted (Ctrl-C, SIGTERM) and take it
    off distributed's list of clusters to close at exit: that exit hook would otherwise
    print a traceback about workers still starting."""
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    try:
        yield
    except BaseException:
        for cluster in set(SpecCluster._instances) - before:
            with contextlib.suppress(BaseException):
                cluster.close(timeout=5)
            cluster.shutdown_on_close = False
            SpecCluster._instances.discard(cluster)
        raise


def _tracker_ignoring_hangups() -> None:
    """Start multiprocessing's resource tracker (which the worker processes register
    with) ignoring SIGHUP, as it ignores SIGINT and SIGTERM: a closed terminal sends
    SIGHUP to the whole process group, and a tracker it killed made the driver relaunch
    one that printed a KeyError traceback per worker while the run was being closed."""
    import signal
    import threading
    from multiprocessing import resource_tracker

    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread():
        return
    old = signal.signal(hup, signal.SIG_IGN)  # kept across exec: the tracker inherits it
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(hup, old)


@contextlib.contextmanager
def _submit_errors():
    """Collect, and keep off the terminal, what a batch scheduler's submit command said
    when it failed: dask-jobqueue raises it in a background task, which tornado and
    asyncio only log (two long tracebacks). Yields the list of their first lines."""
    import logging

    refused: list[str] = []

    class Catch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            text = str(exc) if exc is not None else record.getMessage()
            context = getattr(record, "msg", "")
            if "Command exited with non-zero exit code" not in f"{text} {context}":
                return True
            _, _, err = text.partition("stderr:")
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            refused.append(lines[0] if lines else " ".join(text.split())[:300])
            return False

    catch = Catch()
    loggers = [logging.getLogger(n) for n in ("tornado.application", "asyncio")]
    for lg in loggers:
        lg.addFilter(catch)
    try:
        yield refused
    finally:
        for lg in loggers:
            lg.removeFilter(catch)


@contextlib.contextmanager
def _unguarded_hint(spec: Spec):
    """Name the usual cause when local worker processes fail to start: they are spawned
    and import the main script, which then starts a cluster of its own."""
    try:
        yield
    except RuntimeError as e:
        path = _unguarded_script()
        if path is None or "failed to start" not in str(e):
            raise
        raise RuntimeError(
            f"{spec} could not start its worker processes: they import {path}, which "
            'starts tilegraph at import time; put that code under `if __name__ == "__main__":`'
        ) from e


class DaskExecutor(Executor):
    """Tasks on a `distributed` cluster: a new `LocalCluster` (``local[:N]``), a
    ``dask_cuda.LocalCUDACluster`` (``local-cuda[:N]``), batch jobs through dask-jobqueue
    (``slurm|pbs|sge|lsf[:JOBS]``, configured by a profile file, see `cluster.jobqueue`)
    or an existing scheduler (``tcp://``, or ``tls://`` with certificates, see
    `_tls_security`; left running on `close`).

    The local clusters listen on loopback only (`LOOPBACK`).
    """

    backend = "dask"

    def __init__(self, spec: Spec, profile_path: str | None = None) -> None:
        super().__init__(spec)
        import dask
        import distributed

        self._distributed = distributed
        self._cluster = None
        self._rejoin_timeout = 60.0  # seconds `wait_for_workers` waits (a profile's own)
        self._watching = contextlib.ExitStack()  # the submit-error filter of batch jobs
        self._reaper: Any = None  # cancels the batch jobs if this process is killed
        self._renewer: Any = None  # replaces batch jobs ahead of their walltime
        self._retired: set[str] = set()  # the renewer's retired workers (it adds them)
        # Where a batch scheduler's dashboard listens: Dask's link names the scheduler's
        # host, which listens on all interfaces when the profile names none.
        self._dashboard_host: str | None = None
        if spec.kind == "local":
            _tracker_ignoring_hangups()
            config = dask.config.set({**WORKER_CONFIG, **SCHEDULER_CONFIG})
            with config, _unguarded_hint(spec), _half_built_closed():
                self._cluster = distributed.LocalCluster(
                    n_workers=spec.n,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit="auto",
                    host=LOOPBACK,
                    dashboard_address=f"{LOOPBACK}:0",
                    silence_logs=logging.ERROR,
                )
        elif spec.kind == "local-cuda":
            try:
                import dask_cuda
            except ImportError:
                raise SpecError(
                    "cluster spec 'local-cuda' needs dask-cuda (pip install 'tilegraph[gpu]')"
                ) from None
            kwargs: dict[str, Any] = {} if spec.n is None else {"n_workers": spec.n}
            config = dask.config.set({**WORKER_CONFIG, **SCHEDULER_CONFIG})
            with config, _unguarded_hint(spec), _half_built_closed():
                self._cluster = dask_cuda.LocalCUDACluster(
                    threads_per_worker=1,
                    host=LOOPBACK,
                    dashboard_address=f"{LOOPBACK}:0",
                    silence_logs=logging.ERROR,
                    resources={"GPU": 1},
                    **kwargs,
                )
        elif spec.kind in HPC_KINDS:
            import secrets

            from .jobqueue import cancel_command, dashboard_address, load_profile, make_cluster
            from .reaper import start_reaper

            profile = load_profile(spec.kind, profile_path)
            self._dashboard_host = dashboard_address(profile).rpartition(":")[0]
            # a name of their own: a killed driver's watchdog cancels them by it
            job_name = f"tilegraph-{secrets.token_hex(4)}"
            with dask.config.set(SCHEDULER_CONFIG):
                self._cluster = make_cluster(spec, profile, job_name=job_name)
            self._reaper = start_reaper([], on_death=cancel_command(spec.kind, job_name))
            # from the first submission on: a refused one is logged from the event loop
            self._refused = self._watching.enter_context(_submit_errors())
            n_jobs = spec.n or profile.jobs
            self._rejoin_timeout = profile.wait_timeout
            self._cluster.scale(jobs=n_jobs)
            if profile.renew:  # each job replaced ahead of its walltime
                from .renew import Renewer

                self._renewer = Renewer(
                    self._cluster, profile.workers_per_job, profile.renew_after
                )
                self._retired = self._renewer.retired
        elif spec.kind not in ("tcp", "tls"):
            raise SpecError(f"{spec.kind!r} is not a Dask spec")
        security = _tls_security(spec, profile_path) if spec.kind == "tls" else None
        if self._cluster is None:
            _probe_scheduler(spec.address, security)
        try:
            self._client = distributed.Client(
                self._cluster if self._cluster is not None else spec.address,
                security=security,
                set_as_default=False,
            )
        except BaseException:
            self._watching.close()
            self._stop_renewer()
            if self._cluster is not None:
                self._cluster.close()
            raise
        if spec.kind in HPC_KINDS:
            with self._watching:
                self._wait_for_jobs(spec, profile)
        if self._cluster is not None:  # one tilegraph started (not a shared one's workers)
            from .dask_plugins import TasksComputeInline

            self._client.register_plugin(TasksComputeInline())
        if spec.kind in ("local", "local-cuda"):
            from .dask_plugins import IgnoreInterrupts

            self._client.register_plugin(IgnoreInterrupts())
        if spec.kind == "local-cuda":
            self._spec = Spec("local-cuda", n=self.n_workers)
        self._submit_params = frozenset(inspect.signature(self._client.submit).parameters)
        self._map_params = frozenset(inspect.signature(self._client.map).parameters)

    def wait_for_workers(self, timeout: float | None = None) -> bool:
        """Wait until at least one worker is in the cluster (after every worker left:
        a batch job renewed, a node lost); False when none joined within ``timeout``
        seconds (default: the batch profile's ``wait_timeout``, else 60)."""
        try:
            self._await_a_worker(timeout or self._rejoin_timeout)
        except Exception:  # TimeoutError, or a client that is closing
            return False
        return True

    def _await_a_worker(self, timeout: float) -> None:
        """Return once a worker is in the cluster; TimeoutError after ``timeout`` s.
        Asked of the scheduler: the cluster object's own wait replaces its snapshot of
        the workers, and a worker leaving meanwhile then stops its watch of them (a
        KeyError in distributed's spec cluster)."""
        self._client.sync(self._client._wait_for_workers, 1, timeout=timeout)

    def _wait_for_jobs(self, spec: Spec, profile) -> None:
        """Wait for the first worker of the submitted jobs; a submission the scheduler
        refused (a bad account or partition) fails at once, with its message, instead of
        after ``wait_timeout`` with a traceback."""
        import time

        n_jobs = spec.n or profile.jobs
        sys.stderr.write(
            f"submitted {n_jobs} {spec.kind} job(s); waiting up to {profile.wait_timeout:g} s "
            "for the first worker (Ctrl-C cancels them)\n"
        )
        deadline = time.monotonic() + profile.wait_timeout
        refused = self._refused
        while True:
            try:
                left = deadline - time.monotonic()
                self._await_a_worker(max(min(2.0, left), 0.1))
                return
            except TimeoutError:
                if not refused and time.monotonic() < deadline:
                    continue
            self._close_unstarted()
            if refused:
                raise SpecError(f"{spec.kind} refused the job: {refused[0]}") from None
            raise TimeoutError(
                f"no Dask worker joined from {spec.kind} within {profile.wait_timeout:g} s: "
                "the jobs may still be queued or may have failed (see the scheduler's "
                "queue and the job logs; raise wait_timeout in the cluster profile)"
            ) from None

    def _close_unstarted(self) -> None:
        """Close the client and a jobqueue cluster whose jobs never started (closing one
        trips an assertion in dask-jobqueue: not what the user should see)."""
        self._stop_renewer()
        for closing in (self._client, self._cluster):
            with contextlib.suppress(Exception):
                closing.close()
        self._stop_reaper()

    def check_report(self) -> None:
        import importlib.util

        if importlib.util.find_spec("bokeh") is None:
            raise ValueError(
                "Dask's performance report needs bokeh: pip install 'tilegraph[report]'"
            )

    @contextlib.contextmanager
    def report(self, path: str) -> Iterator[None]:
        self.check_report()
        with self._client.as_current(), self._distributed.performance_report(filename=path):
            yield

    def _add_code(self, paths: list[str]) -> None:
        """Upload each module with a worker plugin (kept for workers that join later)."""
        import tempfile

        from distributed.diagnostics.plugin import UploadFile

        from .code import zip_package

        with tempfile.TemporaryDirectory(prefix="tilegraph-code-") as tmp:
            for path in paths:
                upload = zip_package(path, tmp) if os.path.isdir(path) else path
                name = f"tilegraph-code-{os.path.basename(upload)}"
                self._client.register_plugin(UploadFile(upload, load=True), name=name)

    # -- description ------------------------------------------------------------------

    def _workers(self) -> dict[str, Any]:
        return self._client.scheduler_info(n_workers=-1)["workers"]

    @property
    def n_workers(self) -> int:
        return len(self._workers())

    def worker_ids(self) -> frozenset[str]:
        return frozenset(self._workers())  # addresses: a restarted worker listens anew

    def retired_ids(self) -> frozenset[str]:
        return frozenset(self._retired)

    @property
    def memory_limit(self) -> int | None:
        limits = [int(w.get("memory_limit") or 0) for w in self._workers().values()]
        limits = [m for m in limits if m > 0]  # 0: the worker has no limit
        return min(limits) if limits else None

    @property
    def n_gpus(self) -> int:
        return int(sum(w.get("resources", {}).get("GPU", 0) for w in self._workers().values()))

    @property
    def dashboard_link(self) -> str | None:
        try:
            if self._dashboard_host is not None:
                from distributed.utils import format_dashboard_link

                port = self._cluster.scheduler_info["services"]["dashboard"]
                return format_dashboard_link(self._dashboard_host, port)
            return self._client.dashboard_link
        except Exception:  # no dashboard (bokeh missing) or scheduler without one
            return None

    @property
    def client(self) -> Any:
        """The underlying `distributed.Client` (for diagnostics, not for pipelines)."""
        return self._client

    # -- tasks ------------------------------------------------------------------------

    @staticmethod
    def _options(gpus: int, pure: bool) -> dict[str, Any]:
        return {
            "pure": pure,
            "retries": RETRIES if pure else 0,
            "resources": {"GPU": gpus} if gpus else None,
        }

    def _submit(self, fn, args, kwargs, gpus, pure, key) -> Future:
        puts = _puts_of((*args, *kwargs.values()))
        args, kwargs = self._unref_args(args, kwargs)
        options = self._options(gpus, pure)
        if key is not None:
            options["key"] = key
        if kwargs.keys() & self._submit_params:
            if key is None:
                from dask.base import tokenize

                token = tokenize(fn, args, kwargs) if pure else uuid.uuid4().hex
                options["key"] = f"{_funcname(fn)}-{token}"
            fut = self._client.submit(_apply, fn, args, kwargs, **options)
        else:
            fut = self._client.submit(fn, *args, **options, **kwargs)
        return _DaskFuture(fut, puts)

    def _map(self, fn, calls, kwargs, gpus, pure) -> list[Future]:
        shared = _puts_of(kwargs.values())
        puts = [shared + _puts_of(call) for call in calls]
        kwargs = {k: self._unref(v) for k, v in kwargs.items()}
        if kwargs.keys() & self._map_params:
            futs = super()._map(fn, calls, kwargs, gpus, pure)
        else:
            columns = [[self._unref(a) for a in col] for col in zip(*calls, strict=True)]
            futs = self._client.map(fn, *columns, **self._options(gpus, pure), **kwargs)
            futs = [_DaskFuture(f) for f in futs]
        for f, used in zip(futs, puts, strict=True):
            f._puts = used
        return futs

    def _gather(self, futures: list[Future]) -> list[Any]:
        if all(isinstance(f, _DaskFuture) for f in futures):
            try:
                return self._client.gather([f._fut for f in futures])
            except Exception as exc:
                cancelled = [f for f in futures if f._fut.status == "cancelled"]
                _raise_if_put_lost(exc, tuple(p for f in cancelled for p in f._puts))
                raise
        return super()._gather(futures)

    def _as_completed(self, futures: list[Future]) -> Iterator[Future]:
        if not all(isinstance(f, _DaskFuture) for f in futures):
            yield from super()._as_completed(futures)
            return
        by_key: dict[Any, list[Future]] = {}
        inner = []
        for f in futures:
            if f._fut.key not in by_key:
                by_key[f._fut.key] = []
                inner.append(f._fut)
            by_key[f._fut.key].append(f)
        for done in self._distributed.as_completed(inner, loop=self._client.loop):
            yield from by_key[done.key]

    # -- data and actors --------------------------------------------------------------

    def _put(self, obj: Any) -> Any:
        # A list makes scatter treat obj as one item even when obj is itself a list or dict.
        # Broadcast: Dask places a task on a worker that holds its inputs, so data held by
        # one worker would queue every task that reads it there (and die with it). The
        # copies stay where tilegraph starts the scheduler (SCHEDULER_CONFIG); on an
        # external one (tcp://) its active memory manager may reduce them again.
        [fut] = self._client.scatter([obj], broadcast=True, hash=False)
        return fut

    def _actor(self, cls, args, kwargs, gpus, spread=None) -> ActorHandle:
        return self._start_actor(cls, args, kwargs, gpus, spread)()

    def _start_actor(self, cls, args, kwargs, gpus, spread=None):
        args, kwargs = self._unref_args(args, kwargs)
        workers = None
        if spread is not None:
            addresses = sorted(self._workers())
            workers = [addresses[spread % len(addresses)]] if addresses else None
        fut = self._client.submit(
            _ActorHost,
            cls,
            args,
            kwargs,
            actor=True,
            pure=False,
            key=f"{cls.__name__}-actor-{uuid.uuid4().hex}",
            resources={"GPU": gpus} if gpus else None,
            workers=workers,
        )
        return functools.partial(self._bind_actor, cls, fut)

    def _bind_actor(self, cls, fut) -> ActorHandle:
        """Wait for an actor submitted by `_start_actor` and return its handle."""
        proxy = fut.result()
        # The proxy binds itself to the *default* client, which ours is not (or may be
        # another one): bind it to this executor's client.
        proxy._client = self._client
        proxy._future = fut
        distributed = self._distributed
        copies: OrderedDict[Any, Any] = OrderedDict()  # scattered key -> copy on the actor

        def local(value: Any) -> Any:
            if not isinstance(value, distributed.Future):
                return value
            copy = copies.get(value.key)
            if copy is None:
                copy = self._client.submit(
                    _identity,
                    value,
                    workers=[proxy._address],
                    pure=False,
                    retries=2,
                    priority=100,  # ahead of queued tasks on that worker
                )
                error = copy.exception()  # waits without fetching the data here
                if error is not None:
                    raise error
                copies[value.key] = copy
                while len(copies) > _ACTOR_COPIES:
                    copies.popitem(last=False)
            copies.move_to_end(value.key)
            return copy

        def call(name: str, margs: tuple, mkwargs: dict) -> Future:
            self._check_usable(0)
            margs, mkwargs = self._unref_args(margs, mkwargs)
            margs = tuple(local(a) for a in margs)
            mkwargs = {k: local(v) for k, v in mkwargs.items()}
            values = (*margs, *mkwargs.values())
            keep = tuple(v for v in values if isinstance(v, distributed.Future))
            if keep:
                margs = tuple(_remote_ref(a, distributed) for a in margs)
                mkwargs = {k: _remote_ref(v, distributed) for k, v in mkwargs.items()}
            return _DaskActorFuture(proxy.call(name, margs, mkwargs), keep, alive)

        seen = [0.0, True]  # when the actor's worker was last looked up, and the answer

        def alive() -> bool:
            """Whether the actor's worker is in the cluster (asked at most once a second:
            ``as_completed`` polls ``done`` often)."""
            # a closing client forgets its workers: then let Dask's own outcome through
            if self._client.status != "running":
                return True
            if time.monotonic() - seen[0] >= _ACTOR_POLL_S:
                try:
                    workers = self._client.scheduler_info().get("workers", {})
                    seen[1] = proxy._address in workers
                except Exception:
                    seen[1] = True
                seen[0] = time.monotonic()
            return seen[1]

        call.actor_future = fut  # keeps the actor alive as long as the handle
        return ActorHandle(cls, call)

    # -- lifetime ---------------------------------------------------------------------

    def _close(self) -> None:
        self._stop_renewer()
        try:
            if self._cluster is not None:
                try:
                    self._client.run(_quiet_worker_shutdown)
                except Exception:  # best effort: the workers may be gone already
                    pass
            self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
            self._stop_reaper()

    def _stop_renewer(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None

    def _stop_reaper(self) -> None:
        """A normal close cancelled the jobs itself: the watchdog has nothing to do."""
        if self._reaper is not None:
            self._reaper.terminate()
            with contextlib.suppress(Exception):
                self._reaper.wait(timeout=10)
            self._reaper = None
