"""Checks of a picard run's model that need the user's code, another run or a diffusers
directory: run by the framework before anything is written, each failure one line
naming the field."""

from __future__ import annotations

import math

from ..config import ConfigError
from .config import PicardConfig

#: Sample shapes of the custom factories already checked in this process, by factory
#: and schedule (a sweep checks each point's config; the estimate asks again).
_CHECKED: dict[tuple, tuple[int, ...]] = {}

#: diffusers directories already checked in this process.
_CHECKED_DIRS: set[tuple] = set()


def preflight(cfg: PicardConfig) -> None:
    """Raise :class:`ConfigError` when the run's model cannot be built.

    * ``custom``: the factory's model must have ``eps(x, t)`` and a ``sample_shape`` of
      positive integers, or be a ``torch.nn.Module`` with one
      (:func:`custom_sample_shape`).
    * ``digits`` / ``digits-unet`` with ``weights_from``: it must be a picard run holding
      the trained network of that model, trained with this ``train_steps``
      (:func:`check_weights_from`).
    * ``diffusers``: the network's weights file must be there and sound, and its
      ``unet/config.json`` must build; the same for the autoencoder that decodes the
      samples, where there is one
      (:func:`~tilegraph.pipelines.picard.diffusers_dir.check_network`).
    """
    if cfg.model == "custom":
        shape = custom_sample_shape(cfg)
        _check_sample_size(cfg, shape)
    elif cfg.model in ("digits", "digits-unet"):
        check_weights_from(cfg)
    elif cfg.model == "diffusers":
        decoder = cfg.decoder()
        key = (cfg.diffusers.path, decoder and decoder[0])
        if key in _CHECKED_DIRS:
            return
        from .diffusers_dir import check_network

        try:
            check_network(cfg.diffusers.path, decoder and decoder[0])
        except ValueError as exc:
            raise ConfigError(f"config field 'diffusers.path': {exc}") from None
        _CHECKED_DIRS.add(key)


def _check_sample_size(cfg: PicardConfig, shape: tuple[int, ...]) -> None:
    """Refuse a model whose samples are too large for any machine at ``batch_size=1``
    (the size check would otherwise say to lower ``batch_size``)."""
    from ..resources import fmt_bytes
    from .resources import estimate

    one = estimate(cfg.model_copy(update={"batch_size": 1}), 1)
    need = max(one.driver_bytes, one.worker_bytes)
    if need > 2**50:
        raise ConfigError(
            f"config field 'custom': {cfg.custom}(abar) returned a model with sample_shape "
            f"{shape} ({math.prod(shape):.3g} values a sample): one sample at a time would need "
            f"about {fmt_bytes(need)} in one process, more than any machine has"
        )


def custom_sample_shape(cfg: PicardConfig) -> tuple[int, ...]:
    """The ``sample_shape`` of the model that ``cfg.custom`` builds, checked.

    The factory runs here, on the driver, once per factory and schedule (the run
    itself calls it again on the driver and on every worker); nothing is wrapped, moved
    or copied.

    Raises
    ------
    ConfigError
        When the factory raises, or its model has no ``eps(x, t)`` (and is no torch
        module) or no ``sample_shape`` of positive integers.
    """
    key = (cfg.custom, cfg.schedule, cfg.train_steps, cfg.beta_start, cfg.beta_end)
    if key in _CHECKED:
        return _CHECKED[key]
    from ..imports import resolve
    from .worker import custom_model_problem

    abar, _ = cfg.sampler_steps()
    factory = resolve(cfg.custom, field="custom")
    try:
        model = factory(abar)
    except (Exception, SystemExit) as exc:  # the user's code: its message, in one line
        msg = " ".join(str(exc).split())
        raise ConfigError(
            f"config field 'custom': {cfg.custom}(abar) raised {type(exc).__name__}: {msg}"
        ) from None
    problem = custom_model_problem(model, cfg.custom)
    if problem is not None:
        raise ConfigError(f"config field 'custom': {problem}")
    _CHECKED[key] = tuple(int(n) for n in model.sample_shape)
    return _CHECKED[key]


def check_weights_from(cfg: PicardConfig) -> None:
    """``digits.weights_from`` / ``digits_unet.weights_from`` (of the run's model) must
    be a picard run holding that model's trained network, complete, trained with the
    same ``train_steps``.

    Raises
    ------
    ConfigError
        One line naming the field and what the location holds instead.
    """
    from tilegraph import storage

    if cfg.model == "digits":
        field, url, want, what = "digits.weights_from", cfg.digits.weights_from, "mlp", "MLP"
    else:
        field, url = "digits_unet.weights_from", cfg.digits_unet.weights_from
        want, what = "unet", "UNet"
    if url is None:
        return
    hint = f"give a picard run of model={cfg.model} that trained its {what}"
    try:
        src = storage.RunStore(url)
    except Exception as exc:  # RunNotFound, or any reason the location cannot be read
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"config field '{field}': {msg}; {hint}") from None
    if src.pipeline != "picard":
        raise ConfigError(
            f"config field '{field}': {url} is a run of pipeline {src.pipeline}; {hint}"
        )
    try:
        problem = _weights_problem(src, want, what, cfg.train_steps)
    except (KeyError, TypeError, ValueError) as exc:  # attributes another writer made
        problem = f"run {src.run_id} has unreadable model attributes ({type(exc).__name__})"
    if problem is not None:
        raise ConfigError(f"config field '{field}': {problem}; {hint}")


def _weights_problem(src, want: str, what: str, train_steps: int) -> str | None:
    """What keeps run ``src`` from lending its trained ``want`` (``"mlp"`` or
    ``"unet"``) to a run with ``train_steps``, or None."""
    attrs = src.node_attrs("model")
    kind = "unet" if attrs.get("kind") == "unet" else "mlp" if "layers" in attrs else None
    if not attrs.get("complete") or kind != want:
        return f"run {src.run_id} holds no trained {what}"
    if want == "mlp":
        names = [f"model/{k}{i}" for i in range(int(attrs["layers"])) for k in "wb"]
    else:
        names = [f"model/p{i}" for i in range(len(attrs["names"]))]
    missing = [n for n in names if not src.has(n)]
    if missing:
        return f"run {src.run_id} lacks the weights {', '.join(missing[:4])}"
    trained = int(attrs["train_steps"])
    if trained != train_steps:
        return (
            f"run {src.run_id} trained its {what} with train_steps={trained}, this run has "
            f"train_steps={train_steps}"
        )
    return None
