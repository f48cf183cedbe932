"""``tilegraph.run`` from Python: an argument it cannot take is one exception naming it,
before anything is written; ``sets`` mappings are Python values; the storage API's own
guards. Also the package docstrings' examples, run as doctests."""

import doctest
import os

import numpy as np
import pytest
import tilegraph
from tilegraph import cluster, storage
from tilegraph.pipelines.config import ConfigError
from tilegraph.pipelines.launch import UsageError

QUICK = {"preset": "quick", "cluster": "sync"}


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"retries": None}, TypeError, "retries: a whole number >= 0, not None"),
        ({"retries": "2"}, TypeError, "retries: a whole number >= 0, not '2'"),
        ({"retries": True}, TypeError, "retries"),
        ({"retries": -1}, UsageError, "retries: a whole number >= 0, not -1"),
        ({"store": None}, TypeError, "store: a run store's path or URL"),
        ({"store": 5}, TypeError, "store: a run store's path or URL"),
        ({"store": ""}, TypeError, "store: a run store's path or URL"),
        ({"sets": [5]}, TypeError, "sets: 'key=value' strings, not 5 (int)"),
        ({"sets": 5}, TypeError, "sets: a list of 'key=value' strings or a mapping, not int"),
        ({"sets": {"n_fine": object()}}, TypeError, "sets['n_fine']: a JSON-able value"),
        ({"config": 5}, TypeError, "config: a YAML file's path or a mapping of fields"),
        ({"cluster": 2}, TypeError, "cluster: a cluster spec ('sync', 'local:2', ...) or"),
        ({"preset": ["quick"]}, TypeError, "preset: a preset's name (str) or None"),
        ({"preset": ""}, TypeError, "preset: a preset's name (str) or None, not ''"),
        ({"resume": ""}, TypeError, "resume: a run id (str) or None, not ''"),
        ({"trust_store": "no"}, TypeError, "trust_store: True or False, not 'no'"),
        ({"trust_store": True}, UsageError, "trust_store: only with resume"),
        ({"progress": "yes"}, TypeError, "progress: True, False, None or a callable"),
    ],
)
def test_an_argument_run_cannot_take_is_named(tmp_path, monkeypatch, kwargs, error, needle):
    """Before: a bad ``retries`` hid the pipeline's error and left the run ``running``;
    ``store=None`` made a folder ``None``; ``sets="n_fine=50"`` was split into letters."""
    monkeypatch.chdir(tmp_path)
    args = {**QUICK, "store": str(tmp_path / "runs"), **kwargs}
    with pytest.raises(error, match=None) as info:
        tilegraph.run("domain-split", **args)
    assert needle in str(info.value), str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_name_that_is_not_a_string_is_named(tmp_path):
    with pytest.raises(TypeError, match="name: a pipeline's name"):
        tilegraph.run(["domain-split"], cluster="sync", store=str(tmp_path))


def test_sets_as_one_string_a_spec_and_python_values(tmp_path):
    """One string is one override; a Spec is a cluster; a mapping's values are Python
    values: NumPy numbers and arrays, and strings kept whole (YAML would cut a path at
    its '#')."""
    store = str(tmp_path / "runs")
    run = tilegraph.run("domain-split", **QUICK, store=store, sets="n_fine=50")
    assert run.status == "complete" and run.config["n_fine"] == 50
    sets = {"n_fine": np.int64(60), "problem.beta": np.array([1.0, 0.5]), "n_coarse": "auto"}
    run = tilegraph.run("domain-split", preset="quick", cluster=cluster.parse_spec("sync"),
                        store=store, sets=sets)  # fmt: skip
    assert run.config["n_fine"] == 60 and run.config["problem"]["beta"] == [1.0, 0.5]
    with pytest.raises(ValueError, match=r"data #2\.zarr"):  # the whole path, not "data "
        tilegraph.run("domain-split", **QUICK, store=store,
                      sets={"problem.kind": "dataset",
                            "problem.dataset": str(tmp_path / "data #2.zarr")})  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"cluster": "bogus:2"}, "cluster: invalid cluster spec 'bogus:2'"),
        ({"preset": "nope"}, "preset: unknown preset 'nope'"),
        ({"config": "/nonexistent.yaml"}, "config: no such file"),
        ({"config": "/no/a--config.yaml"}, "config: no such file '/no/a--config.yaml'"),
        ({"cluster_profile": "p.yaml"}, "cluster_profile: used only by batch schedulers"),
        ({"resume": "r-none", "preset": None}, "resume: no run 'r-none'"),
        ({"resume": "r-none"}, "stored config; drop preset, config and sets"),
        ({"store": "memory://tg-api-x", "cluster": "local:2"}, "processes of cluster local:2"),
    ],
)
def test_bad_input_is_told_in_the_names_of_the_arguments(tmp_path, kwargs, needle):
    """The checks are the command line's: their messages named its flags (`--set`,
    `--cluster-profile`), which a Python caller never typed. Commands in backticks stay."""
    with pytest.raises(ConfigError) as info:
        tilegraph.run("domain-split", **{**QUICK, "store": str(tmp_path / "runs"), **kwargs})
    message = str(info.value)
    assert needle in message, message
    assert "--" not in message.replace("`tilegraph runs --store", "").replace("a--c", ""), message


def test_an_open_process_executor_cannot_reach_a_memory_store():
    """As for a spec: said before anything is written (the run failed mid-way)."""

    with cluster.connect("sync") as sync:

        class Processes(type(sync)):  # says it is Dask's: no cluster started for the test
            backend = "dask"

        url = "memory://tg-api-unreachable"
        with Processes(sync._spec) as ex:
            with pytest.raises(UsageError, match="a memory:// store lives inside this process"):
                tilegraph.run("domain-split", **{**QUICK, "cluster": ex}, store=url)
    assert storage.Root(url).runs() == []


def test_a_complete_run_is_not_resumed_and_a_missing_dataset_is_named(tmp_path):
    root = storage.Root(str(tmp_path))
    run = tilegraph.run("domain-split", **QUICK, store=root)
    with pytest.raises(ValueError, match=f"run {run.run_id} is complete: nothing to resume"):
        root.resume(run.run_id)
    assert run.status == "complete"
    with pytest.raises(KeyError, match=r"has no dataset 'nope' \(it has: .*result"):
        run.open_dataset("nope")
    assert float(run.open_dataset("result").solution.max()) > 0


@pytest.mark.parametrize("module", [tilegraph.storage, tilegraph.cluster])
def test_the_package_docstring_examples_run(module):
    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 2 and result.failed == 0, result


def test_one_code_path_is_one_path(tmp_path):
    (tmp_path / "tg_one_mod.py").write_text("X = 1\n")
    with cluster.connect("sync", code=str(tmp_path / "tg_one_mod.py")) as ex:
        assert ex.gather([ex.submit(pow, 2, 3)]) == [8]


def test_a_sweep_from_python_takes_python_values_and_skips_what_is_done(tmp_path, executors):
    """`tilegraph.sweep`: the grid as Python values (lists stay lists), the same sweep as
    the command line's (same id: its complete points are not run again), bad input named
    in the function's own terms before anything is written."""
    from helpers import last_json
    from helpers import tilegraph as cli

    store = str(tmp_path / "runs")
    grid = {"n_fine": [20, 40], "problem.beta": [[1.0, 0.5], [2.0, 0.0]]}
    res = tilegraph.sweep("domain-split", grid, sets={"n_coarse": 4},
                          cluster=executors("local:2"), store=store)  # fmt: skip
    assert (res.points, res.complete, res.failed, res.skipped) == (4, 4, 0, 0)
    ds = res.dataset
    assert ds.sizes == {"n_fine": 2, "problem_beta": 2} and ds.iterations.dtype == np.int64
    ref = storage.Root(store).open(str(ds.run_id.values[1, 0]))
    assert ref.config["n_fine"] == 40 and ref.config["problem"]["beta"] == [1.0, 0.5]
    assert float(ds.rel_error_exact.values[1, 0]) == ref.metrics["rel_error_exact"]
    out = cli("sweep", "domain-split", "--grid", "n_fine=20,40", "--grid",
              "problem.beta=[1.0, 0.5],[2.0, 0.0]", "--set", "n_coarse=4", "--cluster", "sync",
              "--store", store, "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert last_json(out.stdout)["sweep_id"] == res.sweep_id and "4 already done" in out.stdout
    fields = {"n_coarse": 4, "problem": {"beta": [1.0, 0.5]}}  # point (20, [1, .5])'s
    again = tilegraph.sweep("domain-split", {"n_fine": [20]}, config=fields,
                            cluster="sync", store=store)  # fmt: skip
    assert again.complete == 1 and again.skipped == 1  # config as fields, as run takes it
    bad = str(tmp_path / "bad")
    with pytest.raises(TypeError, match=r"grid\['n_fine'\]: a list of values, not 20"):
        tilegraph.sweep("domain-split", {"n_fine": 20}, cluster="sync", store=bad)
    with pytest.raises(ConfigError, match=r"^grid point n_fine=21: config field 'n_fine'"):
        tilegraph.sweep("domain-split", {"n_fine": [20, 21]}, sets={"n_coarse": 4},
                        cluster="sync", store=bad)  # fmt: skip
    assert not os.path.exists(bad)
