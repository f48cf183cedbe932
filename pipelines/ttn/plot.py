"""``summary.png`` of a ttn run: drifts, ranks, magnetisation and the error vs time."""

from __future__ import annotations

import numpy as np


def summary_figure(hist, title: str, convergence=None):
    """Four panels from the ``history`` dataset (and the convergence study, if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    t = np.asarray(hist["time"])
    tiny = 1e-17
    ax[0, 0].semilogy(t, np.abs(hist["norm"] - hist["norm"][0]) + tiny, label="|norm - norm0|")
    ax[0, 0].semilogy(
        t, np.abs(hist["energy"] - hist["energy"][0]) + tiny, label="|energy - energy0|"
    )
    ax[0, 0].set_xlabel("time")
    ax[0, 0].set_title("conservation")
    ax[0, 0].legend()
    ax[0, 1].plot(t, hist["max_rank"], label="max rank")
    ax[0, 1].plot(t, hist["mean_rank"], label="mean rank")
    ax[0, 1].set_xlabel("time")
    ax[0, 1].set_title("ranks")
    ax[0, 1].legend()
    mz = np.asarray(hist["magnetization"])
    im = ax[1, 0].imshow(
        mz.T,
        aspect="auto",
        origin="lower",
        extent=(t[0], t[-1] if t[-1] > t[0] else t[0] + 1, -0.5, mz.shape[1] - 0.5),
        cmap="RdBu",
        vmin=-1,
        vmax=1,
    )
    fig.colorbar(im, ax=ax[1, 0])
    ax[1, 0].set_xlabel("time")
    ax[1, 0].set_ylabel("site")
    ax[1, 0].set_title("<Z_site>")
    a = ax[1, 1]
    if convergence is not None:
        h = np.asarray(convergence["h"])
        err = np.asarray(convergence["error"])
        a.loglog(h, err, "o-", label="error at T vs expm")
        a.loglog(h, err[0] * h / h[0], "k:", label="slope 1")
        a.set_xlabel("h")
        a.legend()
        a.set_title("convergence")
    elif "error" in hist:
        a.semilogy(t, np.asarray(hist["error"]) + tiny)
        a.set_xlabel("time")
        a.set_title("||y - expm(-itH) y0||")
    else:
        a.text(0.5, 0.5, "no exact reference (d too large)", ha="center", va="center")
        a.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig
