"""Config and presets of the ``domain-split`` pipeline."""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from tilegraph.tasks.devices import Device
from tilegraph.tasks.domain_split.problems import OnBox, Problem

from ..base import PipelineConfig
from ..config import int_or_auto, paired
from ..imports import ExternalURL, ImportPath

#: Kinds whose coefficients the user gives (code or data), checked by ``preflight``.
USER_KINDS = ("custom", "dataset")

#: The stride ``n_fine / n_coarse`` that ``n_coarse=auto`` aims at, per dimension: the
#: fastest or within the noise of it on 2 cores at 1023^2 and 127^3, over constant,
#: variable and dataset coefficients (docs/domain_split.md, "Choosing n_coarse").
AUTO_STRIDE = {2: 32, 3: 16}


def coarse_grids(n_fine: int) -> list[int]:
    """The possible ``n_coarse`` of ``n_fine``: its divisors ``m >= 2`` with
    ``n_fine / m >= 2``, ascending (found up to ``sqrt(n_fine)``: fast for any size)."""
    small = [m for m in range(1, math.isqrt(n_fine) + 1) if n_fine % m == 0]
    every = sorted({*small, *(n_fine // m for m in small)})
    return [m for m in every if m >= 2 and n_fine // m >= 2]


def auto_n_coarse(d: int, n_fine: int, ok=None) -> int:
    """The ``n_coarse`` that ``n_coarse=auto`` takes: the divisor ``m`` of ``n_fine``
    (``m >= 2``, stride ``n_fine / m >= 2``) whose stride is nearest to
    ``AUTO_STRIDE[d]`` on a log scale (the larger ``m`` on a tie), among those ``ok(m)``
    accepts if any.

    Raises
    ------
    ValueError
        ``n_fine`` has no such divisor (it is a prime).
    """
    cands = coarse_grids(n_fine)
    if not cands:
        raise ValueError(
            f"n_coarse=auto needs an n_fine with a divisor m >= 2 and n_fine / m >= 2 "
            f"(got {n_fine}): choose one with small factors (e.g. {n_fine + n_fine % 2}) "
            "or set n_coarse"
        )
    good = [m for m in cands if ok(m)] if ok is not None else cands
    target = AUTO_STRIDE[d]
    return min(good or cands, key=lambda m: (abs(math.log(n_fine / m / target)), -m))


#: largest |coordinate| of problem.domain
MAX_COORD = 1e15


class ProblemConfig(BaseModel):
    """Which problem: a manufactured one (see
    :class:`tilegraph.tasks.domain_split.problems.Problem`), the user's from code
    (``custom``) or from a dataset (``dataset``)."""

    model_config = ConfigDict(extra="forbid")
    #: The kinds each coefficient field applies to (see ``check_user_fields_apply``).
    APPLIES: ClassVar[dict] = {
        "alpha": ("kind", ("constant",)),
        "beta": ("kind", ("constant", "boundary-layer")),
        "eps": ("kind", ("boundary-layer",)),
    }

    kind: Literal["constant", "variable", "boundary-layer", "custom", "dataset"] = "constant"
    alpha: list[float] = Field(default=[1.0, 1.0], description="constant diffusion, one per axis")
    beta: list[float] = Field(default=[0.0, 0.0], description="constant advection, one per axis")
    eps: float = Field(default=1.0, gt=0, description="diffusion of 'boundary-layer'")
    domain: list[list[float]] | None = Field(
        default=None,
        description="the box [[a_1, b_1], ...] (default: the unit cube; for a dataset, "
        "the box its coordinates cover)",
    )
    factory: ImportPath | None = Field(
        default=None,
        description="kind=custom: 'package.module:name', called as name(**params); returns "
        "an object with alpha_k(k, coords), beta_k(k, coords), rhs(coords), "
        "boundary(coords) and optionally exact(coords)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="kind=custom: factory kwargs")
    dataset: ExternalURL | None = Field(
        default=None,
        description="kind=dataset: a Zarr store (path or URL) with alpha_x, ..., beta_x, "
        "..., f, g on coordinates x, y[, z]",
    )

    @field_validator("alpha")
    @classmethod
    def _positive(cls, v):
        if any(a <= 0 for a in v):
            raise ValueError(f"every alpha must be > 0 (got {v})")
        return v

    @classmethod
    def _absolute(cls, v):
        # a worker started elsewhere, or a resume from another folder, must find it
        if v is not None and "://" not in v:
            return os.path.abspath(os.path.expanduser(v))
        return v

    @field_validator("domain")
    @classmethod
    def _box(cls, v):
        if v is None:
            return v
        if any(len(ab) != 2 or not ab[0] < ab[1] for ab in v):
            raise ValueError(f"expected [[a_1, b_1], ...] with a_k < b_k (got {v})")
        # beyond these the grid's spacing or the coefficients' scalings (1/width^2)
        # leave double precision
        for a, b in v:
            if max(abs(a), abs(b)) > MAX_COORD or b - a < 1e-9 * max(abs(a), abs(b)):
                raise ValueError(
                    f"interval [{a:g}, {b:g}]: bounds within ±{MAX_COORD:g} and a width of at "
                    "least 1e-9 of their size (shift or rescale the coordinates)"
                )
        return v

    @model_validator(mode="after")
    def _sources(self):
        paired("kind", self.kind, "custom", "factory", self.factory, "'package.module:name'")
        paired("kind", self.kind, "dataset", "dataset", self.dataset, "URL")
        if self.params and self.kind != "custom":
            raise ValueError("params are the factory's arguments: only with kind=custom")
        return self


class DomainSplitConfig(PipelineConfig):
    """Steady advection-diffusion on ``[0, 1]^d`` by two-level domain splitting.

    Fields are listed by ``tilegraph run domain-split --set FIELD=VALUE``.
    """

    model_config = ConfigDict(extra="forbid")
    #: Fields that only one choice of another uses (see
    #: ``pipelines.config.check_user_fields_apply``; box_solver=auto is frozen with
    #: solver=krylov).
    APPLIES: ClassVar[dict] = {
        "restart": ("solver", ("krylov",)),
        "box_corrections": ("box_solver", ("frozen", "auto")),
    }
    _auto_coarse: bool = PrivateAttr(False)

    d: int = Field(default=2, description="space dimension, 2 or 3")
    n_coarse: int | Literal["auto"] = Field(
        default="auto",
        description="coarse intervals per direction, N_c (a divisor of n_fine); auto: the "
        "divisor nearest to a stride n_fine/N_c of 32 in 2-D and 16 in 3-D",
    )
    n_fine: int = Field(default=100, ge=4, description="fine intervals per direction, N_f")
    problem: ProblemConfig = Field(default_factory=ProblemConfig)
    scheme: Literal["central", "upwind"] = "central"
    solver: Literal["krylov", "stationary"] = "krylov"
    merge: Literal["richardson", "combination"] = Field(
        default="richardson", description="merge weights of the first guess"
    )
    smoother: bool = Field(
        default=True, description="overlapping shifted-box solves before the coarse step"
    )
    submesh: Literal["auto", "fd", "direct", "amg", "amg-lean"] = Field(
        default="auto",
        description="sub-mesh solver: fast diagonalisation (constant coefficients), SuperLU, "
        "classical AMG, AMG with PMIS on the finest level (about 40 % less memory, 2-3x "
        "the solve time), or auto (fd where it applies, else AMG for large 3-D planes: "
        "amg-lean with out_of_core=true)",
    )
    box_solver: Literal["auto", "lu", "frozen"] = Field(
        default="auto",
        description="variable coefficients: each box exactly by a sparse LU, or by fast "
        "diagonalisation of its operator frozen at the box centre (inexact: more FGMRES "
        "iterations, less time and memory; solver=krylov only); auto: frozen with "
        "solver=krylov, lu with solver=stationary",
    )
    box_corrections: int = Field(
        default=1,
        ge=0,
        le=5,
        description="box_solver=frozen: defect-correction steps per hole solve (each a "
        "stencil application and a second frozen solve; 1 saves 1-2 FGMRES iterations; "
        "the smoother's box solves take none)",
    )
    submesh_tol: float = Field(
        default=1e-4,
        gt=0,
        lt=1,
        description="relative residual of the pyamg sub-mesh solves (FGMRES absorbs the "
        "inexact preconditioner; 3-D 127^3: 5 iterations at 1e-4, 6 at 1e-3, 7 at 1e-2)",
    )
    shifts: int = Field(
        default=3,
        ge=1,
        le=8,
        description="shifted box sets the smoother sweeps, offset s/(shifts+1) apart",
    )
    tol: float = Field(default=1e-10, gt=0, lt=1, description="relative residual to stop at")
    max_iter: int = Field(default=100, ge=1, description="iterations (preconditioner calls)")
    restart: int = Field(default=30, ge=1, le=200, description="FGMRES restart length")
    boxes_per_block: int | None = Field(
        default=None, ge=1, description="boxes per task along each axis (default: auto)"
    )
    direct_reference: bool = Field(
        default=True, description="also solve the fine system with SciPy for rel_error_direct"
    )
    device: Device = Field(
        default="cpu",
        description="where workers run the block kernels: NumPy, CuPy (one GPU per "
        "worker), or array-api-strict (the GPU code path checked on a CPU)",
    )
    out_of_core: bool = Field(default=False, description="never hold the fine grid on the driver")

    @field_validator("d")
    @classmethod
    def _dim(cls, v):
        if v not in (2, 3):
            raise ValueError(f"must be 2 or 3 (got {v})")
        return v

    @field_validator("n_coarse", mode="before")
    @classmethod
    def _int_or_auto(cls, v):
        return int_or_auto(v, 2)

    @field_validator("n_fine")
    @classmethod
    def _multiple(cls, v, info: ValidationInfo):
        nc = info.data.get("n_coarse")
        if nc == "auto":
            return v
        if nc and v % nc:
            raise ValueError(f"must be a multiple of n_coarse={nc} (got {v})")
        if nc and v // nc < 2:
            raise ValueError(f"must be at least 2 * n_coarse = {2 * nc} (got {v})")
        return v

    @field_validator("problem")
    @classmethod
    def _lengths(cls, v: ProblemConfig, info: ValidationInfo):
        d = info.data.get("d")
        if d and v.kind == "constant" and len(v.alpha) != d:
            raise ValueError(f"alpha needs {d} entries for d={d} (got {v.alpha})")
        if d and v.kind in ("constant", "boundary-layer") and len(v.beta) != d:
            raise ValueError(f"beta needs {d} entries for d={d} (got {v.beta})")
        if d and v.domain is not None and len(v.domain) != d:
            raise ValueError(f"domain needs {d} intervals for d={d} (got {v.domain})")
        return v

    @property
    def boxes(self) -> str:
        """How variable-coefficient boxes are solved, ``lu`` or ``frozen`` (``box_solver``
        with ``auto`` resolved)."""
        if self.box_solver != "auto":
            return self.box_solver
        return "frozen" if self.solver == "krylov" else "lu"

    @model_validator(mode="after")
    def _peclet(self):
        # the user's coefficients (code, data) are checked by preflight
        problem = self.to_problem() if self.problem.kind not in USER_KINDS else None
        if self.n_coarse == "auto":
            ok = None
            if problem is not None and self.scheme == "central":
                ok = lambda m: problem.max_cell_peclet(1.0 / m) <= 1.0  # noqa: E731
            self.n_coarse = auto_n_coarse(self.d, self.n_fine, ok)
            self._auto_coarse = True  # for the message of a Peclet check in preflight
        if problem is not None:
            self.check_problem(problem)
        if self.submesh == "fd" and self.problem.kind in ("variable", "dataset"):
            raise ValueError(
                "submesh=fd needs constant coefficients: use submesh=auto, direct, amg or "
                f"amg-lean with problem.kind={self.problem.kind}"
            )
        if self.box_solver == "frozen" and self.solver != "krylov":
            raise ValueError(
                "box_solver=frozen is an inexact preconditioner: it needs solver=krylov"
            )
        if self.out_of_core and self.direct_reference:
            raise ValueError(
                "direct_reference needs the fine grid in memory: set direct_reference=false "
                "with out_of_core=true"
            )
        return self

    def check_problem(self, problem) -> None:
        """Rules on the problem itself: the coarse cell Peclet number of the central
        scheme, fast diagonalisation only for constant coefficients."""
        if self.scheme == "central":
            pe = problem.max_cell_peclet(1.0 / self.n_coarse)
            if not pe <= 1.0:
                need = self.n_coarse * pe
                fix = ""
                if need < 1e6:  # the Peclet number is linear in the coarse spacing
                    fits = [m for m in coarse_grids(self.n_fine) if m >= need]
                    m = math.ceil(need)
                    fix = (
                        f" or n_coarse={fits[0]}"
                        if fits
                        else f" or n_coarse >= {m} with n_fine a multiple of it, >= {2 * m}"
                    )
                took = f"n_coarse=auto took {self.n_coarse}: " if self._auto_coarse else ""
                raise ValueError(
                    f"{took}coarse cell Peclet number {pe:.3g} > 1 with scheme=central "
                    f"oscillates: use --set scheme=upwind{fix}"
                )
        if self.submesh == "fd" and not problem.constant_coefficients:
            raise ValueError(
                "submesh=fd needs constant coefficients: use submesh=auto, direct, amg or amg-lean"
            )

    def to_problem(self):
        """The problem this config describes, on the unit cube the solver works on."""
        p = self.problem
        if p.kind == "custom":
            from .data import FactoryProblem

            inner = FactoryProblem(p.factory, tuple(sorted(p.params.items())))
        elif p.kind == "dataset":
            from .data import DatasetProblem

            inner = DatasetProblem(p.dataset, self.d)
        elif p.kind == "variable":
            inner = Problem("variable", self.d)
        else:
            inner = Problem(p.kind, self.d, tuple(p.alpha), tuple(p.beta), p.eps)
        domain = self.domain(inner)
        if p.kind not in USER_KINDS and domain == ((0.0, 1.0),) * self.d:
            return inner
        return OnBox(inner, domain, p.kind)

    def domain(self, inner: Any = None) -> tuple[tuple[float, float], ...]:
        """The physical box ``((a_1, b_1), ...)``."""
        if self.problem.domain is not None:
            return tuple((float(a), float(b)) for a, b in self.problem.domain)
        if self.problem.kind == "dataset":
            from .data import DatasetProblem

            inner = inner or DatasetProblem(self.problem.dataset, self.d)
            return inner.extent()
        return ((0.0, 1.0),) * self.d


PRESETS: dict[str, dict] = {
    "quick": {
        "d": 2,
        "n_fine": 100,
        "n_coarse": 5,
        "problem": {"kind": "constant", "alpha": [1.0, 1.0], "beta": [2.0, 1.0]},
    },
    "paper2d": {
        "d": 2,
        "n_fine": 1000,
        "n_coarse": 10,
        "problem": {"kind": "variable"},
    },
    "paper3d": {
        "d": 3,
        "n_fine": 40,
        "n_coarse": 10,
        "problem": {"kind": "constant", "alpha": [1.0, 2.0, 3.0], "beta": [1.0, 2.0, 3.0]},
        "tol": 1e-8,
    },
    # Out of core, at the goal: 2.06e8 unknowns, workers keep nothing between
    # passes and the driver never holds the fine grid. About 25 minutes, 4 GiB of memory
    # and 40 GB of disk used on 2 cores (benchmarks/domain_split.py --problems ooc); the
    # dry run's bound on the store, every work vector of a restart cycle, is 77 GiB.
    "large3d": {
        "d": 3,
        "n_fine": 592,
        "n_coarse": 37,
        "problem": {"kind": "constant", "alpha": [1.0, 1.0, 1.0], "beta": [1.0, 0.5, 0.25]},
        "out_of_core": True,
        "direct_reference": False,
        "tol": 1e-8,
        "restart": 10,
    },
}
