"""The exception tree.

```
DagexecError(Exception)
├─ GraphError(DagexecError, ValueError)     the graph cannot run as built
│  ├─ CycleError                           .cycle: the keys around the loop
│  ├─ MissingDependencyError               .key (missing), .needed_by
│  └─ DuplicateKeyError                    .key
├─ TaskFailed(DagexecError)                .key, .attempts; __cause__ is the user's exception
│  └─ TaskTimeout(TaskFailed, TimeoutError) .timeout: the task ran past its timeout=
├─ WorkerDied(DagexecError)                a process worker vanished mid-task
└─ Cancelled(DagexecError, CancelledError) .results: the run was cancelled, timed out or
                                           interrupted (Ctrl-C raises one that is also a
                                           KeyboardInterrupt)
```
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import Results

__all__ = [
    "Cancelled",
    "CycleError",
    "DagexecError",
    "DuplicateKeyError",
    "GraphError",
    "MissingDependencyError",
    "TaskFailed",
    "TaskTimeout",
    "WorkerDied",
]

_MAX_CHAINS_SHOWN = 10


class DagexecError(Exception):
    """Base class of every error dagexec raises itself."""


class GraphError(DagexecError, ValueError):
    """The graph cannot run as built; raised before any task starts."""


class CycleError(GraphError):
    """The graph has a dependency cycle.

    Attributes:
        cycle: the keys around the loop, each needing the next; the last needs the first.
    """

    def __init__(self, cycle: Sequence[Hashable]) -> None:
        self.cycle: list[Hashable] = list(cycle)
        loop = " -> ".join(repr(k) for k in [*self.cycle, self.cycle[0]])
        super().__init__(
            f"dependency cycle: {loop} (each task needs the next); remove one of these edges"
        )


class MissingDependencyError(GraphError):
    """A task depends on a key that is not in the graph.

    Attributes:
        key: the missing key.
        needed_by: the keys of the tasks that need it.
    """

    def __init__(self, key: Hashable, needed_by: Sequence[Hashable]) -> None:
        self.key = key
        self.needed_by: list[Hashable] = list(needed_by)
        who = ", ".join(repr(k) for k in self.needed_by)
        super().__init__(
            f"task {key!r} is needed by {who} but was never added; "
            f"add it with graph.add({key!r}, ...) or fix the reference"
        )


class DuplicateKeyError(GraphError):
    """A key was added twice with different definitions."""

    def __init__(self, key: Hashable, detail: str) -> None:
        self.key = key
        super().__init__(
            f"task {key!r} is already defined differently ({detail}); "
            "use a different key, or add exactly the same definition to reuse it"
        )


class WorkerDied(DagexecError):
    """The process worker running a task died (os._exit, a signal, the OOM killer)."""


class TaskFailed(DagexecError):
    """A task raised, could not be sent to its worker, or lost its worker.

    The user's original exception (with its traceback, from process workers too) is
    ``__cause__``.

    Attributes:
        key: the key of the task that failed.
        attempts: how many times it was tried (more than 1 when it had ``retries``).
        blocked: the keys that could not run because of this failure, nearest first.
        results: when raised by ``run``, the results that completed before the run
            stopped (nothing computed is lost); ``None`` otherwise.
    """

    def __init__(
        self,
        key: Hashable,
        reason: str,
        *,
        chains: Sequence[Sequence[Hashable]] = (),
    ) -> None:
        self.key = key
        self.reason = reason
        self.chains: list[list[Hashable]] = [list(c) for c in chains]
        self.blocked: list[Hashable] = [c[0] for c in self.chains]
        self.results: Results | None = None
        self.attempts = 1
        super().__init__(self._message())

    def _set_chains(self, chains: Sequence[Sequence[Hashable]]) -> None:
        self.chains = [list(c) for c in chains]
        self.blocked = [c[0] for c in self.chains]
        self.args = (self._message(),)

    def _message(self) -> str:
        msg = f"task {self.key!r} {self.reason}"
        if not self.chains:
            return msg
        shown = [" <- ".join(str(k) for k in chain) for chain in self.chains[:_MAX_CHAINS_SHOWN]]
        more = len(self.chains) - len(shown)
        tail = f", and {more} more" if more else ""
        return f"{msg}; could not run: {', '.join(shown)}{tail}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_failed, (self.key, self.reason, self.chains))


def _rebuild_task_failed(key: Hashable, reason: str, chains: list[list[Hashable]]) -> TaskFailed:
    return TaskFailed(key, reason, chains=chains)


class TaskTimeout(TaskFailed, TimeoutError):
    """A task ran longer than its ``timeout=``.

    A process task's worker is terminated; a thread task cannot be stopped in Python, so
    it is abandoned (it runs on, its value is dropped) and its dependents never start.

    Attributes:
        timeout: the limit in seconds that the task exceeded.
    """

    def __init__(self, key: Hashable, timeout: float, what: str) -> None:
        self.timeout = timeout
        super().__init__(key, f"timed out after {timeout:g} s ({what})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout, (self.key, self.timeout, self.reason, self.chains))


def _rebuild_timeout(
    key: Hashable, timeout: float, reason: str, chains: list[list[Hashable]]
) -> TaskTimeout:
    err = TaskTimeout(key, timeout, "")
    err.reason = reason
    err._set_chains(chains)
    return err


class Cancelled(DagexecError, CancelledError):
    """The run was cancelled (``Runner.cancel``), ran past its ``timeout=`` or was
    interrupted (Ctrl-C, raised as an exception that is also a ``KeyboardInterrupt``).

    Queued work was dropped and process workers running the run's tasks were
    terminated. Nothing computed is lost:

    Attributes:
        results: the ``Results`` of the tasks that completed before it stopped.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.results: Results | None = None


class _Interrupted(Cancelled, KeyboardInterrupt):
    """Ctrl-C stopped a run: a KeyboardInterrupt that carries the run's results."""
