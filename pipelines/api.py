"""``tilegraph.run``: one pipeline run from Python, the way ``tilegraph run`` does it.

>>> import tilegraph
>>> run = tilegraph.run("bilevel", preset="quick", cluster="sync",
...                     store="memory://doc")                       # doctest: +SKIP
>>> run.status, run.metrics["rel_dist_to_optimum"]                  # doctest: +SKIP
>>> run.open_dataset("result")                                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import ConfigError, build_config
from .execute import DEFAULT_RETRIES, execute
from .imports import check_trusted, prepare_user_code
from .progress import progress_factory
from .registry import get_pipeline


def run(
    name: str,
    *,
    preset: str | None = None,
    config: str | Mapping[str, Any] | None = None,
    sets: Iterable[str] | Mapping[str, Any] = (),
    cluster: str | Any = "local",
    store: str | Any = "./runs",
    resume: str | None = None,
    retries: int = DEFAULT_RETRIES,
    cluster_profile: str | None = None,
    progress: bool | None | Callable[..., Any] = False,
    trust_store: bool = False,
):
    """Run pipeline ``name`` into a run store and return the run.

    Parameters
    ----------
    name : str
        A registered pipeline (``tilegraph.available()``).
    preset : str, optional
        Named preset; default the pipeline's default preset.
    config : str or mapping, optional
        A YAML file of config fields, or the fields themselves (merged over the preset).
    sets : iterable of str or mapping
        ``"key=value"`` overrides as on the command line (values are YAML, dotted keys
        reach nested fields), or a mapping of dotted keys to values.
    cluster : str or cluster.Executor
        A cluster spec (``"local:2"``, ``"sync"``, ``"ray:2"`` …), or an open executor that
        the caller keeps and closes.
    store : str or storage.Root
        Run-store root: a path or fsspec URL.
    resume : str, optional
        Continue this run id from its newest checkpoint (its stored config is used;
        ``preset``, ``config`` and ``sets`` must be left out).
    retries : int
        Continuations after a lost worker.
    cluster_profile : str, optional
        Batch-scheduler profile file (``slurm`` …).
    progress : bool, None or callable
        Progress bars: off by default from Python; ``None`` shows them on a terminal; a
        callable is used as the factory ``progress(total=None, desc=None)``.
    trust_store : bool
        With ``resume``: import the code and open the URLs the stored config names.

    Returns
    -------
    storage.RunStore
        The completed run: ``status``, ``metrics``, ``config``, ``open_dataset(name)``.

    Raises
    ------
    pipelines.config.ConfigError
        Bad config, store, cluster spec or run id (nothing written).
    storage.LeaseHeld
        ``resume`` of a run that another live process is running.
    Exception
        Whatever the pipeline raised; the run is then marked ``failed``.
    """
    from tilegraph import cluster as _cluster
    from tilegraph import storage

    pipeline = get_pipeline(name)
    root = store if isinstance(store, storage.Root) else storage.Root(str(store))
    if isinstance(sets, Mapping):
        sets = [f"{k}={_yaml(v)}" for k, v in sets.items()]
    sets = list(sets)
    run_store = None
    if resume:
        if preset or config or sets:
            raise ConfigError(
                "resume continues a run with its stored config; drop preset/config/sets"
            )
        run_store = root.open(resume, pipeline=pipeline.name)
        cfg = build_config(pipeline, base=run_store.config)
        check_trusted(cfg, resume, trust_store)
    else:
        cfg = build_config(pipeline, preset, config, sets)
    code = prepare_user_code([cfg], config if isinstance(config, str) else None)
    lease = None if run_store is None else run_store.lease().acquire()  # or LeaseHeld
    owned = isinstance(cluster, str)
    try:
        if owned:
            executor = _cluster.connect(cluster, profile=cluster_profile, code=code)
        else:
            executor = cluster
            executor.add_code(code)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    backend = cluster if owned else str(getattr(executor, "spec", type(executor).__name__))
    try:
        if run_store is None:
            dump = cfg.model_dump(mode="json")
            run_store = root.create(pipeline.name, config=dump, backend=backend)
            lease = run_store.lease().acquire()
        else:
            run_store.mark_running()
        execute(
            pipeline,
            cfg,
            run_store,
            executor,
            resume=bool(resume),
            progress=progress if callable(progress) else progress_factory(progress),
            retries=retries,
        )
    finally:
        if owned:
            executor.close()
        if lease is not None:
            lease.release()
    return run_store


def _yaml(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["run"]
