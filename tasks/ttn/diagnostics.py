"""Where a product start's energy variance lies: the test for a start the rank-adaptive
BUG cannot leave.

For a normalised product state ``phi = (x)_s phi_s`` write every local factor of a term
as ``A phi_s = a phi_s + delta`` with ``delta`` orthogonal to ``phi_s``. Expanding
``(H - E) phi`` over which sites carry their ``delta`` sorts it into orthogonal parts: one
site changed (the tangent space of the product states at ``phi``; what a K-step of the
BUG sees at a rank-1 start) and two or more sites changed together (entanglement, which
only the augmentation that the one-site parts provide lets the BUG build). When every
one-site part vanishes (every ``phi_s`` is an eigenvector of its mean field: a Fock state
under hopping, the tilted Néel state of the isotropic Heisenberg chain) while the
variance does not, no basis ever grows and the integrators follow a wrong, product-state
trajectory at any step size.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .operators import SumOfProducts

#: Parts changing more sites together than this are left out (the joint part is then a
#: lower bound): a term on k sites has 2^k parts, and a Jordan-Wigner string of 30 sites
#: would take hours; up to 4 it is C(k, <= 4) small arrays.
MAX_ORDER = 4
#: Parts with more entries than this are left out too.
MAX_JOINT = 1 << 16


def variance_split(op: SumOfProducts, vectors) -> tuple[float, float, float]:
    """The energy variance of the product state ``vectors``, split into the part that
    changes one site and the parts that change several together.

    Parameters
    ----------
    op : SumOfProducts
    vectors : list of array
        One local state per site, shape ``(op.dims[s],)`` (normalised here).

    Returns
    -------
    variance : float
        ``||(H - E) phi||^2`` with ``E = <phi|H|phi>`` (energy squared; ``<H^2> - <H>^2``
        for a Hermitian ``H``): ``one_site + joint``.
    one_site : float
        The squared norm of the one-site (tangent) part of ``(H - E) phi``.
    joint : float
        The squared norm of the parts changing two to ``MAX_ORDER`` sites together (of
        at most ``MAX_JOINT`` entries each): exact for terms on at most ``MAX_ORDER``
        sites, a lower bound otherwise.
    """
    phi = [np.asarray(v, dtype=np.complex128) for v in vectors]
    phi = [v / np.linalg.norm(v) for v in phi]
    tangent = [np.zeros(n, dtype=np.complex128) for n in op.dims]
    joint: dict[tuple[int, ...], np.ndarray] = {}
    for key, coef in zip(op.keys, op.coefs, strict=True):
        sites = [s for s, _ in key]
        mean, delta = [], []
        for s, name in key:
            v = np.asarray(op.ops[name], dtype=np.complex128) @ phi[s]
            a = np.vdot(phi[s], v)
            mean.append(a)
            delta.append(v - a * phi[s])
        for size in range(1, min(len(sites), MAX_ORDER) + 1):
            for pick in itertools.combinations(range(len(sites)), size):
                rest = coef * math.prod(mean[i] for i in range(len(sites)) if i not in pick)
                if size == 1:
                    tangent[sites[pick[0]]] += rest * delta[pick[0]]
                    continue
                shape = tuple(op.dims[sites[i]] for i in pick)
                if math.prod(shape) > MAX_JOINT:
                    continue
                part = delta[pick[0]]
                for i in pick[1:]:
                    part = np.multiply.outer(part, delta[i])
                where = tuple(sites[i] for i in pick)
                joint[where] = joint.get(where, 0) + rest * part
    one = float(sum(np.vdot(t, t).real for t in tangent))
    two = float(sum(np.vdot(p, p).real for p in joint.values()))
    return one + two, one, two


def stationary_start(
    op: SumOfProducts, vectors, r_min: int = 1, rtol: float = 1e-10, padding: str = "unit"
) -> str | None:
    """A warning when the product start's variance has no one-site part (see the
    module's docstring), else ``None``.

    At rank 1 (``r_min = 1``) the BUG then cannot leave the product states. With
    ``r_min > 1`` the start carries zero-weight directions through which the Galerkin
    steps may fill the joint parts (a random all-to-all ``XX`` coupling from all-up does)
    or not (the tilted Neel start of the isotropic chain with unit directions does
    not): the warning says so, and what ``padding`` (``"auto"``, ``"unit"``,
    ``"random"``: see :func:`~tilegraph.tasks.ttn.state.product_state`) does about it
    (``"auto"`` takes random directions for such a start).
    """
    var, one, _ = variance_split(op, vectors)
    if var <= 1e-20 or one > rtol * var:
        return None
    head = (
        f"the start state is an eigenstate of its mean field at every site (energy "
        f"variance {var:.3g}, of which {one:.1g} changes one site): "
    )
    fix = (
        "start from a product state that is not an eigenstate of H's symmetry "
        "(docs/ttn.md, 'Your own system')"
    )
    if r_min <= 1:
        return head + (
            "at r_min=1 the rank-adaptive BUG cannot leave the product states from it and "
            "ends at an O(1) error for any h; " + fix
        )
    other = "set padding=random (random zero-weight directions) or " if padding == "unit" else ""
    took = "; padding=auto took random zero-weight directions for this start"
    return head + (
        f"the BUG can leave the product states only through the r_min={r_min} start's "
        "zero-weight directions, and may not (the tilted Neel start of the isotropic "
        "Heisenberg chain stays at an O(1) error for any h with unit directions); if a smaller "
        "h does not change the result, " + other + fix + (took if padding == "auto" else "")
    )
