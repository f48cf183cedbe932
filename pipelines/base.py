"""The pipeline contract."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

#: Groups of a run that the framework removes once the run is complete (unless the
#: config says ``keep_work=true``): checkpoints, scratch arrays, done markers.
SCRATCH = "work"
DONE = "done"


@dataclass
class RunContext:
    """What a pipeline's ``run`` receives besides its config: where it runs, where its
    data go, and the lifecycle services the framework owns.

    The framework (:func:`tilegraph.pipelines.execute.execute`) times the run and its
    phases, removes checkpoints, scratch arrays and done markers once the run is
    complete, and marks it complete; a pipeline asks for these services instead of
    writing them again.

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
    timings : dict of str to float
        Seconds per phase (``setup_s``, ``solve_s``, ``output_s``), filled by `phase`.
    """

    executor: Any
    store: Any
    progress: Callable[..., Any]
    resume: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    _phase: tuple[str, float] | None = field(default=None, repr=False)

    def enter(self, name: str) -> None:
        """The run is now in phase ``name``: ``"setup"`` (the framework enters it before
        ``run``), ``"solve"`` or ``"output"``. The seconds of each phase go to
        ``timings[name + "_s"]`` and into the run's metrics."""
        self.close_phase()
        self._phase = (name, time.perf_counter())

    def close_phase(self) -> None:
        """End the current phase (the framework does when ``run`` returns)."""
        if self._phase is not None:
            name, t0 = self._phase
            key = f"{name}_s"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0
            self._phase = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (then back to the phase before it)."""
        outer = self._phase[0] if self._phase is not None else None
        self.enter(name)
        try:
            yield
        finally:
            self.close_phase()
            if outer is not None:
                self.enter(outer)

    def scratch(self, name: str, shape, chunks, dims, *, reuse: bool = False, **kwargs):
        """A scratch array ``work/<name>`` (no compression unless asked), removed with
        the run's other scratch once the run is complete.

        Parameters
        ----------
        reuse : bool
            Return the existing array when the run is resumed and it exists (state
            that a checkpoint refers to); otherwise it is created anew.
        """
        path = f"{SCRATCH}/{name}"
        if reuse and self.resume and self.store.has(path):
            return self.store.array(path)
        kwargs.setdefault("compressors", None)
        return self.store.create_array(
            path, shape, chunks, dimension_names=dims, overwrite=True, **kwargs
        )

    def has_scratch(self, name: str) -> bool:
        """Whether scratch array ``name`` exists."""
        return self.store.has(f"{SCRATCH}/{name}")

    def mark_done(self, key: str) -> None:
        """Record that part ``key`` of the run is finished (kept until the run is
        complete, so that a resumed run skips it)."""
        self.store.create_array(f"{DONE}/{key}", (1,), (1,), overwrite=True)

    def is_done(self, key: str) -> bool:
        """Whether a resumed run finished part ``key`` before."""
        return self.resume and self.store.has(f"{DONE}/{key}")

    def save_figure(self, fig: Any, name: str = "summary.png") -> str:
        """Save a Matplotlib figure next to the run's data and close it."""
        import matplotlib.pyplot as plt

        try:
            return self.store.save_figure(fig, name)
        finally:
            plt.close(fig)


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
