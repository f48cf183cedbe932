"""Pipelines registered through the entry-point group ``tilegraph.pipelines``.

A user's package adds a pipeline with, in its ``pyproject.toml``::

    [project.entry-points."tilegraph.pipelines"]
    my-problem = "my_package.pipeline:PIPELINE"

where ``PIPELINE`` is a :class:`tilegraph.pipelines.base.Pipeline`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Pipeline

GROUP = "tilegraph.pipelines"

# The built-in pipelines, so a checkout that is not pip-installed still finds them.
_BUILTIN = {
    "domain-split": "tilegraph.pipelines.domain_split:PIPELINE",
    "ttn": "tilegraph.pipelines.ttn:PIPELINE",
    "bilevel": "tilegraph.pipelines.bilevel:PIPELINE",
    "picard": "tilegraph.pipelines.picard:PIPELINE",
}


def _load(target: str) -> Pipeline:
    module, _, attr = target.partition(":")
    mod = __import__(module, fromlist=[attr])
    obj = getattr(mod, attr)
    if not isinstance(obj, Pipeline):
        raise TypeError(f"entry point {target!r} is not a pipelines.Pipeline")
    return obj


def available() -> dict[str, str]:
    """Pipeline names and their ``module:attr`` targets (not imported)."""
    targets = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        targets[ep.name] = ep.value
    return dict(sorted(targets.items()))


def load_pipelines() -> dict[str, Pipeline]:
    """Every registered pipeline, imported."""
    return {name: _load(target) for name, target in available().items()}


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``.

    Raises
    ------
    KeyError
        With the list of known names.
    """
    targets = available()
    if name not in targets:
        raise KeyError(f"unknown pipeline {name!r}; choose one of: {', '.join(targets)}")
    return _load(targets[name])
