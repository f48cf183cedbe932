"""Stateful workers of the ``subtrees`` schedule: each holds one subtree of the root.

The subtree's tensors stay on its worker between steps. Per step the driver sends the
child's environment (``S`` and the bond terms, small ``k x k`` matrices) and gets back
the coefficients of the new basis directions; after the root's truncation it sends the
kept singular vectors and gets back the subtree's ``R`` factor and its projections.
"""

from __future__ import annotations

import os
import time

from tasks.ttn import bug


class SubtreeWorker:
    """The subtree under ``top`` (a child of the root) and its part of every step.

    Parameters
    ----------
    layout : tasks.ttn.bug.Layout
    top : int
        Node id of the subtree's top.
    tensors : dict of int to array
        The subtree's orthonormal tensors.
    trunc : tasks.ttn.bug.Truncation
    method : str
    tol : float
        Lanczos tolerance.
    """

    def __init__(self, layout, top, tensors, trunc, method="parallel", tol=1e-12):
        self.layout, self.top, self.trunc = layout, top, trunc
        self.method, self.tol = method, tol
        self.busy = 0.0  # seconds spent computing (not waiting) on this worker
        self.reset(tensors)

    def reset(self, tensors) -> dict:
        """Hold ``tensors`` (node id -> array) from now on; returns the top projections."""
        self.state = [None] * self.layout.tree.n_nodes
        for n, a in tensors.items():
            self.state[int(n)] = a
        self.proj = bug.projections(self.layout, self.state, self.top)
        self.aug = None
        return self.proj[self.top]

    def top_projections(self) -> dict:
        """``X_top^H A_key X_top`` for the keys of the top node."""
        return self.proj[self.top]

    def kstep(self, S, bond_terms, h: float, eta: bool = False):
        """The recursive K-step of the subtree.

        Returns ``coeff`` (``p x k``), and with ``eta`` also ``(eta2, mixed)``: the
        subtree's part of the step-rejection test and its top's mixed projections.
        """
        t0 = time.perf_counter()
        tree = self.layout.tree
        old = self.state[self.top]
        if tree.is_leaf(self.top):
            c_in = old @ S
        else:
            c_in = (old.reshape(-1, old.shape[-1]) @ S).reshape(old.shape[:-1] + (S.shape[1],))
        self.aug, top_new, eta2 = bug.subtree_update(
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
        )
        self.busy += time.perf_counter() - t0
        if eta:
            return top_new[1], eta2, top_new[2]
        return top_new[1]

    def truncate(self, P, sig):
        """Truncate with what the root kept on the top edge; returns ``(R, projections
        of the top, [(node, augmented, old, new rank)] per edge below the top)``."""
        t0 = time.perf_counter()
        tree = self.layout.tree
        T = bug.truncate_subtree(tree, self.aug, self.top, self.trunc, P, sig)
        R = bug.orthonormalize_subtree(tree, T, self.top)
        edges = [
            (n, int(self.aug[n].shape[-1]), int(self.state[n].shape[-1]), int(T[n].shape[-1]))
            for n in tree.subtree(self.top)
            if n != self.top
        ]
        self.state = T
        self.proj = bug.projections(self.layout, self.state, self.top)
        self.busy += time.perf_counter() - t0
        return R, self.proj[self.top], edges

    def restart_augmented(self) -> dict:
        """Make the last step's augmented bases the current ones (a rejected step is redone
        from them); returns the new top projections."""
        self.state = list(self.aug)
        self.proj = bug.projections(self.layout, self.state, self.top)
        return self.proj[self.top]

    def pid(self) -> int:
        """Process id of the worker holding this subtree (placement diagnostics)."""
        return os.getpid()

    def busy_s(self) -> float:
        """Seconds this worker spent in ``kstep`` and ``truncate``."""
        return self.busy

    def tensors(self) -> dict:
        """The subtree's current tensors (for checkpoints and dense references)."""
        return {n: self.state[n] for n in self.layout.tree.subtree(self.top)}
