"""From presets, a YAML file and ``--set key=value`` overrides to one validated config.

Every source goes through the same pydantic validation, and every problem is reported
as one line that names the field and what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .base import Pipeline


class ConfigError(ValueError):
    """Bad input: the message is one line naming the field and what is allowed."""


def parse_set(item: str) -> tuple[list[str], Any]:
    """Split ``key.sub=value``; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set n_fine=200)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({first})") from None
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
    if not p.is_file():
        raise ConfigError(f"--config: no such file {path!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--config {path}: not valid YAML ({first})") from None
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
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif "input" in err and err["type"] not in ("missing",):
        msg = f"{msg} (got {err['input']!r})"
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


def build_config(
    pipeline: Pipeline,
    preset: str | None = None,
    config_file: str | None = None,
    sets: Iterable[str] = (),
    base: Mapping | None = None,
) -> BaseModel:
    """Validate preset + file + overrides into the pipeline's config model.

    Parameters
    ----------
    pipeline : Pipeline
    preset : str, optional
        Name of a preset; the pipeline's default preset when None and no ``base``.
    config_file : str, optional
        YAML file with (nested) fields.
    sets : iterable of str
        ``key=value`` overrides, dotted keys for nested fields.
    base : mapping, optional
        Start from this config instead of a preset (used by ``--resume`` and sweeps).

    Raises
    ------
    ConfigError
    """
    if base is not None:
        data = dict(base)
    else:
        name = preset or pipeline.default_preset
        if name not in pipeline.presets:
            raise ConfigError(
                f"--preset: unknown preset {name!r} for {pipeline.name}; "
                f"choose one of: {', '.join(pipeline.presets)}"
            )
        data = dict(pipeline.presets[name])
    if config_file:
        data = _merge(data, read_config_file(config_file))
    for item in sets:
        path, value = parse_set(item)
        data = _set_path(data, path, value)
    try:
        return pipeline.config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(pipeline.config, exc)) from None
