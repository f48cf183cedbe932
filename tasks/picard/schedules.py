"""Noise schedules and the per-step coefficients of DDPM and DDIM samplers.

Conventions: training timesteps ``t = 0 .. T_train - 1`` with ``alphas_cumprod[t]`` the
signal fraction ``abar_t``. A sampler with ``n`` steps visits the timesteps
``t_0 > t_1 > ... > t_{n-1}`` (spaced as diffusers' ``timestep_spacing`` says:
``leading``, the default, ends at 0) and step ``j`` maps ``x_j`` (noised at ``t_j``) to
``x_{j+1}`` (noised at ``t_{j+1}``, clean after the last step). Every step is written as

    x_{j+1} = a_j x_j + b_j eps(x_j, t_j) + sigma_j z_j,        z_j ~ N(0, I),

so the deterministic part is linear in ``x`` and the model output. Clipping the
clean-sample prediction (diffusers' ``clip_sample``) keeps this form: the sampler folds
the clipped part into the model output (``samplers.clipped_eps``).
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


#: Schedule names, diffusers' ``beta_schedule`` names included.
SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")

#: diffusers' ``timestep_spacing`` values.
SPACINGS = ("leading", "trailing", "linspace")


def make_schedule(kind: str, train_steps: int, beta_start=1e-4, beta_end=0.02) -> np.ndarray:
    """``alphas_cumprod`` of a schedule: ``linear`` betas, ``scaled_linear`` (linear in
    ``sqrt(beta)``, Stable Diffusion's) or ``cosine`` (= diffusers'
    ``squaredcos_cap_v2``)."""
    if kind == "linear":
        return alphas_cumprod(linear_betas(train_steps, beta_start, beta_end))
    if kind == "scaled_linear":
        return alphas_cumprod(linear_betas(train_steps, beta_start**0.5, beta_end**0.5) ** 2)
    if kind in ("cosine", "squaredcos_cap_v2"):
        return alphas_cumprod(cosine_betas(train_steps))
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


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
        ``"ddpm"``, ``"ddim"``, ``"dpmpp2m"`` or ``"unipc"``.
    x0_coef : numpy.ndarray or None
        The coefficient of the clean-sample prediction ``x0_hat`` in step ``j`` (what a
        clipped ``x0_hat`` changes).
    clip : float or None
        ``x0_hat`` is clipped to ``[-clip, clip]`` (diffusers' ``clip_sample_range``;
        None: not clipped).
    c : numpy.ndarray or None, shape (n, K)
        Multistep samplers (``"dpmpp2m"``: K = 1, ``"unipc"``: K = 2): the coefficients
        of the previous steps' clean-sample predictions in step ``j``, ``x_{j+1} = a_j
        x_j + b_j eps_j + sum_k c_jk x0_hat_{j-1-k}`` (0 where there is no such step);
        None for one-step samplers.
    """

    t: np.ndarray
    a: np.ndarray
    b: np.ndarray
    sigma: np.ndarray
    var: np.ndarray
    abar: np.ndarray
    kind: str
    x0_coef: np.ndarray | None = None
    clip: float | None = None
    c: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.t.shape[0])


def timesteps(
    train_steps: int, n_steps: int, spacing: str = "leading", offset: int = 0
) -> np.ndarray:
    """``n_steps`` training timesteps, descending, spaced as diffusers' schedulers space
    them (``timestep_spacing``; ``offset`` is ``steps_offset``, added with ``leading``).

    Returns
    -------
    numpy.ndarray of int64, shape (n_steps,)
    """
    if not 1 <= n_steps <= train_steps:
        raise ValueError(f"n_steps must be in 1..{train_steps}, got {n_steps}")
    if spacing == "leading":
        ratio = train_steps // n_steps
        return (np.arange(n_steps, dtype=np.int64) * ratio)[::-1].copy() + int(offset)
    if spacing == "trailing":
        t = np.round(np.arange(train_steps, 0, -train_steps / n_steps)).astype(np.int64)
        return t - 1
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, n_steps).round()[::-1].copy().astype(np.int64)
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def _pairs(abar: np.ndarray, t: np.ndarray, prev: np.ndarray, final: float = 1.0):
    """``abar`` at the visited timesteps ``t`` and at their predecessors ``prev``
    (``final`` where ``prev < 0``), the step's beta and its DDPM posterior variance."""
    ab_t = abar[t]
    ab_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], final)
    # DDPM posterior variance between t and the next visited timestep
    beta = 1.0 - ab_t / ab_prev
    var = np.maximum((1.0 - ab_prev) / (1.0 - ab_t) * beta, 1e-20)
    return ab_t, ab_prev, beta, var


def ddpm_steps(
    abar: np.ndarray,
    n_steps: int,
    spacing: str = "leading",
    offset: int = 0,
    clip: float | None = None,
) -> SamplerSteps:
    """Ancestral DDPM sampling (posterior mean, "fixed small" variance), as diffusers'
    ``DDPMScheduler``: the previous timestep is the next visited one (-1, with
    ``abar = 1``, after the last).

    Mean ``(sqrt(abar_prev) beta / (1 - abar)) x0_hat + (sqrt(1 - beta)(1 - abar_prev) /
    (1 - abar)) x`` with ``x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar)``.

    Parameters
    ----------
    abar : numpy.ndarray, shape (T_train,)
        ``alphas_cumprod`` of the training schedule.
    n_steps : int
        Sampling steps (<= T_train).
    spacing, offset
        See :func:`timesteps`.
    clip : float, optional
        Clip ``x0_hat`` to ``[-clip, clip]`` (diffusers' ``clip_sample``).
    """
    abar = np.asarray(abar, dtype=np.float64)
    t = timesteps(abar.shape[0], n_steps, spacing, offset)
    prev = np.concatenate([t[1:], [-1]])
    ab_t, ab_prev, beta, var = _pairs(abar, t, prev)
    c0 = np.sqrt(ab_prev) * beta / (1.0 - ab_t)  # coefficient of x0_hat
    cx = np.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)  # coefficient of x
    a = c0 / np.sqrt(ab_t) + cx
    b = -c0 * np.sqrt(1.0 - ab_t) / np.sqrt(ab_t)
    sigma = np.sqrt(np.where(var > 1e-20, var, 0.0))
    return SamplerSteps(t, a, b, sigma, var, ab_t, "ddpm", c0, clip)


def ddim_steps(
    abar: np.ndarray,
    n_steps: int,
    eta: float = 0.0,
    spacing: str = "leading",
    offset: int = 0,
    clip: float | None = None,
    final_one: bool = True,
) -> SamplerSteps:
    """DDIM sampling: ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps +
    s z`` with ``s = eta * sqrt(var)`` (eta = 0: the deterministic ODE sampler), as
    diffusers' ``DDIMScheduler``: the previous timestep is ``t - T_train // n_steps``
    whatever the spacing, and ``abar_prev`` there is 1 (``final_one``, diffusers'
    ``set_alpha_to_one``) or ``abar[0]`` when it is negative.

    Parameters
    ----------
    abar : numpy.ndarray, shape (T_train,)
    n_steps : int
    eta : float
        0 (deterministic) to 1 (DDPM-like noise).
    spacing, offset, clip
        As for :func:`ddpm_steps`.
    final_one : bool
        diffusers' ``set_alpha_to_one``.
    """
    abar = np.asarray(abar, dtype=np.float64)
    t = timesteps(abar.shape[0], n_steps, spacing, offset)
    prev = t - abar.shape[0] // n_steps
    ab_t, ab_prev, _, var = _pairs(abar, t, prev, 1.0 if final_one else float(abar[0]))
    s2 = eta**2 * np.where(var > 1e-20, var, 0.0)
    a = np.sqrt(ab_prev / ab_t)
    b = np.sqrt(np.maximum(1.0 - ab_prev - s2, 0.0)) - np.sqrt(ab_prev * (1.0 - ab_t) / ab_t)
    return SamplerSteps(t, a, b, np.sqrt(s2), var, ab_t, "ddim", np.sqrt(ab_prev), clip)


def dpm_timesteps(train_steps: int, n_steps: int, spacing: str = "linspace", offset: int = 0):
    """The timesteps of diffusers' ``DPMSolverMultistepScheduler`` (``n_steps + 1``
    points of which the last, 0, is dropped: the final step goes to noise level 0)."""
    if not 1 <= n_steps < train_steps:
        raise ValueError(f"n_steps must be in 1..{train_steps - 1}, got {n_steps}")
    T = train_steps
    if spacing == "linspace":
        t = np.linspace(0, T - 1, n_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = T // (n_steps + 1)
        t = (np.arange(0, n_steps + 1) * ratio).round()[::-1][:-1] + int(offset)
    elif spacing == "trailing":
        t = np.arange(T, 0, -T / n_steps).round() - 1
    else:
        raise ValueError(
            f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}"
        )
    return t.astype(np.int64).copy()


def _train_sigmas(abar: np.ndarray) -> np.ndarray:
    """``sqrt((1 - abar) / abar)`` of the training schedule, rounded as diffusers computes
    it (in float32: its ``alphas_cumprod`` is a float32 tensor). The Karras levels are
    defined by its end points, and float32 moves the smallest by 8e-5 relative (linear
    schedule), which would move every level; so they are taken as diffusers has them."""
    a = np.asarray(abar, dtype=np.float32)
    return np.sqrt((np.float32(1.0) - a) / a).astype(np.float64)


def karras_sigmas(abar: np.ndarray, n_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al.'s (2022) noise levels for ``n_steps`` steps, from the training
    schedule's largest ``sigma = sqrt((1 - abar) / abar)`` to its smallest, evenly
    spaced in ``sigma^(1/rho)`` (diffusers' ``use_karras_sigmas``)."""
    sig = _train_sigmas(abar)
    lo, hi = sig[0] ** (1.0 / rho), sig[-1] ** (1.0 / rho)
    return (hi + np.linspace(0.0, 1.0, n_steps) * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, abar: np.ndarray) -> np.ndarray:
    """The (fractional) training timesteps of noise levels ``sigma``: linear
    interpolation in ``log sigma`` between the schedule's two neighbouring timesteps, as
    diffusers' ``_sigma_to_t``."""
    log_sigmas = np.log(_train_sigmas(abar)).astype(np.float32)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1.0 - w) * low + w * (low + 1)


def _dpm_levels(abar, n_steps: int, spacing: str, offset: int, karras: bool):
    """The steps of diffusers' multistep solvers (DPM-Solver, UniPC): ``(t, ab, var)``,
    the timesteps the model sees, ``abar`` at the steps' noise levels and the posterior
    variance between consecutive levels (the scale of the Picard tolerance)."""
    if karras:
        if not 1 <= n_steps < abar.shape[0]:
            raise ValueError(f"n_steps must be in 1..{abar.shape[0] - 1}, got {n_steps}")
        sig = karras_sigmas(abar, n_steps)
        t = np.round(sigma_to_t(sig, abar)).astype(np.int64)
        ab = 1.0 / (1.0 + sig**2)
        n = t.shape[0]  # the posterior variance between the steps' own levels
        _, _, _, var = _pairs(np.append(ab, 1.0), np.arange(n), np.arange(1, n + 1))
    else:
        t = dpm_timesteps(abar.shape[0], n_steps, spacing, offset)
        ab = abar[t]
        _, _, _, var = _pairs(abar, t, np.concatenate([t[1:], [-1]]))
    return t, ab, var


def _log_snr(ab: np.ndarray):
    """``(alpha, sigma, lambda)`` of the steps' levels and of the next step's, the last
    step's next level being noise level 0 (``alpha = 1``, ``sigma = 0``, ``lambda =
    inf``). Shapes (n,)."""
    al, sg = np.sqrt(ab), np.sqrt(1.0 - ab)
    lam = np.log(al / sg)
    with np.errstate(divide="ignore"):
        nxt = (np.append(al[1:], 1.0), np.append(sg[1:], 0.0), np.append(lam[1:], np.inf))
    return (al, sg, lam), nxt


def _x0_form(g, cm, al, sg, kind, ab, t, var, c):
    """A step ``x_{j+1} = g_j x_j + cm_j x0_hat_j + ...`` written in :class:`SamplerSteps`'
    form, with ``x0_hat = (x - sg eps) / al``."""
    n = t.shape[0]
    return SamplerSteps(t, g + cm / al, -cm * sg / al, np.zeros(n), var, ab, kind, c=c)


def dpmpp_2m_steps(
    abar: np.ndarray,
    n_steps: int,
    spacing: str = "linspace",
    offset: int = 0,
    karras: bool = False,
) -> SamplerSteps:
    """DPM-Solver++(2M) (Lu et al. 2022), as diffusers' ``DPMSolverMultistepScheduler``
    with its defaults (``dpmsolver++``, order 2, ``midpoint``, final noise level 0).

    With ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, ``lambda = log(alpha /
    sigma)``, ``h = lambda_next - lambda_j``, ``r = (lambda_j - lambda_prev) / h`` and
    the clean-sample predictions ``m_j``, ``m_prev`` of this and the previous step:
    ``x_next = (sigma_next / sigma_j) x - alpha_next (e^-h - 1) ((1 + 1/(2r)) m_j -
    m_prev / (2r))``. The first step and the last (to noise level 0) are first order
    (``m_prev`` drops out). Deterministic (``sigma`` = 0).

    With ``karras``, the noise levels are :func:`karras_sigmas` (``spacing`` and
    ``offset`` do not apply): the updates, the clean-sample predictions and the scale of
    the Picard tolerance use them, and the model sees the nearest training timestep
    (:func:`sigma_to_t`, rounded), so ``abar`` of the steps is ``1 / (1 + sigma^2)``, not
    the schedule's at ``t`` (two steps may share a timestep).
    """
    abar = np.asarray(abar, dtype=np.float64)
    t, ab, var = _dpm_levels(abar, n_steps, spacing, offset, karras)
    n = t.shape[0]
    (al, sg, lam), (al_n, sg_n, lam_n) = _log_snr(ab)
    em = np.expm1(-(lam_n - lam))  # e^-h - 1 (-1 at the last step)
    first = np.zeros(n, dtype=bool)
    first[0] = first[-1] = True  # diffusers' lower_order_final: the step to level 0
    r = np.ones(n)
    r[1:] = (lam[1:] - lam[:-1]) / (lam_n[1:] - lam[1:])
    r = np.where(first, 1.0, r)  # (the last step's h is infinite)
    k = np.where(first, 1.0, 1.0 + 0.5 / r)
    c = np.where(first, 0.0, 0.5 * al_n * em / r)[:, None]
    return _x0_form(sg_n / sg, -al_n * em * k, al, sg, "dpmpp2m", ab, t, var, c)


def unipc_steps(
    abar: np.ndarray,
    n_steps: int,
    spacing: str = "linspace",
    offset: int = 0,
    karras: bool = False,
) -> SamplerSteps:
    """UniPC (Zhao et al. 2023) as diffusers' ``UniPCMultistepScheduler`` with its
    defaults: order 2, ``bh2``, data prediction, the corrector UniC on every step,
    first-order first and last steps, final noise level 0 (levels and ``karras`` as
    :func:`dpmpp_2m_steps`).

    diffusers evaluates the model at the predictor's output ``x_j`` and corrects it with
    that output before predicting ``x_{j+1}``, so the corrected sample is a function of
    ``x_j`` and the clean-sample predictions ``m_j, m_{j-1}, m_{j-2}``, and the whole step
    is a three-step linear multistep on the model inputs:
    ``x_{j+1} = a_j x_j + b_j eps_j + c_j1 m_{j-1} + c_j2 m_{j-2}``. With ``E_j = e^-h_j
    - 1``, ``r_j = (lambda_{j-1} - lambda_j) / h_j``:

    * predictor: ``x_{j+1} = (sigma_{j+1} / sigma_j) xc_j - alpha_{j+1} E_j (m_j + [order
      2] (m_{j-1} - m_j) / (2 r_j))``;
    * corrector (order of the previous predictor): ``xc_j = x_j - alpha_j E_{j-1}
      (rc_0 - 1/2) (m_{j-2} - m_{j-1}) / r_{j-1} + rc_1 (m_j - m_{j-1}))`` where
      ``(rc_0, rc_1)`` solve UniC's 2x2 system (order 1: ``rc_1 = 1/2`` alone).

    The sample is the last predictor's output (diffusers corrects no final sample).
    """
    abar = np.asarray(abar, dtype=np.float64)
    t, ab, var = _dpm_levels(abar, n_steps, spacing, offset, karras)
    n = t.shape[0]
    (al, sg, lam), (al_n, sg_n, lam_n) = _log_snr(ab)
    E = np.expm1(-(lam_n - lam))  # h phi_1 = B(h) of bh2 (-1 at the last step)
    order = np.full(n, 2)
    order[0] = order[-1] = 1  # the first step, and lower_order_final
    r = np.ones(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        r[1:] = (lam[:-1] - lam[1:]) / (lam_n[1:] - lam[1:])
    w = np.zeros(n)  # predictor: m_j + w (m_{j-1} - m_j)
    w[order == 2] = 0.5 / r[order == 2]
    P = -al_n * E
    # corrector of step j (from step j-1's predictor: same h, r, order)
    u = np.zeros(n)  # on (m_{j-2} - m_{j-1})
    v = np.zeros(n)  # on (m_j - m_{j-1})
    for j in range(1, n):
        i = j - 1
        hh = lam[i] - lam_n[i]  # -h
        hk = E[i] / hh - 1.0
        if order[i] == 1:
            v[j] = 0.5
        else:
            b1 = hk / E[i]
            b2 = (hk / hh - 0.5) * 2.0 / E[i]
            rc0, rc1 = np.linalg.solve([[1.0, 1.0], [r[i], 1.0]], [b1, b2])
            u[j], v[j] = (rc0 - 0.5) / r[i], rc1
    K = np.zeros(n)
    K[1:] = -al[1:] * E[:-1]
    g = sg_n / sg
    gK = g * K
    cm = gK * v + P * (1.0 - w)
    c = np.stack([-gK * (u + v) + P * w, gK * u], axis=1)
    return _x0_form(g, cm, al, sg, "unipc", ab, t, var, c)


#: The multistep samplers by name.
MULTISTEP = {"dpmpp2m": dpmpp_2m_steps, "unipc": unipc_steps}


def make_steps(kind: str, abar: np.ndarray, n_steps: int, eta: float = 0.0, **kw) -> SamplerSteps:
    """``ddpm_steps``, ``ddim_steps``, ``dpmpp_2m_steps`` or ``unipc_steps`` by name
    (``kw``: ``spacing``, ``offset``, ``clip``; ``final_one`` for DDIM; ``karras`` for
    the multistep samplers)."""
    if kind not in MULTISTEP and kw.pop("karras", False):
        raise ValueError("karras noise levels apply to dpmpp2m and unipc only")
    if kind == "ddpm":
        kw.pop("final_one", None)
        return ddpm_steps(abar, n_steps, **kw)
    if kind == "ddim":
        return ddim_steps(abar, n_steps, eta, **kw)
    if kind in MULTISTEP:
        kw.pop("final_one", None)
        if kw.pop("clip", None) is not None:
            raise ValueError(f"clip_sample does not apply to {kind} (diffusers' has none)")
        return MULTISTEP[kind](abar, n_steps, **kw)
    raise ValueError(f"unknown sampler {kind!r}; choose 'ddpm', 'ddim', 'dpmpp2m' or 'unipc'")
