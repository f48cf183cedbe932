"""One run from its inputs to a complete store: the core that ``tilegraph run`` and
:func:`tilegraph.run` share.

:func:`prepare` checks everything that can be checked before anything is written (the
pipeline, the config, the store, the run to resume and its owner, the user's code, the
cluster spec, the memory estimate) and raises :class:`~tilegraph.pipelines.config.ConfigError`
(one line, naming what is wrong) otherwise. :meth:`Launch.start` then checks the open
executor (GPUs, its workers' memory), creates the run or marks it running, holds its
lease and runs :func:`~tilegraph.pipelines.execute.execute`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from . import resources
from .base import Estimate, Pipeline
from .config import ConfigError, build_config
from .execute import DEFAULT_RETRIES, execute
from .imports import check_trusted, prepare_user_code
from .progress import silent
from .registry import get_pipeline


class UsageError(ConfigError):
    """Bad input that is not a config field (a missing run, an unknown pipeline, a
    cluster or store that cannot be used)."""


@dataclass
class Launch:
    """A run checked and ready to start.

    Attributes
    ----------
    pipeline : Pipeline
    config : pydantic.BaseModel
        The validated config (the stored one for a resume).
    root : storage.Root
        The checked run-store root.
    run : storage.RunStore or None
        The run to resume (its lease held), None for a new run.
    code : tuple of str
        Folders and modules of the user's code to ship to the workers.
    spec : cluster.ClusterSpec or None
        The parsed ``cluster`` (None when an open executor was given).
    estimate : Estimate or None
        Memory and store size for ``workers`` workers.
    workers : int
        Workers the estimate assumed (the spec's, before connecting).
    """

    pipeline: Pipeline
    config: BaseModel
    root: Any
    run: Any
    code: tuple[str, ...]
    spec: Any
    estimate: Estimate | None
    workers: int
    owned: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    #: a resumed run whose lease this launch holds (taken over from its killed process)
    holds_resume: bool = False
    started: bool = field(default=False, init=False)

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the run's lease.

        A resumed run that never started (a refused cluster, an interrupt while it
        connected) and still says ``running`` from its killed process is marked failed
        first, as interrupted: without its old lease nothing else would tell that
        nothing runs it.
        """
        _let_go(self.run if self.holds_resume and not self.started else None, self.owned)

    def check_memory(self) -> None:
        """Refuse a run whose estimate does not fit this machine (before connecting)."""
        resources.check_fits(self.estimate, driver_limit=resources.available_memory())

    def start(
        self,
        executor: Any,
        *,
        progress: Callable[..., Any] = silent,
        retries: int = DEFAULT_RETRIES,
        report: str | None = None,
        backend: str | None = None,
    ):
        """Run it on the open ``executor`` and return the complete run.

        Parameters
        ----------
        report : str, optional
            Write the backend's performance report of the run to this path.
        backend : str, optional
            What the run records as its backend (default: the spec).

        Raises
        ------
        ConfigError
            The executor cannot run it (no GPU for ``device=cuda``, too little memory
            per worker); nothing written.
        Exception
            Whatever the pipeline raised; the run is then marked ``failed``.
        """
        config = self.config
        check_device([config], executor, str(self.spec or executor.spec))
        est = resources.estimate(self.pipeline, config, executor.n_workers)
        resources.check_executor(est, executor)
        if self.run is None:
            backend = backend or str(self.spec or getattr(executor, "spec", "executor"))
            dump = config.model_dump(mode="json")
            self.run = self.root.create(self.pipeline.name, config=dump, backend=backend)
            self.owned.enter_context(own(self.run))
            resume = False
        else:
            self.started = True
            self.run.mark_running()
            resume = True
        with executor.report(report) if report else contextlib.nullcontext():
            execute(
                self.pipeline,
                config,
                self.run,
                executor,
                resume=resume,
                progress=progress,
                retries=retries,
            )
        if report:
            self.run.add_report(report)
        return self.run


def _let_go(resumed: Any, owned: contextlib.ExitStack) -> None:
    """Release what ``owned`` holds; a ``resumed`` run (its lease held, never started)
    that still says ``running`` from its killed process is first marked failed, as
    interrupted: without its old lease nothing else would tell that nothing runs it."""
    try:
        if resumed is not None:
            from tilegraph import storage

            with contextlib.suppress(Exception):
                if resumed.status == storage.RUNNING:
                    resumed.mark_failed(
                        "interrupted (its process was killed); continue it with --resume "
                        f"{resumed.run_id}"
                    )
    finally:
        owned.close()


def load_runner(pipeline: Pipeline) -> None:
    """Import a deferred runner (:class:`~tilegraph.pipelines.base.Deferred`) before any
    cluster starts or store is written: a runner that cannot be imported (a plugin's
    bug, a missing dependency) is one ``UsageError`` line."""
    try:
        pipeline.load_run()
    except Exception as exc:
        raise UsageError(
            f"pipeline {pipeline.name}: cannot import its runner "
            f"{getattr(pipeline.run, 'target', pipeline.run)} ({type(exc).__name__}: {exc})"
        ) from exc


def check_device(configs, executor, spec: str) -> None:
    """``device=cuda`` needs GPUs on the executor: say so before anything is written."""
    if any(getattr(c, "device", "cpu") == "cuda" for c in configs) and not executor.n_gpus:
        raise UsageError(
            f"device=cuda: --cluster {spec} has no GPU (use 'local-cuda' or 'ray' on a GPU "
            "node, or device=cpu)"
        )


def connect(spec, profile: str | None = None, code=()):
    """Start or reach the cluster ``spec``; what fails is one line (a remote traceback,
    as Ray's client server sends, cut to its first and last line)."""
    from tilegraph import cluster

    try:
        return cluster.connect(spec, profile=profile, code=code)
    except (ValueError, ImportError, OSError, TimeoutError, RuntimeError) as exc:
        cause = exc.__context__
        while cause is not None:  # an interrupt that broke a lock or a loop on its way
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None
            cause = cause.__context__
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        gist = lines[0] if len(lines) == 1 else type(exc).__name__
        if len(lines) > 1:
            gist = f"{lines[0]} ... {lines[-1]}"
        raise UsageError(f"--cluster {spec}: cannot start or reach it ({gist})") from None


def own(run):
    """The run's lease (one live owner per run), or a one-line error."""
    from tilegraph.storage.lease import LeaseHeld

    try:
        return run.lease().acquire()
    except LeaseHeld as exc:
        raise UsageError(f"{exc}; wait for it, or stop it first") from None


def check_store(store: Any):
    """The run-store root of ``store`` (a path, URL or ``storage.Root``), checked."""
    from tilegraph import storage
    from tilegraph.storage.urls import check_root

    try:
        root = store if isinstance(store, storage.Root) else storage.Root(str(store))
        check_root(root.url)
    except (ValueError, ImportError, OSError) as exc:
        raise UsageError(f"--store: {exc}") from None
    return root


#: Local workers allowed per core: a few per core can help I/O-bound work; beyond that
#: a typo (``local:200``) would start hundreds of processes.
LOCAL_OVERSUBSCRIPTION = 8


def check_cluster(cluster: str, store_url: str, profile: str | None = None):
    """The parsed cluster spec, checked (and a batch scheduler's profile) before anything
    starts."""
    from tilegraph import cluster as _cluster
    from tilegraph.cluster.jobqueue import load_profile
    from tilegraph.cluster.specs import HPC_KINDS

    try:
        spec = _cluster.parse_spec(cluster)
    except ValueError as exc:
        raise UsageError(f"--cluster: {exc}") from None
    check_memory_store(store_url, spec.backend, str(spec))
    # processes on this machine (threads are cheap; an address is another machine's)
    local = on_this_machine(spec) and spec.backend not in ("sync", "threads")
    cores = os.cpu_count() or 1
    if local and spec.n is not None and spec.n > LOCAL_OVERSUBSCRIPTION * cores:
        raise UsageError(
            f"--cluster {spec}: {spec.n} workers on this machine's {cores} cores; at most "
            f"{LOCAL_OVERSUBSCRIPTION * cores} here (more workers need a cluster: see README)"
        )
    if spec.kind in HPC_KINDS:
        try:
            load_profile(spec.kind, profile)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif profile is not None and spec.kind != "tls":
        raise UsageError(
            f"--cluster-profile: used only by batch schedulers ({', '.join(HPC_KINDS)}) "
            f"and tls:// schedulers, not by --cluster {spec}"
        )
    return spec


def check_memory_store(store_url: str, backend: str, spec: str) -> None:
    """A ``memory://`` store lives inside this process: only the in-process backends
    (``sync``, ``threads``) reach it."""
    if store_url.lower().startswith("memory://") and backend not in ("sync", "threads"):
        raise UsageError(
            f"--store {store_url[:200]}: a memory:// store lives inside this process, "
            f"where the worker processes of --cluster {spec} cannot reach it; use a path "
            "or an object store, or --cluster sync/threads"
        )


def on_this_machine(spec) -> bool:
    """Whether a parsed spec's workers run on this machine (in-process, local worker
    processes, a local Ray instance), not at an address or in batch jobs."""
    return spec.kind in ("sync", "threads", "local", "local-cuda") or (
        spec.kind == "ray" and spec.address is None
    )


def workers_guess(spec, profile: str | None = None) -> int:
    """Workers a parsed spec will have, before connecting (1 where it cannot be known);
    a batch scheduler's: jobs (``slurm:JOBS`` or the profile's) x the profile's
    ``processes`` per job."""
    import os

    from tilegraph.cluster.specs import HPC_KINDS

    if spec is None:
        return 1
    if spec.kind in HPC_KINDS:
        from tilegraph.cluster.jobqueue import load_profile

        p = load_profile(spec.kind, profile)
        return (spec.n or p.jobs) * p.workers_per_job
    if spec.n is not None:
        return spec.n
    if spec.kind == "local":
        return min(os.cpu_count() or 1, 4)
    return 1


def prepare(
    name: str,
    *,
    preset: str | None = None,
    config: str | Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    store: Any = "./runs",
    resume: str | None = None,
    cluster: str | None = "local",
    cluster_profile: str | None = None,
    trust_store: bool = False,
    own_run: bool = True,
) -> Launch:
    """Check a run's inputs; nothing is written.

    Parameters
    ----------
    name : str
        A registered pipeline.
    preset, config, sets
        As :func:`~tilegraph.pipelines.config.build_config`.
    store : str or storage.Root
    resume : str, optional
        A run id to continue (then ``preset``, ``config``, ``sets`` must be empty).
    cluster : str or None
        A cluster spec; None when the caller brings an open executor.
    own_run : bool
        Take the resumed run's lease (False for a dry run).

    Raises
    ------
    ConfigError
        One line naming what is wrong (:class:`UsageError` when it is not a config
        field); ``storage.LeaseHeld`` never escapes (it becomes a ``UsageError``).
    """
    try:
        pipeline = get_pipeline(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    root = check_store(store)
    run = None
    owned = contextlib.ExitStack()
    if resume:
        if preset or config or list(sets):
            raise UsageError(
                "--resume continues a run with its stored config; "
                "drop --preset, --config and --set"
            )
        try:
            run = root.open(resume, pipeline=pipeline.name)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"--resume: {exc.args[0] if exc.args else exc}") from None
        if own_run:
            owned.enter_context(own(run))
    held = run if own_run else None  # a resumed run this launch owns
    if resume:
        try:
            if run.status == "complete":
                raise UsageError(f"--resume: run {resume} is already complete")
            cfg = build_config(pipeline, base=run.config)
            check_trusted(cfg, run.run_id, trust_store)
        except BaseException:
            _let_go(held, owned)
            raise
    try:
        if run is None:
            cfg = build_config(pipeline, preset, config, sets)
        code = tuple(prepare_user_code([cfg], config if isinstance(config, str) else None))
        if pipeline.preflight is not None:
            pipeline.preflight(cfg)
        load_runner(pipeline)
        spec = None if cluster is None else check_cluster(cluster, root.url, cluster_profile)
        workers = workers_guess(spec, cluster_profile)
        est = resources.estimate(pipeline, cfg, workers)
        resources.check_size(est, cfg)
    except SystemExit as exc:  # the user's code (a factory, a problem's method) exited
        _let_go(held, owned)
        raise UsageError(
            f"the user's code exited (SystemExit: {exc.code}) while the run was checked"
        ) from None
    except BaseException:
        _let_go(held, owned)
        raise
    return Launch(pipeline, cfg, root, run, code, spec, est, workers, owned, held is not None)


__all__ = [
    "Launch",
    "UsageError",
    "check_cluster",
    "check_device",
    "check_memory_store",
    "check_store",
    "connect",
    "load_runner",
    "on_this_machine",
    "own",
    "prepare",
]
