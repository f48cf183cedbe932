"""Config and presets of the ``ttn`` pipeline."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tilegraph.tasks.devices import Device

from ..base import PipelineConfig

#: Largest d for which the exact reference (a dense 2^d vector and sparse H) is offered.
MAX_EXACT_D = 14


class ModelConfig(BaseModel):
    """The Hamiltonian (energy units; time in 1/energy).

    ``tfi``: ``-J sum Z_i Z_{i+1} - g sum X_i``; ``lr-ising``: ``sum (omega X_k + delta
    n_k) + sum_{i<j} nu |i-j|^-alpha n_i n_j``; ``xxz``: ``J sum (XX + YY + anisotropy
    ZZ)``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["tfi", "lr-ising", "xxz"] = "tfi"
    J: float = Field(default=1.0, description="tfi/xxz coupling")
    g: float = Field(default=1.0, description="tfi transverse field")
    omega: float = Field(default=1.0, description="lr-ising Rabi frequency")
    delta: float = Field(default=1.0, description="lr-ising detuning")
    nu: float = Field(default=2.0, description="lr-ising interaction strength")
    alpha: float = Field(default=1.0, ge=0, description="lr-ising interaction decay exponent")
    anisotropy: float = Field(default=0.5, description="xxz Delta")

    def params(self) -> dict[str, Any]:
        """Keyword arguments of the operator builder of ``kind``."""
        if self.kind == "tfi":
            return {"J": self.J, "g": self.g}
        if self.kind == "lr-ising":
            return {"omega": self.omega, "delta": self.delta, "nu": self.nu, "alpha": self.alpha}
        return {"J": self.J, "delta": self.anisotropy}


class TTNConfig(PipelineConfig):
    """Time evolution ``y' = -i H y`` of a spin chain as a tree tensor network.

    Fields are listed by ``tilegraph run ttn --set FIELD=VALUE``.
    """

    model_config = ConfigDict(extra="forbid")

    d: int = Field(default=8, ge=2, le=128, description="number of spins")
    model: ModelConfig = Field(default_factory=ModelConfig)
    tree: Literal["binary", "tucker", "spec"] = "binary"
    tree_spec: Any = Field(default=None, description="nested lists of sites, with tree=spec")
    start: Literal["up", "tilted-neel"] = Field(
        default="up", description="all spins up, or a Neel state with every spin tilted"
    )
    tilt: float = Field(default=0.3, description="tilt angle (rad) of tilted-neel")
    method: Literal["parallel", "sequential"] = "parallel"
    schedule: Literal["subtrees", "nodes"] = Field(
        default="subtrees",
        description="subtrees: one stateful worker per child of the root keeps its subtree; "
        "nodes: every leaf K-step and node Galerkin step is a task (parallel method)",
    )
    T: float = Field(default=1.0, gt=0, description="final time")
    h: float = Field(default=0.05, gt=0, description="step size")
    h_list: list[float] | None = Field(
        default=None, description="convergence study: one run to T per step size"
    )
    theta: float = Field(default=1e-8, gt=0, description="truncation tolerance")
    relative: bool = Field(default=False, description="theta relative to the norm")
    r_min: int = Field(default=2, ge=1, description="smallest rank kept")
    r_max: int = Field(default=40, ge=1, description="largest rank kept")
    reject: bool = Field(
        default=True,
        description="redo a step from the augmented bases when no rank was truncated",
    )
    c: float = Field(
        default=10.0, gt=0, description="reject a step when h*eta > c*theta (parallel)"
    )
    tol: float = Field(default=1e-12, gt=0, lt=1e-2, description="Lanczos sub-flow tolerance")
    device: Device = Field(
        default="cpu",
        description="where workers run the step kernels (K-steps, Galerkin steps, QR, "
        "SVD): NumPy, CuPy (one GPU per worker), or array-api-strict (the GPU code path "
        "checked on a CPU); the driver's share stays in NumPy",
    )
    exact_reference: bool = Field(
        default=True, description=f"compare with expm of the dense H (d <= {MAX_EXACT_D})"
    )

    @field_validator("h_list")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(x <= 0 for x in v)):
            raise ValueError(f"must be a non-empty list of positive step sizes (got {v})")
        return v

    @model_validator(mode="after")
    def _cross(self):
        if self.r_max < self.r_min:
            raise ValueError(f"r_max={self.r_max} must be >= r_min={self.r_min}")
        for h in self.h_list or [self.h]:
            n = self.T / h
            if abs(n - round(n)) > 1e-9 * max(1.0, n) or round(n) < 1:
                raise ValueError(f"T={self.T} must be a whole number of steps h={h}")
        if self.exact_reference and self.d > MAX_EXACT_D:
            raise ValueError(
                f"exact_reference needs d <= {MAX_EXACT_D} (got d={self.d}): "
                "set exact_reference=false"
            )
        if self.h_list is not None and not self.exact_reference:
            raise ValueError("h_list (a convergence study) needs exact_reference=true")
        if self.tree == "spec":
            from tilegraph.tasks.ttn.trees import make_tree

            try:
                make_tree("spec", self.d, _as_tuple(self.tree_spec))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"tree_spec: {exc}") from None
        elif self.tree_spec is not None:
            raise ValueError("tree_spec is only used with tree=spec")
        return self

    def steps(self, h: float | None = None) -> int:
        return int(round(self.T / (h or self.h)))

    def make_tree(self):
        from tilegraph.tasks.ttn.trees import make_tree

        return make_tree(self.tree, self.d, _as_tuple(self.tree_spec))

    def make_operator(self):
        from tilegraph.tasks.ttn.operators import make_operator

        return make_operator(self.model.kind, self.d, **self.model.params())

    def start_vectors(self):
        """Local start states, shape ``(d, 2)`` (basis order up, down)."""
        import numpy as np

        if self.start == "up":
            return np.tile([1.0, 0.0], (self.d, 1))
        c, s = math.cos(self.tilt / 2), math.sin(self.tilt / 2)
        return np.array([[c, s] if i % 2 == 0 else [s, -c] for i in range(self.d)])


def _as_tuple(spec):
    if isinstance(spec, list | tuple):
        return tuple(_as_tuple(s) for s in spec)
    return spec


PRESETS: dict[str, dict] = {
    "quick": {
        "d": 8,
        "model": {"kind": "tfi"},
        "T": 1.0,
        "h": 0.05,
        "r_max": 16,
        "exact_reference": True,
    },
    "paper": {
        "d": 16,
        "model": {"kind": "lr-ising"},
        "T": 1.0,
        "h": 0.01,
        "theta": 1e-8,
        "r_min": 2,
        "r_max": 40,
        "c": 10.0,
        "exact_reference": False,
    },
    "convergence": {
        "d": 4,
        "model": {"kind": "lr-ising"},
        "T": 1.0,
        "h_list": [2.0 ** -(k + 2) for k in range(1, 9)],
        # with step rejection the rank reaches its full value 4 at once and every later
        # step is exact up to the truncation floor: no time-discretisation error to see
        "reject": False,
        "theta": 1e-8,
        "r_min": 2,
        "r_max": 40,
        "checkpoint_s": None,  # the end of each study is saved anyway
        "exact_reference": True,
    },
}
