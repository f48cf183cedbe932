"""In-process executors: ``sync`` (inline, for debugging) and ``threads[:N]``."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .base import RETRIES, ActorHandle, Executor, Future
from .gpus import local_gpu_count
from .specs import Spec

__all__ = ["SyncExecutor", "ThreadsExecutor"]


def _call_with_retries(fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int) -> Any:
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class _DoneFuture(Future):
    """A finished task: its value or its exception."""

    __slots__ = ("_error", "_value")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        try:
            self._value = _call_with_retries(fn, args, kwargs, retries)
        except Exception as error:
            self._error = error

    def result(self, timeout: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return True


class _ThreadFuture(Future):
    __slots__ = ("_fut",)

    def __init__(self, fut: cf.Future) -> None:
        self._fut = fut

    def result(self, timeout: float | None = None) -> Any:
        return self._fut.result(timeout)

    def done(self) -> bool:
        return self._fut.done()


class _InProcess(Executor):
    @property
    def n_gpus(self) -> int:
        return local_gpu_count()

    def _put(self, obj: Any) -> Any:
        return obj


class SyncExecutor(_InProcess):
    """Runs every task inline in `submit`, in submission order; deterministic, for debugging.

    The returned futures are already finished and hold the result (or the error, raised
    from ``result()``). Pure tasks are retried like on Dask.
    """

    backend = "sync"

    @property
    def n_workers(self) -> int:
        return 1

    def _submit(self, fn, args, kwargs, gpus, pure, key) -> Future:
        args, kwargs = self._unref_args(args, kwargs)
        return _DoneFuture(fn, args, kwargs, RETRIES if pure else 0)

    def _actor(self, cls, args, kwargs, gpus, spread=None) -> ActorHandle:
        args, kwargs = self._unref_args(args, kwargs)
        instance = cls(*args, **kwargs)

        def call(name: str, margs: tuple, mkwargs: dict) -> Future:
            self._check_usable(0)
            margs, mkwargs = self._unref_args(margs, mkwargs)
            return _DoneFuture(getattr(instance, name), margs, mkwargs, 0)

        return ActorHandle(cls, call)

    def _close(self) -> None:
        pass


class ThreadsExecutor(_InProcess):
    """A `concurrent.futures.ThreadPoolExecutor` with ``spec.n`` threads.

    Each actor gets its own single thread, so its methods run one at a time in call order.
    """

    backend = "threads"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self._n = spec.n or 1
        self._pool = cf.ThreadPoolExecutor(self._n, thread_name_prefix="tilegraph")
        self._actor_pools: list[cf.ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    @property
    def n_workers(self) -> int:
        return self._n

    def _submit(self, fn, args, kwargs, gpus, pure, key) -> Future:
        args, kwargs = self._unref_args(args, kwargs)
        retries = RETRIES if pure else 0
        return _ThreadFuture(self._pool.submit(_call_with_retries, fn, args, kwargs, retries))

    def _as_completed(self, futures: list[Future]) -> Iterator[Future]:
        if not all(isinstance(f, _ThreadFuture) for f in futures):
            yield from super()._as_completed(futures)
            return
        by_inner: dict[cf.Future, list[Future]] = {}
        for f in futures:
            by_inner.setdefault(f._fut, []).append(f)
        for inner in cf.as_completed(by_inner):
            yield from by_inner[inner]

    def _actor(self, cls, args, kwargs, gpus, spread=None) -> ActorHandle:
        args, kwargs = self._unref_args(args, kwargs)
        pool = cf.ThreadPoolExecutor(1, thread_name_prefix=f"tilegraph-{cls.__name__}")
        with self._lock:
            self._actor_pools.append(pool)
        try:
            instance = pool.submit(cls, *args, **kwargs).result()
        except BaseException:
            pool.shutdown(wait=False)
            raise

        def call(name: str, margs: tuple, mkwargs: dict) -> Future:
            self._check_usable(0)
            margs, mkwargs = self._unref_args(margs, mkwargs)
            return _ThreadFuture(pool.submit(getattr(instance, name), *margs, **mkwargs))

        return ActorHandle(cls, call)

    def _close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            pools, self._actor_pools = self._actor_pools, []
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
