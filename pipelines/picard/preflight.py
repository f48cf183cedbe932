"""Checks of the user's own model (``model=custom``) that need their code: run by the
framework before anything is written, each failure one line naming the field."""

from __future__ import annotations

from ..config import ConfigError
from .config import PicardConfig

#: Factories already checked in this process (a sweep checks each point's config).
_CHECKED: set[tuple] = set()


def preflight(cfg: PicardConfig) -> None:
    """Raise :class:`ConfigError` when the ``custom`` factory's model cannot be sampled:
    it must return an object with ``eps(x, t)`` and ``sample_shape``, or a
    ``torch.nn.Module`` with a ``sample_shape`` attribute.

    The factory runs here, on the driver, once per factory and schedule (the run
    itself calls it again on the driver and on every worker); nothing is wrapped, moved
    or copied.
    """
    if cfg.model != "custom":
        return
    from ..imports import resolve
    from .worker import custom_model_problem

    key = (cfg.custom, cfg.schedule, cfg.train_steps, cfg.beta_start, cfg.beta_end)
    if key in _CHECKED:
        return
    abar, _ = cfg.sampler_steps()
    factory = resolve(cfg.custom, field="custom")
    try:
        model = factory(abar)
    except Exception as exc:  # the user's code: its message, in one line
        msg = " ".join(str(exc).split())
        raise ConfigError(
            f"config field 'custom': {cfg.custom}(abar) raised {type(exc).__name__}: {msg}"
        ) from None
    problem = custom_model_problem(model, cfg.custom)
    if problem is not None:
        raise ConfigError(f"config field 'custom': {problem}")
    _CHECKED.add(key)
