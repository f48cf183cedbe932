"""``summary.png`` of a domain-split run: solution, error and convergence."""

from __future__ import annotations

import numpy as np

#: Most grid points per axis the figure shows: a panel is about 400 pixels wide, and
#: drawing a 1025² image costs seconds (it was ~15% of a 2-D 1023² run).
MAX_PIXELS = 400


def _plane(ref, d: int) -> np.ndarray:
    """A 2-D view, every k-th point with k such that at most ``MAX_PIXELS`` per axis:
    the whole field in 2-D, the middle ``z`` plane in 3-D (read alone)."""
    arr = ref.open("r")
    k = max(1, -(-arr.shape[0] // MAX_PIXELS))
    if d == 2:
        return np.asarray(arr[::k, ::k])
    return np.asarray(arr[::k, ::k, arr.shape[2] // 2])


def summary_figure(store, d: int, history, title: str):
    """Build the figure; the caller saves it with ``store.save_figure``.

    Parameters
    ----------
    store : storage.RunStore
    d : int
    history : sequence of float
        Relative residual per iteration.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = _plane(store.array("result/solution"), d)
    err = _plane(store.array("result/error"), d)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    where = "" if d == 2 else " (middle z plane)"
    im = axes[0].imshow(u.T, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
    axes[0].set_title("solution u" + where)
    fig.colorbar(im, ax=axes[0])
    lim = float(np.abs(err).max()) or 1.0
    im = axes[1].imshow(
        err.T, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r", vmin=-lim, vmax=lim
    )
    axes[1].set_title("error u - u_exact" + where)
    fig.colorbar(im, ax=axes[1])
    for ax in axes[:2]:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    axes[2].semilogy(np.arange(len(history)), history, "o-", ms=3)
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("relative residual")
    axes[2].set_title("convergence")
    axes[2].grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    return fig
