"""``exp(-i t A) v`` for a Hermitian linear map ``A`` by the Lanczos method.

The sub-flows of the BUG integrators are small linear ODEs ``y' = -i A y``; Lanczos with
full re-orthogonalisation integrates them to ``tol`` and keeps the norm to round-off,
which is what gives the sequential BUG its exact norm and energy conservation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from array_api_compat import array_namespace


def _inner(xp, a, b) -> complex:
    return complex(xp.sum(xp.conj(a) * b))


def expm_apply(
    apply: Callable, v, t: float, tol: float = 1e-12, m_max: int = 40, max_splits: int = 64
):
    """``exp(-1j * t * A) @ v`` where ``apply(x) = A x`` and ``A`` is Hermitian.

    Parameters
    ----------
    apply : callable
        Maps an array shaped like ``v`` to one of the same shape (any array-API namespace).
    v : array
        Start vector, any shape (treated as flattened).
    t : float
        Time (``A`` in energy units, ``t`` in 1/energy).
    tol : float
        Target error of the result relative to ``||v||``.
    m_max : int
        Largest Krylov dimension of one sub-step; the time is split when it is reached.
    max_splits : int
        Most sub-steps before giving up.

    Returns
    -------
    array shaped like ``v``
    """
    xp = array_namespace(v)
    norm_v = math.sqrt(abs(_inner(xp, v, v)))
    if norm_v == 0.0 or t == 0.0:
        return v
    w, remaining, dt, splits = v, float(t), float(t), 0
    while abs(remaining) > 1e-14 * abs(t):
        if abs(dt) > abs(remaining):
            dt = remaining
        out, ok = _lanczos_step(xp, apply, w, dt, tol * norm_v, m_max)
        if not ok:
            dt /= 2
            splits += 1
            if splits > max_splits:
                raise RuntimeError("Lanczos exponential did not converge")
            continue
        w = out
        remaining -= dt
    return w


def _lanczos_step(xp, apply, v, t, abs_tol, m_max):
    beta0 = math.sqrt(abs(_inner(xp, v, v)))
    basis = [v / beta0]
    alphas: list[float] = []
    betas: list[float] = []
    m_cap = max(1, min(m_max, math.prod(v.shape)))
    for j in range(m_cap):
        w = apply(basis[j])
        a = _inner(xp, basis[j], w).real
        alphas.append(a)
        for q in basis:  # full re-orthogonalisation (twice is enough)
            w = w - _inner(xp, q, w) * q
        for q in basis:
            w = w - _inner(xp, q, w) * q
        b = math.sqrt(abs(_inner(xp, w, w)))
        m = j + 1
        # The small tridiagonal T (m <= m_max, its entries already host floats from the
        # inner products) is diagonalised with NumPy on the host: on a GPU an m x m
        # eigh costs more in launches than it computes. Only the Krylov vectors, the
        # large part, stay in the caller's namespace (NumPy, CuPy, array-api-strict).
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(T)
        c = evecs @ (np.exp(-1j * t * evals) * evecs[0].conj())
        # the classic a-posteriori estimate: beta_m |e_m^T exp(-itT) e_1|
        err = beta0 * b * abs(c[-1])
        if b < 1e-14 * beta0 or err < abs_tol or m == m_cap:
            if err >= abs_tol and b >= 1e-14 * beta0 and m == m_cap < math.prod(v.shape):
                return None, False
            out = basis[0] * complex(beta0 * c[0])
            for k in range(1, m):
                out = out + basis[k] * complex(beta0 * c[k])
            return out, True
        betas.append(b)
        basis.append(w / b)
    raise AssertionError("unreachable")
