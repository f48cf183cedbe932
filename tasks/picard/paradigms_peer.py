"""diffusers' own ParaDiGMS loop, for checking tilegraph's sampler against it.

diffusers ships ParaDiGMS as ``StableDiffusionParadigmsPipeline`` (text-to-image, with a
text encoder and a VAE) over ``DDPMParallelScheduler`` / ``DDIMParallelScheduler``. Its
sliding-window loop (``__call__``, "7. Denoising loop", diffusers 0.42.1) is transcribed
here line for line for an unconditional network ``net(x, t)``, without guidance and
without the VAE, so that the same small ``UNet2DModel`` can be driven by both
implementations from the same start and noise. It runs where the network's parameters
are (the pipeline moves its latents, noise and timesteps to ``self.device``). Nothing
here is used by tilegraph's sampler.
"""

from __future__ import annotations

import numpy as np


def paradigms_loop(net, scheduler, x_T: np.ndarray, base_noise: np.ndarray, parallel: int,
                   tolerance: float) -> tuple[np.ndarray, int]:  # fmt: skip
    """Sample by diffusers' ParaDiGMS loop.

    Parameters
    ----------
    net : torch.nn.Module
        ``net(x, t).sample`` (or ``[0]``) the model output (a diffusers ``UNet2DModel``),
        on the device the loop runs on.
    scheduler : DDPMParallelScheduler or DDIMParallelScheduler
        With ``set_timesteps`` already called.
    x_T : numpy.ndarray, shape (n, *sample_shape)
        Start (the pipeline's ``latents``).
    base_noise : numpy.ndarray, shape (T, n, *sample_shape)
        The standard normal draws the pipeline takes from its generator, one per step
        (scaled here by the scheduler's ``_get_variance(t) ** 0.5``, as there).
    parallel, tolerance : int, float
        The pipeline's arguments of the same names.

    Returns
    -------
    samples : numpy.ndarray, shape (n, *sample_shape)
    iterations : int
        Window iterations (the pipeline's ``steps`` counter).
    """
    import torch

    device = next(net.parameters()).device
    latents = torch.from_numpy(np.ascontiguousarray(x_T)).to(device)
    timesteps = scheduler.timesteps  # the variances index the scheduler's host tensors
    T = len(timesteps)
    parallel = min(parallel, T)
    begin_idx, end_idx = 0, parallel
    buf = torch.stack([latents] * (T + 1))
    noise_array = torch.zeros_like(buf)
    # the pipeline's arithmetic; the variances come to the host as 0-d tensors (after a
    # first run they are computed where batch_step_no_noise moved alphas_cumprod), the
    # noise goes to the device in one copy, as the pipeline draws it there
    variance = [scheduler._get_variance(timesteps[j]).cpu() for j in range(T)]
    base = torch.from_numpy(np.ascontiguousarray(base_noise)).to(device)
    for j in range(T):
        noise = (variance[j] ** 0.5) * base[j]
        noise_array[j] = noise.to(buf.dtype)
    inverse_variance_norm = (1.0 / torch.tensor(variance + [0])).to(device)
    timesteps = timesteps.to(device)
    latent_dim = noise_array[0, 0].numel()
    inverse_variance_norm = inverse_variance_norm[:, None] / latent_dim
    scaled_tolerance = tolerance**2
    n = latents.shape[0]
    steps = 0
    with torch.inference_mode():
        while begin_idx < T:
            parallel_len = end_idx - begin_idx
            block_latents = buf[begin_idx:end_idx]
            block_t = timesteps[begin_idx:end_idx, None].repeat(1, n)
            model_input = scheduler.scale_model_input(block_latents, block_t)
            out = net(model_input.flatten(0, 1), block_t.flatten(0, 1))
            model_output = out.sample if hasattr(out, "sample") else out[0]
            model_output = model_output.reshape(parallel_len * n, *model_output.shape[1:])
            block_latents_denoise = scheduler.batch_step_no_noise(
                model_output=model_output,
                timesteps=block_t.flatten(0, 1),
                sample=block_latents.flatten(0, 1),
            ).reshape(block_latents.shape)
            delta = block_latents_denoise - block_latents
            cumulative_delta = torch.cumsum(delta, dim=0)
            cumulative_noise = torch.cumsum(noise_array[begin_idx:end_idx], dim=0)
            if scheduler._is_ode_scheduler:
                cumulative_noise = 0
            block_latents_new = buf[begin_idx][None,] + cumulative_delta + cumulative_noise
            cur_error = torch.linalg.norm(
                (block_latents_new - buf[begin_idx + 1 : end_idx + 1]).reshape(
                    parallel_len, n, -1
                ),
                dim=-1,
            ).pow(2)
            error_ratio = cur_error * inverse_variance_norm[begin_idx + 1 : end_idx + 1]
            error_ratio = torch.nn.functional.pad(error_ratio, (0, 0, 0, 1), value=1e9)
            any_error_at_time = torch.max(error_ratio > scaled_tolerance, dim=1).values.int()
            ind = torch.argmax(any_error_at_time).item()
            new_begin_idx = begin_idx + min(1 + ind, parallel)
            new_end_idx = min(new_begin_idx + parallel, T)
            buf[begin_idx + 1 : end_idx + 1] = block_latents_new
            buf[end_idx : new_end_idx + 1] = buf[end_idx][None,]
            steps += 1
            begin_idx, end_idx = new_begin_idx, new_end_idx
    return buf[-1].cpu().numpy(), steps
