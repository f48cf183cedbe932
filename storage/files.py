"""Small files behind a local path or an fsspec URL: reading them in place, and a local
copy of a directory for libraries that only open local paths (diffusers'
``from_pretrained``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["local_copy", "read_text"]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(str(url))


def read_text(url: str, name: str) -> str:
    """The text of ``<url>/<name>``.

    Raises
    ------
    FileNotFoundError
        Naming ``<url>/<name>``.
    """
    fs, root = _fs(url)
    path = f"{root.rstrip('/')}/{name}"
    if not fs.isfile(path):
        raise FileNotFoundError(f"{url}/{name} not found")
    return fs.cat_file(path).decode()


def local_copy(url: str) -> str:
    """``url`` itself if it is a local path, else a copy of the directory in this
    machine's temporary folder (``tilegraph-files/<hash>``), made once per machine and
    URL (a finished copy has a ``.complete`` marker; concurrent copies race safely)."""
    fs, root = _fs(url)
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols:
        return root
    key = hashlib.sha1(str(url).encode()).hexdigest()[:16]
    dest = Path(tempfile.gettempdir()) / "tilegraph-files" / key
    if not (dest / ".complete").exists():
        part = dest.with_name(f"{key}.{os.getpid()}.part")
        shutil.rmtree(part, ignore_errors=True)
        fs.get(root.rstrip("/") + "/", str(part), recursive=True)
        try:
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(part, dest)
        except OSError:  # another process finished its copy first: keep that one
            shutil.rmtree(part, ignore_errors=True)
            if not (dest / ".complete").exists():
                raise
        else:
            (dest / ".complete").touch()
    return str(dest)
