"""Config and presets of the ``ttn`` pipeline."""

from __future__ import annotations

import cmath
import json
import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tilegraph.tasks.devices import Device

from ..base import PipelineConfig
from ..config import check_applies, int_or_auto, paired, shorten
from ..imports import ImportPath

#: Largest d for which the exact reference (a dense 2^d vector and sparse H) is offered.
MAX_EXACT_D = 14
#: Most steps T/h of one integration (10^7: days of steps; more is a typo in T or h).
MAX_STEPS = 10**7
#: ``ramp=auto`` per method: halvings of the first step (docs/ttn.md, "The first step":
#: the parallel BUG's ranks grew with more; the sequential one's error fell up to 8-12
#: and rose again at 16, whose first step adds directions with weights near theta).
RAMP_AUTO = {"sequential": 8, "parallel": 4}
#: Most halvings ``ramp`` takes (h / 2^30 is below any useful step).
MAX_RAMP = 30


class ModelConfig(BaseModel):
    """The Hamiltonian (energy units; time in 1/energy).

    ``tfi``: ``-J sum Z_i Z_{i+1} - g sum X_i``; ``lr-ising``: ``sum (omega X_k + delta
    n_k) + sum_{i<j} nu |i-j|^-alpha n_i n_j``; ``xxz``: ``J sum (XX + YY + anisotropy
    ZZ)`` (all three on spin-1/2 sites, written as terms by :meth:`term_list`);
    ``terms``: the user's ``[coefficient, "OP site OP site ..."]`` list; ``custom``: a
    factory's.
    """

    model_config = ConfigDict(extra="forbid")
    #: The kinds each field applies to (see ``pipelines.config.check_applies``).
    APPLIES: ClassVar[dict] = {
        "J": ("kind", ("tfi", "xxz")),
        "g": ("kind", ("tfi",)),
        "omega": ("kind", ("lr-ising",)),
        "delta": ("kind", ("lr-ising",)),
        "nu": ("kind", ("lr-ising",)),
        "alpha": ("kind", ("lr-ising",)),
        "anisotropy": ("kind", ("xxz",)),
        "hermitian": ("kind", ("terms", "custom")),
    }

    kind: Literal["tfi", "lr-ising", "xxz", "terms", "custom"] = "tfi"
    J: float = Field(default=1.0, description="tfi/xxz coupling")
    g: float = Field(default=1.0, description="tfi transverse field")
    omega: float = Field(default=1.0, description="lr-ising Rabi frequency")
    delta: float = Field(default=1.0, description="lr-ising detuning")
    nu: float = Field(default=2.0, description="lr-ising interaction strength")
    alpha: float = Field(default=1.0, ge=0, description="lr-ising interaction decay exponent")
    anisotropy: float = Field(default=0.5, description="xxz Delta")
    terms: list[tuple[Any, str]] | None = Field(
        default=None,
        description='kind=terms: [[coefficient, "OP site OP site ..."], ...]; coefficients '
        "real, '<re>+<im>j' strings or [re, im]",
    )
    hermitian: bool = Field(default=True, description="refuse a non-Hermitian Hamiltonian")
    factory: ImportPath | None = Field(
        default=None,
        description="kind=custom: 'package.module:name', called as name(**params); returns "
        "{'terms': [...], 'ops': {name: matrix}} or a SumOfProducts",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="kind=custom: its kwargs")

    @model_validator(mode="after")
    def _sources(self):
        check_applies(self)
        paired("kind", self.kind, "terms", "terms", self.terms, "[[coefficient, 'OP site ...']]")
        paired("kind", self.kind, "custom", "factory", self.factory, "'package.module:name'")
        if self.params and self.kind != "custom":
            raise ValueError("params are the factory's arguments: only with kind=custom")
        return self

    def params_of_builtin(self) -> dict[str, Any]:
        """Keyword arguments of the built-in model ``kind``."""
        if self.kind == "tfi":
            return {"J": self.J, "g": self.g}
        if self.kind == "lr-ising":
            return {"omega": self.omega, "delta": self.delta, "nu": self.nu, "alpha": self.alpha}
        return {"J": self.J, "delta": self.anisotropy}

    def term_list(self, d: int) -> list[tuple[Any, str]]:
        """The Hamiltonian as terms (a built-in model written out, or the user's)."""
        if self.kind == "terms":
            return list(self.terms)
        from tilegraph.tasks.ttn.operators import builtin_terms

        return builtin_terms(self.kind, d, **self.params_of_builtin())


class TTNConfig(PipelineConfig):
    """Time evolution ``y' = -i H y`` of a spin chain as a tree tensor network.

    Fields are listed by ``tilegraph run ttn --set FIELD=VALUE``.
    """

    model_config = ConfigDict(extra="forbid")
    #: Fields that only one choice of another uses (see
    #: ``pipelines.config.check_user_fields_apply``).
    APPLIES: ClassVar[dict] = {
        "tilt": ("start", ("tilted-neel",)),
        "subtree_depth": ("schedule", ("subtrees",)),
    }

    d: int = Field(default=8, ge=2, le=128, description="number of sites")
    sites: str | list[str] = Field(
        default="S=1/2",
        description="site type, one for all or one per site: 'S=1/2', 'S=1', 'S=3/2', ..., "
        "'Boson:<n_max>', 'Qudit:<q>'",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    tree: Literal["binary", "tucker", "spec"] = "binary"
    tree_spec: Any = Field(default=None, description="nested lists of sites, with tree=spec")
    start: Any = Field(
        default="up",
        description="product start state: 'tilted-neel' (spin-1/2), or per site (one for all "
        "or a list of d) a name ('up', 'down', '+', '-'), a basis index or a vector",
    )
    start_factory: ImportPath | None = Field(
        default=None,
        description="'package.module:name' called as name(d); returns d local state vectors "
        "(replaces start)",
    )
    tilt: float = Field(default=0.3, description="tilt angle (rad) of tilted-neel")
    observables: list[str] = Field(
        default_factory=list,
        description="operator products recorded every observe_every steps, e.g. 'Sz 3', "
        "'Sz 0 Sz 5', 'N 4'",
    )
    observe_every: int = Field(default=1, ge=1, description="steps between observations")
    method: Literal["parallel", "sequential"] = "parallel"
    schedule: Literal["subtrees", "nodes"] = Field(
        default="subtrees",
        description="subtrees: one stateful worker per subtree (see subtree_depth) keeps it; "
        "nodes: every leaf K-step and node Galerkin step is a task (parallel method)",
    )
    subtree_depth: int = Field(
        default=1,
        ge=1,
        description="subtrees schedule: the workers' subtrees hang this many edges below the "
        "root (1: one per child of the root; 2^depth on a binary tree); above them, one "
        "branch worker per child of the root holds the nodes between, the driver the root",
    )
    T: float = Field(default=1.0, gt=0, description="final time")
    h: float = Field(default=0.05, gt=0, description="step size")
    h_list: list[float] | None = Field(
        default=None, description="convergence study: one run to T per step size"
    )
    theta: float = Field(default=1e-8, gt=0, description="truncation tolerance")
    relative: bool = Field(default=False, description="theta relative to the norm")
    r_min: int = Field(default=2, ge=1, description="smallest rank kept")
    padding: Literal["auto", "unit", "random"] = Field(
        default="auto",
        description="the start's zero-weight directions up to r_min: the next unit vectors, "
        "seeded random ones (they let a start in a symmetry sector out; docs/ttn.md), or "
        "auto: random for a start that is an eigenstate of its mean field, else unit",
    )
    ramp: int | Literal["auto"] = Field(
        default="auto",
        description="the first step taken as k+1 steps h/2^k, h/2^k, h/2^(k-1), ..., h/2 "
        "(a product start's first step makes most of the error; docs/ttn.md); "
        f"auto: {RAMP_AUTO['sequential']} sequential, {RAMP_AUTO['parallel']} parallel; 0: off",
    )
    r_max: int = Field(default=40, ge=1, description="largest rank kept")
    reject: bool = Field(
        default=True,
        description="redo a step from the augmented bases when no rank was truncated",
    )
    c: float = Field(
        default=10.0, gt=0, description="reject a step when h*eta > c*theta (parallel)"
    )
    tol: float = Field(default=1e-12, gt=0, lt=1e-2, description="Lanczos sub-flow tolerance")
    device: Device = Field(
        default="cpu",
        description="where workers run the step kernels (K-steps, Galerkin steps, QR, "
        "SVD): NumPy, CuPy (one GPU per worker), or array-api-strict (the GPU code path "
        "checked on a CPU); the driver's share stays in NumPy",
    )
    exact_reference: bool = Field(
        default=True,
        description="compare with expm_multiply of the sparse H on the driver "
        f"(d <= {MAX_EXACT_D} sites)",
    )

    @field_validator("ramp", mode="before")
    @classmethod
    def _ramp(cls, v):
        return int_or_auto(v, 0, MAX_RAMP)

    @field_validator("h_list")
    @classmethod
    def _positive(cls, v):
        if v is not None and (not v or any(x <= 0 for x in v)):
            raise ValueError(f"must be a non-empty list of positive step sizes (got {v})")
        return v

    @model_validator(mode="after")
    def _cross(self):
        from tilegraph.tasks.ttn.sites import site_types

        try:
            types = site_types(self.sites, self.d)
        except ValueError as exc:
            raise ValueError(f"sites: {exc}") from None
        if self.model.kind in BUILTIN and any(t.name != "S=1/2" for t in types):
            raise ValueError(f"model.kind={self.model.kind} is a spin-1/2 model: sites='S=1/2'")
        if self.start_factory is None:
            try:
                self.start_vectors()
            except ValueError as exc:
                raise ValueError(f"start: {exc}") from None
        if self.model.kind == "terms":
            from tilegraph.tasks.ttn.terms import TermError

            try:
                self.make_operator()
            except TermError as exc:
                raise ValueError(f"model.terms: {exc}") from None
        for i, text in enumerate(self.observables):
            from tilegraph.tasks.ttn.terms import TermError, from_terms

            try:
                if not from_terms(types, [(1.0, text)]).keys[0]:
                    raise TermError("acts on no site (Id only)")
            except TermError as exc:
                msg = str(exc).replace("term 0 ", "")
                raise ValueError(f"observables[{i}] {text!r}: {msg}") from None
        if self.r_max < self.r_min:
            raise ValueError(f"r_max={self.r_max} must be >= r_min={self.r_min}")
        for h in self.h_list or [self.h]:
            n = self.T / h
            if not n <= MAX_STEPS:
                raise ValueError(
                    f"T/h = {n:.3g} steps (T={self.T:g}, h={h:g}): at most {MAX_STEPS:.0e}; "
                    "lower T or raise h"
                )
            if abs(n - round(n)) > 1e-9 * max(1.0, n) or round(n) < 1:
                raise ValueError(f"T={self.T} must be a whole number of steps h={h}")
        if self.exact_reference and self.d > MAX_EXACT_D:
            raise ValueError(
                f"exact_reference needs d <= {MAX_EXACT_D} (got d={self.d}): "
                "set exact_reference=false"
            )
        if self.h_list is not None and not self.exact_reference:
            raise ValueError("h_list (a convergence study) needs exact_reference=true")
        if self.tree == "spec":
            from tilegraph.tasks.ttn.trees import make_tree

            try:
                make_tree("spec", self.d, _as_tuple(self.tree_spec))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"tree_spec: {exc}") from None
        elif self.tree_spec is not None:
            raise ValueError("tree_spec is only used with tree=spec")
        return self

    def steps(self, h: float | None = None) -> int:
        return int(round(self.T / (h or self.h)))

    def ramp_halvings(self) -> int:
        """The ``k`` of ``ramp`` (``auto`` resolved per method)."""
        return RAMP_AUTO[self.method] if self.ramp == "auto" else self.ramp

    def make_tree(self):
        from tilegraph.tasks.ttn.trees import make_tree

        return make_tree(self.tree, self.d, _as_tuple(self.tree_spec))

    def site_types(self):
        """One :class:`tilegraph.tasks.ttn.sites.SiteType` per site."""
        from tilegraph.tasks.ttn.sites import site_types

        return site_types(self.sites, self.d)

    def make_operator(self):
        """The Hamiltonian as a :class:`tilegraph.tasks.ttn.operators.SumOfProducts`.

        Raises
        ------
        tilegraph.tasks.ttn.terms.TermError
            Naming the offending term (unknown operator, site out of range, an operator
            not defined for that site type, a coefficient that is not finite, not
            Hermitian) or, for ``kind=custom``, what is wrong with what the factory
            returned.
        ValueError
            ``kind=custom``: the factory raised (its exception, in one line).
        """
        from tilegraph.tasks.ttn.terms import check_hermitian, from_terms

        types = self.site_types()
        if self.model.kind == "custom":
            op, texts = self._factory_operator(types)
        else:
            key = json.dumps(
                [self.model.model_dump(mode="json"), [t.name for t in types]], sort_keys=True
            )
            if key in _OPERATORS:  # built and checked before in this process
                return _OPERATORS[key]
            op, texts = from_terms(types, self.model.term_list(self.d), with_texts=True)
        _check_coefs(op, texts)
        if self.model.hermitian:
            check_hermitian(op, texts)
        if self.model.kind != "custom":
            _OPERATORS[key] = op
            while len(_OPERATORS) > 4:
                _OPERATORS.pop(next(iter(_OPERATORS)))
        return op

    def _factory_operator(self, types):
        """``(operator, texts)`` from ``model.factory``: what it returned, checked."""
        from tilegraph.tasks.ttn.operators import SumOfProducts
        from tilegraph.tasks.ttn.terms import TermError, from_terms

        target = self.model.factory
        got = _call_user(target, "model.factory", f"{target}(**model.params)", **self.model.params)
        if isinstance(got, SumOfProducts):
            _check_sum(got, types)
            return got, None
        if not isinstance(got, dict) or "terms" not in got:
            raise TermError(
                f"{target} returned {_kind(got)}; it must return {{'terms': [...], "
                "'ops': {...}} or a SumOfProducts"
            )
        unknown = sorted(str(k) for k in got if k not in ("terms", "ops"))
        if unknown:
            raise TermError(f"{target} returned unknown keys {unknown} (allowed: 'terms', 'ops')")
        terms = got["terms"]
        if not isinstance(terms, list | tuple):
            raise TermError(
                f"{target} returned 'terms' as {_kind(terms)}; it must be a list of "
                "[coefficient, 'OP site ...']"
            )
        extra = _user_ops(got.get("ops"), target)
        return from_terms(types, terms, extra, with_texts=True)

    def start_vectors(self) -> list:
        """Local start states, one vector of its site's dimension per site."""
        import numpy as np

        types = self.site_types()
        if self.start_factory is not None:
            target = self.start_factory
            got = _call_user(target, "start_factory", f"{target}(d)", self.d)
            try:
                if isinstance(got, str | bytes | dict):
                    raise TypeError
                got = list(got)
            except TypeError:
                raise ValueError(
                    f"{target} returned {_kind(got)}; it must return d={self.d} vectors"
                ) from None
            if len(got) != self.d:
                raise ValueError(f"{target} returned {len(got)} vectors for d={self.d}")
            return [_start_vector(t, got[k], k, target) for k, t in enumerate(types)]
        if self.start == "tilted-neel":
            if any(t.name != "S=1/2" for t in types):
                raise ValueError("'tilted-neel' needs spin-1/2 sites")
            c, s = math.cos(self.tilt / 2), math.sin(self.tilt / 2)
            return [np.array([c, s] if i % 2 == 0 else [s, -c]) for i in range(self.d)]
        per = self.start
        if isinstance(per, list) and len(per) == self.d and not _is_vector(per, types[0].dim):
            return [t.state(v) for t, v in zip(types, per, strict=True)]
        if isinstance(per, list) and not _is_vector(per, types[0].dim):
            raise ValueError(f"a list of start states needs d={self.d} entries (got {len(per)})")
        return [t.state(per) for t in types]


def _call_user(target: str, field: str, shown: str, *args, **kwargs):
    """Call the user's function ``target`` (``package.module:name``).

    Parameters
    ----------
    target : str
        The import path.
    field : str
        The config field that holds it (for a path that does not resolve).
    shown : str
        The call as messages show it, e.g. ``"mod:f(d)"``.
    *args, **kwargs
        Its arguments.

    Raises
    ------
    ImportPathError
        ``target`` does not resolve (its message names ``field``).
    ValueError
        The function raised: ``"<shown> raised <type>: <first line>"``.
    """
    from ..imports import resolve

    fn = resolve(target, field=field)
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # SystemExit: a user exit() is an error here
        lines = str(exc).strip().splitlines()
        msg = lines[0][:200] if lines else ""
        raise ValueError(f"{shown} raised {type(exc).__name__}: {msg}") from exc


def _kind(value) -> str:
    """``None`` or the type's name, for messages about what user code returned."""
    return "None" if value is None else f"a {type(value).__name__}"


def _matrix(value):
    """``value`` as a complex array, or None when it is not numbers."""
    import numpy as np

    if isinstance(value, str | bytes):
        return None
    try:
        return np.asarray(value, dtype=np.complex128)
    except (TypeError, ValueError):
        return None


def _user_ops(ops, target: str):
    """A factory's named matrices, checked: square, finite numbers."""
    import numpy as np
    from tilegraph.tasks.ttn.terms import TermError

    if ops is None:
        return None
    if not isinstance(ops, dict):
        raise TermError(f"{target} returned 'ops' as {_kind(ops)}; it must be a dict of matrices")
    out = {}
    for name, value in ops.items():
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise TermError(f"{target}: ops name {name!r} must be a word (a string, no spaces)")
        m = _matrix(value)
        if m is None or m.ndim != 2 or m.shape[0] != m.shape[1]:
            got = "not numbers" if m is None else f"shape {m.shape}"
            raise TermError(
                f"{target}: ops[{name!r}] must be a square matrix of numbers ({got}: "
                f"{shorten(value, 60)})"
            )
        if not np.all(np.isfinite(m)):
            raise TermError(f"{target}: ops[{name!r}] holds NaN or infinity")
        out[name] = m
    return out


def _check_sum(op, types) -> None:
    """A factory's :class:`SumOfProducts`: on the sites' dimensions, its terms' operators
    there and of the right shape, every number finite."""
    import numpy as np
    from tilegraph.tasks.ttn.terms import TermError

    dims = tuple(t.dim for t in types)
    if tuple(op.dims) != dims:
        raise TermError(
            f"the factory returned an operator on dimensions {tuple(op.dims)}, but sites "
            f"give {dims}"
        )
    if len(op.keys) != len(op.coefs):
        raise TermError(
            f"the factory's SumOfProducts has {len(op.keys)} keys but {len(op.coefs)} coefs"
        )
    for t, key in enumerate(op.keys):
        for s, name in key:
            where = f"the factory's SumOfProducts: term {t}"
            if not 0 <= s < len(dims):
                raise TermError(f"{where}: site {s} out of range 0..{len(dims) - 1}")
            if name not in op.ops:
                raise TermError(f"{where}: operator {name!r} is not in its ops")
            if np.shape(op.ops[name]) != (dims[s],) * 2:
                raise TermError(
                    f"{where}: operator {name!r} has shape {np.shape(op.ops[name])}, but "
                    f"site {s} has dimension {dims[s]}"
                )
    for name, m in op.ops.items():
        if not np.all(np.isfinite(m)):
            raise TermError(f"the factory's SumOfProducts: ops[{name!r}] holds NaN or infinity")


def _check_coefs(op, texts) -> None:
    """Refuse a coefficient that is NaN or infinite, naming its term (before the
    Hermiticity check, which would compute with it)."""
    from tilegraph.tasks.ttn.terms import TermError, show_term

    for t, c in enumerate(op.coefs):
        if not cmath.isfinite(c):
            body = " ".join(f"{name.split('@')[0]} {s}" for s, name in op.keys[t])
            shown = texts[t] if texts is not None and texts[t] else show_term(c, body)
            raise TermError(f"term {shown}: the coefficient must be finite")


def _start_vector(t, value, k: int, target: str):
    """Site ``k``'s start vector from ``start_factory``, checked and normalised."""
    import numpy as np

    where = f"{target} returned for site {k} ({t.name})"
    if isinstance(value, str | int | np.integer) and not isinstance(value, bool):
        try:  # a name or a basis index, as start takes them
            return t.state(value)
        except ValueError as exc:
            raise ValueError(f"{where} {value!r}: {exc}") from None
    v = _matrix(value)
    if v is None or v.shape != (t.dim,):
        got = "not numbers" if v is None else f"shape {v.shape}"
        raise ValueError(f"{where} {shorten(value, 60)} ({got}): need a vector of length {t.dim}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{where} a vector holding NaN or infinity")
    if not np.any(v):
        raise ValueError(f"{where} the zero vector (it is normalised: give a nonzero one)")
    return t.state(v)


#: Operators built from terms in this process, by model and site types (validating a
#: config, estimating a run and running it each need the operator: 0.3 s for 2080 terms).
_OPERATORS: dict = {}


def _is_vector(value, dim: int) -> bool:
    """Whether ``value`` is one local state vector (numbers), not a list per site."""
    return (
        isinstance(value, list)
        and all(isinstance(x, int | float | complex) and not isinstance(x, bool) for x in value)
        and len(value) == dim
        and not all(isinstance(x, int) for x in value)
    )


#: The built-in spin-1/2 models.
BUILTIN = ("tfi", "lr-ising", "xxz")


def _as_tuple(spec):
    if isinstance(spec, list | tuple):
        return tuple(_as_tuple(s) for s in spec)
    return spec


PRESETS: dict[str, dict] = {
    "quick": {
        "d": 8,
        "model": {"kind": "tfi"},
        "T": 1.0,
        "h": 0.05,
        "r_max": 16,
        "exact_reference": True,
    },
    "paper": {
        "d": 16,
        "model": {"kind": "lr-ising"},
        "T": 1.0,
        "h": 0.01,
        "theta": 1e-8,
        "r_min": 2,
        "r_max": 40,
        "c": 10.0,
        "exact_reference": False,
    },
    "convergence": {
        "d": 4,
        "model": {"kind": "lr-ising"},
        "T": 1.0,
        "h_list": [2.0 ** -(k + 2) for k in range(1, 9)],
        # with step rejection the rank reaches its full value 4 at once and every later
        # step is exact up to the truncation floor: no time-discretisation error to see.
        # Without it the rank is full after the first step too, and the study measures
        # that step (its h^2 with ramp=0; docs/ttn.md, "Presets")
        "reject": False,
        "theta": 1e-8,
        "r_min": 2,
        "r_max": 40,
        "checkpoint_s": None,  # the end of each study is saved anyway
        "exact_reference": True,
    },
}
