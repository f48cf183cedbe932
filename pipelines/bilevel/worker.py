"""The tasks of ``bilevel``: one sampled block's update, reading and writing only that
block's chunk of the state array.

The state array ``state/<method>`` has shape ``(m, 3, n_state)`` and chunks
``(1, 1, n_state)``: three slots per block. A task reads the block's current slot and
writes a slot that is neither the current one nor the one the newest checkpoint points
to, so a re-run task (a retry) finds its input intact and a killed run resumes from
slots nobody has overwritten.

``device`` picks where a task's kernels run: ``cpu`` (NumPy, the reference bits),
``cuda`` (CuPy on the worker's GPU; the driver asks for ``gpus=1`` per task) or
``array-api-strict`` (the same generic code path on array-api-strict arrays: the GPU
path checked on a CPU). The block state read from Zarr and the upper iterates from the
driver are moved to the device here; the batch indices stay NumPy (they were drawn on
the driver, so every device uses the same samples, and the problems index their host
data with them); the new state goes back to Zarr and the hypergradient terms back to
the driver as NumPy arrays.

Both tasks run with single-threaded BLAS
(:func:`~tilegraph.tasks.devices.deterministic_blas`): the same bits in a worker process
and in the driver.
"""

from __future__ import annotations

import numpy as np
from tilegraph.storage.chunks import read_regions, write_regions
from tilegraph.tasks.bilevel.methods import block_step, init_state, unpack
from tilegraph.tasks.devices import array_module, deterministic_blas, to_device, to_host

#: A block state entry above this is diverged.
BLOWN = 1e100

SLOTS = 3

#: Blocks whose initial states are computed, then written together, at a time.
INIT_BATCH = 16

# Opened state arrays of this process: opening one reads its metadata, which costs more
# than the block's own chunk. Keyed by everything that identifies the array's layout.
_OPEN: dict = {}


def _array(ref):
    key = (ref.store_url, ref.path, ref.shape, ref.chunks, ref.dtype)
    if key not in _OPEN:
        if len(_OPEN) > 64:
            _OPEN.clear()
        _OPEN[key] = ref.open()
    return _OPEN[key]


def _region(ref, i: int, s: int):
    return ref.check((slice(i, i + 1), slice(s, s + 1), slice(None)))


@deterministic_blas()
def init_blocks(blocks, idx, *, problem, method, steps, ref, x0, device="cpu"):
    """Write the initial state of ``blocks`` into slot 0.

    Parameters
    ----------
    problem : BlockProblem
    method : str
    steps : tasks.bilevel.methods.StepSizes
    ref : storage.ArrayRef
        The state array.
    blocks : sequence of int
    x0 : numpy.ndarray, shape (dim_x,)
    idx : numpy.ndarray, shape (len(blocks), B)
        Lower batch of each block.
    device : {"cpu", "cuda", "array-api-strict"}
        Where the estimators' initial values are computed (see the module docstring).
    """
    xp = array_module(device)
    x0 = to_device(xp, x0)
    blocks = [int(i) for i in blocks]
    for lo in range(0, len(blocks), INIT_BATCH):  # a batch's states at a time in memory
        part = range(lo, min(lo + INIT_BATCH, len(blocks)))
        flats = [
            np.asarray(to_host(init_state(problem, method, blocks[k], x0, steps, idx[k])))
            for k in part
        ]
        regions = [_region(ref, blocks[k], 0) for k in part]
        write_regions(_array(ref), regions, [f[None, None, :] for f in flats])


@deterministic_blas()
def block_tasks(blocks, *, ref, **kwargs) -> list:
    """Update the sampled blocks ``blocks`` (one task): for each ``(i, src, dst, idx_g,
    idx_f, wait)`` read block ``i``'s slot ``src`` and write its slot ``dst``.

    ``idx_g``, ``idx_f`` are the block's batches, ``wait`` the iterations since its last
    update; the keywords are the same for every block of an iteration (see
    :func:`tilegraph.tasks.bilevel.methods.block_step`; ``iteration`` names the
    iteration in a divergence error; the driver submits these tasks with
    ``pure=False``, so none is ever taken for an earlier one). ``device`` is where the
    updates run (see the module docstring); what they return and write is NumPy on every
    device.

    The blocks' chunks are read together and written together (one pass of Zarr's
    event loop each, :func:`~tilegraph.storage.chunks.read_regions`): with many sampled
    blocks per task that is most of a light block's time. Every block reads its own
    source slot and writes its own free slot, so a re-run task (a lost worker) finds its
    inputs intact; a task that fails writes nothing.

    Returns
    -------
    list of (G_new, G_old)
        Per block, in order, its hypergradient terms at ``x_t`` and ``x_{t-1}``
        (numpy.ndarray, shape (dim_x,)).
    """
    xp = array_module(kwargs.get("device", "cpu"))
    kwargs["x"], kwargs["x_prev"] = to_device(xp, kwargs["x"]), to_device(xp, kwargs["x_prev"])
    arr = _array(ref)
    flats = read_regions(arr, [_region(ref, int(b[0]), int(b[1])) for b in blocks])
    news, out = [], []
    for (i, _, _, idx_g, idx_f, wait), flat in zip(blocks, flats, strict=True):
        new, g_new, g_old = _update(int(i), flat[0, 0], idx_g, idx_f, int(wait), **kwargs)
        news.append(new[None, None, :])
        out.append((g_new, g_old))
    write_regions(arr, [_region(ref, int(b[0]), int(b[2])) for b in blocks], news)
    return out


def _update(
    i, flat, idx_g, idx_f, wait, *, problem, method, steps, x, x_prev, first, iteration,
    device="cpu",
):  # fmt: skip
    """Block ``i``'s new state from ``flat`` (its current one, NumPy; ``x``, ``x_prev``
    already on ``device``): ``(new, G_new, G_old)``, all NumPy."""
    old = np.abs(np.asarray(flat))
    small = bool(np.all(old[np.isfinite(old)] < 1e10))  # before the step's updates
    flat = to_device(array_module(device), flat)
    # idx_g, idx_f stay NumPy: the problems index their host data with them
    new, g_new, g_old = block_step(
        problem, method, i, flat, x, x_prev, idx_g, idx_f, wait, steps, first=first
    )
    new = np.asarray(to_host(new))
    # past 1e100 the squares in the norms overflow (and v's projection then returns 0):
    # such a state is diverged though still finite
    if not np.all(np.abs(new) < BLOWN):
        parts = unpack(method, problem.dim_y, new)
        bad = ", ".join(k for k, a in parts.items() if not np.all(np.abs(a) < BLOWN))
        x_max = float(np.max(np.abs(np.asarray(to_host(x)))))
        if np.isnan(new).any() and small and x_max < 1e10:
            # no step turns a state of moderate size into NaN by itself: the problem did
            # (here or in the block's first state)
            hint = (
                "NaN without growth: a method of the problem (its gradients or Hessian "
                "products) returned NaN"
            )
        else:
            hint = "lower tau / tau_v, or eta and x_max if x is large"
        raise FloatingPointError(
            f"{method}: block {i} diverged at iteration {iteration}: {bad} non-finite or "
            f"above {BLOWN:.0e} (|x| max {x_max:.3g}); {hint}"
        )
    return new, np.asarray(to_host(g_new)), np.asarray(to_host(g_old))


def free_slot(current: int, committed: int) -> int:
    """The smallest slot that is neither ``current`` nor ``committed``."""
    return min(s for s in range(SLOTS) if s not in (current, committed))


@deterministic_blas()
def evaluate_blocks(blocks, *, problem, x):
    """Each block's exact terms at ``x``: ``[(f_i(x, y_i*(x)), hypergradient term)]``,
    its lower problem solved to convergence where its data are (NumPy)."""
    from tilegraph.tasks.bilevel.hypergradient import block_hypergradient, solve_lower

    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in blocks:
        y = solve_lower(problem, int(i), x)
        hg = np.asarray(block_hypergradient(problem, int(i), x, y))
        out.append((float(problem.f(int(i), x, y)), hg))
    return out
