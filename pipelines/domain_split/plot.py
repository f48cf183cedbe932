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


def coefficient_planes(problem, domain, n: int = 129) -> dict[str, np.ndarray]:
    """``alpha_k`` and ``|beta|`` in physical units on an ``n x n`` grid of the box (the
    middle ``z`` plane in 3-D), keyed by panel title."""
    inner = getattr(problem, "inner", problem)  # a problem on a box: its own coordinates
    d = len(domain)
    axes = [np.linspace(a, b, n) for a, b in domain[:2]]
    if d == 3:
        axes.append(np.array([0.5 * (domain[2][0] + domain[2][1])]))
    coords = tuple(np.meshgrid(*axes, indexing="ij", sparse=True))
    shape = (n, n) + ((1,) if d == 3 else ())
    planes = {}
    beta_sq = np.zeros(shape)
    for k, name in enumerate("xyz"[:d]):
        alpha = np.broadcast_to(np.asarray(inner.alpha_k(k, coords), dtype=float), shape)
        planes[f"alpha_{name}"] = alpha.reshape(n, n)
        beta = np.broadcast_to(np.asarray(inner.beta_k(k, coords), dtype=float), shape)
        beta_sq = beta_sq + beta**2
    planes["|beta|"] = np.sqrt(beta_sq).reshape(n, n)
    return planes


def summary_figure(store, problem, domain, history, title: str):
    """Build the figure; the caller saves it with ``store.save_figure``.

    Solution, error (where the exact solution is known) and convergence; below them the
    coefficient fields when they vary.

    Parameters
    ----------
    store : storage.RunStore
    problem : Problem or OnBox
    domain : tuple of (float, float)
        The box, in the problem's own coordinates.
    history : sequence of float
        Relative residual per iteration.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = len(domain)
    extent = (*domain[0], *domain[1])
    varying = not problem.constant_coefficients
    planes = coefficient_planes(problem, domain) if varying else {}
    cols = max(3, len(planes))
    fig, grid = plt.subplots(
        2 if planes else 1,
        cols,
        figsize=(4.7 * cols, 8.4 if planes else 4.2),
        constrained_layout=True,
        squeeze=False,
    )
    where = "" if d == 2 else " (middle z plane)"

    def show(ax, field, name, **kw):
        im = ax.imshow(field.T, origin="lower", extent=extent, aspect="auto", **kw)
        ax.set_title(name + where)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.colorbar(im, ax=ax)

    show(grid[0, 0], _plane(store.array("result/solution"), d), "solution u", cmap="viridis")
    top = 1
    if store.has("result/error"):  # no exact solution (a dataset): no panel, no gap
        err = _plane(store.array("result/error"), d)
        lim = float(np.abs(err).max()) or 1.0
        show(grid[0, 1], err, "error u - u_exact", cmap="RdBu_r", vmin=-lim, vmax=lim)
        top = 2
    ax = grid[0, top]
    ax.semilogy(np.arange(len(history)), history, "o-", ms=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.set_title("convergence")
    ax.grid(True, which="both", alpha=0.3)
    for k in range(top + 1, cols):
        grid[0, k].axis("off")
    for k, (name, field) in enumerate(planes.items()):
        show(grid[1, k], field, name, cmap="magma")
    for k in range(len(planes), cols if planes else 0):
        grid[1, k].axis("off")
    fig.suptitle(title)
    return fig
