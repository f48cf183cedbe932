"""Noise schedules and the per-step coefficients of DDPM and DDIM samplers.

Conventions: training timesteps ``t = 0 .. T_train - 1`` with ``alphas_cumprod[t]`` the
signal fraction ``abar_t``. A sampler with ``n`` steps visits the timesteps
``t_0 > t_1 > ... > t_{n-1} = 0`` (evenly spaced, "leading" spacing as in diffusers)
and step ``j`` maps ``x_j`` (noised at ``t_j``) to ``x_{j+1}`` (noised at ``t_{j+1}``,
clean after the last step). Every step is written as

    x_{j+1} = a_j x_j + b_j eps(x_j, t_j) + sigma_j z_j,        z_j ~ N(0, I),

so the deterministic part is linear in ``x`` and the model output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def linear_betas(train_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear beta schedule.

    Returns
    -------
    numpy.ndarray, shape (train_steps,)
    """
    return np.linspace(beta_start, beta_end, train_steps, dtype=np.float64)


def cosine_betas(train_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021): ``abar(t) = f(t) / f(0)`` with
    ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``, betas clipped at ``max_beta``.

    Returns
    -------
    numpy.ndarray, shape (train_steps,)
    """

    def f(t):
        return math.cos((t / train_steps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(train_steps)]
    return np.asarray(betas, dtype=np.float64)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """``abar_t = prod_{s <= t} (1 - beta_s)``, shape of ``betas``."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def make_schedule(kind: str, train_steps: int, beta_start=1e-4, beta_end=0.02) -> np.ndarray:
    """``alphas_cumprod`` of the ``"linear"`` or ``"cosine"`` schedule."""
    if kind == "linear":
        return alphas_cumprod(linear_betas(train_steps, beta_start, beta_end))
    if kind == "cosine":
        return alphas_cumprod(cosine_betas(train_steps))
    raise ValueError(f"unknown schedule {kind!r}; choose 'linear' or 'cosine'")


@dataclass(frozen=True)
class SamplerSteps:
    """The coefficients of an ``n``-step sampler (all arrays of shape ``(n,)``, float64
    except ``t``).

    Attributes
    ----------
    t : numpy.ndarray of int64
        Training timestep the model is evaluated at in step ``j``.
    a, b : numpy.ndarray
        Deterministic part of step ``j``: ``a_j x + b_j eps``.
    sigma : numpy.ndarray
        Standard deviation of the noise added in step ``j`` (0 for DDIM with eta = 0).
    var : numpy.ndarray
        The DDPM posterior variance of step ``j`` (floored at 1e-20), the scale of the
        Picard tolerance for DDPM and DDIM alike.
    abar : numpy.ndarray
        ``alphas_cumprod`` at ``t``: what relates the model's noise prediction to its
        prediction of the clean sample, ``x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar)``.
    kind : str
        ``"ddpm"`` or ``"ddim"``.
    """

    t: np.ndarray
    a: np.ndarray
    b: np.ndarray
    sigma: np.ndarray
    var: np.ndarray
    abar: np.ndarray
    kind: str

    def __len__(self) -> int:
        return int(self.t.shape[0])


def timesteps(train_steps: int, n_steps: int) -> np.ndarray:
    """``n_steps`` evenly spaced training timesteps, descending, ending at 0.

    Returns
    -------
    numpy.ndarray of int64, shape (n_steps,)
    """
    if not 1 <= n_steps <= train_steps:
        raise ValueError(f"n_steps must be in 1..{train_steps}, got {n_steps}")
    ratio = train_steps // n_steps
    return (np.arange(n_steps, dtype=np.int64) * ratio)[::-1].copy()


def _pairs(abar: np.ndarray, n_steps: int):
    t = timesteps(abar.shape[0], n_steps)
    ab_t = abar[t]
    ab_prev = np.concatenate([abar[t[1:]], [1.0]])
    # DDPM posterior variance between t and the next visited timestep
    beta = 1.0 - ab_t / ab_prev
    var = np.maximum((1.0 - ab_prev) / (1.0 - ab_t) * beta, 1e-20)
    return t, ab_t, ab_prev, beta, var


def ddpm_steps(abar: np.ndarray, n_steps: int) -> SamplerSteps:
    """Ancestral DDPM sampling (posterior mean, "fixed small" variance, no clipping).

    Mean ``(sqrt(abar_prev) beta / (1 - abar)) x0_hat + (sqrt(1 - beta)(1 - abar_prev) /
    (1 - abar)) x`` with ``x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar)``.

    Parameters
    ----------
    abar : numpy.ndarray, shape (T_train,)
        ``alphas_cumprod`` of the training schedule.
    n_steps : int
        Sampling steps (<= T_train).
    """
    t, ab_t, ab_prev, beta, var = _pairs(np.asarray(abar, dtype=np.float64), n_steps)
    c0 = np.sqrt(ab_prev) * beta / (1.0 - ab_t)  # coefficient of x0_hat
    cx = np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)  # coefficient of x
    a = c0 / np.sqrt(ab_t) + cx
    b = -c0 * np.sqrt(1.0 - ab_t) / np.sqrt(ab_t)
    sigma = np.sqrt(np.where(var > 1e-20, var, 0.0))
    return SamplerSteps(t, a, b, sigma, var, ab_t, "ddpm")


def ddim_steps(abar: np.ndarray, n_steps: int, eta: float = 0.0) -> SamplerSteps:
    """DDIM sampling: ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps +
    s z`` with ``s = eta * sqrt(var)`` (eta = 0: the deterministic ODE sampler).

    Parameters
    ----------
    abar : numpy.ndarray, shape (T_train,)
    n_steps : int
    eta : float
        0 (deterministic) to 1 (DDPM-like noise).
    """
    t, ab_t, ab_prev, _, var = _pairs(np.asarray(abar, dtype=np.float64), n_steps)
    s2 = eta**2 * np.where(var > 1e-20, var, 0.0)
    a = np.sqrt(ab_prev / ab_t)
    b = np.sqrt(np.maximum(1.0 - ab_prev - s2, 0.0)) - np.sqrt(ab_prev * (1.0 - ab_t) / ab_t)
    return SamplerSteps(t, a, b, np.sqrt(s2), var, ab_t, "ddim")


def make_steps(kind: str, abar: np.ndarray, n_steps: int, eta: float = 0.0) -> SamplerSteps:
    """``ddpm_steps`` or ``ddim_steps`` by name."""
    if kind == "ddpm":
        return ddpm_steps(abar, n_steps)
    if kind == "ddim":
        return ddim_steps(abar, n_steps, eta)
    raise ValueError(f"unknown sampler {kind!r}; choose 'ddpm' or 'ddim'")
