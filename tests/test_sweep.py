"""Parameter sweeps: grid parsing, one run per point on a real cluster, the gathered
Dataset read back with xarray, and re-running a sweep (skip complete, redo the rest)."""

import os
import shutil

import numpy as np
import pytest
import xarray as xr
from helpers import last_json, tilegraph
from tilegraph import storage
from tilegraph.pipelines.config import ConfigError
from tilegraph.pipelines.registry import get_pipeline
from tilegraph.pipelines.sweep import parse_grid, plan_sweep, run_sweep

BASE = ["n_coarse=4", "tol=1e-9", "direct_reference=true"]


def test_parse_grid_splits_outside_brackets():
    grid = parse_grid(["n_fine=20,40", "problem.beta=[1,2],[2, 1]", "scheme='a,b',c"])
    assert grid == {
        "n_fine": ["20", "40"],
        "problem.beta": ["[1,2]", "[2, 1]"],
        "scheme": ["'a,b'", "c"],
    }


@pytest.mark.parametrize(
    "items, needle",
    [
        ([], "at least one"),
        (["n_fine"], "expected key=v1,v2"),
        (["=1,2"], "expected key=v1,v2"),
        (["n_fine=20,,40"], "empty value"),
        (["n_fine=20,20"], "repeated value"),
        (["n_fine=20", "n_fine=40"], "given twice"),
    ],
)
def test_parse_grid_rejects(items, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_grid(items)


def test_plan_validates_every_point_and_names_it():
    pipe = get_pipeline("domain-split")
    with pytest.raises(ConfigError, match=r"--grid point n_fine=21: .*n_fine"):
        plan_sweep(pipe, ["n_fine=20,21"], sets=BASE)
    with pytest.raises(ConfigError, match="also given with --set"):
        plan_sweep(pipe, ["n_coarse=2,4"], sets=BASE)
    with pytest.raises(ConfigError) as bad_yaml:  # a grid value is not blamed on --set
        plan_sweep(pipe, ["n_fine=[1,0"], sets=BASE)
    assert str(bad_yaml.value).startswith("--grid point n_fine=[1,0: not valid YAML")
    a = plan_sweep(pipe, ["n_fine=20,40"], sets=BASE)
    b = plan_sweep(pipe, ["n_fine=20,40"], sets=BASE)
    c = plan_sweep(pipe, ["n_fine=20,40"], sets=[*BASE[:-1], "direct_reference=false"])
    assert a.sweep_id == b.sweep_id != c.sweep_id
    assert [p.config.n_fine for p in a.points] == [20, 40]


@pytest.mark.parametrize(
    "spec, schemes", [("local:2", ["central", "upwind"]), ("ray:2", ["central"])]
)
def test_sweep_on_a_cluster_gathers_one_dataset(tmp_path, executors, spec, schemes):
    pipe = get_pipeline("domain-split")
    grid = ["n_fine=20,40", f"scheme={','.join(schemes)}"]
    plan = plan_sweep(pipe, grid, sets=BASE)
    root = storage.Root(tmp_path / "runs")
    res = run_sweep(plan, root, executors(spec))
    n = 2 * len(schemes)
    assert (res.points, res.complete, res.failed, res.skipped) == (n, n, 0, 0)

    ds = xr.open_zarr(f"{res.path}/result", consolidated=False).load()
    assert ds["rel_error_direct"].dims == ("n_fine", "scheme")
    assert ds["n_fine"].values.tolist() == [20, 40]
    assert ds["scheme"].values.tolist() == schemes
    assert (ds["status"].values == "complete").all()
    # every point is its own run: the Dataset holds exactly what each run recorded
    for n in (20, 40):
        for scheme in schemes:
            point = ds.sel(n_fine=n, scheme=scheme)
            run = root.open(str(point["run_id"].values), pipeline="domain-split")
            assert run.config["n_fine"] == n and run.config["scheme"] == scheme
            assert run.status == "complete"
            assert float(point["iterations"]) == run.metrics["iterations"]
            assert float(point["unknowns"]) == (n - 1) ** 2
            assert float(point["rel_error_direct"]) <= 1e-8
    # the central scheme is second order, upwind first: refining helps central 4x
    err = ds["rel_error_exact"]
    ratio = err.sel(n_fine=20) / err.sel(n_fine=40)
    assert 3.0 < float(ratio.sel(scheme="central")) < 5.0
    if "upwind" in schemes:
        assert 1.5 < float(ratio.sel(scheme="upwind")) < 2.5
    assert (tmp_path / "runs" / "sweeps" / res.sweep_id / "summary.png").stat().st_size > 0


def test_rerun_skips_complete_points_and_redoes_failed_and_missing(tmp_path, executors):
    pipe = get_pipeline("domain-split")
    plan = plan_sweep(pipe, ["n_fine=20,40,60"], sets=BASE)
    root = storage.Root(tmp_path / "runs")
    ex = executors("local:2")
    first = run_sweep(plan, root, ex)
    assert first.complete == 3
    ids = {r["n_fine"]: r["run_id"] for r in first.rows}

    again = run_sweep(plan, root, ex)
    assert (again.skipped, again.complete) == (3, 3)
    assert {r["n_fine"]: r["run_id"] for r in again.rows} == ids

    # a point missing from the record whose config has a complete run reuses that run
    sweep = storage.SweepStore(first.path)
    pts = sweep.points
    del pts["n_fine=60"]
    sweep.set_points(pts)
    reused = run_sweep(plan, root, ex)
    assert (reused.skipped, reused.complete) == (3, 3)
    assert {r["n_fine"]: r["run_id"] for r in reused.rows} == ids

    # point 40 failed earlier, point 60 was never run: only they run
    failed = root.open(ids["40"], pipeline="domain-split")
    failed.mark_failed("RuntimeError: pretend")
    pts = sweep.points
    del pts["n_fine=60"]
    sweep.set_points(pts)
    shutil.rmtree(root.open(ids["60"]).url)
    before = {rid: root.open(rid).provenance.get("ended") for rid in (ids["20"], ids["40"])}

    third = run_sweep(plan, root, ex)
    assert (third.skipped, third.complete, third.failed) == (1, 3, 0)
    rows = {r["n_fine"]: r for r in third.rows}
    assert rows["20"]["run_id"] == ids["20"]  # untouched
    assert root.open(ids["20"]).provenance["ended"] == before[ids["20"]]
    assert rows["40"]["run_id"] == ids["40"]  # the same run, continued
    assert root.open(ids["40"]).status == "complete"
    assert rows["60"]["run_id"] != ids["60"]  # a fresh run
    np.testing.assert_allclose(rows["60"]["rel_error_exact"], first.rows[2]["rel_error_exact"])

    # a sweep killed between recording a point's new run id and creating the run: the
    # next sweep creates it under the recorded id (no run the record cannot see)
    shutil.rmtree(root.open(rows["60"]["run_id"]).url)
    fourth = run_sweep(plan, root, ex)
    assert (fourth.skipped, fourth.complete) == (2, 3)
    assert {r["n_fine"]: r["run_id"] for r in fourth.rows}["60"] == rows["60"]["run_id"]
    assert len(list((tmp_path / "runs" / "domain-split").iterdir())) == 3


def test_the_driver_leaves_a_point_run_that_another_process_owns(tmp_path):
    """The sweep driver writes a point run's status only under its lease: while another
    live process (a user's --resume of that point) owns it, the write is skipped."""
    from tilegraph.pipelines.sweep import _unless_owned

    run = storage.Root(tmp_path / "runs").create("demo", config={})
    calls = []
    with storage.Root(tmp_path / "runs").open(run.run_id).lease():
        _unless_owned(run, lambda: calls.append("held"))
    _unless_owned(run, lambda: calls.append("free"))
    assert calls == ["free"]
    assert run.lease().read() is None  # released after the write


def test_sweep_cli_json_contract_and_bad_grid(tmp_path):
    store = tmp_path / "runs"
    args = ["sweep", "domain-split", "--store", str(store), "--cluster", "sync"]
    args += [f"--set={s}" for s in BASE]
    out = tilegraph(*args, "--grid", "n_fine=20,40", "--json")
    assert out.returncode == 0, out.stderr
    res = last_json(out.stdout)
    assert set(res) == {"sweep_id", "path", "points", "complete", "failed"}
    assert (res["points"], res["complete"], res["failed"]) == (2, 2, 0)
    assert "n_fine" in out.stdout and "rel_error_exact" in out.stdout
    ds = xr.open_zarr(f"{res['path']}/result", consolidated=False)
    assert ds.sizes == {"n_fine": 2}

    out = tilegraph(*args, "--grid", "n_fine=20,40", "--json")
    assert last_json(out.stdout)["complete"] == 2
    assert "2 already done" in out.stdout

    # found again later: `sweeps` lists it, `show` takes its id (or its beginning)
    listed = last_json(tilegraph("sweeps", "--store", str(store), "--json").stdout)["sweeps"]
    assert [(s["sweep_id"], s["status"], s["points"], s["complete"]) for s in listed] == [
        (res["sweep_id"], "complete", 2, 2)
    ]
    text = tilegraph("show", res["sweep_id"], "--store", str(store)).stdout
    assert "set       n_coarse=4\n" in text and "points    2 (2 with a run)" in text
    # ids that are a prefix of several sweeps are named; rm of a sweep says what it does
    two = tilegraph(*args, "--grid", "n_fine=20", "--json")
    assert two.returncode == 0, two.stderr
    shown = tilegraph("show", "domain-split-", "--store", str(store))
    assert shown.returncode == 2 and "begins 2 sweeps' ids" in shown.stderr, shown.stderr
    gone = tilegraph("rm", res["sweep_id"], "--store", str(store))
    assert gone.returncode == 2 and "is a sweep; rm deletes runs" in gone.stderr
    shown = tilegraph("show", res["sweep_id"][:-4], "--store", str(store), "--json")
    info = last_json(shown.stdout)
    assert info["grid"] == {"n_fine": ["20", "40"]} and info["datasets"] == ["result"]
    runs = {r["run_id"] for r in last_json(tilegraph("runs", "--store", str(store),
                                                     "--json").stdout)["runs"]}  # fmt: skip
    assert [p["status"] for p in info["points"]] == ["complete", "complete"]
    assert {p["run_id"] for p in info["points"]} == runs
    listed = last_json(tilegraph("runs", "--store", str(store), "--json").stdout)["runs"]
    assert all(str(r["sweep"]).startswith("domain-split-") for r in listed)  # its sweep
    assert "sweep" in tilegraph("runs", "--store", str(store)).stdout.splitlines()[0]
    shown = tilegraph("show", res["sweep_id"], "--store", str(store))
    assert "grid      n_fine=20,40\n" in shown.stdout and not shown.stderr, shown.stderr

    # a sweep id where a run id belongs: what to do instead
    out = tilegraph("run", "domain-split", "--store", str(store), "--resume", res["sweep_id"])
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"'{res['sweep_id']}' is a sweep, not a run: run the same" in out.stderr

    bad = tmp_path / "bad"
    out = tilegraph("sweep", "domain-split", "--store", str(bad), "--grid", "n_fine=20,21")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: ")
    assert "n_fine=21" in out.stderr
    assert not bad.exists()


@pytest.mark.parametrize(
    "grid, sets, needle",
    [
        (["tol=0.1,0.10"], [], "points tol=0.1 and tol=0.10 give the same config"),
        (["n_coarse=4,4.0"], [], "give the same config"),
        (["problem=[1],[2]", "problem.eps=0.1,0.2"], [], "--grid problem: --grid problem.eps"),
        (["problem={kind: uniform}"], ["problem.eps=0.1"], "--set problem.eps sets a field"),
        # the grid silently overrode part of a --set
        (["problem.kind=constant,variable"], ["problem={kind: constant}"],
         "--grid problem.kind: --set problem sets the field it is inside"),
        # a field that no swept kind uses was taken because the kind was swept
        (["problem.kind=constant,variable"], ["problem.eps=0.5"],
         "'problem.eps': applies to problem.kind=boundary-layer, not problem.kind=constant"),
        # a million points: validated one by one for minutes before
        ([f"tol={','.join(f'1e-{i}' for i in range(1, 101))}",
          f"max_iter={','.join(map(str, range(10, 110)))}",
          f"restart={','.join(map(str, range(10, 110)))}"], [],
         "--grid: 1000000 points; at most 10000 in one sweep"),
    ],
)  # fmt: skip
def test_grids_whose_points_collide_are_refused(grid, sets, needle):
    pipe = get_pipeline("domain-split")
    with pytest.raises(ConfigError) as err:
        plan_sweep(pipe, grid, sets=["n_fine=20", *sets])
    assert needle in str(err.value)


def test_a_bad_config_file_or_set_is_not_blamed_on_a_grid_point(tmp_path):
    pipe = get_pipeline("domain-split")
    with pytest.raises(ConfigError, match=r"^--config: no such file"):
        plan_sweep(pipe, ["n_fine=20,40"], config_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"^--set 'bogus': expected key=value"):
        plan_sweep(pipe, ["n_fine=20,40"], sets=["bogus"])


def test_a_field_one_swept_choice_uses_is_taken():
    plan = plan_sweep(get_pipeline("domain-split"), ["solver=stationary,krylov"],
                      sets=["n_fine=20", "restart=10"])  # fmt: skip
    assert [p.config.restart for p in plan.points] == [10, 10]


def test_a_dry_run_refuses_a_point_too_big_for_this_machine(tmp_path):
    """As the sweep itself does (and `run --dry-run`): the dry run said yes."""
    out = tilegraph("sweep", "domain-split", "--grid", "n_fine=4000,5000", "--cluster", "sync",
                    "--store", str(tmp_path / "runs"), "--dry-run")  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "config field 'n_fine': the run needs about" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_failed_points_carry_their_error_and_numbers_stay_numbers(tmp_path, monkeypatch):
    import tilegraph.pipelines.domain_split.runner as runner
    from tilegraph import cluster

    def boom(*a, **k):
        raise OSError("disk full while plotting")

    monkeypatch.setattr(runner, "summary_figure", boom)
    pipe = get_pipeline("domain-split")
    plan = plan_sweep(pipe, ["tol=1e-8,1e-9"], sets=["n_fine=20", "n_coarse=4"])
    root = storage.Root(tmp_path / "runs")
    with cluster.connect("sync") as ex:
        res = run_sweep(plan, root, ex)
    assert (res.complete, res.failed) == (0, 2)
    ds = xr.open_zarr(f"{res.path}/result", consolidated=False).load()
    assert ds["tol"].dtype == np.float64  # YAML reads 1e-8 as text; the config as a float
    assert ds.sel(tol=1e-9)["status"].item() == "failed"
    assert "disk full while plotting" in ds.sel(tol=1e-9)["error"].item()
    assert np.isnan(ds["iterations"]).all()
    assert storage.SweepStore(res.path).status == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["local:2", "ray:2"])
def test_killed_worker_during_a_sweep(tmp_path, spec):
    """A point whose worker dies is run again by the scheduler and resumes from its
    checkpoints; every point ends complete with the uninterrupted answer."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import psutil

    name = "domain-split"
    long = {k: v for k, v in get_pipeline(name).checks.long.items() if k != "tol"}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in long.items()]
    ref_out = tilegraph(
        "run", name, *sets, "--set=tol=1e-11", "--cluster=sync", "--json",
        "--store", str(tmp_path / "ref"),
    )  # fmt: skip
    assert ref_out.returncode == 0, ref_out.stderr
    ref = last_json(ref_out.stdout)
    store = tmp_path / "runs"
    args = [sys.executable, "-m", "tilegraph.pipelines.cli", "sweep", name]
    args += ["--grid", "tol=1e-11,1e-10", *sets, "--cluster", spec, "--store", str(store)]
    proc = subprocess.Popen(
        [*args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if any(
            len(list((run / "checkpoints").glob("*/zarr.json"))) >= 2
            for run in store.glob(f"{name}/*")
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before a worker could be killed"
    procs = psutil.Process(proc.pid).children(recursive=True)
    if spec.startswith("ray"):
        cmds = {p.pid: " ".join(p.cmdline()) for p in procs}
        pool = [
            p
            for p in procs
            if cmds[p.pid].startswith("ray::")
            and not cmds[p.pid].startswith("ray::IDLE")
            and "Agent" not in cmds[p.pid]
        ]
    else:
        pool = [p for p in procs if "spawn_main" in " ".join(p.cmdline())]
    pool = [p for p in pool if "resource_tracker" not in " ".join(p.cmdline())]
    assert pool, "no worker process under the sweep's driver"
    pool[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    res = last_json(out)
    assert (res["complete"], res["failed"]) == (2, 0)
    ds = xr.open_zarr(f"{res['path']}/result", consolidated=False).load()
    point = ds.sel(tol=1e-11)
    assert float(point["iterations"]) == ref["metrics"]["iterations"]
    run = storage.Root(str(store)).open(str(point["run_id"].values))
    a = run.open_dataset("result").solution.values
    b = xr.open_zarr(f"{ref['path']}/result", consolidated=False).solution.values
    np.testing.assert_array_equal(a, b)


def test_a_point_finished_meanwhile_is_not_run_again(tmp_path):
    """A point's run completed by someone else (a user's ``--resume`` of it) after the
    sweep created it: the point's task returns the stored result and leaves it alone."""
    from tilegraph.pipelines.sweep import run_point

    root = storage.Root(str(tmp_path / "runs"))
    cfg = get_pipeline("domain-split").config.model_validate({"n_fine": 40, "n_coarse": 4})
    config = cfg.model_dump(mode="json")
    run = root.create("domain-split", config=config, backend="sync")
    run.mark_complete({"iterations": 7})
    before = root.open(run.run_id).provenance
    out = run_point("domain-split", config, run.url, None, False)
    assert out == {"status": "complete", "metrics": {"iterations": 7}}
    again = root.open(run.run_id)
    assert again.metrics == {"iterations": 7} and again.provenance == before
    assert not again.has("result")


def test_a_point_too_large_for_a_worker_is_refused_before_anything_runs(tmp_path):
    """Each point runs whole on one worker: its driver and worker peaks together are
    checked against one worker's memory limit, as a run's are (exit 2, nothing written)."""
    store = tmp_path / "runs"
    out = tilegraph("sweep", "domain-split", "--grid", "n_fine=100,60000", "--set",
                    "n_coarse=10", "--cluster", "local:2", "--store", str(store))  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config field 'n_fine'"), lines
    assert "in each worker of local:2" in lines[0]
    assert not store.exists() or not any(store.iterdir())


def test_sweep_dry_run_prints_the_largest_points_estimate(tmp_path):
    from tilegraph.pipelines import resources
    from tilegraph.pipelines.config import build_config

    store = tmp_path / "runs"
    out = tilegraph("sweep", "domain-split", "--grid", "n_fine=100,400", "--set",
                    "n_coarse=10", "--cluster", "local:2", "--store", str(store), "--dry-run",
                    "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = last_json(out.stdout)["estimate"]
    pipe = get_pipeline("domain-split")
    want = resources.estimate(pipe, build_config(pipe, sets=["n_fine=400", "n_coarse=10"]), 1)
    assert got["workers"] == 1 and got["driver_bytes"] == want.driver_bytes
    assert got["worker_bytes"] == want.worker_bytes
    assert "# the largest point, run whole by one worker:" in out.stdout
    assert not store.exists()


def test_summary_figure_reads_a_convergence_study_on_log_axes():
    """Errors against a resolution: both axes log and each line's observed order in its
    legend (closed form: C n^-2 and C n^-1); a panel of equal counts keeps linear y and
    draws its lines with different markers, so neither hides the other."""
    import xarray as xr
    from tilegraph.pipelines.sweep import log_slope, summary_figure

    n = np.array([50, 100, 200])
    err = np.stack([3.0 * n**-2.0, 0.2 / n], axis=1)
    ds = xr.Dataset(
        {
            "rel_error_exact": (("n_fine", "scheme"), err),
            "iterations": (("n_fine", "scheme"), np.full((3, 2), 5)),
            "rel_error_direct": (("n_fine", "scheme"), [[3e-12, 9e-12], [5e-13, 4e-12],
                                                        [1e-11, 4e-12]]),
        },
        coords={"n_fine": n, "scheme": ["central", "upwind"]},
        attrs={"swept_keys": ["n_fine", "scheme"], "sweep_id": "s", "preset": "quick",
               "sets": ["tol=1e-9"]},
    )  # fmt: skip
    fig = summary_figure(ds, ["rel_error_exact", "iterations", "rel_error_direct"])
    errors, counts, roundoff = fig.axes[:3]
    assert fig._suptitle.get_text() == "sweep s: preset quick, tol=1e-9"  # what is fixed
    assert roundoff.get_yscale() == "log"  # not a linear axis with an offset exponent
    assert errors.get_xscale() == "log" and errors.get_yscale() == "log"
    labels = [t.get_text() for t in errors.get_legend().get_texts()]
    assert labels == ["scheme=central, slope -2.00", "scheme=upwind, slope -1.00"]
    assert counts.get_yscale() == "linear"
    assert "slope" not in " ".join(t.get_text() for t in counts.get_legend().get_texts())
    assert len({line.get_marker() for line in counts.lines}) == 2
    assert log_slope([1.0, 2.0, 4.0], [np.nan, 1.0, 0.5]) is None  # two usable points
    assert log_slope([50, 200], [1.1e-13, 2.0e-14]) is None  # two points always fit
    noise = [1.1e-13, 4.8e-14, 9.9e-14, 6.0e-14]  # round-off: no straight line
    assert log_slope([50, 100, 200, 400], noise) is None
    assert log_slope([50, 100, 200, 400], [2.0e-4, 5.1e-5, 1.2e-5, 3.1e-6]) < -1.9


def test_points_a_killed_sweep_never_started_show_interrupted(tmp_path):
    """A sweep driver killed by SIGKILL cannot mark the points it had not started: they
    said `pending` for ever. Once the sweep's process is gone, `runs` and `show` call them
    interrupted; while it lives they are pending."""
    import subprocess
    import sys

    root = storage.Root(str(tmp_path / "runs"))
    cfg = get_pipeline("domain-split").config.model_validate({"n_fine": 40, "n_coarse": 4})
    run = root.create("domain-split", config=cfg.model_dump(mode="json"), pending=True)
    sweep = storage.SweepStore.open_or_create(root.url, "s1", {"pipeline": "domain-split"})
    sweep.set_point("n_fine=40", run.run_id)
    plain = root.create("domain-split", config=cfg.model_dump(mode="json"), pending=True)

    lease = storage.Lease(sweep.url, "sweep s1").acquire()  # the driver lives
    statuses = {r["run_id"]: r["status"] for r in root.runs()}
    assert statuses == {run.run_id: "pending", plain.run_id: "pending"}
    lease.release()
    killed = (  # a driver that dies holding the sweep's lease
        "import os, sys; from tilegraph import storage; "
        "storage.Lease(sys.argv[1], 'sweep s1').acquire(); os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", killed, sweep.url], check=False, timeout=120)
    statuses = {r["run_id"]: r["status"] for r in root.runs()}
    assert statuses == {run.run_id: "interrupted", plain.run_id: "pending"}
    shown = tilegraph("show", run.run_id, "--store", root.url)
    assert shown.returncode == 0 and "interrupted (never started" in shown.stdout
    shown = tilegraph("show", run.run_id, "--store", root.url, "--json")
    assert last_json(shown.stdout)["status"] == "interrupted"
    # the sweep too; and one interrupted in the usual way (its lease let go) is marked
    assert [s["status"] for s in root.sweeps()] == ["interrupted"]
    from tilegraph.pipelines.sweep import interrupted_points

    os.remove(os.path.join(sweep.url, storage.lease.LEASE_FILE))  # as after a Ctrl-C
    assert [s["status"] for s in root.sweeps()] == ["interrupted"]
    interrupted_points(root, "s1", "domain-split")
    assert [s["status"] for s in root.sweeps()] == ["failed"]
    assert "interrupted" in storage.SweepStore(sweep.url).definition["error"]


def test_a_dry_run_knows_the_memory_each_local_worker_gets(tmp_path, executors, monkeypatch):
    """`--dry-run` checked a point against the whole machine; on `local:N` each worker
    gets Dask's share of it, and the real run refused what the dry run passed."""
    from helpers import run_cli
    from tilegraph import cluster

    assert cluster.expected_memory_limit("local:2") == executors("local:2").memory_limit
    assert cluster.expected_memory_limit("ray:2") is None
    assert cluster.expected_memory_limit("sync") is None
    tiny = {"local:2": 2**10}  # a worker of 1 KiB
    monkeypatch.setattr(cluster, "expected_memory_limit", lambda spec, *_: tiny.get(str(spec)))
    store = str(tmp_path / "runs")
    for argv in (
        ["sweep", "domain-split", "--grid", "n_fine=40,50"],
        ["run", "domain-split", "--set", "n_fine=40"],
    ):
        rc, _, err = run_cli(*argv, "--cluster", "local:2", "--store", store, "--dry-run")
        assert rc == 2 and "in each worker of local:2, which can use 1 KiB" in err, err
    rc, _, err = run_cli("run", "domain-split", "--cluster", "sync", "--store", store, "--dry-run")
    assert rc == 0, err
    assert not os.path.exists(store)
