"""``--report FILE``: Dask's own performance report, Ray's timeline; ``show`` names it."""

import json
import re

import pytest
from helpers import last_json, tilegraph

SETS = ["--set=max_iter=40", "--set=tol=null"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["local:2", "ray:2"])
def test_report_is_written_and_shown(tmp_path, spec):
    store = tmp_path / "runs"
    report = tmp_path / ("report.html" if spec.startswith("local") else "timeline.json")
    out = tilegraph("run", "bilevel", *SETS, "--cluster", spec, "--store", str(store),
                    "--report", str(report), "--json", timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"performance report: {report}" in out.stdout
    text = report.read_text()
    if spec.startswith("local"):
        assert "<title>Dask Performance Report</title>" in text
        # the report of this run's tasks, not the template of an empty one
        assert "block_tasks" in text  # the bilevel worker function
        assert int(re.search(r"number of tasks: (\d+)", text)[1]) > 0
    else:
        events = json.loads(text)
        assert isinstance(events, list) and any("task" in e.get("cat", "") for e in events)
    run_id = last_json(out.stdout)["run_id"]
    shown = tilegraph("show", run_id, "--store", str(store), "--json")
    assert last_json(shown.stdout)["reports"] == [str(report)]
    shown = tilegraph("show", run_id, "--store", str(store))
    assert f"report    {report}" in shown.stdout


def test_report_needs_a_cluster(tmp_path):
    store = tmp_path / "runs"
    out = tilegraph("run", "bilevel", *SETS, "--cluster", "sync", "--store", str(store),
                    "--report", str(tmp_path / "r.html"))  # fmt: skip
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: --report: a performance report needs a Dask or Ray")
    assert not store.exists() and not (tmp_path / "r.html").exists()
