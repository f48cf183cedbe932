"""Pipeline ``picard``: parallel diffusion sampling by sliding-window Picard iteration
(ParaDiGMS, Shih et al. 2023) with model replicas on the workers, plus an accelerated
variant (triangular Anderson mixing)."""

from ..base import Checks, Deferred, Pipeline
from .config import PRESETS, PicardConfig
from .preflight import preflight
from .resources import estimate

METRICS = (
    "iterations",
    "model_evals",
    "sequential_steps",
    "max_abs_diff_vs_sequential",
    "sampling_s",
    "sequential_wall_s",
    "wall_s",
)

PIPELINE = Pipeline(
    name="picard",
    description="parallel diffusion sampling by sliding-window Picard iteration (ParaDiGMS)",
    config=PicardConfig,
    presets=PRESETS,
    run=Deferred("tilegraph.pipelines.picard.runner:run"),
    metric_names=METRICS,
    estimate=estimate,
    preflight=preflight,
    checks=Checks(
        small={"n_samples": 8, "batch_size": 4, "steps": 200, "train_steps": 200},
        long={
            "n_samples": 32,
            "batch_size": 16,
            "steps": 300,
            "compare_sequential": False,
            "checkpoint_s": 0,
        },
        datasets=("result", "history"),
    ),
)

__all__ = ["PIPELINE", "PicardConfig"]
