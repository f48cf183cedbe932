"""The pipeline contract."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


@dataclass
class RunContext:
    """What a pipeline's ``run`` receives besides its config.

    Attributes
    ----------
    executor : cluster.Executor
        Where tasks run.
    store : storage.RunStore
        Where the run's arrays, results, checkpoints and metrics go.
    progress : callable
        ``progress(total=None, desc=None)`` returning a context manager with
        ``update(n=1)`` and ``set_postfix_str(s)``; a no-op when not on a terminal.
    resume : bool
        True when the run continues an earlier one (``--resume``): load the newest
        checkpoint from ``store`` and go on from there.
    """

    executor: Any
    store: Any
    progress: Callable[..., Any]
    resume: bool = False


@dataclass(frozen=True)
class Estimate:
    """What a run will need, estimated from its config before it starts.

    Attributes
    ----------
    driver_bytes : int
        Peak memory of the driver process (the ``tilegraph`` command), bytes.
    worker_bytes : int
        Peak memory of one worker process, bytes.
    store_bytes : int
        Bytes the run writes to its store (uncompressed), checkpoints included.
    field : str
        The config field that drives the size (what to lower).
    alternative : str
        What else makes it fit (``"out_of_core=true"``, ``"more workers"`` …).
    """

    driver_bytes: int
    worker_bytes: int
    store_bytes: int
    field: str
    alternative: str = "more workers"


@dataclass(frozen=True)
class Pipeline:
    """One problem family.

    Attributes
    ----------
    name : str
        What ``tilegraph run NAME`` calls it.
    description : str
        One line for ``tilegraph list``.
    config : type[pydantic.BaseModel]
        The config model; every field has a default, presets override some.
    presets : mapping of str to dict
        Named partial configs; ``default_preset`` is used when none is given.
    run : callable
        ``run(config, ctx: RunContext) -> dict`` of headline metrics (JSON-safe). It
        writes its arrays and results into ``ctx.store`` and may write ``summary.png``.
    metric_names : tuple of str
        The headline metrics, in the order the end-of-run table shows them.
    estimate : callable, optional
        ``estimate(config, workers: int) -> Estimate``: peak memory per process and store
        size, from the config alone (no arrays allocated). Checked against what the
        processes can use before anything is written, and printed by ``--dry-run``.
    """

    name: str
    description: str
    config: type[BaseModel]
    presets: Mapping[str, dict] = field(default_factory=dict)
    run: Callable[[BaseModel, RunContext], dict] | None = None
    metric_names: tuple[str, ...] = ()
    default_preset: str = "quick"
    estimate: Callable[[BaseModel, int], Estimate] | None = None
