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
    n_lower, n_upper : int
        Sample counts the batch indices range over (with replacement).
    """
    rng = np.random.default_rng([seed, t])
    blocks = np.sort(rng.choice(m, size=n_blocks, replace=False))
    idx_g = rng.integers(0, n_lower, size=(n_blocks, batch))
    idx_f = rng.integers(0, n_upper, size=(n_blocks, batch))
    return Draw(blocks, idx_g, idx_f)


def init_batches(seed: int, m: int, batch: int, n_lower: int) -> np.ndarray:
    """Lower batches for the estimators' initial values, shape (m, B)."""
    rng = np.random.default_rng([seed, 2**31])
    return rng.integers(0, n_lower, size=(m, batch))
