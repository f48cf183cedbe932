"""The amplification guard of Picard's stopping test (``picard(..., guard=True)``).

ParaDiGMS accepts a slot once its change in the last iteration is below ``tol`` times
its noise scale. A slot accepted is never revised, and the next window starts from it:
where the sampler's own dynamics expand (a trajectory choosing between modes of the
data), the small error left in it grows step after step, and a tolerance that is met at
every slot can still return another sample (docs/picard.md, "Error control"). The guard
scales each slot's change by how much the steps ahead in the window may amplify it,
``G_j = max_m prod_{i=j+1..m} lambda_i`` (at most :data:`CAP`; ``m`` up to the window's
end or :data:`HORIZON` steps after its start, whichever is later, and at most the last
step), before comparing it with ``tol``.

``lambda_i`` is the largest expansion of step ``i``'s Jacobian ``a_i I + b_i d eps/dx``
that the iteration has seen, for free: every re-evaluation of a step gives the Jacobian
applied to the change of its input (``a dX + b dEps``, the secant pair), and the pairs of
``block`` consecutive steps, whose Jacobians differ little, span a subspace on which a
Rayleigh-Ritz step (two small Gram matrices, one generalised symmetric eigenproblem)
gives the largest singular value. No model calls are added.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from ..devices import to_host

#: Steps that share one expansion estimate.
BLOCK = 16

#: The largest factor a slot's change is scaled by. Uncapped, a random network's
#: expanding steps made p = 96 nearly sequential (91 of 100 iterations); 30 keeps every
#: flip the mixture ladder removes (10 loses one) and costs 4 iterations there.
CAP = 30.0

#: Steps after a window's start that a slot's growth is counted over, the window's own
#: steps or this many, whichever is more. A slot accepted is never revised, so its error
#: grows through the steps after the window too; counted over the window alone, windows
#: of 8 returned samples of another component at tol = 0.1 (docs/picard.md).
HORIZON = 96

#: Directions whose Gram eigenvalue is below this fraction of the largest are dropped.
RCOND = 1e-4


def step_expansion(dx, de, a: np.ndarray, b: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``log lambda`` per step and sample from secant pairs.

    Parameters
    ----------
    dx, de : arrays, shape (Q, n, *sample_shape)
        Change of Q steps' inputs between their last two evaluations and the change of
        the model output (any array-API namespace).
    a, b : numpy.ndarray, shape (Q,)
        The steps' coefficients (the step map is ``a x + b eps + ...``).
    block : int
        Consecutive steps that share one estimate.

    Returns
    -------
    numpy.ndarray, shape (Q, n)
        ``log`` of the largest singular value of the step Jacobian restricted to the
        span of the block's input changes (NaN where a block has no change or a
        non-finite one).
    """
    xp = array_namespace(dx)
    Q, n = dx.shape[0], dx.shape[1]
    # float64: the squares of a float32 iterate far from the fixed point overflow
    X = xp.astype(xp.reshape(dx, (Q, n, -1)), xp.float64)
    de = xp.astype(de, xp.float64)
    D = X.shape[2]
    dt = X.dtype
    W = _col(xp, a, dt) * X + _col(xp, b, dt) * xp.reshape(de, (Q, n, D))
    # unit input changes (zero rows stay zero and drop out below)
    norm = xp.sqrt(xp.sum(X * X, axis=2, keepdims=True))
    safe = xp.where(norm > 0, norm, xp.ones_like(norm))
    X, W = X / safe, W / safe
    nb = -(-Q // block)
    pad = nb * block - Q
    if pad:
        zeros = xp.zeros((pad, n, D), dtype=dt)
        X, W = xp.concat([X, zeros], axis=0), xp.concat([W, zeros], axis=0)
    # (n, nb, block, D): the Gram matrices of each block, on the arrays' device
    X = xp.permute_dims(xp.reshape(X, (nb, block, n, D)), (2, 0, 1, 3))
    W = xp.permute_dims(xp.reshape(W, (nb, block, n, D)), (2, 0, 1, 3))
    Gx = np.asarray(to_host(X @ xp.matrix_transpose(X)), dtype=np.float64)
    Gw = np.asarray(to_host(W @ xp.matrix_transpose(W)), dtype=np.float64)
    # a block with a non-finite entry (an iterate that overflowed) gives no estimate
    bad = ~(np.isfinite(Gx).all(axis=(-2, -1)) & np.isfinite(Gw).all(axis=(-2, -1)))
    Gx[bad], Gw[bad] = 0.0, 0.0
    # max |W^T c| / |X^T c|: whiten by Gx's kept eigenvectors, then the top eigenvalue
    lam, V = np.linalg.eigh(Gx)
    keep = lam > RCOND * lam[..., -1:]
    inv = np.where(keep, 1.0 / np.sqrt(np.where(lam > 0, lam, 1.0)), 0.0)
    P = V * inv[..., None, :]
    top = np.linalg.eigvalsh(np.swapaxes(P, -1, -2) @ Gw @ P)[..., -1]
    top = np.sqrt(np.maximum(top, 0.0))
    ok = (top > 0) & ~bad
    log = np.where(ok, np.log(np.where(ok, top, 1.0)), np.nan)  # (n, nb)
    return np.repeat(log, block, axis=1)[:, :Q].T


def lookahead(loglam: np.ndarray, lo: int, L: int) -> np.ndarray:
    """``G_j`` for the output slots ``lo+1 .. lo+L`` of a window: the largest growth
    ``prod lambda`` over the steps after slot ``j`` up to ``min(T, lo + max(L, HORIZON))``
    (>= 1).

    Parameters
    ----------
    loglam : numpy.ndarray, shape (T, n)
        ``log lambda`` per step, NaN where unknown: a step not yet evaluated twice (the
        accelerated variant often accepts a step at its first evaluation, and the steps
        after the window have not been evaluated) takes the newest estimate before it,
        since expanding stretches last many steps.
    lo, L : int
        The window's first step and length.

    Returns
    -------
    numpy.ndarray, shape (L, n)
    """
    T, n = loglam.shape
    end = min(T, lo + max(L, HORIZON))
    filled = _ffill(loglam[:end])[lo + 1 :]
    # output slot lo+1+j feeds steps lo+1+j .. end-1
    C = np.concatenate([np.zeros((1, n)), np.cumsum(filled, axis=0)])
    ahead = np.maximum.accumulate(C[::-1], axis=0)[::-1]
    return np.exp(np.clip(ahead - C, 0.0, np.log(CAP)))[:L]


def _ffill(a: np.ndarray) -> np.ndarray:
    """NaNs replaced by the newest value above them in their column (0 before any)."""
    idx = np.where(np.isnan(a), 0, np.arange(a.shape[0])[:, None])
    idx = np.maximum.accumulate(idx, axis=0)
    out = np.take_along_axis(a, idx, axis=0)
    return np.where(np.isnan(out), 0.0, out)


def _col(xp, values: np.ndarray, dtype):
    v = xp.asarray(np.asarray(values, dtype=np.float64), dtype=dtype)
    return xp.reshape(v, (-1, 1, 1))
