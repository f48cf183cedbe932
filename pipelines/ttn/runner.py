"""``run`` of the ttn pipeline: integrate, record observables, checkpoint, summarise."""

from __future__ import annotations

import time

import numpy as np
from tilegraph.tasks.ttn import state as st

from ..base import RunContext
from .config import TTNConfig
from .driver import BUGDriver
from .plot import summary_figure
from .reference import ExactSolution

METRICS = (
    "final_error_vs_exact",
    "max_rank",
    "norm_drift",
    "energy_drift",
    "steps",
    "rejected_steps",
    "wall_s",
)


def _state_arrays(state) -> dict:
    return {f"node_{i:03d}": np.asarray(a) for i, a in enumerate(state)}


def _state_from(arrays: dict, n: int) -> list:
    return [np.asarray(arrays[f"node_{i:03d}"], dtype=np.complex128) for i in range(n)]


def _write_state(store, state) -> None:
    """The final TTN as arrays ``state/node_<i>`` (a result: checkpoints do not outlive
    a complete run)."""
    from tilegraph.tasks.devices import to_host

    for name, a in _state_arrays(to_host(state)).items():
        a = np.asarray(a, dtype=np.complex128)
        ref = store.create_array(
            f"state/{name}",
            a.shape,
            a.shape,
            dtype="complex128",
            dimension_names=tuple(f"axis_{k}" for k in range(a.ndim)),
            fill_value=0j,
            attrs={"long_name": "final TTN node tensor (leaf basis or connecting tensor)"},
            overwrite=True,
        )
        ref.write((slice(None),) * a.ndim, a)


def _history_dataset(rows: list[dict], d: int, edges: int):
    import xarray as xr

    def col(k):
        return np.asarray([r[k] for r in rows], dtype=np.float64)

    data = {
        "norm": ("time", col("norm"), {"units": "1", "long_name": "norm of the state"}),
        "energy": ("time", col("energy"), {"units": "energy", "long_name": "<H>"}),
        "magnetization": (
            ("time", "site"),
            np.asarray([r["magnetization"] for r in rows], dtype=np.float64),
            {"units": "1", "long_name": "<Z_site>"},
        ),
        "ranks": (
            ("time", "edge"),
            np.asarray([r["ranks"] for r in rows], dtype=np.int64),
            {"units": "1", "long_name": "bond rank of the edge above node edge+1"},
        ),
        "max_rank": ("time", col("max_rank").astype(np.int64), {"units": "1"}),
        "mean_rank": ("time", col("mean_rank"), {"units": "1"}),
        "rejected": (
            "time",
            col("rejected").astype(np.int64),
            {"units": "1", "long_name": "times the step was redone"},
        ),
        "step_s": ("time", col("step_s"), {"units": "s", "long_name": "wall time of the step"}),
    }
    if "error" in rows[0]:
        data["error"] = (
            "time",
            col("error"),
            {"units": "1", "long_name": "||y - expm(-i t H) y0||"},
        )
    return xr.Dataset(
        data,
        coords={
            "time": ("time", col("time"), {"units": "1/energy"}),
            "step": ("time", col("step").astype(np.int64)),
        },
    )


def _integrate(cfg, ctx, integ, h, exact, name, ckpt_offset, bar, state=None, rows=None):
    """Integrate from the newest state to T with step h, writing dataset ``name``."""
    store = ctx.store
    n_steps = cfg.steps(h)
    integ.load(state)
    step0 = int(rows[-1]["step"]) if rows else 0

    def row(n, rejected, dt):
        obs = integ.observe()
        ranks = integ.ranks()
        r = {
            "step": n,
            "time": n * h,
            "norm": obs["norm"],
            "energy": obs["energy"],
            "magnetization": obs["magnetization"],
            "ranks": ranks,
            "max_rank": max(ranks),
            "mean_rank": float(np.mean(ranks)),
            "rejected": rejected,
            "step_s": dt,
        }
        if exact is not None:
            y = st.to_dense(integ.tree, integ.full_state())
            r["error"] = float(np.linalg.norm(y - exact.at(n * h)))
        return r

    if not rows:
        rows = [row(0, 0, 0.0)]
    # (re)write what is known: on resume this drops rows written after the checkpoint
    ds = _history_dataset(rows, cfg.d, integ.tree.n_nodes - 1)
    store.write_dataset(name, ds, encoding={v: {"chunks": _chunks(ds[v])} for v in ds.variables})
    flushed = len(rows)
    for n in range(step0 + 1, n_steps + 1):
        t0 = time.perf_counter()
        redone = integ.advance(h)
        rows.append(row(n, redone, time.perf_counter() - t0))
        bar.update(1)
        bar.set_postfix_str(f"t={n * h:.3g} max rank {rows[-1]['max_rank']}")
        if n % cfg.checkpoint_every == 0 or n == n_steps:
            new_rows = rows[flushed:]
            store.write_dataset(
                name,
                _history_dataset(new_rows, cfg.d, integ.tree.n_nodes - 1),
                mode="a",
                append_dim="time",
            )
            flushed = len(rows)
            store.save_checkpoint(
                ckpt_offset + n,
                arrays=_state_arrays(integ.full_state()),
                scalars={"dataset": name, "step": n, "h": h},
            )
    return rows


def _chunks(var) -> tuple[int, ...]:
    """Chunks of a history variable: 256 steps along time, whole along other dims."""
    return tuple(256 if dim == "time" else n for dim, n in zip(var.dims, var.shape, strict=True))


def _resume_rows(store, name: str, upto: int) -> list[dict]:
    """History rows of ``name`` up to step ``upto`` (later ones came after the checkpoint)."""
    ds = store.open_dataset(name).load()
    ds = ds.where(ds.step <= upto, drop=True)
    rows = []
    for i in range(ds.sizes["time"]):
        r = {k: ds[k].values[i].tolist() for k in ds.data_vars}
        r["step"] = int(ds.step.values[i])
        r["time"] = float(ds.time.values[i])
        rows.append(r)
    return rows


def run(cfg: TTNConfig, ctx: RunContext) -> dict:
    """Integrate the configured problem; write ``history`` (or, with ``h_list``, one
    history per step size and ``convergence``), checkpoints and ``summary.png``.

    Returns
    -------
    dict
        Headline metrics (see ``METRICS``) plus ``workers``.
    """
    from tilegraph.tasks.devices import deterministic_blas

    # The kernels are many small dense products: multi-threaded BLAS on the driver only
    # oversubscribes the cores the workers use (measured 20x slower on 2 cores).
    with deterministic_blas():
        return _run(cfg, ctx)


def _run(cfg: TTNConfig, ctx: RunContext) -> dict:
    store = ctx.store
    integ = BUGDriver(cfg, ctx.executor)
    psi_state = integ.initial()
    exact = None
    if cfg.exact_reference:
        exact = ExactSolution(integ.op, st.to_dense(integ.tree, psi_state))
    hs = cfg.h_list or [cfg.h]
    names = ["history"] if cfg.h_list is None else [f"history_{k}" for k in range(len(hs))]
    # checkpoint steps are global: study k owns steps [offset_k, offset_k + steps_k]
    offsets = np.cumsum([0] + [cfg.steps(h) + 1 for h in hs]).tolist()

    saved = store.load_checkpoint() if ctx.resume else None
    first, state, rows = 0, psi_state, None
    if saved is not None:
        first = names.index(saved.scalars["dataset"])
        state = _state_from(saved.arrays, integ.tree.n_nodes)
        rows = _resume_rows(store, names[first], saved.scalars["step"])
    total = sum(cfg.steps(h) for h in hs)
    ctx.enter("solve")
    with ctx.progress(total=total, desc=f"ttn {cfg.method} BUG") as bar:
        bar.update(sum(cfg.steps(h) for h in hs[:first]) + (rows[-1]["step"] if rows else 0))
        for k in range(first, len(hs)):
            if k == first and rows:
                state_k, rows_k = state, rows
            else:
                state_k, rows_k = psi_state, []
            rows = _integrate(
                cfg, ctx, integ, hs[k], exact, names[k], offsets[k], bar, state_k, rows_k
            )

    ctx.enter("output")
    _write_state(store, integ.full_state())
    hist = store.open_dataset(names[-1]).load()
    metrics = _metrics(hist, cfg)
    metrics["workers"] = int(ctx.executor.n_workers)
    metrics.update(integ.busy())
    convergence = None
    if cfg.h_list is not None:
        convergence = _convergence(store, names, hs)
        metrics["final_error_vs_exact"] = float(convergence["error"].values[-1])
        slope = np.polyfit(np.log(hs), np.log(convergence["error"].values), 1)[0]
        metrics["convergence_slope"] = float(slope)
    title = (
        f"ttn {cfg.method} BUG, {cfg.model.kind}, d={cfg.d}, {cfg.tree} tree, "
        f"h={cfg.h if cfg.h_list is None else 'study'}, theta={cfg.theta:g}"
    )
    ctx.save_figure(summary_figure(hist, title, convergence))
    return metrics


def _metrics(hist, cfg) -> dict:
    norm = hist["norm"].values
    en = hist["energy"].values
    m = {
        "max_rank": int(hist["max_rank"].values.max()),
        "norm_drift": float(np.max(np.abs(norm - norm[0]))),
        "energy_drift": float(np.max(np.abs(en - en[0]))),
        "steps": int(hist["step"].values[-1]),
        "rejected_steps": int((hist["rejected"].values > 0).sum()),
    }
    if "error" in hist:
        m["final_error_vs_exact"] = float(hist["error"].values[-1])
    return m


def _convergence(store, names, hs):
    import xarray as xr

    err = [float(store.open_dataset(n)["error"].values[-1]) for n in names]
    ds = xr.Dataset(
        {"error": ("h", np.asarray(err), {"units": "1", "long_name": "error at T vs expm"})},
        coords={"h": ("h", np.asarray(hs), {"units": "1/energy"})},
    )
    store.write_dataset("convergence", ds)
    return ds
