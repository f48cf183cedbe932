"""Stores, values, addresses and signals checked before (or while) work runs: one
``error:`` line, exit 2 (143 for SIGTERM), nothing half-written."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import yaml
from helpers import ROOT, free_port, last_json, tilegraph
from helpers import run_cli as _main
from tilegraph import storage
from tilegraph.pipelines.base import Pipeline
from tilegraph.pipelines.execute import execute

OLD_STORE = ROOT / "tests" / "data" / "store-v0.1.0"
OLD_RUN = "20261204-051754-bea5fb"


def _one_line(rc, err, needle, limit=500):
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], (needle, lines[0])
    assert len(lines[0]) <= limit


@pytest.mark.parametrize(
    "name,item,field",
    [
        ("domain-split", "problem.eps=.inf", "problem.eps"),
        ("domain-split", "problem.beta=[.inf, 0]", "problem.beta[0]"),
        ("ttn", "T=.inf", "'T'"),
        ("ttn", "T=-.inf", "'T'"),
        ("picard", "tol=.inf", "'tol'"),
        ("bilevel", "problem.spread=.nan", "problem.spread"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, name, item, field):
    store = tmp_path / "runs"
    rc, _, err = _main("run", name, "--set", item, "--cluster", "sync", "--store", str(store))
    _one_line(rc, err, field)
    assert "finite" in err or "nan" in err
    assert not store.exists()


def test_huge_values_are_quoted_short(tmp_path):
    store = tmp_path / "runs"
    rc, _, err = _main(
        "run", "domain-split", "--set", "n_fine=" + "x" * 100_000, "--store", str(store)
    )
    _one_line(rc, err, "n_fine", limit=450)
    assert not store.exists()


BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [{','.join(['*' + chr(97 + k)] * 9)}]\n" for k in range(8)
)


def test_yaml_alias_bombs_and_binary_configs_are_refused(tmp_path):
    store = tmp_path / "runs"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    t0 = time.perf_counter()
    rc, _, err = _main("run", "ttn", "--config", str(bomb), "--store", str(store))
    _one_line(rc, err, "expands to more than")
    rc, _, err = _main("run", "ttn", "--set", "h=" + _inline_bomb(), "--store", str(store))
    _one_line(rc, err, "expands to more than")
    assert time.perf_counter() - t0 < 20
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, _, err = _main("run", "ttn", "--config", str(binary), "--store", str(store))
    _one_line(rc, err, "not a UTF-8 text file")
    assert not store.exists()


def _inline_bomb(levels: int = 7) -> str:
    """A one-line YAML value that expands to 10**levels items through aliases."""
    text = "[" + ",".join(["&l0 [0,0,0,0,0,0,0,0,0,0]"] + ["*l0"] * 9) + "]"
    for k in range(1, levels):
        text = "[" + ",".join([f"&l{k} {text}"] + [f"*l{k}"] * 9) + "]"
    assert yaml.safe_load(text) is not None  # cheap to parse: the aliases share objects
    return text


def test_bad_stores_exit_2_and_write_nothing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for store in (str(afile), str(afile / "runs")):
        rc, _, err = _main("run", "bilevel", "--cluster", "sync", "--store", store)
        _one_line(rc, err, "a file")
        rc, _, err = _main("run", "bilevel", "--cluster", "sync", "--dry-run", "--store", store)
        _one_line(rc, err, "a file")
    assert afile.read_text() == "not a folder"
    for argv in (["runs"], ["show", "x1"], ["run", "bilevel", "--cluster", "sync"]):
        rc, _, err = _main(*argv, "--store", "foo://bucket/x")
        _one_line(rc, err, "--store")
        assert "foo" in err
    rc, _, err = _main("run", "bilevel", "--cluster", "local:2", "--store", "memory://tg-x")
    _one_line(rc, err, "memory://")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("n_fine: 21\nn_fine: 42\n", "key 'n_fine' given twice at line 2, column 1"),
        ("problem: {eps: 0.1, eps: 0.2}\n", "key 'eps' given twice at line 1"),
        ("n_fine: [1, 2\n", "at line 2, column 1"),
        (None, "a folder, not a YAML file"),
    ],
)
def test_config_files_are_read_strictly(tmp_path, text, needle):
    cfg = tmp_path / "cfg.yaml"
    if text is None:
        cfg.mkdir()
    else:
        cfg.write_text(text)
    store = tmp_path / "runs"
    rc, _, err = _main("run", "domain-split", "--config", str(cfg), "--store", str(store))
    _one_line(rc, err, needle)
    assert not store.exists()


def test_yaml_merge_keys_are_not_keys_given_twice(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("base: &b {eps: 0.1}\nproblem: {<<: *b, eps: 0.2, kind: constant}\n")
    from tilegraph.pipelines.config import read_config_file

    assert read_config_file(str(cfg))["problem"] == {"eps": 0.2, "kind": "constant"}


def test_a_misspelt_sweep_preset_is_named_as_such(tmp_path):
    argv = ["sweep", "domain-split", "--preset", "Quick", "--grid", "n_fine=20,40"]
    rc, _, err = _main(*argv, "--store", str(tmp_path / "runs"))
    _one_line(rc, err, "--preset: unknown preset 'Quick' for domain-split")
    assert "--grid" not in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_stores_that_cannot_hold_runs_are_refused_before_anything_runs(tmp_path):
    """/proc passes the access test but refuses new folders; http(s) is read-only."""
    for store, needle in (
        ("/proc/tg-runs", "cannot create folders in /proc"),
        ("/proc", "cannot create folders in /proc"),  # exists: root passes the access test
        ("http://127.0.0.1:1/runs", "read-only"),
    ):
        for argv in (["run", "bilevel"], ["sweep", "bilevel", "--grid", "seed=1,2"]):
            rc, _, err = _main(*argv, "--cluster", "sync", "--store", store)
            _one_line(rc, err, needle)
    rc, _, err = _main("runs", "--store", "http://127.0.0.1:1/runs")
    _one_line(rc, err, "cannot read it")
    assert not os.path.exists("/proc/tg-runs")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "bilevel", "--preset", ""], "argument --preset: expected a value"),
        (["run", "bilevel", "--config", " "], "argument --config: expected a value"),
        (["run", "bilevel", "--resume", ""], "argument --resume: expected a value"),
        (["run", "bilevel", "--store", ""], "argument --store: expected a value"),
        (["run", "bilevel", "--report", ""], "argument --report: expected a value"),
        (["run", "bilevel", "--cluster", ""], "argument --cluster: expected a value"),
        (["sweep", "bilevel", "--grid", "seed=1,2", "--preset", ""], "--preset"),
        (["run", "bilevel", "--trust-store"], "--trust-store: only with --resume"),
        (["run", "bilevel", "--cluster-profile", "site.yaml"], "--cluster-profile: used only"),
        (["run", "bilevel", "--cluster", "local:100000"], "100000 workers on this machine"),
        (["sweep", "bilevel", "--grid", "seed=1,2", "--cluster", "ray:5000"], "5000 workers"),
    ],
)
def test_empty_or_idle_options_are_refused(tmp_path, monkeypatch, argv, needle):
    """An empty value is not "not given": `--resume ''` must not start a fresh run."""
    monkeypatch.chdir(tmp_path)
    cluster = [] if "--cluster" in argv else ["--cluster", "sync"]
    rc, _, err = _main(*argv, *cluster)
    _one_line(rc, err, needle)
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []


def test_unreadable_runs_are_listed_and_refused_in_one_line(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    good = storage.Root(store).runs()
    broken = store / "domain-split" / "20261204-000000-aaaaaa"
    broken.mkdir()
    (broken / "zarr.json").write_text("[]")
    odd = store / "domain-split" / "20261204-000000-bbbbbb"
    odd.mkdir()
    meta = json.loads((store / "domain-split" / OLD_RUN / "zarr.json").read_text())
    meta["attributes"].update(run_id=odd.name, status=123, config="notadict")
    (odd / "zarr.json").write_text(json.dumps(meta))
    rows = {r["run_id"]: r["status"] for r in storage.Root(store).runs()}
    assert rows[broken.name] == rows[odd.name] == "unreadable"
    assert all(rows[r["run_id"]] == r["status"] for r in good)  # the others as before
    rc, out, _ = _main("runs", "--store", str(store))
    assert rc == 0 and "unreadable" in out
    for run_id in (broken.name, odd.name):
        rc, _, err = _main("show", run_id, "--store", str(store))
        _one_line(rc, err, "is unreadable")
        rc, _, err = _main("run", "domain-split", "--resume", run_id, "--store", str(store))
        _one_line(rc, err, "is unreadable")
    rc, _, err = _main("show", "20261204-000000-cccccc", "--store", str(store))
    _one_line(rc, err, "no run")


def test_a_port_that_is_not_a_scheduler_fails_within_the_connect_timeout(tmp_path):
    """Dask's Client waits without end for a handshake that never comes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts (the kernel does), never answers
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.perf_counter()
        proc = tilegraph(
            "run", "bilevel", "--cluster", address, "--store", str(tmp_path / "r"),
            env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}, timeout=120,
        )  # fmt: skip
    _one_line(proc.returncode, proc.stderr, "did not answer as a Dask scheduler within 3 s")
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "r").exists()


def test_a_port_that_is_not_a_ray_head_fails_within_the_probe_timeout():
    from tilegraph.cluster.ray_backend import _probe_grpc

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts, never speaks gRPC
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError, match="did not answer as a Ray head"):
            _probe_grpc(f"127.0.0.1:{listener.getsockname()[1]}", timeout=2)
        assert time.perf_counter() - t0 < 10


def test_the_scheduler_probe_works_inside_a_running_event_loop():
    """Jupyter and async programs call in from a running loop; the probe must not need
    one of its own in that thread."""
    import asyncio

    import distributed
    from tilegraph.cluster.dask_backend import _probe_scheduler

    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc:

        async def main():
            _probe_scheduler(lc.scheduler_address, None, timeout=10)
            return True

        assert asyncio.run(main())
        with pytest.raises(OSError):  # nothing listens there
            _probe_scheduler(f"tcp://127.0.0.1:{free_port()}", None, timeout=1)


def test_a_store_that_is_not_writable(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        # root passes every access test (CI runs as root): answer for this folder what
        # its mode bits tell any other user, so the refusal path still runs here
        access = os.access
        monkeypatch.setattr(
            os, "access",
            lambda p, mode: (os.stat(p).st_mode & 0o222 != 0 or not mode & os.W_OK)
            if os.fspath(p) == str(locked) else access(p, mode),
        )  # fmt: skip
    try:
        rc, _, err = _main("run", "bilevel", "--cluster", "sync", "--store", str(locked / "r"))
        _one_line(rc, err, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "scheme", ["tcp://127.0.0.1:{}", "ray:127.0.0.1:{}", "ray://127.0.0.1:{}"]
)
@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_nothing_listening_fails_fast_naming_the_address(tmp_path, scheme, dry):
    address = scheme.format(free_port())
    t0 = time.perf_counter()
    argv = ["run", "bilevel", "--cluster", address, "--store", str(tmp_path / "r"), *dry]
    rc, _, err = _main(*argv)
    _one_line(rc, err, address.split("//")[-1].split(":", 1)[-1] if "//" in address else address)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "r").exists()


def test_run_ids_and_pipelines_are_checked(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    rc, _, err = _main("show", OLD_RUN + "\n", "--store", str(store))
    _one_line(rc, err, "not a valid run id")
    rc, _, err = _main("run", "bilevel", "--resume", OLD_RUN, "--store", str(store))
    _one_line(rc, err, "belongs to pipeline 'domain-split'")


def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(OLD_STORE, store)
    proc = subprocess.run(
        f"{sys.executable} -m tilegraph.pipelines.cli show {OLD_RUN} --store {store} | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.stdout.startswith("run ")
    assert proc.stderr == ""


def test_stored_text_is_printed_escaped(tmp_path):
    root = storage.Root(tmp_path / "runs")
    run = root.create("bilevel", config={"n": 1}, backend="sync")
    run.mark_failed("boom \x1b[2J\x1b]0;owned\x07 done\nsecond line")
    rc, out, _ = _main("show", run.run_id, "--store", str(tmp_path / "runs"))
    assert rc == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "second line" in out.splitlines()[2]


def test_side_files_follow_the_umask(tmp_path):
    root = storage.Root(tmp_path / "runs")
    run = root.create("bilevel", config={"n": 1}, backend="sync")
    run.write_bytes("summary.png", b"\x89PNG")
    try:
        raise RuntimeError("for the traceback file")
    except RuntimeError as exc:
        run.mark_failed(exc)
    base = tmp_path / "runs" / "bilevel" / run.run_id
    zarr_mode = stat.S_IMODE((base / "zarr.json").stat().st_mode)
    for name in ("summary.png", "traceback.txt"):
        assert stat.S_IMODE((base / name).stat().st_mode) == zarr_mode, name


def _exits(config, ctx):
    sys.exit(3)


def test_a_run_that_calls_sys_exit_is_marked_failed(tmp_path):
    from pydantic import BaseModel

    class Empty(BaseModel):
        pass

    pipeline = Pipeline(name="exits", description="calls sys.exit", config=Empty, run=_exits)
    run = storage.Root(tmp_path / "runs").create("exits", config={}, backend="sync")
    from tilegraph import cluster

    with cluster.connect("sync") as ex, pytest.raises(SystemExit):
        execute(pipeline, Empty(), run, ex)
    assert run.status == "failed" and run.error.startswith("SystemExit")


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    store = tmp_path / "runs"
    args = ["run", "bilevel", "--set=max_iter=800", "--set=tol=1e-12", "--cluster", "sync"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilegraph.pipelines.cli", *args, "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    root = storage.Root(store)
    deadline = time.time() + 120
    while time.time() < deadline and not root.runs():
        time.sleep(0.2)
    time.sleep(3.0)  # into the iterations
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    (line,) = err.strip().splitlines()
    (info,) = root.runs()
    assert line == (
        f"error: run {info['run_id']} interrupted; continue it with --resume {info['run_id']}"
    )
    run = root.open(info["run_id"])
    assert run.status == "failed" and "interrupted (SIGTERM)" in run.error
    again = tilegraph("run", "bilevel", "--resume", info["run_id"], "--cluster", "sync",
                      "--store", str(store), "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert last_json(again.stdout)["status"] == "complete"


def test_the_cluster_spec_is_recorded_normalised(tmp_path):
    store = tmp_path / "runs"
    rc, out, err = _main("run", "bilevel", "--set=max_iter=3", "--set=tol=null",
                         "--cluster", " SYNC ", "--store", str(store), "--json")  # fmt: skip
    assert rc == 0, err
    run = storage.Root(store).open(json.loads(out.strip().splitlines()[-1])["run_id"])
    assert run.provenance["backend"] == "sync"


def test_a_presets_field_the_new_kind_ignores_is_named():
    """Kinds of one pipeline can share fields (domain-split's alpha and beta), so a
    preset's fields carry over when the kind changes; one the new kind would ignore is
    refused by name instead of dropped silently."""
    from tilegraph.pipelines.config import ConfigError, build_config
    from tilegraph.pipelines.registry import get_pipeline

    bilevel, ttn = get_pipeline("bilevel"), get_pipeline("ttn")
    sets = ["problem.kind=dataset", "problem.dataset=blocks.zarr"]
    with pytest.raises(ConfigError, match="rho applies|m applies to kind=quadratic or digits"):
        build_config(bilevel, "digits", sets=sets)  # the preset's m=10: the data has its own
    with pytest.raises(ConfigError, match="omega applies to kind=lr-ising, not kind=tfi"):
        build_config(ttn, "quick", sets=["model.omega=2"])
    assert build_config(ttn, "paper", sets=["model.kind=tfi"]).model.kind == "tfi"


def test_a_field_the_user_sets_for_another_kind_is_refused():
    """domain-split and picard: a field the user sets (``--set``, ``--config``) that the
    chosen kind or model ignores is refused by name; a preset's own fields carry over
    silently (``quick``'s beta with ``problem.kind=variable``), defaults pass (a dumped
    config), and a sweep grid over the kind may set such a field for some points."""
    from tilegraph.pipelines.config import ConfigError, build_config
    from tilegraph.pipelines.registry import get_pipeline
    from tilegraph.pipelines.sweep import plan_sweep

    ds, picard = get_pipeline("domain-split"), get_pipeline("picard")
    kind = "applies to problem.kind"
    cases = [
        (ds, "quick", ["problem.eps=0.5"],
         f"'problem.eps': {kind}=boundary-layer, not problem.kind=constant"),
        (ds, "quick", ["problem.kind=variable", "problem.alpha=[2,2]"],
         f"'problem.alpha': {kind}=constant, not problem.kind=variable"),
        (ds, "quick", ["problem.kind=variable", "problem.beta=[1,1]"],
         f"'problem.beta': {kind}=constant or boundary-layer"),
        (picard, "digits", ["gmm.dim=8"], "'gmm.dim': applies to model=gmm, not model=digits"),
        (picard, "quick", ["digits.epochs=3"],
         "'digits.epochs': applies to model=digits, not model=gmm"),
    ]  # fmt: skip
    for pipe, preset, sets, needle in cases:
        with pytest.raises(ConfigError) as info:
            build_config(pipe, preset, sets=sets)
        assert needle in str(info.value), str(info.value)
    assert build_config(ds, "quick", sets=["problem.kind=variable"]).problem.beta == [2.0, 1.0]
    assert build_config(ds, "quick", sets=["problem.kind=boundary-layer", "problem.eps=0.5"])
    assert build_config(picard, "digits", sets=["digits.epochs=3"]).digits.epochs == 3
    dumped = build_config(picard, "digits").model_dump(mode="json")
    assert build_config(picard, "digits", config_file=dumped).model == "digits"
    with pytest.raises(ConfigError, match="'gmm.dim': applies to model=gmm"):
        build_config(picard, "digits", config_file={"gmm": {"dim": 8}})
    plan = plan_sweep(
        ds, ["problem.kind=constant,boundary-layer"], "quick", sets=["problem.eps=0.5"]
    )
    assert [p.config.problem.eps for p in plan.points] == [0.5, 0.5]
