"""What a bilevel run stores: each method's history and the main method's result."""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.bilevel.methods import unpack


def write_history(store, name: str, cfg, method: str, hist: dict, known: bool) -> None:
    """One method's history as the xarray dataset ``name``."""
    import xarray as xr

    it = np.asarray(hist["iteration"], dtype=np.int64)
    data = {
        "upper_objective": (
            "iteration",
            np.asarray(hist["upper_objective"]),
            {"units": "1", "long_name": "F(x) with exact lower solutions"},
        ),
        "grad_norm": (
            "iteration",
            np.asarray(hist["grad_norm"]),
            {"units": "1", "long_name": "|grad F(x)| (exact hypergradient)"},
        ),
    }
    if known:
        data["rel_dist"] = (
            "iteration",
            np.asarray(hist["rel_dist"]),
            {"units": "1", "long_name": "|x - x*| / |x*|"},
        )
    attrs = {
        "method": method,
        "problem": cfg.problem.kind,
        "blocks_per_iter": cfg.blocks_per_iter,
        "batch": cfg.batch,
        "s_per_iter": hist.get("s_per_iter"),
        "step_halvings": hist.get("halvings"),  # plateau_epochs: of the last upper step
    }
    iteration = ("iteration", it, {"units": "1", "long_name": "upper iteration"})
    store.write_dataset(name, xr.Dataset(data, coords={"iteration": iteration}, attrs=attrs))


def write_result(store, cfg, problem, x, x_star, ref, slot, val_loss=None) -> None:
    """The main method's final iterate and lower variables as the dataset ``result``
    (with the user's blocks: their names as the ``block`` coordinate and each block's
    validation loss at the final ``x``)."""
    import xarray as xr

    state = ref.read()
    flat = state[np.arange(problem.m), slot]
    y = np.stack([unpack(cfg.method, problem.dim_y, flat[i])["y"] for i in range(problem.m)])
    # the built-in problems are dimensionless; a user's variables have the user's units
    unit = {} if cfg.problem.kind in ("custom", "dataset") else {"units": "1"}
    res = {
        "x": ("x_dim", x, {"long_name": "upper variable at the end", **unit}),
        "y": (
            ("block", "y_dim"),
            y,
            {"long_name": "lower variable at each block's last update", **unit},
        ),
    }
    if x_star is not None:
        res["x_star"] = ("x_dim", np.asarray(x_star), {"long_name": "reference optimum", **unit})
    if val_loss is not None:
        res["val_loss"] = (
            "block",
            np.asarray(val_loss),
            {"long_name": "validation loss f_i at the final x, lower problem solved exactly"},
        )
    attrs = {"method": cfg.method, "problem": cfg.problem.kind}
    names = getattr(problem, "block_names", None)
    block = np.asarray(names, dtype=str) if names is not None else np.arange(problem.m)
    what = {"long_name": "block (lower problem)", **({} if names is not None else {"units": "1"})}
    coords = {"block": ("block", block, what)}
    store.write_dataset("result", xr.Dataset(res, coords=coords, attrs=attrs))
