"""WHERE tasks run: one `Executor` interface over in-process, Dask and Ray backends.

>>> from tilegraph import cluster
>>> with cluster.connect("sync") as ex:
...     ex.gather(ex.map(pow, [1, 2, 3], [2, 2, 2]))
[1, 4, 9]

`cluster` never imports `tasks`, `storage` or `pipelines`; Dask and Ray are imported only
when an executor of theirs is created.
"""

from .base import ActorHandle, Executor, Future, Ref, ResourceError
from .connect import connect, expected_memory_limit
from .faults import DataLost, is_worker_lost
from .specs import SPECS_HELP, Spec, SpecError, parse_spec

__all__ = [
    "SPECS_HELP",
    "ActorHandle",
    "DataLost",
    "Executor",
    "Future",
    "Ref",
    "ResourceError",
    "Spec",
    "SpecError",
    "connect",
    "expected_memory_limit",
    "is_worker_lost",
    "parse_spec",
]
