"""Pipeline ``picard``: parallel diffusion sampling by sliding-window Picard iteration
(ParaDiGMS, Shih et al. 2023) with model replicas on the workers, plus an accelerated
variant (triangular Anderson mixing)."""

from ..base import Pipeline
from .config import PRESETS, PicardConfig
from .resources import estimate
from .runner import METRICS, run

PIPELINE = Pipeline(
    name="picard",
    description="parallel diffusion sampling by sliding-window Picard iteration (ParaDiGMS)",
    config=PicardConfig,
    presets=PRESETS,
    run=run,
    metric_names=METRICS,
    estimate=estimate,
)

__all__ = ["PIPELINE", "PicardConfig", "run"]
