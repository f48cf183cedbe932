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

from .execute import DEFAULT_RETRIES
from .launch import connect, prepare
from .progress import progress_factory


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
        Bad config, store, cluster spec or run id, a run another live process owns, a
        run that does not fit the memory there is, a runner that cannot be imported
        (nothing written); the same checks and one-line messages as ``tilegraph run``.
    Exception
        Whatever the pipeline raised; the run is then marked ``failed``.
    """
    if isinstance(sets, Mapping):
        sets = [f"{k}={_yaml(v)}" for k, v in sets.items()]
    owned = isinstance(cluster, str)
    launch = prepare(
        name,
        preset=preset,
        config=config,
        sets=list(sets),
        store=store,
        resume=resume,
        cluster=cluster if owned else None,
        cluster_profile=cluster_profile,
        trust_store=trust_store,
    )
    with launch:
        launch.check_memory()
        if owned:
            executor = connect(launch.spec, cluster_profile, launch.code)
        else:
            executor = cluster
            executor.add_code(launch.code)
        try:
            return launch.start(
                executor,
                progress=progress if callable(progress) else progress_factory(progress),
                retries=retries,
            )
        finally:
            if owned:
                executor.close()


def _yaml(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["run"]
