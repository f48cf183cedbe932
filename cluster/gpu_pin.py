"""Pinning each Dask worker of a batch job to one GPU of its node.

A job with ``gpus: N`` in its profile starts N workers (``dask worker --nworkers N``);
without this each of them would see every GPU of the job and use the first. Given to
the workers as ``--preload-nanny tilegraph.cluster.gpu_pin``, :func:`dask_setup` runs
in each worker's nanny before it starts the worker process, and sets that process's
``CUDA_VISIBLE_DEVICES`` to the one GPU at the worker's place in the job: the job's
own ``CUDA_VISIBLE_DEVICES`` where the scheduler set one (Slurm does for ``--gres``),
else ``0 … N-1``.
"""

from __future__ import annotations

import os
from typing import Any

#: The job's GPU count, exported by its job script.
GPUS_ENV = "TILEGRAPH_GPUS_PER_JOB"

__all__ = ["GPUS_ENV", "device_for", "dask_setup"]


def device_for(name: Any, visible: str | None, gpus: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of the worker called ``name`` in a job of ``gpus``.

    Parameters
    ----------
    name : str or int
        The worker's name: ``dask worker --nworkers N --name X`` names them ``X-0`` …
        ``X-{N-1}``; with one worker per job, the name has no index (GPU 0 of the job).
    visible : str or None
        The job's ``CUDA_VISIBLE_DEVICES`` (comma-separated GPU ids or UUIDs), if set.
    gpus : int
        GPUs per job (one worker each).
    """
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    if devices and len(devices) < gpus:
        raise RuntimeError(
            f"this job has {len(devices)} GPU(s) (CUDA_VISIBLE_DEVICES={visible}) for "
            f"gpus={gpus} workers; ask the queue for {gpus} (e.g. --gres=gpu:{gpus})"
        )
    devices = devices or [str(i) for i in range(gpus)]
    index = 0
    if gpus > 1:
        tail = str(name).rsplit("-", 1)[-1]
        if not tail.isdigit():
            raise ValueError(f"worker name {name!r} has no index in its job (X-0, X-1, ...)")
        index = int(tail)
    return devices[index]


def dask_setup(nanny: Any) -> None:
    """Distributed's preload hook, in a worker's nanny before the worker starts."""
    gpus = int(os.environ.get(GPUS_ENV, "1"))
    nanny.env["CUDA_VISIBLE_DEVICES"] = device_for(
        nanny.name, os.environ.get("CUDA_VISIBLE_DEVICES"), gpus
    )
