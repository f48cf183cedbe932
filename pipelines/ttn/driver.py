"""How one step is scheduled on the executor.

``nodes``: every leaf K-step and every node Galerkin step of a step is one executor task
(one ``map`` per step); the driver holds the network and ships each task its node's
tensors. ``subtrees``: one stateful worker per subtree (under the nodes ``subtree_depth``
edges below the root) keeps it between steps and runs its K-step (its leaf K-steps and
node Galerkin steps in turn); the driver holds the nodes above, does the root's Galerkin
step itself and runs those of the other nodes above as executor tasks.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from tilegraph.tasks.devices import slots
from tilegraph.tasks.ttn import integrator
from tilegraph.tasks.ttn import state as st

from .worker import SubtreeGroup, device_task

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
        # the step-rejection test h*eta > c*theta (parallel method only)
        self.eta = cfg.reject and cfg.method == "parallel"
        self.last_eta = 0.0
        self.actors: list = []
        self.driver_s = 0.0  # seconds the driver computed in steps (not waiting)

    def initial(self):
        return st.product_state(self.tree, self.cfg.start_vectors(), rank=self.cfg.r_min)

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
        away = integrator.below(self.tree, self.tops) | set(self.tops)
        self.state = [None if n in away else state[n] for n in range(self.tree.n_nodes)]
        tops = self.ex.gather([a.top_projections() for a in self.actors])
        self._held_proj(dict(zip(self.tops, tops, strict=True)))

    def _held_proj(self, top_proj: dict) -> None:
        """Projections of the nodes the driver holds, from those of the subtrees' tops."""
        self.proj = integrator.projections(self.layout, self.state, 0, known=top_proj)

    def _start_actors(self, state) -> list:
        """One handle per subtree top: a member of a :class:`.worker.SubtreeGroup` actor
        (one group per subtree, or per GPU with ``cuda``)."""
        device = self.cfg.device
        gpus = 1 if device == "cuda" else 0
        parts = [{n: state[n] for n in self.tree.subtree(c)} for c in self.tops]
        n_groups = subtree_slots(self.ex, device, len(self.tops))
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
        for part in self.ex.gather([a.tensors() for a in self.actors]):
            for n, arr in part.items():
                out[n] = arr
        return out

    # -- stepping ---------------------------------------------------------------------
    def advance(self, h: float) -> int:
        """One accepted step of size ``h``; returns how many times it was redone. Its wall
        seconds, redone attempts included, are then ``last_step_s``."""
        t0 = time.perf_counter()
        try:
            return self._advance(h)
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
        lay, tree = self.layout, self.tree
        actor = dict(zip(self.tops, self.actors, strict=True))
        self._waited = 0.0
        remote = integrator.Remote(
            tops=tuple(self.tops),
            kstep=lambda c, S, cb, need_p: actor[c].kstep(S, cb, h, self.eta, need_p),
            truncate=lambda c, P, sig: actor[c].truncate(P, sig),
            gather=self._gather,
        )
        t0 = time.perf_counter()
        # The nodes above the subtrees do their Galerkin steps while the subtrees work:
        # the root alone here, several as executor tasks (here they would queue behind
        # each other: above depth 3 of a binary tree are 7 of its 15 inner nodes).
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
            map_fn=self._top_map() if len(self.tops) > len(tree.children[0]) else None,
            eta=self.eta,
            remote=remote,
        )
        self.last_eta = float(np.sqrt(eta2)) if self.eta else 0.0
        T, sent = integrator.truncate_subtree(tree, aug, 0, self.trunc, remote=remote)
        got = dict(zip(sent, self._gather(list(sent.values())), strict=True))
        integrator.orthonormalize_subtree(tree, T, 0, R_of={c: g[0] for c, g in got.items()})
        edges = []
        for n in range(1, tree.n_nodes):
            if n in got:
                par = tree.parent[n]
                i = tree.children[par].index(n)
                old = int(self.state[par].shape[i])
                edges.append((n, int(aug[par].shape[i]), old, int(got[n][0].shape[0])))
                edges.extend(got[n][2])
            elif aug[n] is not None:
                new = int(T[n].shape[-1])
                edges.append((n, int(aug[n].shape[-1]), int(self.state[n].shape[-1]), new))
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

    def _top_map(self):
        """A ``map_fn`` for the jobs of the nodes above the subtrees: executor tasks in
        NumPy, as the root's step on the driver (with ``cuda`` the actors hold every GPU
        for their lifetime), gathered by :meth:`_gather`."""
        return lambda fn, *iterables: self._gather(self.ex.map(fn, *iterables))

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
        self._held_proj(dict(zip(self.tops, tops, strict=True)))
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
        """Compute seconds of the driver and of every subtree worker (``subtrees`` only)."""
        if not self.subtrees:
            return {}
        return {
            "driver_busy_s": self.driver_s,
            "subtree_busy_s": [
                float(b) for b in self.ex.gather([a.busy_s() for a in self.actors])
            ],
        }

    def ranks(self) -> list[int]:
        """Bond ranks of the edges above nodes 1, 2, ... (without shipping the state)."""
        return list(self._ranks[1:])


__all__ = ["BUGDriver", "executor_map", "MAX_REDO"]
