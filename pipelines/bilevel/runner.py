"""``run`` of the bilevel pipeline: the driver loop over sampled blocks, checkpoints,
history, results and metrics."""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.bilevel.hypergradient import hypergradient, lower_solutions, reference_optimum
from tilegraph.tasks.bilevel.hypergradient import upper_objective as exact_objective
from tilegraph.tasks.bilevel.methods import state_layout, state_size, upper_step
from tilegraph.tasks.bilevel.sampling import draw, init_batches
from tilegraph.tasks.devices import slots

from ..base import RunContext
from .config import USER_KINDS, BilevelConfig
from .plot import summary_figure
from .results import write_history, write_result
from .steps import Plateau, plateau_halvings
from .steps import resolve as resolve_steps
from .worker import SLOTS, block_tasks, evaluate_blocks, free_slot, init_blocks

HISTORY = ("iteration", "rel_dist", "upper_objective", "grad_norm")


def evaluate(problem, x, x_star) -> tuple[float, float, float]:
    """``(|x - x*| / |x*|, F(x), |grad F(x)|)`` from exact lower solutions (NaN where
    ``x*`` is unknown)."""
    ys = lower_solutions(problem, x)
    dist = float("nan") if x_star is None else rel_dist(x, x_star)
    return (
        dist,
        exact_objective(problem, x, ys),
        float(np.linalg.norm(hypergradient(problem, x, ys))),
    )


def distributed_evaluator(ex, prob, m: int, x_star):
    """``ev(x) -> (|x - x*| / |x*|, F(x), |grad F(x)|)`` with every block's exact terms
    computed by tasks where the data are (the user's blocks are never read on the
    driver); sums in block order, as :func:`evaluate` does. Also keeps the last
    per-block ``f_i`` as ``ev.per_block``."""
    groups = [g for g in np.array_split(np.arange(m), min(m, 4 * max(1, ex.n_workers))) if g.size]

    def ev(x):
        parts = ex.gather(ex.map(evaluate_blocks, groups, problem=prob, x=np.asarray(x)))
        terms = [t for part in parts for t in part]
        F = float(sum(f for f, _ in terms) / m)
        grad = terms[0][1]
        for _, g in terms[1:]:
            grad = grad + g
        ev.per_block = np.array([f for f, _ in terms])
        ev.grad = grad / m
        dist = float("nan") if x_star is None else rel_dist(x, x_star)
        return dist, F, float(np.linalg.norm(grad / m))

    ev.per_block = None
    return ev


def rel_dist(x, x_star) -> float:
    return float(np.linalg.norm(x - x_star) / np.linalg.norm(x_star))


def run(cfg: BilevelConfig, ctx: RunContext) -> dict:
    """Minimise the configured problem's ``F`` with ``cfg.method`` and then each method of
    ``cfg.compare``; write ``history``, ``result`` (the main method),
    ``compare_<method>`` (the others' histories) and ``summary.png`` into ``ctx.store``.

    Returns
    -------
    dict
        Headline metrics of the main method (``PIPELINE.metric_names``) plus ``converged``,
        ``method``, ``blocks``, ``blocks_per_iter``, ``batch``, ``workers``,
        ``s_per_iter`` and ``<method>_iterations`` for the compared methods.
    """
    store, ex = ctx.store, ctx.executor
    problem = cfg.problem.build()
    prob = ex.put(problem)
    exact = distributed_evaluator(ex, prob, problem.m, None)
    cfg, auto = resolve_steps(cfg, ex, prob, problem, exact)
    if cfg.problem.kind in USER_KINDS:
        x_star = problem.x_star  # the user's, where their problem knows it
        ev = distributed_evaluator(ex, prob, problem.m, x_star)
    else:
        x_star = None if cfg.problem.kind == "logistic-hpo" else reference_optimum(problem)

        def ev(x):
            return evaluate(problem, x, x_star)

    methods = [cfg.method, *(mm for mm in dict.fromkeys(cfg.compare) if mm != cfg.method)]
    histories: dict[str, dict] = {}
    ctx.enter("solve")
    for method in methods:
        name = "history" if method == cfg.method else f"compare_{method}"
        if ctx.is_done(method):
            ds = store.open_dataset(name)
            histories[method] = {
                **{k: [float(v) for v in ds[k].values] for k in HISTORY[1:] if k in ds},
                "iteration": [int(v) for v in ds.iteration.values],
                "s_per_iter": ds.attrs.get("s_per_iter"),
            }
            histories[method]["halvings"] = ds.attrs.get("step_halvings", 0)
            if "rel_dist" not in ds:
                histories[method]["rel_dist"] = [float("nan")] * ds.iteration.size
            ctx.skipped(histories[method]["iteration"][-1])
            continue
        offset = methods.index(method) * (cfg.max_iter + 1)  # checkpoint steps grow
        out = _iterate(cfg, method, offset, ctx, problem, prob, x_star, ev)
        hist = {**out["hist"], "s_per_iter": out["s_per_iter"], "halvings": out["halvings"]}
        write_history(store, name, cfg, method, hist, x_star is not None)
        if method == cfg.method:
            val = None
            if cfg.problem.kind in USER_KINDS:  # each block's validation loss at the end
                ev(out["x"])
                rho = float(getattr(problem, "rho", 0.0))
                val = ev.per_block - 0.5 * rho * float(np.sum(out["x"] ** 2))
            write_result(store, cfg, problem, out["x"], x_star, out["ref"], out["slot"], val)
        ctx.mark_done(method)
        histories[method] = hist

    ctx.enter("output")
    title = f"bilevel on {cfg.problem.kind}: m={problem.m}, I={cfg.blocks_per_iter}, B={cfg.batch}"
    ctx.save_figure(summary_figure(histories, x_star is not None, title))

    main = histories[cfg.method]
    dist = None if x_star is None else main["rel_dist"][-1]
    metrics = {
        "iterations": int(main["iteration"][-1]),
        "rel_dist_to_optimum": dist,
        "grad_norm": main["grad_norm"][-1],
        "upper_objective": main["upper_objective"][-1],
        "converged": bool(dist is not None and cfg.tol is not None and dist <= cfg.tol),
        "method": cfg.method,
        "blocks": problem.m,
        "blocks_per_iter": cfg.blocks_per_iter,
        "batch": cfg.batch,
        "workers": ex.n_workers,
        "s_per_iter": main["s_per_iter"],
        **({"auto_steps": auto} if auto else {}),
        **({"step_halvings": int(main["halvings"])} if cfg.plateau_epochs else {}),
        **{f"{mm}_iterations": int(histories[mm]["iteration"][-1]) for mm in methods[1:]},
    }
    stalled = _noise_floor(cfg, main, problem.m, dist)
    if stalled:
        ctx.warn(stalled)
        metrics["warnings"] = [stalled]
    return metrics


#: Epochs over which a stalled F is looked for at the end of a run (as plateau_epochs).
STALL_EPOCHS = 20


def _noise_floor(cfg, hist: dict, m: int, dist) -> str | None:
    """A warning when the run ended off the optimum with F stalled under a constant
    upper step: block sampling noise, not the problem, then sets where the iterates
    hover, and a shrinking step is what takes them further (a user's first run had
    I = 2 of 4 blocks hover at a distance of 1.0 for 3000 iterations, without a word).

    Off the optimum means: not within ``tol`` of a known ``x*``; without one, a final
    hypergradient above 1 % of the first."""
    if cfg.plateau_epochs is not None or cfg.decay_epochs is not None:
        return None  # the step already shrinks
    grads = [g for g in hist["grad_norm"] if np.isfinite(g)]
    if dist is not None and cfg.tol is not None:
        if dist <= cfg.tol:
            return None
    elif not grads or grads[-1] <= 1e-2 * grads[0]:
        return None
    patience = STALL_EPOCHS * m / cfg.blocks_per_iter
    its = np.asarray(hist["iteration"], dtype=float)
    tail = its >= its[-1] - 3 * patience  # stalled at the end, not once on the way
    if plateau_halvings(its[tail], np.asarray(hist["upper_objective"])[tail], patience) == 0:
        return None
    where = (
        f"at a relative distance {dist:.3g} from x*"
        if dist is not None
        else "with |grad F| not yet small"
    )
    if cfg.blocks_per_iter < m:
        noise = f"block sampling (blocks_per_iter={cfg.blocks_per_iter} of {m} blocks)"
    else:
        noise = f"the sampled rows (batch={cfg.batch} per block)"
    return (
        f"F stopped decreasing {where}: with a constant upper step the iterates hover at "
        f"the noise of {noise}; set plateau_epochs={STALL_EPOCHS} to halve the step when F "
        "stalls, or a smaller eta (docs/bilevel.md, 'A step that shrinks when F stalls')"
    )


def _iterate(
    cfg: BilevelConfig, method: str, offset: int, ctx: RunContext, problem, prob, x_star, ev
) -> dict:
    """Run ``method`` from its newest checkpoint (when resuming) or from the start; its
    checkpoint of iteration ``t`` is step ``offset + t``.

    Returns
    -------
    dict
        ``x``, ``hist`` (lists per ``HISTORY`` key), ``ref`` (the state array), ``slot``
        (each block's current slot), ``s_per_iter``.
    """
    store, ex = ctx.store, ctx.executor
    steps, m, I, B = cfg.steps(), problem.m, cfg.blocks_per_iter, cfg.batch
    n_state = state_size(method, problem.dim_y)
    path = f"state/{method}"
    common = {"problem": prob, "method": method, "steps": steps, "device": cfg.device}
    # device=cuda: every task runs its kernels with CuPy on one GPU of its worker
    gpus = 1 if cfg.device == "cuda" else 0

    def valid(c) -> bool:
        # the blocks' slots a checkpoint refers to are overwritten once a newer one is
        # complete: falling back past a damaged newer checkpoint would mix states
        return (
            c.scalars.get("method") == method
            and store.has(path)
            and not store.checkpoint_superseded(c.step)
        )

    saved = ctx.restore(valid=valid)
    if saved is not None:
        ref = store.array(path)
        a = saved.arrays
        t = int(saved.scalars["t"])
        x, x_prev, z = a["x"], a["x_prev"], a["z"]
        last, slot = a["last"].astype(np.int64), a["slot"].astype(np.int64)
        hist = {k: [float(v) for v in a["hist_" + k]] for k in HISTORY}
    else:
        ref = store.create_array(
            path,
            (m, SLOTS, n_state),
            (1, 1, n_state),
            dimension_names=("block", "slot", "component"),
            attrs={
                "long_name": "each block's lower-level state (two slots: the last update "
                "and the one before); 'layout' gives each part's offset and shape",
                "units": "1",
                "layout": {
                    k: [o, list(s)] for k, (o, s) in state_layout(method, problem.dim_y).items()
                },
            },
            compressors=None,
            overwrite=True,
        )
        t = 0
        x = np.asarray(problem.x0, dtype=np.float64)
        x_prev, z = x.copy(), np.zeros_like(x)
        last, slot = np.full(m, -1, dtype=np.int64), np.zeros(m, dtype=np.int64)
        idx0 = init_batches(cfg.seed, m, B, problem.n_lower)
        groups = np.array_split(np.arange(m), min(m, 4 * slots(ex, cfg.device)))
        ex.gather(
            ex.map(
                init_blocks, groups, [idx0[g] for g in groups], gpus=gpus, ref=ref, x0=x, **common
            )
        )
        hist = {k: [] for k in HISTORY}
        for k, v in zip(HISTORY, (0, *ev(x)), strict=True):
            hist[k].append(float(v))
    committed = slot.copy()

    def state():
        return {
            "x": x,
            "x_prev": x_prev,
            "z": z,
            "last": last,
            "slot": slot,
            **{"hist_" + k: np.asarray(v, dtype=np.float64) for k, v in hist.items()},
        }

    def reached() -> bool:
        return x_star is not None and cfg.tol is not None and rel_dist(x, x_star) <= cfg.tol

    plateau = None if cfg.plateau_epochs is None else Plateau(cfg.plateau_epochs * m / I)

    def halvings() -> int:
        return 0 if plateau is None else plateau.update(hist["iteration"], hist["upper_objective"])

    halved = halvings()
    used = 0  # the halvings of the last upper step taken
    n_slots = slots(ex, cfg.device)
    with ctx.progress(cfg.max_iter, f"bilevel {method}", done=t) as bar:
        while t < cfg.max_iter and not reached():
            d = draw(cfg.seed, t, m, I, B, problem.n_lower, problem.n_upper)
            dst = [free_slot(int(slot[i]), int(committed[i])) for i in d.blocks]
            work = list(
                zip(
                    [int(i) for i in d.blocks],
                    [int(slot[i]) for i in d.blocks],
                    dst,
                    list(d.idx_g),
                    list(d.idx_f),
                    [int(t - last[i] - 1) for i in d.blocks],
                    strict=True,
                )
            )
            # one task per worker at most: consecutive sampled blocks share a task
            parts = np.array_split(np.arange(len(work)), min(len(work), n_slots))
            # pure=False: every task writes, none may be taken for an earlier one, and
            # Dask then names it without hashing its arguments (~1.4 ms per iteration)
            futures = ex.map(
                block_tasks,
                [[work[k] for k in part] for part in parts],
                gpus=gpus,
                pure=False,
                ref=ref,
                x=x,
                x_prev=x_prev,
                first=(t == 0),
                iteration=t,
                **common,
            )
            G_new, G_old = np.zeros_like(x), np.zeros_like(x)
            for group in ex.gather(futures):  # block order: a fixed reduction
                for g_new, g_old in group:
                    G_new, G_old = G_new + g_new, G_old + g_old
            x_next, z = upper_step(
                method,
                x,
                z,
                G_new / I,
                G_old / I,
                cfg.upper_step(t, halved),
                beta=cfg.beta,
                first=(t == 0),
                box=cfg.upper_box(),
            )
            x_prev, x = x, x_next
            used = halved
            last[d.blocks] = t
            slot[d.blocks] = dst
            t += 1
            bar.update(1)
            if not np.all(np.isfinite(x)):
                raise FloatingPointError(
                    f"{method} diverged at iteration {t}: the upper variable x became "
                    f"non-finite (max |z| = {float(np.max(np.abs(z))):.3g}, the momentum of "
                    "the hypergradient); lower the steps (eta, tau, tau_v) or set x_min / x_max"
                )
            if t % cfg.eval_every == 0:
                for k, v in zip(HISTORY, (t, *ev(x)), strict=True):
                    hist[k].append(float(v))
                halved = halvings()
                bar.set_postfix_str(f"F={hist['upper_objective'][-1]:.4g}")
            if ctx.checkpoint(offset + t, state, {"t": t, "method": method}):
                committed = slot.copy()  # the slots it refers to stay untouched till the next
    if hist["iteration"][-1] != t:
        for k, v in zip(HISTORY, (t, *ev(x)), strict=True):
            hist[k].append(float(v))

    return {
        "x": x,
        "hist": hist,
        "halvings": used,
        "ref": ref,
        "slot": slot,
        # without the first iteration, which ships the problem to the workers
        "s_per_iter": bar.seconds_per_step(skip=1),
    }
