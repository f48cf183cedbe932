"""Checks of the user's own model (``model=custom``) that need their code: run by the
framework before anything is written, each failure one line naming the field."""

from __future__ import annotations

from ..config import ConfigError
from .config import PicardConfig


def preflight(cfg: PicardConfig) -> None:
    """Raise :class:`ConfigError` when the ``custom`` factory's model cannot be sampled:
    it must return an object with ``eps(x, t)`` and ``sample_shape``, or a
    ``torch.nn.Module`` with a ``sample_shape`` attribute."""
    if cfg.model != "custom":
        return
    from .worker import build_model

    abar, _ = cfg.sampler_steps()
    spec = {"kind": "custom", "target": cfg.custom, "abar": abar,
            "guidance_scale": cfg.guidance_scale, "null_class": cfg.null_class}  # fmt: skip
    try:
        model = build_model(spec)
    except ConfigError:
        raise
    except (TypeError, AttributeError) as exc:  # not a model, or a module without sample_shape
        raise ConfigError(f"config field 'custom': {cfg.custom}: {exc}") from None
    if not callable(getattr(model, "eps", None)) or not hasattr(model, "sample_shape"):
        raise ConfigError(
            f"config field 'custom': {cfg.custom} returned a {type(model).__name__} without "
            "eps(x, t) and sample_shape (see tilegraph.tasks.picard.models.DiffusionModel)"
        )
