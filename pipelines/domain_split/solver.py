"""Driver side of ``domain-split``: the preconditioner, FGMRES and the stationary
refinement, as passes of :class:`~tilegraph.pipelines.domain_split.worker.BlockWorker` actors over
Zarr vectors.

The driver holds only sub-mesh-sized data (restrictions, sub-mesh solutions, the
Hessenberg matrix), scalars and the halos of one pass; fine-grid vectors stay in the
workers (in memory) or in Zarr (out of core).
"""

from __future__ import annotations

import inspect
import math
import time

import numpy as np
from tilegraph.tasks.devices import slots
from tilegraph.tasks.domain_split.combine import correct, merge, spline_matrix
from tilegraph.tasks.domain_split.grid import halo_plan, merge_weights
from tilegraph.tasks.domain_split.holes import shift_offsets, smooth_region, work_region

from .worker import HALO_READS, BlockWorker


class BlockDriver:
    """Blocks spread over stateful workers, and the two-level preconditioner.

    Parameters
    ----------
    executor : cluster.Executor
    problem : Problem
    layout : GridLayout
    scheme : str
    smoother : bool
        Whether the preconditioner starts with the shifted-box solves.
    shifts : int
        Shifted box sets the smoother sweeps over, one after the other (see
        :func:`tilegraph.tasks.domain_split.holes.shift_offsets`).
    submesh : tuple
        ``(method, tol, lean)`` of the sub-mesh solves (see
        :class:`tilegraph.tasks.domain_split.combine.SubmeshSolver`).
    device : {"cpu", "cuda", "array-api-strict"}
        Where the workers' block kernels run; ``cuda`` gives each worker one GPU.
    cache : bool
        Let workers keep their blocks in memory (see ``BlockWorker``).
    local : iterable of str
        Scratch vectors that may stay in worker memory (see ``BlockWorker``); the
        parts of them a pass reads from other workers' blocks are sent through the
        driver before it.
    boxes : {"lu", "frozen"}
        How variable-coefficient boxes are solved (see ``BlockWorker``).
    corrections : int
        Defect-correction steps of frozen box solves (see ``BlockWorker``).
    """

    def __init__(
        self,
        executor,
        problem,
        layout,
        scheme: str,
        smoother: bool = True,
        shifts: int = 3,
        submesh=("auto", 1e-10),
        device: str = "cpu",
        cache: bool = True,
        local=(),
        boxes: str = "lu",
        corrections: int = 0,
    ):
        self.ex, self.problem, self.layout = executor, problem, layout
        self.smoother = smoother
        self.offsets = shift_offsets(layout, shifts)
        n_blocks = len(layout.blocks)
        n_actors = slots(executor, device, n_blocks)
        args = (problem, layout, scheme, cache, tuple(local), submesh, device, boxes, corrections)
        self.actors = executor.actors(
            BlockWorker, [(args, {})] * n_actors, gpus=1 if device == "cuda" else 0
        )
        # sub-meshes to actors, largest first, each to the least loaded: the plane
        # sub-meshes of 3-D runs are solved in parallel, where their factors stay
        sizes = {S: math.prod(layout.mesh_shape(S)) for S in layout.subsets}
        load = [0] * n_actors
        self.sub_owner: list[list] = [[] for _ in range(n_actors)]
        for S in sorted(layout.subsets, key=lambda S: -sizes[S]):
            a = load.index(min(load))
            self.sub_owner[a].append(S)
            load[a] += sizes[S]
        # contiguous runs of blocks (slabs along the first axis): fewer faces between
        # workers, so fewer halos to send
        self.owner = [[int(j) for j in ids] for ids in np.array_split(range(n_blocks), n_actors)]
        self.P = spline_matrix(layout.n_coarse, layout.n_fine)
        self.local = frozenset(local) if cache else frozenset()
        self._plans: dict = {}
        self.passes = 0
        self.seconds: dict[str, float] = {}  # wall time per kind of pass (diagnostics)

    # -- passes ---------------------------------------------------------------------------
    def call(self, method: str, *args, per_block=None, **kwargs) -> list:
        """Run ``method`` on every block; results in block order."""
        if per_block is not None and method in HALO_READS:
            raise ValueError(f"{method}: a pass that reads halos takes no per-block arguments")
        halos = self.exchange(method, args, kwargs)
        t0 = time.perf_counter()
        futures = []
        for a, (actor, ids) in enumerate(zip(self.actors, self.owner, strict=True)):
            extra = () if per_block is None else ([per_block[i] for i in ids],)
            more = {} if halos is None else {"halos": halos[a]}
            futures.append(getattr(actor, method)(ids, *extra, *args, **kwargs, **more))
        halos = more = None  # sent (in-process executors hold them until the pass ends)
        out: list = [None] * len(self.layout.blocks)
        for ids, res in zip(self.owner, self.ex.gather(futures), strict=True):
            for i, r in zip(ids, res, strict=True):
                out[i] = r
        self.passes += 1
        self.seconds[method] = self.seconds.get(method, 0.0) + time.perf_counter() - t0
        return out

    def exchange(self, method: str, args, kwargs) -> list[dict] | None:
        """The halos each worker's blocks read in a pass of ``method`` from other
        workers' blocks of in-memory vectors, collected from their workers.

        Returns
        -------
        list of dict or None
            Per worker, ``{path: {block id: [(first node, array), ...]}}``; None when
            the pass reads no such halo.
        """
        if method not in HALO_READS or not self.local or len(self.actors) < 2:
            return None
        bound = inspect.signature(getattr(BlockWorker, method)).bind(None, None, *args, **kwargs)
        refs = [bound.arguments.get(name) for name in HALO_READS[method]]
        refs = [r for r in refs if r is not None and r.path in self.local]
        if not refs:
            return None
        plan = self.halo_plan(method, bound.arguments.get("shift"))
        t0 = time.perf_counter()
        senders, futures = [], []
        for actor, ids in zip(self.actors, self.owner, strict=True):
            mine = [j for j in ids if j in plan]
            if mine:
                wanted = [[(lo, hi) for _, lo, hi in plan[j]] for j in mine]
                futures.append(actor.export(mine, refs, wanted))
                senders.append(mine)
        halos: list[dict] = [{} for _ in self.actors]
        for mine, per_ref in zip(senders, self.ex.gather(futures), strict=True):
            for ref, per_block in zip(refs, per_ref, strict=True):
                for j, pieces in zip(mine, per_block, strict=True):
                    for (g, lo, _), piece in zip(plan[j], pieces, strict=True):
                        halos[g].setdefault(ref.path, {}).setdefault(j, []).append((lo, piece))
        self.seconds["exchange"] = self.seconds.get("exchange", 0.0) + time.perf_counter() - t0
        return halos

    def halo_plan(self, method: str, shift=None) -> dict:
        """:func:`~tilegraph.tasks.domain_split.grid.halo_plan` of a pass: ``matvec``
        reads one node beyond its blocks, ``smooth_step`` the shifted boxes that meet
        them (:func:`~tilegraph.tasks.domain_split.holes.smooth_region`) and one node
        beyond those."""
        key = (method, shift if method == "smooth_step" else None)
        if key not in self._plans:
            lay, n = self.layout, self.layout.n_fine + 1
            reads = []
            for b in lay.blocks:
                if method == "smooth_step":
                    start, stop, _ = smooth_region(lay, b, shift)
                else:
                    start, stop = b.start, b.stop
                reads.append(
                    (tuple(max(a - 1, 0) for a in start), tuple(min(e + 1, n) for e in stop))
                )
            self._plans[key] = halo_plan(lay, self.owner, reads)
        return self._plans[key]

    @staticmethod
    def total(parts) -> tuple[float, np.ndarray]:
        """Sum per-block ``(sumsq, dots)`` results in block order."""
        sq = math.fsum(p[0] for p in parts)
        dots = np.array([math.fsum(p[1][k] for p in parts) for k in range(len(parts[0][1]))])
        return sq, dots

    # -- the preconditioner -----------------------------------------------------------
    def coarse(self, parts, rule: str) -> list[dict]:
        """Sub-mesh solves, merge and correction from per-block restriction parts.

        Returns
        -------
        list of dict
            Per block, ``S -> w'_S`` on the block's work region.
        """
        lay = self.layout
        rhs = {S: np.zeros(lay.mesh_shape(S)) for S in lay.subsets}
        for part in parts:  # block order: the sum does not depend on placement
            for S, (mesh, values) in part.items():
                rhs[S][mesh] += values
        t0 = time.perf_counter()
        futures = [
            actor.submesh_solve(subs, [rhs[S] for S in subs])
            for actor, subs in zip(self.actors, self.sub_owner, strict=True)
            if subs
        ]
        w = {}
        owners = [subs for subs in self.sub_owner if subs]
        for subs, sols in zip(owners, self.ex.gather(futures), strict=True):
            w.update(zip(subs, sols, strict=True))
        self.seconds["submesh_solve"] = (
            self.seconds.get("submesh_solve", 0.0) + time.perf_counter() - t0
        )
        M = merge(lay, w, merge_weights(lay, rule))
        wc = {S: correct(lay, S, w[S], M, self.P) for S in lay.subsets}
        out = []
        for b in lay.blocks:
            start, shape = work_region(lay, b)
            stop = tuple(a + n for a, n in zip(start, shape, strict=True))
            out.append({S: wc[S][lay.mesh_slices(S, start, stop)[1]] for S in lay.subsets})
        return out

    def precondition(self, v, out, scratch, rule: str = "combination", smooth=None) -> None:
        """``out = P v``: sweeps of shifted-box solves (if enabled), then the two-level
        step on the remaining residual: restriction, sub-mesh solves, merge, spline
        correction, skeleton and box solves.

        Parameters
        ----------
        v, out : ArrayRef
        scratch : tuple of ArrayRef
            Scratch vectors ``(z, r, s0, s1)``: ``z`` and ``r`` are only read back by the
            block that wrote them; ``s0`` and ``s1`` hold intermediate sweeps, which
            neighbours read through halos.
        rule : str
            Merge rule at the coarse nodes.
        smooth : bool, optional
            Override ``self.smoother`` (the first guess ``T B`` is built without it: for
            a smooth right-hand side the sub-mesh solutions are accurate as they are).
        """
        z, r, *between = scratch
        if self.smoother if smooth is None else smooth:
            z_in = None
            for k, shift in enumerate(self.offsets):
                last = k == len(self.offsets) - 1
                z_out = z if last else between[k % 2]
                # the last sweep reads only the newer intermediate sweep
                dead = [between[k % 2]] if last and k >= 2 else []
                parts = self.call(
                    "smooth_step", v, z_in, z_out, shift, r if last else None, drop=dead
                )
                z_in = z_out
            # the intermediate sweeps are not needed any more, z and r after the fill
            corrected = self.coarse(parts, rule)
            self.call("fill", r, z, out, between, spent=(r, z), per_block=corrected)
        else:
            parts = self.call("restrict", v)
            self.call("fill", v, None, out, per_block=self.coarse(parts, rule))


def free_buffer(state: dict) -> int:
    """The solution buffer (of ``x0``, ``x1``, ``x2``) to write the next iterate into:
    neither the current one nor the one the newest checkpoint refers to."""
    return min({0, 1, 2} - {state["x"], state["committed"]})


def fgmres(plan: BlockDriver, vec, state: dict, cfg, checkpoint, progress) -> dict:
    """Restarted flexible GMRES, right-preconditioned by ``plan.precondition``.

    Parameters
    ----------
    plan : BlockDriver
    vec : callable
        ``vec(name) -> ArrayRef`` of a fine-grid scratch vector.
    state : dict
        ``x`` (index of the current solution buffer), ``x_sumsq`` (per block
        ``sum(x^2)`` of it as written, which a resume checks the stored buffer against),
        ``committed`` (the buffer the newest checkpoint refers to), ``iterations``,
        ``history``, ``norm_b``; updated
        in place and offered to ``checkpoint`` after every restart cycle.
    cfg : DomainSplitConfig
    checkpoint : callable
        ``checkpoint(state) -> bool`` saves the state atomically when one is due.
    progress : context manager with ``update`` and ``set_postfix_str``

    Returns
    -------
    dict
        The final state, with ``rel_residual`` the true relative residual.
    """
    B = vec("B")
    m = cfg.restart
    V = [vec(f"V{j}") for j in range(m + 1)]
    Z = [vec(f"Z{j}") for j in range(m)]
    w, scratch = vec("w"), (vec("z"), vec("r"), vec("s0"), vec("s1"))
    nb = state["norm_b"]
    while True:
        x = vec(f"x{state['x']}")
        sq, _ = plan.total(plan.call("matvec", x, rhs=B, out=V[0]))
        beta = math.sqrt(sq)
        state["rel_residual"] = beta / nb
        if not state["history"]:
            state["history"].append(beta / nb)
        progress.set_postfix_str(f"residual {beta / nb:.2e}")
        if beta / nb <= cfg.tol or state["iterations"] >= cfg.max_iter:
            return state
        plan.call("lincomb", V[0], [(1.0 / beta, V[0])])
        H = np.zeros((m + 1, m))
        e1 = np.zeros(m + 1)
        e1[0] = beta
        y = np.zeros(0)
        for j in range(m):
            plan.precondition(V[j], Z[j], scratch)
            _, h1 = plan.total(plan.call("matvec", Z[j], out=w, dots=V[: j + 1]))
            # classical Gram-Schmidt twice; w stays in worker memory, V[j+1] is written once
            terms = [(1.0, w)] + [(-h1[i], V[i]) for i in range(j + 1)]
            s1, h2 = plan.total(plan.call("lincomb", w, terms, dots=V[: j + 1]))
            nrm = math.sqrt(max(s1 - float(h2 @ h2), 0.0))
            H[: j + 1, j] = h1 + h2
            H[j + 1, j] = nrm
            if nrm > 0:
                terms = [(1.0 / nrm, w)] + [(-h2[i] / nrm, V[i]) for i in range(j + 1)]
                plan.call("lincomb", V[j + 1], terms, drop=[w])
            y, *_ = np.linalg.lstsq(H[: j + 2, : j + 1], e1[: j + 2], rcond=None)
            est = float(np.linalg.norm(e1[: j + 2] - H[: j + 2, : j + 1] @ y)) / nb
            state["iterations"] += 1
            state["history"].append(est)
            progress.update(1)
            progress.set_postfix_str(f"residual {est:.2e}")
            if est <= cfg.tol or nrm == 0 or state["iterations"] >= cfg.max_iter:
                break
        nxt = free_buffer(state)
        terms = [(1.0, x)] + [(float(y[i]), Z[i]) for i in range(len(y))]
        parts = plan.call("lincomb", vec(f"x{nxt}"), terms)
        state.update(x=nxt, x_sumsq=[p[0] for p in parts])
        if checkpoint(state):
            state["committed"] = nxt


def stationary(plan: BlockDriver, vec, state: dict, cfg, checkpoint, progress) -> dict:
    """The paper's refinement: ``x += c P(r)`` with the residual-minimising step ``c``.

    Same parameters and result as :func:`fgmres`.
    """
    B, r, e = vec("B"), vec("res"), vec("e")
    scratch = (vec("z"), vec("r"), vec("s0"), vec("s1"))
    nb = state["norm_b"]
    while True:
        x = vec(f"x{state['x']}")
        sq, _ = plan.total(plan.call("matvec", x, rhs=B, out=r))
        state["rel_residual"] = math.sqrt(sq) / nb
        state["history"].append(state["rel_residual"])
        progress.set_postfix_str(f"residual {state['rel_residual']:.2e}")
        if state["rel_residual"] <= cfg.tol or state["iterations"] >= cfg.max_iter:
            return state
        plan.precondition(r, e, scratch)
        aa, (ar,) = plan.total(plan.call("matvec", e, dots=[r]))
        c = ar / aa if aa > 0 else 0.0
        nxt = free_buffer(state)
        parts = plan.call("lincomb", vec(f"x{nxt}"), [(1.0, x), (c, e)])
        state.update(x=nxt, x_sumsq=[p[0] for p in parts])
        state["iterations"] += 1
        progress.update(1)
        if checkpoint(state):
            state["committed"] = nxt
