"""The ``tilegraph`` command line as a user runs it: subprocesses, exit codes, the JSON
contract, nothing written on bad input, and resume after a killed driver."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import last_json, tilegraph
from tilegraph import storage


def test_list():
    out = tilegraph("list", "--json")
    assert out.returncode == 0
    pipes = last_json(out.stdout)["pipelines"]
    assert "quick" in pipes["domain-split"]["presets"]
    text = tilegraph("list").stdout
    assert "domain-split" in text and "paper2d" in text


def test_list_name_shows_every_field_with_its_preset_value():
    """`--help` listed no fields: `list NAME [--preset P]` gives each (dotted), its value
    in the preset, and its description with the choices of a Literal."""
    import tilegraph as tg
    from helpers import run_cli
    from tilegraph.pipelines.config import build_config

    pipeline = tg.get_pipeline("domain-split")
    rc, out, err = run_cli("list", "domain-split", "--preset", "paper2d", "--json")
    assert rc == 0, err
    fields = {f["field"]: f for f in last_json(out)["fields"]}
    want = build_config(pipeline, "paper2d").model_dump(mode="json")
    assert fields["n_fine"]["value"] == want["n_fine"] == 1000
    assert fields["problem.kind"]["value"] == want["problem"]["kind"]
    assert (
        "one of: constant, variable, boundary-layer, custom, dataset"
        in (fields["problem.kind"]["description"])
    )
    flat = {f"problem.{k}" for k in want["problem"]} | (set(want) - {"problem"})
    assert set(fields) == flat
    rc, out, _ = run_cli("list", "ttn")
    assert rc == 0 and out.startswith("ttn, preset quick (set any with --set FIELD=VALUE):")
    rc, _, err = run_cli("list", "nope")
    assert rc == 2 and err.startswith("error: ") and "nope" in err
    rc, _, err = run_cli("list", "--preset", "quick")
    assert rc == 2 and "give the pipeline's NAME too" in err


def test_listing_and_validating_import_no_runner():
    """Every pipeline registered and a config validated for each, in a fresh process:
    no runner's libraries (Zarr, SciPy, Matplotlib, Dask) are imported until a run
    starts; loading the deferred ``run`` imports its runner."""
    code = """
import sys
import tilegraph
from tilegraph.pipelines.config import build_config
heavy = ("zarr", "scipy", "matplotlib", "xarray", "dask", "distributed", "ray", "torch")
for name in tilegraph.available():
    build_config(tilegraph.get_pipeline(name))
print(sorted(m for m in heavy if m in sys.modules))
run = tilegraph.get_pipeline("domain-split").run
run.load()
print("tilegraph.pipelines.domain_split.runner" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def test_run_json_contract_runs_and_show(tmp_path):
    store = tmp_path / "runs"
    out = tilegraph(
        "run",
        "domain-split",
        "--cluster",
        "sync",
        "--store",
        str(store),
        "--set",
        "tol=1e-8",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = last_json(out.stdout)
    assert set(res) == {"run_id", "path", "status", "metrics"}
    assert res["status"] == "complete"
    for key in (
        "rel_error_exact",
        "rel_error_direct",
        "rel_residual",
        "iterations",
        "unknowns",
        "wall_s",
    ):
        assert key in res["metrics"]
    assert res["metrics"]["rel_residual"] <= 1e-8
    assert "rel_error_direct" in out.stdout  # the metrics table
    ds = xr.open_zarr(res["path"] + "/result", consolidated=False)
    assert ds.solution.shape == (101, 101)

    runs = last_json(tilegraph("runs", "--store", str(store), "--json").stdout)["runs"]
    assert [r["run_id"] for r in runs] == [res["run_id"]]
    shown = tilegraph("show", res["run_id"], "--store", str(store), "--json")
    info = last_json(shown.stdout)
    assert info["config"]["tol"] == 1e-8 and info["config"]["n_fine"] == 100
    assert info["provenance"]["backend"] == "sync"
    assert info["status"] == "complete" and info["metrics"] == res["metrics"]
    assert info["datasets"] == ["history", "result"]  # not the figure, not the lease
    assert res["run_id"] in tilegraph("runs", "--store", str(store)).stdout
    shown = tilegraph("show", res["run_id"], "--store", str(store))
    assert "datasets  history, result\n" in shown.stdout and not shown.stderr, shown.stderr


def test_config_file_and_nested_set(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("n_fine: 60\nn_coarse: 6\nproblem:\n  kind: variable\n")
    out = tilegraph(
        "run",
        "domain-split",
        "--config",
        str(cfg),
        "--set",
        "problem.kind=constant",
        "--set",
        "problem.beta=[0.5, 0.0]",
        "--cluster",
        "sync",
        "--store",
        str(tmp_path / "r"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = last_json(out.stdout)
    run = storage.Root(str(tmp_path / "r")).open(res["run_id"])
    assert run.config["n_fine"] == 60
    assert run.config["problem"] == {
        "kind": "constant",
        "alpha": [1.0, 1.0],
        "beta": [0.5, 0.0],
        "eps": 1.0,
        "domain": None,
        "factory": None,
        "params": {},
        "dataset": None,
    }


BAD = [
    (["--set", "n_fine=101"], "n_fine"),
    (["--set", "d=4"], "'d'"),
    (
        [
            "--set",
            "problem.kind=boundary-layer",
            "--set",
            "problem.eps=0.001",
            "--set",
            "problem.beta=[1, 1]",
        ],
        "upwind",
    ),
    (["--set", "bogus=1"], "bogus"),
    (["--set", "tol=-1"], "tol"),
    (["--set", "solver=cg"], "solver"),
    (["--set", "problem.alpha=[1, 2, 3]"], "alpha"),
    (["--set", "n_fine"], "key=value"),
    (["--preset", "nope"], "preset"),
    (["--cluster", "mars://x"], "--cluster"),
    (["--config", "/nonexistent.yaml"], "--config"),
    (["--set", "out_of_core=true"], "direct_reference"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, needle):
    store = tmp_path / "runs"
    out = tilegraph("run", "domain-split", "--store", str(store), "--cluster", "sync", *args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert needle in lines[0]
    assert not store.exists()


def test_unknown_pipeline_and_run(tmp_path):
    out = tilegraph("run", "nope", "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and out.stderr.startswith("error:") and "domain-split" in out.stderr
    out = tilegraph("show", "20990101-000000-abcdef", "--store", str(tmp_path / "s"))
    assert out.returncode == 2 and out.stderr.startswith("error:")
    out = tilegraph("run")
    assert out.returncode == 2 and out.stderr.startswith("error:")


def test_failed_run_exits_1_and_marks_store_failed(tmp_path, monkeypatch, capsys):
    from tilegraph.pipelines import cli

    def broken(*args, **kwargs):
        raise FloatingPointError("injected failure")

    monkeypatch.setattr("tilegraph.pipelines.domain_split.runner.fgmres", broken)
    code = cli.main(
        ["run", "domain-split", "--cluster", "sync", "--store", str(tmp_path), "--json"]
    )
    assert code == 1
    out, err = capsys.readouterr()
    res = last_json(out)
    assert res["status"] == "failed"
    run = storage.Root(str(tmp_path)).open(res["run_id"])
    assert run.status == "failed" and "injected failure" in run.error
    where = f"{run.url}/{storage.TRACEBACK_FILE}"
    assert f"(traceback: {where})" in err
    assert "in broken" in Path(where).read_text()  # the frame that raised


def _checkpoints(store: Path) -> list:
    return sorted(store.glob("domain-split/*/checkpoints/*"))


def test_killed_driver_resumes_to_the_uninterrupted_answer(tmp_path):
    sets = [
        "--set",
        "solver=stationary",
        "--set",
        "tol=1e-10",
        "--set",
        "checkpoint_s=0",
        "--set",
        "n_fine=120",
        "--set",
        "n_coarse=6",
        "--cluster",
        "sync",
    ]
    ref = tilegraph("run", "domain-split", *sets, "--store", str(tmp_path / "ref"), "--json")
    assert ref.returncode == 0, ref.stderr
    ref = last_json(ref.stdout)

    store = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tilegraph.pipelines.cli",
            "run",
            "domain-split",
            *sets,
            "--store",
            str(store),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while len(_checkpoints(store)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = next(store.glob("domain-split/*")).name
    killed = storage.Root(str(store)).open(run_id)
    assert killed.status == "running" and killed.interrupted  # its lease is left behind

    out = tilegraph(
        "run",
        "domain-split",
        "--resume",
        run_id,
        "--cluster",
        "sync",
        "--store",
        str(store),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = last_json(out.stdout)
    assert res["run_id"] == run_id and res["status"] == "complete"
    assert res["metrics"]["iterations"] == ref["metrics"]["iterations"]
    a = xr.open_zarr(res["path"] + "/result", consolidated=False).solution.values
    b = xr.open_zarr(ref["path"] + "/result", consolidated=False).solution.values
    np.testing.assert_array_equal(a, b)
    prov = storage.Root(str(store)).open(run_id).provenance
    assert prov.get("resumed")


def test_resume_after_a_failure_while_writing_results(tmp_path, monkeypatch, capsys):
    import tilegraph.pipelines.domain_split.runner as runner
    from tilegraph.pipelines import cli

    args = ["run", "domain-split", "--cluster", "sync", "--set", "tol=1e-9", "--json"]
    assert cli.main([*args, "--store", str(tmp_path / "ref")]) == 0
    ref = last_json(capsys.readouterr().out)

    def boom(*a, **k):
        raise OSError("disk full while plotting")

    monkeypatch.setattr(runner, "summary_figure", boom)
    store = str(tmp_path / "failed")
    assert cli.main([*args, "--store", store]) == 1
    failed = last_json(capsys.readouterr().out)
    assert storage.Root(store).open(failed["run_id"]).status == "failed"
    monkeypatch.undo()

    resume = ["run", "domain-split", "--cluster", "sync", "--store", store, "--json"]
    assert cli.main([*resume, "--resume", failed["run_id"]]) == 0
    res = last_json(capsys.readouterr().out)
    assert res["status"] == "complete"
    assert res["metrics"]["iterations"] == ref["metrics"]["iterations"]
    a = xr.open_zarr(res["path"] + "/result", consolidated=False).solution.values
    b = xr.open_zarr(ref["path"] + "/result", consolidated=False).solution.values
    np.testing.assert_array_equal(a, b)
    assert "work" not in storage.Root(store).open(res["run_id"]).group


def test_bad_store_url_exits_2(tmp_path):
    out = tilegraph("run", "domain-split", "--store", "nosuchproto://x/y", "--cluster", "sync")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: --store")


def test_listing_a_store_that_is_a_file_is_one_error_line(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a store")
    for cmd in (["runs"], ["show", "20260101-000000-abcdef"]):
        out = tilegraph(*cmd, "--store", str(afile))
        assert out.returncode == 2, out
        assert out.stderr.strip().splitlines() == [
            f"error: --store {afile}: a file, not a folder; a store is a folder"
        ]
    assert afile.read_text() == "not a store"


def test_runs_filter_and_show_takes_a_unique_part_of_an_id(tmp_path):
    from helpers import run_cli

    root = storage.Root(str(tmp_path))
    ids = {
        ("ttn", "20261201-100000-aaaaaa"): "complete",
        ("ttn", "20261202-100000-bbbbbb"): "failed",
        ("picard", "20261203-100000-cccccc"): "complete",
        ("ttn", "20261203-110000-dddddd"): "complete",
    }
    for (pipeline, run_id), status in ids.items():
        run = root.create(pipeline, {"x": 1}, run_id=run_id)
        run.mark_complete({"m": 1.0}) if status == "complete" else run.mark_failed("boom")

    def listed(*args):
        rc, out, err = run_cli("runs", *args, "--store", str(tmp_path), "--json")
        assert rc == 0, err
        return [r["run_id"][-6:] for r in last_json(out)["runs"]]

    assert listed() == ["aaaaaa", "bbbbbb", "cccccc", "dddddd"]
    assert listed("ttn") == ["aaaaaa", "bbbbbb", "dddddd"]
    assert listed("ttn", "--status", "complete") == ["aaaaaa", "dddddd"]
    assert listed("--status", "failed") == ["bbbbbb"]
    assert listed("--last", "2") == ["cccccc", "dddddd"]
    assert listed("ttn", "--last", "1") == ["dddddd"] and listed("--last", "0") == []
    rc, out, _ = run_cli("runs", "bilevel", "--store", str(tmp_path))
    assert rc == 0 and out.strip() == f"no 'bilevel' runs under {tmp_path}"
    # a misspelt pipeline or store is not "no runs"
    rc, _, err = run_cli("runs", "ttnn", "--store", str(tmp_path))
    assert rc == 2 and err.startswith("error: PIPELINE: no pipeline 'ttnn' (known: ")
    assert "ttn" in err and err.count("\n") == 1
    rc, _, err = run_cli("runs", "--store", str(tmp_path / "nope"))
    assert rc == 2 and err == f"error: --store {tmp_path / 'nope'}: no such folder\n"
    rc, _, err = run_cli("runs", "--status", "done", "--store", str(tmp_path))
    assert rc == 2 and err.startswith("error:") and "complete" in err

    def shown(given):
        rc, out, err = run_cli("show", given, "--store", str(tmp_path), "--json")
        return (last_json(out)["run_id"][-6:], last_json(out)["pipeline"]) if rc == 0 else err

    assert shown("20261202-100000-bbbbbb") == ("bbbbbb", "ttn")
    assert shown("cccccc") == ("cccccc", "picard")  # the end of one id
    assert shown("20261202") == ("bbbbbb", "ttn")  # the beginning of one
    assert shown("last") == ("dddddd", "ttn")
    err = shown("20261203")  # two runs began that day: one line naming both
    assert err.startswith("error: RUN-ID: '20261203' is in 2 runs' ids (20261203-100000-cccccc")
    assert len(err.strip().splitlines()) == 1
    assert shown("eeeeee").startswith("error: RUN-ID: no run 'eeeeee'")
    from tilegraph.pipelines.cli import STATUSES  # what --status takes: every status
    from tilegraph.storage.runstore import UNREADABLE

    assert set(STATUSES) == {
        storage.PENDING, storage.RUNNING, storage.COMPLETE, storage.FAILED,
        storage.INTERRUPTED, UNREADABLE,
    }  # fmt: skip


def test_rm_deletes_runs_only_when_every_one_can_go(tmp_path):
    """`tilegraph rm`: every id is checked before any run is deleted; a run a live
    process holds, or a point a live sweep will start, is refused (exit 2, one line);
    an interrupted run (its owner dead) can go."""
    import subprocess
    import sys

    from helpers import run_cli

    root = storage.Root(str(tmp_path))
    done = root.create("ttn", {"x": 1}, run_id="20261201-100000-aaaaaa")
    done.write_dataset("result", xr.Dataset({"u": ("x", np.arange(3.0))}))
    done.mark_complete({"m": 1.0})
    failed = root.create("ttn", {"x": 1}, run_id="20261202-100000-bbbbbb")
    failed.mark_failed("boom")
    held = root.create("picard", {"x": 1}, run_id="20261203-100000-cccccc")
    point = root.create("ttn", {"x": 1}, run_id="20261204-100000-dddddd", pending=True)
    sweep = storage.SweepStore.open_or_create(root.url, "s1", {"pipeline": "ttn"})
    sweep.set_point("x=1", point.run_id)
    store = ("--store", str(tmp_path))

    def left():
        return [r["run_id"][-6:] for r in root.runs()]

    lease = held.lease().acquire()
    rc, _, err = run_cli("rm", "aaaaaa", "cccccc", *store)
    assert rc == 2 and err.count("\n") == 1, err
    assert "RUN-ID 20261203-100000-cccccc: run 20261203-100000-cccccc is already running" in err
    lease.release()
    rc, _, err = run_cli("rm", "aaaaaa", "eeeeee", *store)
    assert rc == 2 and err.startswith("error: RUN-ID: no run 'eeeeee'"), err
    with storage.Lease(sweep.url, "sweep s1"):  # a live sweep will start it
        rc, _, err = run_cli("rm", "bbbbbb", "dddddd", *store)
        assert rc == 2 and "sweep s1, whose point it is, is already running" in err, err
        point.mark_complete({"m": 2.0})  # or will read its results
        rc, _, err = run_cli("rm", "dddddd", *store)
        assert rc == 2 and "sweep s1, whose point it is, is already running" in err, err
    rc, _, err = run_cli("rm", "a", *store)  # a destructive command takes no short parts
    assert rc == 2 and "give a whole run id, at least 6 of its first or last" in err, err
    assert left() == ["aaaaaa", "bbbbbb", "cccccc", "dddddd"]  # nothing deleted

    killed = (  # a driver that dies holding the run's lease: the run is interrupted
        "import os, sys; from tilegraph import storage; "
        "storage.Root(sys.argv[1]).open(sys.argv[2]).lease().acquire(); os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", killed, str(tmp_path), held.run_id], timeout=120)
    assert {r["run_id"][-6:]: r["status"] for r in root.runs()}["cccccc"] == "interrupted"
    rc, out, err = run_cli("rm", "aaaaaa", "cccccc", "dddddd", *store, "--json")
    assert rc == 0, err
    assert [d["run_id"][-6:] for d in last_json(out)["deleted"]] == ["aaaaaa", "cccccc", "dddddd"]
    assert left() == ["bbbbbb"] and sorted(os.listdir(tmp_path / "ttn")) == [failed.run_id]
    assert not (tmp_path / "picard" / held.run_id).exists()
    rc, out, _ = run_cli("rm", "last", *store)
    assert rc == 0 and out == f"deleted {failed.run_id} ({failed.url})\n" and left() == []


def test_rm_says_what_it_deleted_when_a_later_run_goes_meanwhile(tmp_path, monkeypatch):
    """A run deleted (or started) by another process between the checks and its turn:
    one line naming it and what was already deleted, and --json still says which."""
    from helpers import run_cli

    root = storage.Root(str(tmp_path))
    a = root.create("ttn", {"x": 1}, run_id="20261201-100000-aaaaaa")
    b = root.create("ttn", {"x": 1}, run_id="20261202-100000-bbbbbb")
    os.makedirs(tmp_path / "ttn" / ".deleting-20261101-100000-zzzzzz-0123abcd" / "u")
    real = storage.Root.delete

    def other_process_first(self, run_id, pipeline=None):
        if run_id == b.run_id:
            real(self, run_id, pipeline)
        return real(self, run_id, pipeline)

    monkeypatch.setattr(storage.Root, "delete", other_process_first)
    rc, out, err = run_cli("rm", a.run_id, b.run_id, "--store", str(tmp_path), "--json")
    assert rc == 2 and err.count("\n") == 1, err
    assert f"RUN-ID {b.run_id}: no run '{b.run_id}'" in err
    assert err.endswith(f"(deleted before it: {a.run_id})\n"), err
    assert [d["run_id"] for d in last_json(out)["deleted"]] == [a.run_id]
    assert os.listdir(tmp_path / "ttn") == []  # what a stopped delete left is cleared


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`tilegraph sweep … | head -1`: the table printed at the end met a closed pipe and
    Python printed a BrokenPipeError traceback; the command ends as coreutils do."""
    import contextlib
    import io

    from tilegraph.pipelines import cli

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    err = io.StringIO()
    with contextlib.redirect_stdout(Gone()), contextlib.redirect_stderr(err):
        rc = cli.main(["list"])
    assert rc == 141 and err.getvalue() == ""
