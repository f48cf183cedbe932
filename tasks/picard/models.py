"""The model interface and two models that need no downloaded weights.

A diffusion model here is anything with a method ``eps(x, t)``: given noised samples
``x`` of shape ``(N, *sample_shape)`` and their integer training timesteps ``t`` of
shape ``(N,)``, return the predicted noise, shape of ``x``. Rows are independent, so a
sampler may evaluate many steps and many samples in one batched call. A user's own
network becomes a model by wrapping its forward pass in such a method (see
:class:`DiffusionModel`).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np
from array_api_compat import array_namespace


@runtime_checkable
class DiffusionModel(Protocol):
    """What the samplers call: the noise prediction ``eps(x, t)``.

    Parameters of ``eps``
    ---------------------
    x : array, shape (N, *sample_shape)
        Noised samples, any array-API namespace (NumPy, CuPy, ...).
    t : array of int, shape (N,)
        Training timestep of each row, ``0 <= t < T_train``.

    Returns
    -------
    array, shape (N, *sample_shape)
        Predicted noise in the namespace of ``x``.
    """

    def eps(self, x, t): ...


def _owned(value) -> np.ndarray:
    """A fresh, C-contiguous, read-only float64 NumPy copy of ``value``.

    Models keep their parameters in such copies, never in the caller's buffer: an array
    unpickled by Dask or Ray can sit at any byte offset of the message, and NumPy's
    ``matmul`` takes its own (non-BLAS) loop on an operand that is not aligned, which
    rounds differently from BLAS on large calls. A replica built from a deserialised
    spec would then predict other bits than one built in-process.

    Read-only, because a model derives values from its parameters once (and keeps copies
    on other devices): a parameter changed in place would leave those stale. (The models
    expose their parameters as properties without setters, so they cannot be rebound
    either.)
    """
    out = np.array(value, dtype=np.float64, order="C", copy=True)
    out.flags.writeable = False
    return out


#: log-responsibility (relative to the largest) below which a component counts as 0
_NEGLIGIBLE_LOGIT = -50.0


def _on(xp, cache: dict, name: str, value: np.ndarray, dtype=None):
    """``value`` as an array of namespace ``xp`` and floating type ``dtype`` (the
    input's, so that float32 samples are evaluated in float32; converted once per
    namespace and dtype)."""
    key = (name, xp.__name__, str(dtype))
    if key not in cache:
        cache[key] = xp.asarray(value, dtype=dtype)
    return cache[key]


class GaussianMixture:
    """The exact noise prediction for data ``x0 ~ sum_k w_k N(mu_k, s^2 I)``.

    The noised marginal at ``abar`` is ``sum_k w_k N(sqrt(abar) mu_k, v I)`` with
    ``v = abar s^2 + 1 - abar`` and ``eps*(x, t) = sqrt(1 - abar) sum_k r_k(x)
    (x - sqrt(abar) mu_k) / v``, ``r_k`` the posterior responsibilities.

    Parameters
    ----------
    means : array_like, shape (K, D)
    weights : array_like, shape (K,)
        Positive, summing to 1.
    spread : float
        Component standard deviation ``s`` (> 0).
    abar : array_like, shape (T_train,)
        ``alphas_cumprod`` of the training schedule.
    """

    def __init__(self, means, weights, spread: float, abar):
        self._means = _owned(means)
        self._weights = _owned(weights)
        self._spread = float(spread)
        self._abar = _owned(abar)
        if self.means.ndim != 2 or self.weights.shape != (self.means.shape[0],):
            raise ValueError("means must be (K, D) and weights (K,)")
        if not np.isclose(self.weights.sum(), 1.0) or np.any(self.weights <= 0):
            raise ValueError("weights must be positive and sum to 1")
        # computed once: |mu_k|^2 alone costs a pass over all K D means
        self._logw = _owned(np.log(self.weights))
        self._mu2 = _owned((self.means**2).sum(axis=1))
        self._cache: dict = {}

    @classmethod
    def random(cls, dim, components, spread, abar, mean_scale=1.0, seed=0, weights=None):
        """Means drawn from ``N(0, mean_scale^2 I)`` with a seeded generator; weights
        ``1, 2, .., K`` normalised unless given."""
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        means = mean_scale * rng.standard_normal((components, dim))
        if weights is None:
            weights = np.arange(1, components + 1, dtype=np.float64)
            weights /= weights.sum()
        return cls(means, weights, spread, abar)

    # read-only: the values derived from them (|mu_k|^2, log w, device copies) stay valid
    @property
    def means(self) -> np.ndarray:
        """Component means, shape (K, D), read-only."""
        return self._means

    @property
    def weights(self) -> np.ndarray:
        """Component weights, shape (K,), read-only."""
        return self._weights

    @property
    def spread(self) -> float:
        """Component standard deviation ``s``."""
        return self._spread

    @property
    def abar(self) -> np.ndarray:
        """``alphas_cumprod`` of the training schedule, shape (T_train,), read-only."""
        return self._abar

    @property
    def dim(self) -> int:
        """Sample dimension ``D``."""
        return int(self.means.shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(D,)``."""
        return (self.dim,)

    def mean(self) -> np.ndarray:
        """Mixture mean, shape (D,)."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """Mixture covariance ``s^2 I + sum_k w_k mu_k mu_k^T - m m^T``, shape (D, D)."""
        m = self.mean()
        second = (self.means.T * self.weights) @ self.means
        return self.spread**2 * np.eye(self.dim) + second - np.outer(m, m)

    def responsibilities(self, x, abar=1.0):
        """Posterior component probabilities of rows ``x`` (N, D) under the mixture
        noised at ``abar`` (1: the clean data), shape (N, K), NumPy."""
        x = np.asarray(x, dtype=np.float64)
        v = abar * self.spread**2 + 1.0 - abar
        d2 = ((x[:, None, :] - math.sqrt(abar) * self.means[None]) ** 2).sum(-1)
        logit = np.log(self.weights) - d2 / (2 * v)
        logit -= logit.max(axis=1, keepdims=True)
        r = np.exp(logit)
        return r / r.sum(axis=1, keepdims=True)

    def sample(self, n: int, seed=0) -> tuple[np.ndarray, np.ndarray]:
        """Exact draws from the clean mixture: ``(x (n, D), component (n,))``."""
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        k = rng.choice(self.weights.shape[0], size=n, p=self.weights)
        return self.means[k] + self.spread * rng.standard_normal((n, self.dim)), k

    def eps(self, x, t):
        """Exact ``eps*(x, t)``; ``x`` (N, D), ``t`` (N,) int, result (N, D)."""
        xp = array_namespace(x)
        dt = x.dtype
        mu = _on(xp, self._cache, "means", self.means, dt)
        ab = xp.take(_on(xp, self._cache, "abar", self.abar, dt), t)
        logw = _on(xp, self._cache, "logw", self._logw, dt)
        mu2 = _on(xp, self._cache, "mu2", self._mu2, dt)
        v = ab * self.spread**2 + 1.0 - ab  # (N,)
        sab = xp.sqrt(ab)
        # log r_k = log w_k - |x - sqrt(ab) mu_k|^2 / (2 v) + const(x)
        cross = x @ xp.matrix_transpose(mu)  # (N, K)
        logit = logw + (sab[:, None] * cross - 0.5 * ab[:, None] * mu2) / v[:, None]
        logit = logit - xp.max(logit, axis=1, keepdims=True)
        # Components e^50 below the best one are below float64 rounding of the
        # normaliser (>= 1): they are set to exactly 0 instead of to the subnormals exp
        # returns there, which made r @ mu (and exp) 2-4x slower at small t.
        keep = xp.astype(logit > _NEGLIGIBLE_LOGIT, logit.dtype)
        r = xp.exp(xp.maximum(logit, _NEGLIGIBLE_LOGIT)) * keep
        r = r / xp.sum(r, axis=1, keepdims=True)
        mean = sab[:, None] * (r @ mu)
        return (xp.sqrt(1.0 - ab) / v)[:, None] * (x - mean)


def time_features(t, train_steps: int, n_freq: int = 8):
    """Sinusoidal features of the timestep, shape ``(N, 2 n_freq)`` in the namespace of
    ``t``: ``sin`` and ``cos`` of ``pi 2^j t / T_train`` for ``j = 0 .. n_freq - 1``
    (``2^j`` capped so the finest period is a few timesteps)."""
    xp = array_namespace(t)
    u = xp.astype(t, xp.float64) / float(train_steps)
    freqs = xp.asarray(
        [math.pi * min(2.0**j, train_steps / 4) for j in range(n_freq)], dtype=xp.float64
    )
    arg = u[:, None] * freqs[None, :]
    return xp.concat([xp.sin(arg), xp.cos(arg)], axis=1)


class MLPDenoiser:
    """A fully connected ReLU network ``[x, time_features(t)] -> eps``.

    The forward pass is array-API code, so the same weights run on NumPy and CuPy.

    Parameters
    ----------
    weights : list of array_like
        Layer matrices, ``weights[i]`` of shape ``(n_in_i, n_out_i)``; the first takes
        ``D + 2 n_freq`` inputs, the last returns ``D`` outputs.
    biases : list of array_like
        ``biases[i]`` of shape ``(n_out_i,)``.
    train_steps : int
        ``T_train`` of the schedule the network was trained on.
    sample_shape : tuple of int
        Shape of one sample (``(64,)`` or ``(8, 8)`` for digits); flattened inside.
    n_freq : int
        Number of time frequencies (see :func:`time_features`).
    """

    def __init__(self, weights, biases, train_steps: int, sample_shape, n_freq: int = 8):
        self._weights = tuple(_owned(w) for w in weights)
        self._biases = tuple(_owned(b) for b in biases)
        self.train_steps = int(train_steps)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.n_freq = int(n_freq)
        dim = math.prod(self.sample_shape)
        if self.weights[0].shape[0] != dim + 2 * self.n_freq or self.weights[-1].shape[1] != dim:
            raise ValueError("layer shapes do not match sample_shape and n_freq")
        self._cache: dict = {}

    @property
    def weights(self) -> tuple[np.ndarray, ...]:
        """Layer matrices, read-only (their device copies stay valid)."""
        return self._weights

    @property
    def biases(self) -> tuple[np.ndarray, ...]:
        """Layer biases, read-only."""
        return self._biases

    @property
    def dim(self) -> int:
        """Flattened sample size ``D``."""
        return math.prod(self.sample_shape)

    def eps(self, x, t):
        """Predicted noise; ``x`` (N, *sample_shape), ``t`` (N,) int, result like ``x``."""
        xp = array_namespace(x)
        n = x.shape[0]
        dt = x.dtype
        tf = xp.astype(time_features(t, self.train_steps, self.n_freq), dt)
        h = xp.concat([xp.reshape(x, (n, self.dim)), tf], axis=1)
        last = len(self.weights) - 1
        for i in range(len(self.weights)):
            w = _on(xp, self._cache, f"w{i}", self.weights[i], dt)
            b = _on(xp, self._cache, f"b{i}", self.biases[i], dt)
            h = h @ w + b
            if i < last:
                h = xp.maximum(h, 0.0)
        return xp.reshape(h, x.shape)
