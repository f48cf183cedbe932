"""Parameter sweeps: one run per grid point, points run concurrently, metrics gathered.

``tilegraph sweep NAME --grid key=v1,v2 --grid other=a,b`` builds the Cartesian grid,
validates every point's config before anything is written, and submits each point as
ONE task on the executor: the task runs the whole pipeline on its worker (with an
in-process ``sync`` executor) into an ordinary run store. The driver records which run
belongs to which point in a sweep group (``<root>/sweeps/<sweep-id>``) and finally
writes the metrics of all points as one xarray Dataset with a dimension per swept key.

The sweep id is a hash of the pipeline and every point's config, so running the same
sweep again finds its record: complete points are skipped, failed or interrupted ones
are continued from their newest checkpoint, missing ones are started.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from .base import Pipeline
from .config import (
    ConfigError,
    build_config,
    check_preset,
    check_user_fields_apply,
    parse_set,
    read_config_file,
)
from .execute import execute
from .progress import silent
from .registry import get_pipeline

#: Dataset variables that are text, not metrics.
_TEXT_VARS = ("status", "run_id", "error")

#: Points of one sweep at most: each is a run folder, and every point's config is
#: validated before anything starts (a million took minutes and GBs to refuse later).
MAX_POINTS = 10_000

__all__ = ["Point", "SweepPlan", "SweepResult", "parse_grid", "plan_sweep", "run_sweep"]


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    out, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["key=v1,v2", …]`` -> ``{"key": ["v1", "v2"], …}`` (values still YAML text).

    Commas inside ``[…]`` or quotes do not split (``--grid beta=[1,2],[2,1]``).

    Raises
    ------
    ConfigError
        Missing ``=``, an empty key or value, a repeated key or value.
    """
    grid: dict[str, list[str]] = {}
    if not items:
        raise ConfigError("--grid: give at least one key=v1,v2,… (e.g. --grid n_fine=50,100)")
    if isinstance(items, Mapping):  # already split: {"key": ["v1", "v2"]} (from Python)
        for key, values in items.items():
            values = list(values)
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"grid: keys are field names, not {key!r}")
            if not values:
                raise ConfigError(f"grid {key}: give at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"grid {key}: repeated value in {values!r}")
            grid[key.strip()] = values
        return grid
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,… (e.g. --grid n_fine=50,100)")
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid")
        values = _split_values(raw)
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {key}: empty value in {raw!r}")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key}: repeated value in {raw!r}")
        grid[key] = values
    return grid


def _lookup(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _coordinate(raws: list[str], typed: list[Any]) -> np.ndarray:
    """Coordinate values of one swept key: the validated values when they are all numbers,
    booleans or strings (so ``tol=1e-8`` is the float 1e-8), else the YAML text."""
    text = np.array(raws, dtype=object)  # variable-length strings in Zarr v3
    parsed = typed
    if all(isinstance(v, bool) for v in parsed):
        return np.array(parsed, dtype=bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in parsed):
        return np.array(parsed, dtype=np.int64)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in parsed):
        return np.array(parsed, dtype=np.float64)
    if all(isinstance(v, str) for v in parsed):
        return np.array(parsed, dtype=object)
    return text


@dataclass(frozen=True)
class Point:
    """One grid point: its position, its swept values (YAML text) and its config."""

    index: tuple[int, ...]
    values: dict[str, str]
    config: BaseModel

    @property
    def key(self) -> str:
        """``key1=v1,key2=v2`` — how the sweep record names the point."""
        return ",".join(f"{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: pipeline, swept keys with their values, and every point."""

    pipeline: Pipeline
    grid: dict[str, list[str]]
    points: list[Point]
    sweep_id: str
    definition: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.grid.values())


def plan_sweep(
    pipeline: Pipeline,
    grid_items: Sequence[str] | Mapping[str, Sequence[str]],
    preset: str | None = None,
    config_file: str | None = None,
    sets: Sequence[str] = (),
) -> SweepPlan:
    """Validate the grid and every point's config; nothing is written.

    Parameters
    ----------
    pipeline : Pipeline
    grid_items : sequence of str, or mapping of str to sequence of str
        ``key=v1,v2,…`` per swept key (dotted keys for nested fields), or
        ``{key: [v1, v2, …]}`` (each value YAML text).
    preset, config_file, sets
        The base config, as for ``tilegraph run``; grid values are applied last.

    Raises
    ------
    ConfigError
        One line naming the point and the field, for the first invalid point.
    """
    if preset is not None:  # a typo there is not any grid point's fault
        check_preset(pipeline, preset)
    grid = parse_grid(grid_items)
    dims = [k.replace(".", "_") for k in grid]
    for key, dim in zip(grid, dims, strict=True):
        if dim in _TEXT_VARS or dim in pipeline.metric_names or dims.count(dim) > 1:
            raise ConfigError(
                f"--grid {key}: its dimension name {dim!r} clashes with another variable"
            )
    if isinstance(config_file, str):  # its errors are no grid point's
        read_config_file(config_file)
    for item in sets:
        parse_set(item)
    n_points = math.prod(len(v) for v in grid.values())
    if n_points > MAX_POINTS:
        raise ConfigError(
            f"--grid: {n_points} points; at most {MAX_POINTS} in one sweep (split it)"
        )
    set_keys = {s.partition("=")[0].strip() for s in sets}
    for key in grid:
        if key in set_keys:
            raise ConfigError(f"--grid {key}: also given with --set; keep one of them")
        for outer in set_keys:
            if key.startswith(outer + "."):  # the grid would override part of it
                raise ConfigError(
                    f"--grid {key}: --set {outer} sets the field it is inside; keep one of them"
                )
        for other in [*grid, *set_keys]:
            if other.startswith(key + "."):  # the inner key would override part of it
                where = "--grid" if other in grid else "--set"
                raise ConfigError(
                    f"--grid {key}: {where} {other} sets a field inside it; keep one of them"
                )
    points = []
    for index in itertools.product(*(range(len(v)) for v in grid.values())):
        values = {k: grid[k][i] for k, i in zip(grid, index, strict=True)}
        extra = [f"{k}={v}" for k, v in values.items()]
        try:
            config = build_config(pipeline, preset, config_file, [*sets, *extra], varied=grid)
        except ConfigError as exc:
            where, msg = ",".join(extra), str(exc)
            for k in values:  # the value came from --grid, not from a --set
                msg = msg.replace(f"--set {k}: ", "")
            raise ConfigError(f"--grid point {where}: {msg}") from None
        points.append(Point(index=index, values=values, config=config))
    for key in sorted(set_keys - set(grid)):  # a field no point's swept choice uses
        refused = []
        for p in points:
            try:
                check_user_fields_apply(p.config, [key.split(".")])
            except ConfigError as exc:
                refused.append(exc)
        if refused and len(refused) == len(points):
            raise ConfigError(f"{refused[0]}, at every point of the grid")
    configs = [p.config.model_dump(mode="json") for p in points]
    first: dict[str, Point] = {}
    for p, c in zip(points, configs, strict=True):
        same = first.setdefault(_config_key(c), p)
        if same is not p:  # 0.1 and 0.10, 2 and 2.0, true and yes
            raise ConfigError(
                f"--grid points {same.key} and {p.key} give the same config; give each value once"
            )
    definition = {
        "pipeline": pipeline.name,
        "grid": grid,
        "preset": preset or pipeline.default_preset,
        # what the points share besides the preset, for people (the configs decide)
        "sets": [str(s) for s in sets or ()],
        "config_file": str(config_file) if isinstance(config_file, str | os.PathLike) else None,
        "point_configs": configs,
    }
    blob = json.dumps(
        {"pipeline": pipeline.name, "grid": grid, "configs": configs}, sort_keys=True
    )
    sweep_id = f"{pipeline.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    return SweepPlan(
        pipeline=pipeline, grid=grid, points=points, sweep_id=sweep_id, definition=definition
    )


def run_point(
    name: str,
    config: dict,
    run_url: str,
    storage_options: dict | None,
    resume: bool,
) -> dict:
    """The task of one point: run pipeline ``name`` into the run at ``run_url``.

    Runs on a worker, with an in-process ``sync`` executor. Continues from the run's
    newest checkpoint when ``resume`` is set or when the run already has checkpoints
    (the task was rescheduled after its worker died).

    Returns
    -------
    dict
        ``{"status": "complete", "metrics": …}`` or ``{"status": "failed", "error": …}``.
    """
    from tilegraph import cluster, storage

    pipeline = get_pipeline(name)
    cfg = pipeline.config.model_validate(config)
    run = storage.RunStore(run_url, storage_options=storage_options)
    lease = run.lease()
    try:
        # a rescheduled task may find its lost worker's lease: taken over once stale
        lease.acquire(wait=lease.ttl + 2 * lease.interval)
    except storage.LeaseHeld as exc:
        return {"status": "failed", "error": str(exc)}
    try:
        if run.status == storage.COMPLETE:  # finished meanwhile (a user's --resume of it)
            return {"status": "complete", "metrics": run.metrics}
        run.mark_running()  # pending until now; running already when rescheduled
        resume = resume or bool(run.checkpoint_steps())
        with cluster.connect("sync") as ex:
            metrics = execute(pipeline, cfg, run, ex, resume=resume, retries=0)
    except Exception as exc:  # recorded in the run by execute
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        lease.release()
    return {"status": "complete", "metrics": metrics}


@dataclass
class SweepResult:
    """What a sweep produced: counts, the gathered Dataset and where it lives."""

    sweep_id: str
    path: str
    points: int
    complete: int
    failed: int
    skipped: int
    dataset: Any
    rows: list[dict[str, Any]]


def _metric_names(pipeline: Pipeline, metrics: list[dict]) -> list[str]:
    names = list(pipeline.metric_names)
    for m in metrics:
        names += [k for k in m if k not in names]
    numeric = {
        k
        for m in metrics
        for k, v in m.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    bools = {k for m in metrics for k, v in m.items() if isinstance(v, bool)}
    text = {k for m in metrics for k, v in m.items() if isinstance(v, str)}
    headline = set(pipeline.metric_names)  # always there (NaN if no point has it)
    return [n for n in names if n in numeric or n in bools or n in text or n in headline]


def _typed(values: list, shape) -> np.ndarray:
    """A metric's values over the points (None where a point has none) as an array of
    the values' own type where every point has one (int, bool, text); float with NaN
    otherwise (text: '' where missing)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        return np.asarray(["" if v is None else v for v in values], dtype=object).reshape(shape)
    numbers = [v if isinstance(v, int | float) else None for v in values]
    if all(isinstance(v, bool) for v in numbers):
        return np.asarray(numbers, dtype=bool).reshape(shape)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
        return np.asarray(numbers, dtype=np.int64).reshape(shape)
    return np.asarray([np.nan if v is None else float(v) for v in numbers]).reshape(shape)


def _metric_units(name: str) -> dict[str, str]:
    """Units a metric's name says: ``*_s`` are wall seconds."""
    return {"units": "s"} if name.endswith("_s") else {}


def gather_dataset(plan: SweepPlan, runs: dict[str, Any]):
    """The sweep's xarray Dataset: one variable per numeric metric, plus status and run id.

    Parameters
    ----------
    plan : SweepPlan
    runs : dict
        Point key -> ``storage.RunStore`` (points without a run are ``missing``).

    Returns
    -------
    xarray.Dataset
        Dimensions: the swept keys (dots replaced by ``_`` in names); NaN where a point
        has no value.
    """
    import xarray as xr

    dims = [k.replace(".", "_") for k in plan.grid]
    shape = plan.shape
    summaries = {key: run.summary() for key, run in runs.items()}
    metrics = [s["metrics"] for s in summaries.values() if s["status"] == "complete"]
    names = _metric_names(plan.pipeline, metrics)
    values = {n: [None] * len(plan.points) for n in names}  # in the order of the points
    order = {p.index: i for i, p in enumerate(sorted(plan.points, key=lambda p: p.index))}
    # object arrays: Zarr v3 writes them as variable-length UTF-8 strings
    status = np.full(shape, "missing", dtype=object)
    run_ids = np.full(shape, "", dtype=object)
    errors = np.full(shape, "", dtype=object)
    for p in plan.points:
        s = summaries.get(p.key)
        if s is None:
            continue
        status[p.index] = s["status"]
        run_ids[p.index] = s["run_id"]
        errors[p.index] = s.get("error") or ""
        if s["status"] != "complete":
            continue
        for n in names:
            v = s["metrics"].get(n)
            if isinstance(v, int | float | str):
                values[n][order[p.index]] = v
    data = {n: _typed(v, shape) for n, v in values.items()}
    coords = {}
    for axis, (key, raws) in enumerate(plan.grid.items()):
        first = {}
        for p in plan.points:
            first.setdefault(p.index[axis], p)
        typed = [_lookup(first[i].config.model_dump(mode="json"), key) for i in range(len(raws))]
        coords[dims[axis]] = _coordinate(raws, typed)
    variables = {
        n: (dims, a, {"long_name": f"metric {n} of the point's run", **_metric_units(n)})
        for n, a in data.items()
    }
    variables["status"] = (dims, status, {"long_name": "run status of the point"})
    variables["run_id"] = (dims, run_ids, {"long_name": "run id of the point"})
    variables["error"] = (dims, errors, {"long_name": "why the point failed ('' if it did not)"})
    return xr.Dataset(
        variables,
        coords=coords,
        attrs={
            "sweep_id": plan.sweep_id,
            "pipeline": plan.pipeline.name,
            "swept_keys": list(plan.grid),
            "preset": plan.definition.get("preset"),
            "sets": list(plan.definition.get("sets") or []),
        },
    )


#: Markers and line styles cycled over the lines of one panel, so that lines that lie on
#: top of each other (equal iteration counts) stay visible.
_STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-")]


def _wide(values: np.ndarray, ratio: float = 4.0) -> bool:
    """Whether positive values span enough (``ratio``) to be read on a log axis."""
    finite = values[np.isfinite(values)]
    return bool(finite.size and np.all(finite > 0) and finite.max() / finite.min() >= ratio)


def log_slope(x: np.ndarray, y: np.ndarray, min_r2: float = 0.95) -> float | None:
    """Least-squares slope of ``log y`` against ``log x`` over the points where both are
    finite and positive (the observed order of a convergence study).

    Returns None with fewer than three such points (two always fit a line), one ``x``,
    or a fit that explains less than ``min_r2`` of the variance of ``log y`` (round-off
    level metrics, whose "slope" means nothing).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:
        return None
    lx, ly = np.log(x[ok]), np.log(y[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    spread = float(np.sum((ly - ly.mean()) ** 2))
    misfit = float(np.sum((ly - (slope * lx + intercept)) ** 2))
    if spread == 0 or 1 - misfit / spread < min_r2:
        return None
    return float(slope)


def summary_figure(ds, metric_names: Sequence[str]):
    """Metrics against the first swept key, one line per value of the other keys.

    A numeric key spanning a factor of 4 or more is drawn on a log axis, and so is a
    positive metric spanning more than 100 (or 4 against such a key); where both are,
    each line's legend gives its least-squares slope where a straight line fits (the
    observed order when the key is a resolution).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dims = list(ds.attrs.get("swept_keys") or ds["status"].dims)
    dims = [d.replace(".", "_") for d in dims]
    plottable = [n for n in ds.data_vars if n not in _TEXT_VARS and ds[n].dtype != object]
    names = [n for n in metric_names if n in plottable][:4] or plottable[:4]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.2 * max(len(names), 1), 3.4))
    axes = np.atleast_1d(axes)
    x = dims[0]
    others = dims[1:]
    xs = ds[x].values
    numeric_x = np.issubdtype(xs.dtype, np.number)
    log_x = numeric_x and _wide(xs.astype(float))
    for ax, n in zip(axes, names, strict=False):
        da = ds[n]
        values = np.asarray(da.values, dtype=float)
        finite = values[np.isfinite(values)]
        tiny = bool(finite.size and np.all(finite > 0) and finite.max() < 1e-4)
        log_y = tiny or (  # round-off level numbers: no offset exponent on a linear axis
            _wide(values, 2.0 if log_x else 4.0)
            and (log_x or np.nanmax(values) / np.nanmin(values) > 100)
        )
        combos = itertools.product(*(range(ds.sizes[o]) for o in others)) if others else [()]
        for k, combo in enumerate(combos):
            sel = dict(zip(others, combo, strict=True))
            y = da.isel(sel).values if sel else da.values
            label = ", ".join(f"{o}={ds[o].values[i]}" for o, i in sel.items())
            slope = log_slope(xs, y) if log_x and log_y else None
            if slope is not None:
                label = f"{label}, slope {slope:.2f}" if label else f"slope {slope:.2f}"
            pos = xs if numeric_x else np.arange(len(xs))
            marker, line = _STYLES[k % len(_STYLES)]
            ax.plot(pos, y, marker=marker, linestyle=line, label=label or None)
        if not numeric_x:
            ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
        if log_x:
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{v:g}" for v in xs])  # the swept values, not decades
            ax.minorticks_off()
        if log_y:
            ax.set_yscale("log")
        elif da.dtype.kind in "iub":  # counts: whole-number ticks
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x)
        ax.set_ylabel(f"{n} (s)" if n.endswith("_s") else n)
        ax.set_title(n)
        ax.grid(True, alpha=0.3)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
            ax.legend(fontsize="small")
    fixed = [f"preset {ds.attrs['preset']}"] if ds.attrs.get("preset") else []
    fixed += [str(v) for v in ds.attrs.get("sets") or []]
    title = f"sweep {ds.attrs.get('sweep_id', '')}" + (f": {', '.join(fixed)}" if fixed else "")
    fig.suptitle(title if len(title) <= 150 else title[:147] + "...")
    fig.tight_layout()
    return fig


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _complete_runs_by_config(root: Any, pipeline: str) -> dict[str, str]:
    """Config (canonical JSON) -> run id of the newest complete run with that config."""
    from tilegraph import storage

    out = {}
    for summary in root.runs(pipeline):
        if summary["status"] != storage.COMPLETE:
            continue
        try:
            config = storage.RunStore(summary["url"], storage_options=root.options).config
        except (KeyError, ValueError):
            continue
        out[_config_key(config)] = summary["run_id"]
    return out


def run_sweep(
    plan: SweepPlan,
    root: Any,
    executor: Any,
    *,
    progress: Callable[..., Any] = silent,
    backend: str | None = None,
) -> SweepResult:
    """Run the points of ``plan`` that are not complete yet and gather all metrics.

    Parameters
    ----------
    plan : SweepPlan
    root : storage.Root
        Where the sweep group and the point runs go.
    executor : cluster.Executor
        Each point is one task on it.
    progress : callable
        Progress-bar factory; one bar over the points.
    backend : str, optional
        Cluster spec, recorded in each new run's provenance.

    Returns
    -------
    SweepResult

    Raises
    ------
    storage.LeaseHeld
        The same sweep is running in another live process.
    """
    from tilegraph import storage

    options = root.options or None
    url = storage.sweep_url(root.url, plan.sweep_id)
    lease = storage.Lease(url, f"sweep {plan.sweep_id}", options).acquire()  # or LeaseHeld
    try:
        return _run_sweep(plan, root, executor, progress, backend, options, lease)
    finally:
        lease.release()


def _unless_owned(run, write, wait_out_stale: bool = False) -> None:
    """``write()`` to a point's run under its lease; skipped while another live process
    owns it (a user's ``--resume`` of that point, or a task of an earlier sweep): its
    owner's status is the one to keep. ``wait_out_stale``: first wait as long as a dead
    owner's lease can look live (its ttl, and two heartbeats)."""
    from tilegraph import storage

    lease = run.lease()
    try:
        lease.acquire(wait=lease.ttl + 2 * lease.interval if wait_out_stale else 0.0)
    except storage.LeaseHeld:
        return
    try:
        write()
    finally:
        lease.release()


def _run_sweep(plan, root, executor, progress, backend, options, lease) -> SweepResult:
    from tilegraph import storage

    name = plan.pipeline.name
    sweep = storage.SweepStore.open_or_create(
        root.url, plan.sweep_id, plan.definition, storage_options=options
    )
    sweep.watch(lease)
    sweep.mark_running()
    recorded = sweep.points
    finished = _complete_runs_by_config(root, name)
    runs: dict[str, Any] = {}
    todo = []
    for p in plan.points:
        run = None
        if p.key in recorded:
            try:
                run = root.open(recorded[p.key], pipeline=name)
            except (KeyError, ValueError):
                run = None
        if run is None or run.status != storage.COMPLETE:
            # a complete run of exactly this config (another sweep's, or a plain run)
            same = finished.get(_config_key(p.config.model_dump(mode="json")))
            if same is not None:
                run = root.open(same, pipeline=name)
                sweep.set_point(p.key, run.run_id)
        if run is not None and run.status == storage.COMPLETE:
            runs[p.key] = run
            continue
        if run is not None:
            _unless_owned(run, run.mark_pending)
            resume = True
        else:
            # recorded before it exists: a kill in between leaves no run the sweep
            # cannot see (the next sweep creates it under the recorded id)
            config = p.config.model_dump(mode="json")
            run_id = recorded.get(p.key) or storage.new_run_id()
            for _ in range(2):
                sweep.set_point(p.key, run_id)
                try:
                    run = root.create(
                        name, config=config, backend=backend, run_id=run_id, pending=True
                    )
                    break
                except (FileExistsError, ValueError):  # unreadable there, or a bad id
                    run_id = storage.new_run_id()
            else:  # pragma: no cover - a fresh random id taken as well
                raise FileExistsError(f"no free run id for sweep point {p.key}")
            resume = False
        runs[p.key] = run
        todo.append((p, run, resume))
    skipped = len(plan.points) - len(todo)

    futures = {}
    for p, run, resume in todo:
        fut = executor.submit(
            run_point,
            name,
            p.config.model_dump(mode="json"),
            run.url,
            run.storage_options or None,
            resume,
            # pure: the scheduler runs the task again when its worker is lost (Dask
            # reschedules, Ray retries), and run_point then resumes from the checkpoints;
            # run_point itself never raises, so no failure of the work is retried.
            pure=True,
            key=f"sweep-{plan.sweep_id}-{'-'.join(map(str, p.index))}-{uuid.uuid4().hex[:8]}",
        )
        futures[id(fut)] = (fut, p, run)
    with progress(total=len(plan.points), desc=f"sweep {name}") as bar:
        bar.update(skipped)
        for fut in executor.as_completed([f for f, _, _ in futures.values()]):
            _, p, run = futures[id(fut)]
            try:
                out = fut.result()
            except Exception as exc:  # the task itself was lost (e.g. its worker died)
                out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                if run.status != storage.COMPLETE:
                    # the lost worker's lease, on another host, looks live until its ttl
                    _unless_owned(
                        run,
                        lambda run=run, out=out: run.mark_failed(out["error"]),
                        wait_out_stale=True,
                    )
            bar.set_postfix_str(f"{p.key}: {out['status']}")
            bar.update(1)

    ds = gather_dataset(plan, runs)
    sweep.write_dataset("result", ds)
    statuses = ds["status"].values.ravel().tolist()
    complete = statuses.count(storage.COMPLETE)
    failed = len(statuses) - complete
    fig = summary_figure(ds, plan.pipeline.metric_names)
    sweep.save_figure(fig)
    import matplotlib.pyplot as plt

    plt.close(fig)
    counts = {"points": len(statuses), "complete": complete, "failed": failed}
    if failed:
        sweep.mark_failed(f"{failed} of {len(statuses)} points did not complete", counts)
    else:
        sweep.mark_complete(counts)
    rows = []
    for p in plan.points:
        row = {k: v for k, v in p.values.items()}
        row["status"] = str(ds["status"].values[p.index])
        row["run_id"] = str(ds["run_id"].values[p.index])
        row["error"] = str(ds["error"].values[p.index])
        for n in ds.data_vars:
            if n not in _TEXT_VARS:
                v = ds[n].values[p.index]
                v = v.item() if hasattr(v, "item") else v  # int, bool, str or float
                row[n] = None if isinstance(v, float) and math.isnan(v) else v
        rows.append(row)
    return SweepResult(
        sweep_id=plan.sweep_id,
        path=sweep.url,
        points=len(statuses),
        complete=complete,
        failed=failed,
        skipped=skipped,
        dataset=ds,
        rows=rows,
    )


@dataclass
class PreparedSweep:
    """A sweep checked and ready to run (:func:`prepare_sweep`)."""

    pipeline: Pipeline
    plan: SweepPlan
    code: list[str]
    estimates: list[Any]
    root: Any

    @property
    def largest(self):
        """The estimate with the largest driver + worker peak (None if there is none)."""
        sized = [e for e in self.estimates if e is not None]
        return max(sized, key=lambda e: e.driver_bytes + e.worker_bytes, default=None)


def prepare_sweep(name: str, grid, preset, config, sets, store) -> PreparedSweep:
    """Everything ``tilegraph sweep`` checks before it connects: the grid and every
    point's config, the user code, the preflights, the runner, the sizes and the store.

    Raises
    ------
    ConfigError
        One line naming what is wrong (nothing is written).
    """
    from . import resources
    from .imports import prepare_user_code
    from .launch import UsageError, check_store, load_runner
    from .registry import get_pipeline

    try:
        pipeline = get_pipeline(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    plan = plan_sweep(pipeline, grid, preset, config, sets)
    path = config if isinstance(config, str | os.PathLike) else None  # or the fields
    code = prepare_user_code([p.config for p in plan.points], path)
    if pipeline.preflight is not None:
        for point in plan.points:
            pipeline.preflight(point.config)
    load_runner(pipeline)  # the points run it; a broken one writes no sweep
    estimates = [resources.estimate(pipeline, p.config, 1) for p in plan.points]
    for point, est in zip(plan.points, estimates, strict=True):
        resources.check_size(est, point.config)
    return PreparedSweep(pipeline, plan, code, estimates, check_store(store))


def execute_sweep(prep: PreparedSweep, executor, spec, progress) -> SweepResult:
    """Run a prepared sweep on an open executor: the device and the largest point's
    memory checked against its workers first (each point runs whole on one worker).

    Raises
    ------
    UsageError
        A point needs what the workers lack, or another live process runs the sweep.
    """
    from tilegraph.storage.lease import LeaseHeld

    from . import resources
    from .launch import UsageError, check_device

    check_device([p.config for p in prep.plan.points], executor, str(spec))
    resources.check_point(prep.largest, executor)
    try:
        return run_sweep(prep.plan, prep.root, executor, progress=progress, backend=str(spec))
    except LeaseHeld as exc:
        raise UsageError(f"{exc}; wait for it, or stop it first") from None


def interrupted_points(root, sweep_id: str, pipeline: str) -> None:
    """Mark the points of an interrupted sweep that are still ``running`` or ``pending``
    failed ("interrupted"), so that none is left so; call it once the sweep's cluster is closed.
    The points are the run ids its record holds. A point owned by a live process (a
    user's ``--resume`` of it) is left to its owner. A dead worker's lease is taken over
    at once on this host; on another host its time-to-live is not waited for, and that
    point keeps its status. Nothing here hides the interrupt: a point that cannot be
    read or marked is skipped."""
    from tilegraph import storage

    url = storage.sweep_url(root.url, sweep_id)
    try:
        record = storage.SweepStore(url, storage_options=root.options or None)
        points = record.points
    except Exception:  # interrupted before its record existed
        return
    try:  # the sweep itself: `tilegraph sweeps` showed it running for ever
        with storage.Lease(url, f"sweep {sweep_id}", root.options or None).acquire(wait=0.0):
            if record.status == storage.RUNNING:
                record.mark_failed("interrupted; run the same sweep command again to continue it")
    except Exception:  # another live process runs it now, or it cannot be written
        pass
    for run_id in points.values():
        try:
            run = root.open(run_id, pipeline=pipeline)
            lease = run.lease().acquire(wait=0.0)
        except Exception:  # held by a live process, or the run cannot be read
            continue
        try:
            if run.status in (storage.RUNNING, storage.PENDING):
                when = "" if run.status == storage.RUNNING else " before it started"
                run.mark_failed(
                    f"interrupted with its sweep{when}; "
                    "run the same sweep command again to continue"
                )
        except Exception:
            pass
        finally:
            lease.release()
