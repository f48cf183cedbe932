"""Step sizes from the user's problem itself (``auto_steps``).

The built-in presets carry steps tuned to their problems. On the user's own problem
(``problem.kind=dataset`` or ``custom``) the steps the config leaves unset come from the
problem at the start point ``x0``, before the first iteration:

* ``tau``, ``tau_v`` = 0.5 / L with L the largest eigenvalue of the lower Hessians
  ``hess_yy_g`` of a seeded sample of blocks (power iteration on Hessian-vector
  products, full block data);
* ``h_floor`` = half the smallest such eigenvalue (v1's Hessian estimate is not clipped
  above the true curvature);
* ``v_bound`` = 10 x the largest ``|v_i*| = |H_i^-1 grad_y f_i|`` at ``x0`` (not binding
  near the start; the ball only guards against blow-ups);
* the upper step from a secant estimate of the upper curvature: the exact hypergradient
  at ``x0`` and at ``x0 - delta g / |g|`` give ``L_F``; the effective step per iteration
  is ``0.5 / L_F`` (``0.125 / L_F`` for F2SA; ``eta`` rescaled by ``m / I`` under
  ``eta_scaling=blocks``);
* ``decay_epochs`` = None: a constant upper step (the variance-reduced estimators do not
  need a decaying one, and halving froze ``x`` far from the optimum on problems with
  other curvature than the presets');
* ``penalty`` (F2SA's multiplier) = 10;
* ``problem.kind=dataset``, whose lower Hessians are ``A_i + diag(exp(x))``: the box
  edge ``x_max = log(4 L_A)`` (``L_A`` the largest eigenvalue of the data terms ``A_i``,
  i.e. ``L`` less ``exp(x0)``) and ``tau = tau_v = 0.5 / (L_A + exp(x_max))``, so that
  the lower steps stay stable wherever ``x`` goes in the box. A penalty 4x the data's
  curvature already shrinks a feature out; the optima of users' ridge problems often lie
  at ``lambda -> infinity`` for some features (and overflow ``exp`` there). On the
  diabetes study (``benchmarks/bilevel_study.py``) the box costs 0.06 % of the optimal
  validation loss.

The estimates run as tasks where the blocks' data are.
"""

from __future__ import annotations

import numpy as np
from tilegraph.tasks.devices import deterministic_blas

#: The config fields ``auto_steps`` fills (when the config does not set them).
AUTO_FIELDS = ("tau", "tau_v", "h_floor", "v_bound", "eta", "decay_epochs", "penalty", "x_max")

#: Blocks sampled for the lower curvature.
SAMPLE = 8


@deterministic_blas()
def block_curvature(blocks, *, problem, x, iters: int = 30):
    """Per block: ``(largest, smallest eigenvalue of hess_yy_g, |v_i*|)`` at ``x`` and the
    block's exact lower solution (power iterations on Hessian-vector products)."""
    from tilegraph.tasks.bilevel.hypergradient import solve_lower

    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in blocks:
        i = int(i)
        y = solve_lower(problem, i, x)
        rng = np.random.default_rng([7, i])
        v = rng.standard_normal(problem.dim_y)
        lam = 0.0
        for _ in range(iters):
            w = np.asarray(problem.hvp_yy_g(i, x, y, v / np.linalg.norm(v)))
            lam, v = float(np.linalg.norm(w)), w
            if lam == 0.0:  # H v = 0: not strongly convex, refused below
                break
        top = lam
        v = rng.standard_normal(problem.dim_y)
        for _ in range(iters):  # the top of (top I - H): top - smallest eigenvalue
            norm = np.linalg.norm(v)
            if norm == 0.0:  # H = top I (exactly, on what was seen): smallest = top
                break
            u = v / norm
            v = top * u - np.asarray(problem.hvp_yy_g(i, x, y, u))
        low = top - float(np.linalg.norm(v))
        # low over-estimates the smallest eigenvalue (|B u| <= |B| for B = top I - H), so
        # low <= 0 means H is not positive definite
        if not (np.isfinite(top) and np.isfinite(low) and top > 0.0 and low > 1e-12 * top):
            raise ValueError(
                f"block {i}: the lower Hessian's eigenvalues came out {top!r} (largest) and "
                f"{low!r} (smallest) at x0; hess_yy_g must be finite and positive definite "
                "(or set tau, tau_v, h_floor, v_bound and eta yourself)"
            )
        H = np.asarray(problem.hess_yy_g(i, x, y))
        vstar = np.linalg.solve(H, np.asarray(problem.grad_y_f(i, x, y)))
        out.append((top, low, float(np.linalg.norm(vstar))))
    return out


def resolve(cfg, ex, prob, problem, ev) -> tuple[object, dict]:
    """The config with the unset :data:`AUTO_FIELDS` filled from the problem, and what
    was chosen (recorded in the run's metrics as ``auto_steps``)."""
    todo = [f for f in AUTO_FIELDS if f not in cfg.model_fields_set]
    if not cfg.auto() or not todo:
        return cfg, {}
    m, I = problem.m, cfg.blocks_per_iter
    x0 = np.asarray(problem.x0, dtype=np.float64)
    rng = np.random.default_rng([cfg.seed, 2**30])
    sample = np.sort(rng.choice(m, size=min(m, SAMPLE), replace=False))
    groups = [g for g in np.array_split(sample, min(len(sample), max(1, ex.n_workers))) if g.size]
    stats = [s for part in ex.gather(ex.map(block_curvature, groups, problem=prob, x=x0))
             for s in part]  # fmt: skip
    L = max(s[0] for s in stats)
    mu = min(s[1] for s in stats)
    vmax = max(s[2] for s in stats)
    tau = 0.5 / L
    if cfg.problem.kind == "dataset":  # lower Hessians A_i + diag(exp(x))
        L_A = L - float(np.min(np.exp(x0)))
        x_max = cfg.x_max if cfg.x_max is not None else float(np.log(4.0 * L_A))
        x_min = cfg.upper_box()[0]
        if x_min > x_max:
            raise ValueError(
                f"x_min={x_min:g} is above the box edge auto_steps chose from the data, "
                f"x_max = log(4 L_A) = {x_max:.3g}: set x_max too, or lower x_min"
            )
        tau = 0.5 / (L_A + float(np.exp(x_max)))
    chosen: dict = {
        "tau": tau,
        "tau_v": tau,
        "h_floor": max(0.5 * mu, 1e-8),
        "v_bound": max(10.0 * vmax, 1.0),
        "decay_epochs": None,
        # F2SA's multiplier: its estimator's variance grows with it; 100 (the preset
        # value) left F2SA diverging at the upper step above on a ridge problem
        "penalty": 10.0,
    }
    if cfg.problem.kind == "dataset":
        chosen["x_max"] = x_max
    # the upper curvature along the first descent direction (exact hypergradients)
    ev(x0)
    g0 = ev.grad
    gn = float(np.linalg.norm(g0))
    if gn > 0:
        delta = 1e-2 * (1.0 + float(np.linalg.norm(x0)))
        ev(x0 - delta * g0 / gn)
        L_F = float(np.linalg.norm(ev.grad - g0)) / delta
        # F2SA's estimator (lam times a difference of two lower solutions) is noisier:
        # a quarter of that step (the full one diverged on a ridge problem)
        step = (0.125 if cfg.method == "f2sa" else 0.5) / max(L_F, 1e-12)
        scale = I / m if cfg.eta_scaling == "blocks" else 1.0
        chosen["eta"] = step / scale
    # six significant digits: the estimates come from tasks whose last bits can differ
    # between processes (BLAS kernels pick paths by alignment), and the run's iterates
    # must not
    chosen = {k: v if v is None else float(f"{v:.6g}") for k, v in chosen.items() if k in todo}
    info = {**chosen, "lower_curvature": [mu, L], "v_star_max": vmax}
    return cfg.model_copy(update=chosen), info


class Plateau:
    """How often ``plateau_epochs`` has halved the upper step: once whenever the mean
    exact objective ``F`` over the last ``patience`` iterations is no lower than over the
    ``patience`` iterations before (both windows after the last halving).

    A constant step leaves a stochastic method at a noise floor proportional to the step;
    on the user's own problems the floor can lie above the tolerance (blocks that differ
    much, a small ``I / m``). Means of windows, not a best-so-far, so that one lucky low
    of the noisy iterates does not halve the step again and again. The count is a
    function of the history alone, which the checkpoints keep, so a resumed run halves
    where an uninterrupted one does; :meth:`update` looks only at the points it has not
    seen.

    Parameters
    ----------
    patience : float
        The window length in iterations.
    """

    def __init__(self, patience: float):
        self.patience = float(patience)
        self.halvings, self.start, self.seen = 0, None, 0

    def update(self, iterations, objectives) -> int:
        """The halvings after the history points ``(iterations, objectives)`` (the same
        sequences as before, possibly longer)."""
        it = np.asarray(iterations, dtype=np.float64)
        F = np.asarray(objectives, dtype=np.float64)
        p = self.patience
        for k in range(self.seen, it.size):
            now = it[k]
            if self.start is None:
                self.start = now
            if now - self.start < 2 * p:
                continue
            a = int(np.searchsorted(it, now - 2 * p, side="right"))
            b = int(np.searchsorted(it, now - p, side="right"))
            if a < b <= k and F[b : k + 1].mean() >= F[a:b].mean():
                self.halvings, self.start = self.halvings + 1, now
        self.seen = it.size
        return self.halvings


def plateau_halvings(iterations, objectives, patience: float) -> int:
    """:class:`Plateau`'s count for a whole history."""
    return Plateau(patience).update(iterations, objectives)
