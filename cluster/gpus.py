"""Counting the GPUs of this machine, for the in-process executors."""

from __future__ import annotations

import functools

__all__ = ["local_gpu_count"]


@functools.cache
def local_gpu_count() -> int:
    """Return the number of CUDA devices CuPy sees here (0 without CuPy or CUDA).

    Returns
    -------
    int
        Cached after the first call; honours ``CUDA_VISIBLE_DEVICES``.
    """
    try:
        import cupy  # optional: imported only when GPUs are asked about

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # ImportError, or a CUDA runtime error without a driver/device
        return 0
