"""Store locations: normalising URLs and opening Zarr stores / fsspec file systems.

Plain paths (and ``file://`` URLs) are local and go through :class:`zarr.storage.LocalStore`;
every other URL (``memory://``, ``s3://``, ``gs://`` …) goes through
:class:`zarr.storage.FsspecStore`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import fsspec
from zarr.storage import FsspecStore, LocalStore

__all__ = ["check_root", "filesystem", "is_local", "join", "normalize_url", "open_store"]


def _protocol(url: str) -> str | None:
    return url.split("://", 1)[0].lower() if "://" in url else None


def normalize_url(url: str | os.PathLike[str]) -> str:
    """Return the canonical form of a store location.

    Parameters
    ----------
    url : str or os.PathLike
        A local path (relative, absolute, ``~``), a ``file://`` URL or any fsspec URL.

    Returns
    -------
    str
        Local locations become absolute paths without a protocol (``file:///a/b`` ->
        ``/a/b``); other URLs keep their protocol and lose trailing slashes.
    """
    text = os.fspath(url)
    proto = _protocol(text)
    if proto is None or proto in ("file", "local"):
        if proto is not None:
            text = text.split("://", 1)[1]
        return os.path.abspath(os.path.expanduser(text))
    head, rest = text.split("://", 1)
    return f"{head.lower()}://{rest.rstrip('/')}"


def is_local(url: str) -> bool:
    """True when ``url`` (normalised or not) names the local file system."""
    return _protocol(os.fspath(url)) in (None, "file", "local")


def join(url: str, *parts: str) -> str:
    """Join path components onto a (normalised) location with ``/``."""
    out = url
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        out = out + part if out.endswith("/") else f"{out}/{part}"
    return out


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = False
) -> LocalStore | FsspecStore:
    """Open a Zarr v3 store rooted at ``url``.

    Parameters
    ----------
    url : str
        Normalised location (see :func:`normalize_url`).
    storage_options : dict, optional
        Passed to fsspec for non-local URLs (credentials, endpoint …).
    read_only : bool
        Open the store read-only.

    Returns
    -------
    zarr.storage.LocalStore or zarr.storage.FsspecStore
    """
    if is_local(url):
        return LocalStore(normalize_url(url), read_only=read_only)
    return FsspecStore.from_url(url, storage_options=storage_options or None, read_only=read_only)


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)``: the fsspec file system behind ``url`` and the path on it."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _is_archive(protocol: str | None) -> bool:
    """Whether fsspec's ``protocol`` reads archives (zip, tar, ...): read-only views."""
    from fsspec.archive import AbstractArchiveFileSystem

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return False
    return issubclass(cls, AbstractArchiveFileSystem)


def check_root(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Check, leaving nothing behind, that runs can be created under ``url`` (a local
    folder is probed by creating and removing an empty folder in it).

    Raises
    ------
    ValueError
        One line naming the location and the reason: an unknown protocol, a protocol
        whose package is missing, a path through a file, a folder that is not writable
        or on a read-only file system.
    """
    if url.lower().startswith(("http://", "https://")):
        raise ValueError(
            f"{url}: an http(s) location is read-only; a store needs a path or an object "
            "store (s3://, gs://, ...)"
        )
    if not is_local(url):
        if _is_archive(_protocol(url)):
            raise ValueError(
                f"{url}: an archive ({_protocol(url)}://) is read-only; a store needs a path "
                "or an object store (s3://, gs://, ...)"
            )
        try:
            fs, path = filesystem(url, storage_options)
        except ImportError as exc:
            raise ValueError(f"{url}: the package for this protocol is missing ({exc})") from None
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}") from None
        try:  # reachable, with credentials that work (reads only)
            fs.exists(path)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:200]
            raise ValueError(
                f"{url}: cannot reach the store ({type(exc).__name__}: {msg})"
            ) from None
        return
    path = normalize_url(url)
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "a file" if os.path.isfile(probe) else "not a folder"
        where = "" if probe == path else f" ({probe} is on its path)"
        raise ValueError(f"{path}: {what}{where}; a store is a folder")
    if os.access(probe, os.W_OK | os.X_OK):
        try:  # /proc, /sys and the like pass the access test but refuse new folders
            os.rmdir(tempfile.mkdtemp(prefix=".tilegraph-probe-", dir=probe))
        except OSError as exc:
            raise ValueError(
                f"{path}: cannot create folders in {probe} ({exc.strerror})"
            ) from None
    if not os.access(probe, os.W_OK | os.X_OK):
        stat = os.statvfs(probe) if hasattr(os, "statvfs") else None
        if stat is not None and stat.f_flag & getattr(os, "ST_RDONLY", 1):
            raise ValueError(f"{path}: {probe} is on a read-only file system")
        raise ValueError(f"{path}: {probe} is not writable by this user")
