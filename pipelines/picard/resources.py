"""Memory and store size of a ``picard`` run, estimated from its config.

One batch of ``n = batch_size`` samples of ``D`` values each (``gmm.dim``; 64 for
``digits``) over ``T = steps`` steps, ``e`` bytes a value (``dtype``):

* the batch's pre-drawn noise ``z`` (``T n D``, drawn in float64, then a copy in
  ``dtype``), the trajectory buffer (``(T + 1) n D``), with ``accelerate`` or ``guard``
  the last inputs and outputs of every step (``2 T n D``) and with a multistep sampler
  (``dpmpp2m``, ``unipc``) every step's newest clean-sample prediction (``T n D``):
  the largest items;
* per Picard iteration a window of ``L <= window`` steps: the old outputs, the model
  output and its pieces, the drifts and the cumulative sum (about ``9 L n D``), and with
  ``anderson_memory = m`` the ``2 m`` stored window iterates and their difference stacks
  (about ``7 m L n D``);
* the model: the mixture's means (``components x D``) or the MLP's layers (training:
  weights, gradients and Adam moments, and the noised copies of the data), and one model
  call's activations.

With ``parallel=window`` the driver runs the batches one after another and the workers
only evaluate pieces of a window (``window / eval_parts`` steps of ``n`` rows each);
with ``parallel=batch`` each worker runs whole batches and the driver holds only the
results. The store holds the samples (and the sequential ones; with a latent-diffusion
directory's autoencoder also both decoded into images), per-batch numbers,
``5 x batches x T`` history values and, with ``checkpoint_s`` set, up to two mid-batch
checkpoints (the buffer and those per-step arrays; deleted at the end of the run).
``model=custom``: ``D`` is the size of the model's own ``sample_shape`` (the preflight
builds the model once on the driver,
:func:`~tilegraph.pipelines.picard.preflight.custom_sample_shape`); its parameters and
activations are the user's and not counted.

Only array memory is estimated (what grows with the config): the Python process with
its imported modules comes on top.
"""

from __future__ import annotations

import math

from ..base import Estimate

#: Bytes of a float64.
F8 = 8
#: Rows of the digits data set (scikit-learn's 8x8 digits), values per row and the two
#: sides of the time features.
DIGITS_ROWS, DIGITS_D, TIME_FEATURES = 1797, 64, 16
#: Every estimate is capped here (1 ZiB): sizes beyond are refused anyway.
CAP = 2**70


def _cap(n: float) -> int:
    return int(min(max(n, 0), CAP))


def _mlp_layers(cfg) -> list[tuple[int, int]]:
    widths = [DIGITS_D + TIME_FEATURES, *cfg.digits.hidden, DIGITS_D]
    return list(zip(widths[:-1], widths[1:], strict=True))


def _model_bytes(cfg, D: int, rows: int, e: int) -> tuple[int, int, int]:
    """``(parameters, one call on rows, training)`` bytes of the model."""
    if cfg.model == "digits":
        layers = _mlp_layers(cfg)
        params = F8 * sum(a * b + b for a, b in layers)
        acts = e * rows * (2 * sum(b for _, b in layers) + D + TIME_FEATURES)
        data = F8 * DIGITS_ROWS * cfg.digits.repeats * (2 * D + TIME_FEATURES) * 3
        batch = F8 * 256 * 3 * sum(b for _, b in layers)  # sklearn's minibatch of 256
        train = 0 if cfg.digits.weights_from else 5 * params + data + batch
        return params, acts, train
    K = cfg.gmm.components if cfg.model == "gmm" else 1
    params = 2 * F8 * K * D  # the means and a copy in the samples' dtype
    acts = e * rows * (5 * K + 4 * D)  # logits, responsibilities; r @ mu, x - mean
    return params, acts, 0


def _sample_size(cfg) -> int:
    if cfg.model == "diffusers":
        from .diffusers_dir import read_pipeline_dir, sample_shape

        c, h, w = sample_shape(read_pipeline_dir(cfg.diffusers.path)["unet"])
        return c * h * w
    if cfg.model == "custom":
        from .preflight import custom_sample_shape

        return math.prod(custom_sample_shape(cfg))
    return DIGITS_D if cfg.model in ("digits", "digits-unet") else cfg.gmm.dim


def _image_size(cfg) -> int:
    """Values of one decoded image (a latent-diffusion directory's autoencoder), or 0."""
    decoder = cfg.decoder()
    if decoder is None:
        return 0
    from .diffusers_dir import decoded_shape

    return math.prod(decoded_shape(cfg.diffusers.path, decoder[0]))


def _history_values(cfg) -> int:
    """Samples-sized arrays per step that a batch's Picard keeps besides its buffer
    (and saves in a checkpoint): the secant's or the guard's last inputs and model
    outputs, and a multistep sampler's newest predictions."""
    from .config import MULTISTEP_SAMPLERS

    seen = 2 if cfg.accelerate or cfg.guard else 0
    return cfg.steps * (seen + (1 if cfg.sampler in MULTISTEP_SAMPLERS else 0))


def _batch_bytes(cfg, D: int, e: int) -> int:
    """Peak of one batch's sampling where it runs (driver in window mode)."""
    n, T, p = cfg.batch_size, cfg.steps, cfg.window
    row = n * D
    noise = T * row * (F8 + e)  # z in float64 and its copy in dtype
    kept = (T + 1) * row * e + T * row * e  # the buffer and z
    kept += _history_values(cfg) * row * e
    window = 9 * p * row * e
    if cfg.anderson_memory:
        window += 7 * cfg.anderson_memory * p * row * max(e, F8)
    if cfg.checkpoint_s is not None:
        window += (T + 1) * row * e  # the checkpoint's copy while it is written
    sequential = 6 * row * F8 if cfg.compare_sequential else 0
    return max(noise + row * F8, kept + window + sequential)


def estimate(cfg, workers: int) -> Estimate:
    """Peak memory of the driver and of one worker, and the store size, of a run.

    Parameters
    ----------
    cfg : PicardConfig
    workers : int
        Workers holding a model replica each (at least 1).

    Returns
    -------
    Estimate
        Bytes of array memory; ``field`` is ``batch_size`` (``digits.hidden`` where the
        network's training dominates), ``alternative`` the other knob that sets the size
        (``steps``, ``window``, ``anderson_memory``) or ``dtype=float32``.
    """
    D = _sample_size(cfg)
    img = _image_size(cfg)  # decoded images: a batch's latents and images where decoded
    copies = 2 if cfg.compare_sequential else 1
    e = 4 if cfg.dtype == "float32" else F8
    n, T, p = cfg.batch_size, cfg.steps, cfg.window
    replicas = max(1, int(workers))
    # one model call: a piece of ceil(L / eval_parts) steps of n rows
    rows = -(-p // min(cfg.eval_parts, p)) * n
    params, acts, train = _model_bytes(cfg, D, rows, e)
    batch = _batch_bytes(cfg, D, e)

    # results on the driver: the samples read back, the figure's reference draw and the
    # mixture's covariance and eigenvectors (gmm), the per-batch numbers
    plot = F8 * cfg.n_samples * (D + copies * img)
    if cfg.model == "gmm":
        plot += F8 * (4 * D * D + 2 * max(2000, cfg.n_samples) * D)
    spec = params  # the model's parameters in the spec (the replicas' copies apart)
    if cfg.parallel == "window":
        driver = spec + max(batch, plot)
        # a replica: its parameters, one call's activations, and the inputs and outputs
        # of the window's pieces it is given (piece k goes to replica k mod replicas)
        pieces = -(-min(cfg.eval_parts, p) // replicas)
        worker = params + acts + 2 * pieces * rows * D * e
        if cfg.compare_sequential:  # the first replica runs it: it is sent the noise
            worker = max(worker, params + T * n * D * e + 6 * n * D * F8)
    else:
        driver = spec + plot
        # a replica runs whole batches, one at a time, the model calls inside them
        worker = params + acts + batch
    worker = max(worker, train)  # the digits network is trained as one task
    if img:  # a batch decoded (the first replica, or its own)
        worker += F8 * n * (D + img)

    # -- the store -----------------------------------------------------------------
    nb = cfg.n_batches
    samples = F8 * nb * n * (D + img) * copies  # whole chunks
    history = F8 * 5 * nb * T + F8 * 5 * nb
    checkpoints = 0
    if cfg.checkpoint_s is not None and cfg.parallel == "window":
        per = (T + 1 + _history_values(cfg)) * n * D * e
        checkpoints = 2 * per
    weights = 0
    if cfg.model == "digits" and not cfg.digits.weights_from:
        weights = F8 * sum(a * b + b for a, b in _mlp_layers(cfg))
    store = samples + history + checkpoints + weights

    field, alternative = "batch_size", "fewer steps, or dtype=float32"
    if cfg.anderson_memory and 7 * cfg.anderson_memory * p > 2 * T:
        alternative = "a smaller anderson_memory or window"
    elif 9 * p > 2 * T:
        alternative = "a smaller window, or dtype=float32"
    if 2 * train > max(driver, worker) and train > batch:
        field = "digits.hidden"
        alternative = "set digits.weights_from to a run with trained weights"
    elif cfg.model == "custom":
        alternative += f" (each sample of {cfg.custom} has {D} values: its sample_shape)"
    return Estimate(_cap(driver), _cap(worker), _cap(store), field, alternative)


__all__ = ["estimate"]
