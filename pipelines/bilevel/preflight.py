"""Checks of the user's own blocks (``problem.kind=dataset`` or ``custom``) that need
their data or code: run by the framework before anything is written, each failure one
line naming the field and, for data, the block and the array."""

from __future__ import annotations

from ..config import ConfigError
from .config import USER_KINDS, BilevelConfig

#: What a custom problem must have (``BlockProblem``'s interface).
METHODS = ("g", "f", "grad_y_g", "grad_x_g", "grad_x_f", "grad_y_f", "hess_yy_g",
           "hvp_yy_g", "cross_xy_g")  # fmt: skip
SIZES = ("m", "dim_x", "dim_y", "n_lower", "n_upper")


def preflight(cfg: BilevelConfig) -> None:
    """Raise :class:`ConfigError` when the user's problem cannot run."""
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
    if p.kind == "custom":
        missing = [a for a in (*SIZES, *METHODS) if not hasattr(problem, a)]
        if missing:
            raise ConfigError(
                f"config field 'problem.factory': {p.factory} returned a "
                f"{type(problem).__name__} without {', '.join(missing)} (see BlockProblem)"
            )
    if cfg.blocks_per_iter > problem.m:
        raise ConfigError(
            f"config field 'blocks_per_iter': must be <= the number of blocks m={problem.m} "
            f"(got {cfg.blocks_per_iter})"
        )
