"""Fitting the MLP denoiser of :class:`tilegraph.tasks.picard.models.MLPDenoiser`.

The network learns ``eps`` from ``(x_t, time_features(t))`` with ``x_t = sqrt(abar_t)
x0 + sqrt(1 - abar_t) eps`` for uniformly drawn ``t`` (the DDPM "simple" loss), using
scikit-learn's ``MLPRegressor`` (Adam, ReLU) with fresh noise every epoch.
"""

from __future__ import annotations

import warnings

import numpy as np

from .models import MLPDenoiser, time_features


def noised_pairs(data: np.ndarray, abar: np.ndarray, rng: np.random.Generator, n_freq: int = 8):
    """One epoch of training pairs.

    Parameters
    ----------
    data : numpy.ndarray, shape (N, D)
        Clean samples, scaled to about [-1, 1].
    abar : numpy.ndarray, shape (T_train,)
    rng : numpy.random.Generator

    Returns
    -------
    inputs : numpy.ndarray, shape (N, D + 2 n_freq)
    targets : numpy.ndarray, shape (N, D)
        The noise that was added.
    """
    n = data.shape[0]
    t = rng.integers(0, abar.shape[0], size=n)
    eps = rng.standard_normal(data.shape)
    ab = abar[t][:, None]
    x_t = np.sqrt(ab) * data + np.sqrt(1.0 - ab) * eps
    feats = np.asarray(time_features(t, abar.shape[0], n_freq))
    return np.concatenate([x_t, feats], axis=1), eps


def train_denoiser(
    data: np.ndarray,
    abar: np.ndarray,
    hidden=(256, 256),
    epochs: int = 20,
    repeats: int = 4,
    seed: int = 0,
    sample_shape=None,
    n_freq: int = 8,
    learning_rate: float = 1e-3,
) -> tuple[MLPDenoiser, list[float]]:
    """Train a denoiser on ``data``.

    Parameters
    ----------
    data : numpy.ndarray, shape (N, D)
    abar : numpy.ndarray, shape (T_train,)
    hidden : sequence of int
        Hidden layer widths.
    epochs : int
        Passes; each draws fresh timesteps and noise for ``repeats`` copies of the data.
    repeats : int
        Noised copies of every sample per epoch.
    seed : int
        Seeds the noise and the network initialisation.
    sample_shape : tuple of int, optional
        Shape of one sample (default ``(D,)``).

    Returns
    -------
    model : MLPDenoiser
    losses : list of float
        Mean squared error of the noise prediction after each epoch.
    """
    from sklearn.neural_network import MLPRegressor

    data = np.asarray(data, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    reg = MLPRegressor(
        hidden_layer_sizes=tuple(int(h) for h in hidden),
        activation="relu",
        solver="adam",
        learning_rate_init=learning_rate,
        batch_size=256,
        random_state=int(seed),
    )
    losses = []
    big = np.concatenate([data] * int(repeats))
    for _ in range(int(epochs)):
        X, Y = noised_pairs(big, abar, rng, n_freq)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.partial_fit(X, Y)
        losses.append(float(reg.loss_) * 2.0)  # sklearn's squared loss is MSE / 2
    shape = tuple(sample_shape) if sample_shape is not None else (data.shape[1],)
    model = MLPDenoiser(reg.coefs_, reg.intercepts_, abar.shape[0], shape, n_freq)
    return model, losses
