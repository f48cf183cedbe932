"""Reading a user's Zarr group of subgroups (one per block, task or client): what it
holds, and one array at a time. For pipelines that take the user's data, so that Zarr
stays behind ``storage``."""

from __future__ import annotations

import numpy as np

from .urls import normalize_url

__all__ = ["array_shapes", "read_arrays", "read_members", "subgroups"]


def _open(url: str):
    import zarr

    return zarr.open_group(normalize_url(url), mode="r")


def subgroups(url: str) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """``[(name, {array name: shape})]`` of the subgroups of the group at ``url``, sorted
    by name (metadata only; arrays at the top level are not listed).

    Raises
    ------
    FileNotFoundError and others of zarr/fsspec
        When there is no group there.
    """
    out = []
    for name, member in sorted(_open(url).members(), key=lambda kv: kv[0]):
        if not hasattr(member, "members"):
            continue
        shapes = {k: tuple(a.shape) for k, a in member.members() if hasattr(a, "shape")}
        out.append((name, shapes))
    return out


def read_members(url: str, group: str, names) -> tuple[np.ndarray, ...]:
    """The whole arrays ``<group>/<name>`` for each of ``names`` (group opened once), as
    float64."""
    g = _open(url)[group]
    return tuple(np.ascontiguousarray(g[n][...], dtype=np.float64) for n in names)


def array_shapes(url: str) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the arrays at the top level of the group at ``url``."""
    return {k: tuple(a.shape) for k, a in _open(url).members() if not hasattr(a, "members")}


def read_arrays(url: str, names, dtype=np.float32) -> tuple[np.ndarray, ...]:
    """The whole top-level arrays ``names`` of the group at ``url`` (opened once)."""
    g = _open(url)
    return tuple(np.ascontiguousarray(g[n][...], dtype=dtype) for n in names)
