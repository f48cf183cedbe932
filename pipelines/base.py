"""The pipeline contract."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Groups of a run that the framework removes once the run is complete (unless the
#: config says ``keep_work=true``): checkpoints, scratch arrays, done markers.
SCRATCH = "work"
DONE = "done"


class PipelineConfig(BaseModel):
    """Fields every pipeline's config has: the lifecycle the framework runs.

    A pipeline's config subclasses it (unknown fields are refused, one error line).
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint_s: float | None = Field(
        default=60.0,
        ge=0,
        description="seconds of wall time between checkpoints (0: after every step; "
        "null: none, a resumed run starts its unfinished part over)",
    )
    keep_work: bool = Field(
        default=False,
        description="keep checkpoints, scratch arrays and done markers after the run",
    )


@dataclass
class Resumes:
    """What the resumes of one run restored, summed over continuations.

    Attributes
    ----------
    checkpoint : int or None
        Step of the newest checkpoint a resume restored.
    skipped : int
        Progress steps a resumed run did not do again (from checkpoints and done marks).
    looked : bool
        Whether the run asked for a checkpoint (a run that failed before it did
        restored nothing yet).
    """

    checkpoint: int | None = None
    skipped: int = 0
    looked: bool = False


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
    bars : callable
        ``bars(total=None, desc=None)``: the progress-bar factory behind
        :meth:`progress` (tqdm on a terminal, silent otherwise).
    resume : bool
        True when the run continues an earlier one (``--resume``, or a continuation
        after a lost worker): :meth:`restore` returns the newest checkpoint.
    checkpoint_s : float or None
        Seconds between checkpoints (the config's ``checkpoint_s``): :meth:`checkpoint`
        saves only when they have passed; 0 saves every time, None never.
    timings : dict of str to float
        Seconds per phase (``setup_s``, ``solve_s``, ``output_s``), filled by `phase`.
    resumes : Resumes
        What resumes restored (recorded in the run's provenance).
    """

    executor: Any
    store: Any
    bars: Callable[..., Any]
    resume: bool = False
    checkpoint_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    resumes: Resumes = field(default_factory=Resumes)
    _phase: tuple[str, float] | None = field(default=None, repr=False)
    _last_save: float = field(default_factory=time.perf_counter, repr=False)

    def warn(self, message: str) -> None:
        """Tell the user something about the result they should know (one line on
        standard error, ``warning: ...``); the pipeline also returns it in its metrics
        under ``warnings`` so that it stays with the run."""
        import sys

        sys.stderr.write(f"warning: {message}\n")

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

    # -- checkpoints --------------------------------------------------------------------
    def restore(self, valid: Callable[[Any], bool] | None = None):
        """The newest checkpoint to continue from, or None to start over.

        Parameters
        ----------
        valid : callable, optional
            ``valid(checkpoint) -> bool``: whether the state it refers to is still there
            (a scratch array, the part of the run it belongs to); None when it is not.

        Returns
        -------
        storage.checkpoint.Checkpoint or None
            ``(step, arrays, scalars)`` as saved by :meth:`checkpoint`; always None for a
            run that is not resumed.
        """
        if not self.resume:
            return None
        self.resumes.looked = True
        saved = self.store.load_checkpoint()
        if saved is None or (valid is not None and not valid(saved)):
            # starting over: checkpoints of the earlier life (their steps above the new
            # ones) would otherwise stay the newest and be refused again at every resume
            if self.store.checkpoint_steps():
                self.store.clear_checkpoints()
            return None
        self.resumes.checkpoint = int(saved.step)
        return saved

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_s`` seconds have passed since the last checkpoint (or the
        start): build an expensive payload only then."""
        if self.checkpoint_s is None:
            return False
        return time.perf_counter() - self._last_save >= self.checkpoint_s

    def checkpoint(
        self,
        step: int,
        arrays: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        scalars: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
        keep: int | None = 3,
    ) -> bool:
        """Save the run's state as checkpoint ``step`` when one is due.

        Parameters
        ----------
        step : int
            Increases over the whole run (parts of a run use offsets), so that the
            newest checkpoint is the one to continue from.
        arrays : mapping of str to array_like, or a callable returning one
            The state (a callable is only called when the checkpoint is saved).
        scalars : mapping, optional
            JSON-able state.
        force : bool
            Save even when not due (``checkpoint_s`` seconds have not passed).
        keep : int or None
            Newest checkpoints kept.

        Returns
        -------
        bool
            Whether it was saved: state a checkpoint refers to must stay untouched
            until the next saved one.
        """
        if not (force or self.checkpoint_due()):
            return False
        payload = arrays() if callable(arrays) else arrays
        self.store.save_checkpoint(step, payload, scalars, keep=keep)
        self._last_save = time.perf_counter()
        return True

    def skipped(self, steps: int) -> None:
        """Record ``steps`` a resumed run did not do again outside a progress bar (a
        part finished before, see :meth:`is_done`)."""
        if self.resume:
            self.resumes.skipped += int(steps)

    def progress(self, total: int | None, desc: str, done: int = 0):
        """A progress bar over ``total`` steps, ``done`` of them already done.

        On a resumed run, ``done`` counts as steps skipped (recorded in the run's
        provenance as ``restored``).

        Returns
        -------
        progress.Progress
            A context manager with ``update(n=1)``, ``set_postfix_str(s)`` and
            ``seconds_per_step()``.
        """
        from .progress import Progress

        self.skipped(done)
        bar = self.bars(total=total, desc=desc)
        if done:
            bar.update(done)
        return Progress(bar)

    def scratch(self, name: str, shape, chunks, dims, *, reuse: bool = False, **kwargs):
        """A scratch array ``work/<name>`` (no compression unless asked), removed with
        the run's other scratch once the run is complete.

        Parameters
        ----------
        reuse : bool
            Return the existing array when it exists (what a resumed run wrote before:
            state that a checkpoint refers to); otherwise it is created anew.
        """
        path = f"{SCRATCH}/{name}"
        kwargs.setdefault("compressors", None)
        if reuse:
            return self.store.require_array(path, shape, chunks, dimension_names=dims, **kwargs)
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
    worker_floor_bytes : int or None
        One worker's peak with the least the run adapts down to where the workers'
        memory is short (domain-split's FGMRES basis); None: it does not adapt.
    """

    driver_bytes: int
    worker_bytes: int
    store_bytes: int
    field: str
    alternative: str = "more workers"
    worker_floor_bytes: int | None = None


@dataclass(frozen=True)
class Checks:
    """Runs of a pipeline for the generic pipeline suite (``tests/test_pipelines.py``),
    which covers every registered pipeline, a plugin's included, with them.

    Attributes
    ----------
    small : mapping of str to value
        Dotted config overrides for a run of a few seconds (same bits on every backend).
    long : mapping of str to value
        Overrides for a run of 10-30 s on two workers that saves checkpoints often
        (``checkpoint_s=0``), so that a killed worker or driver interrupts it.
    datasets : tuple of str
        Datasets whose variables must be the same bits after an interruption.
    """

    small: Mapping[str, Any] = field(default_factory=dict)
    long: Mapping[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] = ("result",)


class Deferred:
    """A callable that imports its target on :meth:`load` or its first call.

    A pipeline's runner imports what only a run needs (Zarr, SciPy, Matplotlib: about a
    second for the four built-in pipelines); ``tilegraph list``, ``--help`` and a config
    error need the config models alone. It pickles as its target's name.

    Parameters
    ----------
    target : str
        ``"package.module:name"``.
    """

    __slots__ = ("target", "_fn")

    def __init__(self, target: str) -> None:
        module, _, name = target.partition(":")
        if not module or not name:
            raise ValueError(f"Deferred needs 'module:name', got {target!r}")
        self.target = target
        self._fn: Callable | None = None

    def load(self) -> Callable:
        """Import the target (once) and return it.

        Raises
        ------
        ImportError, AttributeError
            The module cannot be imported or has no such name.
        """
        if self._fn is None:
            from importlib import import_module

            module, _, name = self.target.partition(":")
            self._fn = getattr(import_module(module), name)
        return self._fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (Deferred, (self.target,))

    def __repr__(self) -> str:
        return f"Deferred({self.target!r})"


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
        A :class:`Deferred` imports the runner only when a run starts.
    metric_names : tuple of str
        The headline metrics, in the order the end-of-run table shows them.
    estimate : callable, optional
        ``estimate(config, workers: int) -> Estimate``: peak memory per process and store
        size, from the config alone (no arrays allocated). Checked against what the
        processes can use before anything is written, and printed by ``--dry-run``.
    checks : Checks
        The runs the generic pipeline suite makes of it.
    preflight : callable, optional
        ``preflight(config)``: checks that need the user's code or data (importable by
        then), run before anything is written; raises ``ConfigError`` (one line).
    """

    name: str
    description: str
    config: type[BaseModel]
    presets: Mapping[str, dict] = field(default_factory=dict)
    run: Callable[[BaseModel, RunContext], dict] | None = None
    metric_names: tuple[str, ...] = ()
    default_preset: str = "quick"
    estimate: Callable[[BaseModel, int], Estimate] | None = None
    checks: Checks = field(default_factory=Checks)
    preflight: Callable[[BaseModel], None] | None = None

    def load_run(self) -> Callable[[BaseModel, RunContext], dict]:
        """``run``, its module imported first when it is :class:`Deferred`."""
        return self.run.load() if isinstance(self.run, Deferred) else self.run
