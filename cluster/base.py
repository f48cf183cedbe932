"""The abstract executor interface: `Executor`, `Future`, `ActorHandle` and `Ref`.

Backends (`cluster.inprocess`, `cluster.dask_backend`, `cluster.ray_backend`) subclass
`Executor` and `Future`; pipelines only ever see the classes defined here.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .specs import Spec

__all__ = ["ActorHandle", "Executor", "Future", "Ref", "ResourceError"]

#: How many times a failed pure task is re-run before its error is raised (Dask and the
#: in-process backends; Ray uses ``max_retries=RAY_RETRIES``, see `cluster.ray_backend`).
RETRIES = 2


class ResourceError(RuntimeError):
    """A task or actor asked for resources (GPUs) the executor does not have."""


class Future(abc.ABC):
    """The eventual result of a task or of an actor method call."""

    __slots__ = ()

    @abc.abstractmethod
    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task and return its result.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; ``None`` waits forever.

        Returns
        -------
        object
            What the task returned.

        Raises
        ------
        TimeoutError
            The task did not finish within `timeout` seconds.
        Exception
            Whatever the task raised, with its original type where the backend allows.
        """

    @abc.abstractmethod
    def done(self) -> bool:
        """Return True once the task has finished (successfully or not)."""

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<{type(self).__name__} {state}>"


class Ref:
    """Read-only data stored once by `Executor.put`.

    Pass it as a top-level positional or keyword argument to `Executor.submit`,
    `Executor.map` (as an element of an iterable or as a keyword), `Executor.actor` or an
    actor method: the worker receives the original object. A `Ref` nested inside another
    argument (a list, a dict) is not resolved, and a `Ref` cannot be pickled.
    """

    __slots__ = ("_owner", "_payload", "_type")

    def __init__(self, payload: Any, owner: object, type_name: str) -> None:
        self._payload = payload
        self._owner = owner
        self._type = type_name

    def __repr__(self) -> str:
        return f"<cluster.Ref to {self._type}>"

    def __reduce__(self):
        raise TypeError(
            "a cluster.Ref can only be passed as a top-level argument of submit, map, actor "
            "or an actor method, not inside another object"
        )


class ActorHandle:
    """A stateful object living on one worker; ``handle.method(*args)`` returns a `Future`.

    Calls on one handle run one at a time on the worker, in the order they were made
    (``sync``, ``threads`` and Ray guarantee the order; on Dask the calls made from one
    thread arrive in order in practice, so wait for a result where order matters).
    """

    __slots__ = ("_call", "_cls")

    def __init__(self, cls: type, call: Callable[[str, tuple, dict], Future]) -> None:
        self._cls = cls
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., Future]:
        if name.startswith("_") or not callable(getattr(self._cls, name, None)):
            raise AttributeError(f"{self._cls.__name__} actor has no method {name!r}")

        def method(*args: Any, **kwargs: Any) -> Future:
            return self._call(name, args, kwargs)

        method.__name__ = name
        return method

    def __repr__(self) -> str:
        return f"<cluster.ActorHandle of {self._cls.__name__}>"


class Executor(abc.ABC):
    """Where tasks run: one interface over in-process, Dask and Ray backends.

    Obtain one with `cluster.connect`; use it as a context manager or call `close`.
    """

    #: ``"sync"``, ``"threads"``, ``"dask"`` or ``"ray"``.
    backend: str = ""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._closed = False
        self._code: tuple[str, ...] = ()

    # -- description ----------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The normalised spec string, e.g. ``"local:2"``."""
        return str(self._spec)

    @property
    @abc.abstractmethod
    def n_workers(self) -> int:
        """Number of workers (processes, threads or Ray CPUs) tasks run on."""

    @property
    def n_gpus(self) -> int:
        """Number of GPUs tasks may request with ``gpus=``."""
        return 0

    def worker_ids(self) -> frozenset[str]:
        """Identities of the worker processes now (a restarted worker gets a new one);
        empty where the backend cannot tell."""
        return frozenset()

    def retired_ids(self) -> frozenset[str]:
        """Identities (as `worker_ids`) of the workers the backend retired on purpose
        since it started: batch jobs renewed ahead of their walltime. They left, but
        were not lost."""
        return frozenset()

    @property
    def memory_limit(self) -> int | None:
        """Bytes one worker process may use (the smallest limit of any worker), or None
        when the backend sets none."""
        return None

    @property
    def dashboard_link(self) -> str | None:
        """URL of the backend's dashboard, or None."""
        return None

    @property
    def closed(self) -> bool:
        """True once `close` has been called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.n_workers} workers"
        return f"<{type(self).__name__} {self.spec!r} ({state})>"

    # -- tasks ----------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        gpus: int = 0,
        pure: bool = True,
        key: str | None = None,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` as a task.

        Parameters
        ----------
        fn : callable
            Must be importable (or picklable) on the workers.
        *args, **kwargs
            Arguments; a `Ref` from `put` given directly as one of them is replaced by its
            object on the worker. ``gpus``, ``pure`` and ``key`` cannot be used as keyword
            names of `fn`.
        gpus : int
            GPUs the task needs; raises `ResourceError` at once if the executor has fewer.
        pure : bool
            The task is a pure function of its arguments: Dask may share the result of
            identical submissions, and a failed task is retried (`RETRIES` times; Ray
            ``max_retries=3``). ``pure=False`` runs it exactly once, without retries.
        key : str, optional
            Name of the task (the Dask key, the Ray task name); ignored in process.

        Returns
        -------
        Future
        """
        self._check_usable(gpus)
        return self._submit(fn, args, kwargs, gpus=gpus, pure=pure, key=key)

    def map(
        self,
        fn: Callable[..., Any],
        /,
        *iterables: Iterable[Any],
        gpus: int = 0,
        pure: bool = True,
        **kwargs: Any,
    ) -> list[Future]:
        """Submit ``fn(*items, **kwargs)`` for the items of the zipped iterables.

        Like the builtin `map` (stops at the shortest iterable) but eager: all tasks are
        submitted before it returns. `kwargs` are passed unchanged to every call (a `Ref`
        among them is resolved); `gpus` and `pure` as in `submit`.

        Returns
        -------
        list of Future
            One per call, in the order of the iterables.
        """
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        self._check_usable(gpus)
        calls = list(zip(*iterables, strict=False))
        if not calls:
            return []
        return self._map(fn, calls, kwargs, gpus=gpus, pure=pure)

    def gather(self, futures: Future | Iterable[Future]) -> Any:
        """Wait for futures and return their results in submission order.

        Parameters
        ----------
        futures : Future or iterable of Future
            A single future gives its result; an iterable gives a list.

        Returns
        -------
        object or list
            Results in the order of `futures` (never in completion order).

        Raises
        ------
        Exception
            The error of a failed task (the first failed one in `futures` on in-process
            and Ray backends, the first one noticed on Dask).
        """
        if isinstance(futures, Future):
            return futures.result()
        return self._gather(list(futures))

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        """Yield the given futures as they finish (completion order).

        Parameters
        ----------
        futures : iterable of Future

        Yields
        ------
        Future
            Each future once, finished (call ``.result()`` to get its value or error).
        """
        return self._as_completed(list(futures))

    # -- data and actors --------------------------------------------------------------

    def put(self, obj: Any) -> Ref:
        """Store large read-only data with the workers once (a copy on every worker on
        Dask, so it costs that many times its size in memory; once per node in Ray's
        object store).

        Parameters
        ----------
        obj : object
            E.g. a NumPy array; it must not be modified afterwards.

        Returns
        -------
        Ref
            Pass it as a top-level argument to `submit`, `map` or an actor method.
        """
        self._check_usable(0)
        return Ref(self._put(obj), self, type(obj).__name__)

    def actor(
        self, cls: type, /, *args: Any, gpus: int = 0, spread: int | None = None, **kwargs: Any
    ) -> ActorHandle:
        """Create ``cls(*args, **kwargs)`` on one worker and return a handle to it.

        Parameters
        ----------
        cls : type
            Importable (or picklable) on the workers.
        *args, **kwargs
            Constructor arguments; `Ref` arguments are resolved.
        gpus : int
            GPUs the actor holds for its lifetime (e.g. one model replica per GPU).
        spread : int, optional
            Placement hint: actors created with ``spread=0, 1, ...`` go to different
            workers (worker ``spread % n_workers`` where the backend lets us choose, as
            Dask does; Ray spreads actors over processes by itself).

        Returns
        -------
        ActorHandle
            ``handle.method(*args, **kwargs)`` runs the method on the worker and returns a
            `Future`. Errors in the constructor are raised here.
        """
        self._check_usable(gpus)
        return self._actor(cls, args, kwargs, gpus=gpus, spread=spread)

    def actors(self, cls: type, calls, /, *, gpus: int = 0, first: int = 0) -> list[ActorHandle]:
        """Create one actor per constructor call, constructed concurrently where the
        backend can (on Dask and Ray each worker imports and builds its own at once).

        Parameters
        ----------
        cls : type
        calls : sequence of (tuple, dict)
            ``(args, kwargs)`` of each actor's constructor; actor ``i`` is placed as
            `actor` places ``spread=first + i``.
        gpus : int
            GPUs each actor holds.
        first : int
            Placement offset: a second group of actors that should not land on the
            workers of a first group of ``n`` starts at ``first=n``.

        Returns
        -------
        list of ActorHandle
            In the order of ``calls``. A constructor error is raised here.
        """
        self._check_usable(gpus)
        pending = [
            self._start_actor(cls, tuple(a), dict(k), gpus, spread=first + i)
            for i, (a, k) in enumerate(calls)
        ]
        return [finish() for finish in pending]

    def _start_actor(self, cls, args, kwargs, gpus, spread) -> Callable[[], ActorHandle]:
        """Start constructing an actor; return what waits for its handle (by default the
        actor is built before this returns)."""
        handle = self._actor(cls, args, kwargs, gpus=gpus, spread=spread)
        return lambda: handle

    # -- performance report -------------------------------------------------------------

    @contextlib.contextmanager
    def report(self, path: str) -> Iterator[None]:
        """Record a performance report of the work done inside the block into ``path``.

        Dask writes its own performance report (HTML: task stream, worker profiles,
        bandwidth; needs ``bokeh``), Ray its timeline (Chrome trace JSON, for
        ``chrome://tracing`` or Perfetto).

        Raises
        ------
        ValueError
            In-process backends (nothing to report), or bokeh missing for Dask.
        """
        self.check_report()
        yield  # pragma: no cover

    def check_report(self) -> None:
        """Raise ``ValueError`` (one line) if `report` cannot work here."""
        raise ValueError(
            f"a performance report needs a Dask or Ray cluster; {self.spec!r} runs tasks "
            "in this process"
        )

    # -- the user's code ----------------------------------------------------------------

    @property
    def code(self) -> tuple[str, ...]:
        """Absolute paths of the user modules shipped to the workers (`add_code`)."""
        return self._code

    def add_code(self, paths: Iterable[str]) -> None:
        """Make user modules importable on every worker, present and future.

        Parameters
        ----------
        paths : iterable of str
            ``.py`` files or package folders (``import <stem>`` / ``import <folder>``
            works on the workers afterwards). Each is shipped with the backend's own
            mechanism (see `cluster.code`); shipping the same path again does nothing.

        Raises
        ------
        ValueError
            A path that is not a module, or too large to ship.
        RuntimeError
            A backend that takes code only when it connects (Ray) was given new code
            afterwards: pass ``code=`` to `cluster.connect`.
        """
        from .code import check_code_paths

        self._check_usable(0)
        new = [p for p in check_code_paths(paths) if p not in self._code]
        if new:
            self._add_code(new)
            self._code = (*self._code, *new)

    def _add_code(self, paths: list[str]) -> None:
        from .code import add_to_sys_path

        add_to_sys_path(paths)

    # -- lifetime ---------------------------------------------------------------------

    def wait_for_workers(self, timeout: float | None = None) -> bool:
        """Wait until the cluster has a worker again (after all of them left); False
        when none joined within ``timeout`` seconds. Backends that start or restart
        their own workers have one at once."""
        return True

    def close(self) -> None:
        """Release workers and connections; idempotent.

        Clusters this executor started (a ``local`` Dask cluster, a local Ray) are shut
        down with their processes; existing clusters (``tcp://``, ``ray://``,
        ``ray:auto``) are only disconnected from.
        """
        if self._closed:
            return
        self._closed = True
        self._close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers for backends ---------------------------------------------------------

    def _check_usable(self, gpus: int) -> None:
        if self._closed:
            raise RuntimeError(f"executor {self.spec!r} is closed")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
            raise ValueError(f"gpus must be a non-negative int, got {gpus!r}")
        if gpus:
            available = self.n_gpus
            if gpus > available:
                what = "no GPU available" if available == 0 else f"only {available} GPUs"
                raise ResourceError(
                    f"asked for gpus={gpus} but {what} on executor {self.spec!r}"
                    " (use a GPU cluster such as 'local-cuda' or 'ray' on a GPU node)"
                )

    def _unref(self, value: Any) -> Any:
        if isinstance(value, Ref):
            if value._owner is not self:
                raise ValueError(f"{value!r} was made by another executor")
            return value._payload
        return value

    def _unref_args(self, args: Iterable[Any], kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        return (
            tuple(self._unref(a) for a in args),
            {k: self._unref(v) for k, v in kwargs.items()},
        )

    def _map(
        self, fn: Callable[..., Any], calls: list[tuple], kwargs: dict, gpus: int, pure: bool
    ) -> list[Future]:
        return [self._submit(fn, args, kwargs, gpus=gpus, pure=pure, key=None) for args in calls]

    def _gather(self, futures: list[Future]) -> list[Any]:
        return [f.result() for f in futures]

    def _as_completed(self, futures: list[Future]) -> Iterator[Future]:
        pending = list(futures)
        delay = 0.001
        while pending:
            still = []
            for f in pending:
                if f.done():
                    yield f
                else:
                    still.append(f)
            if len(still) == len(pending):
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                delay = 0.001
            pending = still

    @abc.abstractmethod
    def _submit(
        self,
        fn: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        gpus: int,
        pure: bool,
        key: str | None,
    ) -> Future: ...

    @abc.abstractmethod
    def _put(self, obj: Any) -> Any: ...

    @abc.abstractmethod
    def _actor(
        self, cls: type, args: tuple, kwargs: dict, gpus: int, spread: int | None = None
    ) -> ActorHandle: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
