"""Pools per kind: where a unit of work runs and how its outcome comes back.

A unit of work is a *call list*: one task, or a chain of tasks where each takes the
previous one's value (see ``RunState.chain``). A pool runs it and calls
``sink(calls, outcomes)`` once, from whatever thread finished it; ``outcomes`` holds
``(ok, value_or_exception)`` for the calls that ran, in order, stopping at the first
failure.

::

    runner loop ──submit(calls, sink)──▶ _ThreadPool   (SimpleQueue ─▶ worker threads)
                                      ─▶ _ProcessPool  (one single-worker loky executor
                                                         per slot; payloads cloudpickled)
                                      ─▶ _ExecutorPool (any user concurrent.futures.Executor)
               ◀──────────── sink(calls, outcomes) ─────────────────────────┘

The process pool keeps one call list per worker, so when a worker dies the task that
killed it is known exactly, and a fresh worker replaces it.
"""

from __future__ import annotations

import os
import pickle
import threading
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import BrokenExecutor, Executor, Future
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any

import cloudpickle
import psutil
from loky import ProcessPoolExecutor

from ._errors import WorkerDied
from ._graph import KINDS, resolve_args

__all__ = ["Call", "Pools", "Unpicklable", "run_calls"]

#: (key, fn, args, kwargs, refs, keep): ``refs`` as in ``_Task.refs`` when the arguments
#: still need the previous call's value (a chain), else ``()``; ``keep`` says whether the
#: caller needs the value back (a chain drops the values only its next call needed).
Call = tuple[
    Hashable, Callable[..., Any], tuple[Any, ...], Mapping[str, Any], "tuple[int, ...] | int", bool
]
Outcome = tuple[bool, Any]
Sink = Callable[[list[Call], list[Outcome]], None]
#: Asked between the calls of a chain: True stops the chain (the run is stopping).
Stop = Callable[[], bool]


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
) -> list[Outcome]:
    """Run a call list in this thread; stop at the first failure or once ``stop()``.

    A call list that was queued when its run stopped runs nothing (no outcomes). A worker
    catches everything a task raises, even SystemExit; ``catch`` narrows that for tasks run
    in the caller's own thread.
    """
    if stop is not None and stop():
        return []
    if len(calls) == 1:
        _, fn, args, kwargs, _, _ = calls[0]
        try:
            return [(True, fn(*args, **kwargs))]
        except catch as exc:
            return [(False, exc)]
    outcomes: list[Outcome] = []
    prev: dict[Hashable, Any] = {}
    for key, fn, args, kwargs, refs, keep in calls:
        if outcomes and stop is not None and stop():
            break
        if refs:
            args, kwargs = resolve_args(args, kwargs, refs, prev)
        try:
            value = fn(*args, **kwargs)
        except catch as exc:
            outcomes.append((False, exc))
            break
        # Only the next call needs this value unless the caller keeps it: don't hold it
        # (and allocate nothing that would live until the chain ends).
        outcomes.append((True, value) if keep else _DROPPED)
        prev = {key: value}
        del args, kwargs, value
    return outcomes


# -- threads ---------------------------------------------------------------------------

_local = threading.local()


def current_thread_pool() -> _ThreadPool | None:
    """Return the dagexec thread pool whose worker is the calling thread, if any."""
    return getattr(_local, "pool", None)


_RETIRE = object()


class _ThreadPool:
    """Worker threads fed by one SimpleQueue; started on demand up to ``max_workers``."""

    def __init__(self, max_workers: int) -> None:
        # Units a run keeps queued here: enough that workers never wait for the loop,
        # few enough that the run, not the pool, holds the backlog.
        self.capacity = max(128, 4 * max_workers)
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._max = max_workers
        self._threads: list[threading.Thread] = []

    def submit(self, calls: list[Call], sink: Sink, stop: Stop | None = None) -> None:
        self._queue.put((calls, sink, stop))
        if len(self._threads) < self._max:
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= self._max:
                return
            thread = threading.Thread(
                target=self._work, name=f"dagexec-thread-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        _local.pool = self
        get = self._queue.get
        while True:
            item = get()
            if item is _RETIRE:
                with self._lock:
                    self._threads.remove(threading.current_thread())
                return
            if item is None:
                return
            calls, sink, stop = item
            sink(calls, run_calls(calls, stop))
            del item, calls, sink, stop  # hold no task values while waiting for work

    @contextmanager
    def blocking(self) -> Iterator[None]:
        """Lend the pool one more worker while a worker waits on another task.

        Without it, a task that submits work to its own pool and waits for it can
        deadlock a pool whose workers are all waiting (pool starvation).
        """
        with self._lock:
            self._max += 1
        self._spawn()
        try:
            yield
        finally:
            with self._lock:
                self._max -= 1
            self._queue.put(_RETIRE)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            threads, self._max = list(self._threads), 0
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


# -- processes -------------------------------------------------------------------------


def _process_entry(payload: bytes) -> list[bytes]:
    """Run a pickled call list in a worker process; return each outcome pickled."""
    calls = cloudpickle.loads(payload)
    out = []
    for i, (ok, value) in enumerate(run_calls(calls)):
        if not ok:
            value = _Raised(value)
        try:
            out.append(cloudpickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            what = "returned an object that cannot be pickled"
            detail = f"{type(value).__qualname__}: {exc}"
            error = exc if _picklable(exc) else None
            out.append(cloudpickle.dumps((False, Unpicklable(calls[i][0], what, detail, error))))
            break
    return out


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


def decode_outcomes(parts: list[bytes]) -> list[Outcome]:
    """Unpickle what ``_process_entry`` returned."""
    outcomes = []
    for part in parts:
        ok, value = pickle.loads(part)
        outcomes.append((ok, value.rebuild() if type(value) is _Raised else value))
    return outcomes


def _worker_died(exc: BaseException) -> WorkerDied:
    died = WorkerDied(
        "the process worker running this task died (os._exit, a signal or the OOM killer); "
        "see __cause__ for its exit code"
    )
    died.__cause__ = exc
    return died


class _Slot:
    """One worker process (a single-worker loky executor) and what it is running."""

    __slots__ = ("executor", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.executor: ProcessPoolExecutor | None = None


class _ProcessPool:
    """Worker processes, one call list at a time each; a dead worker is replaced."""

    def __init__(self, max_workers: int) -> None:
        self.capacity = max_workers  # placement is decided when a worker is free
        self._lock = threading.Lock()
        self._idle = [_Slot(i) for i in reversed(range(max_workers))]
        self._pending: deque[tuple[bytes, list[Call], Sink]] = deque()
        self._executors: list[ProcessPoolExecutor] = []
        self.bytes_sent = 0
        self.bytes_received = 0

    def submit(self, calls: list[Call], sink: Sink, stop: Stop | None = None) -> None:
        try:
            payload = encode_calls(calls)
        except Unpicklable as exc:
            sink(calls, [(False, exc)])
            return
        with self._lock:
            self.bytes_sent += len(payload)
            slot = self._idle.pop() if self._idle else None
            if slot is None:
                self._pending.append((payload, calls, sink))
                return
        self._start(slot, payload, calls, sink)

    def _start(self, slot: _Slot, payload: bytes, calls: list[Call], sink: Sink) -> None:
        if slot.executor is None:
            slot.executor = ProcessPoolExecutor(max_workers=1)
            with self._lock:
                self._executors.append(slot.executor)
        future: Future[Any]
        try:
            future = slot.executor.submit(_process_entry, payload)
        except Exception as exc:  # a pool that broke between two tasks
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(lambda f: self._finished(slot, calls, sink, f))

    def _finished(self, slot: _Slot, calls: list[Call], sink: Sink, future: Future[Any]) -> None:
        exc = future.exception()
        if exc is None:
            parts = future.result()
            outcomes = decode_outcomes(parts)
            received = sum(len(p) for p in parts)
        else:
            if isinstance(exc, BrokenExecutor) and slot.executor is not None:
                # Called from that executor's own thread: it cannot be joined here;
                # shutdown() joins it with the others.
                slot.executor.shutdown(wait=False)
                slot.executor = None
                exc = _worker_died(exc)
            outcomes, received = [(False, exc)], 0
        with self._lock:
            self.bytes_received += received
            nxt = self._pending.popleft() if self._pending else None
            if nxt is None:
                self._idle.append(slot)
        if nxt is not None:
            self._start(slot, *nxt)
        sink(calls, outcomes)

    def worker_pids(self) -> list[int]:
        """Return the pids of the live worker processes."""
        with self._lock:
            executors = list(self._executors)
        return [pid for ex in executors for pid in getattr(ex, "_processes", {})]

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            executors, self._executors = self._executors, []
        for executor in executors:
            executor.shutdown(wait=wait)


class _ExecutorPool:
    """Any concurrent.futures.Executor given by the user; never shut down by us."""

    def __init__(self, executor: Executor, kind: str) -> None:
        self._executor = executor
        self._portable = kind == "process"
        workers = getattr(executor, "_max_workers", None)
        self.capacity = 2 * workers if isinstance(workers, int) and workers > 0 else 256

    def submit(self, calls: list[Call], sink: Sink, stop: Stop | None = None) -> None:
        if self._portable:
            try:
                payload = encode_calls(calls)
            except Unpicklable as exc:
                sink(calls, [(False, exc)])
                return
            future: Future[Any] = self._executor.submit(_process_entry, payload)
        else:
            future = self._executor.submit(run_calls, calls, stop)
        future.add_done_callback(lambda f: sink(calls, self._outcomes(f)))

    def _outcomes(self, future: Future[Any]) -> list[Outcome]:
        exc = future.exception()
        if exc is not None:
            return [(False, _worker_died(exc) if isinstance(exc, BrokenExecutor) else exc)]
        result = future.result()
        return decode_outcomes(result) if self._portable else result

    def shutdown(self, wait: bool = True) -> None:
        """Leave the user's executor alone."""


Pool = _ThreadPool | _ProcessPool | _ExecutorPool


def default_workers(kind: str) -> int:
    """Return the default pool size: threads as concurrent.futures, processes = cores."""
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
            if kind not in KINDS or kind == "inline":
                raise TypeError(
                    f"executors={{{kind!r}: ...}}: no such pool kind; use 'thread' or 'process'"
                )
            if not isinstance(ex, Executor):
                raise TypeError(f"executors[{kind!r}] is {ex!r}, not a concurrent.futures.Executor")
        self._lock = threading.Lock()
        self._pools: dict[str, Pool] = {}

    def get(self, kind: str) -> Pool:
        """Return the pool for ``kind`` ("thread" or "process"), creating it if needed."""
        pool = self._pools.get(kind)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._pools.get(kind)
            if pool is None:
                pool = self._pools[kind] = self._create(kind)
        return pool

    def _create(self, kind: str) -> Pool:
        if kind in self._executors:
            return _ExecutorPool(self._executors[kind], kind)
        size = self._sizes.get(kind) or default_workers(kind)
        return _ProcessPool(size) if kind == "process" else _ThreadPool(size)

    def process_stats(self) -> tuple[int, int]:
        """Return bytes sent to and received from our own process workers."""
        pool = self._pools.get("process")
        if isinstance(pool, _ProcessPool):
            return pool.bytes_sent, pool.bytes_received
        return 0, 0

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=wait)


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
                    f"max_workers={{{kind!r}: ...}}: no such pool kind; use 'thread' or 'process'"
                )
    else:
        raise TypeError(f"max_workers must be an int or a dict per kind, not {max_workers!r}")
    for kind, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"max_workers for {kind!r} must be an int >= 1, not {size!r}")
    return sizes
