"""Results of a run: a read-only Mapping of values plus errors, skipped keys and statistics."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import TaskFailed

__all__ = ["Results", "RunStats"]


@dataclass(frozen=True)
class RunStats:
    """Figures of one run.

    Attributes:
        wall_time: seconds from the start of planning to the last outcome.
        tasks_run: tasks whose function this run called.
        tasks_reused: tasks not run because the Runner already held their value or
            another caller was computing it.
        tasks_failed: tasks that failed.
        tasks_skipped: tasks not run because something they need failed.
        bytes_to_processes: bytes pickled and sent to this Runner's process workers.
        bytes_from_processes: bytes pickled and received from them.
        values_kept: process task values that stayed in the worker that computed them,
            never pickled (``Graph.run`` and ``map_shared`` on their own pools).
        values_moved: values sent to a process worker that did not compute them (from
            another worker or from the caller), each counted once per worker.
        bytes_moved: those values' pickled bytes (part of ``bytes_to_processes``).
        tasks_recomputed: tasks run again because the worker keeping their value died
            before every task that needs it had read it.
        tasks_retried: attempts started again after a failure (``retries=``); each
            attempt also counts in ``tasks_run``.
    """

    wall_time: float
    tasks_run: int
    tasks_reused: int
    tasks_failed: int
    tasks_skipped: int
    bytes_to_processes: int = 0
    bytes_from_processes: int = 0
    values_kept: int = 0
    values_moved: int = 0
    bytes_moved: int = 0
    tasks_recomputed: int = 0
    tasks_retried: int = 0

    def __str__(self) -> str:
        return (
            f"{self.tasks_run} tasks run, {self.tasks_reused} reused, "
            f"{self.tasks_failed} failed, {self.tasks_skipped} skipped "
            f"in {self.wall_time:.3f} s"
        )


class Results(Mapping[Hashable, Any]):
    """The values a run returns, by key; a read-only Mapping.

    ``results[key]`` of a task that failed, or that was skipped because something it
    needs failed, raises that failure's ``TaskFailed``.

    Attributes:
        errors: each failed key -> its TaskFailed.
        skipped: the keys that were not run because a dependency failed.
        stats: figures of the run (``RunStats``).
    """

    def __init__(
        self,
        values: dict[Hashable, Any],
        errors: dict[Hashable, TaskFailed],
        skipped: dict[Hashable, TaskFailed],
        stats: RunStats,
    ) -> None:
        self._values = values
        self.errors = errors
        self._skipped = skipped
        self.stats = stats

    @property
    def skipped(self) -> list[Hashable]:
        """The keys not run because a dependency failed."""
        return list(self._skipped)

    @property
    def ok(self) -> bool:
        """True when no task failed."""
        return not self.errors

    def __getitem__(self, key: Hashable) -> Any:
        try:
            return self._values[key]
        except KeyError:
            failure = self.errors.get(key) or self._skipped.get(key)
            if failure is not None:
                # A fresh traceback at each lookup, not one growing with every raise.
                raise failure.with_traceback(None) from failure.__cause__
            raise

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        extra = ""
        if self.errors:
            extra = f", {len(self.errors)} failed, {len(self._skipped)} skipped"
        return f"<Results: {len(self._values)} values{extra}>"
