"""``summary.png`` of a ttn run: drifts, ranks, magnetisation, the error vs time and the
user's observables (against the exact reference where there is one)."""

from __future__ import annotations

import numpy as np


def summary_figure(hist, title: str, convergence=None):
    """Four panels from the ``history`` dataset (and the convergence study, if any), and
    two more (real and imaginary parts) when it records observables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_obs = "observables" in hist
    fig, ax = plt.subplots(3 if has_obs else 2, 2, figsize=(11, 11 if has_obs else 7.5))
    t = np.asarray(hist["time"])
    tlabel = "time t (1/energy, ħ = 1)"
    for name, label in (("norm", "|norm − norm(0)|"), ("energy", "|<H> − <H>(0)| (energy)")):
        drift = _positive(np.abs(np.asarray(hist[name]) - np.asarray(hist[name])[0]))
        if np.isfinite(drift).any():
            ax[0, 0].semilogy(t, drift, label=label)
        else:
            ax[0, 0].plot([], [], label=f"{label}: 0 at every step")
    ax[0, 0].set_xlabel(tlabel)
    ax[0, 0].set_ylabel("drift since t = 0")
    ax[0, 0].set_title("conservation")
    ax[0, 0].legend()
    ax[0, 1].plot(t, hist["max_rank"], label="max rank")
    ax[0, 1].plot(t, hist["mean_rank"], label="mean rank")
    ax[0, 1].set_xlabel(tlabel)
    ax[0, 1].set_ylabel("bond rank")
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
    ax[1, 0].set_xlabel(tlabel)
    ax[1, 0].set_ylabel("site")
    ax[1, 0].set_title("<Sz>/S per site (Z for spin-1/2)")
    if np.all(np.isnan(mz)):
        ax[1, 0].text(0.5, 0.5, "no spin sites", ha="center", va="center",
                      transform=ax[1, 0].transAxes)  # fmt: skip
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
        a.semilogy(t, _positive(np.asarray(hist["error"])))  # t = 0 is exact: not drawn
        a.set_xlabel(tlabel)
        a.set_ylabel("||y(t) − expm(−itH) y0||")
        a.set_title("error against the exact state")
    else:
        a.text(0.5, 0.5, "no exact reference (d too large)", ha="center", va="center")
        a.set_axis_off()
    if has_obs:
        _observables(ax[2], t, hist)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _observables(axes, t, hist) -> None:
    """Real and imaginary parts of every observable against time; the exact reference
    dashed."""
    vals = np.asarray(hist["observables"])
    ref = np.asarray(hist["observables_exact"]) if "observables_exact" in hist else None
    names = [str(n) for n in np.asarray(hist["observable"])]
    for a, part, label in ((axes[0], np.real, "Re"), (axes[1], np.imag, "Im")):
        for j, name in enumerate(names):
            ok = ~np.isnan(vals[:, j].real)
            (line,) = a.plot(t[ok], part(vals[ok, j]), "o-", ms=3, label=name)
            if ref is not None:
                a.plot(t[ok], part(ref[ok, j]), "--", color=line.get_color(), lw=1)
        a.set_xlabel("time t (1/energy, ħ = 1)")
        a.set_title(f"{label} <O>" + (" (dashed: exact)" if ref is not None else ""))
    axes[0].legend(fontsize=8)


def _positive(y: np.ndarray) -> np.ndarray:
    """``y`` with the values a log axis cannot show (0: exact at t = 0) as NaN, which
    matplotlib leaves out, instead of a floor that stretches the axis over decades."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 0, y, np.nan)
