"""How a problem is put together: validated configs, plans over ``tasks``, ``cluster``
and ``storage``, and the ``tilegraph`` command line.

A pipeline is a :class:`tilegraph.pipelines.base.Pipeline`; pipelines register through the entry
point group ``tilegraph.pipelines`` (see :mod:`tilegraph.pipelines.registry`).
"""

from .base import Deferred, Pipeline, RunContext
from .registry import get_pipeline, load_pipelines

__all__ = ["Deferred", "Pipeline", "RunContext", "get_pipeline", "load_pipelines"]
