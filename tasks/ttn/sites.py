"""Site types and their named local operators and states.

Conventions (ħ = 1):

* ``S=<S>`` (``S=1/2``, ``S=1``, ``S=3/2``, …): dimension 2S + 1, basis
  m = +S, +S - 1, …, -S. ``Sz Sx Sy S+ S-`` are spin operators (``Sz`` of spin-½ is
  diag(½, -½)); ``X Y Z`` are the Pauli matrices (spin-½ only, ``Z`` = diag(1, -1)).
  ``Pup`` and ``Pdn`` project on m = +S and m = -S.
* ``Boson:<n_max>``: dimension n_max + 1, basis n = 0 … n_max; ``B`` (annihilation,
  truncated), ``Bdag``, ``N``.
* ``Qudit:<q>``: dimension q, basis 0 … q - 1; ``N`` = diag(0, …, q - 1).
* Every type: ``Id``; ``P<k>`` = |k⟩⟨k| and ``E<j>_<k>`` = |j⟩⟨k| in basis order.

Named states: ``up`` (the first basis state: m = +S, n = 0), ``down`` (the last), ``+``
and ``-`` (spin-½ eigenstates of X), and integers (basis index).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np

__all__ = ["SiteType", "parse_site", "site_types"]

_SPIN = re.compile(r"S=(\d+)(?:/(\d+))?")
_BOSON = re.compile(r"Boson:(\d+)")
_QUDIT = re.compile(r"Qudit:(\d+)")
_PROJ = re.compile(r"P(\d+)")
_TRANS = re.compile(r"E(\d+)_(\d+)")

#: The forms a site type may take, for error messages.
FORMS = "'S=1/2', 'S=1', 'S=3/2', … (spin), 'Boson:<n_max>', 'Qudit:<q>'"
#: largest local dimension: every named operator of a site is a dense n x n matrix (at
#: 256, 1 MiB each), and a leaf's basis n x r
MAX_SITE_DIM = 256


@dataclass(frozen=True)
class SiteType:
    """One kind of site.

    Attributes
    ----------
    name : str
        Canonical spelling (``"S=1/2"``, ``"Boson:3"``, ``"Qudit:4"``).
    kind : {"spin", "boson", "qudit"}
    dim : int
        Local dimension.
    """

    name: str
    kind: str
    dim: int

    @property
    def spin(self) -> Fraction:
        """S, for a spin site."""
        return Fraction(self.dim - 1, 2)

    @cached_property
    def ops(self) -> dict[str, np.ndarray]:
        """The named operators of this type (besides ``P<k>`` and ``E<j>_<k>``)."""
        n = self.dim
        out = {"Id": np.eye(n, dtype=np.complex128)}
        if self.kind == "spin":
            S = float(self.spin)
            m = S - np.arange(n)  # +S … -S
            plus = np.zeros((n, n), dtype=np.complex128)
            for i in range(1, n):  # S+ |m_i> = sqrt(S(S+1) - m_i(m_i+1)) |m_i + 1 = m_{i-1}>
                plus[i - 1, i] = np.sqrt(S * (S + 1) - m[i] * (m[i] + 1))
            minus = plus.conj().T.copy()
            out.update(
                {
                    "Sz": np.diag(m).astype(np.complex128),
                    "S+": plus,
                    "S-": minus,
                    "Sx": (plus + minus) / 2,
                    "Sy": (plus - minus) / 2j,
                    "Pup": _projector(n, 0),
                    "Pdn": _projector(n, n - 1),
                }
            )
            if n == 2:
                out.update(
                    {
                        "X": np.array([[0, 1], [1, 0]], dtype=np.complex128),
                        "Y": np.array([[0, -1j], [1j, 0]], dtype=np.complex128),
                        "Z": np.array([[1, 0], [0, -1]], dtype=np.complex128),
                    }
                )
        elif self.kind == "boson":
            b = np.diag(np.sqrt(np.arange(1, n)), 1).astype(np.complex128)
            out.update({"B": b, "Bdag": b.conj().T.copy(), "N": np.diag(np.arange(n) + 0j)})
        else:
            out["N"] = np.diag(np.arange(n) + 0j)
        return out

    def op(self, name: str) -> np.ndarray:
        """The local operator ``name``, shape ``(dim, dim)``.

        Raises
        ------
        KeyError
            With the names this type knows, when it does not know ``name``.
        """
        if name in self.ops:
            return self.ops[name]
        if m := _PROJ.fullmatch(name):
            k = int(m[1])
            if k < self.dim:
                return _projector(self.dim, k)
        if m := _TRANS.fullmatch(name):
            j, k = int(m[1]), int(m[2])
            if j < self.dim and k < self.dim:
                out = np.zeros((self.dim, self.dim), dtype=np.complex128)
                out[j, k] = 1.0
                return out
        known = ", ".join(sorted(self.ops)) + f", P0…P{self.dim - 1}, E<j>_<k>"
        raise KeyError(f"{name!r} is not an operator of {self.name} sites (known: {known})")

    def adjoint_name(self, name: str) -> str | None:
        """The name of ``op(name)``'s adjoint, where it has one (for error messages)."""
        pairs = {"S+": "S-", "S-": "S+", "B": "Bdag", "Bdag": "B"}
        if name in pairs:
            return pairs[name]
        if m := _TRANS.fullmatch(name):
            return f"E{m[2]}_{m[1]}"
        return name if np.allclose(self.op(name), self.op(name).conj().T) else None

    def state(self, spec) -> np.ndarray:
        """A normalised local state: a name, a basis index or a vector of length ``dim``.

        Raises
        ------
        ValueError
            Naming what is allowed.
        """
        n = self.dim
        if isinstance(spec, bool):
            raise ValueError(f"a state of a {self.name} site cannot be {spec!r}")
        if isinstance(spec, int | np.integer) or (isinstance(spec, str) and spec.isdigit()):
            k = int(spec)
            if not 0 <= k < n:
                raise ValueError(f"basis state {k} out of range 0..{n - 1} for {self.name}")
            out = np.zeros(n, dtype=np.complex128)
            out[k] = 1.0
            return out
        if isinstance(spec, str):
            if spec == "up":
                return self.state(0)
            if spec == "down":
                return self.state(n - 1)
            if spec in ("+", "-") and n == 2 and self.kind == "spin":
                sign = 1.0 if spec == "+" else -1.0
                return np.array([1.0, sign], dtype=np.complex128) / np.sqrt(2)
            raise ValueError(
                f"unknown state {spec!r} for a {self.name} site; allowed: 'up', 'down', "
                + ("'+', '-', " if n == 2 and self.kind == "spin" else "")
                + f"a basis index 0..{n - 1} or a vector of length {n}"
            )
        v = np.asarray(spec, dtype=np.complex128)
        if v.shape != (n,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) == 0:
            raise ValueError(f"a {self.name} state must be a nonzero vector of length {n}")
        return v / np.linalg.norm(v)


def _projector(n: int, k: int) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.complex128)
    out[k, k] = 1.0
    return out


def parse_site(text: str) -> SiteType:
    """The :class:`SiteType` that ``text`` names.

    Raises
    ------
    ValueError
        Listing the allowed forms.
    """
    t = str(text).strip()
    if m := _SPIN.fullmatch(t):
        S = Fraction(int(m[1]), int(m[2] or 1))
        if S <= 0 or S.denominator not in (1, 2):
            raise ValueError(f"spin must be a positive multiple of 1/2 (got {t!r})")
        return _sized(SiteType(f"S={S}", "spin", int(2 * S + 1)), t)
    if m := _BOSON.fullmatch(t):
        if int(m[1]) < 1:
            raise ValueError(f"Boson:n_max needs n_max >= 1 (got {t!r})")
        return _sized(SiteType(f"Boson:{int(m[1])}", "boson", int(m[1]) + 1), t)
    if m := _QUDIT.fullmatch(t):
        if int(m[1]) < 2:
            raise ValueError(f"Qudit:q needs q >= 2 (got {t!r})")
        return _sized(SiteType(f"Qudit:{int(m[1])}", "qudit", int(m[1])), t)
    raise ValueError(f"unknown site type {t!r}; allowed: {FORMS}")


def _sized(site: SiteType, text: str) -> SiteType:
    if site.dim > MAX_SITE_DIM:
        raise ValueError(
            f"{text!r} has local dimension {site.dim}: at most {MAX_SITE_DIM} "
            "(every operator of a site is a dense matrix)"
        )
    return site


def site_types(spec, d: int) -> tuple[SiteType, ...]:
    """One :class:`SiteType` per site from one name for all or a list of ``d`` names."""
    if isinstance(spec, str):
        return (parse_site(spec),) * d
    spec = list(spec)
    if len(spec) != d:
        raise ValueError(f"a list of site types needs d={d} entries (got {len(spec)})")
    return tuple(parse_site(s) for s in spec)
