"""``tilegraph.run``: one pipeline run from Python, the way ``tilegraph run`` does it.

>>> import tilegraph
>>> run = tilegraph.run("bilevel", preset="quick", cluster="sync",
...                     store="memory://doc")                       # doctest: +SKIP
>>> run.status, run.metrics["rel_dist_to_optimum"]                  # doctest: +SKIP
>>> run.open_dataset("result")                                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import ConfigError
from .execute import DEFAULT_RETRIES
from .launch import UsageError, check_memory_store, connect, prepare
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
    sets : iterable of str, str or mapping
        ``"key=value"`` overrides as on the command line (values are YAML, dotted keys
        reach nested fields; one string is one override), or a mapping of dotted keys to
        Python values (a string stays a string; NumPy scalars and arrays are taken).
    cluster : str, cluster.Spec, cluster.Executor or None
        A cluster spec (``"local:2"``, ``"sync"``, ``"ray:2"`` …; None: ``"local"``), or an
        open executor that the caller keeps and closes.
    store : str, os.PathLike or storage.Root
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
    TypeError
        An argument of a type ``run`` does not take (named in the message).
    pipelines.config.ConfigError
        Bad config, store, cluster spec or run id, a run another live process owns, a
        run that does not fit the memory there is, a runner that cannot be imported
        (nothing written); the same checks and one-line messages as ``tilegraph run``,
        naming this function's arguments (``sets``, ``cluster``) where it names flags.
    Exception
        Whatever the pipeline raised; the run is then marked ``failed``.
    """
    sets, cluster = _checked(name, preset, config, sets, cluster, store, resume, retries)
    if not isinstance(trust_store, bool):
        raise TypeError(f"trust_store: True or False, not {trust_store!r}")
    if trust_store and resume is None:
        raise UsageError("trust_store: only with resume (it trusts a stored config)")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress: True, False, None or a callable, not {progress!r}")
    with _python_terms():
        return _run(name, preset, config, sets, cluster, store, resume, retries,
                    cluster_profile, progress, trust_store)  # fmt: skip


def _run(name, preset, config, sets, cluster, store, resume, retries, cluster_profile,
         progress, trust_store):  # fmt: skip
    owned = isinstance(cluster, str)
    if not owned:  # what check_cluster says of a spec, for an open executor
        check_memory_store(str(getattr(store, "url", store)), cluster.backend, cluster.spec)
    launch = prepare(
        name,
        preset=preset,
        config=config,
        sets=sets,
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


def _checked(name, preset, config, sets, cluster, store, resume, retries):
    """The arguments of :func:`run` checked: ``(sets as key=value strings, cluster)``.

    Raises
    ------
    TypeError
        An argument of a type ``run`` does not take (named).
    UsageError
        A value it cannot use (named).
    """
    from tilegraph.cluster import Executor, Spec
    from tilegraph.storage import Root

    def kind(value) -> str:
        return type(value).__name__

    if not isinstance(name, str):
        raise TypeError(f"name: a pipeline's name (str), not {kind(name)}")
    if preset is not None and not (isinstance(preset, str) and preset):
        raise TypeError(f"preset: a preset's name (str) or None, not {preset!r}")
    if config is not None and not isinstance(config, str | os.PathLike | Mapping):
        raise TypeError(f"config: a YAML file's path or a mapping of fields, not {kind(config)}")
    if sets is None:
        sets = ()
    elif isinstance(sets, str):  # one override, not its characters
        sets = (sets,)
    if isinstance(sets, Mapping):
        sets = [f"{k}={_json(k, v)}" for k, v in sets.items()]
    elif isinstance(sets, Iterable):
        sets = list(sets)
        bad = [s for s in sets if not isinstance(s, str)]
        if bad:
            raise TypeError(f"sets: 'key=value' strings, not {bad[0]!r} ({kind(bad[0])})")
    else:
        raise TypeError(f"sets: a list of 'key=value' strings or a mapping, not {kind(sets)}")
    if cluster is None:
        cluster = "local"
    elif isinstance(cluster, Spec):
        cluster = str(cluster)
    elif not isinstance(cluster, str | Executor):
        raise TypeError(
            f"cluster: a cluster spec ('sync', 'local:2', ...) or an open executor "
            f"(tilegraph.connect), not {kind(cluster)}"
        )
    if not (isinstance(store, str | os.PathLike | Root) and str(store)):
        raise TypeError(f"store: a run store's path or URL (or a storage.Root), not {store!r}")
    if resume is not None and not (isinstance(resume, str) and resume):
        raise TypeError(f"resume: a run id (str) or None, not {resume!r}")
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries: a whole number >= 0, not {retries!r}")
    if retries < 0:
        raise UsageError(f"retries: a whole number >= 0, not {retries}")
    return sets, cluster


def sweep(
    name: str,
    grid: Mapping[str, Iterable[Any]] | Iterable[str],
    *,
    preset: str | None = None,
    config: str | Mapping[str, Any] | None = None,
    sets: Iterable[str] | Mapping[str, Any] = (),
    cluster: str | Any = "local",
    store: str | Any = "./runs",
    cluster_profile: str | None = None,
    progress: bool | None | Callable[..., Any] = False,
):
    """Run pipeline ``name`` over a grid of config values, the way ``tilegraph sweep``
    does: one run per point, as tasks on the cluster; points already complete in the
    store (this sweep's, or any run of the same config) are not run again.

    Parameters
    ----------
    name : str
        A registered pipeline.
    grid : mapping or iterable of str
        ``{"n_fine": [50, 100], "problem.beta": [[1, 0], [2, 0]]}`` (Python values), or
        ``["n_fine=50,100", …]`` as on the command line.
    preset, config, sets, cluster, store, cluster_profile, progress
        As for :func:`run`. Interrupted (Ctrl-C), a sweep on a cluster it started stops
        and marks its unfinished points; on an open executor of the caller's, the points
        already submitted go on running there.

    Returns
    -------
    pipelines.sweep.SweepResult
        ``sweep_id``, ``path``, ``points``, ``complete``, ``failed``, ``skipped``,
        ``dataset`` (the gathered metrics, one dimension per swept key) and ``rows``.

    Raises
    ------
    TypeError, pipelines.config.ConfigError
        As :func:`run` (a bad point names the point and the field; nothing is written).
    """
    sets, cluster = _checked(name, preset, config, sets, cluster, store, None, 0)
    if isinstance(grid, Mapping):
        items = {}
        for key, values in grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                raise TypeError(f"grid[{key!r}]: a list of values, not {values!r}")
            items[key] = [_json(f"grid[{key!r}]", v) for v in values]
    elif isinstance(grid, Iterable) and not isinstance(grid, str | bytes):
        items = list(grid)
        if not all(isinstance(g, str) for g in items):
            raise TypeError("grid: a mapping of field to values, or 'key=v1,v2' strings")
    else:
        raise TypeError(f"grid: a mapping of field to values, not {type(grid).__name__}")
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress: True, False, None or a callable, not {progress!r}")
    with _python_terms():
        return _sweep(name, items, preset, config, sets, cluster, store, cluster_profile,
                      progress)  # fmt: skip


def _sweep(name, grid, preset, config, sets, cluster, store, cluster_profile, progress):
    from .launch import check_cluster
    from .sweep import execute_sweep, interrupted_points, prepare_sweep

    prep = prepare_sweep(name, grid, preset, config, sets, store)
    owned = isinstance(cluster, str)
    if owned:
        spec = check_cluster(cluster, prep.root.url, cluster_profile)
    else:
        spec = cluster.spec
        check_memory_store(prep.root.url, cluster.backend, str(spec))
    bars = progress if callable(progress) else progress_factory(progress)
    executor = connect(spec, cluster_profile, prep.code) if owned else cluster
    if not owned:
        executor.add_code(prep.code)
    try:
        return execute_sweep(prep, executor, spec, bars)
    except KeyboardInterrupt:
        if owned:  # its points stopped with it: marked, so that none says running
            executor.close()
            owned = False
            interrupted_points(prep.root, prep.plan.sweep_id, prep.pipeline.name)
        # on the caller's executor the submitted points go on; the sweep run again
        # takes what they finished
        raise
    finally:
        if owned:
            executor.close()


#: The command line's flags and the arguments of :func:`run` that stand for them.
_FLAGS = {"--cluster-profile": "cluster_profile", "--trust-store": "trust_store",
          "--set": "sets", "--config": "config", "--preset": "preset",
          "--cluster": "cluster", "--store": "store", "--resume": "resume",
          "--retries": "retries", "--grid": "grid"}  # fmt: skip
#: A flag standing alone (not inside a path, URL or value: ``a--config.yaml``, ``=--set``).
_FLAG = re.compile(r"(?<![\w./='\"-])(" + "|".join(map(re.escape, _FLAGS)) + r")(?![\w-])")


@contextlib.contextmanager
def _python_terms():
    """Bad input is told in the names of :func:`run`'s arguments, not the command
    line's flags (``--set n=x`` is ``sets``); commands quoted in backticks stay."""
    try:
        yield
    except ConfigError as exc:
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            parts = exc.args[0].split("`")
            parts[::2] = [_FLAG.sub(lambda m: _FLAGS[m[0]], p) for p in parts[::2]]
            exc.args = ("`".join(parts),)
        raise


def _json(key, value: Any) -> str:
    """A ``sets`` mapping's value as the YAML of an override: the Python value itself
    (a string stays a string; NumPy scalars and arrays as numbers and lists)."""
    import json

    if hasattr(value, "tolist"):  # NumPy (CuPy, ...) scalars and arrays
        value = value.tolist()
    try:
        return json.dumps(value, ensure_ascii=False)  # "\ud83d…" would read as surrogates
    except (TypeError, ValueError):
        raise TypeError(f"sets[{key!r}]: a JSON-able value, not {type(value).__name__}") from None


__all__ = ["run", "sweep"]
