"""dagexec: run a DAG of Python tasks with maximum parallelism; shared work runs exactly once.

::

    import dagexec

    g = dagexec.Graph()
    tree = g.add("parse:a", parse, "a.md", kind="process")
    g.add("check:a:r1", check, tree, "r1")
    results = g.run()
"""

from ._cache import DiskCache, NotCacheable
from ._errors import (
    Cancelled,
    CycleError,
    DagexecError,
    DuplicateKeyError,
    GraphError,
    MissingDependencyError,
    TaskFailed,
    TaskTimeout,
    WorkerDied,
)
from ._events import TaskEvent
from ._graph import Graph, Ref
from ._options import Backoff
from ._results import Results, RunStats
from ._runner import Runner
from ._shared import imap_shared, map_shared
from ._stats import TaskStats

__version__ = "0.1.0.dev0"

__all__ = [
    "Backoff",
    "Cancelled",
    "CycleError",
    "DagexecError",
    "DiskCache",
    "DuplicateKeyError",
    "Graph",
    "GraphError",
    "MissingDependencyError",
    "NotCacheable",
    "Ref",
    "Results",
    "RunStats",
    "Runner",
    "TaskEvent",
    "TaskFailed",
    "TaskStats",
    "TaskTimeout",
    "WorkerDied",
    "__version__",
    "imap_shared",
    "map_shared",
]
