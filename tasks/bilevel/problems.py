"""Multi-block bilevel problems with stochastic oracles on sampled batches.

Every problem has ``m`` blocks. Block ``i`` has a lower level ``g_i(x, y)``, strongly
convex in ``y`` (dimension ``dim_y``), and an upper level ``f_i(x, y)``; the upper
objective is ``F(x) = (1/m) sum_i f_i(x, y_i*(x))`` with ``y_i*(x) = argmin_y g_i(x, y)``.
Both levels are means over data: ``g_i`` over the block's ``n_lower`` lower samples and
``f_i`` over ``n_upper`` upper samples. An oracle takes the batch as an integer index
array (``None``: the whole data, the exact value).

Oracles take and return arrays of any array-API namespace (NumPy, CuPy,
``array_api_strict``); the problem data are NumPy arrays, moved to the namespace of
``x`` on use. Problems are plain picklable objects: ship them to workers once with
``Executor.put``.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace


def _take(xp, data: np.ndarray, idx, like):
    """``data[idx]`` (``idx=None``: all rows) as an array of ``xp`` on ``like``'s device.

    The rows are gathered on the host and only the batch is moved: the problem data are
    NumPy arrays shipped to the workers once, and the batch indices are drawn on the
    driver with NumPy, so every device sees the same samples. On NumPy this is a view or
    a copy of the rows, the same bits as ``data[idx]``."""
    rows = data if idx is None else data[np.asarray(idx, dtype=np.intp)]
    return xp.asarray(np.ascontiguousarray(rows), dtype=like.dtype)


def _count(idx, n: int) -> int:
    return n if idx is None else int(np.asarray(idx).size)


class BlockProblem:
    """The interface of a multi-block bilevel problem (see the module docstring).

    Attributes
    ----------
    name : str
    m, dim_x, dim_y : int
        Blocks, upper and lower dimensions.
    n_lower, n_upper : int
        Samples of one block's lower / upper level (batch indices range over these).
    x_star : numpy.ndarray or None, shape (dim_x,)
        The optimum where it is known in closed form (else ``None``).
    x0 : numpy.ndarray, shape (dim_x,)
        Where the upper iteration starts.
    """

    name = "problem"
    m = dim_x = dim_y = n_lower = n_upper = 0
    x_star: np.ndarray | None = None

    @property
    def x0(self) -> np.ndarray:
        return np.zeros(self.dim_x)

    # values ---------------------------------------------------------------------------
    def g(self, i, x, y, idx=None):
        """Lower objective of block ``i`` on the lower batch ``idx`` (0-d array)."""
        raise NotImplementedError

    def f(self, i, x, y, idx=None):
        """Upper objective of block ``i`` on the upper batch ``idx`` (0-d array)."""
        raise NotImplementedError

    # first derivatives ------------------------------------------------------------------
    def grad_y_g(self, i, x, y, idx=None):
        """``d g_i / d y``, shape (dim_y,)."""
        raise NotImplementedError

    def grad_x_g(self, i, x, y, idx=None):
        """``d g_i / d x``, shape (dim_x,)."""
        raise NotImplementedError

    def grad_x_f(self, i, x, y, idx=None):
        """``d f_i / d x``, shape (dim_x,)."""
        raise NotImplementedError

    def grad_y_f(self, i, x, y, idx=None):
        """``d f_i / d y``, shape (dim_y,)."""
        raise NotImplementedError

    # second derivatives ---------------------------------------------------------------
    def hess_yy_g(self, i, x, y, idx=None):
        """``d^2 g_i / d y^2``, shape (dim_y, dim_y) (for small ``dim_y``)."""
        raise NotImplementedError

    def hvp_yy_g(self, i, x, y, v, idx=None):
        """``(d^2 g_i / d y^2) v``, shape (dim_y,), without forming the Hessian."""
        raise NotImplementedError

    def cross_xy_g(self, i, x, y, v, idx=None):
        """``(d^2 g_i / d x d y) v``, shape (dim_x,): the ``x``-gradient of
        ``<grad_y g_i(x, y), v>`` with ``v`` held fixed."""
        raise NotImplementedError


class QuadraticBlocks(BlockProblem):
    """All-quadratic blocks with a closed-form optimum.

    ``g_i = 1/2 y^T Q_i y - y^T (P_i x + c_i)`` with ``Q_i = mean_j a_ij a_ij^T + lam I``
    over the block's ``n_lower`` samples ``a_ij`` (the only stochastic part), and
    ``f_i = 1/2 |y - t_i|^2 + rho/2 |x|^2`` (deterministic, ``n_upper = 1``). Then
    ``y_i* = Q_i^-1 (P_i x + c_i)`` and ``x*`` solves
    ``[(1/m) sum P_i^T Q_i^-2 P_i + rho I] x = (1/m) sum P_i^T Q_i^-1 (t_i - Q_i^-1 c_i)``.

    Parameters
    ----------
    m, dim_x, dim_y, n_lower : int
    spread : float
        How much the blocks differ: ``P_i = P_0 + spread E_i`` (same for ``c_i``,
        ``t_i``) with common ``P_0, c_0, t_0`` and independent standard normal ``E_i``
        (scaled like ``P_0``). The noise of sampling ``I`` of ``m`` blocks grows with it.
    lam : float
        Ridge of the lower Hessian (its smallest eigenvalue is at least ``lam``).
    rho : float
        Upper regulariser.
    seed : int
    """

    name = "quadratic"

    def __init__(self, m=50, dim_x=5, dim_y=5, n_lower=32, spread=0.3, lam=1.0, rho=0.1, seed=0):
        rng = np.random.default_rng([seed, 1])
        self.m, self.dim_x, self.dim_y, self.n_lower, self.n_upper = m, dim_x, dim_y, n_lower, 1
        self.lam, self.rho, self.spread = float(lam), float(rho), float(spread)
        self.A = rng.standard_normal((m, n_lower, dim_y)) / math.sqrt(dim_y)

        def varied(shape, scale):
            common = rng.standard_normal(shape) * scale
            return common[None] + spread * scale * rng.standard_normal((m, *shape))

        self.P = varied((dim_y, dim_x), 1.0 / math.sqrt(dim_x))
        self.c = varied((dim_y,), 1.0)
        self.t = varied((dim_y,), 1.0)
        self.Q = np.einsum("mnj,mnk->mjk", self.A, self.A) / n_lower + lam * np.eye(dim_y)
        lhs = rho * np.eye(dim_x)
        rhs = np.zeros(dim_x)
        for i in range(m):
            QiP = np.linalg.solve(self.Q[i], self.P[i])
            lhs += QiP.T @ QiP / m
            rhs += QiP.T @ (self.t[i] - np.linalg.solve(self.Q[i], self.c[i])) / m
        self.x_star = np.linalg.solve(lhs, rhs)

    def _hess_apply(self, i, y, idx):
        xp = array_namespace(y)
        A = _take(xp, self.A[i], idx, y)
        return (A.T @ (A @ y)) / _count(idx, self.n_lower) + self.lam * y

    def _lin(self, i, x):
        xp = array_namespace(x)
        return _take(xp, self.P[i], None, x) @ x + _take(xp, self.c[i], None, x)

    def g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        return 0.5 * xp.sum(y * self._hess_apply(i, y, idx)) - xp.sum(y * self._lin(i, x))

    def f(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        d = y - _take(xp, self.t[i], None, y)
        return 0.5 * xp.sum(d * d) + 0.5 * self.rho * xp.sum(x * x)

    def grad_y_g(self, i, x, y, idx=None):
        return self._hess_apply(i, y, idx) - self._lin(i, x)

    def grad_x_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        return -(_take(xp, self.P[i], None, x).T @ y)

    def grad_x_f(self, i, x, y, idx=None):
        return self.rho * x

    def grad_y_f(self, i, x, y, idx=None):
        xp = array_namespace(y)
        return y - _take(xp, self.t[i], None, y)

    def hess_yy_g(self, i, x, y, idx=None):
        xp = array_namespace(y)
        A = _take(xp, self.A[i], idx, y)
        return A.T @ A / _count(idx, self.n_lower) + self.lam * xp.eye(self.dim_y, dtype=y.dtype)

    def hvp_yy_g(self, i, x, y, v, idx=None):
        return self._hess_apply(i, v, idx)

    def cross_xy_g(self, i, x, y, v, idx=None):
        xp = array_namespace(x, v)
        return -(_take(xp, self.P[i], None, x).T @ v)


class _LinearData(BlockProblem):
    """Shared lower-level data ``X_train`` (rows are samples) and upper ``X_val``."""

    def _rows(self, which, idx, like):
        xp = array_namespace(like)
        return _take(xp, self.X_train if which == "lower" else self.X_val, idx, like)

    def _labels(self, i, which, idx, like):
        xp = array_namespace(like)
        lab = self.b_train if which == "lower" else self.b_val
        return _take(xp, lab[i], idx, like)


class _LogPenalty:
    """The parts of ``g_i`` and ``f_i`` that come from the penalty ``1/2 sum_j exp(x_j)
    w_j^2`` (lower) and ``rho/2 |x|^2`` (upper), shared by the ridge-type problems."""

    rho = 0.0

    def grad_x_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        return 0.5 * xp.exp(x) * y * y

    def grad_x_f(self, i, x, y, idx=None):
        return self.rho * x

    def cross_xy_g(self, i, x, y, v, idx=None):
        xp = array_namespace(x, y)
        return xp.exp(x) * y * v


class RidgeBlocks(_LogPenalty, _LinearData):
    """One-vs-rest ridge regressions on scikit-learn's digits with a shared per-feature
    regulariser ``exp(x_j)``.

    Block ``i`` (digit ``i``, ``m = 10``) fits ``w`` to the targets ``b_i = +-1``:
    ``g_i = 1/(2n) |X_B w - b_B|^2 + 1/2 sum_j exp(x_j) w_j^2`` on training rows,
    ``f_i = 1/(2n') |X_V w - b_V|^2 + rho/2 |x|^2`` on validation rows. ``g_i`` is
    quadratic in ``w``, so the exact hypergradient needs only linear solves; ``x*`` is
    found by L-BFGS on it (:func:`tilegraph.tasks.bilevel.hypergradient.reference_optimum`).

    Features are standardised, constant pixels dropped and a constant column added
    (``dim_x = dim_y = 62``).
    """

    name = "digits-ridge"

    def __init__(self, n_train=1000, rho=0.01, seed=0):
        from sklearn.datasets import load_digits

        X, labels = load_digits(return_X_y=True)
        X = X[:, X.std(axis=0) > 0]
        X = (X - X.mean(axis=0)) / X.std(axis=0)
        X = np.hstack([X, np.ones((X.shape[0], 1))])
        order = np.random.default_rng([seed, 2]).permutation(X.shape[0])
        tr, va = order[:n_train], order[n_train:]
        B = np.where(labels[:, None] == np.arange(10)[None, :], 1.0, -1.0).T  # (10, n)
        self.X_train, self.X_val = X[tr], X[va]
        self.b_train, self.b_val = B[:, tr], B[:, va]
        self.m, self.dim_x = 10, X.shape[1]
        self.dim_y, self.n_lower, self.n_upper = X.shape[1], tr.size, va.size
        self.rho = float(rho)
        self.x_star = None

    def g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        r = self._rows("lower", idx, y) @ y - self._labels(i, "lower", idx, y)
        return 0.5 * xp.sum(r * r) / _count(idx, self.n_lower) + 0.5 * xp.sum(xp.exp(x) * y * y)

    def f(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        r = self._rows("upper", idx, y) @ y - self._labels(i, "upper", idx, y)
        return 0.5 * xp.sum(r * r) / _count(idx, self.n_upper) + 0.5 * self.rho * xp.sum(x * x)

    def grad_y_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X = self._rows("lower", idx, y)
        r = X @ y - self._labels(i, "lower", idx, y)
        return X.T @ r / _count(idx, self.n_lower) + xp.exp(x) * y

    def grad_y_f(self, i, x, y, idx=None):
        X = self._rows("upper", idx, y)
        return X.T @ (X @ y - self._labels(i, "upper", idx, y)) / _count(idx, self.n_upper)

    def hess_yy_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X = self._rows("lower", idx, y)
        n = self.dim_y
        diag = xp.eye(n, dtype=y.dtype) * xp.reshape(xp.exp(x), (1, n))
        return X.T @ X / _count(idx, self.n_lower) + diag

    def hvp_yy_g(self, i, x, y, v, idx=None):
        xp = array_namespace(x, v)
        X = self._rows("lower", idx, v)
        return X.T @ (X @ v) / _count(idx, self.n_lower) + xp.exp(x) * v


class LogisticHPO(_LinearData):
    """Hyper-parameter optimisation of per-sample weights with weighted logistic
    regressions as lower levels (the BSVRB paper's experiment).

    The upper variable ``x`` holds one logit per training sample (weight
    ``sigmoid(x_j)``, ``dim_x = n_train``). Block ``i`` is a logistic regression with
    temperature ``sigma_i``:
    ``g_i = (1/n) sum_j sigmoid(x_j) l(w; a_j, b_j / sigma_i) + lam/2 |w|^2`` over
    training rows ``j`` and ``f_i = (1/n') sum_k l(w; a_k, b_k / sigma_i)`` over
    validation rows, ``l(w; a, s) = log(1 + exp(-s a^T w))``. Data: scikit-learn's
    breast-cancer set, standardised, with a constant column (``dim_y = 31``). The
    optimum is not known.
    """

    name = "logistic-hpo"

    def __init__(self, m=100, n_train=400, lam=1e-3, seed=0):
        from sklearn.datasets import load_breast_cancer

        X, labels = load_breast_cancer(return_X_y=True)
        X = (X - X.mean(axis=0)) / X.std(axis=0)
        X = np.hstack([X, np.ones((X.shape[0], 1))])
        order = np.random.default_rng([seed, 3]).permutation(X.shape[0])
        tr, va = order[:n_train], order[n_train:]
        b = np.where(labels == 1, 1.0, -1.0)
        self.sigma = np.geomspace(0.5, 2.0, m)
        self.X_train, self.X_val = X[tr], X[va]
        self.b_train = b[tr][None, :] / self.sigma[:, None]  # (m, n): labels / sigma_i
        self.b_val = b[va][None, :] / self.sigma[:, None]
        self.m, self.dim_x, self.dim_y = m, tr.size, X.shape[1]
        self.n_lower, self.n_upper = tr.size, va.size
        self.lam = float(lam)
        self.x_star = None

    def _weights(self, x, idx):
        xp = array_namespace(x)
        xb = x if idx is None else xp.take(x, xp.asarray(np.asarray(idx, dtype=np.int64)))
        return 1.0 / (1.0 + xp.exp(-xb))

    def _margin(self, i, which, idx, y):
        X = self._rows(which, idx, y)
        s = self._labels(i, which, idx, y)
        return X, s, s * (X @ y)

    def g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        _, _, z = self._margin(i, "lower", idx, y)
        loss = xp.logaddexp(xp.zeros_like(z), -z)
        return xp.sum(self._weights(x, idx) * loss) / _count(idx, self.n_lower) + 0.5 * (
            self.lam * xp.sum(y * y)
        )

    def f(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        _, _, z = self._margin(i, "upper", idx, y)
        return xp.sum(xp.logaddexp(xp.zeros_like(z), -z)) / _count(idx, self.n_upper)

    def _dloss(self, z):
        # d l / d z = -sigmoid(-z)
        xp = array_namespace(z)
        return -1.0 / (1.0 + xp.exp(z))

    def grad_y_g(self, i, x, y, idx=None):
        X, s, z = self._margin(i, "lower", idx, y)
        coef = self._weights(x, idx) * self._dloss(z) * s
        return X.T @ coef / _count(idx, self.n_lower) + self.lam * y

    def grad_x_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        _, _, z = self._margin(i, "lower", idx, y)
        w = self._weights(x, idx)
        vals = w * (1.0 - w) * xp.logaddexp(xp.zeros_like(z), -z) / _count(idx, self.n_lower)
        return self._scatter(x, idx, vals)

    def _scatter(self, x, idx, vals):
        """A ``dim_x`` vector with ``vals`` at the batch rows (repeats add up)."""
        xp = array_namespace(x)
        if idx is None:
            return vals
        # the array API has no scatter-add (``np.add.at``): a one-hot (B, dim_x) matrix
        # built on the host from the host batch indices, applied on the device, adds up
        # repeated rows on every backend alike
        onehot = np.zeros((int(np.asarray(idx).size), self.dim_x))
        onehot[np.arange(onehot.shape[0]), np.asarray(idx, dtype=np.intp)] = 1.0
        return xp.asarray(onehot, dtype=x.dtype).T @ vals

    def grad_x_f(self, i, x, y, idx=None):
        xp = array_namespace(x)
        return xp.zeros_like(x)

    def grad_y_f(self, i, x, y, idx=None):
        X, s, z = self._margin(i, "upper", idx, y)
        return X.T @ (self._dloss(z) * s) / _count(idx, self.n_upper)

    def _curv(self, i, x, y, idx):
        # d2 l / d z2 = sigmoid(z) sigmoid(-z); s^2 from the chain rule
        xp = array_namespace(x, y)
        X, s, z = self._margin(i, "lower", idx, y)
        p = 1.0 / (1.0 + xp.exp(-z))
        return X, self._weights(x, idx) * p * (1.0 - p) * s * s

    def hess_yy_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X, c = self._curv(i, x, y, idx)
        n = _count(idx, self.n_lower)
        return (X.T * xp.reshape(c, (1, -1))) @ X / n + self.lam * xp.eye(
            self.dim_y, dtype=y.dtype
        )

    def hvp_yy_g(self, i, x, y, v, idx=None):
        X, c = self._curv(i, x, y, idx)
        return X.T @ (c * (X @ v)) / _count(idx, self.n_lower) + self.lam * v

    def cross_xy_g(self, i, x, y, v, idx=None):
        X, s, z = self._margin(i, "lower", idx, y)
        w = self._weights(x, idx)
        vals = w * (1.0 - w) * self._dloss(z) * s * (X @ v) / _count(idx, self.n_lower)
        return self._scatter(x, idx, vals)


PROBLEMS = {"quadratic": QuadraticBlocks, "digits-ridge": RidgeBlocks, "logistic-hpo": LogisticHPO}


class LinearBlocks(_LogPenalty, BlockProblem):
    """Per-block ridge or logistic regressions with a shared per-feature penalty: the
    user's data (:class:`tilegraph.pipelines.bilevel.data.ZarrBlocks` reads it).

    The upper variable is ``x = log lambda`` (one penalty per feature). Block ``i`` with
    training rows ``(X_i, y_i)`` (``n_i`` of them) and validation rows ``(V_i, u_i)``
    (``m_i``) has

    * ``g_i(x, w) = (1/n_i) sum_k l(X_i w, y_i)_k + 1/2 sum_j exp(x_j) w_j^2``,
    * ``f_i(x, w) = (1/m_i) sum_k l(V_i w, u_i)_k + rho/2 |x|^2``,

    with ``l(z, y) = (z - y)^2 / 2`` for ``ridge`` and ``log(1 + e^z) - y z`` (labels
    0/1) for ``logistic``. Blocks may differ in size: ``n_lower`` and ``n_upper`` are
    arrays, one entry per block. Subclasses provide the data by :meth:`block`.
    """

    name = "dataset"

    def __init__(self, m: int, dim: int, n_lower, n_upper, model: str = "ridge", rho=0.0):
        if model not in ("ridge", "logistic"):
            raise ValueError(f"model must be 'ridge' or 'logistic', got {model!r}")
        self.m, self.dim_x, self.dim_y = int(m), int(dim), int(dim)
        self.n_lower = np.asarray(n_lower, dtype=np.int64)
        self.n_upper = np.asarray(n_upper, dtype=np.int64)
        self.model, self.rho = model, float(rho)
        self.x_star = None

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(X_train, y_train, X_val, y_val)`` of block ``i`` as NumPy arrays."""
        raise NotImplementedError

    def _data(self, i, which, idx, like):
        X_tr, y_tr, X_va, y_va = self.block(int(i))
        X, y = (X_tr, y_tr) if which == "lower" else (X_va, y_va)
        xp = array_namespace(like)
        n = (self.n_lower if which == "lower" else self.n_upper)[int(i)]
        return _take(xp, X, idx, like), _take(xp, y, idx, like), _count(idx, int(n))

    def _resid(self, z, y):
        """``dl/dz``: ``z - y`` (ridge) or ``sigmoid(z) - y`` (logistic)."""
        xp = array_namespace(z)
        return z - y if self.model == "ridge" else 1.0 / (1.0 + xp.exp(-z)) - y

    def _loss(self, z, y):
        xp = array_namespace(z)
        if self.model == "ridge":
            return 0.5 * xp.sum((z - y) ** 2)
        return xp.sum(xp.logaddexp(xp.zeros_like(z), z) - y * z)

    def _curv(self, z):
        """``d2l/dz2``: 1 (ridge) or ``sigmoid(z) (1 - sigmoid(z))`` (logistic)."""
        xp = array_namespace(z)
        if self.model == "ridge":
            return xp.ones_like(z)
        p = 1.0 / (1.0 + xp.exp(-z))
        return p * (1.0 - p)

    def g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X, t, n = self._data(i, "lower", idx, y)
        return self._loss(X @ y, t) / n + 0.5 * xp.sum(xp.exp(x) * y * y)

    def f(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        V, u, n = self._data(i, "upper", idx, y)
        return self._loss(V @ y, u) / n + 0.5 * self.rho * xp.sum(x * x)

    def grad_y_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X, t, n = self._data(i, "lower", idx, y)
        return X.T @ self._resid(X @ y, t) / n + xp.exp(x) * y

    def grad_y_f(self, i, x, y, idx=None):
        V, u, n = self._data(i, "upper", idx, y)
        return V.T @ self._resid(V @ y, u) / n

    def hess_yy_g(self, i, x, y, idx=None):
        xp = array_namespace(x, y)
        X, _, n = self._data(i, "lower", idx, y)
        c = self._curv(X @ y)
        diag = xp.eye(self.dim_y, dtype=y.dtype) * xp.reshape(xp.exp(x), (1, self.dim_y))
        return (X.T * xp.reshape(c, (1, -1))) @ X / n + diag

    def hvp_yy_g(self, i, x, y, v, idx=None):
        xp = array_namespace(x, v)
        X, _, n = self._data(i, "lower", idx, v)
        return X.T @ (self._curv(X @ y) * (X @ v)) / n + xp.exp(x) * v
