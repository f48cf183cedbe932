"""Pipeline ``ttn``: time evolution of a tree tensor network by the parallel BUG
integrator (Ceruti, Kusch, Lubich, Sulz 2024), every leaf K-step and node Galerkin step
of a time step an executor task; the rank-adaptive sequential BUG as the baseline."""

from ..base import Checks, Deferred, Pipeline
from .config import PRESETS, TTNConfig
from .preflight import preflight
from .resources import estimate

METRICS = (
    "final_error_vs_exact",
    "max_rank",
    "norm_drift",
    "energy_drift",
    "steps",
    "rejected_steps",
    "wall_s",
)

PIPELINE = Pipeline(
    name="ttn",
    description="tree-tensor-network time integration by the parallel BUG integrator",
    config=TTNConfig,
    presets=PRESETS,
    run=Deferred("tilegraph.pipelines.ttn.runner:run"),
    metric_names=METRICS,
    estimate=estimate,
    preflight=preflight,
    # the small run splits the tree below the root's children (4 subtrees under 2
    # branch workers), so that the same-bits suite covers that path on Dask and Ray; the
    # fault runs keep one subtree per child of the root
    checks=Checks(
        small={"subtree_depth": 2},
        long={"h": 0.1, "checkpoint_s": 0},
        datasets=("history",),
    ),
)

__all__ = ["PIPELINE", "TTNConfig"]
