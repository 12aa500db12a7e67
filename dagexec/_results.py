"""Results of a run: a read-only Mapping of values plus errors, skipped keys and statistics."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._errors import TaskFailed
from ._pictures import Node, fn_name, to_dot, to_mermaid
from ._stats import RunStats

if TYPE_CHECKING:
    from ._graph import _Task

__all__ = ["Results", "RunStats"]


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
        # For pictures, set by the run: its tasks, the keys it reused and ran, and
        # whether it was cancelled (what did not finish then is "cancelled").
        self._tasks: Mapping[Hashable, _Task] | None = None
        self._keys: tuple[Mapping[Hashable, Any], ...] = ()
        self._stopped = False
        self._finished: set[Hashable] = set()  # finished, with no record (a cut chain)

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

    def to_mermaid(self, title: str | None = None) -> str:
        """The run's graph as a Mermaid flowchart, colored by status, with durations."""
        return to_mermaid(self._nodes(), title=title)

    def to_dot(self, title: str | None = None) -> str:
        """The run's graph in Graphviz DOT, colored by status, with durations."""
        return to_dot(self._nodes(), title=title)

    def _nodes(self) -> dict[Hashable, Node]:
        tasks = self._tasks
        if tasks is None:
            raise ValueError("these Results have no graph to draw (map_shared returns none)")
        records = self.stats.tasks
        unfinished = "cancelled" if self._stopped else "not run"
        nodes: dict[Hashable, Node] = {}
        for keys in self._keys:
            for key in keys:
                task = tasks[key]
                record = records.get(key)
                duration = None
                attempts = 1
                if key in self.errors:
                    status = "failed"
                elif key in self._skipped:
                    status = "skipped"
                elif record is not None:
                    status = record.status
                elif key in self._finished:
                    status = "finished"
                else:
                    status = unfinished
                if record is not None:
                    attempts = record.attempts
                    if record.status != "cached":
                        duration = record.duration
                fn = fn_name(task.fn)
                nodes[key] = Node(task.preds, task.kind, fn, status, duration, attempts)
        return nodes

    def __repr__(self) -> str:
        extra = ""
        if self.errors:
            extra = f", {len(self.errors)} failed, {len(self._skipped)} skipped"
        return f"<Results: {len(self._values)} values{extra}>"
