"""Pools per kind: where a unit of work runs and how its outcome comes back.

A unit of work is a *call list*: one task, or a chain of tasks where each takes the
previous one's value (see ``RunState.chain``). A pool runs it and calls
``sink(calls, outcomes, stamp)`` once, from whatever thread finished it; ``outcomes``
holds ``(ok, value_or_exception)`` for the calls that ran, in order, stopping at the
first failure, and ``stamp`` says where and when they ran (``Stamp``), or is None.

::

    runner loop ──submit(calls, sink)──▶ _ThreadPool   (SimpleQueue ─▶ worker threads)
                                      ─▶ _ProcessPool  (one single-worker loky executor
                                                         per slot; payloads cloudpickled)
                                      ─▶ _ExecutorPool (any user concurrent.futures.Executor)
               ◀──────────── sink(calls, outcomes, stamp) ──────────────────┘

The process pool keeps one call list per worker, so when a worker dies the task that
killed it is known exactly, and a fresh worker replaces it.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future
from contextlib import contextmanager, suppress
from functools import partial
from multiprocessing.connection import wait as mp_wait
from queue import SimpleQueue
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Union

import cloudpickle
import psutil
from loky import ProcessPoolExecutor
from loky.process_executor import ShutdownExecutorError

from ._errors import WorkerDied
from ._graph import KINDS, resolve_args
from ._worker import new_token, run_unit

if TYPE_CHECKING:
    from ._aio import _AsyncPool

__all__ = [
    "Call",
    "Expired",
    "Pickled",
    "Pools",
    "Stamp",
    "Stopped",
    "Unpicklable",
    "dumps",
    "run_calls",
]

#: (key, fn, args, kwargs, refs, keep): ``refs`` as in ``_Task.refs`` when the arguments
#: still need the previous call's value (a chain), else ``()``; ``keep`` says whether the
#: caller needs the value back (a chain drops the values only its next call needed).
Call = tuple[
    Hashable, Callable[..., Any], tuple[Any, ...], Mapping[str, Any], "tuple[int, ...] | int", bool
]
Outcome = tuple[bool, Any]
#: Where and when a unit ran: ``(worker, times)``, the worker a thread name or "pid N";
#: call ``i`` of the unit ran from ``times[i]`` to ``times[i + 1]`` (``perf_counter``).
#: Tuples of atoms only: runs keep one per task, and the garbage collector skips them.
Stamp = tuple[str, tuple[float, ...]]
#: Hears a unit's outcomes (and its Stamp, when the pool knows it), on the pool's thread.
Sink = Callable[[list[Call], list[Outcome], "Stamp | None"], None]
#: Asked between the calls of a chain: True stops the chain (the run is stopping).
Stop = Callable[[], bool]
#: Told each call's outcome as soon as it exists: ``(index in the call list, ok, value)``.
Each = Callable[[int, bool, Any], None]


class Unpicklable(Exception):
    """Internal: the arguments or the result of a process task could not be pickled.

    ``error`` is the pickling error itself (when it could be pickled back).
    """

    def __init__(
        self, key: Hashable, what: str, detail: str, error: BaseException | None = None
    ) -> None:
        super().__init__(key, what, detail)
        self.key = key
        self.what = what
        self.detail = detail
        self.error = error


class Expired(Exception):
    """Internal: a unit ran past its ``timeout`` and was stopped (its worker terminated,
    or its coroutine cancelled); the run reports it as ``TaskTimeout``."""

    def __init__(self, timeout: float, what: str) -> None:
        super().__init__(timeout, what)
        self.timeout = timeout
        self.what = what


class Stopped(Exception):
    """Internal: a unit was stopped because its run was cancelled."""


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_DROPPED: Outcome = (True, None)


def run_calls(
    calls: list[Call],
    stop: Stop | None = None,
    catch: type[BaseException] = BaseException,
    each: Each | None = None,
    times: list[float] | None = None,
) -> list[Outcome]:
    """Run a call list in this thread; stop at the first failure or once ``stop()``.

    A call list that was queued when its run stopped runs nothing (no outcomes). A worker
    catches everything a task raises, even SystemExit; ``catch`` narrows that for tasks run
    in the caller's own thread. ``each`` hears of every outcome of a chain at once, not
    when the chain ends. ``times`` (holding the start) gets the time each call ended.
    """
    if stop is not None and stop():
        return []
    if len(calls) == 1:
        _, fn, args, kwargs, _, _ = calls[0]
        try:
            outcome: Outcome = (True, fn(*args, **kwargs))
        except catch as exc:
            outcome = (False, exc)
        if times is not None:
            times.append(perf_counter())
        return [outcome]
    outcomes: list[Outcome] = []
    prev: dict[Hashable, Any] = {}
    for key, fn, args, kwargs, refs, keep in calls:
        if outcomes and stop is not None and stop():
            # The rest may still be wanted by someone else: hand back what it needs.
            outcomes[-1] = (True, prev[calls[len(outcomes) - 1][0]])
            break
        if refs:
            args, kwargs = resolve_args(args, kwargs, refs, prev)
        try:
            value = fn(*args, **kwargs)
        except catch as exc:
            outcomes.append((False, exc))
            if times is not None:
                times.append(perf_counter())
            if each is not None:
                each(len(outcomes) - 1, False, exc)
            break
        if times is not None:
            times.append(perf_counter())
        if each is not None:
            each(len(outcomes), True, value)
        # Only the next call needs this value unless the caller keeps it: don't hold it
        # (and allocate nothing that would live until the chain ends).
        outcomes.append((True, value) if keep else _DROPPED)
        prev = {key: value}
        del args, kwargs, value
    return outcomes


# -- threads ---------------------------------------------------------------------------

_SHORT = 0.0005  # seconds: units shorter than this on average get a deep queue
_UNKNOWN = 1.0  # the mean before any unit has run: long, so a run starts shallow

_local = threading.local()


def current_thread_pool() -> _ThreadPool | None:
    """Return the dagexec thread pool whose worker is the calling thread, if any."""
    return getattr(_local, "pool", None)


class _ThreadPool:
    """Worker threads fed by one SimpleQueue; started on demand up to ``max_workers``.

    ``_threads`` holds every started thread until it exits (it removes itself), so
    ``shutdown`` knows exactly whom to stop. A worker that waits on another task lends
    the pool one more thread (``blocking``); once the wait is over, the first worker to
    finish an item while the pool is over its size retires.
    """

    def __init__(self, max_workers: int) -> None:
        self._mean = _UNKNOWN  # seconds a unit takes, smoothed
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._max = max_workers
        self._threads: set[threading.Thread] = set()
        self._names = itertools.count()
        self._closed = False

    @property
    def capacity(self) -> int:
        """Units a run should keep handed to this pool (running or queued).

        Short units need a deep queue, or workers wait for the run's loop to wake up
        (tens of microseconds each time); long units need none, and a shallow queue
        leaves the order of work to the run, which runs the consumers of values it
        holds first and so releases them early.
        """
        return max(128, 4 * self._max) if self._mean < _SHORT else self._max

    def submit(
        self,
        calls: list[Call],
        sink: Sink,
        stop: Stop | None = None,
        each: Each | None = None,
        raw: bool = False,
        timeout: float | None = None,
    ) -> None:
        # ``timeout`` is the run's job: a thread cannot be stopped (see _Run.abandon).
        if self._closed:
            raise RuntimeError("this Runner is shut down; create a new one")
        # A unit that races shutdown() into the queue behind its stop signals is failed
        # by shutdown() itself once the workers are gone; no lock on this hot path.
        self._queue.put((calls, sink, stop, each))
        if len(self._threads) < self._max:
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            if self._closed or len(self._threads) >= self._max:
                return
            thread = threading.Thread(
                target=self._work, name=f"dagexec-thread-{next(self._names)}", daemon=True
            )
            self._threads.add(thread)
            thread.start()

    def _work(self) -> None:
        _local.pool = self
        get = self._queue.get
        name = threading.current_thread().name
        try:
            while True:
                item = get()
                if item is None:
                    return
                calls, sink, stop, each = item
                if len(calls) == 1:
                    began = perf_counter()
                    outcomes = run_calls(calls, stop, BaseException)
                    times: tuple[float, ...] = (began, perf_counter())
                else:
                    ends = [perf_counter()]
                    outcomes = run_calls(calls, stop, BaseException, each, ends)
                    times = tuple(ends)
                if outcomes:  # a unit skipped by a stopped run says nothing of its length
                    # Unlocked and racy on purpose: a smoothed hint, not bookkeeping.
                    self._mean += (times[-1] - times[0] - self._mean) * 0.2
                sink(calls, outcomes, (name, times))
                del item, outcomes, calls, sink, stop, each  # hold no task values while waiting
                if len(self._threads) > self._max and self._retire():
                    return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _retire(self) -> bool:
        """Leave the pool if it is over its size (decided under the lock, one at a time)."""
        with self._lock:
            if len(self._threads) > self._max:
                self._threads.discard(threading.current_thread())
                return True
            return False

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """Lend the pool one more worker while a worker waits on another task.

        Without it, a task that submits work to its own pool and waits for it can
        deadlock a pool whose workers are all waiting (pool starvation).
        """
        self.lend()
        try:
            yield
        finally:
            self.unlend()

    def lend(self) -> None:
        """Add a worker for one that is held up (waiting, or running an abandoned unit)."""
        with self._lock:
            self._max += 1
        self._spawn()

    def unlend(self) -> None:
        """Take back a lent worker: the first one to finish a unit while over size retires."""
        with self._lock:
            self._max -= 1

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)  # queued after any pending work, which still runs
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me:  # shut down from one of its own tasks
                    thread.join()
            self._fail_leftovers()
            if me in threads:
                self._queue.put(None)  # the drain took this worker's stop signal

    def _fail_leftovers(self) -> None:
        while not self._queue.empty():
            item = self._queue.get()
            if item is not None:
                calls, sink, _, _ = item
                shut = RuntimeError("the Runner was shut down before it ran")
                sink(calls, [(False, shut)], None)


# -- processes -------------------------------------------------------------------------


def _preload(payload: bytes) -> None:
    """Unpickle a unit without running it: a new worker imports what it needs."""
    with suppress(Exception):  # the unit itself will fail the same way, and say so
        cloudpickle.loads(payload)


def _process_entry(payload: bytes) -> tuple[list[tuple[bool, bytes]], int, list[float]]:
    """Run a pickled call list in a worker process: each outcome (value pickled), this
    worker's pid, and the times of its calls (see ``Stamp``)."""
    times = [perf_counter()]
    try:
        calls = cloudpickle.loads(payload)
    except Exception as exc:  # most often a module the worker cannot import
        times.append(perf_counter())
        return [(False, encode_failure(None, exc, loading=True))], os.getpid(), times
    out = []
    for i, (ok, value) in enumerate(run_calls(calls, times=times)):
        if not ok:
            out.append((False, encode_failure(calls[i][0], value)))
            continue
        ok, data = encode_result(calls[i][0], value)
        out.append((ok, data))
        if not ok:
            break
    return out, os.getpid(), times


def encode_failure(key: Hashable, exc: BaseException, loading: bool = False) -> bytes:
    """Pickle a task's exception (with its traceback as text) for the caller.

    ``loading``: the worker could not even unpickle the task (``decode_outcomes`` names
    it and says what to do).
    """
    if loading:
        return dumps(_Unloadable(f"{type(exc).__name__}: {exc}"))
    return dumps(_Raised(exc))


def encode_result(key: Hashable, value: Any) -> tuple[bool, bytes]:
    """Pickle a task's value for the caller, or a failure saying it cannot be pickled."""
    try:
        return True, encode_value(value)
    except Exception as exc:
        what = "returned an object that cannot be pickled"
        detail = f"{type(value).__qualname__}: {exc}"
        error = exc if _picklable(exc) else None
        return False, dumps(Unpicklable(key, what, detail, error))


class _Unloadable:
    """The worker could not unpickle a call list; ``decode_outcomes`` names the task."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


class Pickled:
    """A value pickled once and sent as these bytes to any number of process tasks.

    Unpickling it gives the value itself, so a task receives the value, never this
    wrapper; the bytes are copied into each payload instead of pickling the value again.
    A worker keeps the last few values it unpickled (``_load``), so several tasks that
    read one value in the same worker unpickle it once.
    """

    __slots__ = ("data", "token")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.token = new_token()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load, (self.token, self.data))


_KEPT = 4  # values a worker keeps unpickled, most recently used first out last
_kept: dict[tuple[int, int], Any] = {}
_kept_lock = threading.Lock()


def _load(token: tuple[int, int], data: bytes) -> Any:
    """Unpickle ``data``, or return the value this process unpickled from it last time."""
    with _kept_lock:
        if token in _kept:
            value = _kept.pop(token)
            _kept[token] = value  # most recently used
            return value
    value = pickle.loads(data)
    with _kept_lock:
        _kept[token] = value
        while len(_kept) > _KEPT:
            del _kept[next(iter(_kept))]
    return value


def dumps(value: Any) -> bytes:
    """Pickle ``value`` the way dagexec sends values to process workers."""
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def encode_value(value: Any) -> bytes:
    """Pickle a value computed in a worker process, for the caller or another worker.

    Plain pickle first: several times faster than cloudpickle on plain data (an AST:
    1.3 against 3.2 ms), and it refuses what it cannot send by reference (a class sent
    to this worker by value, a lambda), which cloudpickle then sends by value. Only in a
    worker: there every module a value refers to is one its peers can import too,
    whereas the caller's ``__main__`` is not importable in its workers.
    """
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return dumps(value)


class _Raised:
    """An exception raised in a worker process, with its traceback as text.

    Pickling drops ``__cause__`` and ``__traceback__``, so the text travels beside the
    exception and becomes its ``__cause__`` again in the driver (as concurrent.futures
    does).
    """

    def __init__(self, exc: BaseException) -> None:
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc if _picklable(exc) else None
        self.name = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"

    def rebuild(self) -> BaseException:
        exc = self.exc if self.exc is not None else RuntimeError(self.name)
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{self.tb}"""')
        return exc


def _picklable(obj: object) -> bool:
    try:
        pickle.loads(cloudpickle.dumps(obj))
    except Exception:
        return False
    return True


def encode_calls(calls: list[Call]) -> bytes:
    """Pickle a call list for a process worker; raise Unpicklable naming the task."""
    try:
        payload: bytes = cloudpickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        culprit = calls[0][0]
        for call in calls:
            try:
                cloudpickle.dumps(call)
            except Exception:
                culprit = call[0]
                break
        what = "has arguments that cannot be pickled"
        raise Unpicklable(culprit, what, f"{type(exc).__name__}: {exc}", exc) from exc
    return payload


def decode_outcomes(
    calls: list[Call], parts: list[tuple[bool, bytes]], raw: bool = False
) -> list[Outcome]:
    """Unpickle what ``_process_entry`` returned; a value that cannot be is a failure.

    With ``raw``, values stay pickled (``Pickled``): they only go on to process tasks.
    """
    outcomes: list[Outcome] = []
    for call, (ok, data) in zip(calls, parts):  # noqa: B905 (parts stop at a failure)
        if ok and raw:
            outcomes.append((True, Pickled(data)))
            continue
        try:
            value = pickle.loads(data)
        except Exception as exc:
            what = "returned an object that cannot be unpickled in the calling process"
            detail = f"{type(exc).__name__}: {exc}"
            outcomes.append((False, Unpicklable(call[0], what, detail, exc)))
            break
        if type(value) is _Unloadable:
            what = "could not be unpickled in its worker process"
            detail = (
                f"{value.detail}; if a module is missing there, put it on the workers' "
                "sys.path or use cloudpickle.register_pickle_by_value(module)"
            )
            outcomes.append((False, Unpicklable(call[0], what, detail)))
            break
        outcomes.append((ok, value.rebuild() if type(value) is _Raised else value))
    return outcomes


def _worker_died(exc: BaseException) -> WorkerDied:
    died = WorkerDied(
        "the process worker running this task died (os._exit, a signal or the OOM killer); "
        "see __cause__ for its exit code"
    )
    died.__cause__ = exc
    return died


_RESTARTS = 2  # a unit whose new worker dies while starting goes to another, twice
_KILL_WAIT = 5.0  # seconds shutdown waits for terminated workers to exit
_DEPTH = 2  # units in flight per worker: the next one is on its way while one runs
_DEEP = 8  # ... when units are short: a unit's round trip takes about a millisecond
_SHORT_UNIT = 0.005  # seconds: units shorter than this on average get the deep queue

#: A process unit skipped because its run stopped before it started.
SKIPPED: Any = object()

#: Told how a unit ended, on whatever thread saw it end: ``(result, error, generation)``.
#: ``result`` is what the worker function returned (``SKIPPED`` if it never started);
#: ``error`` is set instead when the worker died running it (``WorkerDied``) or the
#: pool was shut down; ``generation`` is the slot's worker generation it ran on.
Finish = Callable[[Any, "BaseException | None", int], None]


class _Work:
    """A unit for a process worker: ``fn(*args)`` there, then ``finish``.

    ``began`` is when it became the oldest unit of its worker (so it is running there),
    for ``timeout``; ``killed`` is what to report if its worker was terminated for it.
    """

    __slots__ = (
        "args",
        "began",
        "calls",
        "finish",
        "fn",
        "killed",
        "restarts",
        "stop",
        "timeout",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        finish: Finish,
        stop: Stop | None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.finish = finish
        self.stop = stop
        self.timeout = timeout
        self.began = 0.0
        self.killed: BaseException | None = None
        self.calls: list[Call] | None = None  # the tasks it runs, when a run submitted it
        self.restarts = 0  # times its worker died before it began (see _finished)


class _Slot:
    """One worker process: a single-worker loky executor, started on first use.

    ``load`` counts the units handed to it and not finished (at most the pool's
    ``depth``);
    ``pending`` holds units placed on this worker (``place``) waiting for room;
    ``running`` the units handed to its executor, oldest (the one running) first;
    ``generation`` grows each time its executor is retired, so a unit submitted to a
    retired executor is known to have died with it without running, and a value kept
    in a worker of an older generation is known to be gone;
    ``up`` says its worker process has started (a no-op came back from it), and
    ``starter`` is the thread starting it (see ``_ProcessPool._executor``).
    """

    __slots__ = ("executor", "generation", "load", "pending", "running", "starter", "up")

    def __init__(self) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.generation = 0
        self.load = 0
        self.pending: deque[_Work] = deque()
        self.running: list[_Work] = []
        self.starter: threading.Thread | None = None
        self.up = False


class _ProcessPool:
    """Worker processes, at most ``depth`` units each; a dead worker is replaced.

    Each slot is a single-worker loky executor that runs its units in order, so when a
    worker dies the unit it was running is known exactly: the oldest one in flight
    there. Units behind it never started; they go to the replacement worker. A unit
    goes to any worker (``submit``) or to a given one (``place``, for runs that keep
    values in their workers); it waits in ``_pending`` or in its slot's ``pending``
    while there is no room, and a slot that finishes a unit takes the next one (on
    loky's callback thread).
    """

    def __init__(self, max_workers: int) -> None:
        self.workers = max_workers
        self.capacity = _DEPTH * max_workers
        self.depth = _DEPTH
        self._mean = _UNKNOWN  # seconds a unit runs, smoothed (told by ``observe``)
        self._lock = threading.Lock()
        self._slots = [_Slot() for _ in range(max_workers)]
        self._pending: deque[_Work] = deque()
        self._executors: list[ProcessPoolExecutor] = []
        self._killed: set[ProcessPoolExecutor] = set()  # terminated by kill or expire
        self._doomed: list[int] = []  # sentinels of their worker processes
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def submit(
        self,
        calls: list[Call],
        sink: Sink,
        stop: Stop | None = None,
        each: Each | None = None,
        raw: bool = False,
        timeout: float | None = None,
    ) -> None:
        # ``each`` is not needed: process tasks are never chained.
        if self._closed:
            raise RuntimeError("this Runner is shut down; create a new one")
        try:
            payload = encode_calls(calls)
        except Unpicklable as exc:
            sink(calls, [(False, exc)], None)
            return

        def finish(result: Any, error: BaseException | None, generation: int) -> None:
            if result is SKIPPED:
                sink(calls, [], None)  # its run stopped while it waited: never started
            elif error is not None:
                sink(calls, [(False, error)], None)
            else:
                parts, pid, times = result
                self.received(sum(len(data) for _, data in parts))
                sink(calls, decode_outcomes(calls, parts, raw), (f"pid {pid}", tuple(times)))

        work = _Work(_process_entry, (payload,), finish, stop, timeout)
        work.calls = calls
        self._put(None, work, len(payload))

    def place(
        self,
        slot: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        finish: Finish,
        stop: Stop | None = None,
        nbytes: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Run ``fn(*args)`` on worker ``slot``, after the units placed there before it.

        ``nbytes``: what the arguments weigh pickled, for the pool's byte count.
        """
        if self._closed:
            raise RuntimeError("this Runner is shut down; create a new one")
        self._put(slot, _Work(fn, args, finish, stop, timeout), nbytes)

    def expire(self) -> None:
        """Terminate workers whose running unit is past its ``timeout``.

        Called by runs with timed units each time their loop wakes (at least every
        ``_POLL`` seconds), so a timeout is noticed within about that much.
        """
        now = monotonic()
        for slot in self._slots:
            with self._lock:
                head = slot.running[0] if slot.running else None
                late = (
                    head is not None
                    and head.timeout is not None
                    and head.killed is None
                    and head.began  # 0 while its worker is starting: not running yet
                    and now - head.began > head.timeout
                )
            if late:
                assert head is not None
                assert head.timeout is not None
                self._kill(slot, head, Expired(head.timeout, "its process worker was terminated"))

    def kill(self, stop: Stop | None, spare: Callable[[list[Call]], bool] | None = None) -> int:
        """Terminate the workers running units of the run whose ``stop`` this is.

        Its units queued behind others never start (``stop`` is set); units of other
        runs queued on a terminated worker go to its replacement. ``spare(calls)`` says
        to leave a unit running (another caller waits for it). Return how many workers
        were terminated.
        """
        self._join_starters()  # a worker being started is known before we look
        killed = 0
        for slot in self._slots:
            with self._lock:
                head = slot.running[0] if slot.running else None
            if head is None or head.stop != stop or head.killed is not None:
                continue
            if spare is None or head.calls is None or not spare(head.calls):
                self._kill(slot, head, Stopped())
                killed += 1
        return killed

    def _kill(self, slot: _Slot, work: _Work, report: BaseException) -> None:
        """Terminate ``slot``'s worker, which runs ``work``; ``work`` reports ``report``."""
        with self._lock:
            if slot.executor is None or not slot.running or slot.running[0] is not work:
                return  # it finished (or its worker died) meanwhile
            work.killed = report
            executor, slot.executor = slot.executor, None
            slot.generation += 1
            slot.running = []
        # Its futures fail (ShutdownExecutorError); _finished reports ``work`` as killed
        # and hands the units queued behind it to the next worker of this slot.
        self._killed.add(executor)
        self._doomed += [p.sentinel for p in list(getattr(executor, "_processes", {}).values())]
        executor.shutdown(wait=False, kill_workers=True)

    def room(self, slot: int) -> int:
        """Units worker ``slot`` can take before one has to wait (a hint; may race)."""
        s = self._slots[slot]
        return self.depth - s.load - len(s.pending)

    def idle(self, slot: int) -> bool:
        """Say whether worker ``slot`` has nothing to run (a hint; may race)."""
        s = self._slots[slot]
        return not s.load and not s.pending

    def observe(self, seconds: float) -> None:
        """Hear how long a unit ran in its worker; short units get a deeper queue.

        A unit's round trip (driver, pipe, worker, back) costs about a millisecond, so
        a worker running units shorter than that waits for its next one unless several
        are queued there; long units need no depth, and a shallow queue leaves the
        order of work (and where it runs) to the caller for longer.
        """
        self._mean += (seconds - self._mean) * 0.2  # racy on purpose: a hint
        self.depth = _DEEP if self._mean < _SHORT_UNIT else _DEPTH

    def generation(self, slot: int) -> int:
        """The generation of worker ``slot``: it grows each time that worker is replaced."""
        return self._slots[slot].generation

    def received(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_received += nbytes

    def _put(self, index: int | None, work: _Work, nbytes: int) -> None:
        with self._lock:
            self.bytes_sent += nbytes
            if index is None:
                slot = min(self._slots, key=_slot_load)  # an idle worker before a busy one
                if slot.load >= self.depth:
                    self._pending.append(work)
                    return
            else:
                slot = self._slots[index]
                if slot.load >= self.depth:
                    slot.pending.append(work)
                    return
            slot.load += 1
        self._run_on(slot, work)

    def _run_on(self, slot: _Slot, work: _Work | None) -> None:
        """Start ``work`` on ``slot``; one that cannot start is reported, and the next tried."""
        while work is not None:
            if work.stop is not None and work.stop():
                work.finish(SKIPPED, None, slot.generation)
            else:
                try:
                    future, generation = self._submit(slot, work)
                except Exception as exc:  # shut down
                    work.finish(None, exc, slot.generation)
                except BaseException:  # Ctrl-C: the unit was not handed over
                    with self._lock:
                        slot.load -= 1
                    raise
                else:
                    with self._lock:
                        if generation == slot.generation:
                            if not slot.running and slot.up:
                                work.began = monotonic()
                            slot.running.append(work)
                    future.add_done_callback(partial(self._finished, slot, work, generation))
                    return
            work = self._next(slot)

    def _submit(self, slot: _Slot, work: _Work) -> tuple[Future[Any], int]:
        """Submit to the slot's worker; one that broke while idle is replaced, not blamed.

        loky notices a dead worker tens of milliseconds after it died; a unit handed to
        it in between would be blamed for its death. So a worker that was idle (the
        unit is its only one) is looked at first: dead, it is replaced.
        """
        future: Future[Any]
        if slot.load == 1 and slot.executor is not None and not _alive(slot.executor):
            self._lost(slot, BrokenExecutor("its worker died while idle"))
        try:
            future = self._executor(slot, work).submit(work.fn, *work.args)
        except BrokenExecutor as exc:
            self._lost(slot, exc)
            future = self._executor(slot, work).submit(work.fn, *work.args)
        return future, slot.generation

    def _executor(self, slot: _Slot, work: _Work) -> ProcessPoolExecutor:
        """Return the slot's executor; a new one has its worker process started first.

        The start (loky spawns the worker on the first submit) runs on a thread of its
        own that we wait for: a Ctrl-C landing in our wait cannot cut it half way and
        leave a process nobody knows of, since the thread finishes it, and ``kill`` and
        ``shutdown`` wait for it. The thread sends a no-op, or for a timed ``work`` the
        loading of its code (imports included); the unit's timeout counts from when
        that came back, not from the spawn.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("this Runner is shut down; create a new one")
            executor = slot.executor
            if executor is None:
                executor = slot.executor = ProcessPoolExecutor(max_workers=1)
                self._executors.append(executor)
                slot.up = False
                slot.starter = threading.Thread(
                    target=self._start,
                    args=(slot, executor, slot.generation, work),
                    name="dagexec-process-start",
                )
                slot.starter.start()
            starter = slot.starter
        if starter is not None:
            starter.join()
            slot.starter = None  # racy but harmless: joining twice is fine
        return executor

    def _start(
        self, slot: _Slot, executor: ProcessPoolExecutor, generation: int, work: _Work
    ) -> None:
        try:
            if work.timeout is not None and work.fn in (_process_entry, run_unit):
                payload = work.args[0] if work.fn is _process_entry else work.args[1]
                ready = executor.submit(_preload, payload)
            else:
                ready = executor.submit(os.getpid)
        except Exception:  # broken or shut down already: its units will say so
            return
        ready.add_done_callback(partial(self._up, slot, generation))

    def _up(self, slot: _Slot, generation: int, _ready: Future[Any]) -> None:
        """The slot's worker has started: its first unit's clock starts now."""
        with self._lock:
            if slot.generation != generation:
                return
            slot.up = True
            _begin_head(slot)

    def _join_starters(self) -> None:
        for slot in self._slots:
            starter = slot.starter
            if starter is not None:
                starter.join()

    def _lost(self, slot: _Slot, exc: BaseException) -> BaseException:
        """Retire the slot's executor if ``exc`` says it broke; return what to report."""
        if not isinstance(exc, BrokenExecutor):
            return exc
        with self._lock:
            executor, slot.executor = slot.executor, None
            slot.generation += 1
            slot.running = []
        if executor is not None:
            # Possibly on that executor's own thread: it cannot be joined here;
            # shutdown() joins it with the others.
            executor.shutdown(wait=False)
        return _worker_died(exc)

    def _next(self, slot: _Slot) -> _Work | None:
        """Take the next unit for ``slot`` (its own first), or give up the place it had."""
        with self._lock:
            if slot.pending:
                return slot.pending.popleft()
            if self._pending:
                return self._pending.popleft()
            slot.load -= 1
            return None

    def _finished(self, slot: _Slot, work: _Work, generation: int, future: Future[Any]) -> None:
        exc = future.exception()
        with self._lock:
            if work in slot.running:
                slot.running.remove(work)
                if exc is None:
                    _begin_head(slot)  # the next one starts now
        result: Any = None
        error: BaseException | None = None
        if exc is None:
            result = future.result()
        elif work.killed is not None:
            error = work.killed
        elif (
            isinstance(exc, (BrokenExecutor, ShutdownExecutorError))
            and not work.began
            and (generation != slot.generation or work.restarts < _RESTARTS)
        ):
            # It never began: its worker died running an older unit of this slot, or
            # while starting up. Not its fault: it goes to the next worker.
            if generation == slot.generation:
                work.restarts += 1
                self._lost(slot, exc)
            self._run_on(slot, work)
            return
        else:
            error = self._lost(slot, exc) if generation == slot.generation else _worker_died(exc)
        try:
            self._run_on(slot, self._next(slot))
        finally:
            work.finish(result, error, generation)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True  # no worker starts after this
            executors, self._executors = self._executors, []
            pending = list(self._pending)
            self._pending.clear()
            for slot in self._slots:
                pending += slot.pending
                slot.pending.clear()
        shut = RuntimeError("the Runner was shut down before this task ran")
        for work in pending:
            work.finish(None, shut, -1)
        self._join_starters()  # a worker being started is known (and shut down) too
        for executor in executors:
            # A plain shutdown would clear a kill that loky's manager thread has not
            # carried out yet, and let a terminated worker run its task to the end.
            executor.shutdown(wait=wait, kill_workers=executor in self._killed)
        if wait and self._doomed:  # terminated workers are gone, not just signalled
            mp_wait(self._doomed, timeout=_KILL_WAIT)


def _begin_head(slot: _Slot) -> None:
    """Start the clock of the unit now oldest on ``slot`` (under the pool's lock)."""
    if slot.running and not slot.running[0].began:
        slot.running[0].began = monotonic()


def _slot_load(slot: _Slot) -> int:
    return slot.load


def _alive(executor: ProcessPoolExecutor) -> bool:
    """Say whether an executor's workers are all alive (not reaped: that is loky's job)."""
    for process in list(getattr(executor, "_processes", {}).values()):
        try:
            if psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
    return True


class _ExecutorPool:
    """Any concurrent.futures.Executor given by the user; never shut down by us.

    ``_inflight`` maps each future not yet done to its unit and its run's ``stop``, so
    that ``cancel(stop)`` withdraws a stopped run's units from the executor; a unit
    cancelled so reports ``Stopped``. A worker lost under a unit is ``WorkerDied``: the
    executor is broken (``BrokenExecutor``), or dask gave up on the task (``KilledWorker``,
    after it ran it again on other workers ``allowed-failures`` times). The executor's
    workers may be other machines: a unit is timed from here, from its submission.
    """

    def __init__(self, executor: Executor, kind: str) -> None:
        self._executor = executor
        # A thread task sent to other processes (a dask cluster) travels pickled too.
        self._portable = kind == "process" or _elsewhere(executor)
        self._name = type(executor).__name__
        workers = getattr(executor, "_max_workers", None)
        self.capacity = 2 * workers if isinstance(workers, int) and workers > 0 else 256
        self._lock = threading.Lock()
        self._inflight: dict[Future[Any], tuple[list[Call], Stop | None]] = {}

    def submit(
        self,
        calls: list[Call],
        sink: Sink,
        stop: Stop | None = None,
        each: Each | None = None,
        raw: bool = False,
        timeout: float | None = None,
    ) -> None:
        # ``timeout`` is the run's job: we cannot stop a worker of someone else's executor.
        if self._portable:
            try:
                payload = encode_calls(calls)
            except Unpicklable as exc:
                sink(calls, [(False, exc)], None)
                return
        try:
            if self._portable:
                future: Future[Any] = self._executor.submit(_process_entry, payload)
            else:
                future = self._executor.submit(_run_here, calls, stop, each)
        except Exception as exc:  # the user's executor is shut down or broken
            sink(calls, [(False, _lost_under(exc))], None)
            return
        sent = perf_counter()
        with self._lock:  # before the callback, which may run at once, takes it out
            self._inflight[future] = (calls, stop)
        future.add_done_callback(partial(self._done, calls, sink, stop, raw, sent))

    def _done(
        self,
        calls: list[Call],
        sink: Sink,
        stop: Stop | None,
        raw: bool,
        sent: float,
        future: Future[Any],
    ) -> None:
        with self._lock:
            self._inflight.pop(future, None)
        sink(calls, *self._outcomes(calls, future, stop, raw, sent))

    def _outcomes(
        self, calls: list[Call], future: Future[Any], stop: Stop | None, raw: bool, sent: float
    ) -> tuple[list[Outcome], Stamp]:
        """The outcomes of a unit, and its Stamp on our clock: the executor's workers may
        be other machines, whose times are shifted to end when the outcome came back."""
        now = perf_counter()
        stamp = (self._name, (sent, now))
        if future.cancelled():
            if stop is not None and stop():
                return [(False, Stopped())], stamp
            return [(False, RuntimeError(_CANCELLED_ELSEWHERE))], stamp
        exc = future.exception()
        if exc is not None:
            _unpin(exc)
            return [(False, _lost_under(exc))], stamp
        result = future.result()
        if not self._portable:
            outcomes, thread, times = result
            return outcomes, (thread, times)
        parts, pid, times = result
        shift = now - times[-1]
        stamp = (f"{self._name} pid {pid}", tuple(t + shift for t in times))
        return decode_outcomes(calls, parts, raw), stamp

    def cancel(self, stop: Stop, spare: Callable[[list[Call]], bool] | None = None) -> int:
        """Cancel the units in flight submitted with ``stop``; they report ``Stopped``.

        A future that has not started is cancelled; one that runs cannot be, except on
        dask.distributed, whose futures never say they started: there the cluster drops
        the task, and a worker already running it runs on until the function returns.
        ``spare(calls)`` says to leave a unit alone (another caller waits for it).
        Return how many were cancelled.
        """
        with self._lock:
            units = [(f, calls) for f, (calls, s) in self._inflight.items() if s == stop]
        cancelled = 0
        for future, calls in units:
            # Not under the lock: cancel() runs the done callbacks, _done among them.
            if (spare is None or not spare(calls)) and future.cancel():
                cancelled += 1
        return cancelled

    def shutdown(self, wait: bool = True) -> None:
        """Leave the user's executor alone."""


def _run_here(
    calls: list[Call], stop: Stop | None, each: Each | None
) -> tuple[list[Outcome], str, tuple[float, ...]]:
    """Run a unit on a thread of the user's executor: its outcomes, the thread's name
    and the times of its calls (as in a Stamp)."""
    times = [perf_counter()]
    outcomes = run_calls(calls, stop, BaseException, each, times)
    return outcomes, threading.current_thread().name, tuple(times)


_CANCELLED_ELSEWHERE = (
    "its executor cancelled it (not dagexec): was the executor shut down, or the dask "
    "client closed or restarted?"
)


def _elsewhere(executor: Executor) -> bool:
    """Say whether ``executor`` runs its work in other processes (so it pickles it)."""
    from concurrent.futures import ProcessPoolExecutor as StdProcessPoolExecutor

    module = type(executor).__module__
    return (
        module.split(".")[0] in ("distributed", "loky")
        or module == "dagexec.executors"  # DaskExecutor
        or isinstance(executor, StdProcessPoolExecutor)
    )


def _unpin(exc: BaseException) -> None:
    """Drop dask's own frames from the traceback of a task's exception.

    dask's ClientExecutor raises the exception in the frame that holds the task's
    future, and its client keeps the exception: the future would never be released,
    and the failed task would stay on the cluster until the client is closed.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == "distributed.cfexecutor":
        tb = tb.tb_next
    exc.__traceback__ = tb


def _lost_under(exc: BaseException) -> BaseException:
    """Return what to report for a unit whose executor raised ``exc``: ``WorkerDied``
    when its worker was lost, else ``exc``."""
    if isinstance(exc, BrokenExecutor):
        return _worker_died(exc)
    kind = type(exc)
    if kind.__name__ == "KilledWorker" and kind.__module__.startswith("distributed"):
        died = WorkerDied(
            "the dask worker running this task died, and so did each worker dask ran it on "
            "again (its distributed.scheduler.allowed-failures); see __cause__"
        )
        died.__cause__ = exc
        return died
    return exc


Pool = Union[_ThreadPool, _ProcessPool, _ExecutorPool, "_AsyncPool"]


_ASYNC_TASKS = 10_000  # concurrent async tasks by default: waits are cheap on one loop


def default_workers(kind: str) -> int:
    """Return the default pool size: threads as concurrent.futures, processes = cores,
    async tasks 10,000 at a time."""
    if kind == "async":
        return _ASYNC_TASKS
    if kind == "process":
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return min(32, (os.cpu_count() or 1) + 4)


class Pools:
    """The pool registry of a Runner: one pool per kind, created on first use."""

    def __init__(
        self,
        max_workers: int | Mapping[str, int] | None,
        executors: Mapping[str, Executor] | None,
    ) -> None:
        self._sizes = _check_sizes(max_workers)
        self._executors = dict(executors or {})
        for kind, ex in self._executors.items():
            if kind not in KINDS or kind in ("inline", "async"):
                raise TypeError(
                    f"executors={{{kind!r}: ...}}: no such pool kind; use 'thread' or 'process'"
                )
            if not isinstance(ex, Executor):
                raise TypeError(f"executors[{kind!r}] is {ex!r}, not a concurrent.futures.Executor")
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}
        self._closed = False

    def get(self, kind: str) -> Pool:
        """Return the pool for ``kind`` ("thread" or "process"), creating it if needed.

        Raises:
            RuntimeError: the registry is shut down.
        """
        pool = self._pools.get(kind)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise RuntimeError("this Runner is shut down; create a new one")
            pool = self._pools.get(kind)
            if pool is None:
                pool = self._pools[kind] = self._create(kind)
        return pool

    def owns(self, kind: str) -> bool:
        """Say whether the pool for ``kind`` is our own (not an executor we were given)."""
        return kind not in self._executors

    def peek(self, kind: str) -> Pool | None:
        """Return the pool for ``kind`` if it exists, without creating it."""
        return self._pools.get(kind)

    def size(self, kind: str) -> int:
        """Return the number of workers (async: concurrent tasks) a pool of ``kind`` has."""
        return self._sizes.get(kind) or default_workers(kind)

    def _create(self, kind: str) -> Pool:
        if kind in self._executors:
            return _ExecutorPool(self._executors[kind], kind)
        if kind == "async":
            from ._aio import _AsyncPool

            return _AsyncPool(self.size(kind))
        return _ProcessPool(self.size(kind)) if kind == "process" else _ThreadPool(self.size(kind))

    def process_stats(self) -> tuple[int, int]:
        """Return bytes sent to and received from our own process workers."""
        pool = self._pools.get("process")
        if isinstance(pool, _ProcessPool):
            return pool.bytes_sent, pool.bytes_received
        return 0, 0

    def shutdown(self, wait: bool = True, threads: bool = True) -> None:
        """Shut every pool down; ``threads=False``: do not wait for the thread pool
        (a task there was abandoned and runs on; its worker exits when it returns)."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=wait and (threads or not isinstance(pool, _ThreadPool)))


def _check_sizes(max_workers: int | Mapping[str, int] | None) -> dict[str, int]:
    if max_workers is None:
        return {}
    if isinstance(max_workers, int) and not isinstance(max_workers, bool):
        sizes = {"thread": max_workers, "process": max_workers}
    elif isinstance(max_workers, Mapping):
        sizes = dict(max_workers)
        for kind in sizes:
            if kind not in KINDS or kind == "inline":
                raise TypeError(
                    f"max_workers={{{kind!r}: ...}}: no such pool kind; "
                    "use 'thread', 'process' or 'async'"
                )
    else:
        raise TypeError(f"max_workers must be an int or a dict per kind, not {max_workers!r}")
    for kind, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"max_workers for {kind!r} must be an int >= 1, not {size!r}")
    return sizes
