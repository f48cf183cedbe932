"""Config and presets of the ``bilevel`` pipeline."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from tilegraph.tasks.bilevel.methods import StepSizes
from tilegraph.tasks.bilevel.problems import LogisticHPO, QuadraticBlocks, RidgeBlocks
from tilegraph.tasks.devices import Device

from ..base import PipelineConfig
from ..config import check_applies, paired
from ..imports import ExternalURL, ImportPath

#: Problems that are the user's: their sizes come from their data or code.
USER_KINDS = ("dataset", "custom")


#: The upper regulariser of the synthetic problems when ``rho`` is not set.
RHO = 0.1


class ProblemConfig(BaseModel):
    """Which multi-block problem (see :mod:`tilegraph.tasks.bilevel.problems`)."""

    model_config = ConfigDict(extra="forbid")
    #: The problem kinds each field applies to (fields not named apply to all, or are
    #: paired with their kind); a field set off its default for another kind would be
    #: ignored, so it is refused (see ``pipelines.config.check_applies``).
    APPLIES: ClassVar[dict] = {
        "model": ("kind", ("dataset",)),
        "m": ("kind", ("quadratic", "digits-ridge", "logistic-hpo")),
        "dim_x": ("kind", ("quadratic",)),
        "dim_y": ("kind", ("quadratic",)),
        "n_lower": ("kind", ("quadratic",)),
        "spread": ("kind", ("quadratic",)),
        "lam": ("kind", ("quadratic", "logistic-hpo")),
        "rho": ("kind", ("quadratic", "digits-ridge", "dataset")),
        "n_train": ("kind", ("digits-ridge", "logistic-hpo")),
        "seed": ("kind", ("quadratic", "digits-ridge", "logistic-hpo")),
    }

    kind: Literal["quadratic", "digits-ridge", "logistic-hpo", "dataset", "custom"] = "quadratic"
    dataset: ExternalURL | None = Field(
        default=None,
        description="kind=dataset: a Zarr group (path or URL), one subgroup per block with "
        "X_train, y_train, X_val, y_val",
    )
    model: Literal["ridge", "logistic"] = Field(
        default="ridge", description="kind=dataset: the lower problems (logistic: labels 0/1)"
    )
    factory: ImportPath | None = Field(
        default=None,
        description="kind=custom: 'package.module:name' called as name(**params); returns a "
        "BlockProblem",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="kind=custom: its kwargs")
    m: int = Field(default=50, ge=1, description="blocks (digits-ridge always has 10)")
    dim_x: int = Field(default=5, ge=1, description="upper dimension (quadratic)")
    dim_y: int = Field(default=5, ge=1, description="lower dimension (quadratic)")
    n_lower: int = Field(default=32, ge=1, description="lower samples per block (quadratic)")
    spread: float = Field(default=0.3, ge=0, description="how much blocks differ (quadratic)")
    lam: float = Field(default=1.0, gt=0, description="lower ridge (quadratic, logistic-hpo)")
    rho: float | None = Field(
        default=None,
        ge=0,
        description="upper regulariser (quadratic, digits-ridge: 0.1 unless set; dataset: 0 "
        "unless set)",
    )
    n_train: int = Field(
        default=1000, ge=10, description="training rows (digits-ridge <= 1700, hpo <= 500)"
    )
    seed: int = Field(default=0, ge=0, description="seed of the synthetic data and splits")

    @classmethod
    def _absolute(cls, v):
        # a worker started elsewhere, or a resume from another folder, must find it
        if v is not None and "://" not in v:
            return os.path.abspath(os.path.expanduser(v))
        return v

    @model_validator(mode="after")
    def _sizes(self):
        check_applies(self)
        paired("kind", self.kind, "dataset", "dataset", self.dataset, "URL")
        paired("kind", self.kind, "custom", "factory", self.factory, "'package.module:name'")
        if self.params and self.kind != "custom":
            raise ValueError("params are the factory's arguments: only with kind=custom")
        if self.kind == "digits-ridge":
            if self.m != 10:
                raise ValueError(
                    f"digits-ridge has one block per digit: m must be 10 (got {self.m})"
                )
            if self.n_train > 1700:
                raise ValueError(f"n_train must be <= 1700 for digits (got {self.n_train})")
        if self.kind == "logistic-hpo" and self.n_train > 500:
            raise ValueError(f"n_train must be <= 500 for breast-cancer (got {self.n_train})")
        return self

    def build(self):
        """The :class:`tilegraph.tasks.bilevel.problems.BlockProblem` this config describes."""
        if self.kind == "quadratic":
            return QuadraticBlocks(
                self.m,
                self.dim_x,
                self.dim_y,
                self.n_lower,
                self.spread,
                self.lam,
                RHO if self.rho is None else self.rho,
                self.seed,
            )
        if self.kind == "digits-ridge":
            return RidgeBlocks(self.n_train, RHO if self.rho is None else self.rho, self.seed)
        if self.kind == "dataset":
            from .data import ZarrBlocks

            # the upper regulariser is the user's choice: 0 unless set (a stored config,
            # as a resume reads it, holds the None of an unset field)
            rho = 0.0 if self.rho is None else self.rho
            return ZarrBlocks(self.dataset, self.model, rho)
        if self.kind == "custom":
            from ..imports import resolve

            return resolve(self.factory, field="problem.factory")(**self.params)
        return LogisticHPO(self.m, self.n_train, self.lam, self.seed)


class BilevelConfig(PipelineConfig):
    """Multi-block bilevel optimisation by BSVRB (or a baseline).

    Fields are listed by ``tilegraph run bilevel --set FIELD=VALUE``.
    """

    model_config = ConfigDict(extra="forbid")

    problem: ProblemConfig = Field(default_factory=ProblemConfig)
    _m: int | None = PrivateAttr(default=None)
    #: The methods each step field applies to, ``method`` or one in ``compare`` (see
    #: ``pipelines.config.check_user_fields_apply``).
    APPLIES: ClassVar[dict] = {
        "alpha": ("method", ("bsvrb-v1", "bsvrb-v2"), "compare"),
        "gamma": ("method", ("bsvrb-v1", "bsvrb-v2"), "compare"),
        "beta": ("method", ("bsvrb-v1", "bsvrb-v2"), "compare"),
        "eager": ("method", ("bsvrb-v1", "bsvrb-v2"), "compare"),
        "h_floor": ("method", ("bsvrb-v1",), "compare"),
        "tau_v": ("method", ("bsvrb-v2", "sgd"), "compare"),
        "v_bound": ("method", ("bsvrb-v2", "sgd"), "compare"),
        "penalty": ("method", ("f2sa",), "compare"),
    }

    method: Literal["bsvrb-v1", "bsvrb-v2", "sgd", "f2sa"] = "bsvrb-v2"
    compare: list[Literal["bsvrb-v1", "bsvrb-v2", "sgd", "f2sa"]] = Field(
        default=[], description="methods also run, one after the other, for the summary plot"
    )
    blocks_per_iter: int = Field(default=10, ge=1, description="sampled blocks per iteration, I")
    batch: int = Field(default=8, ge=1, description="samples per sampled block, B")
    eta: float = Field(default=0.5, gt=0, description="upper step; the step is eta * I / m")
    eta_scaling: Literal["blocks", "none"] = Field(
        default="blocks", description="'blocks': step eta * I / m; 'none': step eta"
    )
    decay_epochs: float | None = Field(
        default=60.0, gt=0, description="halve the upper step every this many epochs (m/I its)"
    )
    plateau_epochs: float | None = Field(
        default=None,
        gt=0,
        description="halve the upper step whenever the mean exact objective F over the "
        "last this many epochs (m/I iterations, at the history points) is no lower than "
        "over as many before (None: never)",
    )
    tau: float = Field(default=0.4, gt=0, description="lower step")
    tau_v: float = Field(default=0.4, gt=0, description="step of v (bsvrb-v2, sgd)")
    alpha: float = Field(default=0.9, gt=0, le=1, description="MSVR alpha")
    gamma: float = Field(default=1.0, ge=0, description="MSVR gamma")
    beta: float = Field(default=0.9, gt=0, le=1, description="STORM beta")
    h_floor: float = Field(default=0.5, gt=0, description="smallest eigenvalue of v1's H")
    v_bound: float = Field(default=10.0, gt=0, description="radius of v's ball")
    penalty: float = Field(default=100.0, gt=0, description="F2SA multiplier lambda")
    x_min: float | None = Field(
        default=None,
        description="lower edge of the box the upper variable x is projected on after every "
        "step (None: unbounded); problem.kind=dataset: -20 unless set",
    )
    x_max: float | None = Field(
        default=None,
        description="upper edge of that box; problem.kind=dataset with auto_steps: "
        "log(4 L) unless set, L the largest curvature of the blocks' training losses, so "
        "that the lower steps stay stable for every lambda = exp(x) in the box",
    )
    eager: bool = Field(default=False, description="unsampled lower variables keep moving")
    auto_steps: bool | None = Field(
        default=None,
        description="fill the steps the config leaves unset (tau, tau_v, h_floor, v_bound, "
        "eta, decay_epochs) from the problem's curvature; default: on for the user's own "
        "problems (dataset, custom), off for the presets",
    )
    max_iter: int = Field(default=3000, ge=1, description="iterations at most")
    tol: float | None = Field(
        default=1e-2, gt=0, description="stop at |x - x*| <= tol |x*| (when x* is known)"
    )
    eval_every: int = Field(default=10, ge=1, description="iterations between history points")
    seed: int = Field(default=0, ge=0, description="seed of the block and batch sampling")
    device: Device = Field(
        default="cpu",
        description="where the block tasks run their kernels: NumPy, CuPy (each task asks "
        "for one GPU of its worker), or array-api-strict (the GPU code path checked on a "
        "CPU); sampling, the upper update and the exact evaluations stay NumPy on the driver",
    )

    @model_validator(mode="after")
    def _blocks(self):
        runs = [self.method, *self.compare]
        again = [c for i, c in enumerate(runs) if c in runs[:i]]
        if again:
            raise ValueError(
                f"compare: {again[0]} runs already (method={self.method}, "
                f"compare={self.compare}); list each other method once"
            )
        lo, hi = self.upper_box()
        if self.auto_steps is not False and self.problem.kind == "dataset" and self.x_max is None:
            hi = None  # chosen from the data (log(4 L_A)): checked when it is
        if lo is not None and hi is not None and lo > hi:
            unset = [k for k in ("x_min", "x_max") if getattr(self, k) is None]
            note = (
                f" ({' and '.join(unset)}: the default of problem.kind=dataset)" if unset else ""
            )
            raise ValueError(f"x_min={lo:g} must be <= x_max={hi:g}, the box of x{note}")
        if self.problem.kind in USER_KINDS:  # m is the data's: checked by the preflight
            return self
        m = 10 if self.problem.kind == "digits-ridge" else self.problem.m
        if self.blocks_per_iter > m:
            raise ValueError(
                f"blocks_per_iter must be <= the number of blocks m={m} "
                f"(got {self.blocks_per_iter})"
            )
        return self

    @property
    def m(self) -> int:
        if self.problem.kind in USER_KINDS:
            if self._m is None:  # the data's (or the factory's): asked every iteration
                self._m = int(self.problem.build().m)
            return self._m
        return 10 if self.problem.kind == "digits-ridge" else self.problem.m

    def auto(self) -> bool:
        """Whether :mod:`.steps` fills the unset steps."""
        if self.auto_steps is not None:
            return self.auto_steps
        return self.problem.kind in USER_KINDS

    def steps(self) -> StepSizes:
        """The block-update parameters."""
        return StepSizes(
            tau=self.tau,
            tau_v=self.tau_v,
            alpha=self.alpha,
            gamma=self.gamma,
            h_floor=self.h_floor,
            v_bound=self.v_bound,
            penalty=self.penalty,
            eager=self.eager,
        )

    def upper_box(self) -> tuple[float | None, float | None]:
        """The box ``(x_min, x_max)`` of the upper variable (``problem.kind=dataset``:
        ``x_min = -20`` and, without ``auto_steps``, ``x_max = 20`` unless set)."""
        if self.problem.kind == "dataset":
            return (
                -20.0 if self.x_min is None else self.x_min,
                20.0 if self.x_max is None else self.x_max,
            )
        return self.x_min, self.x_max

    def upper_step(self, t: int, halvings: int = 0) -> float:
        """The upper step at iteration ``t``, after ``halvings`` plateaus of F
        (:func:`~tilegraph.pipelines.bilevel.steps.plateau_halvings`)."""
        eta = self.eta * (self.blocks_per_iter / self.m if self.eta_scaling == "blocks" else 1)
        eta = eta * 0.5**halvings
        if self.decay_epochs is None:
            return eta
        every = max(1, round(self.decay_epochs * self.m / self.blocks_per_iter))
        return eta * 0.5 ** (t // every)


PRESETS: dict[str, dict] = {
    "quick": {"problem": {"kind": "quadratic", "m": 50}, "eval_every": 25},
    "digits": {
        "problem": {"kind": "digits-ridge", "m": 10, "n_train": 1000, "rho": 0.01},
        "blocks_per_iter": 2,
        "batch": 32,
        # the lower Hessian is X^T X / n + diag(exp(x)) with |X^T X / n| ~ 7: MSVR needs
        # tau * L below ~0.7, and tau = 0.05 already drifts away late in the run
        "tau": 0.02,
        "tau_v": 0.02,
        "h_floor": 0.1,
        "eta": 5.0,
        "decay_epochs": 200.0,
        "eval_every": 50,
    },
    # The paper's setting (m = 100, I = 10, B = 32, alpha = 0.9, gamma = 1, beta = 0.9) on
    # breast-cancer instead of LIBSVM a8a; x* is unknown, so it runs max_iter iterations.
    "paper": {
        "problem": {"kind": "logistic-hpo", "m": 100, "n_train": 400, "lam": 1e-3},
        "blocks_per_iter": 10,
        "batch": 32,
        # the per-sample hypergradient entries are O(1/B): the authors' eta = 1e-3 makes
        # no visible progress in 500 iterations here; eta = 1000 lowers F by ~13 % in 300
        "eta": 1000.0,
        "eta_scaling": "none",
        "decay_epochs": None,
        "tau": 0.5,
        "tau_v": 0.5,
        "h_floor": 1e-3,
        "max_iter": 500,
        "eval_every": 50,
    },
}
