"""Sequential and sliding-window Picard samplers (ParaDiGMS), plain and accelerated.

A sampler with ``T`` steps computes ``x_{j+1} = x_j + d_j(x_j)`` with the drift
``d_j(x) = (a_j - 1) x + b_j eps(x, t_j) + sigma_j z_j`` (see
:mod:`tilegraph.tasks.picard.schedules`). The trajectory ``x_0 .. x_T`` is the fixed point of
``x_k = x_0 + sum_{j<k} d_j(x_j)``; Picard iteration evaluates all drifts of a window
of steps in ONE batched model call and takes a cumulative sum.

Shapes: a batch of ``n`` samples of ``sample_shape`` is an array ``(n, *sample_shape)``;
a trajectory buffer is ``(T + 1, n, *sample_shape)``; slot ``s`` of the buffer holds
``x_s``. All kernels take the array namespace from their inputs (NumPy, CuPy,
array_api_strict); the tiny Anderson least-squares systems are solved on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from array_api_compat import array_namespace

from ..devices import to_host
from .guard import lookahead, step_expansion
from .schedules import SamplerSteps

#: Columns of :attr:`PicardResult.history`.
HISTORY_COLUMNS = ("begin", "end", "first_unconverged", "advance", "max_error")


def draw_noise(seed, n: int, sample_shape, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre-draw the start point and every step's noise of a batch.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        One batch's seed (e.g. ``SeedSequence(run_seed, spawn_key=(batch,))``).
    n : int
        Samples in the batch.
    sample_shape : tuple of int
    n_steps : int
        Sampler steps ``T``.

    Returns
    -------
    x_T : numpy.ndarray, shape (n, *sample_shape)
    z : numpy.ndarray, shape (T, n, *sample_shape)
        Standard normal noise of step ``j`` in ``z[j]`` (scaled by ``sigma_j`` later).
    """
    rng = np.random.default_rng(seed)
    shape = (n, *tuple(sample_shape))
    x_T = rng.standard_normal(shape)
    z = rng.standard_normal((n_steps, *shape))
    return x_T, z


def _col(xp, values: np.ndarray, ndim: int, dtype=None):
    """``values`` (L,) as an array of shape (L, 1, ..., 1) with ``ndim`` axes, of ``dtype``
    (the samples' floating type, so that float32 samples stay float32; default float64)."""
    v = xp.asarray(np.asarray(values, dtype=np.float64), dtype=dtype)
    return xp.reshape(v, (v.shape[0],) + (1,) * (ndim - 1))


def drift(x, eps, z, a, b, sigma, extra=None):
    """``(a - 1) x + b eps + sigma z`` (``+ extra``) for a stack of steps.

    Parameters
    ----------
    x, eps, z : arrays, shape (L, n, *sample_shape)
        Inputs of ``L`` steps, the model output at them and the steps' standard noise.
    a, b, sigma : numpy.ndarray, shape (L,)
        The steps' coefficients.
    extra : array, optional
        Added as is (a multistep sampler's term in the previous step's prediction).

    Returns
    -------
    array, shape of ``x``
    """
    xp = array_namespace(x)
    nd, dt = x.ndim, x.dtype
    d = _col(xp, a - 1.0, nd, dt) * x + _col(xp, b, nd, dt) * eps + _col(xp, sigma, nd, dt) * z
    return d if extra is None else d + extra


def _x0(x, eps, steps: SamplerSteps, lo: int, hi: int):
    """The clean-sample predictions ``(x - sqrt(1 - abar) eps) / sqrt(abar)`` of steps
    ``lo .. hi-1`` (``x``, ``eps``: (L, n, ...))."""
    xp = array_namespace(x)
    nd, dt = x.ndim, x.dtype
    ab = steps.abar[lo:hi]
    return (x - _col(xp, np.sqrt(1.0 - ab), nd, dt) * eps) / _col(xp, np.sqrt(ab), nd, dt)


def _multistep(xp, steps: SamplerSteps, lo: int, hi: int, x0, before):
    """The multistep term ``sum_k c_jk x0_hat_{j-1-k}`` of steps ``lo .. hi-1``, from
    their own predictions ``x0`` (L, n, ...) and ``before`` (K, n, ...), the predictions
    of steps ``lo - K .. lo - 1`` (any finite values where the step index is negative:
    its ``c`` is 0)."""
    K, L = steps.c.shape[1], x0.shape[0]
    hist = xp.concat([before, x0[:-1, ...]], axis=0)  # steps lo-K .. hi-2
    out = None
    for k in range(K):  # x0_hat_{j-1-k} of step j = lo + i sits at hist[K - 1 - k + i]
        term = _col(xp, steps.c[lo:hi, k], x0.ndim, x0.dtype) * hist[K - 1 - k : K - 1 - k + L]
        out = term if out is None else out + term
    return out


def _before(xp, x0_last, lo: int, K: int):
    """The newest predictions of steps ``lo - K .. lo - 1`` (K, n, ...) from
    ``x0_last`` (T, n, ...); a negative step index gets step 0's row (its coefficient
    is 0)."""
    return xp.stack([x0_last[max(lo - K + k, 0), ...] for k in range(K)], axis=0)


def window_update(x_in, old_out, d, inv_var):
    """One Picard update of a window of ``L`` steps.

    Parameters
    ----------
    x_in : array, shape (L, n, *sample_shape)
        The current trajectory at the window's input slots ``b .. e-1`` (``x_in[0]``,
        slot ``b``, is already exact).
    old_out : array, shape (L, n, *sample_shape)
        The current trajectory at the output slots ``b+1 .. e``.
    d : array, shape (L, n, *sample_shape)
        The drifts ``d_j(x_in[j])``.
    inv_var : numpy.ndarray, shape (L,)
        ``1 / var`` of the output slots (0 where a slot is never judged).

    Returns
    -------
    new : array, shape (L, n, *sample_shape)
        ``x_b + cumsum(d)``: accumulated left to right from ``x_b``, so at the fixed
        point it has the sequential sampler's bits.
    err : numpy.ndarray, shape (L,)
        Per output slot, the max over samples of the mean squared change
        ``(new - old_out)^2`` divided by the slot's variance.
    """
    xp = array_namespace(x_in)
    new = xp.cumulative_sum(xp.concat([x_in[0:1, ...], d], axis=0), axis=0)[1:, ...]
    diff = new - old_out
    L, n = diff.shape[0], diff.shape[1]
    ms = xp.mean(xp.reshape(diff * diff, (L, n, -1)), axis=2)
    err = to_host(xp.max(ms, axis=1)) * np.asarray(inv_var, dtype=np.float64)
    return new, err


def _secant_gain(x, eps, x_prev, eps_prev, has_prev):
    """Per step and sample, the secant slope ``<d eps, d x> / <d x, d x>`` between this
    and the previous evaluation of a step (0 where there is none); shape (L, n)."""
    xp = array_namespace(x)
    L, n = x.shape[0], x.shape[1]
    dx = xp.reshape(x - x_prev, (L, n, -1))
    de = xp.reshape(eps - eps_prev, (L, n, -1))
    num = xp.sum(dx * de, axis=2)
    den = xp.sum(dx * dx, axis=2)
    ok = (den > 0) & (_col(xp, np.asarray(has_prev, dtype=np.float64), 2) > 0)
    return xp.where(ok, num / xp.where(den > 0, den, 1.0), 0.0)


def _data_spread(slope, seen: np.ndarray, abar: np.ndarray, previous):
    """Per sample, the variance ``s^2`` of a local Gaussian model of the data,
    ``N(mu, s^2 I)``, whose exact noise prediction ``eps = sqrt(1 - abar) (x - sqrt(abar)
    mu) / (abar s^2 + 1 - abar)`` has the secant slope ``c`` of the newest step with a
    positive one: ``s^2 = (sqrt(1 - abar) / c - (1 - abar)) / abar``.

    Parameters
    ----------
    slope : array, shape (L, n)
        Secant slopes ``<d eps, d x> / <d x, d x>`` of the window's steps.
    seen : numpy.ndarray of bool, shape (L,)
        Which steps have a slope.
    abar : numpy.ndarray, shape (L,)
        ``alphas_cumprod`` of the steps.
    previous : array, shape (n,)
        What to keep for a sample without a positive slope in the window (its value
        from an earlier window: a window that converged at first sight has none).

    Returns
    -------
    array, shape (n,)
        ``s^2 >= 0``, finite; 0 (a point: a fixed clean-sample prediction) where the
        slope is steeper than a point's, ``1 / sqrt(1 - abar)``. Slopes ``<= 0`` or
        below ``1e-12`` of a point's are skipped.
    """
    rows = np.flatnonzero(seen)
    if rows.size == 0:
        return previous
    # all steps at once (a fixed number of array operations, whatever the window: a few
    # kernel launches on a GPU instead of a few per step)
    xp = array_namespace(slope)
    dt = slope.dtype
    c = xp.take(slope, xp.asarray(rows), axis=0)  # (R, n)
    ab = abar[rows]
    root = _col(xp, np.sqrt(1.0 - ab), 2, dt)
    # a slope below 1e-12 of a point's says nothing usable (s^2 > 1e12 / abar)
    ok = c * root > 1e-12
    s2 = (root / xp.where(ok, c, 1.0) - _col(xp, 1.0 - ab, 2, dt)) / _col(xp, ab, 2, dt)
    s2 = xp.where(s2 > 0, s2, 0.0)
    # per sample the newest usable step: a one-hot pick, exact (one value plus zeros)
    order = _col(xp, np.arange(rows.size), 2, dt)
    newest = xp.max(xp.where(ok, order, -1.0), axis=0)  # (n,), -1: none
    pick = xp.sum(xp.where(order == newest[None, :], s2, 0.0), axis=0)
    return xp.where(newest >= 0, pick, previous)


def _gaussian_slope(xp, abar: np.ndarray, s2):
    """``d eps / d x`` of the local Gaussian model at ``abar`` (L,), shape (L, n)."""
    ab = _col(xp, abar, 2, s2.dtype)
    return xp.sqrt(1.0 - ab) / (ab * s2[None, :] + (1.0 - ab))


def _fill_unseen(slope, seen: np.ndarray, abar: np.ndarray, s2):
    """Give each step without a secant slope (``seen`` False) the slope of the local
    Gaussian model (:func:`_data_spread`) that :func:`_extrapolate` assumes too, instead
    of 0, which would propagate input changes through that step as plain Picard does.

    Parameters
    ----------
    slope : array, shape (L, n)
        Secant slopes per step and sample (0 where ``seen`` is False).
    seen : numpy.ndarray of bool, shape (L,)
    abar : numpy.ndarray, shape (L,)
        ``alphas_cumprod`` of the steps.
    s2 : array, shape (n,)
        The model's data variance per sample (0: slope ``1 / sqrt(1 - abar)``).
    """
    if np.all(seen):
        return slope
    xp = array_namespace(slope)
    model = _gaussian_slope(xp, abar, s2)
    return xp.where(_col(xp, seen.astype(np.float64), 2) > 0, slope, model)


def _extrapolate(x, x_ref, eps_ref, abar_ref: float, s2, z, steps: SamplerSteps, lo: int, hi: int):
    """Initial guesses for the slots ``lo+1 .. hi`` that a window slides onto: run steps
    ``lo .. hi-1`` from ``x`` (slot ``lo``), with the true noise, on the exact noise
    prediction of a local Gaussian model of the data ``N(mu, s^2 I)``; no model calls.

    ``mu`` is fitted per sample to the newest model evaluation. With ``s^2 = 0`` the model
    holds the clean-sample prediction ``x0_hat`` fixed, as a DDIM step does.

    Parameters
    ----------
    x : array, shape (n, *sample_shape)
        The trajectory at slot ``lo``.
    x_ref, eps_ref : arrays, shape (n, *sample_shape)
        The newest model evaluation (input and output), at ``alphas_cumprod`` ``abar_ref``.
    s2 : array, shape (n,)
        The data variance per sample (:func:`_data_spread`).
    z : array, shape (T, n, *sample_shape)

    Returns
    -------
    array, shape (hi - lo, n, *sample_shape)
    """
    xp = array_namespace(x)
    s2 = xp.reshape(s2, (-1,) + (1,) * (x.ndim - 1))
    v_ref = abar_ref * s2 + (1.0 - abar_ref)
    mu = (x_ref - eps_ref * v_ref / math.sqrt(1.0 - abar_ref)) / math.sqrt(abar_ref)
    rows = []
    for j in range(lo, hi):
        ab = float(steps.abar[j])
        eps = math.sqrt(1.0 - ab) * (x - math.sqrt(ab) * mu) / (ab * s2 + max(1.0 - ab, 1e-300))
        sl = slice(j, j + 1)
        x = x + drift(x[None, ...], eps[None, ...], z[sl, ...], *_coefs(steps, j))[0, ...]
        rows.append(x)
    return xp.stack(rows, axis=0)


def window_update_linearised(x_in, old, d, gain, inv_var):
    """Like :func:`window_update`, but the change of each input is propagated through a
    linear model of its step: ``y_{j+1} = y_j + d_j + g_j (y_j - x_j)``, ``y_b = x_b``.

    With ``g_j = a_j - 1 + b_j c_j`` (``c_j`` a secant slope of the model) this is a
    Newton-like sweep (as in Parareal / ParaSolver with a linearised coarse step); at
    the fixed point ``y = x`` it is the sequential recursion bit for bit.

    Parameters
    ----------
    gain : array, shape (L, n)
        ``g_j`` per step and sample.
    Other parameters and returns as in :func:`window_update`.
    """
    xp = array_namespace(x_in)
    L, n = x_in.shape[0], x_in.shape[1]
    g = xp.reshape(gain, (L, n) + (1,) * (x_in.ndim - 2))
    y = x_in[0, ...]
    rows = []
    for j in range(L):
        y = y + d[j, ...] + g[j, ...] * (y - x_in[j, ...])
        rows.append(y)
    new = xp.stack(rows, axis=0)
    diff = new - old
    ms = xp.mean(xp.reshape(diff * diff, (L, n, -1)), axis=2)
    err = to_host(xp.max(ms, axis=1)) * np.asarray(inv_var, dtype=np.float64)
    return new, err


class ModelOutputError(ValueError):
    """A model call returned something a sampler cannot use: not an array, another
    shape than its input, complex or other non-real values, or NaN or infinity.

    Parameters
    ----------
    what : str
        What it returned and at which training timesteps (``"returned non-finite eps
        at training timesteps 4..0"``).
    model : str
        The model, as the message names it (:meth:`naming` gives another name).
    """

    def __init__(self, what: str, model: str = "the model"):
        super().__init__(f"{model} {what}")
        self.what, self.model = what, model

    def __reduce__(self):
        return type(self), (self.what, self.model)

    def naming(self, model: str) -> ModelOutputError:
        """The same error with the model called ``model``."""
        return ModelOutputError(self.what, model)


def _timesteps(t: np.ndarray) -> str:
    """``"training timestep 4"`` or ``"training timesteps 4..0"``."""
    t = np.asarray(t).ravel()
    if t.size == 1:
        return f"training timestep {int(t[0])}"
    return f"training timesteps {int(t[0])}..{int(t[-1])}"


def checked_eps(out, shape: tuple, t, xp=None, dtype=None, finite: bool = True):
    """A model's output ``out`` for rows of ``shape`` (``L n`` rows of ``L`` steps,
    step-major, at training timesteps ``t``), checked.

    Parameters
    ----------
    out : array, or a list of numbers
        What ``eps(x, t)`` returned.
    shape : tuple of int
        ``(L n, *sample_shape)``.
    t : array_like of int, shape (L,)
        The steps' training timesteps (for the message).
    xp : namespace, optional
        Where ``out`` lives (default: its own namespace); a list becomes an array of it.
    dtype : dtype, optional
        Return ``out`` in this dtype (a model may compute in float64, its parameters'
        precision: the samples keep theirs).
    finite : bool
        Also check that every value is finite (one reduction over ``out``).

    Returns
    -------
    array
        ``out``, as an array of ``xp`` in ``dtype``.

    Raises
    ------
    ModelOutputError
        When ``out`` is not an array of ``shape``, not real, or not finite (the message
        names the timesteps: of the whole call, or of the steps with a non-finite value).
    """
    t = np.asarray(t)
    if not hasattr(out, "shape"):
        if not isinstance(out, (list, tuple)):
            raise ModelOutputError(
                f"returned a {type(out).__name__}, not an array, at {_timesteps(t)}"
            )
        try:
            out = (xp or np).asarray(out)
        except (TypeError, ValueError):
            raise ModelOutputError(
                f"returned a {type(out).__name__} that is not an array, at {_timesteps(t)}"
            ) from None
    if xp is not None and not isinstance(out, (list, tuple)):
        try:
            theirs = array_namespace(out)
        except TypeError:
            theirs = None
        if theirs is not xp:  # a torch tensor for NumPy samples, say
            kind = f"{type(out).__module__.split('.')[0]}.{type(out).__name__}"
            raise ModelOutputError(
                f"returned a {kind}, not an array of the samples' library "
                f"({xp.__name__.split('.')[-1]}): convert it before returning it (torch: "
                f".detach().cpu().numpy()), at {_timesteps(t)}"
            )
    if tuple(out.shape) != tuple(shape):
        raise ModelOutputError(
            f"returned shape {tuple(out.shape)}, expected {tuple(shape)} (rows, "
            f"*sample_shape), at {_timesteps(t)}"
        )
    xp = xp or array_namespace(out)
    try:
        real = xp.isdtype(out.dtype, ("real floating", "integral"))
    except (TypeError, ValueError):  # a dtype outside the standard (strings, objects)
        real = False
    if not real:
        raise ModelOutputError(
            f"returned {out.dtype} values, expected real floating point, at {_timesteps(t)}"
        )
    if dtype is not None and out.dtype != dtype:
        out = xp.astype(out, dtype)
    if not finite:
        return out
    ok = xp.isfinite(out)
    if not bool(xp.all(ok)):
        per_step = to_host(xp.all(xp.reshape(ok, (t.size, -1)), axis=1))
        bad = np.flatnonzero(~np.asarray(per_step, dtype=bool))
        raise ModelOutputError(
            f"returned non-finite eps (NaN or infinite) at "
            f"{_timesteps(t[[bad[0], bad[-1]]] if bad.size > 1 else t[bad])}"
        )
    return out


def _model_call(eps_fn, x, steps: SamplerSteps, lo: int, hi: int, finite: bool = True):
    """Evaluate ``eps_fn`` on a stack of steps ``lo .. hi-1``: ``x`` (L, n, ...); with
    ``steps.clip`` the output is :func:`clipped_eps`'s. ``finite=False`` leaves the
    finiteness check to the caller (one that reads its values on the host anyway, or
    that checks once at the end: a check per call waits for a GPU every call).

    Raises
    ------
    ModelOutputError
        When the model returns something else than a (finite) real array of ``x``'s
        rows and sample shape.
    """
    xp = array_namespace(x)
    L, n = x.shape[0], x.shape[1]
    ts = np.asarray(steps.t[lo:hi], dtype=np.int64)
    t = xp.asarray(np.repeat(ts, n))
    flat = xp.reshape(x, (L * n, *x.shape[2:]))
    out = checked_eps(eps_fn(flat, t), flat.shape, ts, xp, x.dtype, finite=finite)
    eps = xp.reshape(out, x.shape)
    return eps if steps.clip is None else clipped_eps(x, eps, steps, lo, hi)


def clipped_eps(x, eps, steps: SamplerSteps, lo: int, hi: int):
    """The model output that makes steps ``lo .. hi-1`` clip the clean-sample
    prediction ``x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar)`` to ``[-clip, clip]``
    (diffusers' ``clip_sample``): the step ``a x + b eps + x0_coef (clip(x0_hat) -
    x0_hat)`` is ``a x + b eps'`` with ``eps' = eps + x0_coef / b (clip(x0_hat) -
    x0_hat)``, so every sampler keeps its linear form.

    Parameters
    ----------
    x, eps : arrays, shape (L, n, *sample_shape)
    steps : SamplerSteps
        With ``clip`` and ``x0_coef`` set.
    lo, hi : int
        The steps of ``x``'s rows (``hi - lo = L``).
    """
    xp = array_namespace(x)
    nd, dt = x.ndim, x.dtype
    ab = steps.abar[lo:hi]
    b = steps.b[lo:hi]
    ratio = np.where(b != 0, steps.x0_coef[lo:hi] / np.where(b != 0, b, 1.0), 0.0)
    x0 = (x - _col(xp, np.sqrt(1.0 - ab), nd, dt) * eps) / _col(xp, np.sqrt(ab), nd, dt)
    return eps + _col(xp, ratio, nd, dt) * (xp.clip(x0, min=-steps.clip, max=steps.clip) - x0)


def _step(eps_fn: Callable, steps: SamplerSteps, z, j: int, x, flags: list | None = None):
    """One sequential step ``j``: ``x_{j+1}`` from ``x_j`` (n, *sample_shape), one model
    call of ``n`` rows (one-step samplers only). With ``flags``, whether the model's
    output was finite is appended there (an array of ``x``'s namespace, not read)
    instead of checked."""
    xs = x[None, ...]
    e = _model_call(eps_fn, xs, steps, j, j + 1, finite=flags is None)
    if flags is not None:
        flags.append(array_namespace(e).all(array_namespace(e).isfinite(e)))
    return x + drift(xs, e, z[j : j + 1, ...], *_coefs(steps, j))[0, ...]


def _step_multi(eps_fn: Callable, steps: SamplerSteps, z, j: int, x, before, flags=None):
    """:func:`_step` of a multistep sampler: ``(x_{j+1}, x0_hat_j)``; ``before`` (K, n,
    ...): the predictions of steps ``j - K .. j - 1``."""
    xs = x[None, ...]
    e = _model_call(eps_fn, xs, steps, j, j + 1, finite=flags is None)
    if flags is not None:
        flags.append(array_namespace(e).all(array_namespace(e).isfinite(e)))
    x0 = _x0(xs, e, steps, j, j + 1)
    extra = _multistep(array_namespace(x), steps, j, j + 1, x0, before)
    return x + drift(xs, e, z[j : j + 1, ...], *_coefs(steps, j), extra=extra)[0, ...], x0[0]


def model_steps(eps_fn: Callable, steps: SamplerSteps, z) -> Callable:
    """Window starts from running the new slots' steps on a model: a callable for
    :func:`picard`'s ``extrapolate``.

    With the sampler's own model the starts are the sequential sampler's continuation of
    ``x_e`` (they cost ``hi - lo`` model calls in a row, so this is a bound on what any
    extrapolation can give, not a method); with a cheap draft model they are its guess.

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(x (N, *sample_shape), t (N,) int) -> (N, *sample_shape)``.
    steps : SamplerSteps
    z : array, shape (T, n, *sample_shape)
        The pre-drawn noise of the sampler's run.

    Returns
    -------
    callable
        ``guess(x (n, *sample_shape), lo, hi) -> (hi - lo, n, *sample_shape)``: the
        states after steps ``lo .. hi-1`` started from ``x`` at slot ``lo``.
    """

    def guess(x, lo: int, hi: int):
        xp = array_namespace(x)
        rows = []
        for j in range(lo, hi):
            x = _step(eps_fn, steps, z, j, x)
            rows.append(x)
        return xp.stack(rows, axis=0)

    return guess


def sequential(eps_fn: Callable, steps: SamplerSteps, x_T, z, callback: Callable | None = None):
    """The sequential sampler: ``T`` model calls of ``n`` rows each.

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(x (N, *sample_shape), t (N,) int) -> (N, *sample_shape)``.
    steps : SamplerSteps
    x_T : array, shape (n, *sample_shape)
        Start points.
    z : array, shape (T, n, *sample_shape)
        Pre-drawn standard noise.
    callback : callable, optional
        Called with the step index after every step.

    Returns
    -------
    array, shape (n, *sample_shape)
        The end of the trajectory (after step ``T - 1``): the samples.

    Raises
    ------
    ModelOutputError
        When a model call returns something else than finite real values of its input's
        shape (:func:`checked_eps`).
    """
    x = x_T
    xp = array_namespace(x)
    # the previous steps' predictions, oldest first (a multistep sampler's first steps
    # have c = 0 on the ones that do not exist)
    before = None if steps.c is None else xp.stack([x_T] * steps.c.shape[1], axis=0)
    flags: list = []  # per step, on the device: read once at the end
    for j in range(len(steps)):
        if steps.c is None:
            x = _step(eps_fn, steps, z, j, x, flags)
        else:
            x, x0 = _step_multi(eps_fn, steps, z, j, x, before, flags)
            before = xp.concat([before[1:, ...], x0[None, ...]], axis=0)
        if callback is not None:
            callback(j)
    if flags:
        ok = np.asarray(to_host(xp.stack(flags)), dtype=bool)
        if not ok.all():
            first = int(np.flatnonzero(~ok)[0])  # the later ones follow from its NaN
            t = np.asarray(steps.t[first : first + 1], dtype=np.int64)
            raise ModelOutputError(f"returned non-finite eps (NaN or infinite) at {_timesteps(t)}")
    return x


@dataclass
class PicardResult:
    """What :func:`picard` returns.

    Attributes
    ----------
    x : array, shape (n, *sample_shape)
        The samples.
    iterations : int
        Picard iterations (batched model calls), at most ``T``.
    model_evals : int
        Steps evaluated in all (sum of the window lengths), per sample.
    history : numpy.ndarray, shape (iterations, 5)
        Per iteration: window begin and end, first unconverged slot offset ``k``,
        advance, and the largest RMS change over the window in units of each slot's
        noise standard deviation (``sqrt(err)``; compare with ``tol``); see
        ``HISTORY_COLUMNS``.
    """

    x: object
    iterations: int
    model_evals: int
    history: np.ndarray = field(repr=False)


def _slot_inv_var(steps: SamplerSteps) -> np.ndarray:
    """``1 / var`` per buffer slot ``0 .. T``: slot ``s < T`` is judged by the variance of
    step ``s``; the last slot is never judged (its input converged before it)."""
    inv = np.zeros(len(steps) + 1)
    inv[:-1] = 1.0 / steps.var
    return inv


class _Anderson:
    """Triangular Anderson mixing of the unconverged part of the window (memory ``m``).

    The Picard map of a trajectory is lower triangular: slot ``i`` depends only on
    earlier slots. As in ParaTAA (Tang et al., ICML 2024), the mixing coefficients of
    slot ``i`` therefore minimise the weighted residual over the slots ``<= i`` only,
    so every slot gets its own coefficients (one set per sample, too). History entries
    are earlier iterates ``(lo, X, G)``: the iterate ``X`` at output slots
    ``lo .. lo+L-1`` and its Picard image ``G``; an entry is used for slot ``i`` only
    if its window covered ``i``. Residuals are weighted by the slots' ``1 / sigma``.
    """

    def __init__(self, memory: int, inv_var: np.ndarray, reg: float = 1e-8):
        self.memory = int(memory)
        self.w = np.sqrt(inv_var)
        self.reg = reg
        self.hist: list[tuple[int, object, object]] = []

    def push(self, lo: int, X, G) -> None:
        self.hist.append((lo, X, G))
        if len(self.hist) > self.memory:
            self.hist.pop(0)

    def mix(self, lo: int, X, G, first: int):
        """Accelerated values for the output slots ``first .. lo+L-1`` of the window
        starting at ``lo``; returns ``(first, values)`` or None."""
        end = lo + X.shape[0]
        if not self.hist or first >= end:
            return None
        xp = array_namespace(X)
        S, n = end - first, X.shape[1]
        w = _col(xp, self.w[first:end, ...], X.ndim, X.dtype)
        g = G[first - lo :, ...]
        f = (g - X[first - lo :, ...]) * w
        dF, dG, cover = [], [], []
        for h_lo, h_X, h_G in self.hist:
            h_end = min(h_lo + h_X.shape[0], end)
            c = max(h_end - first, 0)  # slots of the target this entry covers
            if c == 0:
                continue
            hg = h_G[first - h_lo : h_end - h_lo, ...]
            pad = xp.zeros((S - c, *X.shape[1:]), dtype=X.dtype)
            dF.append(
                xp.concat(
                    [f[:c, ...] - (hg - h_X[first - h_lo : h_end - h_lo, ...]) * w[:c, ...], pad]
                )
            )
            dG.append(xp.concat([g[:c, ...] - hg, pad]))
            cover.append(c)
        if not dF:
            return None
        m = len(dF)
        # (S, n, m, E) stacks of the difference vectors; per-slot Gram and right side
        A = xp.stack([xp.reshape(a, (S, n, -1)) for a in dF], axis=2)
        fv = f
        if A.dtype != xp.float64:  # the small systems in float64, whatever the samples' type
            A, fv = xp.astype(A, xp.float64), xp.astype(f, xp.float64)
        gram = np.cumsum(to_host(A @ xp.matrix_transpose(A)), axis=0)  # (S, n, m, m)
        rhs = np.cumsum(to_host(A @ xp.reshape(fv, (S, n, -1, 1)))[..., 0], axis=0)
        gamma = np.zeros((S, n, m))
        cover_a = np.asarray(cover)
        cuts = sorted({0, S, *(c for c in cover if c < S)})
        for s0, s1 in zip(cuts[:-1], cuts[1:], strict=False):
            idx = np.flatnonzero(cover_a > s0)  # entries whose window covered these slots
            if idx.size == 0:
                continue
            G_ = gram[s0:s1][:, :, idx[:, None], idx[None, :]]
            scale = np.trace(G_, axis1=2, axis2=3)[..., None, None] / idx.size
            G_ = G_ + (self.reg * scale + 1e-300) * np.eye(idx.size)
            part = np.zeros((s1 - s0, n, m))
            part[..., idx] = np.linalg.solve(G_, rhs[s0:s1][:, :, idx, None])[..., 0]
            gamma[s0:s1] = part
        out = g
        gam = xp.asarray(gamma, dtype=X.dtype)
        for i in range(m):
            gi = xp.reshape(gam[:, :, i], (S, n) + (1,) * (X.ndim - 2))
            out = out - gi * dG[i]
        return first, out


def _guess(extrapolate: Callable, xp, x, lo: int, hi: int):
    """``extrapolate(x, lo, hi)`` checked for its shape and taken in ``x``'s namespace and
    dtype; ``x`` (a slot of the buffer) is passed as a copy."""
    guess = extrapolate(xp.asarray(x, copy=True), lo, hi)
    if tuple(guess.shape) != (hi - lo, *x.shape):
        raise ValueError(
            f"extrapolate(x, {lo}, {hi}) returned shape {tuple(guess.shape)}, "
            f"expected {(hi - lo, *x.shape)}"
        )
    return xp.asarray(guess, dtype=x.dtype)


def _c_array(xp, shape, dtype, values):
    """A new C-contiguous array of ``shape`` holding ``values`` (broadcast): the same
    memory layout whatever the layout of ``values``."""
    out = xp.zeros(shape, dtype=dtype)
    out[...] = values
    return out


def _coefs(steps: SamplerSteps, j: int):
    sl = slice(j, j + 1)
    return steps.a[sl], steps.b[sl], steps.sigma[sl]


def picard(
    eps_fn: Callable,
    steps: SamplerSteps,
    x_T,
    z,
    window: int,
    tol: float,
    anderson: int = 0,
    extrapolate: bool | Callable = False,
    secant: bool = False,
    guard: bool = False,
    callback: Callable | None = None,
    checkpoint: Callable | None = None,
    checkpoint_every: int = 0,
    state: dict | None = None,
) -> PicardResult:
    """Sliding-window Picard iteration (ParaDiGMS), plain or accelerated.

    Each iteration evaluates the model once on the ``L <= window`` steps of the window
    ``[b, e)`` for all ``n`` samples (``L n`` rows), updates the output slots by a
    cumulative sum of drifts, finds the first slot whose RMS change exceeds ``tol``
    times its noise standard deviation (max over samples), and slides the window past
    the converged prefix (always at least one step, so at most ``T`` iterations; with
    ``window = 1`` this is the sequential sampler, bit for bit).

    Parameters
    ----------
    eps_fn : callable
        ``eps_fn(x (N, *sample_shape), t (N,) int) -> (N, *sample_shape)``; called once
        per iteration with ``N = L n``.
    steps : SamplerSteps
    x_T : array, shape (n, *sample_shape)
    z : array, shape (T, n, *sample_shape)
        The same pre-drawn noise the sequential sampler uses.
    window : int
        Window size ``p`` (>= 1).
    tol : float
        Tolerance relative to the noise standard deviation (> 0).
    anderson : int
        Triangular Anderson memory ``m`` (0: off). The converged prefix always takes the
        unmixed values, so the stopping rule and its guarantee are unchanged; only the
        guesses of the unconverged slots are extrapolated.
    extrapolate : bool or callable
        Start the slots a window slides onto by running their steps (with the true noise)
        on a local Gaussian model of the data fitted to the newest model output and, with
        ``secant``, to the newest secant slope, instead of copying ``x_e``
        (:func:`_extrapolate`; without ``secant`` the model holds the clean-sample
        prediction fixed). A callable ``guess(x, lo, hi)`` gives the starts instead, those
        of the first window included: the states of slots ``lo+1 .. hi`` from ``x``
        (n, *sample_shape) at slot ``lo``, an array (hi - lo, n, *sample_shape) (e.g.
        :func:`model_steps` of a draft model); it is taken in the samples' dtype.
    secant : bool
        Propagate input changes through the window with a linear model of each step
        (:func:`window_update_linearised`, slopes from the last two evaluations of a
        step; a step evaluated for the first time takes the slope of the local Gaussian
        model, :func:`_data_spread`) instead of the plain cumulative sum.
        ``extrapolate`` and ``secant`` make the accelerated variant; none of the three
        costs extra model calls.
    guard : bool
        Scale each slot's change by how much the steps ahead in the window may amplify
        it before the test against ``tol`` (:mod:`.guard`; no extra model calls): a slot
        whose small error the next steps would blow up is not accepted yet.
    callback : callable, optional
        ``callback(iteration, begin, end)`` after every iteration.
    checkpoint : callable, optional
        ``checkpoint(state)`` every ``checkpoint_every`` iterations with the state dict
        to pass back as ``state`` (arrays are live: copy or write them at once). Not
        called with Anderson mixing, whose history is not part of the state.
    checkpoint_every : int
        Iterations between checkpoints (0: none).
    state : dict, optional
        A state saved by ``checkpoint``: continue from there. The result is the one an
        uninterrupted call returns, bit for bit.

    Returns
    -------
    PicardResult

    Raises
    ------
    ModelOutputError
        When a model call returns something else than finite real values of its input's
        shape (:func:`checked_eps`).
    """
    if window < 1 or tol <= 0:
        raise ValueError("window must be >= 1 and tol > 0")
    multi = steps.c is not None
    if multi and (anderson or extrapolate or secant):
        raise ValueError(
            f"{steps.kind} (a multistep sampler) runs plain Picard: no secant, extrapolate "
            "or anderson (the guard is fine)"
        )
    if z.dtype != x_T.dtype:
        raise ValueError(f"z and x_T must have the same dtype (got {z.dtype} and {x_T.dtype})")
    xp = array_namespace(x_T)
    T = len(steps)
    inv_var = _slot_inv_var(steps)
    # Every state array is allocated C-contiguous and filled in place, fresh or restored:
    # a copy of a broadcast view (``asarray(broadcast_to(..), copy=True)`` keeps the
    # zero-stride axis innermost) or of an array of another layout would make the
    # reductions below (mean/sum over a sample's features) add in another order than on
    # a resumed run, whose state comes back C-ordered: other bits of ``max_error`` and
    # of the secant slopes.
    buf = _c_array(xp, (T + 1, *x_T.shape), x_T.dtype, x_T[None, ...])
    acc = _Anderson(anderson, inv_var) if anderson > 0 else None
    b, e = 0, min(window, T)
    it = evals = 0
    hist = []
    # the local Gaussian model's data variance per sample (0: a point; stays 0 without
    # secant slopes)
    s2 = xp.zeros(x_T.shape[:1], dtype=x_T.dtype)
    loglam = np.full((T, x_T.shape[0]), np.nan) if guard else None
    # a multistep sampler's fixed point is over (x_j, x0_hat_{j-1}, ..., x0_hat_{j-K}):
    # the newest prediction of every step, the steps' before the window for its first
    x0_last = xp.zeros((T, *x_T.shape), dtype=x_T.dtype) if multi else None
    if secant or guard:
        seen_x = xp.zeros((T, *x_T.shape), dtype=x_T.dtype)
        seen_eps = xp.zeros((T, *x_T.shape), dtype=x_T.dtype)
        seen = np.zeros(T, dtype=bool)
    if state is not None:
        buf = _c_array(xp, (T + 1, *x_T.shape), x_T.dtype, xp.asarray(state["buf"]))
        b, e, it, evals = (int(state[k]) for k in ("b", "e", "it", "evals"))
        hist = [tuple(r) for r in np.asarray(state["hist"]).reshape(-1, 5).tolist()]
        if secant or guard:
            seen_x = _c_array(xp, (T, *x_T.shape), x_T.dtype, xp.asarray(state["seen_x"]))
            seen_eps = _c_array(xp, (T, *x_T.shape), x_T.dtype, xp.asarray(state["seen_eps"]))
            seen = np.asarray(state["seen"], dtype=bool).copy()
            if "s2" in state:  # absent in a state saved before it was kept
                s2 = _c_array(xp, x_T.shape[:1], x_T.dtype, xp.asarray(state["s2"]))
        if guard:
            loglam = np.array(state["loglam"], dtype=np.float64).reshape(T, -1)
        if multi:
            x0_last = _c_array(xp, (T, *x_T.shape), x_T.dtype, xp.asarray(state["x0_last"]))
    elif callable(extrapolate):  # a fresh start: the first window's slots too
        buf[1 : e + 1, ...] = _guess(extrapolate, xp, buf[0, ...], 0, e)
    save = checkpoint is not None and checkpoint_every > 0 and acc is None
    while b < T:
        L = e - b
        x_in = buf[b:e, ...]
        old = xp.asarray(buf[b + 1 : e + 1, ...], copy=True)
        eps = _model_call(eps_fn, x_in, steps, b, e, finite=False)  # err tells, below
        if extrapolate and not callable(extrapolate):
            # x_in is a view of buf: keep the last input before the update
            x_last = xp.asarray(x_in[-1, ...], copy=True)
        extra = None
        if multi:
            x0 = _x0(x_in, eps, steps, b, e)
            before = _before(xp, x0_last, b, steps.c.shape[1])
            extra = _multistep(xp, steps, b, e, x0, before)
            x0_last[b:e, ...] = x0
        d = drift(x_in, eps, z[b:e, ...], steps.a[b:e], steps.b[b:e], steps.sigma[b:e], extra)
        if guard:  # before the secant update overwrites the previous evaluations
            idx = np.flatnonzero(seen[b:e])
            if idx.size:
                ix = xp.asarray(idx)
                dx = xp.take(x_in, ix, axis=0) - xp.take(seen_x, ix + b, axis=0)
                de = xp.take(eps, ix, axis=0) - xp.take(seen_eps, ix + b, axis=0)
                loglam[b + idx] = step_expansion(dx, de, steps.a[b + idx], steps.b[b + idx])
            if not secant:
                seen_x[b:e, ...], seen_eps[b:e, ...] = x_in, eps
                seen[b:e] = True
        if secant:
            gain = _secant_gain(x_in, eps, seen_x[b:e, ...], seen_eps[b:e, ...], seen[b:e])
            s2 = _data_spread(gain, seen[b:e], steps.abar[b:e], s2)
            gain = _fill_unseen(gain, seen[b:e], steps.abar[b:e], s2)
            dt = x_T.dtype
            gain = gain * _col(xp, steps.b[b:e], 2, dt) + _col(xp, steps.a[b:e] - 1.0, 2, dt)
            seen_x[b:e, ...], seen_eps[b:e, ...] = x_in, eps
            seen[b:e] = True
            new, err = window_update_linearised(x_in, old, d, gain, inv_var[b + 1 : e + 1])
        else:
            new, err = window_update(x_in, old, d, inv_var[b + 1 : e + 1])
        if guard:
            diff = xp.reshape(new - old, (L, x_T.shape[0], -1))
            ms = np.asarray(to_host(xp.mean(diff * diff, axis=2)), dtype=np.float64)
            G = lookahead(loglam, b, L)
            err = np.max(ms * G * G, axis=1) * inv_var[b + 1 : e + 1]
        if not np.all(np.isfinite(err)):  # a NaN would pass the test below
            checked_eps(eps, eps.shape, steps.t[b:e], xp)  # names the model's steps
            raise ModelOutputError(
                f"gave finite eps, but the samples became non-finite at steps {b}..{e - 1}"
            )
        bad = np.flatnonzero(err > tol**2)
        k = int(bad[0]) if bad.size else L
        advance = min(k + 1, window)
        buf[b + 1 : e + 1, ...] = new
        if acc is not None:
            mixed = acc.mix(b + 1, old, new, b + k + 2) if k + 1 < L else None
            acc.push(b + 1, old, new)
            if mixed is not None:
                first, vals = mixed
                buf[first : first + vals.shape[0], ...] = vals
        it += 1
        evals += L
        b2 = min(b + advance, T)
        hist.append((b, e, k, b2 - b, float(np.sqrt(err.max()))))  # the last window: what is left
        e2 = min(b2 + window, T)
        if e2 > e and callable(extrapolate):
            buf[e + 1 : e2 + 1, ...] = _guess(extrapolate, xp, buf[e, ...], e, e2)
        elif e2 > e and extrapolate:
            buf[e + 1 : e2 + 1, ...] = _extrapolate(
                buf[e, ...], x_last, eps[-1, ...], float(steps.abar[e - 1]), s2, z, steps, e, e2
            )
        elif e2 > e:
            buf[e + 1 : e2 + 1, ...] = xp.broadcast_to(
                buf[e, ...][None, ...], (e2 - e, *x_T.shape)
            )
        b, e = b2, e2
        if save and b < T and it % checkpoint_every == 0:
            snap = {"buf": buf, "b": b, "e": e, "it": it, "evals": evals}
            snap["hist"] = np.asarray(hist, dtype=np.float64).reshape(-1, 5)
            if secant or guard:
                snap.update(seen_x=seen_x, seen_eps=seen_eps, seen=seen, s2=s2)
            if guard:
                snap["loglam"] = loglam
            if multi:
                snap["x0_last"] = x0_last
            checkpoint(snap)
        if callback is not None:
            callback(it, b, e)
    return PicardResult(buf[T, ...], it, evals, np.asarray(hist, dtype=np.float64).reshape(-1, 5))
