"""Pipeline ``bilevel``: multi-block bilevel optimisation by blockwise variance-reduced
estimators (BSVRB v1/v2, Hu et al. ICML 2023) and baselines, the sampled blocks of an
iteration running as tasks on per-block Zarr chunks."""

from ..base import Checks, Deferred, Pipeline
from .config import PRESETS, BilevelConfig
from .preflight import preflight
from .resources import estimate

METRICS = ("iterations", "rel_dist_to_optimum", "grad_norm", "upper_objective", "wall_s")

PIPELINE = Pipeline(
    name="bilevel",
    description="multi-block bilevel optimisation (BSVRB) with blocks as parallel tasks",
    config=BilevelConfig,
    presets=PRESETS,
    run=Deferred("tilegraph.pipelines.bilevel.runner:run"),
    metric_names=METRICS,
    estimate=estimate,
    preflight=preflight,
    checks=Checks(
        small={"max_iter": 60, "tol": None},
        long={"max_iter": 80, "tol": None, "checkpoint_s": 0.25},
        datasets=("result", "history"),
    ),
)

__all__ = ["PIPELINE", "BilevelConfig"]
