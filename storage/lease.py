"""One live owner per run or sweep: a lease file in the store, created atomically,
kept fresh by a heartbeat, taken over only when stale.

Two ``--resume`` of one run, or two identical sweeps, started together would otherwise
both write the same arrays and records. The owner creates ``.lease.json`` in the run's
(or sweep's) folder with an exclusive create, rewrites its heartbeat every ``interval``
seconds from a background thread, and removes it when done. Another process finds the
lease held and stops with :class:`LeaseHeld` naming the owner, unless the lease is stale:
its heartbeat older than ``ttl`` seconds, or its owner's process gone from this host (a
killed driver). A stale lease is taken over by renaming it away first; a contender whose
rename moved a fresh lease (another contender's, created meanwhile) puts it back.

On local file systems the lease is written to a file of its own and then hard-linked into
place, so it never exists half-written (a lease file that cannot be read, as an older
version could leave, is judged by its age). Object stores without conditional writes get
a best-effort lease (write, then read back the token). An owner whose lease was taken
over (it looked dead: stopped, or its clock far off) learns it at its next heartbeat
(``Lease.lost``); the run store then refuses its status and checkpoint writes
(:class:`LeaseLost`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from .urls import filesystem, is_local, join, normalize_url

__all__ = ["LEASE_FILE", "Lease", "LeaseHeld", "LeaseLost"]

#: The lease's file name inside a run or sweep folder.
LEASE_FILE = ".lease.json"

#: What ``os.link`` raises where a file system has no hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


class LeaseHeld(RuntimeError):
    """Another live process owns the run or sweep.

    Attributes
    ----------
    owner : dict
        The lease as its owner wrote it (``pid``, ``host``, ``heartbeat`` …).
    """

    def __init__(self, what: str, owner: dict[str, Any]) -> None:
        self.owner = owner
        age = max(time.time() - float(owner.get("heartbeat", 0.0)), 0.0)
        if owner.get("unreadable"):
            super().__init__(
                f"{what} has a lease file that cannot be read, written {age:.0f} s ago "
                "(taken over once it is older than the lease's ttl)"
            )
            return
        super().__init__(
            f"{what} is already running (pid {owner.get('pid')}, host {owner.get('host')}, "
            f"heartbeat {age:.0f} s ago)"
        )


class LeaseLost(RuntimeError):
    """This process's lease was taken over by another (it looked dead to it): it must
    not write the run's status or checkpoints any more."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class Lease:
    """The lease of the run or sweep folder at ``url``.

    Parameters
    ----------
    url : str
        The run's or sweep's folder (a local path or fsspec URL).
    what : str
        How errors name it (``"run 2026…"``).
    storage_options : dict, optional
        fsspec options for non-local URLs.
    ttl : float
        Seconds without a heartbeat after which the lease is stale.
    interval : float
        Seconds between heartbeats.
    """

    def __init__(
        self,
        url: str,
        what: str,
        storage_options: dict[str, Any] | None = None,
        *,
        ttl: float = 30.0,
        interval: float = 5.0,
    ) -> None:
        self._url = normalize_url(url)
        self._what = what
        self._options = dict(storage_options or {})
        self.ttl = float(ttl)
        self.interval = float(interval)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False
        self.lost = False
        self._unreadable_since: float | None = None  # where a store has no mtimes

    # -- the file ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        return join(self._url, LEASE_FILE)

    def _record(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "heartbeat": time.time(),
                "argv": [a[:200] for a in sys.argv[:12]],
            }
        ).encode()

    def read(self, path: str | None = None) -> dict[str, Any] | None:
        """The current lease (or the lease file at ``path``), or None when there is none
        (or it is unreadable)."""
        path = path or self.path
        try:
            if is_local(self._url):
                with open(path, "rb") as fh:
                    data = fh.read()
            else:
                fs, fpath = filesystem(path, self._options)
                data = fs.cat_file(fpath)
            record = json.loads(data)
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _unreadable(self) -> dict[str, Any] | None:
        """A lease file that is there but cannot be read, as a record whose heartbeat is
        the file's modification time (None when there is no file)."""
        try:
            if is_local(self._url):
                written = os.stat(self.path).st_mtime
            else:
                fs, path = filesystem(self.path, self._options)
                if not fs.exists(path):
                    return None
                try:
                    when = fs.modified(path)
                    if when.tzinfo is None:  # fsspec's convention is UTC
                        when = when.replace(tzinfo=datetime.UTC)
                    written = when.timestamp()
                except Exception:  # no modification times here: age from first sight
                    if self._unreadable_since is None:
                        self._unreadable_since = time.time()
                    written = self._unreadable_since
        except FileNotFoundError:
            return None
        # a lease linked into place meanwhile is readable now
        return self.read() or {"heartbeat": written, "unreadable": True}

    def _create(self) -> bool:
        """Create the lease exclusively; False when one exists."""
        if is_local(self._url):
            os.makedirs(self._url, exist_ok=True)
            tmp = f"{self.path}.{self.token}.new"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(self._record())
                try:
                    # an exclusive create of a file that already has its content
                    os.link(tmp, self.path)
                except FileExistsError:
                    return False
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    try:  # this mount has no hard links: create exclusively, then write
                        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileExistsError:
                        return False
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(self._record())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True
        fs, path = filesystem(self.path, self._options)
        if fs.exists(path):
            return False
        fs.pipe_file(path, self._record())
        owner = self.read()  # best effort: the last writer wins, and only it goes on
        return owner is not None and owner.get("token") == self.token

    def _stale(self, owner: dict[str, Any]) -> bool:
        age = time.time() - float(owner.get("heartbeat", 0.0))
        if age > self.ttl:
            return True
        pid = owner.get("pid")
        return (
            owner.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and pid != os.getpid()
            and not _pid_alive(pid)
        )

    def abandoned(self) -> bool:
        """Whether a lease is there whose owner is gone (a killed process: its heartbeat
        older than ``ttl``, or its pid dead on this host). No lease, or one that cannot
        be read and is younger than ``ttl``: False."""
        try:
            owner = self.read() or self._unreadable()
        except Exception:  # a folder in its place, no permission, a flaky object store
            return False
        return owner is not None and self._stale(owner)

    def _remove_stale(self, owner: dict[str, Any]) -> None:
        """Move a stale lease away; of several contenders only one succeeds."""
        if is_local(self._url):
            aside = f"{self.path}.stale-{self.token}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            moved = self.read(aside)
            if moved is not None and moved.get("token") != owner.get("token"):
                # another contender took the stale lease over first: this is its fresh
                # one; put it back (if a third has meanwhile created one, that one stays
                # and the second learns at its heartbeat that it lost it)
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)
            os.unlink(aside)
            return
        fs, path = filesystem(self.path, self._options)
        current = self.read()
        if (current is None and owner.get("unreadable")) or (
            current is not None and current.get("token") == owner.get("token")
        ):
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

    # -- owning it --------------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> Lease:
        """Own the lease, starting the heartbeat.

        Parameters
        ----------
        wait : float
            Seconds to keep trying while another owner holds it (0: fail at once).

        Raises
        ------
        LeaseHeld
            Naming the owner, when it is held and not stale.
        """
        deadline = time.monotonic() + wait
        while True:
            if self._create():
                break
            owner = self.read() or self._unreadable()
            if owner is None:
                continue  # released meanwhile
            if self._stale(owner):
                self._remove_stale(owner)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(self._what, owner)
            time.sleep(min(1.0, self.interval))
        self._held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="tilegraph-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            owner = self.read()
            if owner is None or owner.get("token") != self.token:
                self.lost = True  # taken over (we looked dead): stop claiming it
                return
            try:
                self._write()
            except OSError:
                pass  # a missed beat; the next one may succeed

    def _write(self) -> None:
        if is_local(self._url):
            tmp = f"{self.path}.{self.token}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(self._record())
            os.replace(tmp, self.path)
        else:
            fs, path = filesystem(self.path, self._options)
            fs.pipe_file(path, self._record())

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours; idempotent."""
        if not self._held:
            return
        self._held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
        owner = self.read()
        if owner is not None and owner.get("token") == self.token:
            try:
                if is_local(self._url):
                    os.unlink(self.path)
                else:
                    fs, path = filesystem(self.path, self._options)
                    fs.rm_file(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        if not self._held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
