"""One sampled block's update for BSVRB v1/v2 and the baselines, and the driver's upper
update.

A block's state is one flat vector (see :func:`state_layout`), so a task reads and
writes exactly one Zarr chunk. ``block_step`` is a pure function of that state, the
upper iterates ``x_t`` and ``x_{t-1}``, the batch indices and how many iterations the
block waited since its last update; it returns the new state and the block's two
hypergradient terms ``G_i(x_t)`` and ``G_i(x_{t-1})`` on the same samples (the STORM
pair; the baselines return ``G_i(x_t)`` twice).

Methods (Hu et al., ICML 2023; Kwon et al., ICML 2023 for F2SA):

``bsvrb-v1``
    MSVR estimators ``s_i ~ grad_y g_i`` and ``H_i ~ d2 g_i / dy2`` (eigenvalues clipped
    to ``h_floor``); hypergradient term ``grad_x f_i - (d2 g_i / dx dy) H_i^-1 grad_y f_i``.
``bsvrb-v2``
    MSVR estimators ``s_i ~ grad_y g_i`` and ``u_i ~ H v_i - grad_y f_i`` (Hessian-vector
    products only); ``v_i <- Proj_{|v| <= v_bound}(v_i - tau_v u_i)``.
``sgd``
    Plain stochastic hypergradient: one SGD step on ``y_i`` and on ``v_i``, no variance
    reduction, no momentum.
``f2sa``
    Fully first order: ``y_i`` minimises ``f_i + lam g_i``, ``z_i`` minimises ``g_i``, the
    term is ``grad_x f_i + lam (grad_x g_i(x, y_i) - grad_x g_i(x, z_i))``.

MSVR: ``s <- (1 - alpha) s + (alpha + gamma) h(x_t, y_t) - gamma h(x_{t-1}, y_{t-1})`` on
one batch. With ``eager=True`` every block's ``y_i`` moves by ``-tau s_i`` every
iteration (the authors' v1; done lazily: a block that waited ``k`` iterations catches
up by ``k tau s_i`` when next sampled); with ``eager=False`` only sampled blocks move.

The term at ``x_t`` uses the block's ``H_i`` / ``v_i`` after this iteration's update and
the term at ``x_{t-1}`` the ones before it, so that ``G_i(x_{t-1})`` is exactly what
``G_i(x_t)`` was one iteration earlier on the same samples (the authors' code uses the
estimate from the start of iteration ``t`` at ``x_t`` and the one from the start of
iteration ``t - 1`` at ``x_{t-1}``).
"""

from __future__ import annotations

from dataclasses import dataclass

from array_api_compat import array_namespace

from .problems import BlockProblem

METHODS = ("bsvrb-v1", "bsvrb-v2", "sgd", "f2sa")


@dataclass(frozen=True)
class StepSizes:
    """Step sizes and estimator parameters of the block updates.

    Attributes
    ----------
    tau : float
        Lower step (``y_i``; F2SA's ``z_i``; F2SA's ``y_i`` uses ``tau / (1 + penalty)``).
    tau_v : float
        Step of ``v_i`` (v2 and ``sgd``).
    alpha, gamma : float
        MSVR parameters.
    h_floor : float
        Smallest eigenvalue kept in v1's Hessian estimate.
    v_bound : float
        Radius of the ball ``v_i`` is projected on.
    penalty : float
        F2SA's multiplier ``lam``.
    eager : bool
        Lower variables move every iteration (see the module docstring).
    """

    tau: float = 0.1
    tau_v: float = 0.1
    alpha: float = 0.9
    gamma: float = 1.0
    h_floor: float = 1e-3
    v_bound: float = 10.0
    penalty: float = 100.0
    eager: bool = False


def state_layout(method: str, dim_y: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Where each part of a block's flat state lives: ``name -> (offset, shape)``."""
    parts = {
        "bsvrb-v1": [
            ("y", (dim_y,)),
            ("y_prev", (dim_y,)),
            ("s", (dim_y,)),
            ("H", (dim_y, dim_y)),
        ],
        "bsvrb-v2": [
            ("y", (dim_y,)),
            ("y_prev", (dim_y,)),
            ("s", (dim_y,)),
            ("v", (dim_y,)),
            ("v_prev", (dim_y,)),
            ("u", (dim_y,)),
        ],
        "sgd": [("y", (dim_y,)), ("v", (dim_y,))],
        "f2sa": [("y", (dim_y,)), ("z", (dim_y,))],
    }[method]
    out, off = {}, 0
    for name, shape in parts:
        out[name] = (off, shape)
        off += 1 if not shape else int(_prod(shape))
    return out


def state_size(method: str, dim_y: int) -> int:
    """Length of a block's flat state vector."""
    layout = state_layout(method, dim_y)
    off, shape = list(layout.values())[-1]
    return off + _prod(shape)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def unpack(method: str, dim_y: int, flat) -> dict:
    """Split a flat state vector into its named parts (views where the backend allows)."""
    xp = array_namespace(flat)
    return {
        k: xp.reshape(flat[off : off + _prod(shape)], shape)
        for k, (off, shape) in state_layout(method, dim_y).items()
    }


def pack(method: str, dim_y: int, parts: dict):
    """Inverse of :func:`unpack`."""
    xp = array_namespace(*parts.values())
    return xp.concat([xp.reshape(parts[k], (-1,)) for k in state_layout(method, dim_y)])


def init_state(problem: BlockProblem, method: str, i: int, x, steps: StepSizes, idx=None):
    """Block ``i``'s state before the first iteration: ``y = y_prev = z = v = 0``,
    estimators from one batch at ``(x, 0)`` (``H`` clipped; ``u = -grad_y f``).

    Returns
    -------
    array, shape (state_size(method, dim_y),)
    """
    xp = array_namespace(x)
    zero = xp.zeros(problem.dim_y, dtype=x.dtype)
    parts = {"y": zero, "y_prev": zero, "v": zero, "v_prev": zero, "z": zero}
    if method in ("bsvrb-v1", "bsvrb-v2"):
        parts["s"] = problem.grad_y_g(i, x, zero, idx)
    if method == "bsvrb-v1":
        parts["H"] = clip_eigenvalues(problem.hess_yy_g(i, x, zero, idx), steps.h_floor)
    if method == "bsvrb-v2":
        parts["u"] = -problem.grad_y_f(i, x, zero)
    return pack(method, problem.dim_y, {k: parts[k] for k in state_layout(method, problem.dim_y)})


def clip_eigenvalues(H, floor: float):
    """The symmetric part of ``H`` with eigenvalues raised to at least ``floor``."""
    xp = array_namespace(H)
    w, V = xp.linalg.eigh(0.5 * (H + H.T))
    return (V * xp.reshape(xp.clip(w, min=floor), (1, -1))) @ V.T


def project_ball(v, radius: float):
    """``v`` scaled onto the ball ``|v| <= radius``."""
    xp = array_namespace(v)
    norm = float(xp.linalg.vector_norm(v))
    return v * (radius / norm) if norm > radius else v


def _term(problem, i, x, y, v, idx_g, idx_f):
    return problem.grad_x_f(i, x, y, idx_f) - problem.cross_xy_g(i, x, y, v, idx_g)


def block_step(
    problem: BlockProblem,
    method: str,
    i: int,
    flat,
    x,
    x_prev,
    idx_g,
    idx_f,
    wait: int,
    steps: StepSizes,
    first: bool = False,
):
    """One update of sampled block ``i`` at iteration ``t``.

    Parameters
    ----------
    problem : BlockProblem
    method : str
        One of :data:`METHODS`.
    i : int
        Block.
    flat : array, shape (state_size,)
        The block's state after its last update.
    x, x_prev : array, shape (dim_x,)
        ``x_t`` and ``x_{t-1}`` (equal at ``t = 0``).
    idx_g, idx_f : int arrays
        The lower and upper batch (indices into the block's samples).
    wait : int
        Iterations since the block's last update (0: it was updated at ``t - 1``).
    steps : StepSizes
    first : bool
        ``t = 0``: there is no previous iterate.

    Returns
    -------
    new_flat : array, shape (state_size,)
    G_new, G_old : array, shape (dim_x,)
        The block's hypergradient term at ``x_t`` and at ``x_{t-1}`` (same samples).
    """
    xp = array_namespace(flat, x)
    p = unpack(method, problem.dim_y, flat)
    a, gm, tau = steps.alpha, steps.gamma, steps.tau

    if method in ("sgd", "f2sa"):
        y = p["y"]
        if method == "sgd":
            y_new = y - tau * problem.grad_y_g(i, x, y, idx_g)
            r = problem.hvp_yy_g(i, x, y, p["v"], idx_g) - problem.grad_y_f(i, x, y, idx_f)
            v_new = project_ball(p["v"] - steps.tau_v * r, steps.v_bound)
            G = _term(problem, i, x, y_new, v_new, idx_g, idx_f)
            new = {"y": y_new, "v": v_new}
        else:
            lam = steps.penalty
            dy = problem.grad_y_f(i, x, y, idx_f) + lam * problem.grad_y_g(i, x, y, idx_g)
            y_new = y - tau / (1.0 + lam) * dy
            z_new = p["z"] - tau * problem.grad_y_g(i, x, p["z"], idx_g)
            G = problem.grad_x_f(i, x, y_new, idx_f) + lam * (
                problem.grad_x_g(i, x, y_new, idx_g) - problem.grad_x_g(i, x, z_new, idx_g)
            )
            new = {"y": y_new, "z": z_new}
        return pack(method, problem.dim_y, new), G, G

    # the block's lower variable now and one iteration ago
    if steps.eager:
        y_t = p["y"] - (tau * wait) * p["s"]
        y_tm1 = y_t if first else y_t + tau * p["s"]
    else:
        y_t = p["y"]
        y_tm1 = p["y_prev"] if (wait == 0 and not first) else y_t
    xo = x if first else x_prev

    h_new = problem.grad_y_g(i, x, y_t, idx_g)
    h_old = h_new if first else problem.grad_y_g(i, xo, y_tm1, idx_g)
    s = (1 - a) * p["s"] + (a + gm) * h_new - gm * h_old
    new = {"y": y_t - tau * s, "y_prev": y_t, "s": s}

    if method == "bsvrb-v1":
        K_new = problem.hess_yy_g(i, x, y_t, idx_g)
        K_old = K_new if first else problem.hess_yy_g(i, xo, y_tm1, idx_g)
        H = clip_eigenvalues((1 - a) * p["H"] + (a + gm) * K_new - gm * K_old, steps.h_floor)
        new["H"] = H
        w_new = xp.linalg.solve(H, problem.grad_y_f(i, x, y_t, idx_f))
        w_old = xp.linalg.solve(p["H"], problem.grad_y_f(i, xo, y_tm1, idx_f))
        G_new = _term(problem, i, x, y_t, w_new, idx_g, idx_f)
        G_old = _term(problem, i, xo, y_tm1, w_old, idx_g, idx_f)
    else:
        v_t = p["v"]
        v_tm1 = p["v_prev"] if (wait == 0 and not first) else v_t

        def resid(xx, yy, vv):
            return problem.hvp_yy_g(i, xx, yy, vv, idx_g) - problem.grad_y_f(i, xx, yy, idx_f)

        r_new = resid(x, y_t, v_t)
        r_old = r_new if first else resid(xo, y_tm1, v_tm1)
        u = (1 - a) * p["u"] + (a + gm) * r_new - gm * r_old
        v_next = project_ball(v_t - steps.tau_v * u, steps.v_bound)
        new.update(v=v_next, v_prev=v_t, u=u)
        G_new = _term(problem, i, x, y_t, v_next, idx_g, idx_f)
        G_old = _term(problem, i, xo, y_tm1, v_t, idx_g, idx_f)
    return pack(method, problem.dim_y, new), G_new, G_old


def upper_step(
    method: str, x, z, G_new, G_old, eta: float, beta: float, first: bool, box=(None, None)
):
    """The driver's update of ``x`` from the mean block terms of one iteration.

    BSVRB: STORM momentum ``z <- (1 - beta)(z - G_old) + G_new`` (``z = G_new`` at
    ``t = 0``), ``x <- x - eta z``. Baselines: ``z = G_new``, ``x <- x - eta z``. The
    new ``x`` is projected on the box ``box = (lo, hi)`` (``None``: no edge).

    Returns
    -------
    x_next, z_next : array, shape (dim_x,)
    """
    if method.startswith("bsvrb") and not first:
        z = (1 - beta) * (z - G_old) + G_new
    else:
        z = G_new
    x = x - eta * z
    if box != (None, None):
        x = array_namespace(x).clip(x, min=box[0], max=box[1])
    return x, z
