"""A small diffusers ``UNet2DModel`` trained on scikit-learn's 8x8 digits (the
``digits-unet`` preset of ``picard``): the standard noise-prediction objective, Adam,
on the CPU in a few minutes. torch and diffusers are imported when called.
"""

from __future__ import annotations

import numpy as np


def unet_config(channels: tuple[int, ...]) -> dict:
    """The ``UNet2DModel`` config of a 1-channel 8x8 denoiser with ``channels`` per level."""
    return {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [int(c) for c in channels],
        "down_block_types": ["DownBlock2D"] * len(channels),
        "up_block_types": ["UpBlock2D"] * len(channels),
        "norm_num_groups": min(8, int(min(channels))),
    }


def train_unet(
    data: np.ndarray,
    abar: np.ndarray,
    channels: tuple[int, ...] = (16, 32),
    iterations: int = 2000,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[dict, dict, list[float]]:
    """Train a ``UNet2DModel`` to predict the noise of digits noised by ``abar``.

    Parameters
    ----------
    data : numpy.ndarray, shape (N, 64)
        Images in [-1, 1], row-major 8x8.
    abar : numpy.ndarray, shape (T_train,)
        ``alphas_cumprod`` of the training schedule.
    channels : tuple of int
        Channels per UNet level.
    iterations, batch, lr : int, int, float
        Adam steps, images per step and the initial learning rate (decayed linearly
        to a tenth).
    seed : int

    Returns
    -------
    config : dict
        :func:`unet_config`.
    weights : dict of str to numpy.ndarray
        The trained ``state_dict`` (float32).
    losses : list of float
        The mean loss of every 100 steps.
    """
    import diffusers
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = unet_config(channels)
    net = diffusers.UNet2DModel(**config)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 - 0.9 * k / max(iterations, 1))
    x0_all = torch.from_numpy(np.asarray(data, dtype=np.float32).reshape(-1, 1, 8, 8))
    ab = torch.from_numpy(np.asarray(abar, dtype=np.float32))
    T = ab.shape[0]
    losses, window = [], []
    net.train()
    for _ in range(iterations):
        idx = torch.from_numpy(rng.integers(0, x0_all.shape[0], size=batch))
        t = torch.from_numpy(rng.integers(0, T, size=batch))
        eps = torch.from_numpy(rng.standard_normal((batch, 1, 8, 8)).astype(np.float32))
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0_all[idx] + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(net(x_t, t).sample, eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == 100:
            losses.append(float(np.mean(window)))
            window = []
    if window:
        losses.append(float(np.mean(window)))
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return config, weights, losses


def build_unet(config: dict, weights: dict):
    """A ``UNet2DModel`` from :func:`train_unet`'s config and weights (eval mode)."""
    import diffusers
    import torch

    net = diffusers.UNet2DModel(**config)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return net.eval()
