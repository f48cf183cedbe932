"""``run`` of the domain-split pipeline: set up, solve, write results and metrics."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from tilegraph import cluster
from tilegraph.tasks.devices import slots

from ..base import RunContext
from ..config import ConfigError
from ..resources import check_executor
from .config import DomainSplitConfig
from .plot import summary_figure
from .resources import BASIS_FLOOR, estimate
from .solver import BlockDriver, fgmres, stationary
from .worker import layout_for

DIMS = ("x", "y", "z")

log = logging.getLogger(__name__)

#: Scratch vectors holding iterates (``state["x"]`` names one): kept over a resume.
SOLUTION_BUFFERS = ("x0", "x1", "x2")


def _norm(x: np.ndarray) -> float:
    """2-norm with a correctly rounded sum: the same bits whatever BLAS threads do
    (``numpy.linalg.norm`` sums through BLAS, whose order follows its thread count)."""
    return math.sqrt(math.fsum(np.square(np.ravel(x)).tolist()))


def _units(problem) -> dict[str, str]:
    """Units of the solution (``"u"``) and of the coordinates, where known: the built-in
    problems are dimensionless; a dataset's come from its ``units`` attributes (of
    ``g`` and of ``x, y, z``); a factory's object may say them with ``units()``."""
    from tilegraph.tasks.domain_split.problems import KINDS

    if getattr(problem, "kind", None) in KINDS:
        return {"u": "1", "x": "1", "y": "1", "z": "1"}
    say = getattr(getattr(problem, "inner", problem), "units", None)
    try:
        got = say() if callable(say) else {}
    except Exception:  # a user's object: its units are a courtesy, not the run
        return {}
    return {str(k): str(v) for k, v in dict(got or {}).items() if v}


def direct_solution(problem, layout, scheme: str) -> np.ndarray:
    """The fine discrete solution by SciPy's sparse direct solver, SuperLU (the reference).

    Returns
    -------
    numpy.ndarray, shape ``layout.shape``
    """
    from scipy.sparse.linalg import splu
    from tilegraph.tasks.domain_split.operator import PERMC, assemble, fine_axes, rhs_block

    B = rhs_block(problem, (0,) * layout.d, layout.shape, layout.n_fine)
    A_ii, A_ib, interior = assemble(problem, fine_axes(layout.n_fine, layout.d), scheme)
    U = np.array(B, dtype=np.float64)
    U[interior] = splu(A_ii, permc_spec=PERMC).solve(B[interior] - A_ib @ B[~interior])
    return U


@dataclass(frozen=True)
class InMemory:
    """A work vector that the workers keep in memory and never write: its name (what
    the workers key their blocks and the halos they send by)."""

    path: str


def scratch_names(cfg: DomainSplitConfig) -> list[str]:
    """Every scratch vector the solver may use (``work/<name>``). Only the solution
    buffers are needed on resume: in-memory runs write only those to Zarr, the others
    stay in the workers (with their halos sent through the driver)."""
    m = cfg.restart
    basis = [f"V{j}" for j in range(m + 1)] + [f"Z{j}" for j in range(m)]
    return ["B", *SOLUTION_BUFFERS, *basis, "w", "z", "r", "s0", "s1", "res", "e"]


def basis_that_fits(cfg: DomainSplitConfig, executor, workers: int) -> int:
    """The FGMRES restart an in-memory run takes: ``cfg.restart`` where its basis fits
    the workers' memory (or nothing limits it), else the largest restart whose estimate
    fits, down to ``BASIS_FLOOR`` (what the memory check before the run asked for).
    Out-of-core and stationary runs keep ``cfg.restart``. Called before the run's own
    arrays exist: in-process backends check against the memory free then."""
    m = min(cfg.restart, cfg.max_iter)
    if cfg.out_of_core or cfg.solver != "krylov" or m <= BASIS_FLOOR:
        return cfg.restart

    def fits(k: int) -> bool:
        est = estimate(cfg.model_copy(update={"restart": k}), workers)
        try:
            check_executor(dataclasses.replace(est, worker_floor_bytes=None), executor)
        except ConfigError:
            return False
        return True

    if fits(m):
        return cfg.restart
    # the estimate grows with k: bisect (each check may ask the scheduler for limits)
    lo, hi = BASIS_FLOOR, m  # the answer is in [lo, hi): lo is taken without a check
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def run(cfg: DomainSplitConfig, ctx: RunContext) -> dict:
    """Solve the configured problem; write ``result`` (solution and, where the problem
    knows it, the exact solution and the error, on the coordinates of its box),
    ``history`` and ``summary.png`` into ``ctx.store``.

    Returns
    -------
    dict
        Headline metrics (``PIPELINE.metric_names``) plus ``converged``, ``blocks``, ``workers``,
        ``fgmres_restart`` (krylov: the restart taken, see `basis_that_fits`),
        ``passes``.
    """
    store = ctx.store
    problem = cfg.to_problem()
    layout = layout_for(cfg.d, cfg.n_fine, cfg.n_coarse, cfg.boxes_per_block)
    dims = DIMS[: cfg.d]

    refs: dict = {}
    in_memory = set() if cfg.out_of_core else set(scratch_names(cfg)) - set(SOLUTION_BUFFERS)

    def vec(name: str):
        """The scratch vector ``work/<name>``, created on first use (FGMRES touches only
        as many basis vectors as it needs); the solution buffers survive a resume. In
        memory runs the others never reach the store: they are only a name."""
        if name not in refs:
            if name in in_memory:
                refs[name] = InMemory(f"work/{name}")
            else:
                reuse = name in SOLUTION_BUFFERS
                refs[name] = ctx.scratch(
                    name, layout.padded_shape, layout.padded_chunks, dims, reuse=reuse
                )
        return refs[name]

    actors = slots(ctx.executor, cfg.device, len(layout.blocks))
    restart = basis_that_fits(cfg, ctx.executor, actors)
    if restart < cfg.restart:
        m = min(cfg.restart, cfg.max_iter)
        log.warning(
            "restart=%d: the workers' memory holds an FGMRES basis of %d steps, not %d "
            "(FGMRES restarts after %d iterations; the answer is the same within tol)",
            restart, restart, m, restart,
        )  # fmt: skip
    cfg = cfg.model_copy(update={"restart": restart})
    plan = BlockDriver(
        ctx.executor,
        problem,
        layout,
        cfg.scheme,
        smoother=cfg.smoother,
        shifts=cfg.shifts,
        submesh=(cfg.submesh, cfg.submesh_tol, cfg.out_of_core),
        device=cfg.device,
        cache=not cfg.out_of_core,
        boxes=cfg.boxes,
        corrections=cfg.box_corrections,
        local=[f"work/{n}" for n in sorted(in_memory)],
    )
    norm_b = math.sqrt(math.fsum(plan.call("rhs", vec("B"))))

    def checkpoint(state) -> bool:
        keys = ("x", "x_sumsq", "iterations", "rel_residual")
        return ctx.checkpoint(
            state["iterations"],
            lambda: {"history": np.asarray(state["history"], dtype=np.float64)},
            {**{k: state[k] for k in keys}, "passes": plan.passes},
        )

    def intact(saved) -> bool:
        """Whether the iterate a checkpoint refers to is in the store as it was written
        (the checkpoint's checksums cover its own arrays, not the scratch vectors)."""
        name = f"x{saved.scalars['x']}"
        if not ctx.has_scratch(name):
            return False
        want = saved.scalars.get("x_sumsq")
        if want is None:  # a checkpoint of an earlier version
            return True
        passes, seconds = plan.passes, dict(plan.seconds)  # a check, not the solver's
        try:
            got = plan.call("sumsq", vec(name))
        except Exception as exc:
            if cluster.is_worker_lost(exc):
                raise  # the run's retries continue from this checkpoint
            log.warning("the iterate of checkpoint %s is unreadable (%s)", saved.step, exc)
            return False
        finally:
            plan.passes, plan.seconds = passes, seconds
        if len(got) == len(want) and all(
            isinstance(w, (int, float)) and math.isclose(g, w, rel_tol=1e-12)
            for g, w in zip(got, want, strict=True)
        ):  # (a non-finite sum was stored as None: never continued from)
            return True
        log.warning("the iterate of checkpoint %s has changed since it was saved", saved.step)
        return False

    ctx.enter("solve")
    saved = ctx.restore(valid=intact)
    if saved is not None:
        state = {**saved.scalars, "history": [float(h) for h in saved.arrays["history"]]}
        # the uninterrupted run's count: its passes up to the checkpoint (this session's
        # setup passes redo work, they are not counted)
        plan.passes = int(state.pop("passes", plan.passes))
    else:
        plan.precondition(vec("B"), vec("x0"), (vec("z"), vec("r")), rule=cfg.merge, smooth=False)
        state = {"x": 0, "iterations": 0, "rel_residual": None, "history": []}
    state.update(norm_b=norm_b, committed=state["x"])

    solve = fgmres if cfg.solver == "krylov" else stationary
    desc = f"domain-split {cfg.solver}"
    with ctx.progress(cfg.max_iter, desc, done=state["iterations"]) as bar:
        state = solve(plan, vec, state, cfg, checkpoint, bar)
    ctx.enter("output")

    # results: an xarray-readable group (arrays with dimension_names + 1-D coordinates)
    domain = cfg.domain()
    exact = getattr(problem, "has_exact", True)
    fields = [("solution", "tilegraph two-level solution u")]
    if exact:
        fields += [("exact", "exact solution"), ("error", "solution - exact")]
    units = _units(problem)
    out = {
        name: store.create_array(
            f"result/{name}",
            layout.shape,
            layout.chunks,
            dimension_names=dims,
            attrs={
                "long_name": long,
                "grid": f"{cfg.n_fine} intervals per axis",
                **({"units": units["u"]} if units.get("u") else {}),
            },
            overwrite=True,
        )
        for name, long in fields
    }
    for dim, (a, b) in zip(dims, domain, strict=True):
        coord = store.create_array(
            f"result/{dim}",
            (layout.n_fine + 1,),
            (layout.n_fine + 1,),
            dimension_names=(dim,),
            attrs={
                "long_name": f"coordinate {dim}",
                "axis": dim.upper(),
                "domain": [a, b],
                **({"units": units[dim]} if units.get(dim) else {}),
            },
            overwrite=True,
        )
        coord.write((slice(None),), np.linspace(a, b, layout.n_fine + 1))
    x = vec(f"x{state['x']}")
    parts = plan.call("finalize", x, out["solution"], out.get("exact"), out.get("error"))
    metrics = {
        "rel_residual": state["rel_residual"],
        "iterations": int(state["iterations"]),
        "converged": bool(state["rel_residual"] <= cfg.tol),
        "unknowns": layout.unknowns,
        "blocks": len(layout.blocks),
        "workers": len(plan.actors),
        "passes": plan.passes,
    }
    if cfg.solver == "krylov":
        metrics["fgmres_restart"] = cfg.restart  # as taken (see basis_that_fits)
    if exact:
        err_sq = math.fsum(p[0] for p in parts)
        ex_sq = math.fsum(p[1] for p in parts)
        metrics["rel_error_exact"] = math.sqrt(err_sq / ex_sq) if ex_sq > 0 else math.sqrt(err_sq)
        metrics["max_error_exact"] = max(p[2] for p in parts)
    if cfg.direct_reference:
        Ud = direct_solution(problem, layout, cfg.scheme)
        U = out["solution"].read()
        metrics["rel_error_direct"] = _norm(U - Ud) / _norm(Ud)
        if exact:
            ue = out["exact"].read()
            metrics["discretisation_error"] = _norm(Ud - ue) / _norm(ue)

    import xarray as xr

    hist = np.asarray(state["history"], dtype=np.float64)
    store.write_dataset(
        "history",
        xr.Dataset(
            {
                "rel_residual": (
                    "iteration",
                    hist,
                    {"units": "1", "long_name": "relative residual"},
                )
            },
            coords={
                "iteration": (
                    "iteration",
                    np.arange(hist.size),
                    {"units": "1", "long_name": "outer iteration (0: the initial residual)"},
                )
            },
            attrs={
                "solver": cfg.solver,
                # wall seconds per kind of block pass, for finding where time goes
                **{f"pass_{k}_s": v for k, v in sorted(plan.seconds.items())},
            },
        ),
    )
    title = (
        f"domain-split {cfg.d}-D, N_f={cfg.n_fine}, N_c={cfg.n_coarse}, "
        f"{problem.kind}, {cfg.solver}"
    )
    ctx.save_figure(summary_figure(store, problem, domain, hist, title))
    return metrics
