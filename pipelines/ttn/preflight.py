"""Checks of the user's own code (``model.kind=custom``, ``start_factory``): run by the
framework before anything is written, each failure one line naming the field."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ConfigError
from .config import TTNConfig


def preflight(cfg: TTNConfig) -> None:
    """Raise :class:`ConfigError` when the user's Hamiltonian or start cannot run.

    ``model.kind=custom``: the factory is called with ``model.params`` and what it
    returns is built into the operator the run uses, with the run's checks (the
    ``ops`` square finite matrices of the sites' dimensions, the terms known operators
    on sites in range, finite coefficients, Hermitian unless ``model.hermitian=false``).
    ``start_factory``: called with ``d``; d vectors of their sites' dimensions, finite
    and nonzero. The run calls both again (on the driver only).
    """
    if cfg.model.kind == "custom":
        _check("model.factory", cfg.make_operator)
    if cfg.start_factory is not None:
        _check("start_factory", cfg.start_vectors)


def _check(field: str, build: Callable[[], object]) -> None:
    """Run ``build``; what it raises becomes one line naming ``field``."""
    try:
        build()
    except ConfigError:  # an import path that does not resolve names its field
        raise
    except ValueError as exc:  # the checks' messages, TermError's among them
        raise ConfigError(f"config field '{field}': {_first(exc)}") from None
    except (Exception, SystemExit) as exc:  # what the user's code returned broke a later step
        raise ConfigError(
            f"config field '{field}': what it returned cannot be used "
            f"({type(exc).__name__}: {_first(exc)})"
        ) from None


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


__all__ = ["preflight"]
