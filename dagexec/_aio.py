"""The pool for ``kind="async"`` tasks: each unit is an asyncio task on one event loop.

A unit is one call. ``submit`` posts it to the loop, where it becomes an asyncio task;
the task's done callback reports its outcome. Thousands of awaits share the loop's one
thread. Cancellation and timeouts both cancel the task and say why (``reason``).

::

    runner loop ──submit───▶ call_soon_threadsafe(_start) ─▶ _Unit.task on the loop
                ──cancel───▶ call_soon_threadsafe(_cancel) ─▶ task.cancel(), reason Stopped
                ──shutdown─▶ call_soon_threadsafe(_close) ──▶ (cancel all,) stop once idle
               ◀─────────── sink(calls, outcomes) ◀── _finished (the task's done callback)

The loop is ours (thread ``dagexec-async``, started by the first submit, stopped and
closed by shutdown once every unit has reported) or the caller's (``loop=``: we only
post to it, and it must keep running until shutdown returns).

State:
    _units    units started and not yet reported; touched on the loop thread only.
    _closing  shutdown has reached the loop: stop once ``_units`` is empty (loop only).
    _lock     guards ``_closed``, ``_loop`` and ``_thread``. Posting happens under it,
              so no unit can be posted behind ``_close``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from ._pools import Call, Each, Expired, Outcome, Sink, Stop, Stopped


class _Unit:
    """One submitted call on the loop: its task, its timer, and why we cancelled it."""

    def __init__(
        self, calls: list[Call], sink: Sink, stop: Stop | None, timeout: float | None
    ) -> None:
        self.calls = calls
        self.sink = sink
        self.stop = stop
        self.timeout = timeout
        self.timer: asyncio.TimerHandle | None = None
        self.began = 0.0  # perf_counter when its first step ran
        #: Set when we cancel the task: reported instead of the CancelledError.
        self.reason: BaseException | None = None
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run(), name=f"dagexec:{calls[0][0]!r}")

    async def _run(self) -> list[Outcome]:
        if self.stop is not None and self.stop():
            return []
        self.began = perf_counter()
        _, fn, args, kwargs, _, _ = self.calls[0]
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                if self.timeout is not None:
                    expired = Expired(self.timeout, "its coroutine was cancelled")
                    loop = asyncio.get_running_loop()
                    self.timer = loop.call_later(self.timeout, self.interrupt, expired)
                value = await value
        except BaseException as exc:
            # Re-raised, a KeyboardInterrupt or SystemExit would stop the loop and strand
            # every unit on it: it is this task's outcome like any other exception.
            return [(False, exc if self.reason is None else self.reason)]
        return [(True, value)]

    def interrupt(self, reason: BaseException) -> None:
        """Cancel the task so that it reports ``reason``; the first reason wins."""
        if self.reason is None and not self.task.done():
            self.reason = reason
            self.task.cancel()

    def outcomes(self) -> list[Outcome]:
        """Return the outcomes of the finished task."""
        if self.timer is not None:
            self.timer.cancel()
        if self.task.cancelled():  # cancelled before its first step: ``_run`` never ran
            return [(False, self.reason or Stopped())]
        exc = self.task.exception()  # only ``stop()`` can raise out of ``_run``
        return [(False, exc)] if exc is not None else self.task.result()


class _AsyncPool:
    """Run ``kind="async"`` units as tasks on one event loop: our own, or the caller's."""

    def __init__(self, max_workers: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.capacity = max_workers
        self._owned = loop is None
        self._loop = loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._units: set[_Unit] = set()
        self._closing = False
        self._idle = threading.Event()  # set on the loop: shut down and no unit left

    def submit(
        self,
        calls: list[Call],
        sink: Sink,
        stop: Stop | None = None,
        each: Each | None = None,
        raw: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Run the one call in ``calls`` on the loop; ``sink`` hears its outcome once.

        ``each`` and ``raw`` are accepted for the pool interface and ignored: a unit is
        one call, and its value never leaves the process.

        Raises:
            RuntimeError: the pool is shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("this Runner is shut down; create a new one")
            loop = self._loop or self._start_loop()
            if _post(loop, self._start, calls, sink, stop, timeout):
                return
        sink(calls, [(False, RuntimeError("the event loop given to the Runner is closed"))], None)

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        """Create our loop and the thread that runs it (under the lock)."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=_serve, args=(loop,), name="dagexec-async", daemon=True
        )
        self._thread.start()
        return loop

    def cancel(self, stop: Stop) -> None:
        """Cancel the units in flight submitted with ``stop``; they report ``Stopped``.

        Returns at once: the cancellation reaches the loop soon after.
        """
        loop = self._loop
        if loop is not None:
            _post(loop, self._cancel, stop)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new units; let those in flight finish (``wait``) or cancel them.

        Our loop stops once every unit has reported; its thread then closes it. A loop
        given to us keeps running. Called on the loop's own thread, this never waits:
        it would wait for itself.
        """
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            posted = loop is not None and _post(loop, self._close, not wait)
        if not wait or loop is None or _running_loop() is loop:
            return
        if thread is not None:
            thread.join()
        elif posted:
            self._idle.wait()

    # -- on the loop thread ----------------------------------------------------------

    def _start(self, calls: list[Call], sink: Sink, stop: Stop | None, t: float | None) -> None:
        unit = _Unit(calls, sink, stop, t)
        self._units.add(unit)
        unit.task.add_done_callback(partial(self._finished, unit))

    def _finished(self, unit: _Unit, _task: asyncio.Task[list[Outcome]]) -> None:
        self._units.discard(unit)
        try:
            outcomes = unit.outcomes()
            stamp = (threading.current_thread().name, (unit.began, perf_counter()))
            unit.sink(unit.calls, outcomes, stamp if unit.began else None)
        finally:
            self._settle()

    def _cancel(self, stop: Stop) -> None:
        for unit in self._units:
            if unit.stop == stop:  # bound methods: equal when same object and function
                unit.interrupt(Stopped())

    def _close(self, cancel: bool) -> None:
        self._closing = True
        if cancel:
            for unit in self._units:
                unit.interrupt(Stopped())
        self._settle()

    def _settle(self) -> None:
        """Once shut down with no unit left: say so, and stop our loop (once)."""
        if self._closing and not self._units and not self._idle.is_set():
            self._idle.set()
            if self._owned:
                asyncio.get_running_loop().stop()


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> bool:
    """Schedule ``fn(*args)`` on ``loop`` from any thread; return False if it is closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # closed: every unit on it has reported already
        return False
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """Run our loop until shutdown stops it; then tidy up after user code and close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            # Tasks that units spawned and left behind are cancelled, as asyncio.run does.
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
