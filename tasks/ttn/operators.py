"""Linear operators as sums of products of local terms, ``H = sum_k c_k (x)_s A_{k,s}``.

The operator is never formed as a matrix by the integrators; :func:`to_dense` exists for
references at small ``d`` (tests, the ``quick`` preset's exact solution).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: Pauli matrices and the projector n = |up><up| (basis order: up, down).
PAULI = {
    "x": np.array([[0, 1], [1, 0]], dtype=np.complex128),
    "y": np.array([[0, -1j], [1j, 0]], dtype=np.complex128),
    "z": np.array([[1, 0], [0, -1]], dtype=np.complex128),
    "n": np.array([[1, 0], [0, 0]], dtype=np.complex128),
}

Key = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class SumOfProducts:
    """``H = sum_k coefs[k] * prod_{(s, name) in keys[k]} ops[name] acting on site s``.

    Attributes
    ----------
    dims : tuple of int
        Local dimension of every site.
    ops : dict of str to numpy.ndarray
        Named local matrices, shape ``(dims[s], dims[s])``.
    keys : tuple of Key
        Per term, the ``(site, op name)`` factors sorted by site; sites not named carry
        the identity. ``()`` is a multiple of the identity.
    coefs : tuple of complex
        Per term coefficient (energy units; time is measured in 1/energy).
    """

    dims: tuple[int, ...]
    ops: Mapping[str, np.ndarray]
    keys: tuple[Key, ...]
    coefs: tuple[complex, ...]

    @property
    def d(self) -> int:
        return len(self.dims)

    def restrict(self, key: Key, sites: Iterable[int]) -> Key:
        """The factors of ``key`` on ``sites``."""
        s = set(sites)
        return tuple(f for f in key if f[0] in s)


def build(dims: Iterable[int], ops: Mapping[str, np.ndarray], terms) -> SumOfProducts:
    """A :class:`SumOfProducts` from ``terms = [(coef, {site: op_name}), ...]``.

    Terms with the same factors are merged; zero terms dropped.

    Raises
    ------
    ValueError
        On unknown op names, sites out of range or shape mismatches.
    """
    dims = tuple(int(n) for n in dims)
    ops = {k: np.asarray(v, dtype=np.complex128) for k, v in ops.items()}
    acc: dict[Key, complex] = {}
    for coef, factors in terms:
        key = []
        for s, name in sorted(dict(factors).items()):
            if not 0 <= s < len(dims):
                raise ValueError(f"site {s} out of range 0..{len(dims) - 1}")
            if name not in ops:
                raise ValueError(f"unknown local operator {name!r}; known: {sorted(ops)}")
            if ops[name].shape != (dims[s], dims[s]):
                raise ValueError(f"operator {name!r} has shape {ops[name].shape} at site {s}")
            key.append((int(s), name))
        acc[tuple(key)] = acc.get(tuple(key), 0.0) + complex(coef)
    items = [(k, c) for k, c in acc.items() if c != 0]
    return SumOfProducts(
        dims, ops, tuple(k for k, _ in items), tuple(complex(c) for _, c in items)
    )


def transverse_field_ising(d: int, J: float = 1.0, g: float = 1.0) -> SumOfProducts:
    """``H = -J sum_i Z_i Z_{i+1} - g sum_i X_i`` (open chain)."""
    terms = [(-J, {i: "z", i + 1: "z"}) for i in range(d - 1)]
    terms += [(-g, {i: "x"}) for i in range(d)]
    return build([2] * d, PAULI, terms)


def long_range_ising(
    d: int,
    omega: float = 1.0,
    delta: float = 1.0,
    nu: float = 2.0,
    alpha: float = 1.0,
) -> SumOfProducts:
    """The Rydberg-type chain ``sum_k (omega X_k + delta n_k) + sum_{i<j} nu |i-j|^-alpha
    n_i n_j`` with ``n = |up><up|`` (the parallel-BUG paper's example)."""
    terms = [(omega, {i: "x"}) for i in range(d)] + [(delta, {i: "n"}) for i in range(d)]
    terms += [
        (nu * abs(i - j) ** (-alpha), {i: "n", j: "n"}) for i in range(d) for j in range(i + 1, d)
    ]
    return build([2] * d, PAULI, terms)


def xxz(d: int, J: float = 1.0, delta: float = 0.5) -> SumOfProducts:
    """Heisenberg XXZ, ``H = J sum_i (X_i X_{i+1} + Y_i Y_{i+1} + delta Z_i Z_{i+1})``."""
    terms = []
    for i in range(d - 1):
        terms += [(J, {i: "x", i + 1: "x"}), (J, {i: "y", i + 1: "y"})]
        terms += [(J * delta, {i: "z", i + 1: "z"})]
    return build([2] * d, PAULI, terms)


def builtin_terms(model: str, d: int, **params) -> list[tuple[float, str]]:
    """The built-in spin-1/2 model ``model`` (``"tfi"``, ``"lr-ising"``, ``"xxz"``) as
    ``[coefficient, "OP site ..."]`` terms (:mod:`tilegraph.tasks.ttn.terms`); the same
    operator, term for term, as :func:`make_operator` builds.

    Parameters are those of :func:`transverse_field_ising`, :func:`long_range_ising` and
    :func:`xxz`.
    """
    if model == "tfi":
        J, g = params.get("J", 1.0), params.get("g", 1.0)
        return [(-J, f"Z {i} Z {i + 1}") for i in range(d - 1)] + [
            (-g, f"X {i}") for i in range(d)
        ]
    if model == "lr-ising":
        omega, delta = params.get("omega", 1.0), params.get("delta", 1.0)
        nu, alpha = params.get("nu", 2.0), params.get("alpha", 1.0)
        terms = [(omega, f"X {i}") for i in range(d)] + [(delta, f"Pup {i}") for i in range(d)]
        terms += [
            (nu * abs(i - j) ** (-alpha), f"Pup {i} Pup {j}")
            for i in range(d)
            for j in range(i + 1, d)
        ]
        return terms
    if model == "xxz":
        J, delta = params.get("J", 1.0), params.get("delta", 0.5)
        terms = []
        for i in range(d - 1):
            terms += [(J, f"X {i} X {i + 1}"), (J, f"Y {i} Y {i + 1}")]
            terms += [(J * delta, f"Z {i} Z {i + 1}")]
        return terms
    raise ValueError(f"unknown model {model!r}; choose one of ['lr-ising', 'tfi', 'xxz']")


def make_operator(model: str, d: int, **params) -> SumOfProducts:
    """``model`` is ``"tfi"``, ``"lr-ising"`` or ``"xxz"``; ``params`` go to its builder."""
    builders = {"tfi": transverse_field_ising, "lr-ising": long_range_ising, "xxz": xxz}
    if model not in builders:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(builders)}")
    return builders[model](d, **params)


def to_dense(op: SumOfProducts):
    """The operator as a sparse matrix (CSR, site 0 the slowest index); for small d only.

    Returns
    -------
    scipy.sparse.csr_matrix, shape ``(prod(dims), prod(dims))``
    """
    import scipy.sparse as sp

    total = sp.csr_matrix((int(np.prod(op.dims)),) * 2, dtype=np.complex128)
    for key, c in zip(op.keys, op.coefs, strict=True):
        fac = dict(key)
        m = sp.identity(1, dtype=np.complex128, format="csr")
        for s, n in enumerate(op.dims):
            local = sp.csr_matrix(op.ops[fac[s]]) if s in fac else sp.identity(n, format="csr")
            m = sp.kron(m, local, format="csr")
        total = total + c * m
    return total.tocsr()


def local_dense(op: SumOfProducts, site: int, name: str):
    """The single-site observable ``ops[name]`` at ``site`` as a :class:`SumOfProducts`."""
    return build(op.dims, op.ops, [(1.0, {site: name})])
