"""Task events: what ``run(on_event=...)`` is told, and the one place that calls it.

A run's loop builds events as it learns of them and hands them to the callback after
each batch of outcomes, on its own thread and never under a lock. Times are
``time.perf_counter()`` seconds, taken where the thing happened (a worker thread, a
worker process; ``perf_counter`` is one clock for every process of a machine), so a
``started`` event may reach the callback after the task has already finished: the loop
hears of a task's start with its outcome.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

__all__ = ["EventType", "TaskEvent", "check_on_event"]

#: What happened to a task:
#:
#: - ``queued``: its inputs exist; it waits for a worker (again after a retry's backoff).
#: - ``started``: it began running on ``worker``.
#: - ``finished``: it returned.
#: - ``failed``: its last attempt raised (``error`` is its ``TaskFailed``).
#: - ``retried``: an attempt raised and another one will follow (``error``: the cause).
#: - ``skipped``: it never ran because something it needs failed (``error``: that).
#: - ``cached``: its value was reused (held by the Runner, computed by another caller).
#: - ``cancelled``: the run stopped (cancel, timeout, Ctrl-C, or the first failure with
#:   ``on_error="raise"``) before it finished.
EventType = Literal[
    "queued", "started", "finished", "failed", "retried", "skipped", "cached", "cancelled"
]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One thing that happened to one task of a run.

    Attributes:
        type: what happened (see ``EventType``).
        key: the task's key.
        kind: its pool kind: ``"thread"``, ``"process"``, ``"inline"`` or ``"async"``.
        worker: where it ran: a thread name, ``"pid 1234"`` for a process worker; ``""``
            when it is not running (queued, skipped, cached, cancelled).
        attempt: 1 for the first attempt, 2 for its first retry, and so on.
        time: when it happened, in ``time.perf_counter()`` seconds.
        error: the exception, for ``failed``, ``retried`` and ``skipped``; else None.
    """

    type: EventType
    key: Hashable
    kind: str
    worker: str
    attempt: int
    time: float
    error: BaseException | None = None


class _Emitter:
    """Hands events to the user's callback; its first exception is reported, once."""

    __slots__ = ("callback", "failed")

    def __init__(self, callback: Callable[[TaskEvent], object]) -> None:
        self.callback = callback
        self.failed = False

    def emit(self, events: list[TaskEvent]) -> None:
        callback = self.callback
        for event in events:
            try:
                callback(event)
            except Exception as exc:
                if not self.failed:
                    self.failed = True
                    text = "".join(traceback.format_exception(exc)).rstrip()
                    warnings.warn(
                        f"the on_event callback raised on a {event.type!r} event of task "
                        f"{event.key!r}; the run goes on, and further errors from it are "
                        f"not reported:\n{text}",
                        RuntimeWarning,
                        stacklevel=2,
                    )


def check_on_event(on_event: object) -> _Emitter | None:
    """Check ``run(on_event=...)``; return the emitter to use, or None."""
    if on_event is None:
        return None
    if not callable(on_event):
        raise TypeError(f"on_event must be a callable taking a dagexec.TaskEvent, not {on_event!r}")
    return _Emitter(on_event)
