"""What a run recorded of each task, read lazily into ``TaskStats``.

A run of 100,000 tasks should not pay for 100,000 records nobody reads: the loop keeps
raw stamps (see ``_pools.Stamp``), and ``RunStats.tasks`` builds a ``TaskStats`` when
asked for one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any

from ._graph import _Task
from ._pools import Stamp
from ._stats import TaskStats

__all__ = ["Deps", "TaskTable", "Timing"]


class Timing:
    """Where and when each task last ran, in three dicts of atoms (floats, str): a run
    keeps one entry per task, and the garbage collector never scans these."""

    __slots__ = ("finished", "started", "worker")

    def __init__(self) -> None:
        self.started: dict[Hashable, float] = {}
        self.finished: dict[Hashable, float] = {}
        self.worker: dict[Hashable, str] = {}

    def note(self, key: Hashable, stamp: Stamp, i: int = 0) -> None:
        """Record call ``i`` of a unit stamped ``stamp`` as ``key``'s last run."""
        worker, times = stamp
        self.started[key] = times[i]
        self.finished[key] = times[i + 1]
        self.worker[key] = worker

    def __contains__(self, key: object) -> bool:
        return key in self.started

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.started)

    def __len__(self) -> int:
        return len(self.started)


class TaskTable(Mapping[Hashable, TaskStats]):
    """``key -> TaskStats`` for the tasks a run ran (last attempt) or reused."""

    def __init__(
        self,
        tasks: Mapping[Hashable, _Task],
        timing: Timing,
        queued_at: Mapping[Hashable, float],
        attempts: Mapping[Hashable, int],
        errors: Mapping[Hashable, Any],
        cached: Mapping[Hashable, float],
    ) -> None:
        self._tasks = tasks
        self._timing = timing
        self._queued = queued_at
        self._attempts = attempts
        self._errors = errors
        self._cached = cached

    def __getitem__(self, key: Hashable) -> TaskStats:
        kind = self._tasks[key].kind
        when = self._cached.get(key)
        if when is not None and key not in self._timing:
            return TaskStats(key, kind, "", 1, when, when, when, "cached")
        timing = self._timing
        started = timing.started[key]
        finished = timing.finished[key]
        worker = timing.worker[key]
        queued = min(self._queued.get(key, started), started)
        status = "failed" if key in self._errors else "finished"
        return TaskStats(
            key, kind, worker, self._attempts.get(key, 1), queued, started, finished, status
        )

    def __iter__(self) -> Iterator[Hashable]:
        yield from self._timing
        for key in self._cached:
            if key not in self._timing:
                yield key

    def __len__(self) -> int:
        return len(self._timing) + sum(1 for k in self._cached if k not in self._timing)

    def __contains__(self, key: object) -> bool:
        return key in self._timing or key in self._cached

    def __repr__(self) -> str:
        return f"<{len(self)} task records>"


class Deps(Mapping[Hashable, tuple[Hashable, ...]]):
    """``key -> the keys it depends on``, for the keys of one run (a view of its graph)."""

    def __init__(self, tasks: Mapping[Hashable, _Task], keys: Mapping[Hashable, Any]) -> None:
        self._tasks = tasks
        self._keys = keys

    def __getitem__(self, key: Hashable) -> tuple[Hashable, ...]:
        if key not in self._keys:
            raise KeyError(key)
        return self._tasks[key].preds

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
