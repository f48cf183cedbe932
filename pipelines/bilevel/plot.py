"""``summary.png`` of a bilevel run: convergence of the upper iterate, one line per
method."""

from __future__ import annotations

import numpy as np


def summary_figure(histories: dict, known_optimum: bool, title: str):
    """Build the figure; the caller saves it with ``store.save_figure``.

    Parameters
    ----------
    histories : dict of str to dict of lists
        Per method: ``iteration``, ``rel_dist``, ``upper_objective``, ``grad_norm`` at
        each history point.
    known_optimum : bool
        Plot the distance to ``x*``.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("grad_norm", "|grad F(x)|", True), ("upper_objective", "F(x)", False)]
    if known_optimum:
        panels.insert(0, ("rel_dist", "|x - x*| / |x*|", True))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 4), constrained_layout=True
    )
    for ax, (key, label, log) in zip(np.atleast_1d(axes), panels, strict=True):
        for method, hist in histories.items():
            it = np.asarray(hist["iteration"])
            (ax.semilogy if log else ax.plot)(it, np.asarray(hist[key]), "o-", ms=2, label=method)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend()
    fig.suptitle(title)
    return fig
