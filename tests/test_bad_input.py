"""Property-based bad input for every registered pipeline and the CLI arguments: each bad
value exits 2 with ONE ``error:`` line that names what was wrong, and writes no store.

Bad config values are derived from each config model's JSON schema so that they are bad
by construction (a number below its minimum, a word where a number or a choice is
expected, an unknown field), not by asking the validator; the cross-field rules a schema
cannot express are listed per pipeline in ``KNOWN_BAD``.
"""

import contextlib
import io
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tilegraph.pipelines import cli
from tilegraph.pipelines.registry import load_pipelines

PIPELINES = load_pipelines()

#: Strings pydantic reads as booleans (lax mode) or YAML reads as non-strings.
_NOT_WORDS = {
    "y", "n", "yes", "no", "on", "off", "t", "f", "true", "false", "null", "nan", "inf",
}  # fmt: skip

#: Cross-field rules per pipeline: ``(--set items, text the error must contain)``.
KNOWN_BAD = {
    "domain-split": [
        (["d=4"], "d"),
        (["d=1"], "d"),
        (["n_fine=101", "n_coarse=5"], "n_fine"),
        (["n_fine=101", "n_coarse=auto"], "n_coarse=auto needs an n_fine with a divisor"),
        (["n_coarse=autox"], "'n_coarse': must be an integer >= 2 or auto (got 'autox')"),
        (["n_coarse=1.0e+300"], "'n_coarse': must be an integer >= 2 or auto (got 1e+300)"),
        (["n_coarse=auto", "n_fine=1000000000000"], "more than any machine has"),  # at once
        (["problem.beta=[20,0]", "n_fine=64", "n_coarse=2"], "upwind or n_coarse=16"),  # divides
        (["problem.kind=boundary-layer", "problem.eps=0.001", "n_coarse=4"], "Peclet number"),
        (["problem.alpha=[1.0]"], "alpha"),
        # YAML reads these as strings: refused as numbers before the rules across fields
        # see them (those printed NumPy warnings on an infinite box)
        (["problem.domain=[[0,inf],[0,1]]"], "'problem.domain[0][1]': must be a finite number"),
        (["problem.beta=[inf,1]"], "'problem.beta[0]': must be a finite number (got inf)"),
        (["problem.domain=[[-1e308,1e308],[0,1]]"], "'problem.domain': interval [-1e+308"),
        (["problem.domain=[[0,1e300],[0,1]]"], "bounds within ±1e+15"),
        (["problem.domain=[[1e9,1.0000000000001e9],[0,1]]"], "a width of at least 1e-9"),
        (["problem.beta=[1000,0]"], "or n_coarse >= 500 with n_fine a multiple of it, >= 1000"),
        (["solver=stationary", "restart=5"], "'restart': applies to solver=krylov, not solver"),
        (["n_fine=20:40"], "'n_fine': Input should be a valid integer"),  # not 1240 (base 60)
        (["box_solver=lu", "box_corrections=2"], "'box_corrections': applies to box_solver=fro"),
        (
            ["problem.beta=[1e300,0]"],
            "Peclet number 1e+299 > 1 with scheme=central oscillates: use --set scheme=upwind",
        ),
    ],
    "picard": [
        (["window=2000"], "window"),
        (["beta_start=0.02", "beta_end=0.0001"], "beta_end"),
        (["batch_size=1000"], "batch_size"),
        (["diffusers.dtype=float16"], "'diffusers.dtype': applies to model=diffusers"),
        (["clip_sample=true"], "(clip the clean-sample prediction to [-v, v])"),
    ],
    "ttn": [
        (["h=0.03"], "whole number of steps"),
        (["T=1e300"], "T/h = 2e+301 steps (T=1e+300, h=0.05): at most 1e+07"),
        (["r_min=8", "r_max=4"], "r_max"),
        (["d=20", "exact_reference=true"], "exact_reference"),
        (["ramp=31"], "'ramp': must be an integer from 0 to 30 or auto (got 31)"),
        (["ramp=-1"], "'ramp': must be an integer from 0 to 30 or auto (got -1)"),
        (["ramp=fast"], "'ramp': must be an integer from 0 to 30 or auto (got 'fast')"),
        (["h=inf"], "'h': must be a finite number (got inf)"),
        (["h=nan"], "'h': must be a finite number (got nan)"),
        (["h_list=[0.1, 1e400]"], "'h_list[1]': must be a finite number (got 1e400)"),
        (["model.hermitian=false"], "hermitian applies to kind=terms or custom, not kind=tfi"),
        (["tilt=0.7"], "'tilt': applies to start=tilted-neel, not start=up"),
        (["schedule=nodes", "subtree_depth=2"], "'subtree_depth': applies to schedule=subtrees"),
        # every operator of a site is dense: a typo's 10^5 x 10^5 matrices ran out of memory
        (
            [
                "sites=Qudit:100000",
                "exact_reference=false",
                "model.kind=terms",
                'model.terms=[[1.0, "N 0"]]',
            ],
            "'Qudit:100000' has local dimension 100000: at most",
        ),
        (
            [
                "sites=Boson:1000000000",
                "exact_reference=false",
                "model.kind=terms",
                'model.terms=[[1.0, "N 0"]]',
            ],
            "sites: 'Boson:1000000000' has local dimension",
        ),
    ],
    "bilevel": [
        (["blocks_per_iter=60"], "blocks_per_iter"),
        # a step of a method that neither `method` nor `compare` runs
        (["penalty=5"], "'penalty': applies to method=f2sa (or in compare), not method=bsvrb-v2"),
        (["method=sgd", "compare=[f2sa]", "h_floor=0.2"], "'h_floor': applies to method=bsvrb"),
        (["compare=[bsvrb-v2]"], "compare: bsvrb-v2 runs already (method=bsvrb-v2"),
        (["compare=[sgd, f2sa, sgd]"], "compare: sgd runs already"),
        (["problem.kind=digits-ridge", "problem.m=10", "problem.n_train=5000"], "n_train"),
    ],
}


def _words(exclude=()):
    return st.from_regex(r"\A[a-z]{2,8}\Z").filter(
        lambda w: w not in _NOT_WORDS and w not in exclude and isinstance(yaml.safe_load(w), str)
    )


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        return _resolve(root["$defs"][ref.rsplit("/", 1)[1]], root)
    return schema


def _fields(model) -> list[tuple[str, dict, dict]]:
    """``(dotted name, field schema, schema of the object holding it)`` for every field."""
    root = model.model_json_schema()
    out = []

    def walk(obj: dict, prefix: str):
        for name, sub in obj.get("properties", {}).items():
            sub = _resolve(sub, root)
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, f"{prefix}{name}.")
            else:
                out.append((f"{prefix}{name}", sub, obj))

    walk(root, "")
    return out


def _bad_values(schema: dict):
    """A strategy of YAML texts the field's schema rejects, or None if none is certain."""
    branches = schema.get("anyOf", [schema])
    types = {b.get("type") for b in branches}
    if None in types or "object" in types:
        return None  # free-form: nothing is bad by construction
    choices = []
    if "string" not in types:
        choices.append(_words())  # a word where numbers, booleans or lists are expected
    elif all("enum" in b for b in branches if b.get("type") == "string"):
        allowed = {str(v) for b in branches for v in b.get("enum", [])}
        choices.append(_words(allowed))
    nums = [b for b in branches if b.get("type") in ("integer", "number")]
    if len(nums) == len(branches) - ("null" in types):
        for b in nums:
            step = 1 if b["type"] == "integer" else 0.5
            if "minimum" in b:
                lo = b["minimum"]
                choices.append(st.integers(1, 10**6).map(lambda k, lo=lo, s=step: lo - k * s))
            if "exclusiveMinimum" in b:
                lo = b["exclusiveMinimum"]
                choices.append(st.integers(0, 10**6).map(lambda k, lo=lo, s=step: lo - k * s))
            if "maximum" in b:
                hi = b["maximum"]
                choices.append(st.integers(1, 10**6).map(lambda k, hi=hi, s=step: hi + k * s))
            if "exclusiveMaximum" in b:
                hi = b["exclusiveMaximum"]
                choices.append(st.integers(0, 10**6).map(lambda k, hi=hi, s=step: hi + k * s))
        if types <= {"integer", "null"}:
            choices.append(st.integers(-1000, 1000).map(lambda k: k + 0.5))  # not integral
    if "array" in types:
        choices.append(_words().map(lambda w: f"[{w}]"))
    if not choices:
        return None
    return st.one_of(choices).map(lambda v: v if isinstance(v, str) else repr(v))


def _cases():
    """(pipeline, dotted field, bad YAML text) triples, unknown fields included."""
    strategies = []
    for name, pipe in PIPELINES.items():
        for field, schema, holder in _fields(pipe.config):
            bad = _bad_values(schema)
            if bad is not None:
                strategies.append(bad.map(lambda v, n=name, f=field: (n, f, v, f)))
            prefix = field.rpartition(".")[0]
            known = set(holder.get("properties", {}))
            unknown = _words(known).map(
                lambda w, n=name, p=prefix: (n, f"{p}.{w}" if p else w, "1", w)
            )
            strategies.append(unknown)
    return st.one_of(strategies)


def _run_cli(argv: list[str]) -> tuple[int, str, Path]:
    """``tilegraph *argv --store <fresh folder>`` in process: exit status, stderr, store."""
    base = Path(tempfile.mkdtemp(prefix="tg-bad-"))
    store = base / "runs"
    try:
        rc, _, err = run_cli(*argv, "--store", str(store))
        return rc, err, store
    finally:
        existed = store.exists()
        shutil.rmtree(base, ignore_errors=True)
        assert not existed, f"{argv} wrote a store"


def _one_error_line(rc: int, err: str, needle: str | None = None):
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if needle is not None:
        assert needle in lines[0], (needle, lines[0])


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases(), sweep=st.booleans())
def test_bad_config_value_exits_2_naming_the_field(case, sweep):
    name, field, value, needle = case
    if sweep:  # the same value as one point of a sweep grid
        argv = ["sweep", name, "--grid", f"{field}={value}", "--cluster", "sync"]
    else:
        argv = ["run", name, "--set", f"{field}={value}", "--cluster", "sync"]
    rc, err, _ = _run_cli(argv)
    _one_error_line(rc, err, needle)


def _numeric_fields():
    for name, pipe in PIPELINES.items():
        for field, schema, _ in _fields(pipe.config):
            types = {b.get("type") for b in schema.get("anyOf", [schema])}
            if types & {"integer", "number"} and "boolean" not in types:
                yield name, field


def test_a_boolean_for_a_number_exits_2_naming_the_field():
    """pydantic reads ``true`` as 1 in a number field: ``--set window=true`` ran the
    sequential sampler, ``--set h=true`` a step of 1."""
    cases = list(_numeric_fields())
    assert len(cases) > 40 and len({n for n, _ in cases}) == len(PIPELINES)
    for name, field in cases:
        for value in ("true", "false"):
            rc, err, _ = _run_cli(["run", name, "--set", f"{field}={value}", "--cluster", "sync"])
            _one_error_line(rc, err, f"'{field}': must be a number, not a boolean (got {value})")


def test_an_impossible_grid_is_not_suggested():
    rc, err, _ = _run_cli(["run", "domain-split", "--set=problem.beta=[1e300,0]"])
    _one_error_line(rc, err, "oscillates: use --set scheme=upwind")
    assert err.strip().endswith("scheme=upwind"), err  # no 300-digit n_coarse


def test_cross_field_rules_exit_2():
    for name, cases in KNOWN_BAD.items():
        if name not in PIPELINES:
            continue
        for sets, needle in cases:
            argv = ["run", name, "--cluster", "sync"] + [f"--set={s}" for s in sets]
            rc, err, _ = _run_cli(argv)
            _one_error_line(rc, err, needle)


_KINDS = {"sync", "threads", "local", "local-cuda", "tcp", "ray", "slurm", "pbs", "sge", "lsf"}

_bad_cluster = st.one_of(
    _words(_KINDS),
    st.sampled_from(sorted(_KINDS - {"sync", "tcp"})).flatmap(
        lambda k: st.one_of(
            st.integers(-100, 0).map(lambda n, k=k: f"{k}:{n}"),
            _words({"auto"}).map(lambda w, k=k: f"{k}:{w}"),
        )
    ),
    st.integers(1, 9).map(lambda n: f"sync:{n}"),
    _words().map(lambda w: f"{w}://host:1"),
    st.integers(65536, 10**6).map(lambda p: f"tcp://127.0.0.1:{p}"),
)


@st.composite
def _bad_cli(draw):
    """(argv, text the error must contain) for bad command-line arguments."""
    name = draw(st.sampled_from(sorted(PIPELINES)))
    pipe = PIPELINES[name]
    kind = draw(st.sampled_from(["cluster", "preset", "set", "store", "grid", "retries", "name"]))
    if kind == "cluster":
        return ["run", name, "--cluster", draw(_bad_cluster)], "--cluster"
    if kind == "preset":
        return ["run", name, "--preset", draw(_words(set(pipe.presets)))], "--preset"
    if kind == "set":
        item = draw(st.one_of(_words(), _words().map(lambda w: f"={w}")))
        return ["run", name, "--set", item, "--cluster", "sync"], "--set"
    if kind == "store":
        return [
            "run",
            name,
            "--cluster",
            "sync",
            "--store",
            f"{draw(_words())}zz://x/y",
        ], "--store"
    if kind == "grid":
        item = draw(
            st.one_of(
                _words(),
                _words().map(lambda w: f"{w}="),
                _words().map(lambda w: f"{w}=1,1"),
                _words().map(lambda w: f"{w}=1,,2"),
            )
        )
        return ["sweep", name, "--grid", item, "--cluster", "sync"], "--grid"
    if kind == "retries":
        bad = draw(st.one_of(st.integers(-100, -1).map(str), _words()))
        return ["run", name, "--retries", bad, "--cluster", "sync"], "--retries"
    return ["run", draw(_words(set(PIPELINES))), "--cluster", "sync"], "unknown pipeline"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_bad_cli())
def test_bad_command_line_exits_2_with_one_line(case):
    argv, needle = case
    if "--store" in argv:  # the case brings its own (bad) store
        i = argv.index("--store")
        store = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main([*argv, "--store", store])
        _one_error_line(rc, err.getvalue(), needle)
        assert not Path(store).exists()
        return
    rc, err, _ = _run_cli(argv)
    _one_error_line(rc, err, needle)
    assert re.match(r"^error: \S", err)


def _cuda_visible() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_cuda_visible(), reason="a GPU is present: device=cuda is allowed")
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_device_cuda_without_a_gpu_exits_2_before_writing(command):
    for name, pipeline in PIPELINES.items():
        if "device" not in pipeline.config.model_fields:
            continue
        if command == "run":
            argv = ["run", name, "--set", "device=cuda", "--cluster", "sync"]
        else:
            argv = ["sweep", name, "--grid", "device=cpu,cuda", "--cluster", "sync"]
        rc, err, _ = _run_cli(argv)
        _one_error_line(rc, err, "device=cuda")


EXITS = """
import numpy as np


def exits(*args, **kwargs):
    raise SystemExit(7)


class Huge:
    sample_shape = (10**7, 10**5)

    def eps(self, x, t):
        return x


def huge(abar):
    return Huge()
"""

#: pipeline -> (--set items naming the factory ``tg_exits_mod:exits``, the field)
FACTORIES = {
    "ttn": (["model.kind=custom", "model.factory=tg_exits_mod:exits"], "model.factory"),
    "domain-split": (["problem.kind=custom", "problem.factory=tg_exits_mod:exits"],
                     "problem.factory"),
    "picard": (["model=custom", "custom=tg_exits_mod:exits"], "custom"),
    "bilevel": (["problem.kind=custom", "problem.factory=tg_exits_mod:exits"],
                "problem.factory"),
}  # fmt: skip


def test_user_code_that_exits_or_is_too_big_is_one_line(tmp_path, monkeypatch):
    """A factory calling ``sys.exit(7)`` ended the command with status 7 and no message;
    a custom model whose samples no machine holds was told to lower batch_size."""
    (tmp_path / "tg_exits_mod.py").write_text(EXITS)
    monkeypatch.chdir(tmp_path)
    for name, (sets, field) in FACTORIES.items():
        argv = ["run", name, "--cluster", "sync"] + [f"--set={s}" for s in sets]
        rc, err, _ = _run_cli(argv)
        _one_error_line(rc, err, f"'{field}': tg_exits_mod:exits(")
        assert "raised SystemExit: 7" in err, err
    argv = ["run", "picard", "--set=model=custom", "--set=custom=tg_exits_mod:huge"]
    rc, err, _ = _run_cli(argv)
    _one_error_line(rc, err, "'custom': tg_exits_mod:huge(abar) returned a model with sample_")
    assert "one sample at a time would need" in err and "batch_size" not in err, err


def test_a_dry_run_checks_the_report_path(tmp_path):
    report = str(tmp_path / "no" / "x.html")
    argv = ["run", "ttn", "--dry-run", "--cluster", "sync", "--report", report]
    rc, err, _ = _run_cli(argv)
    _one_error_line(rc, err, "--report")
    assert "not a writable file path" in err


def test_an_archive_is_no_store(tmp_path):
    for url in (f"zip://{tmp_path}/x.zip", f"tar://{tmp_path}/x.tar"):
        rc, _, err = run_cli("run", "ttn", "--cluster", "sync", "--store", url)
        _one_error_line(rc, err, "is read-only; a store needs a path or an object store")
    assert not list(tmp_path.iterdir())


def test_a_dotted_key_in_a_config_file_says_to_nest_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model.kind: xxz\n")
    rc, err, _ = _run_cli(["run", "ttn", "--cluster", "sync", "--config", str(path)])
    _one_error_line(rc, err, "dotted keys work in --set only; in a YAML file nest them (model:")


def test_a_step_of_a_compared_method_is_taken():
    """``penalty`` is F2SA's: refused when no method of the run is F2SA, taken when
    ``compare`` runs it."""
    from tilegraph.pipelines.config import build_config

    cfg = build_config(PIPELINES["bilevel"], sets=["penalty=5", "compare=[f2sa]"])
    assert cfg.penalty == 5.0 and cfg.method == "bsvrb-v2"
