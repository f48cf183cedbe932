"""Telling a lost worker apart from a failure of the work itself.

A worker process that dies (killed, out of memory, its node gone) takes its actors and
running tasks with it. Dask and Ray report that with their own exception types; a
pipeline that keeps checkpoints can then continue from the last one on the workers that
are left (or that the nanny / raylet restarted). Any other exception is a real failure
and retrying would only repeat it.
"""

from __future__ import annotations


class DataLost(OSError):
    """Data put on the workers (`Executor.put`) left with the last workers holding it;
    the tasks reading it were cancelled."""


#: Exception class names (anywhere in the MRO) that mean "a worker was lost".
_LOST_TYPES = frozenset(
    {
        "DataLost",
        # distributed
        "KilledWorker",
        "CommClosedError",
        "StreamClosedError",
        # ray
        "RayActorError",
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "LocalRayletDiedError",
    }
)

#: Messages Dask uses for actor calls whose worker is gone (plain OSError / RuntimeError),
#: and for tasks cancelled because a worker took their only copy of an input with it
#: (``FutureCancelledError`` also means a deliberate cancel, so only these reasons
#: count): "lost dependencies", or "already forgotten" when the input was data put on
#: the workers (it cannot be computed again) and the last worker holding it retired
#: with no other to hand it to (a batch job's lifetime, ``renew``).
_LOST_MESSAGES = (
    "Unable to contact Actor's worker",
    "Worker holding Actor was lost",
    "cancelled for reason: lost dependencies",
    "cancelled for reason: already forgotten",
)


#: Ray reports an actor whose constructor raised as a dead actor: the work failed (the
#: user's module did not import on the worker, say); retrying would only repeat it.
_NOT_LOST_MESSAGES = ("error raised in its creation task",)


def is_worker_lost(exc: BaseException) -> bool:
    """True if ``exc`` (or one it was raised ``from``) says a worker was lost.

    Parameters
    ----------
    exc : BaseException
        What a future's ``result()`` (or a pipeline's ``run``) raised.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(m in str(exc) for m in _NOT_LOST_MESSAGES):
            return False
        if any(cls.__name__ in _LOST_TYPES for cls in type(exc).__mro__):
            return True
        text = str(exc)
        if any(m in text for m in _LOST_MESSAGES):
            return True
        # only explicit chaining (raise … from lost): an unrelated error raised while
        # handling a lost worker is a real failure
        exc = exc.__cause__
    return False


__all__ = ["DataLost", "is_worker_lost"]
