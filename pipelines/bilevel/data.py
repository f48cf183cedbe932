"""The user's blocks from a Zarr group: one subgroup per block holding ``X_train``,
``y_train``, ``X_val`` and ``y_val``; each process reads a block when it first needs it.

The problem object travels to the workers with the group's address and the blocks'
sizes only; the arrays are read where the block is used (a block task, or the exact
evaluation of that block), never gathered on the driver.
"""

from __future__ import annotations

import numpy as np
from tilegraph.storage.groups import read_arrays, read_members, subgroups
from tilegraph.tasks.bilevel.problems import LinearBlocks

__all__ = ["ARRAYS", "ZarrBlocks", "check_dataset"]

#: What every block's subgroup holds: name -> rank.
ARRAYS = {"X_train": 2, "y_train": 1, "X_val": 2, "y_val": 1}

#: NumPy dtype kinds the arrays may have (booleans, integers, floats): real numbers;
#: complex values, strings and objects are refused.
REAL_KINDS = "biuf"


def check_dataset(url: str, model: str) -> list[str]:
    """Check the blocks at ``url``; return their names.

    Raises
    ------
    ValueError
        One line naming the block and array: none found, an array missing or of the
        wrong rank, rows of ``X`` and ``y`` that differ, features that differ between
        arrays or blocks, values that are not real numbers (complex, strings), a NaN or
        infinity, labels other than 0/1 for ``logistic``.
        Each block is read once, one at a time.
    """
    try:
        blocks = subgroups(url)
    except Exception as exc:  # FileNotFoundError, GroupNotFoundError, …
        raise ValueError(f"cannot open a Zarr group there ({type(exc).__name__})") from None
    if not blocks:
        raise ValueError("no block subgroups (each with X_train, y_train, X_val, y_val)")
    features = None
    for name, shapes in blocks:
        for arr, rank in ARRAYS.items():
            if arr not in shapes:
                raise ValueError(f"block {name!r}: no array {arr!r}")
            if len(shapes[arr]) != rank:
                raise ValueError(f"block {name!r}: {arr} must have {rank} dimensions, has "
                                 f"shape {shapes[arr]}")  # fmt: skip
        for which in ("train", "val"):
            nx, ny = shapes[f"X_{which}"][0], shapes[f"y_{which}"][0]
            if nx != ny:
                raise ValueError(f"block {name!r}: X_{which} has {nx} rows but y_{which} has {ny}")
            if nx == 0:
                raise ValueError(f"block {name!r}: X_{which} has no rows")
        for which in ("train", "val"):
            p = shapes[f"X_{which}"][1]
            if features is None:
                features = (p, f"{name!r} X_{which}")
            elif p != features[0]:
                raise ValueError(
                    f"block {name!r}: X_{which} has {p} features but block "
                    f"{features[1]} has {features[0]}"
                )
        # as stored: a cast to float64 would drop imaginary parts or fail on strings
        stored = read_arrays(f"{url.rstrip('/')}/{name}", ARRAYS, dtype=None)
        for arr, values in zip(ARRAYS, stored, strict=True):
            if values.dtype.kind not in REAL_KINDS:
                raise ValueError(
                    f"block {name!r}: {arr} has dtype {values.dtype} (needs real numbers)"
                )
            if not np.all(np.isfinite(values)):
                raise ValueError(f"block {name!r}: {arr} holds NaN or infinite values")
            if (
                model == "logistic"
                and arr.startswith("y")
                and not np.all((values == 0) | (values == 1))
            ):
                raise ValueError(f"block {name!r}: {arr} must hold labels 0 or 1 (logistic)")
    return [name for name, _ in blocks]


class ZarrBlocks(LinearBlocks):
    """:class:`LinearBlocks` whose block ``i`` is the ``i``-th subgroup (by name) of the
    Zarr group at ``url``; read on first use in each process and kept.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the group.
    model : {"ridge", "logistic"}
    rho : float
        Upper regulariser.
    """

    name = "dataset"

    def __init__(self, url: str, model: str = "ridge", rho: float = 0.0):
        blocks = subgroups(url)
        self.url = url
        self.block_names = [name for name, _ in blocks]
        dim = blocks[0][1]["X_train"][1]
        super().__init__(
            len(blocks),
            dim,
            [s["X_train"][0] for _, s in blocks],
            [s["X_val"][0] for _, s in blocks],
            model,
            rho,
        )
        self._cache: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}  # the data stay where they were read
        return state

    def block(self, i: int):
        if i not in self._cache:
            name = self.block_names[i]
            self._cache[i] = read_members(self.url, name, ARRAYS)
        return self._cache[i]
