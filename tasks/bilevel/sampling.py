"""Seeded sampling of blocks and batches, so a run does not depend on where it ran."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Draw(NamedTuple):
    """What iteration ``t`` samples.

    Attributes
    ----------
    blocks : numpy.ndarray, shape (I,)
        Distinct blocks, ascending (the order the driver reduces in).
    idx_g : numpy.ndarray, shape (I, B)
        Lower-level sample indices of each sampled block.
    idx_f : numpy.ndarray, shape (I, B)
        Upper-level sample indices of each sampled block.
    """

    blocks: np.ndarray
    idx_g: np.ndarray
    idx_f: np.ndarray


def draw(seed: int, t: int, m: int, n_blocks: int, batch: int, n_lower: int, n_upper: int) -> Draw:
    """The sample of iteration ``t``: a generator seeded by ``(seed, t)`` alone.

    Parameters
    ----------
    seed : int
        The run's seed.
    t : int
        Iteration.
    m, n_blocks, batch : int
        Blocks, sampled blocks ``I`` and batch size ``B``.
    n_lower, n_upper : int or numpy.ndarray of shape (m,)
        Sample counts the batch indices range over (with replacement); arrays when the
        blocks differ in size.
    """
    rng = np.random.default_rng([seed, t])
    blocks = np.sort(rng.choice(m, size=n_blocks, replace=False))
    idx_g = _indices(rng, n_lower, blocks, batch)
    idx_f = _indices(rng, n_upper, blocks, batch)
    return Draw(blocks, idx_g, idx_f)


def _indices(rng, n, blocks, batch: int) -> np.ndarray:
    """Uniform sample indices, shape ``(len(blocks), batch)``: below ``n`` or, with one
    count per block, below each sampled block's own."""
    if np.ndim(n) == 0:
        return rng.integers(0, n, size=(len(blocks), batch))
    sizes = np.asarray(n, dtype=np.int64)[blocks][:, None]
    return np.minimum((rng.random((len(blocks), batch)) * sizes).astype(np.int64), sizes - 1)


def init_batches(seed: int, m: int, batch: int, n_lower: int) -> np.ndarray:
    """Lower batches for the estimators' initial values, shape (m, B)."""
    rng = np.random.default_rng([seed, 2**31])
    return _indices(rng, n_lower, np.arange(m), batch)
