"""``run`` of the ttn pipeline: integrate, record observables, checkpoint, summarise."""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.ttn import state as st
from tilegraph.tasks.ttn.diagnostics import stationary_start

from ..base import RunContext
from .config import TTNConfig
from .driver import BUGDriver
from .history import (
    history_intact,
    history_row,
    resume_rows,
    state_arrays,
    state_from,
    write_convergence,
    write_history,
    write_state,
)
from .plot import summary_figure
from .reference import ExactSolution


def _integrate(cfg, ctx, integ, h, exact, name, ckpt_offset, bar, state=None, rows=None):
    """Integrate from the newest state to T with step h, writing dataset ``name``."""
    store = ctx.store
    n_steps = cfg.steps(h)
    integ.load(state)
    step0 = int(rows[-1]["step"]) if rows else 0

    if not rows:
        rows = [history_row(integ, 0, h, 0, 0.0, exact)]
        write_history(store, name, rows, observables=cfg.observables)
    # (on resume, resume_rows cut the dataset back to the checkpoint's rows: not
    # rewritten, so that a kill now cannot damage the rows the checkpoint needs)
    flushed = len(rows)
    for n in range(step0 + 1, n_steps + 1):
        redone = integ.advance(h, ramp=cfg.ramp_halvings() if n == 1 else 0)
        rows.append(history_row(integ, n, h, redone, integ.last_step_s, exact))
        bar.update(1)
        bar.set_postfix_str(f"t={n * h:.3g} max rank {rows[-1]['max_rank']}")
        if ctx.checkpoint_due() or n == n_steps:
            write_history(store, name, rows[flushed:], append=True, observables=cfg.observables)
            flushed = len(rows)
            ctx.checkpoint(
                ckpt_offset + n,
                state_arrays(integ.full_state()),
                {"dataset": name, "step": n, "h": h},
                force=True,  # the history on the store is this far
            )
    return rows


def run(cfg: TTNConfig, ctx: RunContext) -> dict:
    """Integrate the configured problem; write ``history`` (or, with ``h_list``, one
    history per step size and ``convergence``), checkpoints and ``summary.png``.

    Returns
    -------
    dict
        Headline metrics (``PIPELINE.metric_names``) plus ``workers``.
    """
    from tilegraph.tasks.devices import deterministic_blas

    # The kernels are many small dense products: multi-threaded BLAS on the driver only
    # oversubscribes the cores the workers use (measured 20x slower on 2 cores).
    with deterministic_blas():
        return _run(cfg, ctx)


def _run(cfg: TTNConfig, ctx: RunContext) -> dict:
    store = ctx.store
    integ = BUGDriver(cfg, ctx.executor)
    warnings = []
    stuck = stationary_start(integ.op, cfg.start_vectors(), cfg.r_min, padding=cfg.padding)
    if stuck:  # said before the run: it may not converge however long it runs
        ctx.warn(stuck)
        warnings.append(stuck)
    padding = cfg.padding
    if padding == "auto":  # random directions where unit ones may pin the start
        padding = "random" if stuck else "unit"
    psi_state = integ.initial(padding)
    exact = None
    if cfg.exact_reference:
        exact = ExactSolution(integ.op, st.to_dense(integ.tree, psi_state), integ.obs_keys)
    hs = cfg.h_list or [cfg.h]
    names = ["history"] if cfg.h_list is None else [f"history_{k}" for k in range(len(hs))]
    # checkpoint steps are global: study k owns steps [offset_k, offset_k + steps_k]
    offsets = np.cumsum([0] + [cfg.steps(h) + 1 for h in hs]).tolist()

    saved = ctx.restore(
        valid=lambda c: (
            c.scalars.get("dataset") in names
            and history_intact(store, c.scalars["dataset"], int(c.scalars["step"]), c.scalars["h"])
        )
    )
    first, state, rows = 0, psi_state, None
    if saved is not None:
        first = names.index(saved.scalars["dataset"])
        state = state_from(saved.arrays, integ.tree.n_nodes)
        rows = resume_rows(store, names[first], saved.scalars["step"])
    total = sum(cfg.steps(h) for h in hs)
    ctx.enter("solve")
    done = sum(cfg.steps(h) for h in hs[:first]) + (rows[-1]["step"] if rows else 0)
    with ctx.progress(total, f"ttn {cfg.method} BUG", done=done) as bar:
        for k in range(first, len(hs)):
            if k == first and rows:
                state_k, rows_k = state, rows
            else:
                state_k, rows_k = psi_state, []
            rows = _integrate(
                cfg, ctx, integ, hs[k], exact, names[k], offsets[k], bar, state_k, rows_k
            )

    ctx.enter("output")
    write_state(store, integ.full_state())
    hist = store.open_dataset(names[-1]).load()
    metrics = _metrics(hist, cfg)
    if cfg.h_list is not None:  # every study's redone steps, not the last one's
        metrics["rejected_steps"] = sum(
            int((store.open_dataset(n)["rejected"].values > 0).sum()) for n in names
        )
    trapped = trapped_start(hist, cfg)
    if trapped:
        ctx.warn(trapped)
        warnings.append(trapped)
    if warnings:
        metrics["warnings"] = warnings
    metrics["workers"] = int(ctx.executor.n_workers)
    metrics.update(integ.busy())
    convergence = None
    if cfg.h_list is not None:
        convergence = write_convergence(store, names, hs)
        metrics["final_error_vs_exact"] = float(convergence["error"].values[-1])
        slope = np.polyfit(np.log(hs), np.log(convergence["error"].values), 1)[0]
        metrics["convergence_slope"] = float(slope)
    title = (
        f"ttn {cfg.method} BUG, {cfg.model.kind}, d={cfg.d}, {cfg.tree} tree, "
        f"h={cfg.h if cfg.h_list is None else 'study'}, theta={cfg.theta:g}"
    )
    ctx.save_figure(summary_figure(hist, title, convergence))
    return metrics


def trapped_start(hist, cfg) -> str | None:
    """A warning when the error against the exact reference ends above 0.1.

    One cause besides a step too large: a start in a symmetry sector that the
    rank-adaptive integrators cannot leave (the tilted Neel state of the isotropic
    Heisenberg chain stays at O(1) error under step refinement, ranks growing or not).
    """
    if "error" not in hist:
        return None
    err = float(hist["error"].values[-1])
    if not err > 0.1:
        return None
    ranks = np.asarray(hist["ranks"].values)
    pinned = " with every rank at its start value" if np.all(ranks == ranks[0]) else ""
    return (
        f"the error against the exact solution ended at {err:.2g}{pinned}; if a smaller h "
        "does not reduce it, the start state may sit in a symmetry sector the rank-adaptive "
        "BUG cannot leave: set padding=random or a larger r_min, or start from a product "
        "state that is not an eigenstate of the symmetry (docs/ttn.md, 'Your own system')"
    )


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
