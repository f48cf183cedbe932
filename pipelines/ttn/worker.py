"""Stateful workers of the ``subtrees`` schedule: each holds one subtree of the tree.

The subtree's tensors stay on its worker between steps. Per step the driver sends the
top's environment (``S`` and the bond terms, small ``k x k`` matrices) and gets back
the coefficients of the new basis directions; after the truncation of the nodes above
it sends the kept singular vectors and gets back the subtree's ``R`` factor and its
projections.

Devices: the driver always works in NumPy. A worker with ``device="cuda"`` (CuPy on its
GPU) or ``"array-api-strict"`` (the same generic code path, checked on a CPU) moves what
it is sent to its device, keeps its subtree there, and returns NumPy arrays. The
``nodes`` schedule does the same per task with :func:`device_task`.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
from array_api_compat import array_namespace
from tilegraph.tasks.devices import array_module, to_device, to_host
from tilegraph.tasks.ttn import integrator
from tilegraph.tasks.ttn.state import bond_matrix


def device_task(device: str, fn, *args):
    """``fn(*args)`` on ``device``: NumPy arguments moved there, results back to NumPy
    (one task of the ``nodes`` schedule; ``cuda`` tasks ask for one GPU)."""
    xp = array_module(device)
    return to_host(fn(*to_device(xp, args)), copy=True)


class SubtreeWorker:
    """The subtree under ``top`` and its part of every step.

    Parameters
    ----------
    layout : tasks.ttn.integrator.OperatorLayout
    top : int
        Node id of the subtree's top.
    tensors : dict of int to array
        The subtree's orthonormal tensors.
    trunc : tasks.ttn.integrator.Truncation
    method : str
    tol : float
        Lanczos tolerance.
    device : {"cpu", "cuda", "array-api-strict"}
        Where the subtree is kept and its kernels run: NumPy, CuPy on this worker's GPU,
        or array-api-strict arrays (the GPU code path on a CPU). Arguments arrive and
        results leave as NumPy arrays.
    """

    #: Tops of deeper subtrees held elsewhere (a :class:`BranchWorker`'s) and their
    #: projections; none here.
    cut: tuple = ()
    known: dict = {}

    def __init__(self, layout, top, tensors, trunc, method="parallel", tol=1e-12, device="cpu"):
        self.layout, self.top, self.trunc = layout, top, trunc
        self.method, self.tol = method, tol
        self.device = device
        self.xp = array_module(device)
        self.busy = 0.0  # seconds spent computing (not waiting) on this worker
        self.reset(tensors)

    def reset(self, tensors) -> dict:
        """Hold ``tensors`` (node id -> array) from now on; returns the top projections."""
        self.state = [None] * self.layout.tree.n_nodes
        for n, a in tensors.items():
            self.state[int(n)] = self._dev(a)
        self._project()
        self.aug = None
        return self._host(self.proj[self.top])

    def _project(self) -> None:
        """The projections of the nodes held here (those of ``cut`` are ``known``)."""
        self.proj = integrator.projections(self.layout, self.state, self.top, known=self.known)

    def top_projections(self) -> dict:
        """``X_top^H A_key X_top`` for the keys of the top node."""
        return self._host(self.proj[self.top])

    # -- device <-> host (identities on the CPU) ----------------------------------------
    def _dev(self, obj):
        return to_device(self.xp, obj)

    def _host(self, obj):
        # a copy: nothing the driver holds aliases this worker's device memory
        return obj if self.xp is np else to_host(obj, copy=True)

    def _c_in(self, S):
        """The top's old tensor times its environment ``S`` (``r x k``)."""
        old = self.state[self.top]
        if self.layout.tree.is_leaf(self.top):
            return old @ S
        xp = array_namespace(old)
        return xp.reshape(bond_matrix(xp, old) @ S, old.shape[:-1] + (S.shape[1],))

    def _update(self, c_in, bond_terms, h, eta, need_p, remote=None):
        """:func:`~tilegraph.tasks.ttn.integrator.subtree_update` of this subtree."""
        return integrator.subtree_update(
            self.layout,
            self.state,
            self.top,
            c_in,
            bond_terms,
            self.proj,
            h,
            self.method,
            self.tol,
            eta=eta,
            remote=remote,
            need_p_top=need_p,
        )

    def kstep(self, S, bond_terms, h: float, eta: bool = False, need_p=None):
        """The recursive K-step of the subtree.

        Returns ``coeff`` (``p x k``), and with ``eta`` ``(coeff, eta2, mixed, phat)``:
        the subtree's part of the step-rejection test, its top's mixed projections and
        its top's augmented projections for the keys ``need_p`` (what a parent held by
        the driver below the root needs).
        """
        t0 = time.perf_counter()
        S, bond_terms = self._dev((S, bond_terms))
        self.aug, top_new, eta2 = self._update(self._c_in(S), bond_terms, h, eta, need_p)
        out = self._host((top_new[1], eta2, top_new[2], top_new[3]) if eta else top_new[1])
        self.busy += time.perf_counter() - t0
        return out

    def truncate(self, P, sig):
        """Truncate with what the parent kept on the top edge; returns ``(R, projections
        of the top, [(node, augmented, old, new rank)] per edge below the top)``."""
        t0 = time.perf_counter()
        tree = self.layout.tree
        P, sig = self._dev((P, sig))
        T = integrator.truncate_subtree(tree, self.aug, self.top, self.trunc, P, sig)
        R = integrator.orthonormalize_subtree(tree, T, self.top)
        edges = integrator.edge_changes(tree, self.top, self.aug, self.state, T, {})
        self.state = T
        self._project()
        out = self._host((R, self.proj[self.top], edges))
        self.busy += time.perf_counter() - t0
        return out

    def restart_augmented(self) -> dict:
        """Make the last step's augmented bases the current ones (a rejected step is redone
        from them); returns the new top projections."""
        self.state = list(self.aug)
        self._project()
        return self._host(self.proj[self.top])

    def pid(self) -> int:
        """Process id of the worker holding this subtree (placement diagnostics)."""
        return os.getpid()

    def busy_s(self) -> float:
        """Seconds this worker spent in ``kstep`` and ``truncate``."""
        return self.busy

    def tensors(self) -> dict:
        """The subtree's current tensors (for checkpoints and dense references)."""
        nodes = integrator.held(self.layout.tree, self.top, self.cut)
        return self._host({n: self.state[n] for n in nodes})


class SubtreeGroup:
    """One or several :class:`SubtreeWorker` in one stateful worker, called in turn.

    Every subtree has a group of its own, except with ``device="cuda"``: there every
    stateful worker holds one GPU, so when there are more subtrees than GPUs they are
    shared out over one group per GPU.

    Parameters
    ----------
    layout, trunc, method, tol, device
        As for :class:`SubtreeWorker`.
    parts : dict of int to dict
        ``top -> tensors`` of each subtree this group holds.
    """

    def __init__(self, layout, parts, trunc, method="parallel", tol=1e-12, device="cpu"):
        self.members = {
            int(top): SubtreeWorker(layout, top, tensors, trunc, method, tol, device)
            for top, tensors in parts.items()
        }

    def call(self, top: int, name: str, *args):
        """``SubtreeWorker.name(*args)`` of the subtree under ``top``."""
        return getattr(self.members[int(top)], name)(*args)

    def pid(self) -> int:
        return os.getpid()


class BranchWorker(SubtreeWorker):
    """The nodes under ``top`` down to the tops ``cut`` of deeper subtrees, which other
    stateful workers hold (``subtree_depth`` > 1: one per child of the root).

    Its K-step and truncation take two calls each, as the driver relays between it and
    the deeper subtrees: :meth:`start` works out the environments of the nodes held here
    and returns the deeper subtrees' (``[(top, S, bond_terms, need_p)]``), then does the
    held nodes' Galerkin steps in a background thread while those run; :meth:`finish`
    takes their results and returns what :meth:`SubtreeWorker.kstep` would.
    :meth:`truncate_start` and :meth:`truncate_finish` do the same for the truncation.
    The arithmetic is the same as where one process holds every node. Always NumPy, as
    the driver's own nodes.

    Parameters
    ----------
    layout, top, trunc, method, tol
        As for :class:`SubtreeWorker`.
    cut : sequence of int
        Tops of the deeper subtrees under ``top``.
    tensors : dict of int to array
        The tensors of the nodes held here (under ``top``, above ``cut``).
    known : dict of int to dict
        The projections of the tops ``cut``.
    """

    def __init__(self, layout, top, cut, tensors, known, trunc, method="parallel", tol=1e-12):
        self.cut, self.known = tuple(int(c) for c in cut), dict(known)
        self._run = None
        super().__init__(layout, top, tensors, trunc, method, tol, "cpu")

    def abandon(self) -> None:
        """End a K-step left half-done (its driver failed between the two calls); its
        background thread, which holds this worker, would wait for results otherwise."""
        run, self._run = self._run, None
        if run is not None:
            run["inbox"].put(None)
            run["thread"].join()

    def reset(self, tensors, known=None) -> dict:
        self.abandon()
        if known is not None:
            self.known = dict(known)
        return super().reset(tensors)

    def start(self, S, bond_terms, h: float, eta: bool = False, need_p=None) -> list:
        """First half of the K-step (arguments as :meth:`SubtreeWorker.kstep`): returns
        ``[(top, S, bond_terms, need_p)]`` of the deeper subtrees."""
        self.abandon()
        c_in = self._c_in(S)
        asked: list = []
        asked_all = threading.Event()
        inbox: queue.Queue = queue.Queue(maxsize=1)
        run = {"eta": eta, "inbox": inbox, "error": None, "out": None}

        def ask(c, S_c, bterms_c, need_c):
            asked.append((c, S_c, bterms_c, need_c))
            if len(asked) == len(self.cut):
                asked_all.set()
            return c

        def wait(tokens):
            got = inbox.get()
            if got is None:
                raise RuntimeError("the step was abandoned")
            return [got[c] for c in tokens]

        remote = integrator.Remote(tops=self.cut, kstep=ask, truncate=None, gather=wait)

        def work():
            # this thread's CPU seconds: it overlaps the actor's other calls (and, in
            # one process, the driver's), so wall time would count theirs too
            t0 = time.thread_time()
            try:
                run["out"] = self._update(c_in, bond_terms, h, eta, need_p, remote)
            except BaseException as error:  # raised again by start or finish
                run["error"] = error
            finally:
                self.busy += time.thread_time() - t0
                asked_all.set()

        run["thread"] = threading.Thread(target=work, name=f"ttn-branch-{self.top}", daemon=True)
        self._run = run
        run["thread"].start()
        asked_all.wait()
        if run["error"] is not None:
            run["thread"].join()
            raise run["error"]
        return asked

    def finish(self, results: dict):
        """Second half of the K-step: ``results`` (deeper top -> its K-step's result)."""
        run, self._run = self._run, None
        run["inbox"].put(results)
        run["thread"].join()
        if run["error"] is not None:
            raise run["error"]
        self.aug, top_new, eta2 = run["out"]
        return (top_new[1], eta2, top_new[2], top_new[3]) if run["eta"] else top_new[1]

    def truncate_start(self, P, sig) -> list:
        """First half of the truncation: returns ``[(top, P, sig)]`` of the deeper
        subtrees."""
        t0 = time.perf_counter()
        asked: list = []

        def ask(c, P_c, sig_c):
            asked.append((c, P_c, sig_c))
            return c

        remote = integrator.Remote(tops=self.cut, kstep=None, truncate=ask, gather=None)
        tree = self.layout.tree
        self._T, _ = integrator.truncate_subtree(
            tree, self.aug, self.top, self.trunc, P, sig, remote=remote
        )
        self.busy += time.perf_counter() - t0
        return asked

    def truncate_finish(self, got: dict):
        """Second half: ``got`` (deeper top -> its truncation's result); returns what
        :meth:`SubtreeWorker.truncate` would."""
        t0 = time.perf_counter()
        tree, T = self.layout.tree, self._T
        R = integrator.orthonormalize_subtree(
            tree, T, self.top, R_of={c: g[0] for c, g in got.items()}
        )
        edges = integrator.edge_changes(tree, self.top, self.aug, self.state, T, got)
        self.state, self._T = T, None
        self.known = {c: g[1] for c, g in got.items()}
        self._project()
        self.busy += time.perf_counter() - t0
        return R, self.proj[self.top], edges

    def restart_augmented(self, known=None) -> dict:
        """As :meth:`SubtreeWorker.restart_augmented`, with the deeper tops' new
        projections ``known``."""
        if known is not None:
            self.known = dict(known)
        return super().restart_augmented()
