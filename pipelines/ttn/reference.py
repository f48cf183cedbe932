"""The exact solution ``exp(-i t H) psi0`` on the dense ``2^d`` vector (small d only)."""

from __future__ import annotations

import numpy as np


class ExactSolution:
    """``at(t) = expm(-1j t H) psi0`` by SciPy's ``expm_multiply`` on the sparse H.

    Parameters
    ----------
    op : tasks.ttn.operators.SumOfProducts
    psi0 : numpy.ndarray, shape ``(prod(dims),)``
    """

    def __init__(self, op, psi0):
        from tilegraph.tasks.ttn.operators import to_dense

        self.H = to_dense(op)
        self.psi0 = np.asarray(psi0, dtype=np.complex128)

    def at(self, t: float) -> np.ndarray:
        from scipy.sparse.linalg import expm_multiply

        if t == 0:
            return self.psi0
        return expm_multiply(-1j * t * self.H, self.psi0)
