"""Ray backend: a local Ray (``ray[:N]``) or an existing cluster (``ray:auto``, ``ray://``).

`ray` is imported only when a `RayExecutor` is created, so ``import cluster`` stays cheap.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .base import ActorHandle, Executor, Future
from .specs import Spec, SpecError

__all__ = ["RAY_RETRIES", "RayExecutor"]

logger = logging.getLogger(__name__)

#: ``max_retries`` of pure tasks (Ray counts re-runs, as Dask's ``retries`` does).
RAY_RETRIES = 3


def _apply(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)``; the Ray task for callables that are not functions."""
    return fn(*args, **kwargs)


def _raise_original(error: BaseException) -> None:
    """Re-raise the exception a task raised (Ray wraps it in a RayTaskError)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        raise cause from error
    raise error


class _RayFuture(Future):
    __slots__ = ("_ray", "_ref")

    def __init__(self, ray: Any, ref: Any) -> None:
        self._ray = ray
        self._ref = ref  # ray.ObjectRef

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._ray.get(self._ref, timeout=timeout)
        except self._ray.exceptions.RayTaskError as error:
            _raise_original(error)

    def done(self) -> bool:
        ready, _ = self._ray.wait([self._ref], timeout=0, fetch_local=False)
        return bool(ready)


_ENVIRON_LOCK = threading.Lock()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them (one
    such block at a time; other threads still see the values meanwhile)."""
    with _ENVIRON_LOCK:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _driver_pythonpath() -> str:
    """The driver's extra import paths (cwd, test folders...), for local Ray workers.

    Ray workers start with the driver's script folder and working directory on their
    path, but not with folders the driver added to ``sys.path`` at run time (pytest adds
    the test folder, for example), so functions defined there could not be unpickled.
    """
    skip = {
        os.path.realpath(p)
        for p in (sysconfig.get_paths().get("stdlib"), sysconfig.get_paths().get("purelib"))
        if p
    }
    paths: list[str] = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if os.path.isdir(path) and path not in skip and path not in paths:
            if not any(path.startswith(s + os.sep) for s in skip):
                paths.append(path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in paths:
            paths.append(entry)
    return os.pathsep.join(paths)


#: What turns off multi-node Ray for the processes a local instance starts (see
#: `_loopback_node`).
_LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

#: The workers of a local instance compute a Dask collection that a task makes (xarray
#: reading lazily) in the task's thread, as tilegraph's Dask workers do
#: (``dask_plugins.TasksComputeInline``): not on a thread pool as wide as the machine
#: under each one-CPU task.
_TASKS_COMPUTE_INLINE = {"DASK_SCHEDULER": "synchronous"}


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Make the Ray instance ``ray.init`` starts in this block a loopback-only node.

    Ray's GCS server, raylet, agents and workers bind 127.0.0.1 when the node's IP is
    127.0.0.1 and all interfaces otherwise, and ``ray.init`` turns a loopback
    ``_node_ip_address`` into the host's outward IP, except where multi-node clusters are
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the macOS and Windows default). Ray
    reads that variable when it is imported, so the flag it set is switched here, for
    the block only (a later ``ray:HOST:PORT`` driver in this process needs its real IP);
    the caller sets the variable (`_LOCAL_ONLY_ENV`) for the processes Ray starts.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without it: the warning after ray.init tells
        yield
        return
    flag = "ENABLE_RAY_CLUSTER"
    old = getattr(ray_constants, flag, None)
    if old is not None:
        setattr(ray_constants, flag, False)
    try:
        yield
    finally:
        if old is not None:
            setattr(ray_constants, flag, old)


def _token_auth_if_available() -> None:
    """Use Ray's token authentication when a token is at hand and no mode is chosen.

    ``ray start`` (Ray >= 2.5x) enables token authentication and writes the token to
    ``~/.ray/auth_token``, but a driver only sends it with ``RAY_AUTH_MODE=token``;
    without it, connecting to such a cluster fails after a long retry loop.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def _probe_grpc(hostport: str, timeout: float = 15.0) -> None:
    """Wait until ``hostport`` answers as a gRPC server (a Ray head's GCS and the Ray
    Client server both are); Ray itself retries a port that accepts but never answers
    (not a Ray head) for minutes.

    Raises
    ------
    TimeoutError
        No gRPC answer within ``timeout`` seconds.
    """
    import grpc

    channel = grpc.insecure_channel(hostport)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise TimeoutError(
            f"{hostport} did not answer as a Ray head (gRPC) within {timeout:g} s"
        ) from None
    finally:
        channel.close()


class RayExecutor(Executor):
    """Tasks on Ray: a local instance with ``spec.n`` CPUs, or an existing cluster.

    Every task asks for one CPU (and ``gpus`` GPUs). Actors ask for no CPU
    (``num_cpus=0``): an actor lives as long as its handle, and one holding a CPU would
    leave a 2-CPU instance with a single slot for tasks, or none with two actors, so tasks
    waiting on actors (or the reverse) could deadlock. GPU actors hold their GPUs.

    A local instance listens on loopback only (`_loopback_node`).
    """

    backend = "ray"

    def __init__(self, spec: Spec, code: tuple[str, ...] = ()) -> None:
        super().__init__(spec)
        if spec.kind != "ray":
            raise SpecError(f"{spec.kind!r} is not a Ray spec")
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        if spec.address is not None:
            _token_auth_if_available()  # read by Ray when it is imported
        import ray

        self._ray = ray
        self._remotes: dict[Any, Any] = {}
        self._actor_classes: dict[Any, Any] = {}
        self._connected = False  # whether close() must call ray.shutdown()
        self._dashboard: str | None = None
        self._reaper: Any = None  # cluster.reaper watchdog of a local instance
        if ray.is_initialized():
            # Someone else in this process runs Ray: use it, leave it running.
            if code:
                raise RuntimeError(
                    "Ray is already running in this process and takes user code only when "
                    "it starts; ship the modules with ray.init(runtime_env=...) instead"
                )
            return
        init_options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if code:  # Ray's own mechanism: packed, uploaded to the cluster, on every worker
            init_options["runtime_env"] = {"py_modules": list(code)}
            self._code = tuple(code)
        if spec.address is None:
            # The workers inherit the environment of the processes ray.init starts. A
            # runtime_env with the same variable would make Ray start a second pool of
            # workers for it at the first task (~2 s) next to the prestarted ones.
            import psutil

            from .reaper import start_reaper

            before = {p.pid for p in psutil.Process().children(recursive=True)}
            env = {**_LOCAL_ONLY_ENV, **_TASKS_COMPUTE_INLINE}
            with _environ(PYTHONPATH=_driver_pythonpath(), **env), _loopback_node():
                context = ray.init(
                    address="local",  # a new instance, even if Ray runs on this host
                    num_cpus=spec.n,
                    include_dashboard=False,
                    _node_ip_address="127.0.0.1",
                    **init_options,
                )
            # the instance's processes (not the driver's other children, a Dask
            # cluster's say) end with this driver, even a SIGKILLed one
            children = psutil.Process().children(recursive=True)
            self._reaper = start_reaper([p.pid for p in children if p.pid not in before])
            node_ip = ray.util.get_node_ip_address()
            if node_ip != "127.0.0.1":
                logger.warning(
                    "the local Ray instance runs as node %s, not 127.0.0.1: its processes "
                    "listen on all interfaces (this Ray version ignores the loopback setting)",
                    node_ip,
                )
        else:
            if spec.address != "auto":
                _probe_grpc(spec.address.split("://", 1)[-1])
            context = ray.init(address=spec.address, **init_options)
        self._connected = True
        url = getattr(context, "dashboard_url", None)
        if url:
            self._dashboard = url if "://" in url else f"http://{url}"

    def check_report(self) -> None:
        pass  # the timeline needs nothing more

    @contextlib.contextmanager
    def report(self, path: str) -> Iterator[None]:
        try:
            yield
        finally:
            self._ray.timeline(filename=path)

    def _add_code(self, paths: list[str]) -> None:
        raise RuntimeError(
            f"Ray takes user code when it connects: pass code={paths!r} to cluster.connect"
        )

    # -- description ------------------------------------------------------------------

    @property
    def n_workers(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 0))

    @property
    def memory_limit(self) -> int | None:
        """Ray's memory for tasks and actors, shared by the CPUs (one task per CPU)."""
        res = self._ray.cluster_resources()
        memory, cpus = float(res.get("memory", 0)), float(res.get("CPU", 0))
        return int(memory / cpus) if memory > 0 and cpus > 0 else None

    @property
    def n_gpus(self) -> int:
        return int(self._ray.cluster_resources().get("GPU", 0))

    @property
    def dashboard_link(self) -> str | None:
        return self._dashboard

    # -- tasks ------------------------------------------------------------------------

    def _remote(self, fn: Callable[..., Any], gpus: int, pure: bool) -> tuple[Any, bool]:
        """The cached Ray remote function for fn; True if it is the `_apply` trampoline."""
        wrapped = inspect.isfunction(fn)
        cache_key = (fn if wrapped else _apply, gpus, pure)
        remote = self._remotes.get(cache_key)
        if remote is None:
            remote = self._ray.remote(
                num_cpus=1,
                num_gpus=gpus,
                max_retries=RAY_RETRIES if pure else 0,
                retry_exceptions=pure,
            )(fn if wrapped else _apply)
            self._remotes[cache_key] = remote
        return remote, not wrapped

    def _submit(self, fn, args, kwargs, gpus, pure, key) -> Future:
        remote, trampoline = self._remote(fn, gpus, pure)
        if key is not None:
            remote = remote.options(name=key)
        args, kwargs = self._unref_args(args, kwargs)
        if trampoline:
            args = (fn, *args)
        return _RayFuture(self._ray, remote.remote(*args, **kwargs))

    def _map(self, fn, calls, kwargs, gpus, pure) -> list[Future]:
        remote, trampoline = self._remote(fn, gpus, pure)
        kwargs = {k: self._unref(v) for k, v in kwargs.items()}
        prefix = (fn,) if trampoline else ()
        unref, ray, submit = self._unref, self._ray, remote.remote
        return [_RayFuture(ray, submit(*prefix, *map(unref, args), **kwargs)) for args in calls]

    def _gather(self, futures: list[Future]) -> list[Any]:
        if not all(isinstance(f, _RayFuture) for f in futures):
            return super()._gather(futures)
        try:
            return self._ray.get([f._ref for f in futures])
        except self._ray.exceptions.RayTaskError as error:
            _raise_original(error)

    def _as_completed(self, futures: list[Future]) -> Iterator[Future]:
        if not all(isinstance(f, _RayFuture) for f in futures):
            yield from super()._as_completed(futures)
            return
        by_ref: dict[Any, list[Future]] = {}
        for f in futures:
            by_ref.setdefault(f._ref, []).append(f)
        pending = list(by_ref)
        wait = self._ray.wait
        while pending:
            ready, pending = wait(pending, num_returns=1, fetch_local=False)
            if pending:
                more, pending = wait(
                    pending, num_returns=len(pending), timeout=0, fetch_local=False
                )
                ready += more
            for ref in ready:
                yield from by_ref[ref]

    # -- data and actors --------------------------------------------------------------

    def _put(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def _actor(self, cls, args, kwargs, gpus, spread=None) -> ActorHandle:
        return self._start_actor(cls, args, kwargs, gpus, spread)()

    def _start_actor(self, cls, args, kwargs, gpus, spread=None):
        actor_class = self._actor_classes.get((cls, gpus))
        if actor_class is None:
            actor_class = self._ray.remote(num_cpus=0, num_gpus=gpus)(cls)
            self._actor_classes[(cls, gpus)] = actor_class
        args, kwargs = self._unref_args(args, kwargs)
        handle = actor_class.remote(*args, **kwargs)
        ready = getattr(handle, "__ray_ready__", None)
        started = None if ready is None else _RayFuture(self._ray, ready.remote())

        def call(name: str, margs: tuple, mkwargs: dict) -> Future:
            self._check_usable(0)
            margs, mkwargs = self._unref_args(margs, mkwargs)
            return _RayFuture(self._ray, getattr(handle, name).remote(*margs, **mkwargs))

        def finish() -> ActorHandle:
            if started is not None:  # raise constructor errors here, as other backends do
                started.result()
            return ActorHandle(cls, call)

        return finish

    # -- lifetime ---------------------------------------------------------------------

    def _close(self) -> None:
        self._remotes.clear()
        self._actor_classes.clear()
        if self._connected:
            self._ray.shutdown()
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait(timeout=10)
            self._reaper = None
