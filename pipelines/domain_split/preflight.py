"""Checks of the user's own problem (``problem.kind=custom`` or ``dataset``) that need
their code or data: run by the framework before anything is written, each failure one
line naming the field, the variable or the method."""

from __future__ import annotations

import math

import numpy as np

from ..config import ConfigError
from .config import USER_KINDS, DomainSplitConfig
from .data import REAL_KINDS

#: Methods a custom problem must have; ``exact`` is optional.
METHODS = ("alpha_k", "beta_k", "rhs", "boundary")


def preflight(cfg: DomainSplitConfig) -> None:
    """Raise :class:`ConfigError` when the user's problem cannot run.

    ``custom``: the factory is called with ``params``; the object must have
    :data:`METHODS` and give finite values of the right shape, ``alpha_k > 0``, on a
    sample grid of the box (each worker builds its own from the shipped module).
    ``dataset``: see
    :func:`~tilegraph.pipelines.domain_split.data.check_dataset`; the domain must lie
    inside the data. Then the rules every problem meets (``check_problem``).
    """
    p = cfg.problem
    if p.kind not in USER_KINDS:
        return
    if p.kind == "custom":
        problem = cfg.to_problem()
        _build(problem.inner, p.factory)
        field = "problem.factory"
    else:
        from .data import check_dataset

        field = "problem.dataset"
        try:
            extent = check_dataset(p.dataset, cfg.d)
        except ValueError as exc:
            raise ConfigError(f"config field '{field}': {p.dataset}: {exc}") from None
        for k, ((a, b), (lo, hi)) in enumerate(zip(cfg.domain(), extent, strict=True)):
            if a < lo or b > hi:
                raise ConfigError(
                    f"config field 'problem.domain': axis {k} [{a}, {b}] is not inside the "
                    f"data's [{lo}, {hi}]"
                )
        problem = cfg.to_problem()  # opens the data: only once it is known to open
    _sample(problem, field, exact=p.kind == "custom")
    try:
        cfg.check_problem(problem)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None


def _build(source, target: str):
    """Call the factory through ``source`` (the run's ``FactoryProblem``, which keeps
    what it returned) and check what came back."""
    from ..imports import resolve

    resolve(target, field="problem.factory")  # a bad path: its own one-line error
    try:
        user = source.obj
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"config field 'problem.factory': {target}(**problem.params) raised "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    missing = [m for m in METHODS if not callable(getattr(user, m, None))]
    if missing:
        raise ConfigError(
            f"config field 'problem.factory': {target} returned a {type(user).__name__} "
            f"without {', '.join(missing)} (needs {', '.join(METHODS)}; exact optional)"
        )
    return user


#: Points per axis of the sample grid: a different number on each axis, so that a value
#: shaped for one axis (or for a cube) does not pass for the grid's.
PROBE = (5, 6, 7)


def _sample(problem, field: str, exact: bool) -> None:
    """Evaluate every method on a sample grid of the box (:data:`PROBE` points per
    axis): real numbers, finite, a scalar or an array of the grid's dimensions that
    broadcasts to it, ``alpha_k > 0``.

    The user's values are judged as returned (before the solver broadcasts them to its
    grid): an array that only broadcasts by accident (``np.ones(5)`` against a 5 x 5
    grid) would fail on the workers' blocks.
    """
    d = problem.d
    shape = PROBE[:d]
    coords = tuple(
        np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in shape), indexing="ij", sparse=True)
    )
    # the user's object itself (its values unbroadcast) on physical coordinates
    inner = problem.inner
    user = getattr(inner, "obj", inner)
    at = problem.physical(coords)
    calls = [(f"alpha_k({k}, coords)", lambda k=k: user.alpha_k(k, at)) for k in range(d)]
    calls += [(f"beta_k({k}, coords)", lambda k=k: user.beta_k(k, at)) for k in range(d)]
    calls += [("rhs(coords)", lambda: user.rhs(at))]
    calls += [("boundary(coords)", lambda: user.boundary(at))]
    if exact and problem.has_exact:
        calls += [("exact(coords)", lambda: user.exact(at))]
    for name, call in calls:
        try:
            value = np.asarray(call())
        except (Exception, SystemExit) as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(
                f"config field '{field}': {name} raised {type(exc).__name__}: {first}"
            ) from None
        if value.dtype.kind not in REAL_KINDS:
            raise ConfigError(
                f"config field '{field}': {name} returned values of dtype {value.dtype} "
                "(needs real numbers)"
            )
        if value.ndim not in (0, d) or any(
            m not in (1, n) for m, n in zip(value.shape, shape, strict=False)
        ):
            raise ConfigError(
                f"config field '{field}': {name} gave shape {value.shape} on a {shape} grid "
                "(coords is a tuple of broadcastable arrays; return a scalar or their "
                "broadcast)"
            )
        if not np.all(np.isfinite(value)):
            raise ConfigError(f"config field '{field}': {name} is not finite on the box")
        if name.startswith("alpha") and not float(value.min()) > 0:
            raise ConfigError(
                f"config field '{field}': {name} must be > 0 on the box (min {value.min():.3g})"
            )
    try:  # on its own sample grid: the factory's values are checked there too
        peclet = problem.max_cell_peclet(1.0)
    except ValueError as exc:
        msg = str(exc).removeprefix(f"problem.factory {getattr(inner, 'target', '')}: ")
        raise ConfigError(f"config field '{field}': {msg}") from None
    if not math.isfinite(peclet):
        raise ConfigError(f"config field '{field}': the coefficients overflow")


__all__ = ["preflight"]
