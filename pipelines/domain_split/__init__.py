"""Pipeline ``domain-split``: steady advection-diffusion by two-level anisotropic domain
splitting (Trotti, arXiv 2303.01163), with the fine solution in Zarr written by the
workers."""

from ..base import Checks, Deferred, Pipeline
from .config import PRESETS, DomainSplitConfig
from .preflight import preflight
from .resources import estimate

METRICS = (
    "rel_error_exact",
    "rel_error_direct",
    "rel_residual",
    "iterations",
    "unknowns",
    "wall_s",
)

PIPELINE = Pipeline(
    name="domain-split",
    description="d-dimensional advection-diffusion by two-level domain splitting",
    config=DomainSplitConfig,
    presets=PRESETS,
    run=Deferred("tilegraph.pipelines.domain_split.runner:run"),
    metric_names=METRICS,
    estimate=estimate,
    preflight=preflight,
    checks=Checks(
        small={"n_fine": 60, "n_coarse": 5},
        long={
            "tol": 1e-11,
            "n_fine": 120,
            "n_coarse": 6,
            "smoother": False,
            "restart": 10,
            "checkpoint_s": 0,
        },
        datasets=("result", "history"),
    ),
)

__all__ = ["PIPELINE", "DomainSplitConfig"]
