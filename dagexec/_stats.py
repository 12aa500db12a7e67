"""Figures of one run: per-task timings, busy time, the critical path and a Chrome trace.

Pure: no threads, no clocks read here. The runner records one ``TaskStats`` per task
it ran or reused and hands them, with each task's dependencies, to ``RunStats``; every
figure below is derived from those records on first use and cached.

    runner loop --TaskStats per key, deps, workers--> RunStats
        busy_time, utilization          per kind, from durations and worker counts
        critical_path(_time)            longest chain of durations along deps
        parallelism                     total work / critical path time
        __str__                         a short human summary
        to_chrome_trace(path)           Trace Event Format JSON (Perfetto, chrome://tracing)

Glossary:
    queued / started / finished   ``time.perf_counter()`` seconds of a task's last attempt
    duration                      finished - started: the time a worker spent on it
    wait                          started - queued: the time it sat ready for a worker
    cached                        a value reused, not run; zero duration, no worker, and
                                  never on the critical path (it waited for nothing)
"""

from __future__ import annotations

import heapq
import json
import os
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

__all__ = ["RunStats", "TaskStats"]

# The track that shows cached tasks (reused, not run) in the Chrome trace.
CACHED_TRACK = "cached (reused, not run)"
# The track of a task that ran but whose worker the runner did not record.
UNKNOWN_TRACK = "(unknown worker)"
_TOP_TASKS = 5
_LABEL_LIMIT = 40
_PATH_HEAD = 3
_PATH_TAIL = 2


@dataclass(frozen=True, slots=True)
class TaskStats:
    """Timings of one task in one run.

    Attributes:
        key: the task's key.
        kind: where it ran: ``"thread"``, ``"process"``, ``"inline"`` or ``"async"``.
        worker: what ran it: a thread name (``"dagexec-thread-0"``), ``"pid 1234"`` for
            a process worker, ``"dagexec-async"``, the caller's thread for inline
            tasks, or ``""`` when it did not run (a reused value).
        attempts: attempts started; 1 unless retried.
        queued: ``time.perf_counter()`` when its last attempt became ready to run.
        started: ``time.perf_counter()`` when its last attempt started running.
        finished: ``time.perf_counter()`` when its last attempt ended. A reused value has
            ``queued == started == finished``.
        status: ``"finished"``, ``"failed"`` or ``"cached"`` (value reused, not run).
    """

    key: Hashable
    kind: str
    worker: str
    attempts: int
    queued: float
    started: float
    finished: float
    status: str

    @property
    def duration(self) -> float:
        """Return the seconds its last attempt ran (``finished - started``)."""
        return self.finished - self.started

    @property
    def wait(self) -> float:
        """Return the seconds its last attempt waited for a worker (``started - queued``)."""
        return self.started - self.queued


@dataclass(frozen=True)
class RunStats:
    """Figures of one run.

    ``print(stats)`` gives a short summary: counts, busy time and utilization per
    kind, the critical path, the parallelism the graph allows and the longest tasks.
    ``stats.to_chrome_trace(path)`` writes a timeline for Perfetto.

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
        tasks_cached: tasks not run because the run's ``DiskCache`` had their value
            (also counted in ``tasks_reused``).
        tasks: one ``TaskStats`` per task this run ran or reused, by key.
        workers: per kind, the number of workers of that kind the run had.
        deps: each task's dependencies (the edges of the critical path).
        started_at: ``time.perf_counter()`` when the run started; time zero of the trace.
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
    tasks_cached: int = 0
    # Mappings are left out of the hash (a dict is unhashable) and ``tasks`` out of the
    # repr (a run may have 100,000 of them).
    tasks: Mapping[Hashable, TaskStats] = field(default_factory=dict, repr=False, hash=False)
    workers: Mapping[str, int] = field(default_factory=dict, hash=False)
    deps: Mapping[Hashable, tuple[Hashable, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    started_at: float = 0.0

    # Derived figures are cached_property (a frozen dataclass without slots keeps them in
    # the instance __dict__); the public properties hand out copies of mutable ones.

    @cached_property
    def _busy(self) -> dict[str, float]:
        busy: dict[str, float] = {}
        for task in self.tasks.values():
            if task.status != "cached":
                busy[task.kind] = busy.get(task.kind, 0.0) + task.duration
        return busy

    @cached_property
    def _critical(self) -> tuple[list[Hashable], float]:
        return _critical_path(self.tasks, self.deps)

    @property
    def busy_time(self) -> dict[str, float]:
        """Return per kind the seconds its workers spent running tasks (reused ones excluded)."""
        return dict(self._busy)

    @property
    def utilization(self) -> dict[str, float]:
        """Return per kind the share of its workers' time spent running tasks, in [0, 1].

        Only for kinds in ``workers`` with a positive count: ``busy_time[kind] /
        (wall_time * workers[kind])``; 0.0 when the run took no time.
        """
        shares: dict[str, float] = {}
        for kind, count in self.workers.items():
            if count > 0:
                capacity = self.wall_time * count
                busy = self._busy.get(kind, 0.0)
                shares[kind] = min(1.0, max(0.0, busy / capacity)) if capacity > 0 else 0.0
        return shares

    @property
    def critical_path(self) -> list[Hashable]:
        """Return the chain of dependent tasks with the largest total duration, first task first.

        Follows ``deps`` between tasks that ran; reused values (and dependencies with no
        record in ``tasks``) are left out. Empty when no task ran.
        """
        return list(self._critical[0])

    @property
    def critical_path_time(self) -> float:
        """Return the total duration of the tasks on the critical path, in seconds."""
        return self._critical[1]

    @property
    def parallelism(self) -> float:
        """Return the parallelism the graph allows: total work / critical path time.

        The speed-up over running the tasks one after another that unlimited workers
        could give at most; 1.0 when the critical path took no time.
        """
        span = self._critical[1]
        if span <= 0:
            return 1.0
        return sum(self._busy.values()) / span

    def __str__(self) -> str:
        lines = [
            f"{self.tasks_run} tasks run, {self.tasks_reused} reused"
            + (f" ({self.tasks_cached} from the cache)" if self.tasks_cached else "")
            + f", {self.tasks_failed} failed, {self.tasks_skipped} skipped "
            f"in {self.wall_time:.3f} s"
        ]
        ran = [task for task in self.tasks.values() if task.status != "cached"]
        if not ran:
            return lines[0]
        lines += self._kind_lines()
        path, span = self._critical
        lines.append(
            f"critical path: {_plural(len(path), 'task')}, {_seconds(span)}: {_path_text(path)}"
        )
        lines.append(f"parallelism the graph allows: {self.parallelism:.1f}x")
        lines.append("top tasks by time:")
        for task in heapq.nlargest(_TOP_TASKS, ran, key=lambda t: t.duration):
            lines.append(f"  {_seconds(task.duration):>9}  {_label(task.key)}  ({_details(task)})")
        return "\n".join(lines)

    def _kind_lines(self) -> list[str]:
        utilization = self.utilization
        lines = []
        for kind, busy in sorted(self._busy.items(), key=lambda item: -item[1]):
            line = f"{kind}: busy {_seconds(busy)}"
            if kind in utilization:
                workers = _plural(self.workers[kind], "worker")
                line += f" over {workers}, {utilization[kind]:.0%} utilized"
            lines.append(line)
        return lines

    def to_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write the run's timeline as Trace Event Format JSON, for Perfetto or chrome://tracing.

        One track per worker; each task that ran is a complete event on its worker's
        track, from its start to its end (failed ones drawn in red, its key, kind,
        attempts, status and queue time in its args). Tasks that overlap on one worker
        (coroutines on the async loop) spill onto more tracks of it ("dagexec-async #2").
        Reused values, which did not run, are instant events on a track of their own.
        Times are whole microseconds from ``started_at``.

        Args:
            path: the file to write (replaced if it exists).
        """
        # One dumps and one write: json.dump's many small writes are ~4x slower.
        text = json.dumps(_chrome_trace(self))
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)


def _critical_path(
    tasks: Mapping[Hashable, TaskStats], deps: Mapping[Hashable, tuple[Hashable, ...]]
) -> tuple[list[Hashable], float]:
    """Return the longest chain of durations among the tasks that ran, and its time.

    Dynamic programming in topological order (Kahn's algorithm over ``deps``), so equal
    timestamps cannot put a task before its dependency; no recursion, for chains
    100,000 deep. A chain is scored by (time, tasks): of chains that took equally long,
    the one with more tasks wins, so zero-duration tasks still link up.
    """
    ran = {key: task for key, task in tasks.items() if task.status != "cached"}
    best: dict[Hashable, tuple[float, int]] = {}
    link: dict[Hashable, Hashable] = {}
    end: Hashable = None
    end_score = (0.0, 0)
    for key in _topological(ran, deps):
        score = (0.0, 0)
        for dep in deps.get(key, ()):
            # A dep not scored yet is missing, cached, or on a cycle: not a link.
            dep_score = best.get(dep)
            if dep_score is not None and dep_score > score:
                score = dep_score
                link[key] = dep
        score = (score[0] + ran[key].duration, score[1] + 1)
        best[key] = score
        if score > end_score:
            end, end_score = key, score
    if end_score[1] == 0:
        return [], 0.0
    path = [end]
    while path[-1] in link:
        path.append(link[path[-1]])
    path.reverse()
    return path, end_score[0]


def _topological(
    tasks: Mapping[Hashable, TaskStats], deps: Mapping[Hashable, tuple[Hashable, ...]]
) -> list[Hashable]:
    """Return the keys of ``tasks`` with each after its dependencies among them.

    Dependencies outside ``tasks`` are ignored. Should ``deps`` hold a cycle, the keys on
    it (and after it) follow in order of ``finished``.
    """
    pending: dict[Hashable, int] = {}
    dependents: dict[Hashable, list[Hashable]] = {key: [] for key in tasks}
    for key in tasks:
        inside = [dep for dep in dict.fromkeys(deps.get(key, ())) if dep in tasks]
        pending[key] = len(inside)
        for dep in inside:
            dependents[dep].append(key)
    ready = deque(key for key, count in pending.items() if count == 0)
    order: list[Hashable] = []
    while ready:
        key = ready.popleft()
        order.append(key)
        for child in dependents[key]:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    if len(order) < len(tasks):
        placed = set(order)
        rest = [key for key in tasks if key not in placed]
        order += sorted(rest, key=lambda key: tasks[key].finished)
    return order


def _chrome_trace(stats: RunStats) -> dict[str, Any]:
    """Return the Trace Event Format object (JSON-ready) for ``stats``.

    Times are whole microseconds: rounding each instant once keeps a task that starts
    when the one before it on its worker ends from overlapping it by a rounding error.
    """
    records = sorted(stats.tasks.values(), key=lambda t: (t.started, t.finished))
    # Time zero is the run's start, moved back to the first record should one precede it
    # (or the runner not say), so that no ts is negative.
    origin = min((min(t.queued, t.started) for t in records), default=stats.started_at)
    if stats.started_at > 0:
        origin = min(origin, stats.started_at)

    def us(seconds: float) -> int:
        return round((seconds - origin) * 1e6)

    on_path = set(stats.critical_path)
    tracks = _Tracks()
    events: list[dict[str, Any]] = []
    for task in (t for t in records if t.status != "cached"):
        start, end = us(task.started), max(us(task.started), us(task.finished))
        event = _event(task, "X", start, us(task.queued), on_path)
        event.update(dur=end - start, tid=tracks.place(task.worker or UNKNOWN_TRACK, start, end))
        if task.status == "failed":
            event["cname"] = "terrible"
        events.append(event)
    for task in (t for t in records if t.status == "cached"):
        start = us(task.started)
        event = _event(task, "i", start, us(task.queued), on_path)
        event.update(s="t", tid=tracks.place(CACHED_TRACK, start, start))
        events.append(event)
    return {
        "traceEvents": tracks.metadata() + events,
        "displayTimeUnit": "ms",
        "otherData": _other_data(stats),
    }


def _event(
    task: TaskStats, phase: str, ts: int, queued_us: int, on_path: set[Hashable]
) -> dict[str, Any]:
    """Return the trace event of ``task``, but for its track (and duration)."""
    return {
        "ph": phase,
        "name": _name(task.key),
        "cat": task.kind if task.status != "cached" else "cached",
        "ts": ts,
        "pid": 1,
        "args": {
            "key": repr(task.key),
            "kind": task.kind,
            "worker": task.worker,
            "attempts": task.attempts,
            "status": task.status,
            "queued_us": queued_us,
            "critical_path": task.key in on_path,
        },
    }


class _Tracks:
    """The trace's tracks (tids): one per worker, in order of first use.

    Slices on one track must not overlap, yet tasks on one worker can (coroutines on the
    async loop): those spill onto more tracks of that worker, named "worker #2" and on.
    """

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        # per worker: a heap of (end of its last slice, tid), one entry per track
        self._lanes: dict[str, list[tuple[int, int]]] = {}

    def place(self, worker: str, start: int, end: int) -> int:
        """Return the tid for a slice of ``worker`` from ``start`` to ``end``.

        Slices must be placed in order of start.
        """
        lanes = self._lanes.setdefault(worker, [])
        if lanes and lanes[0][0] <= start:
            tid = lanes[0][1]
            heapq.heapreplace(lanes, (end, tid))
            return tid
        tid = len(self.names) + 1
        self.names[tid] = worker if not lanes else f"{worker} #{len(lanes) + 1}"
        heapq.heappush(lanes, (end, tid))
        return tid

    def metadata(self) -> list[dict[str, Any]]:
        """Return the metadata events that name the process and each track."""
        events: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "dagexec run"}}
        ]
        for tid, name in self.names.items():
            for meta, args in (
                ("thread_name", {"name": name}),
                ("thread_sort_index", {"sort_index": tid}),
            ):
                events.append({"ph": "M", "name": meta, "pid": 1, "tid": tid, "args": args})
        return events


def _other_data(stats: RunStats) -> dict[str, Any]:
    """Return the run's figures for the trace's metadata (JSON-ready)."""
    return {
        "wall_time_s": stats.wall_time,
        "tasks_run": stats.tasks_run,
        "tasks_reused": stats.tasks_reused,
        "tasks_failed": stats.tasks_failed,
        "tasks_skipped": stats.tasks_skipped,
        "workers": dict(stats.workers),
        "busy_time_s": stats.busy_time,
        "critical_path": [_name(key) for key in stats.critical_path],
        "critical_path_time_s": stats.critical_path_time,
        "parallelism": stats.parallelism,
    }


def _name(key: Hashable) -> str:
    """Return ``key`` as text: a printable str as is, anything else as its repr."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _label(key: Hashable) -> str:
    """Return ``key`` as text short enough for one line of the summary."""
    text = _name(key)
    if len(text) > _LABEL_LIMIT:  # keep both ends: keys often differ only at the end
        head = (_LABEL_LIMIT - 3) // 3
        text = text[:head] + "..." + text[head + 3 - _LABEL_LIMIT :]
    return text


def _path_text(path: list[Hashable]) -> str:
    if len(path) > _PATH_HEAD + _PATH_TAIL + 1:
        hidden = len(path) - _PATH_HEAD - _PATH_TAIL
        shown = [_label(k) for k in path[:_PATH_HEAD]]
        shown += [f"... ({hidden} more) ..."] + [_label(k) for k in path[-_PATH_TAIL:]]
    else:
        shown = [_label(k) for k in path]
    return " -> ".join(shown)


def _details(task: TaskStats) -> str:
    parts = [task.kind, task.worker or "no worker"]
    if task.attempts > 1:
        parts.append(f"{task.attempts} attempts")
    if task.status == "failed":
        parts.append("failed")
    return ", ".join(parts)


def _seconds(seconds: float) -> str:
    """Return a duration with a unit that keeps it readable (s, ms or us)."""
    if abs(seconds) >= 1.0:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
