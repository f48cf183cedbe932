"""Hamiltonians written as terms: ``[coefficient, "OP site OP site …"]``.

``[0.5, "S+ 2 S- 7"]`` is 0.5 S⁺₂ S⁻₇. A site named twice multiplies its operators in
the order written (``"N 0 N 0"`` is N₀²). Operators are looked up in each site's
:class:`~tilegraph.tasks.ttn.sites.SiteType`; the resulting
:class:`~tilegraph.tasks.ttn.operators.SumOfProducts` names them ``"<op>@<type>"`` so
that the same name on sites of different types stays apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .operators import SumOfProducts, build
from .sites import SiteType

__all__ = ["TermError", "check_hermitian", "from_terms", "parse_coef", "parse_term", "show_term"]

#: Largest dimension of the sites of one term for which Hermiticity is checked exactly.
MAX_CHECK_DIM = 4096


class TermError(ValueError):
    """A term that cannot be used; the message names it."""


def parse_coef(value) -> complex:
    """A coefficient: a number, a string such as ``"0.5-1j"``, or ``[re, im]``."""
    if isinstance(value, bool):
        raise ValueError(f"a coefficient must be a number, got {value!r}")
    if isinstance(value, int | float | complex | np.number):
        return complex(value)
    if isinstance(value, str):
        return complex(value.replace(" ", ""))
    if isinstance(value, Sequence) and len(value) == 2:
        return complex(float(value[0]), float(value[1]))
    raise ValueError(f"a coefficient must be a number, '<re>+<im>j' or [re, im]; got {value!r}")


def parse_term(text: str) -> list[tuple[str, int]]:
    """``"Sz 0 Sz 1"`` -> ``[("Sz", 0), ("Sz", 1)]``."""
    tokens = str(text).split()
    if not tokens or len(tokens) % 2:
        raise ValueError("expected 'OP site OP site …' (pairs of an operator and a site)")
    out = []
    for name, site in zip(tokens[::2], tokens[1::2], strict=True):
        if not site.lstrip("-").isdigit():
            raise ValueError(f"{site!r} is not a site number (after operator {name!r})")
        out.append((name, int(site)))
    return out


def show_term(coef, text) -> str:
    """A term as the user wrote it, for messages: ``[0.5, "S+ 2 S- 7"]``."""
    if isinstance(coef, int | float | complex | np.number) and not isinstance(coef, bool):
        c = complex(coef)
        coef = f"{c.real:g}" if c.imag == 0 else f"{c}".strip("()")
    return f'[{coef}, "{text}"]'


def from_terms(types: Sequence[SiteType], terms, extra_ops=None, with_texts: bool = False):
    """The :class:`SumOfProducts` of ``terms`` on sites of ``types``.

    Parameters
    ----------
    types : sequence of SiteType
        One per site.
    terms : iterable of (coefficient, str)
        See the module docstring; coefficients as :func:`parse_coef` takes them.
    extra_ops : dict of str to array, optional
        More named local matrices (a factory's), usable at sites of matching dimension.
    with_texts : bool
        Also return, per term of the result, the first of the user's terms that made it.

    Returns
    -------
    SumOfProducts, or (SumOfProducts, list of str) with ``with_texts``

    Raises
    ------
    TermError
        Naming the term (its position and text) and what is wrong with it.
    """
    d = len(types)
    extra = {k: np.asarray(v, dtype=np.complex128) for k, v in (extra_ops or {}).items()}
    ops: dict[str, np.ndarray] = {}
    out = []
    first: dict = {}
    for i, item in enumerate(terms):
        try:
            coef_in, text = item
        except (TypeError, ValueError):
            msg = f"term {i}: expected [coefficient, 'OP site …'], not {item!r}"
            raise TermError(msg) from None
        where = f"term {i} {show_term(coef_in, text) if isinstance(text, str) else repr(item)}"
        try:
            coef = parse_coef(coef_in)
            factors = parse_term(text)
        except ValueError as exc:
            raise TermError(f"{where}: {exc}") from None
        per_site: dict[int, list[str]] = {}
        for name, s in factors:
            if not 0 <= s < d:
                raise TermError(f"{where}: site {s} out of range 0..{d - 1}")
            per_site.setdefault(s, []).append(name)
        key = {}
        for s, names in sorted(per_site.items()):
            mats = []
            for name in names:
                if name in extra:
                    m = extra[name]
                    if m.shape != (types[s].dim,) * 2:
                        raise TermError(
                            f"{where}: operator {name!r} has shape {m.shape}, but site {s} "
                            f"({types[s].name}) has dimension {types[s].dim}"
                        )
                else:
                    try:
                        m = types[s].op(name)
                    except KeyError as exc:
                        raise TermError(f"{where}: site {s}: {exc.args[0]}") from None
                mats.append(m)
            if names == ["Id"]:
                continue
            full = "*".join(names) + "@" + types[s].name
            if full not in ops:
                prod = mats[0]
                for m in mats[1:]:
                    prod = prod @ m
                ops[full] = prod
            key[s] = full
        out.append((coef, key))
        first.setdefault(tuple(sorted(key.items())), show_term(coef_in, text))
    op = build([t.dim for t in types], ops, out)
    return (op, [first.get(k, "") for k in op.keys]) if with_texts else op


def check_hermitian(op: SumOfProducts, texts: Sequence[str] | None = None, tol=1e-10) -> None:
    """Raise :class:`TermError` unless ``op`` is Hermitian, naming a term that has no
    Hermitian partner.

    The operator is split uniquely as ``H = Σ_S H_S`` over the sets ``S`` of sites a term
    acts on, with every ``H_S`` traceless on each site of ``S``; ``H`` is Hermitian if and
    only if every ``H_S`` is. Each ``H_S`` is formed densely on its own sites (at most
    :data:`MAX_CHECK_DIM`; larger sets are skipped).

    Parameters
    ----------
    op : SumOfProducts
    texts : sequence of str, optional
        The user's term of each of ``op.keys`` (for the message).
    """
    by_set: dict[tuple[int, ...], list[int]] = {}
    for t, key in enumerate(op.keys):
        by_set.setdefault(tuple(s for s, _ in key), []).append(t)
    # the anti-Hermitian part D_S = (M_S - M_S^H) / 2 of each set's sum, on its own sites
    parts: dict[tuple[int, ...], np.ndarray] = {}
    for sites, members in by_set.items():
        dims = [op.dims[s] for s in sites]
        if int(np.prod(dims)) > MAX_CHECK_DIM:
            continue
        M = np.zeros((int(np.prod(dims)),) * 2, dtype=np.complex128) if sites else 0j
        for t in members:
            M = M + _term_matrix(op, t)
        parts[sites] = (M - M.conj().T) / 2 if sites else (M - np.conj(M)) / 2
    # move the trace parts down to smaller sets, largest sets first
    for size in range(max((len(s) for s in parts), default=0), 0, -1):
        for sites in [s for s in parts if len(s) == size]:
            D = parts[sites]
            dims = [op.dims[s] for s in sites]
            for pos, s in enumerate(sites):
                rest = tuple(x for x in sites if x != s)
                T = _partial_trace(D, dims, pos) / dims[pos]
                D = D - _embed(T, dims, pos)
                parts[rest] = parts.get(rest, 0) + T  # rest == (): the scalar part
            parts[sites] = D
    scale = max([abs(c) for c in op.coefs] + [1e-300])
    for sites, D in sorted(parts.items(), key=lambda kv: -len(kv[0])):
        if np.max(np.abs(D)) <= tol * scale:
            continue
        members = by_set.get(sites) or [
            t for s, ts in by_set.items() if set(sites) <= set(s) for t in ts
        ]
        if sites in by_set:  # the term whose own matrix overlaps the defect most
            overlap = [abs(np.vdot(_term_matrix(op, t), D)) for t in members]
            members = [members[int(np.argmax(overlap))]]
        t = members[0]
        shown = texts[t] if texts is not None and texts[t] else _describe(op, t)
        raise TermError(
            f"the Hamiltonian is not Hermitian: term {shown} on sites {list(sites)} has "
            "no Hermitian partner (add its conjugate, or set model.hermitian=false)"
        )


def _term_matrix(op: SumOfProducts, t: int):
    m = np.ones((1, 1), dtype=np.complex128)
    for _, name in op.keys[t]:
        m = np.kron(m, op.ops[name])
    return op.coefs[t] * m if op.keys[t] else op.coefs[t] * m[0, 0]


def _describe(op: SumOfProducts, t: int) -> str:
    body = " ".join(f"{name.split('@')[0]} {s}" for s, name in op.keys[t])
    return show_term(op.coefs[t], body)


def _partial_trace(D, dims, pos):
    """Trace of the operator ``D`` on ``prod(dims)`` over the factor at ``pos``."""
    k = len(dims)
    T = np.reshape(D, tuple(dims) * 2)
    T = np.trace(T, axis1=pos, axis2=pos + k)
    n = int(np.prod([x for i, x in enumerate(dims) if i != pos]))
    return np.reshape(T, (n, n)) if k > 1 else T


def _embed(T, dims, pos):
    """``T`` (on every factor but ``pos``) tensored with the identity at ``pos``."""
    k = len(dims)
    if k == 1:
        return T * np.eye(dims[0])
    rest = [x for i, x in enumerate(dims) if i != pos]
    full = np.multiply.outer(np.reshape(T, tuple(rest) * 2), np.eye(dims[pos]))
    # axes now: rest(rows), rest(cols), pos(row), pos(col) -> rows then cols in order
    order_rows = list(range(k - 1))
    order_rows.insert(pos, 2 * (k - 1))
    order_cols = list(range(k - 1, 2 * (k - 1)))
    order_cols.insert(pos, 2 * (k - 1) + 1)
    full = np.transpose(full, order_rows + order_cols)
    n = int(np.prod(dims))
    return np.reshape(full, (n, n))
