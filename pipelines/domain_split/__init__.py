"""Pipeline ``domain-split``: steady advection-diffusion by two-level anisotropic domain
splitting (Trotti, arXiv 2303.01163), with the fine solution in Zarr written by the
workers."""

from ..base import Pipeline
from .config import PRESETS, DomainSplitConfig
from .resources import estimate
from .runner import METRICS, run

PIPELINE = Pipeline(
    name="domain-split",
    description="d-dimensional advection-diffusion by two-level domain splitting",
    config=DomainSplitConfig,
    presets=PRESETS,
    run=run,
    metric_names=METRICS,
    estimate=estimate,
)

__all__ = ["PIPELINE", "DomainSplitConfig", "run"]
