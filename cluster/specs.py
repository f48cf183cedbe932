"""Parsing of cluster spec strings such as ``"local:4"``, ``"ray"`` or ``"tcp://host:8786"``.

Nothing here imports Dask or Ray: a spec can be checked (e.g. by the CLI, before any
work starts) without starting anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["SPECS_HELP", "Spec", "SpecError", "parse_spec"]

SPECS_HELP = (
    "sync | threads[:N] | local[:N] (default) | local-cuda[:N] | tcp://HOST:PORT"
    " | tls://HOST:PORT | ray[:N] | ray:auto | ray:HOST:PORT | ray://HOST:PORT"
    " | slurm | pbs | sge | lsf"
)

#: Batch-scheduler kinds, run through dask-jobqueue (see `cluster.jobqueue`).
HPC_KINDS = ("slurm", "pbs", "sge", "lsf")

_BACKENDS = {
    "sync": "sync",
    "threads": "threads",
    "local": "dask",
    "local-cuda": "dask",
    "tcp": "dask",
    "tls": "dask",
    "ray": "ray",
    **{kind: "dask" for kind in HPC_KINDS},
}

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+)(?::(?P<port>\d{1,5}))?$")


class SpecError(ValueError):
    """A cluster spec that is not one of the allowed forms (see `SPECS_HELP`)."""


@dataclass(frozen=True)
class Spec:
    """A parsed cluster spec.

    Attributes
    ----------
    kind : str
        ``"sync"``, ``"threads"``, ``"local"``, ``"local-cuda"``, ``"tcp"``, ``"tls"``,
        ``"ray"``, or one of the batch schedulers ``"slurm"``, ``"pbs"``, ``"sge"``,
        ``"lsf"``.
    n : int or None
        Number of workers (``threads``, ``local``, ``local-cuda``, batch jobs) or of CPUs
        (a local ``ray``); ``None`` where the count is not ours to choose (an existing
        cluster) or is only known at start (``local-cuda``: one worker per GPU).
    address : str or None
        ``"tcp://host:port"``, ``"tls://host:port"``, ``"ray://host:port"`` (Ray
        Client), ``"host:port"`` (a Ray head's GCS address) or ``"auto"`` for existing
        clusters.
    """

    kind: str
    n: int | None = None
    address: str | None = None

    @property
    def backend(self) -> str:
        """``"sync"``, ``"threads"``, ``"dask"`` or ``"ray"``."""
        return _BACKENDS[self.kind]

    def __str__(self) -> str:
        if self.address is not None:
            if "://" in self.address:
                return self.address
            return f"ray:{self.address}"  # "auto" or the GCS HOST:PORT
        return self.kind if self.n is None else f"{self.kind}:{self.n}"


def _error(text: str, why: str) -> SpecError:
    return SpecError(f"invalid cluster spec {text!r}: {why}; allowed: {SPECS_HELP}")


def _count(text: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise _error(text, f"count {raw!r} is not a positive integer")
    return int(raw)


def _address(text: str, scheme: str, rest: str, default_port: int) -> str:
    match = _HOST_PORT.match(rest)
    if match is None:
        raise _error(text, f"expected {scheme}://HOST:PORT")
    port = int(match["port"]) if match["port"] else default_port
    if not 0 < port < 65536:
        raise _error(text, f"port {port} out of range")
    return f"{scheme}://{match['host']}:{port}"


def parse_spec(spec: str | Spec | None = "local") -> Spec:
    """Parse a cluster spec string.

    Parameters
    ----------
    spec : str, Spec or None
        One of the forms in `SPECS_HELP`: ``sync``, ``threads[:N]``, ``local[:N]``,
        ``local-cuda[:N]``, ``tcp://HOST:PORT`` (port defaults to 8786),
        ``tls://HOST:PORT`` (the same over TLS, see `cluster.dask_backend`), ``ray[:N]``,
        ``ray:auto``, ``ray:HOST:PORT`` (the GCS address of a running head),
        ``ray://HOST:PORT`` (Ray Client, needs ``ray[client]``; port defaults to 10001),
        ``slurm``, ``pbs``, ``sge``, ``lsf`` (the batch schedulers optionally ``:JOBS``).
        ``None`` or ``""`` mean ``local``. Case and surrounding blanks are ignored in the
        kind. A `Spec` is returned unchanged.

    Returns
    -------
    Spec
        With defaults filled in: ``local`` gets ``n = min(os.cpu_count(), 4)`` workers,
        ``threads`` and ``ray`` get ``n = os.cpu_count()``.

    Raises
    ------
    SpecError
        A one-line message naming the allowed forms.
    """
    if isinstance(spec, Spec):
        return spec
    if spec is None:
        spec = "local"
    if not isinstance(spec, str):
        raise SpecError(f"cluster spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        text = "local"
    cpus = os.cpu_count() or 1
    lowered = text.lower()
    if lowered.startswith("tcp://"):
        return Spec("tcp", address=_address(text, "tcp", text[6:], 8786))
    if lowered.startswith("tls://"):
        return Spec("tls", address=_address(text, "tls", text[6:], 8786))
    if lowered.startswith("ray://"):
        return Spec("ray", address=_address(text, "ray", text[6:], 10001))
    if "://" in lowered:
        raise _error(text, "unknown scheme")
    kind, sep, arg = lowered.partition(":")
    if kind not in _BACKENDS or kind in ("tcp", "tls"):
        raise _error(text, f"unknown kind {kind!r}")
    if sep and not arg:
        raise _error(text, "missing value after ':'")
    if kind == "sync":
        if sep:
            raise _error(text, "'sync' takes no count")
        return Spec("sync")
    if kind == "ray" and arg == "auto":
        return Spec("ray", address="auto")
    if kind == "ray" and ":" in arg:
        # the GCS address of a running Ray head (``ray start --head`` prints it)
        host_port = text.strip().partition(":")[2]
        return Spec("ray", address=_address(text, "ray", host_port, 6379)[len("ray://") :])
    if kind == "ray" and sep and not arg.isdigit():
        raise _error(text, f"{arg!r} is not a CPU count, 'auto' or a HOST:PORT address")
    n = _count(text, arg) if sep else None
    if n is None:
        if kind == "local":
            n = min(cpus, 4)
        elif kind in ("threads", "ray"):
            n = cpus
    return Spec(kind, n=n)


def check_reachable(spec: Spec, timeout: float = 3.0) -> None:
    """Fail fast when nothing listens at an existing cluster's address.

    Dask retries a refused connection until its 30 s connect timeout, and Ray keeps
    polling a GCS address that never answers for minutes; one plain TCP connection tells
    at once. Specs that start their own cluster (and ``ray:auto``) pass unchecked.

    Raises
    ------
    SpecError
        Naming the address and what happened (refused, timed out, unknown host).
    """
    import socket

    address = spec.address
    if address is None or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except TimeoutError:
        raise SpecError(
            f"{spec}: no answer from {hostport} within {timeout:g} s (is the scheduler or "
            "head running, and the port open?)"
        ) from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise SpecError(
            f"{spec}: cannot connect to {hostport} ({why}); start the scheduler or head "
            "first, or check the address"
        ) from None
