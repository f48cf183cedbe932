"""The ``tilegraph`` command line.

Exit status: 0 on success, 1 when a run itself fails (its store is marked ``failed``),
2 on bad input (one ``error:`` line on stderr, nothing written). With ``--json`` the
last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

from . import resources
from .config import ConfigError, build_config
from .execute import DEFAULT_RETRIES
from .launch import (
    UsageError,
    check_cluster,
    connect,
    on_this_machine,
    prepare,
)
from .progress import progress_factory
from .registry import available, get_pipeline, load_pipelines


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit), handled like Ctrl-C."""

    reason = "SIGTERM"
    code = 143  # the shell's status of a command killed by it


class HungUp(Terminated):
    """SIGHUP (the SSH session of a login node closed), handled like SIGTERM: the batch
    jobs a run submitted are cancelled, not left to the queue. Not under ``nohup``."""

    reason = "SIGHUP"
    code = 129


def _absorb(signum, frame) -> None:
    """After the first interrupt: a second one raised in the cleanup (``timeout`` passes
    its own SIGTERM on) can leave a lock held where it lands (logging's: the exit hung).
    A Python handler, not SIG_IGN: processes started meanwhile must not inherit that."""


def _quiet_logs() -> None:
    """No shutdown noise from the cluster's loggers (workers going while it closes)."""
    for name in ("distributed", "ray", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _first_interrupt() -> None:
    for sig in _INTERRUPTS:
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):
            signal.signal(sig, _absorb)
    _quiet_logs()


def _on_sigterm(signum, frame):
    _first_interrupt()
    raise HungUp() if signum == getattr(signal, "SIGHUP", None) else Terminated()


def _on_sigint(signum, frame):
    _first_interrupt()
    raise KeyboardInterrupt


def _interrupts_again(hook):
    """A ``sys.unraisablehook`` that delivers an interrupt again where the first landed
    in a finalizer or callback (which Python reports and drops: the run would go on)."""

    def unraisable(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            term = isinstance(info.exc_value, Terminated)
            signum = signal.SIGTERM if term else signal.SIGINT
            if isinstance(info.exc_value, HungUp):
                signum = signal.SIGHUP
            with contextlib.suppress(ValueError):  # re-armed: the handler absorbs the next ones
                signal.signal(signum, _on_sigterm if term else _on_sigint)
            # a moment later, out of this finalizer (one that drops it again comes here)
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            timer.daemon = True  # a command that has ended meanwhile is not interrupted
            timer.start()
            return
        hook(info)

    return unraisable


def _quiet_shutdown() -> None:
    """After an interrupt: no second one mid-cleanup, no shutdown noise from the cluster."""
    for sig in _INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)
    _quiet_logs()


#: The signals a command handles as an interrupt (SIGHUP only where it is not ignored).
_INTERRUPTS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one printable line of at most ``limit`` characters: control
    characters (newlines, terminal escape sequences) are shown escaped."""
    out = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )
    return out if len(out) <= limit else out[: limit - 3] + "..."


#: What ``tilegraph runs --status`` filters on (``storage``'s run statuses; not imported
#: here, so that ``--help`` stays fast).
STATUSES = ("pending", "running", "complete", "failed", "interrupted", "unreadable")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _nonnegative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _given(text: str) -> str:
    """An option's value that must not be empty (an empty one is not "not given")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def _config_args(sp: argparse.ArgumentParser, preset_help: str) -> None:
    """NAME, --preset, --config and --set: what to run."""
    sp.add_argument("name", help="pipeline name (see `tilegraph list`)")
    sp.add_argument("--preset", type=_given, help=preset_help)
    sp.add_argument("--config", type=_given, help="YAML file of config fields")
    sp.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field; VALUE is YAML; dotted keys for nested fields",
    )


def _where_args(sp: argparse.ArgumentParser) -> None:
    """--cluster, --cluster-profile, --dry-run, --store and --json: where and how."""
    from tilegraph import cluster

    sp.add_argument(
        "--cluster", type=_given, default="local", help=f"where to run: {cluster.SPECS_HELP}"
    )
    sp.add_argument(
        "--cluster-profile",
        type=_given,
        metavar="FILE",
        help="batch-scheduler profile (YAML) for slurm/pbs/sge/lsf; see README",
    )
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything and print the batch job script; submit and write nothing",
    )
    sp.add_argument(
        "--store", type=_given, default="./runs", help="run-store root: a path or fsspec URL"
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object last")


def _parser() -> argparse.ArgumentParser:

    p = _Parser(
        prog="tilegraph",
        description="Run large numerical pipelines as Dask or Ray task graphs over Zarr.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sp = sub.add_parser(
        "list",
        help="pipelines and their presets; with NAME, its config fields",
        description="Without NAME: the pipelines and their presets. With NAME: every "
        "config field of that pipeline (dotted for nested ones), its value in the preset "
        "(default: the pipeline's default preset) and what it is.",
    )
    sp.add_argument("name", nargs="?", type=_given, metavar="NAME", help="a pipeline")
    sp.add_argument("--preset", type=_given, help="the values of this preset")
    sp.add_argument("--json", action="store_true", help="print one JSON object last")

    sp = sub.add_parser("run", help="run a pipeline")
    _config_args(sp, "named preset (default: the pipeline's quick preset)")
    _where_args(sp)
    sp.add_argument("--resume", type=_given, metavar="RUN-ID", help="continue an interrupted run")
    sp.add_argument(
        "--trust-store",
        action="store_true",
        help="with --resume: import the code and open the URLs the stored config names",
    )
    sp.add_argument("--debug", action="store_true", help="print the traceback of a failed run")
    sp.add_argument(
        "--report",
        type=_given,
        metavar="FILE",
        help="write the backend's performance report: Dask's HTML report (task stream, "
        "worker profiles; needs bokeh) or Ray's timeline (Chrome trace JSON)",
    )
    sp.add_argument(
        "--retries",
        type=_nonnegative,
        default=DEFAULT_RETRIES,
        help="continue from the last checkpoint after a lost worker, this many times in a "
        f"row (a checkpoint saved since the last loss starts the count again; default "
        f"{DEFAULT_RETRIES})",
    )

    sp = sub.add_parser(
        "sweep",
        help="run a pipeline over a grid of config values",
        description="Run one point per combination of --grid values, concurrently on the "
        "cluster (each point one task); gather their metrics into one xarray Dataset at "
        "STORE/sweeps/SWEEP-ID/result. Re-running the same sweep runs only the points that "
        "are missing or did not complete.",
    )
    _config_args(sp, "named preset for the base config")
    sp.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,…",
        help="a swept field and its values (YAML each); repeat for more dimensions",
    )
    _where_args(sp)

    sp = sub.add_parser("runs", help="table of runs and their status")
    sp.add_argument("pipeline", nargs="?", type=_given, help="only this pipeline's runs")
    sp.add_argument("--status", choices=STATUSES, help="only runs with this status")
    sp.add_argument("--last", type=_nonnegative, metavar="N", help="only the newest N")
    sp.add_argument("--store", type=_given, default="./runs")
    sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("sweeps", help="table of sweeps and their points' counts")
    sp.add_argument("pipeline", nargs="?", type=_given, help="only this pipeline's sweeps")
    sp.add_argument("--store", type=_given, default="./runs")
    sp.add_argument("--json", action="store_true")

    sp = sub.add_parser("show", help="config, metrics and location of one run (or sweep)")
    sp.add_argument(
        "run_id",
        type=_given,
        metavar="RUN-ID",
        help="a run id, its beginning or its end when only one run has it, or 'last'; "
        "or a sweep id",
    )
    sp.add_argument("--store", type=_given, default="./runs")
    sp.add_argument("--json", action="store_true")

    sp = sub.add_parser(
        "rm",
        help="delete runs",
        description="Delete runs with their results, checkpoints and figures. Every RUN-ID "
        "is checked first: one that names no run, or a run a live process runs, deletes "
        "nothing. A deleted sweep point is run again by the same sweep command.",
    )
    sp.add_argument(
        "run_ids",
        nargs="+",
        type=_given,
        metavar="RUN-ID",
        help="a run id, its beginning or its end when only one run has it, or 'last'",
    )
    sp.add_argument("--store", type=_given, default="./runs")
    sp.add_argument("--json", action="store_true", help="print one JSON object last")
    return p


def _fmt(value: Any) -> str:
    """A metric as tables show it: numbers to 4 digits, in lists too."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _table(rows: list[list[str]], header: list[str] | None = None) -> str:
    all_rows = ([header] if header else []) + rows
    if not all_rows:
        return ""
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows
    ]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fields(model, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted name, value, description)`` of every field of a config model."""
    from pydantic import BaseModel

    rows = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows += _fields(value, f"{prefix}{name}.")
        else:
            dumped = model.model_dump(mode="json", include={name})[name]
            what = info.description or ""
            choices = _choices(info.annotation)
            if choices:
                what = f"{what} (one of: {', '.join(choices)})".strip()
            rows.append((f"{prefix}{name}", dumped, what))
    return rows


def _choices(annotation) -> list[str]:
    """The values a ``Literal`` field (or one of a union's ``Literal`` members) takes."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    out = []
    for arg in typing.get_args(annotation):
        out += _choices(arg)
    return out


def _cmd_list(args) -> int:
    pipes = load_pipelines()
    if args.name is None and args.preset is not None:
        raise UsageError("--preset: give the pipeline's NAME too (tilegraph list NAME --preset P)")
    if args.name is not None:
        try:
            pipeline = get_pipeline(args.name)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        preset = args.preset or pipeline.default_preset
        cfg = build_config(pipeline, preset, None, [])
        rows = _fields(cfg)
        if args.json:
            fields = [{"field": n, "value": v, "description": d} for n, v, d in rows]
            print(json.dumps({"pipeline": pipeline.name, "preset": preset, "fields": fields}))
            return 0
        print(f"{pipeline.name}, preset {preset} (set any with --set FIELD=VALUE):")
        shown = [[n, one_line(json.dumps(v), 60), one_line(d, 200)] for n, v, d in rows]
        print(_table(shown, ["field", "value", "description"]))
        return 0
    if args.json:
        out = {
            n: {"description": p.description, "presets": list(p.presets)} for n, p in pipes.items()
        }
        print(json.dumps({"pipelines": out}))
        return 0
    rows = [[n, ", ".join(p.presets), p.description] for n, p in pipes.items()]
    print(_table(rows, ["pipeline", "presets", "description"]))
    print("a pipeline's config fields and their values: tilegraph list NAME [--preset P]")
    return 0


def _report_path(args) -> str | None:
    """The absolute ``--report`` path, its folder checked."""
    if not args.report:
        return None
    path = os.path.abspath(os.path.expanduser(args.report))
    folder = os.path.dirname(path)
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--report {one_line(args.report, 200)}: not a writable file path")
    return path


def _check_report(args, executor) -> str | None:
    """The absolute ``--report`` path, checked (backend, folder) before any store."""
    path = _report_path(args)
    if path is None:
        return None
    try:
        executor.check_report()
    except ValueError as exc:
        raise UsageError(f"--report: {exc}") from None
    return path


def _cmd_run(args) -> int:
    if args.trust_store and not args.resume:
        raise UsageError("--trust-store: only with --resume RUN-ID (it trusts a stored config)")
    launch = prepare(
        args.name,
        preset=args.preset,
        config=args.config,
        sets=args.sets,
        store=args.store,
        resume=args.resume,
        cluster=args.cluster,
        cluster_profile=args.cluster_profile,
        trust_store=args.trust_store,
        own_run=not args.dry_run,
    )
    with launch:
        args.spec = launch.spec  # parsed once; the normalised form is what runs record
        if args.dry_run:  # the sizes are printed even when they do not fit (then exit 2)
            _report_path(args)
            est, workers = launch.estimate, launch.workers
            info = {"config": launch.config.model_dump(mode="json"), "user_code": launch.code}
            if est is not None:
                info["estimate"] = {**dataclasses.asdict(est), "workers": workers}
            rc = _dry_run(args, info, est, workers)
            launch.check_memory()
            resources.check_expected(est, args.spec, profile=args.cluster_profile)
            return rc
        launch.check_memory()
        with _connect(args, launch.code) as executor:
            report = _check_report(args, executor)
            try:
                run = launch.start(
                    executor,
                    progress=progress_factory(),
                    retries=args.retries,
                    report=report,
                )
            except KeyboardInterrupt as exc:  # execute() marked the run interrupted
                if launch.run is None:
                    raise
                _quiet_shutdown()
                rid = launch.run.run_id
                sys.stderr.write(
                    f"error: run {rid} interrupted; continue it with --resume {rid}\n"
                )
                return getattr(exc, "code", 130)
            except ConfigError:
                raise
            except Exception as exc:  # the run failed (execute marked it): report, exit 1
                run = launch.run
                if run is None:
                    raise
                if args.debug:
                    sys.stderr.write(traceback.format_exc())
                tb = run.traceback_path
                where = f" (traceback: {tb})" if tb else ""
                err = f"{type(exc).__name__}: {exc}"
                sys.stderr.write(f"error: run {run.run_id} failed: {err}{where}\n")
                if args.json:
                    failed = {"run_id": run.run_id, "path": run.url, "status": "failed"}
                    print(json.dumps({**failed, "metrics": {}}))
                return 1
    metrics = run.metrics
    pipeline = launch.pipeline
    names = list(pipeline.metric_names) + [k for k in metrics if k not in pipeline.metric_names]
    # the warnings were printed as they came (`warning: …`); a table cell would be wide
    rows = [[k, _fmt(metrics[k])] for k in names if k in metrics and k != "warnings"]
    print(f"run {run.run_id} complete: {run.url}")
    if not (args.preset or args.resume):
        what = " under --config" if args.config else ""
        print(f"preset: {pipeline.default_preset} (the default{what}; --preset chooses another)")
    if report:
        print(f"performance report: {report}")
    print(_table(rows, ["metric", "value"]))
    if args.json:
        summary = {"run_id": run.run_id, "path": run.url, "status": run.status}
        print(json.dumps({**summary, "metrics": metrics}))
    return 0


def _connect(args, code=()):
    return connect(args.spec, args.cluster_profile, code)


def _dry_run(args, info: dict, est=None, workers: int = 1, title: str = "") -> int:
    """``--dry-run``: the validated config and, for batch schedulers, the job script."""
    from tilegraph.cluster.jobqueue import job_script
    from tilegraph.cluster.specs import HPC_KINDS

    spec = args.spec
    script = None
    if spec.kind in HPC_KINDS:
        try:
            script = job_script(spec, args.cluster_profile)
        except (ValueError, ImportError, OSError, RuntimeError) as exc:
            raise UsageError(f"--cluster {spec}: cannot make the job script ({exc})") from None
        from tilegraph.cluster.jobqueue import (
            DEFAULT_PATHS,
            PROFILE_ENV,
            find_profile,
            load_profile,
        )

        prof = load_profile(spec.kind, args.cluster_profile)
        n_jobs = spec.n or prof.jobs
        jobs = f"{n_jobs} job(s) of {prof.workers_per_job} worker(s)"
        if find_profile(args.cluster_profile) is None:
            from tilegraph.cluster.jobqueue import describe_defaults

            looked = ", ".join([f"${PROFILE_ENV}", *map(str, DEFAULT_PATHS)])
            print(f"# no cluster profile found (looked at --cluster-profile, {looked});")
            print(f"# defaults used: {describe_defaults(spec.kind)}")
        for note in prof.notes(spec.kind):
            print(f"# note: {note}")
        print(f"# dry run: {spec.kind} would be asked for {jobs} running this script")
        print(script)
    else:
        from tilegraph.cluster.specs import SpecError, check_reachable

        try:  # an existing cluster's address: something must listen there
            check_reachable(spec)
        except SpecError as exc:
            raise UsageError(f"--cluster {spec}: cannot start or reach it ({exc})") from None
        print(f"# dry run: --cluster {spec} submits no batch jobs; the config is valid")
        print(json.dumps(info, indent=2))
    print(f"# store {one_line(args.store, 200)}: checked, nothing written")
    if est is not None:
        if title:
            print(f"# {title}")
        for line in resources.describe(est, workers):
            print(f"# {line}")
    if args.json:
        print(json.dumps({"dry_run": True, "cluster": str(spec), "job_script": script, **info}))
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import execute_sweep, interrupted_points, prepare_sweep

    prep = prepare_sweep(args.name, args.grid, args.preset, args.config, args.sets, args.store)
    pipeline, plan, code, root = prep.pipeline, prep.plan, prep.code, prep.root
    args.spec = check_cluster(args.cluster, root.url, args.cluster_profile)
    if args.dry_run:
        info = {"sweep_id": plan.sweep_id, "points": len(plan.points)}
        big = prep.largest
        if big is not None:  # a point runs whole on one worker (no floor: see check_point)
            big = dataclasses.replace(big, worker_floor_bytes=None)
            info["estimate"] = {**dataclasses.asdict(big), "workers": 1}
        rc = _dry_run(args, info, big, 1, "the largest point, run whole by one worker:")
        if big is not None and on_this_machine(args.spec):  # one point in one process
            whole = dataclasses.replace(
                big, driver_bytes=big.driver_bytes + big.worker_bytes, worker_bytes=0
            )
            resources.check_fits(whole, driver_limit=resources.available_memory())
        resources.check_expected(big, args.spec, whole=True, profile=args.cluster_profile)
        return rc
    try:
        with _connect(args, code) as executor:
            result = execute_sweep(prep, executor, args.spec, progress_factory())
    except KeyboardInterrupt as exc:
        _quiet_shutdown()
        interrupted_points(root, plan.sweep_id, pipeline.name)  # its cluster is closed now
        sys.stderr.write(
            f"error: sweep {plan.sweep_id} interrupted; run the same command again to "
            "continue it (complete points are kept)\n"
        )
        return getattr(exc, "code", 130)
    shown = [n for n in pipeline.metric_names if n in result.dataset.data_vars]
    header = [*plan.grid, "status", "run", *shown]
    rows = [
        [r[k] for k in plan.grid] + [r["status"], r["run_id"]] + [_fmt(r.get(n)) for n in shown]
        for r in result.rows
    ]
    failures = [r for r in result.rows if r["status"] != "complete"]
    print(
        f"sweep {result.sweep_id}: {result.complete} of {result.points} points complete"
        f" ({result.skipped} already done), {result.failed} failed"
    )
    print(_table(rows, header))
    for r in failures:
        where = ",".join(f"{k}={r[k]}" for k in plan.grid)
        print(f"point {where} {r['status']}: {r['error'] or 'no run'}")
    print(f"results: xarray.open_zarr('{result.path}/result', consolidated=False)")
    if args.json:
        print(
            json.dumps(
                {
                    "sweep_id": result.sweep_id,
                    "path": result.path,
                    "points": result.points,
                    "complete": result.complete,
                    "failed": result.failed,
                }
            )
        )
    return 1 if result.failed else 0


def _read_root(args):
    """The run-store root of ``--store`` for reading: a bad protocol is one error line."""
    from tilegraph import storage
    from tilegraph.storage.urls import filesystem, is_local, normalize_url

    try:
        root = storage.Root(args.store)
        if not is_local(root.url):
            fs, path = filesystem(root.url)
            try:
                fs.exists(path)
            except Exception as exc:  # unreachable, no credentials
                msg = " ".join(str(exc).split())
                raise ValueError(f"cannot reach the store ({type(exc).__name__}: {msg})") from None
        elif os.path.exists(normalize_url(root.url)) and not os.path.isdir(
            normalize_url(root.url)
        ):
            raise ValueError("a file, not a folder; a store is a folder")
    except (ValueError, ImportError, TypeError) as exc:
        raise UsageError(f"--store {one_line(args.store, 200)}: {one_line(exc, 200)}") from None
    return root


def _unreadable(args, exc: Exception) -> UsageError:
    msg = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {one_line(msg, 200)}"
    return UsageError(f"--store {one_line(args.store, 200)}: cannot read it ({what})")


def _cmd_runs(args) -> int:
    from tilegraph.storage.urls import is_local, normalize_url

    root = _read_root(args)
    try:
        runs = root.runs(args.pipeline)
    except ValueError as exc:  # a pipeline name that cannot be a folder
        raise UsageError(f"PIPELINE: {exc}") from None
    except Exception as exc:  # an unreachable server, a folder without permission
        raise _unreadable(args, exc) from None
    if args.status:
        runs = [r for r in runs if r["status"] == args.status]
    if args.last is not None:  # sorted by id: by the time they were made
        runs = runs[len(runs) - args.last :] if args.last else []
    if not runs and args.pipeline and args.pipeline not in available():
        known = ", ".join(available())
        raise UsageError(f"PIPELINE: no pipeline {args.pipeline!r} (known: {known})")
    if not runs and is_local(root.url) and not os.path.isdir(normalize_url(root.url)):
        raise UsageError(f"--store {one_line(args.store, 200)}: no such folder")
    if args.json:  # "path" as in `run --json` and `show --json` ("url" kept)
        print(json.dumps({"runs": [{**r, "path": r["url"]} for r in runs]}))
        return 0
    if not runs:
        pipeline = repr(args.pipeline) if args.pipeline else None
        print(" ".join(filter(None, ("no", args.status, pipeline, "runs under", args.store))))
        return 0
    swept = any(r.get("sweep") for r in runs)  # a column only where there are sweeps
    rows = [
        [
            one_line(c, 200)
            for c in (
                r["run_id"],
                r["pipeline"],
                r["status"],
                r.get("started") or "",
                *([r.get("sweep") or ""] if swept else []),
                r["url"],
            )
        ]  # fmt: skip
        for r in runs
    ]
    header = ["run", "pipeline", "status", "started", *(["sweep"] if swept else []), "path"]
    print(_table(rows, header))
    return 0


def _cmd_sweeps(args) -> int:
    root = _read_root(args)
    if args.pipeline and args.pipeline not in available():
        known = ", ".join(available())
        raise UsageError(f"PIPELINE: no pipeline {args.pipeline!r} (known: {known})")
    try:
        sweeps = root.sweeps(args.pipeline)
    except Exception as exc:  # an unreachable server, a folder without permission
        raise _unreadable(args, exc) from None
    if args.json:
        print(json.dumps({"sweeps": [{**r, "path": r["url"]} for r in sweeps]}))
        return 0
    if not sweeps:
        pipeline = repr(args.pipeline) if args.pipeline else None
        print(" ".join(filter(None, ("no", pipeline, "sweeps under", args.store))))
        return 0
    rows = [
        [
            one_line(c, 200)
            for c in (
                r["sweep_id"],
                r["pipeline"],
                r["status"],
                r["points"],
                "" if r["complete"] is None else r["complete"],
                "" if r["failed"] is None else r["failed"],
                r.get("created") or "",
                r["url"],
            )
        ]  # fmt: skip
        for r in sweeps
    ]
    header = ["sweep", "pipeline", "status", "points", "complete", "failed", "created", "path"]
    print(_table(rows, header))
    return 0


def _show_sweep(args, root, summary: dict, sweep) -> int:
    """``tilegraph show SWEEP-ID``: the sweep's grid, its points' runs and statuses
    (``summary``: its entry of ``Root.sweeps``; ``sweep``: its ``SweepStore``)."""
    record = sweep.definition
    runs = {r["run_id"]: r["status"] for r in root.runs(summary["pipeline"])}
    points = [
        {"key": key, "run_id": rid, "status": runs.get(rid, "missing")}
        for key, rid in sweep.points.items()
    ]
    sets = record.get("sets")
    info = {
        "sweep_id": summary["sweep_id"],
        "pipeline": summary["pipeline"],
        "path": summary["url"],
        "status": summary["status"],
        "grid": summary["grid"],
        "preset": record.get("preset"),
        "sets": [str(x) for x in sets] if isinstance(sets, list) else [],
        "metrics": record.get("metrics") or {},
        "error": record.get("error"),
        "points": points,
        "datasets": sweep.datasets,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"sweep     {one_line(info['sweep_id'])} ({one_line(info['pipeline'])}), "
          f"{one_line(info['status'])}")  # fmt: skip
    print(f"path      {one_line(info['path'])}")
    grid = info["grid"] if isinstance(info["grid"], dict) else {}
    for key, values in grid.items():
        shown = ",".join(map(str, values)) if isinstance(values, list) else values
        print(f"grid      {one_line(key)}={one_line(shown, 500)}")
    if info["preset"]:
        print(f"preset    {one_line(info['preset'])}")
    for item in info["sets"]:
        print(f"set       {one_line(item, 500)}")
    if info["error"]:
        print(f"error     {one_line(info['error'], 2000)}")
    with_run = sum(p["status"] != "missing" for p in points)
    print(f"points    {summary['points']} ({with_run} with a run)")
    rows = [
        [one_line(p["key"], 200), one_line(p["status"]), one_line(p["run_id"])] for p in points
    ]
    print(_indent(_table(rows, ["point", "status", "run"])))
    if info["datasets"]:
        print(f"datasets  {', '.join(one_line(d) for d in info['datasets'])}")
        print("open one with: xarray.open_zarr(path + '/NAME', consolidated=False)")
    return 0


def _sweep_named(root, given: str):
    """The sweep ``given`` names (its id, or the beginning of exactly one sweep's id) as
    ``(its entry of Root.sweeps, its SweepStore)``; None if none."""
    from tilegraph import storage

    sweeps = root.sweeps()
    found = [s for s in sweeps if s["sweep_id"] == given] or [
        s for s in sweeps if str(s["sweep_id"]).startswith(given)
    ]
    if len(found) > 1:
        ids = [str(s["sweep_id"]) for s in found]
        shown = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise UsageError(f"{one_line(given, 80)!r} begins {len(ids)} sweeps' ids ({shown})")
    if not found:
        return None
    url = storage.sweep_url(root.url, str(found[0]["sweep_id"]))
    return found[0], storage.SweepStore(url, storage_options=root.options or None)


def _cmd_show(args) -> int:
    from tilegraph import storage

    root = _read_root(args)
    try:
        run = _open_run(root, args.run_id)
    except (KeyError, ValueError) as exc:  # not a run's (a sweep's?)
        try:
            sweep = _sweep_named(root, args.run_id) if args.run_id != "last" else None
        except UsageError:
            raise
        except Exception as other:
            raise _unreadable(args, other) from None
        if sweep is not None:
            return _show_sweep(args, root, *sweep)
        raise UsageError(f"RUN-ID: {exc.args[0] if exc.args else exc}") from None
    except Exception as exc:
        raise _unreadable(args, exc) from None
    interrupted = run.interrupted
    stranded = run.status == storage.PENDING and run.run_id in root.stranded_points()
    info = {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "path": run.url,
        "status": storage.INTERRUPTED if interrupted or stranded else run.status,
        "error": run.error,
        "metrics": run.metrics,
        "config": run.config,
        "provenance": run.provenance,
        "reports": run.reports,
        "datasets": run.datasets,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    # a store may come from anyone: everything it says is printed escaped
    status = one_line(run.status)
    if interrupted:
        status = (
            f"{storage.INTERRUPTED} (its process is gone; continue it with "
            f"--resume {one_line(run.run_id)})"
        )
    elif stranded:
        status = (
            f"{storage.INTERRUPTED} (never started: its sweep's process is gone; run the "
            "same sweep command again to continue it)"
        )
    print(f"run       {one_line(run.run_id)} ({one_line(run.pipeline)}), {status}")
    print(f"path      {one_line(run.url)}")
    if run.error:
        print(f"error     {one_line(run.error, 2000)}")
    print("config")
    print(_indent(json.dumps(run.config, indent=2)))  # JSON escapes control characters
    print("metrics")
    shown = {k: v for k, v in run.metrics.items() if k != "warnings"}
    print(_indent(_table([[one_line(k), one_line(_fmt(v))] for k, v in shown.items()])))
    warnings_ = run.metrics.get("warnings")
    for warning in warnings_ if isinstance(warnings_, list) else []:
        print(f"warning   {one_line(warning, 2000)}")
    for report in run.reports:
        print(f"report    {one_line(report)}")
    prov = run.provenance
    keys = ("started", "ended", "backend", "host", "git_commit", "tilegraph", "tilegraph_commit")
    print("provenance")
    print(_indent(_table([[k, one_line(prov.get(k))] for k in keys if k in prov])))
    if info["datasets"]:
        print(f"datasets  {', '.join(one_line(d) for d in info['datasets'])}")
        print("open one with: xarray.open_zarr(path + '/NAME', consolidated=False)")
    return 0


#: The fewest characters of a run id that ``rm`` takes for the whole id.
RM_MIN_PART = 6


def _cmd_rm(args) -> int:
    from tilegraph import storage

    root = _read_root(args)
    runs = {}
    for given in args.run_ids:
        if given != "last" and len(given) < RM_MIN_PART:
            raise UsageError(
                f"RUN-ID {one_line(given, 80)!r}: to delete, give a whole run id, at least "
                f"{RM_MIN_PART} of its first or last characters, or 'last'"
            )
        try:
            run = _open_run(root, given)
        except (KeyError, ValueError) as exc:
            if any(s["sweep_id"] == given for s in root.sweeps()):
                raise UsageError(
                    f"RUN-ID {one_line(given, 80)!r} is a sweep; rm deletes runs (its points: "
                    f"`tilegraph show {one_line(given, 80)}` lists them)"
                ) from None
            raise UsageError(f"RUN-ID: {exc.args[0] if exc.args else exc}") from None
        except Exception as exc:
            raise _unreadable(args, exc) from None
        runs[run.run_id] = run
    for run in runs.values():  # every one checked before any is deleted
        try:
            root.check_deletable(run)
        except storage.LeaseHeld as exc:
            raise UsageError(f"RUN-ID {run.run_id}: {exc}; stop it first") from None
    deleted = []
    try:
        for run_id, run in runs.items():
            folder = run.url.rstrip("/").rsplit("/", 2)[-2]  # its pipeline's, as stored
            where = root.delete(run_id, pipeline=folder)
            deleted.append({"run_id": run_id, "pipeline": folder, "path": where})
            if not args.json:
                print(f"deleted {one_line(run_id)} ({one_line(where, 200)})")
    except Exception as exc:  # started, or deleted by another process, meanwhile
        if args.json:
            print(json.dumps({"deleted": deleted}))
        done = ", ".join(d["run_id"] for d in deleted) or "none"
        why = f"{exc}; stop it first" if isinstance(exc, storage.LeaseHeld) else str(exc)
        raise UsageError(
            f"RUN-ID {run_id}: {one_line(why, 300)} (deleted before it: {done})"
        ) from None
    if args.json:
        print(json.dumps({"deleted": deleted}))
    return 0


def _open_run(root, given: str):
    """The run ``given`` names: an id, ``last`` (the newest run), or the beginning or
    end of exactly one run's id (``20261206-2024``, ``004feb``).

    Raises
    ------
    UsageError
        When the beginning or end is that of several runs (naming a few).
    """
    from tilegraph import storage

    try:
        return root.open(given)
    except storage.RunNotFound:
        ids = [str(r["run_id"]) for r in root.runs()]
        found = ids[-1:] if given == "last" else [
            i for i in ids if i.startswith(given) or i.endswith(given)
        ]  # fmt: skip
        if len(found) == 1:
            return root.open(found[0])
        if not found:
            raise
    shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
    raise UsageError(f"{one_line(given, 80)!r} is in {len(found)} runs' ids ({shown})")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tilegraph`` console script."""
    # an interrupted cluster's client can drop pending coroutines (distributed's actor
    # futures, tornado) whose RuntimeWarning would print between the user and the one
    # line that says how to go on; nothing a user can act on
    warnings.filterwarnings(
        "ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning
    )
    args = _parser().parse_args(argv)
    handlers = {
        "list": _cmd_list,
        "run": _cmd_run,
        "sweep": _cmd_sweep,
        "runs": _cmd_runs,
        "show": _cmd_show,
        "sweeps": _cmd_sweeps,
        "rm": _cmd_rm,
    }
    saved = {}
    if threading.current_thread() is threading.main_thread():
        saved[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        if args.command in ("list", "runs", "sweeps", "show") and hasattr(signal, "SIGPIPE"):
            # read-only: `tilegraph show ID | head -3` ends quietly, as coreutils do
            saved[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        else:
            saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
            hup = getattr(signal, "SIGHUP", None)
            if hup is not None and signal.getsignal(hup) is signal.SIG_DFL:  # not under nohup
                saved[hup] = signal.signal(hup, _on_sigterm)
            if saved[signal.SIGINT] is signal.default_int_handler:
                signal.signal(signal.SIGINT, _on_sigint)
    hook = sys.unraisablehook
    sys.unraisablehook = _interrupts_again(hook)
    try:
        return handlers[args.command](args)
    except (ConfigError, UsageError) as exc:
        # long enough for the list of a pipeline's fields (picard's is ~450 characters);
        # values echoed from the input are shortened where the message is made
        sys.stderr.write(f"error: {one_line(exc, 1000)}\n")
        return 2
    except BrokenPipeError:  # `tilegraph sweep … | head -1`: the reader left, the work is done
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # it is stdout's: no second error at exit's flush
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # as a command killed by SIGPIPE
        raise  # another pipe's (a remote store, a worker's): not the reader's
    except KeyboardInterrupt as exc:  # before a run existed (connecting, validating)
        _quiet_shutdown()
        sys.stderr.write(f"error: interrupted ({getattr(exc, 'reason', 'Ctrl-C')})\n")
        return getattr(exc, "code", 130)
    finally:
        sys.unraisablehook = hook
        for sig, handler in saved.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["main"]
