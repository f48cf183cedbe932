"""Checks of the user's own blocks (``problem.kind=dataset`` or ``custom``) that need
their data or code: run by the framework before anything is written, each failure one
line naming the field and, for data, the block and the array; for code, the attribute
or the method."""

from __future__ import annotations

import numbers
from functools import partial

import numpy as np

from ..config import ConfigError, shorten
from .config import USER_KINDS, BilevelConfig

#: What a custom problem must have (``BlockProblem``'s interface).
METHODS = ("g", "f", "grad_y_g", "grad_x_g", "grad_x_f", "grad_y_f", "hess_yy_g",
           "hvp_yy_g", "cross_xy_g")  # fmt: skip
SIZES = ("m", "dim_x", "dim_y", "n_lower", "n_upper")

FIELD = "problem.factory"


def preflight(cfg: BilevelConfig) -> None:
    """Raise :class:`ConfigError` when the user's problem cannot run.

    ``dataset``: every block is read once and checked
    (:func:`~tilegraph.pipelines.bilevel.data.check_dataset`). ``custom``: the factory
    is called with ``problem.params``; the object it returns must have the sizes of
    ``BlockProblem`` (``m``, ``dim_x``, ``dim_y`` positive ints; ``n_lower``,
    ``n_upper`` positive ints or one per block), its methods callable, ``x0`` and
    ``x_star`` (when not None) finite vectors of ``dim_x``; then every method is
    evaluated once, on block 0 at ``x0``, ``y = 0`` (``v`` = ones) on all its samples
    (``idx=None``), and must give a finite array of its documented shape.
    """
    p = cfg.problem
    if p.kind not in USER_KINDS:
        return
    if p.kind == "dataset":
        from .data import check_dataset

        try:
            check_dataset(p.dataset, p.model)
        except ValueError as exc:
            raise ConfigError(f"config field 'problem.dataset': {p.dataset}: {exc}") from None
        problem = p.build()
    else:
        problem = _build(p.factory, p.params)
        _check_custom(problem, p.factory)
    if cfg.blocks_per_iter > problem.m:
        raise ConfigError(
            f"config field 'blocks_per_iter': must be <= the number of blocks m={problem.m} "
            f"(got {cfg.blocks_per_iter}"
            f"{'' if 'blocks_per_iter' in cfg.model_fields_set else ', the default'}); set "
            f"blocks_per_iter={problem.m} for every block each iteration, or fewer"
        )


def _fail(message: str) -> ConfigError:
    return ConfigError(f"config field '{FIELD}': {message}")


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def _build(target: str, params: dict):
    """Call the factory; what it raises is one line."""
    from ..imports import resolve

    factory = resolve(target, field=FIELD)  # a bad path: its own one-line error
    try:
        return factory(**params)
    except (Exception, SystemExit) as exc:
        raise _fail(
            f"{target}(**problem.params) raised {type(exc).__name__}: {_first(exc)}"
        ) from None


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _has(obj, name: str) -> bool:
    """``hasattr`` that lets a property raising something else count as present (its
    error is reported where it is evaluated, after the sizes it may need)."""
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    except Exception:
        return True
    return True


def _get(problem, name: str, target: str):
    """``problem.name``; a property of the user's that raises is one line."""
    try:
        return getattr(problem, name)
    except (Exception, SystemExit) as exc:
        raise _fail(
            f"{target} returned a {type(problem).__name__} whose {name} raised "
            f"{type(exc).__name__}: {_first(exc)}"
        ) from None


def _check_custom(problem, target: str) -> None:
    """Sizes, methods, ``x0``, ``x_star``, then one evaluation of every method."""
    missing = [a for a in (*SIZES, *METHODS, "x0", "x_star") if not _has(problem, a)]
    if missing:
        raise _fail(
            f"{target} returned a {type(problem).__name__} without {', '.join(missing)} "
            "(see BlockProblem; a subclass has x0 = zeros and x_star = None)"
        )
    for name in ("m", "dim_x", "dim_y"):
        value = _get(problem, name, target)
        if not _is_count(value):
            raise _fail(f"{target} returned {name}={shorten(value, 60)}; it must be an int >= 1")
    m = int(problem.m)
    for name in ("n_lower", "n_upper"):
        value = _get(problem, name, target)
        if _is_count(value):
            continue
        counts = np.asarray(value) if isinstance(value, list | tuple | np.ndarray) else None
        if (
            counts is None
            or counts.shape != (m,)
            or counts.dtype.kind not in "iu"
            or not np.all(counts >= 1)
        ):
            raise _fail(
                f"{target} returned {name}={shorten(value, 60)}; it must be an int >= 1 "
                f"or m={m} of them (one per block)"
            )
    not_callable = [a for a in METHODS if not callable(_get(problem, a, target))]
    if not_callable:
        raise _fail(
            f"{target} returned a {type(problem).__name__} whose {', '.join(not_callable)} "
            "is not callable (see BlockProblem)"
        )
    dx, dy = int(problem.dim_x), int(problem.dim_y)
    sizes = {"": (), "dim_x": (dx,), "dim_y": (dy,), "dim_y, dim_y": (dy, dy)}
    x0 = _array(lambda: problem.x0, "x0", "dim_x", sizes, attribute=True)
    x_star = _get(problem, "x_star", target)
    if x_star is not None:
        _array(lambda: x_star, "x_star", "dim_x", sizes, attribute=True)
    y, v = np.zeros(dy), np.ones(dy)
    for name in METHODS:
        method = getattr(problem, name)
        if name in ("hvp_yy_g", "cross_xy_g"):
            call, what = partial(method, 0, x0, y, v, None), f"{name}(0, x0, y=0, v=1)"
        else:
            call, what = partial(method, 0, x0, y, None), f"{name}(0, x0, y=0)"
        _array(call, what, SHAPES[name], sizes)


#: Each method's result: a number or an array of these sizes.
SHAPES = {"g": "", "f": "", "grad_y_g": "dim_y", "grad_y_f": "dim_y", "grad_x_g": "dim_x",
          "grad_x_f": "dim_x", "hess_yy_g": "dim_y, dim_y", "hvp_yy_g": "dim_y",
          "cross_xy_g": "dim_x"}  # fmt: skip


def _array(get, what: str, dims: str, sizes: dict, attribute: bool = False) -> np.ndarray:
    """``get()`` as a float64 array of shape ``sizes[dims]``, finite; else one line
    naming ``what``."""
    try:
        value = get()
    except (Exception, SystemExit) as exc:  # the user's code: its message, in one line
        raise _fail(f"{what} raised {type(exc).__name__}: {_first(exc)}") from None
    shape = sizes[dims]
    named = f"({dims},)" if "," not in dims else f"({dims})"
    want = "a number" if not dims else f"an array of shape {named} = {shape}"
    # an attribute is (has, holds) something; a method gives it
    gave, has, must = ("is", "has", "be") if attribute else ("gave", "gave", "give")
    try:
        a = np.asarray(value)
    except Exception:
        a = None
    if a is None or a.dtype.kind not in "biuf":
        raise _fail(f"{what} {gave} {shorten(value, 60)}; it must {must} {want} of real numbers")
    if a.shape != shape:
        raise _fail(f"{what} {has} shape {a.shape}; it must {must} {want}")
    if not np.all(np.isfinite(a)):
        raise _fail(f"{what} {'holds' if attribute else 'gave'} NaN or infinity")
    return a.astype(np.float64)


__all__ = ["preflight"]
