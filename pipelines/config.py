"""From presets, a YAML file and ``--set key=value`` overrides to one validated config.

Every source goes through the same pydantic validation, and every problem is reported
as one line that names the field and what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import cmath
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from tilegraph.cluster.jobqueue import TextBase60Loader

from .base import Pipeline


class ConfigError(ValueError):
    """Bad input: the message is one line naming the field and what is allowed."""


#: Largest ``--config`` file and ``--set`` value read, in bytes.
MAX_YAML_BYTES = 1 << 20
#: Most values (scalars, list items, mapping entries) a YAML document may expand to,
#: counting every use of an alias: a config is small, an alias bomb is not.
MAX_YAML_VALUES = 100_000


def shorten(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for one-line error messages."""
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_expansion(value: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(
            f"expands to more than {MAX_YAML_VALUES} values (YAML aliases?); "
            "a config is much smaller"
        )
    if isinstance(value, Mapping):
        for v in value.values():
            _check_expansion(v, budget)
    elif isinstance(value, list):
        for v in value:
            _check_expansion(v, budget)


class _UniqueKeyLoader(TextBase60Loader):
    """The safe loader (``12:00`` kept as text) that refuses a key given twice in one
    mapping (YAML says keys are unique; PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: keys may override
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shorten(key, 80)} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """Parse bounded YAML: at most :data:`MAX_YAML_BYTES` and :data:`MAX_YAML_VALUES`.

    Raises
    ------
    ConfigError
        ``where`` and the first line of the problem.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES // 1024} KiB")
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        if getattr(exc, "problem", None):  # the problem and where it is, not the context
            first = exc.problem
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML ({first[:200]}{at})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    try:
        _check_expansion(value, [MAX_YAML_VALUES])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    return value


def parse_set(item: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value``; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {shorten(item)}: expected key=value (e.g. --set n_fine=200)")
    if len(key) > 200:
        raise ConfigError(f"--set {shorten(key)}: not a config field")
    value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
    return key.split("."), value


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_path(data: dict, path: list[str], value: Any) -> dict:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return _merge(data, nested)


def read_config_file(path: str) -> dict:
    """Read a YAML (or JSON) mapping from ``path``."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config {shorten(path)}: a folder, not a YAML file")
    if p.exists() and not p.is_file():
        raise ConfigError(f"--config {shorten(path)}: not a regular file (YAML expected)")
    if not p.is_file():
        raise ConfigError(f"--config: no such file {shorten(path)}")
    try:
        if p.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"--config {path}: larger than {MAX_YAML_BYTES // 1024} KiB")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file (YAML expected)") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    data = load_yaml(text, f"--config {path}")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"--config {path}: expected a mapping of fields, got {type(data).__name__}"
        )
    return dict(data)


def describe_error(model: type[BaseModel], exc: ValidationError) -> str:
    """One line for the first validation error: field, problem, what is allowed."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        allowed = _field_names(model, err["loc"][:-1])
        msg = f"unknown field; allowed fields: {', '.join(allowed)}"
        key = str(err["loc"][-1])
        if "." in key and key.split(".")[0] in allowed:  # a dotted key in a --config file
            head, rest = key.split(".", 1)
            nested = f"{head}: {{{rest}: …}}"
            msg = f"dotted keys work in --set only; in a YAML file nest them ({nested})"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {shorten(err['input'])})"
    if not err["loc"]:  # a rule across fields: its message names them
        return f"config: {msg}"
    return f"config field '{loc}': {msg}"


def _field_names(model: type[BaseModel], loc) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return sorted(model.model_fields)


def int_or_auto(value: Any, lo: int, hi: int | None = None) -> int | str:
    """``"auto"``, or ``value`` as an integer in ``[lo, hi]`` (a whole float or a numeric
    string is taken); else ``ValueError`` saying what is allowed.

    For a field typed ``int | Literal["auto"]``, as a ``mode="before"`` validator: the
    union's own errors name a union member (``'n_coarse.int'``), not the field.
    """
    if value == "auto":
        return value
    v = value
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            pass
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**31:
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
        raise ValueError(f"must be {allowed} or auto (got {v!r})")
    return v


def paired(kind_name: str, kind: str, wanted: str, name: str, value: Any, form: str) -> None:
    """Raise ``ValueError`` unless ``name`` is given exactly when ``kind == wanted``
    (``factory`` with ``kind=custom``, say); ``form`` shows the value's form."""
    if kind == wanted and value is None:
        raise ValueError(f"{kind_name}={wanted} needs {name}={form}")
    if kind != wanted and value is not None:
        raise ValueError(
            f"{name} is used only with {kind_name}={wanted} (here {kind_name}={kind}): "
            f"set {kind_name}={wanted} too, or drop {name}"
        )


def _ignored(model: BaseModel, name: str) -> tuple[str, tuple, Any, str | None] | None:
    """``(selector, kinds, chosen, also)`` when field ``name`` of ``model`` is off its
    default although the kind chosen by ``selector`` ignores it; else None.

    The model's class attribute ``APPLIES = {field: (selector, (kinds, ...))}`` says
    which kinds use which fields; a third entry ``also`` names a list field whose
    entries are chosen as well (bilevel's ``compare`` runs more methods)."""
    rule = getattr(type(model), "APPLIES", {}).get(name)
    if rule is None:
        return None
    selector, kinds, also = (*rule, None) if len(rule) == 2 else rule
    chosen = getattr(model, selector)
    default = type(model).model_fields[name].get_default(call_default_factory=True)
    more = list(getattr(model, also)) if also else []
    if chosen in kinds or any(k in kinds for k in more) or getattr(model, name) == default:
        return None
    return selector, kinds, chosen, also


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_applies(model: BaseModel) -> None:
    """Raise ``ValueError`` for a field of ``model`` that was given (by a preset too) off
    its default although the chosen kind ignores it (see :func:`_ignored`). For models
    whose presets never set another kind's fields (ttn's, bilevel's); a stored config (a
    resume) holds every field, the defaults too: those pass."""
    for name in sorted(model.model_fields_set):
        hit = _ignored(model, name)
        if hit is not None:
            selector, kinds, chosen, _ = hit
            raise ValueError(
                f"{name} applies to {selector}={' or '.join(map(_shown, kinds))}, not "
                f"{selector}={_shown(chosen)} (drop it, or set the {selector})"
            )


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, Mapping) and value:
        return [p for k, v in value.items() for p in _leaf_paths(v, (*prefix, str(k)))]
    return [prefix] if prefix else []


def check_user_fields_apply(
    config: BaseModel, paths: Iterable[Iterable[str]], varied: Iterable[str] = ()
) -> None:
    """Refuse a field the user set (``--set``, ``--config``) off its default although
    the kind chosen for its section ignores it (``--set problem.eps=0.5`` with
    ``problem.kind=constant`` would change nothing).

    Which fields apply to which kinds comes from the models' ``APPLIES`` tables (see
    :func:`_ignored`). Presets are not checked (a preset's fields may belong to its own
    kind), nor fields whose selector a sweep grid varies (``varied``: dotted paths).

    Raises
    ------
    ConfigError
    """
    varied = set(varied)
    for path in paths:
        path = list(path)
        model: Any = config
        for i, name in enumerate(path):
            if not isinstance(model, BaseModel) or name not in type(model).model_fields:
                break
            hit = _ignored(model, name)
            if hit is not None:
                selector, kinds, chosen, also = hit
                sel_path = ".".join([*path[:i], selector])
                also_path = ".".join([*path[:i], also]) if also else None
                if sel_path not in varied and also_path not in varied:
                    listed = f" (or in {also_path})" if also else ""
                    raise ConfigError(
                        f"config field '{'.'.join(path)}': applies to "
                        f"{sel_path}={' or '.join(map(_shown, kinds))}{listed}, not "
                        f"{sel_path}={_shown(chosen)} (drop it, or set {sel_path})"
                    )
            model = getattr(model, name)


def check_preset(pipeline: Any, name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one of the pipeline's presets."""
    if name not in pipeline.presets:
        raise ConfigError(
            f"--preset: unknown preset {shorten(name, 80)} for {pipeline.name}; "
            f"choose one of: {', '.join(pipeline.presets)}"
        )


def build_config(
    pipeline: Pipeline,
    preset: str | None = None,
    config_file: str | Mapping | None = None,
    sets: Iterable[str] = (),
    base: Mapping | None = None,
    varied: Iterable[str] = (),
) -> BaseModel:
    """Validate preset + file + overrides into the pipeline's config model.

    Parameters
    ----------
    pipeline : Pipeline
    preset : str, optional
        Name of a preset; the pipeline's default preset when None and no ``base``.
    config_file : str or mapping, optional
        YAML file with (nested) fields, or the fields themselves.
    sets : iterable of str
        ``key=value`` overrides, dotted keys for nested fields.
    base : mapping, optional
        Start from this config instead of a preset (used by ``--resume`` and sweeps).
    varied : iterable of str
        Dotted keys a sweep grid varies (see :func:`check_user_fields_apply`).

    Raises
    ------
    ConfigError
    """
    if base is not None:
        data = dict(base)
    else:
        name = preset or pipeline.default_preset
        check_preset(pipeline, name)
        data = dict(pipeline.presets[name])
    given: list = []  # the user's own fields (not the preset's)
    if config_file:
        fields = config_file if isinstance(config_file, Mapping) else read_config_file(config_file)
        data = _merge(data, fields)
        given += _leaf_paths(fields)
    for item in sets:
        path, value = parse_set(item)
        data = _set_path(data, path, value)
        given.append(path)
    _check_finite(data)
    _check_no_bools(pipeline.config, data)
    try:
        config = pipeline.config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(pipeline.config, exc)) from None
    except ArithmeticError as exc:  # a rule across fields overflowed on extreme values
        raise ConfigError(f"config: values out of range ({type(exc).__name__}: {exc})") from None
    _check_finite(config.model_dump(mode="python"))
    check_user_fields_apply(config, given, varied)
    return config


def _numeric_only(annotation: Any) -> tuple[bool, list]:
    """``(numbers, inner)`` of a field's type: whether it takes numbers but not booleans
    (pydantic reads ``true`` as 1 there), and the types inside containers, unions and
    nested models to look into."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_only(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [
            typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in typing.get_args(annotation)
        ]
        if bool in args:
            return False, []
        numbers = any(a in (int, float) for a in args)
        return numbers, [a for a in args if a not in (int, float, type(None))]
    if annotation in (int, float):
        return True, []
    return False, [annotation]


def _check_no_bools(model: Any, value: Any, where: str = "") -> None:
    """Refuse ``true``/``false`` for a field that takes numbers (``--set window=true``
    would otherwise run with a window of 1), and strings that read as non-finite numbers
    (``inf``: pydantic would take them, and rules across fields see them first)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        if not isinstance(value, Mapping):
            return
        for key, sub in value.items():
            field = model.model_fields.get(key) if isinstance(key, str) else None
            if field is None:
                continue
            path = f"{where}.{key}" if where else key
            if isinstance(sub, bool) and _numeric_only(field.annotation)[0]:
                what = f" ({field.description})" if field.description else ""
                raise ConfigError(
                    f"config field '{path}': must be a number, not a boolean "
                    f"(got {str(sub).lower()}){what}"
                )
            _check_no_bools(field.annotation, sub, path)
        return
    numbers, inner = _numeric_only(model)
    if numbers and isinstance(value, bool):
        raise ConfigError(
            f"config field '{where}': must be a number, not a boolean (got {str(value).lower()})"
        )
    if numbers and isinstance(value, str):  # YAML reads inf, nan, 1e400 as strings
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not math.isfinite(number):
            raise ConfigError(f"config field '{where}': must be a finite number (got {value})")
    for tp in inner:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)):
            items = [a for a in args if a is not Ellipsis]
            for i, v in enumerate(value):
                item = items[min(i, len(items) - 1)] if items else Any
                if origin is tuple and len(items) > 1 and i >= len(items):
                    break
                _check_no_bools(item, v, f"{where}[{i}]")
        elif origin is dict and isinstance(value, Mapping) and len(args) == 2:
            for k, v in value.items():
                _check_no_bools(args[1], v, f"{where}.{k}")
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            _check_no_bools(tp, value, where)


def _check_finite(value: Any, where: str = "") -> None:
    """Refuse NaN and ±inf anywhere in a config: every number a pipeline takes is meant
    to be finite (``--set tol=.inf`` would otherwise fail much later, or run wrong)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config field '{where}': must be a finite number (got {value})")
    if isinstance(value, complex) and not cmath.isfinite(value):
        raise ConfigError(f"config field '{where}': must be a finite number (got {value})")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")
