"""Every registered pipeline gives the same bits on ``sync`` and ``threads:2`` for every
metric that measures the answer (not time, workers or effort)."""

import math

import numpy as np
import pytest
import tilegraph

#: Small settings per pipeline (runs of a few seconds); other pipelines run their quick
#: preset as it is.
SMALL = {
    "domain-split": {"n_fine": 60, "n_coarse": 5},
    "bilevel": {"max_iter": 60, "tol": None},
    "ttn": {},
    "picard": {"n_samples": 8, "batch_size": 4, "steps": 200, "train_steps": 200},
}
_UNSTABLE = ("_s", "worker_restarts", "workers", "passes", "speedup", "s_per_iter", "wall")


def _answer(metrics: dict) -> dict:
    return {
        k: v
        for k, v in metrics.items()
        if not (k.endswith(_UNSTABLE) or any(u in k for u in _UNSTABLE[4:]))
    }


@pytest.mark.parametrize("name", sorted(tilegraph.available()))
def test_threads_give_the_bits_of_sync(tmp_path, name):
    runs = [
        tilegraph.run(name, sets=SMALL.get(name, {}), cluster=spec, store=tmp_path / spec)
        for spec in ("sync", "threads:2")
    ]
    a, b = (_answer(r.metrics) for r in runs)
    assert a.keys() == b.keys() and a
    for key in a:
        same = a[key] == b[key] or (
            isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key])
        )
        assert same, f"{name}: {key} differs: {a[key]!r} vs {b[key]!r}"
    compared = 0
    for group in ("result", "history"):
        try:
            ra, rb = (r.open_dataset(group) for r in runs)
        except FileNotFoundError:  # zarr's GroupNotFoundError: the pipeline has none
            continue
        for var in ra.data_vars:
            if not (var.endswith(_UNSTABLE) or any(u in var for u in _UNSTABLE[4:])):
                np.testing.assert_array_equal(ra[var].values, rb[var].values, err_msg=var)
                compared += 1
    assert compared
