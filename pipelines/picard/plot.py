"""``summary.png`` of a picard run: the samples and how the windows advanced."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from tilegraph.tasks.picard.models import GaussianMixture  # noqa: E402


def _gmm_panel(ax, samples, spec):
    g = GaussianMixture(spec["means"], spec["weights"], spec["spread"], spec["abar"])
    # the two leading principal axes of the true mixture
    _, vecs = np.linalg.eigh(g.covariance())
    P = vecs[:, ::-1][:, :2]
    ref, _ = g.sample(max(2000, samples.shape[0]), seed=12345)
    m = g.mean()
    ax.scatter(*((ref - m) @ P).T, s=3, c="0.7", label="exact mixture")
    ax.scatter(*((samples - m) @ P).T, s=6, c="C0", label="Picard samples")
    c = (g.means - m) @ P
    ax.scatter(*c.T, marker="x", c="C3", s=60, label="component means")
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("samples, 2-D projection")


def _image_panel(ax, samples, sequential):
    """Picard samples (top row) above the sequential sampler's (bottom row); images
    ``(n, C, H, W)`` in [-1, 1], channel 0 or RGB."""
    k = min(8, samples.shape[0])
    rows = [samples[:k]] + ([sequential[:k]] if sequential is not None else [])
    C, H, W = samples.shape[1:]
    grid = np.full((len(rows) * (H + 1) + 1, k * (W + 1) + 1, 3), np.nan)
    for r, imgs in enumerate(rows):
        for c in range(k):
            img = np.moveaxis(imgs[c], 0, -1)
            img = np.repeat(img[..., :1], 3, axis=-1) if C != 3 else img
            grid[1 + r * (H + 1) : (r + 1) * (H + 1), 1 + c * (W + 1) : (c + 1) * (W + 1)] = img
    ax.imshow(np.nan_to_num((np.clip(grid, -1, 1) + 1) / 2, nan=1.0))
    ax.set_axis_off()
    ax.set_title("Picard (top) and sequential (bottom) samples")


def _digits_panel(ax, samples):
    k = int(min(6, np.floor(np.sqrt(samples.shape[0]))))
    grid = np.ones((k * 9 + 1, k * 9 + 1)) * np.nan
    for j in range(k * k):
        r, c = divmod(j, k)
        grid[1 + 9 * r : 9 + 9 * r, 1 + 9 * c : 9 + 9 * c] = samples[j]
    ax.imshow(np.clip(grid, -1, 1), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"first {k * k} samples")


def summary_figure(store, cfg, spec, abar):
    """Samples (GMM: projection against the true mixture; digits: images), the window
    advance per iteration of batch 0, and the iterations of every batch."""
    samples = store.array("result/samples").read()
    its = store.array("result/iterations").read()
    begin = store.array("history/begin").read()[0]
    adv = store.array("history/advance").read()[0]
    n_it = int(its[0])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    if cfg.model == "digits":
        _digits_panel(axes[0], samples)
    elif cfg.model == "gmm":
        _gmm_panel(axes[0], samples, spec)
    elif spec.get("decoder"):  # latents: show them decoded, mapped to [-1, 1]
        first = (slice(0, 8),)  # the panel shows 8: large images stay on disk
        img = 2 * store.array("result/image").read(first) - 1
        seq = None
        if cfg.compare_sequential:
            seq = 2 * store.array("result/sequential_image").read(first) - 1
        _image_panel(axes[0], img, seq)
        rows = ": Picard (top), sequential (bottom)" if seq is not None else ": Picard samples"
        axes[0].set_title(f"decoded by {spec['decoder']['subfolder']}/{rows}")
    elif cfg.model in ("diffusers", "digits-unet"):
        seq = store.array("result/sequential").read() if cfg.compare_sequential else None
        _image_panel(axes[0], samples, seq)
    else:
        flat = samples.reshape(samples.shape[0], -1)
        axes[0].scatter(flat[:, 0], flat[:, min(1, flat.shape[1] - 1)], s=6)
        axes[0].set_title("samples, first two coordinates")
    ax = axes[1]
    ax.bar(np.arange(1, n_it + 1), adv[:n_it], color="C1", label="steps finished")
    ax.set_xlabel("Picard iteration (batch 0)")
    ax.set_ylabel("steps finished in the iteration")
    ax2 = ax.twinx()
    ax2.plot(np.arange(1, n_it + 1), begin[:n_it], "k.-", ms=3, label="window start")
    ax2.set_ylabel("window start (step)")
    ax.set_title(f"window p={cfg.window}, tol={cfg.tol:g}")
    ax = axes[2]
    bars = ax.bar(np.arange(its.size), its, color="C2")
    if its.size <= 32:  # the counts themselves, while they fit
        ax.bar_label(bars, fontsize=7)
    ax.axhline(cfg.steps, color="k", ls="--", lw=1)
    ax.text(0, cfg.steps, f" sequential: {cfg.steps} steps", va="bottom", fontsize=8)
    ax.set_xlabel("sample batch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("Picard iterations (log scale)")
    # log: tens of iterations beside a thousand sequential steps stay readable (limits
    # first: autoscaling bars from 0 on a log axis warns of a singular range)
    ax.set_ylim(0.8, cfg.steps * 2.0)
    ax.set_yscale("log")
    ax.set_title(f"iterations per batch (mean {its.mean():.1f} of {cfg.steps} steps)")
    name = "accelerated Picard" if cfg.accelerate or cfg.anderson_memory else "Picard (ParaDiGMS)"
    fig.suptitle(f"picard: {cfg.model}, {cfg.sampler.upper()}-{cfg.steps}, {name}")
    fig.tight_layout()
    return fig
