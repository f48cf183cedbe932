"""The exact solution ``exp(-i t H) psi0`` on the dense vector (small systems only)."""

from __future__ import annotations

import numpy as np


class ExactSolution:
    """``at(t) = expm(-1j t H) psi0`` by SciPy's ``expm_multiply`` on the sparse H.

    Parameters
    ----------
    op : tasks.ttn.operators.SumOfProducts
    psi0 : numpy.ndarray, shape ``(prod(dims),)``
    observables : sequence of key, optional
        Products of ``op.ops`` (``((site, name), ...)``) whose expectations
        :meth:`observe` gives.
    """

    def __init__(self, op, psi0, observables=()):
        import dataclasses

        from tilegraph.tasks.ttn.operators import to_dense

        self.H = to_dense(op)
        self.psi0 = np.asarray(psi0, dtype=np.complex128)
        one = (1.0 + 0j,)
        self.obs = [to_dense(dataclasses.replace(op, keys=(k,), coefs=one)) for k in observables]

    def observe(self, psi) -> list[complex]:
        """``<psi|O|psi>`` for each observable."""
        return [complex(np.vdot(psi, O @ psi)) for O in self.obs]

    def at(self, t: float) -> np.ndarray:
        from scipy.sparse.linalg import expm_multiply

        if t == 0:
            return self.psi0
        return expm_multiply(-1j * t * self.H, self.psi0)
