"""How one step is scheduled on the executor.

``nodes``: every leaf K-step and every node Galerkin step of a step is one executor task
(one ``map`` per step); the driver holds the network and ships each task its node's
tensors. ``subtrees``: one stateful worker per subtree (under the nodes ``subtree_depth``
edges below the root) keeps it between steps and runs its K-step (its leaf K-steps and
node Galerkin steps in turn); the driver holds the root and does its Galerkin step
itself. With ``subtree_depth`` > 1 each child of the root above the subtrees is a
stateful :class:`.worker.BranchWorker` of its own, which holds the nodes between it and
the subtrees; the driver relays between it and them (:class:`_Relay`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tilegraph.tasks.devices import slots
from tilegraph.tasks.ttn import integrator
from tilegraph.tasks.ttn import state as st

from .worker import BranchWorker, SubtreeGroup, device_task

#: Most times one step is redone from the augmented bases when nothing was truncated.
MAX_REDO = 2


def executor_map(ex, device: str = "cpu"):
    """``map_fn(fn, *iterables) -> results`` running every call as one executor task.

    With a ``device`` other than ``cpu`` each task moves its arguments to the device,
    runs there and returns NumPy arrays (:func:`.worker.device_task`); ``cuda`` tasks ask
    for one GPU each.
    """

    def map_fn(fn, *iterables):
        if device == "cpu":
            return ex.gather(ex.map(fn, *iterables))
        n = min(len(it) for it in iterables)
        gpus = 1 if device == "cuda" else 0
        return ex.gather(ex.map(device_task, [device] * n, [fn] * n, *iterables, gpus=gpus))

    return map_fn


def subtree_slots(executor, device: str, n_subtrees: int) -> int:
    """How many stateful workers hold the subtrees: one per subtree, but with
    ``cuda`` at most one per GPU (each holds its GPU); see
    :func:`tilegraph.tasks.devices.slots`."""
    return slots(executor, device, n_subtrees, cpu_per_item=True)


class _Member:
    """One subtree of a :class:`.worker.SubtreeGroup` actor, called like a
    :class:`.worker.SubtreeWorker` actor (``member.kstep(...)`` returns a future)."""

    def __init__(self, handle, top: int):
        self._handle, self._top = handle, top

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args):
            return self._handle.call(self._top, name, *args)

        return method


def observable_keys(cfg) -> tuple[dict, list, list]:
    """What the driver observes besides norm and energy: ``(ops, magnetisation keys,
    observable keys)``. A magnetisation key is ``((site, "Sz/S@<type>"),)`` at a spin
    site (``Z`` for spin-1/2) and None elsewhere; an observable key is the factors of
    one of ``cfg.observables``; ``ops`` holds the matrices these keys name."""
    from tilegraph.tasks.ttn.terms import from_terms

    types = cfg.site_types()
    ops: dict = {}
    mag: list = []
    for s, t in enumerate(types):
        if t.kind != "spin":
            mag.append(None)
            continue
        name = f"Sz/S@{t.name}"
        ops[name] = t.op("Sz") / float(t.spin)
        mag.append(((s, name),))
    obs = []
    for text in cfg.observables:
        one = from_terms(types, [(1.0, text)])
        ops.update(one.ops)
        obs.append(one.keys[0])
    return ops, mag, obs


class BUGDriver:
    """Steps a TTN with the configured BUG variant and schedule."""

    def __init__(self, cfg, executor):
        self.cfg = cfg
        self.ex = executor
        self.tree = cfg.make_tree()
        op = cfg.make_operator()
        extra_ops, self.mag_keys, self.obs_keys = observable_keys(cfg)
        self.op = dataclasses.replace(op, ops={**op.ops, **extra_ops})
        keys = [k for k in self.mag_keys if k is not None] + self.obs_keys
        self.layout = integrator.OperatorLayout(self.tree, self.op, extra_keys=keys)
        self.trunc = integrator.Truncation(cfg.theta, cfg.relative, cfg.r_min, cfg.r_max)
        self.subtrees = cfg.schedule == "subtrees" and cfg.method == "parallel"
        self.tops = list(self.tree.cut(cfg.subtree_depth)) if self.subtrees else []
        # the root's children: subtree tops, or branches above deeper tops
        self.front = tuple(self.tree.children[0]) if self.subtrees else ()
        self.deep = {
            b: tuple(t for t in self.tops if t in self.tree.subtree(b) and t != b)
            for b in self.front
            if b not in self.tops
        }
        self.branches: dict = {}
        # the step-rejection test h*eta > c*theta (parallel method only)
        self.eta = cfg.reject and cfg.method == "parallel"
        self.last_eta = 0.0
        self.actors: list = []
        self.driver_s = 0.0  # seconds the driver computed in steps (not waiting)

    def initial(self, padding: str = "unit"):
        """The product start, with ``padding`` zero-weight directions (``"unit"`` or
        ``"random"``: the runner resolves the config's ``"auto"``)."""
        vectors = self.cfg.start_vectors()
        return st.product_state(self.tree, vectors, rank=self.cfg.r_min, padding=padding)

    # -- state ------------------------------------------------------------------------
    def load(self, state) -> None:
        """Start from the orthonormal TTN ``state`` (a list of arrays)."""
        self._ranks = st.edge_ranks(self.tree, state)
        if not self.subtrees:
            self.state = list(state)
            self.proj = integrator.projections(self.layout, self.state)
            return
        if not self.actors:
            self.actors = self._start_actors(state)
        else:
            resets = [
                a.reset({n: state[n] for n in self.tree.subtree(c)})
                for a, c in zip(self.actors, self.tops, strict=True)
            ]
            self.ex.gather(resets)
        tops = self.ex.gather([a.top_projections() for a in self.actors])
        tops = dict(zip(self.tops, tops, strict=True))
        if self.deep:
            parts = {b: self._branch_part(state, b) for b in self.deep}
            if not self.branches:
                calls = [
                    (
                        (self.layout, b, cut, parts[b], {c: tops[c] for c in cut}, self.trunc),
                        {"method": self.cfg.method, "tol": self.cfg.tol},
                    )
                    for b, cut in self.deep.items()
                ]
                # on other workers than the subtrees' first groups, where there are
                handles = self.ex.actors(BranchWorker, calls, first=self._groups)
                self.branches = dict(zip(self.deep, handles, strict=True))
                got = [self.branches[b].top_projections() for b in self.deep]
            else:
                got = [
                    self.branches[b].reset(parts[b], {c: tops[c] for c in cut})
                    for b, cut in self.deep.items()
                ]
            tops.update(zip(self.deep, self.ex.gather(got), strict=True))
        mine = set(integrator.held(self.tree, 0, self.front))
        self.state = [state[n] if n in mine else None for n in range(self.tree.n_nodes)]
        self._held_proj(tops)

    def _branch_part(self, state, b: int) -> dict:
        """The tensors a branch under the root's child ``b`` holds."""
        return {n: state[n] for n in integrator.held(self.tree, b, self.deep[b])}

    def _held_proj(self, top_proj: dict) -> None:
        """Projections of the root's children (the root's own entry stays empty), from
        ``top_proj`` (node -> projections; entries other than the root's children are
        ignored)."""
        known = {c: top_proj[c] for c in self.front}
        self.proj = integrator.projections(self.layout, self.state, 0, known=known)

    def _start_actors(self, state) -> list:
        """One handle per subtree top: a member of a :class:`.worker.SubtreeGroup` actor
        (one group per subtree, or per GPU with ``cuda``)."""
        device = self.cfg.device
        gpus = 1 if device == "cuda" else 0
        parts = [{n: state[n] for n in self.tree.subtree(c)} for c in self.tops]
        n_groups = self._groups = subtree_slots(self.ex, device, len(self.tops))
        # subtree i goes to group i % n_groups: one subtree per stateful worker, except
        # with fewer GPUs than subtrees
        calls = [
            (
                (
                    self.layout,
                    {c: parts[i] for i, c in enumerate(self.tops) if i % n_groups == g},
                    self.trunc,
                    self.cfg.method,
                    self.cfg.tol,
                    device,
                ),
                {},
            )
            for g in range(n_groups)
        ]
        groups = self.ex.actors(SubtreeGroup, calls, gpus=gpus)
        return [_Member(groups[i % n_groups], c) for i, c in enumerate(self.tops)]

    def full_state(self) -> list:
        if not self.subtrees:
            return self.state
        out = list(self.state)
        holders = self.actors + list(self.branches.values())
        for part in self.ex.gather([a.tensors() for a in holders]):
            for n, arr in part.items():
                out[n] = arr
        return out

    # -- stepping ---------------------------------------------------------------------
    def advance(self, h: float, ramp: int = 0) -> int:
        """One accepted step of size ``h`` (with ``ramp > 0``: taken as the ``ramp + 1``
        steps of `integrator.ramp_steps`); returns how many times a step was redone. Its
        wall seconds, redone attempts included, are then ``last_step_s``."""
        t0 = time.perf_counter()
        try:
            return sum(self._advance(s) for s in integrator.ramp_steps(h, ramp))
        finally:
            self.last_step_s = time.perf_counter() - t0

    def _advance(self, h: float) -> int:
        redone = 0
        while True:
            untruncated, grown_max = (
                self._step_subtrees(h) if self.subtrees else self._step_nodes(h)
            )
            # the dropped two-new-index blocks are too large for the truncation tolerance
            norm = self.observe(observables=False)["norm"] if self.cfg.relative else 1.0
            scale = self.cfg.theta * norm
            too_coarse = self.last_eta > self.cfg.c * scale
            if (
                not self.cfg.reject
                or not (untruncated or too_coarse)
                or redone >= MAX_REDO
                or grown_max >= self.cfg.r_max
            ):
                return redone
            # nothing was truncated, or the dropped blocks are large: the rank may need
            # to grow by more than one augmentation allows; redo the step from the
            # augmented bases
            redone += 1
            self._restart_augmented()

    def _step_nodes(self, h):
        self._start = (self.state, self.proj)
        new, info = integrator.step(
            self.layout,
            self.state,
            h,
            self.trunc,
            method=self.cfg.method,
            tol=self.cfg.tol,
            proj=self.proj,
            map_fn=executor_map(self.ex, self.cfg.device),
            eta=self.eta,
        )
        self._info = info
        self.last_eta = info.eta
        old_max = max(st.edge_ranks(self.tree, self.state)[1:])
        self.state = new
        self._ranks = st.edge_ranks(self.tree, new)
        self.proj = integrator.projections(self.layout, new)
        return info.untruncated, old_max

    def _step_subtrees(self, h):
        try:
            return self._relayed_step(h)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """End the branches' half-done K-steps after a failed step (best effort: a lost
        worker's branch has nothing left to end)."""
        if not self.branches:
            return
        try:
            self.ex.gather([b.abandon() for b in self.branches.values()])
        except Exception:  # the step's own error is the one to raise
            pass

    def _relayed_step(self, h):
        lay, tree = self.layout, self.tree
        self._waited = 0.0
        ksteps = _Relay(
            self, "kstep", "start", "finish", lambda S, cb, need: (S, cb, h, self.eta, need)
        )
        truncs = _Relay(self, "truncate", "truncate_start", "truncate_finish", lambda P, s: (P, s))
        remote = integrator.Remote(
            tops=self.front, kstep=ksteps.call, truncate=truncs.call, gather=ksteps.gather
        )
        t0 = time.perf_counter()
        # the root's Galerkin step runs here while the subtrees work
        aug, _, eta2 = integrator.subtree_update(
            lay,
            self.state,
            0,
            self.state[0],
            integrator.root_bond_terms(lay),
            self.proj,
            h,
            "parallel",
            self.cfg.tol,
            eta=self.eta,
            remote=remote,
        )
        self.last_eta = float(np.sqrt(eta2)) if self.eta else 0.0
        T, sent = integrator.truncate_subtree(tree, aug, 0, self.trunc, remote=remote)
        got = dict(zip(sent, truncs.gather(list(sent.values())), strict=True))
        integrator.orthonormalize_subtree(tree, T, 0, R_of={c: g[0] for c, g in got.items()})
        edges = integrator.edge_changes(tree, 0, aug, self.state, T, got)
        for n, _, _, new in edges:
            self._ranks[n] = new
        start = list(aug)
        start[0] = integrator.pad(np, self.state[0], aug[0].shape)
        self._start = start
        self.state = T
        self._held_proj({c: g[1] for c, g in got.items()})
        self.driver_s += time.perf_counter() - t0 - self._waited
        grown = [(a, n) for _, a, o, n in edges if a > o]
        untruncated = bool(grown) and all(a == n for a, n in grown)
        return untruncated, max(o for _, _, o, _ in edges)

    def _gather(self, futures) -> list:
        """The executor's gather, its waiting kept out of ``driver_s``."""
        t0 = time.perf_counter()
        try:
            return self.ex.gather(futures)
        finally:
            self._waited += time.perf_counter() - t0

    def _restart_augmented(self):
        if not self.subtrees:
            start = self._info.start_augmented
            self.state = start
            self._ranks = st.edge_ranks(self.tree, start)
            self.proj = integrator.projections(self.layout, start)
            return
        self.state = self._start
        tops = self.ex.gather([a.restart_augmented() for a in self.actors])
        tops = dict(zip(self.tops, tops, strict=True))
        got = [
            self.branches[b].restart_augmented({c: tops[c] for c in cut})
            for b, cut in self.deep.items()
        ]
        tops.update(zip(self.deep, self.ex.gather(got), strict=True))
        self._held_proj(tops)
        self._ranks = [1] + [None] * (self.tree.n_nodes - 1)  # unknown until the redo

    # -- observables ------------------------------------------------------------------
    def observe(self, observables: bool = True) -> dict:
        """Norm, energy, magnetisation per site (``<Sz>/S``; NaN at sites that are not
        spins) and, with ``observables``, the configured observables of the current
        state."""
        lay, proj = self.layout, self.proj
        state = [None] * self.tree.n_nodes
        state[0] = self.state[0]
        spins = [k for k in self.mag_keys if k is not None]
        vals = iter(integrator.expectations(lay, state, proj, spins) if spins else [])
        mz = [float("nan") if k is None else next(vals).real for k in self.mag_keys]
        out = {
            "norm": st.norm(state),
            "energy": integrator.energy(lay, state, proj),
            "magnetization": mz,
        }
        if self.obs_keys:
            got = integrator.expectations(lay, state, proj, self.obs_keys) if observables else None
            out["observables"] = got or [complex("nan+nanj")] * len(self.obs_keys)
        return out

    def busy(self) -> dict:
        """Compute seconds of the driver, of every subtree worker and of every branch
        (``subtrees`` only)."""
        if not self.subtrees:
            return {}
        out = {
            "driver_busy_s": self.driver_s,
            "subtree_busy_s": [
                float(b) for b in self.ex.gather([a.busy_s() for a in self.actors])
            ],
        }
        if self.branches:
            got = self.ex.gather([a.busy_s() for a in self.branches.values()])
            out["branch_busy_s"] = [float(b) for b in got]
        return out

    def ranks(self) -> list[int]:
        """Bond ranks of the edges above nodes 1, 2, ... (without shipping the state)."""
        return list(self._ranks[1:])


class _Relay:
    """One phase of a ``subtrees`` step (the K-steps or the truncations) on the subtrees
    under the root's children, called as :class:`~tilegraph.tasks.ttn.integrator.Remote`'s
    ``kstep``/``truncate`` and ``gather``.

    A subtree top is called once (``leaf``). A branch is called twice: ``first`` returns
    what its deeper subtrees are to do, which goes on to them as soon as every child of
    the root has been called (so they work while the driver does the root's step), and
    their results go to the branch's ``second``.

    Parameters
    ----------
    drv : BUGDriver
    leaf, first, second : str
        Method names: a subtree's, a branch's first and second call.
    args : callable
        ``args(*what) -> arguments`` of ``leaf`` and ``first`` from what ``Remote``
        passes after the node (and what a branch asks for after the deeper top).
    """

    def __init__(self, drv, leaf: str, first: str, second: str, args):
        self.drv, self.leaf, self.first, self.second, self.args = drv, leaf, first, second, args
        self.handles = dict(zip(drv.tops, drv.actors, strict=True))
        self.fired: dict = {}
        self.deep: dict | None = None  # branch -> {deeper top: future}

    def call(self, c, *what):
        if c in self.drv.branches:
            self.fired[c] = getattr(self.drv.branches[c], self.first)(*self.args(*what))
        else:
            self.fired[c] = getattr(self.handles[c], self.leaf)(*self.args(*what))
        if len(self.fired) == len(self.drv.front):
            self._relay()
        return c

    def _relay(self) -> None:
        """The branches' first answers, each passed on to its deeper subtrees as soon as
        it is in."""
        self.deep = {}
        for b in [c for c in self.fired if c in self.drv.branches]:
            (asks,) = self.drv._gather([self.fired[b]])
            self.deep[b] = {
                a[0]: getattr(self.handles[a[0]], self.leaf)(*self.args(*a[1:])) for a in asks
            }

    def gather(self, tokens) -> list:
        if self.deep is None:
            self._relay()
        direct = [c for c in tokens if c not in self.deep]
        deeper = [(b, d, f) for b in tokens if b in self.deep for d, f in self.deep[b].items()]
        got = self.drv._gather([self.fired[c] for c in direct] + [f for _, _, f in deeper])
        out = dict(zip(direct, got[: len(direct)], strict=True))
        results: dict = {b: {} for b in tokens if b in self.deep}
        for (b, d, _), r in zip(deeper, got[len(direct) :], strict=True):
            results[b][d] = r
        second = [getattr(self.drv.branches[b], self.second)(r) for b, r in results.items()]
        out.update(zip(results, self.drv._gather(second), strict=True))
        return [out[c] for c in tokens]


__all__ = ["BUGDriver", "executor_map", "MAX_REDO"]
