"""Batch schedulers through dask-jobqueue: the job scripts a profile produces for SLURM,
PBS, SGE and LSF (``--dry-run``), bad profiles, and the real code path up to the
submission command (``sbatch`` here is a stand-in script: no queue exists on this
machine)."""

import os
import stat
import textwrap
import time

import dask
import pytest
import yaml
from helpers import assert_same_answer
from tilegraph import cluster
from tilegraph.cluster.jobqueue import ProfileError, job_script, load_profile
from tilegraph.pipelines import cli

PROFILE = {
    "queue": "compute",
    "account": "proj123",
    "walltime": "02:00:00",
    "cores": 8,
    "memory": "32GiB",
    "processes": 2,
    "job_script_prologue": ["module load python/3.11", "source ~/venv/bin/activate"],
}
EXTRA = {
    "slurm": "--gres=gpu:1",
    "pbs": "-l place=scatter",
    "sge": "-pe smp 8",
    "lsf": '-R "span[hosts=1]"',
}
#: What each scheduler's script must say for PROFILE (the directives, in its syntax).
EXPECTED = {
    "slurm": ["#SBATCH -p compute", "#SBATCH -A proj123", "#SBATCH -t 02:00:00",
              "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:1"],
    "pbs": ["#PBS -q compute", "#PBS -A proj123", "#PBS -l walltime=02:00:00",
            "ncpus=8", "#PBS -l place=scatter"],
    "sge": ["#$ -q compute", "#$ -P proj123", "#$ -l h_rt=02:00:00", "#$ -pe smp 8"],
    "lsf": ["#BSUB -q compute", '#BSUB -P "proj123"', "#BSUB -W 02:00", "#BSUB -n 8",
            '#BSUB -R "span[hosts=1]"'],
}  # fmt: skip


@pytest.fixture
def profile(tmp_path):
    data = {k: {**PROFILE, "job_extra_directives": [EXTRA[k]]} for k in EXTRA}
    path = tmp_path / "jobqueue.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_dry_run_prints_the_job_script_and_writes_nothing(kind, profile, tmp_path, capsys):
    store = tmp_path / "runs"
    args = ["run", "domain-split", "--cluster", f"{kind}:3", "--cluster-profile", str(profile)]
    assert cli.main([*args, "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{kind} would be asked for 3 job(s) of 2 worker(s)" in out
    assert "6 worker" in out  # the estimate is per worker of 3 jobs x 2 processes
    for line in EXPECTED[kind]:
        assert line in out, f"{line!r} missing from the {kind} script"
    prologue = out.index("module load python/3.11")
    assert prologue < out.index("source ~/venv/bin/activate") < out.index("dask_worker")
    assert "--nworkers 2" in out and "--nthreads 4" in out  # 8 cores, 2 processes
    assert not store.exists()


@pytest.mark.parametrize(
    "kind, given, line",
    [
        ("slurm", "02:00", "#SBATCH -t 02:00:00"),  # Slurm reads a bare 02:00 as 2 minutes
        ("slurm", "1-06:30", "#SBATCH -t 1-06:30:00"),
        ("slurm", "30:00:00", "#SBATCH -t 1-06:00:00"),
        ("pbs", "02:00", "#PBS -l walltime=02:00:00"),
        ("lsf", "1-00:30:00", "#BSUB -W 24:30"),
        ("lsf", "02:00:30", "#BSUB -W 02:01"),  # whole minutes, rounded up (not cut)
    ],
)
def test_walltime_is_hours_and_minutes_for_every_scheduler(tmp_path, kind, given, line):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({kind: {"walltime": given}}))
    script = job_script(kind, path)
    assert line in script.splitlines(), script


def test_sweep_dry_run_and_default_profile_from_the_environment(tmp_path, monkeypatch, capsys):
    path = tmp_path / "site.yaml"
    path.write_text("pbs:\n  queue: short\n  walltime: '1-00:30'\n")
    monkeypatch.setenv("TILEGRAPH_JOBQUEUE_PROFILE", str(path))
    store = tmp_path / "runs"
    args = ["sweep", "domain-split", "--grid", "n_fine=50,100", "--cluster", "pbs"]
    assert cli.main([*args, "--store", str(store), "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    assert "#PBS -q short" in out
    assert "walltime=24:30:00" in out  # PBS takes no days
    assert not store.exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("slurm:\n  walltime: 2h\n", "field 'slurm.walltime': expected [D-]HH:MM[:SS]"),
        ("slurm:\n  memory: lots\n", "field 'slurm.memory': expected a size"),
        ("slurm:\n  cpus: 4\n", "field 'slurm.cpus': unknown field; allowed: queue"),
        ("slurm:\n  cores: 0\n", "field 'slurm.cores'"),
        ("slurmm:\n  cores: 2\n", "unknown section 'slurmm'"),
        ("slurm: [1, 2\n", "not valid YAML"),
        ("slurm:\n  walltime: '0:00'\n", "longer than zero"),
        ("slurm:\n  walltime: '99:99'\n", "minutes and seconds must be below 60"),
        ("slurm:\n  cores: 2\n  processes: 8\n", "section 'slurm': processes (8) must not"),
        (
            "slurm:\n  walltime: '01:00'\n  renew: true\n  renew_margin: '00:40'\n",
            "section 'slurm': renew_margin (00:40) must be at most half the walltime (01:00)",
        ),
        ("slurm:\n  renew_margin: 300\n", "field 'slurm.renew_margin': a bare number"),
        ("slurm: 3\n", "section 'slurm' must be a mapping"),
        ("1: {}\n", "unknown section '1'"),
    ],
)
def test_bad_profile_exits_2_with_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    store = tmp_path / "runs"
    args = ["run", "domain-split", "--cluster", "slurm", "--cluster-profile", str(path)]
    assert cli.main([*args, "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert needle in err
    assert not store.exists()
    with pytest.raises(ProfileError, match="cluster profile"):
        load_profile("slurm", path)


def test_missing_profile_and_non_batch_dry_run(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    args = ["run", "domain-split", "--cluster", "lsf", "--cluster-profile", missing]
    assert cli.main([*args, "--store", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err
    args = ["run", "domain-split", "--cluster", "slurm", "--cluster-profile", str(tmp_path)]
    assert cli.main([*args, "--store", str(tmp_path / "r")]) == 2
    assert "--cluster-profile: a folder, not a YAML file" in capsys.readouterr().err
    with pytest.raises(ProfileError, match="not a batch scheduler"):
        job_script("local:2")


def _stand_in(folder, name, body):
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


#: Per scheduler: its submit command's stand-in (keeps the script as ``submit-ID.sh`` in
#: ``{log}`` and answers as the real one does), the cancel commands' stand-ins (each logs
#: its arguments to ``{log}/cancel``), the directive naming the job, and what the
#: watchdog must have run (``{name}``: the job's name).
_QUEUES = {
    "slurm": ({"sbatch": 'cp "$1" {log}/submit-$$.sh\necho "Submitted batch job $$"'},
              ("scancel",), "#SBATCH -J", ["scancel --name {name}"]),
    "pbs": ({"qsub": 'cp "$1" {log}/submit-$$.sh\necho "$$.pbs-server"',
             "qselect": 'echo "qselect $@" >> {log}/cancel\necho 4242.pbs-server'},
            ("qdel",), "#PBS -N", ["qselect -N {name}", "qdel 4242.pbs-server"]),
    "sge": ({"qsub": 'cp "$1" {log}/submit-$$.sh\n'
                     'echo "Your job $$ (\\"job\\") has been submitted"'},
            ("qdel",), "#$ -N", ["qdel {name}"]),
    "lsf": ({"bsub": 'cat > {log}/submit-$$.sh\n'
                     'echo "Job <$$> is submitted to default queue <normal>."'},
            ("bkill",), "#BSUB -J", ["bkill -J {name} 0"]),
}  # fmt: skip


def _stand_in_queue(tmp_path, kind):
    """The stand-ins of ``kind``'s commands (`_QUEUES`): ``(bin folder, calls folder)``."""
    submit, cancels, _, _ = _QUEUES[kind]
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.mkdir()
    for command, body in submit.items():
        _stand_in(bin_dir, command, body.format(log=log) + "\n")
    for command in cancels:
        _stand_in(bin_dir, command, f'echo "{command} $@" >> {log}/cancel\n')
    return bin_dir, log


def test_submission_path_calls_sbatch_and_cancels_on_timeout(tmp_path, profile, monkeypatch):
    """Everything up to the queue runs for real: dask-jobqueue writes each job script and
    calls ``sbatch`` on it; no worker can join, so ``connect`` gives up after the
    profile's ``wait_timeout`` with a clear error and cancels the jobs it submitted."""
    bin_dir, log = _stand_in_queue(tmp_path, "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    data = yaml.safe_load(profile.read_text())
    data["slurm"]["wait_timeout"] = 4
    profile.write_text(yaml.safe_dump(data))

    with pytest.raises(TimeoutError, match="no Dask worker joined from slurm within 4 s"):
        cluster.connect("slurm:2", profile=str(profile))
    scripts = sorted(log.glob("submit-*.sh"))
    assert len(scripts) == 2
    for script in scripts:
        text = script.read_text()
        for line in EXPECTED["slurm"]:
            assert line in text
        assert "distributed.cli.dask_worker tcp://" in text
    job_ids = sorted(p.stem.removeprefix("submit-") for p in scripts)
    cancelled = sorted(_lines(log / "cancel"))
    assert cancelled == [f"scancel {i}" for i in job_ids]


def test_profile_reads_what_yaml_makes_of_unquoted_values(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  walltime: 12:00:00\n  account: 12345\n")  # YAML: ints
    profile = load_profile("slurm", path)
    assert profile.walltime == "12:00:00" and profile.account == "12345"
    assert "#SBATCH -A 12345" in job_script("slurm", path)


def test_missing_submit_command_fails_at_once(tmp_path, monkeypatch, profile):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(cluster.SpecError, match="'sbatch' is not on PATH"):
        cluster.connect("slurm", profile=str(profile))
    args = ["run", "domain-split", "--cluster", "slurm", "--cluster-profile", str(profile)]
    assert cli.main([*args, "--store", str(tmp_path / "runs")]) == 2
    assert cli.main([*args, "--store", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert not (tmp_path / "runs").exists()


def test_dry_run_leaves_no_log_directory(tmp_path, capsys):
    logs = tmp_path / "logs"
    path = tmp_path / "p.yaml"
    path.write_text(f"slurm:\n  log_directory: {logs}\n")
    assert cli.main(["run", "domain-split", "--cluster", "slurm", "--cluster-profile",
                     str(path), "--store", str(tmp_path / "r"), "--dry-run"]) == 0  # fmt: skip
    assert str(logs) in capsys.readouterr().out
    assert not logs.exists()


def test_a_profile_without_the_schedulers_section_is_an_error(tmp_path, capsys):
    path = tmp_path / "jobqueue.yaml"
    path.write_text(yaml.safe_dump({"slurm": PROFILE}))
    with pytest.raises(ProfileError, match=r"no 'pbs' section \(it has: slurm\)"):
        load_profile("pbs", path)
    store = tmp_path / "runs"
    argv = ["run", "bilevel", "--cluster", "pbs:2", "--cluster-profile", str(path)]
    assert cli.main([*argv, "--store", str(store), "--dry-run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: cluster profile") and "'pbs'" in line
    assert not store.exists()


def test_the_job_script_runs_the_profiles_python(tmp_path):
    path = tmp_path / "jobqueue.yaml"
    path.write_text(yaml.safe_dump({"slurm": {**PROFILE, "python": "/opt/site/bin/python3.11"}}))
    script = job_script("slurm:1", path)
    assert "/opt/site/bin/python3.11 -m distributed.cli.dask_worker" in script


def test_dry_run_without_a_profile_says_which_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TILEGRAPH_JOBQUEUE_PROFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/tilegraph/jobqueue.yaml
    monkeypatch.chdir(tmp_path)  # no ./tilegraph-jobqueue.yaml
    argv = ["run", "bilevel", "--cluster", "slurm:1", "--dry-run", "--store", str(tmp_path / "r")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "# no cluster profile found" in out
    assert "defaults used: queue=None" in out and "walltime=01:00:00" in out
    assert "(this interpreter)" in out


def test_unquoted_hours_and_minutes_and_bare_numbers(tmp_path):
    """YAML 1.1 made `walltime: 12:00` the base-60 number 720, and the job asked for 12
    minutes; it is the text it is now. A bare number is ambiguous (seconds to
    dask-jobqueue, minutes to Slurm): refused."""
    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  walltime: 12:00\n")
    assert "#SBATCH -t 12:00:00" in job_script("slurm", path).splitlines()
    path.write_text("slurm:\n  walltime: 90\n")
    with pytest.raises(ProfileError, match=r"walltime': a bare number \(90\) is ambiguous"):
        load_profile("slurm", path)
    path.write_text("slurm:\n  memory: 64\n")
    with pytest.raises(ProfileError, match="expected a size such as 16GiB or 4000MB, got 64"):
        load_profile("slurm", path)


def test_workers_per_job_default_to_cores_and_the_script_says_what_the_dry_run_does(
    tmp_path, capsys
):
    """Without `processes` dask-jobqueue starts about sqrt(cores) workers while the dry
    run counted one: now one single-threaded worker per core (as local:N), in both."""
    path = tmp_path / "p.yaml"
    extra = ["--resources", "GPU=1"]
    path.write_text(yaml.safe_dump({"slurm": {"cores": 4, "memory": "16GiB",
                                              "worker_extra_args": extra}}))  # fmt: skip
    argv = ["run", "domain-split", "--cluster", "slurm:2", "--cluster-profile", str(path)]
    assert cli.main([*argv, "--store", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "slurm would be asked for 2 job(s) of 4 worker(s)" in out and "8 worker(s)" in out
    assert "--nthreads 1" in out and "--nworkers 4" in out and "--memory-limit 4.00GiB" in out
    assert "--resources GPU=1" in out
    # the tuning tilegraph's local workers get (the profiler off), before the workers
    assert out.index("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False") < out.index("dask_worker")


def test_a_renewing_profile_s_dry_run_says_when_its_workers_retire(tmp_path, capsys):
    """renew: a fresh job renew_margin before the walltime; the workers retire by
    themselves a quarter of the margin before it at the latest."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {"walltime": "02:00:00", "renew": True}}))
    argv = ["run", "domain-split", "--cluster", "slurm:2", "--cluster-profile", str(path)]
    assert cli.main([*argv, "--store", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "a fresh job is submitted 01:55:00 into each job (walltime 02:00:00)" in out
    assert "at the latest 01:58:45 into it" in out
    assert "--lifetime 7125s" in out and "--lifetime-stagger" not in out
    path.write_text(yaml.safe_dump({"slurm": {"walltime": "02:00:00"}}))
    assert cli.main([*argv, "--store", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "--lifetime" not in capsys.readouterr().out


def test_sge_asks_for_memory_through_resource_spec_and_the_dry_run_says_so(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"sge": {"cores": 4, "memory": "16GiB"}}))
    argv = ["run", "domain-split", "--cluster", "sge", "--cluster-profile", str(path)]
    assert cli.main([*argv, "--store", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# note: SGE jobs ask for memory only through resource_spec" in out
    spec = {"cores": 4, "memory": "16GiB", "resource_spec": "h_vmem=4G,mem_req=4G",
            "job_extra_directives": ["-pe smp 4"]}  # fmt: skip
    path.write_text(yaml.safe_dump({"sge": spec}))
    assert cli.main([*argv, "--store", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#$ -l h_vmem=4G,mem_req=4G" in out and "#$ -pe smp 4" in out and "note" not in out


def test_the_sites_dask_config_fills_what_the_profile_leaves_out(tmp_path):
    """A site's `jobqueue.slurm` Dask config was replaced by tilegraph's defaults (1 core,
    4G, 1 h); it now fills the fields the profile leaves out (the file still wins)."""
    import dask

    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  memory: 8GiB\n")
    site = {"jobqueue.slurm.cores": 6, "jobqueue.slurm.memory": "60GiB",
            "jobqueue.slurm.walltime": "04:00:00",
            "jobqueue.slurm.account": "site-acct"}  # fmt: skip
    with dask.config.set(site):
        profile = load_profile("slurm", path)
    assert (profile.cores, profile.memory, profile.walltime, profile.account) == (
        6,
        "8GiB",
        "04:00:00",
        "site-acct",
    )
    assert load_profile("slurm", path).cores == 1  # without it: tilegraph's default


def test_a_job_the_scheduler_refuses_fails_at_once_with_its_message(tmp_path, monkeypatch,
                                                                      capsys):  # fmt: skip
    """A bad account: sbatch said so in a logged background traceback (two of them), and
    the run waited the whole wait_timeout to end in an AssertionError traceback."""
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "sbatch", """\
        echo "sbatch: error: invalid account or account/partition combination" >&2
        exit 1
        """)  # fmt: skip
    _stand_in(bin_dir, "scancel", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  account: nope\n  wait_timeout: 120\n")
    store = tmp_path / "runs"
    t0 = time.monotonic()
    argv = ["run", "domain-split", "--cluster", "slurm:1", "--cluster-profile", str(path)]
    assert cli.main([*argv, "--store", str(store)]) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # what it waits for, then one error line
    assert "Traceback" not in err and [ln[:7] for ln in lines] == ["submitt", "error: "], err
    assert err.rstrip().endswith(
        "(slurm refused the job: sbatch: error: invalid account or account/partition combination)"
    ), err
    assert not store.exists()


def test_a_dry_run_checks_each_batch_workers_memory(tmp_path, capsys):
    """The dry run checked only this machine's memory: a run whose workers would each
    need more than the profile's memory per job over its workers was passed, and then
    refused once the jobs had started."""
    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  cores: 4\n  memory: 256MiB\n")
    argv = ["run", "domain-split", "--set", "n_fine=2000", "--set", "n_coarse=20",
            "--set", "direct_reference=false", "--cluster", "slurm:2",
            "--cluster-profile", str(path), "--store", str(tmp_path / "r"),
            "--dry-run"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "in each worker of slurm:2, which can use 64 MiB" in err, err
    path.write_text("slurm:\n  cores: 4\n  memory: 64GiB\n")
    assert cli.main(argv) == 0


def test_reading_a_profile_or_writing_a_job_script_keeps_the_ctrl_c_handler(tmp_path):
    """dask-jobqueue 0.9 replaces the SIGINT handler on import with one calling
    sys.exit(): Ctrl-C while the jobs were awaited ended the run with status 0 and no
    word. Reading profiles no longer imports it, and importing it keeps the handler."""
    import subprocess
    import sys

    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  cores: 2\n")
    code = (
        "import signal, sys\n"
        "def mine(*a): pass\n"
        "signal.signal(signal.SIGINT, mine)\n"
        "from tilegraph.cluster.jobqueue import job_script, load_profile\n"
        "load_profile('slurm', sys.argv[1])\n"
        "assert 'dask_jobqueue' not in sys.modules, 'imported to read a profile'\n"
        "job_script('slurm', sys.argv[1])\n"
        "assert 'dask_jobqueue' in sys.modules\n"
        "assert signal.getsignal(signal.SIGINT) is mine, signal.getsignal(signal.SIGINT)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", sorted(_QUEUES))
def test_a_killed_driver_s_jobs_are_cancelled_by_name(tmp_path, kind):
    """SIGKILL gives the driver no chance to cancel its jobs: they waited in the queue,
    then held their nodes for the workers' death timeout. A watchdog next to it cancels
    them by their name, unique per run (a normal close stops the watchdog first), with
    each scheduler's own commands (stand-ins here that log how they were called)."""
    import signal
    import subprocess
    import sys

    _, _, directive, expected = _QUEUES[kind]
    bin_dir, log = _stand_in_queue(tmp_path, kind)
    path = tmp_path / "p.yaml"
    path.write_text(f"{kind}:\n  cores: 2\n  wait_timeout: 120\n")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilegraph.pipelines.cli", "run", "domain-split", "--cluster",
         f"{kind}:1", "--cluster-profile", str(path), "--store", str(tmp_path / "runs")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert f"submitted 1 {kind} job(s)" in proc.stderr.readline()
        deadline = time.time() + 60
        while not list(log.glob("submit-*.sh")) and time.time() < deadline:
            time.sleep(0.2)
        (script,) = log.glob("submit-*.sh")
        lines = script.read_text().splitlines()
        name = next(ln.split()[-1] for ln in lines if ln.startswith(directive + " "))
        assert name.startswith("tilegraph-") and len(name) == len("tilegraph-") + 8
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        want = [line.format(name=name) for line in expected]
        while len(_lines(log / "cancel")) < len(want) and time.time() < deadline:
            time.sleep(0.2)
        assert _lines(log / "cancel") == want
    finally:
        if proc.poll() is None:
            proc.kill()


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _local_slurm(tmp_path):
    """A Slurm on this machine: ``sbatch`` runs the job script in the background in a
    session of its own (its id the job's), ``scancel ID…`` and ``scancel --name NAME``
    end those sessions. ``(bin folder, jobs folder)``; each job's output in ``ID.out``."""
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    _stand_in(bin_dir, "sbatch", f"""\
        name=$(sed -n 's/^#SBATCH -J //p' "$1")
        script=$(mktemp {jobs}/job-XXXXXX)  # the caller deletes "$1" when we return
        cp "$1" "$script"
        setsid bash "$script" > "$script.out" 2>&1 < /dev/null &
        mv "$script.out" {jobs}/$!.out
        echo "$! $name" >> {jobs}/submitted
        echo "Submitted batch job $!"
        """)  # fmt: skip
    _stand_in(bin_dir, "scancel", f"""\
        if [ "$1" = "--name" ]; then
            set -- $(awk -v n="$2" '$2 == n {{print $1}}' {jobs}/submitted)
        fi
        for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null; done
        true
        """)  # fmt: skip
    return bin_dir, jobs


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_run_on_batch_jobs_gives_the_answer_of_sync(tmp_path, monkeypatch):
    """The job scripts run (here, on this machine): their workers join, take the halos
    of domain-split's blocks from each other, and the run gives the bits of ``sync``."""
    import tilegraph

    bin_dir, jobs = _local_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {"cores": 1, "memory": "2GiB", "wait_timeout": 60}}))
    sets = tilegraph.get_pipeline("domain-split").checks.small
    ref = tilegraph.run("domain-split", sets=sets, cluster="sync", store=tmp_path / "a")
    run = tilegraph.run("domain-split", sets=sets, cluster="slurm:2",
                        cluster_profile=str(path), store=tmp_path / "b")  # fmt: skip
    assert assert_same_answer(run, ref, ["result"]) > 0
    assert len((jobs / "submitted").read_text().splitlines()) == 2


@pytest.fixture(scope="module")
def long_bilevel(tmp_path_factory):
    """``(sets, run on sync)`` of a bilevel run long enough to outlast a short walltime
    (700 iterations, ~13 s here, ~25 s on a slurm worker): the reference of the renew tests."""
    import tilegraph

    sets = {**tilegraph.get_pipeline("bilevel").checks.long, "max_iter": 700}
    store = tmp_path_factory.mktemp("sync")
    return sets, tilegraph.run("bilevel", sets=sets, cluster="sync", store=store)


@pytest.mark.slow
def test_a_run_through_renewed_jobs_gives_the_answer_of_sync(tmp_path, monkeypatch, long_bilevel):
    """``renew: true``: a fresh job is submitted while the one job of two workers still
    works, and the old one's workers hand their results to the fresh one's and retire,
    in the middle of a run longer than the walltime, which gives the bits of ``sync``
    (no data lost: no continuing from a checkpoint). Jobs really run here (the stand-in
    queue enforces no walltime: the workers' ``--lifetime`` would end them)."""
    import tilegraph

    bin_dir, jobs = _local_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {
        "cores": 2, "processes": 2, "memory": "2GiB", "walltime": "00:00:24", "renew": True,
        "renew_margin": "00:00:12", "wait_timeout": 60,
    }}))  # fmt: skip
    name = "bilevel"
    sets, ref = long_bilevel
    run = tilegraph.run(name, sets=sets, cluster="slurm:1",
                        cluster_profile=str(path), store=tmp_path / "b")  # fmt: skip
    assert assert_same_answer(run, ref, ["result", "history"]) > 0
    ids = [int(ln.split()[0]) for ln in (jobs / "submitted").read_text().splitlines()]
    assert len(ids) > 1, "no job was replaced"
    assert run.restored == [], run.restored  # never continued from a checkpoint
    # the replaced jobs' workers left as renewed (by the renewer, or by their --lifetime
    # where the fresh job joined late under load; a slow run renews its fresh job too),
    # and none was counted as lost
    renewed = run.metrics.get("renewed_workers", 0)
    assert 2 <= renewed <= 2 * (len(ids) - 1), run.metrics
    assert "worker_restarts" not in run.metrics, run.metrics
    assert "--lifetime 21s" in job_script("slurm:1", path)
    deadline = time.time() + 30  # the run's end cancels the jobs still running
    while any(_alive(i) for i in ids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(i) for i in ids), [(i, (jobs / f"{i}.out").read_text()) for i in ids]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_job_lost_between_two_checks_is_replaced(tmp_path, monkeypatch, processes):
    """``renew: true``: a job whose workers joined and were all lost between two of the
    renewer's checks gets a fresh job at the next check (a job never seen with a worker
    counted as still queued: the run waited ``wait_timeout`` for none and failed, CI
    2026-12-07). With one worker per job Dask also closes the job itself; with two it
    does not (its workers are ``JOB-0`` and ``JOB-1``)."""
    import signal

    import distributed  # noqa: F401 (its config first: leaving `set` restores the rest)
    from tilegraph.cluster import renew

    bin_dir, jobs = _local_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(renew, "CHECK_S", 3600.0)  # no checks but the one made here
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {
        "cores": processes, "processes": processes, "memory": "2GiB",
        "walltime": "01:00:00", "renew": True, "wait_timeout": 60,
    }}))  # fmt: skip
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        ex = cluster.connect("slurm:1", profile=str(path))
        try:
            jobqueue = ex._cluster
            deadline = time.monotonic() + 60
            while ex.n_workers < processes and time.monotonic() < deadline:
                time.sleep(0.1)
            (first,) = jobqueue.worker_spec
            os.killpg(int((jobs / "submitted").read_text().split()[0]), signal.SIGKILL)
            while ex.n_workers and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # lost-worker-timeout after the last one left
            jobqueue.sync(ex._renewer._check)
            assert first not in jobqueue.worker_spec and len(jobqueue.worker_spec) == 1
            assert len((jobs / "submitted").read_text().splitlines()) == 2
            assert ex.wait_for_workers(60)
        finally:
            ex.close()


@pytest.mark.slow
def test_a_renewing_run_replaces_a_job_lost_early(tmp_path, monkeypatch, long_bilevel):
    """``renew: true``, a job killed long before its walltime (its node lost): a fresh
    job is submitted at once and the run continues on it from a checkpoint, with the
    bits of ``sync``."""
    import signal
    import threading

    import distributed  # noqa: F401 (its config first: leaving `set` restores the rest)
    import tilegraph

    bin_dir, jobs = _local_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {
        "cores": 1, "memory": "2GiB", "walltime": "01:00:00", "renew": True,
        "wait_timeout": 60,
    }}))  # fmt: skip
    name = "bilevel"
    sets, ref = long_bilevel
    store = tmp_path / "b"

    def kill_the_first_job_after_a_checkpoint():
        deadline = time.time() + 120
        while time.time() < deadline and not list(store.glob(f"{name}/*/checkpoints/*")):
            time.sleep(0.2)
        first = int((jobs / "submitted").read_text().split()[0])
        os.killpg(first, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_first_job_after_a_checkpoint, daemon=True)
    killer.start()
    # a job none of whose workers is in for this long is lost (15 s by default)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        run = tilegraph.run(name, sets=sets, cluster="slurm:1", cluster_profile=str(path),
                            store=store, retries=1)  # fmt: skip
    killer.join()
    assert assert_same_answer(run, ref, ["result", "history"]) > 0
    assert len((jobs / "submitted").read_text().splitlines()) == 2
    assert run.restored and run.restored[-1]["checkpoint"] > 0, run.restored


@pytest.mark.parametrize(
    "name, visible, gpus, device",
    [("SLURMCluster-0-0", None, 2, "0"), ("SLURMCluster-3-1", None, 2, "1"),
     ("SLURMCluster-0-1", "5,7", 2, "7"), ("SLURMCluster-2", "GPU-ab12", 1, "GPU-ab12"),
     ("SLURMCluster-1-3", "4,5,6,7", 4, "7")],
)  # fmt: skip
def test_each_worker_of_a_job_gets_the_gpu_at_its_place(name, visible, gpus, device):
    from tilegraph.cluster.gpu_pin import device_for

    assert device_for(name, visible, gpus) == device


def test_a_job_given_fewer_gpus_than_workers_is_refused_not_shared():
    from tilegraph.cluster.gpu_pin import device_for

    with pytest.raises(RuntimeError, match=r"1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=3\) for gpus=4"):
        device_for("SLURMCluster-0-2", "3", 4)


def test_gpus_replace_the_sites_worker_count(tmp_path, monkeypatch):
    """A site's Dask config with processes: 4 does not clash with a profile's gpus: 2."""
    path = tmp_path / "p.yaml"
    path.write_text("slurm:\n  cores: 8\n  gpus: 2\n")
    with dask.config.set({"jobqueue.slurm.processes": 4, "jobqueue.slurm.cores": 8}):
        assert load_profile("slurm", path).workers_per_job == 2
        path.write_text("slurm:\n  cores: 8\n")
        assert load_profile("slurm", path).workers_per_job == 4
    path.write_text("slurm:\n  cores: 8\n  gpus: 2\n  worker_extra_args: ['--no-nanny']\n")
    with pytest.raises(ProfileError, match="leave --no-nanny out of worker_extra_args"):
        load_profile("slurm", path)


@pytest.mark.slow
def test_a_gpu_job_pins_one_worker_to_each_of_its_gpus(tmp_path, monkeypatch, capsys):
    """``gpus: 2``: the job starts two workers, each told it has one GPU and seeing only
    its own of the job's (the ones the queue gave it: CUDA_VISIBLE_DEVICES=5,7 here);
    without gpus every worker would see both and use the first."""
    bin_dir, jobs = _local_slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"slurm": {
        "cores": 2, "memory": "2GiB", "gpus": 2, "wait_timeout": 60,
        "job_extra_directives": ["--gres=gpu:2"],
        "job_script_prologue": ["export CUDA_VISIBLE_DEVICES=5,7"],  # as Slurm sets it
    }}))  # fmt: skip
    with cluster.connect("slurm:1", profile=str(path)) as ex:
        deadline = time.monotonic() + 60
        while ex.n_workers < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        seen = ex.client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
        assert sorted(seen.values()) == ["5", "7"] and ex.n_gpus == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("slurm:\n  cores: 4\n  gpus: 2\n  processes: 4\n")
    argv = ["run", "picard", "--cluster", "slurm", "--cluster-profile", str(bad), "--dry-run"]
    assert cli.main([*argv, "--store", str(tmp_path / "r")]) == 2
    assert "section 'slurm': processes (4) must equal gpus (2)" in capsys.readouterr().err
