"""Runner: the driver loop, the once-map and the pools wired together.

::

    Runner.run(graph) ──▶ _Run: RunState (pure)  ◀── one SimpleQueue of messages
                              │ ready keys                         ▲
                              ▼                                    │ sink
                          OnceMap.claim ──owner──▶ Pools[kind].submit(calls, sink)
                              │ joined (same definition and inputs)
                              └──▶ on_done callback ──▶ the same queue

The thread that calls ``run`` owns its run's state and is the only one to touch it;
pools and other callers only put messages on the run's queue. ``Runner.submit`` needs no
loop: its owner hands the task to a pool whose sink settles the once-cell.
"""

from __future__ import annotations

import asyncio
import gc
import graphlib
import heapq
import itertools
import sys
import threading
import time
import warnings
from collections import ChainMap, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from contextlib import contextmanager, suppress
from functools import partial
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import Any, Literal, TypeVar

from ._cache import DiskCache
from ._cachekey import StoreValue, task_keys
from ._errors import Cancelled, DuplicateKeyError, TaskFailed, TaskTimeout, WorkerDied, _Interrupted
from ._events import EventType, TaskEvent, _Emitter, check_on_event
from ._graph import _NO_KWARGS, KINDS, Graph, Ref, _Task, check_task, resolve_args, unhashable
from ._locality import CannotMove, Local, UnitDone, _Fetched
from ._once import Busy, Cell, Lineage, OnceMap
from ._options import BackoffLike, Policy, RetryOn, check_limits, check_policy, positive_seconds
from ._pools import (
    SKIPPED,
    Call,
    Expired,
    Outcome,
    Pickled,
    Pool,
    Pools,
    Stamp,
    Stopped,
    Unpicklable,
    _ExecutorPool,
    _ProcessPool,
    _ThreadPool,
    current_thread_pool,
    dumps,
    run_calls,
)
from ._progress import Progress, check_progress
from ._results import Results, RunStats
from ._state import RunState, sink_keys
from ._timings import Deps, TaskTable, Timing
from ._worker import FAILED, LOST, OK

__all__ = ["Runner"]

T = TypeVar("T")

_POLL = 0.1  # seconds the loop blocks at most, so Ctrl-C is handled promptly
_PUMP_ORDER = ("inline", "thread", "process", "async")
_RETRY = "retry"  # the "kind" of a message asking to claim a key again
_WAKE = "wake"  # the "kind" of a message that only wakes the loop (cancel)
_JOINED = "joined"  # the "kind" of the outcome of a key another caller computed
_REDO = "redo"  # the tag of a unit that recomputes a value lost with its worker


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a run's bookkeeping.

    Building the sorter allocates a few long-lived containers per task; with the collector
    on, each growth step triggers full collections that re-walk the whole graph (about
    half the planning time at 100,000 tasks). No user code runs in between, the pause
    lasts only for planning, and nothing is lost: the collector runs when it resumes.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _TaskFuture(Future[T]):
    """A Future of a submitted task; cancelling it gives up the caller's interest.

    Its waiters on a dagexec worker thread lend their pool a thread. When every caller
    of a key has cancelled its future and the task has not started, it never starts.
    """

    _once: OnceMap | None = None
    _cell: Cell | None = None
    _callback: Any = None

    def cancel(self) -> bool:
        """Cancel this caller's future; the task too if nobody else wants it and it has
        not started (a task that started runs on, its value held by the Runner)."""
        if not super().cancel():
            return False
        if self._once is not None and self._cell is not None:
            self._once.unwant(self._cell, self._callback)
        return True

    def result(self, timeout: float | None = None) -> T:
        pool = current_thread_pool()
        if pool is None or self.done():
            return super().result(timeout)
        with pool.blocking():
            return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        pool = current_thread_pool()
        if pool is None or self.done():
            return super().exception(timeout)
        with pool.blocking():
            return super().exception(timeout)


def task_failed(key: Hashable, exc: BaseException) -> TaskFailed:
    """Wrap a task's exception in a TaskFailed whose message says what happened."""
    cause: BaseException | None = exc
    if isinstance(exc, Unpicklable):
        culprit = "" if exc.key == key else f" (in its chain, task {exc.key!r})"
        reason = (
            f"{exc.what}{culprit} ({exc.detail}); pass and return plain data, or use kind='thread'"
        )
        cause = exc.error or exc
    elif isinstance(exc, Expired):
        return TaskTimeout(key, exc.timeout, exc.what)
    elif isinstance(exc, Stopped):
        reason = "was stopped: its run was cancelled"
        cause = None
    elif isinstance(exc, WorkerDied):
        reason = "lost its process worker, which died while running it"
    elif isinstance(exc, DuplicateKeyError):
        reason = "is being computed under the same key with a different definition"
    else:
        reason = f"raised {type(exc).__name__}"
    failed = TaskFailed(key, reason)
    failed.__cause__ = cause
    return failed


class Runner:
    """Run graphs and single tasks on shared pools, each key at most once at a time.

    The Runner is the once-cell map made public: concurrent ``submit``s and ``run``s of
    one key, from any number of threads, share one execution and one result. It holds
    the values it handed out (targets of runs, submitted results) and reuses them for
    later runs of the same definitions; ``clear()`` forgets them.

    Args:
        max_workers: pool size, an int for every kind or a dict per kind. Defaults:
            threads as ``concurrent.futures`` (min(32, cpus + 4)), processes = physical
            cores.
        executors: a ``concurrent.futures.Executor`` per kind to use instead of our own
            pool; dagexec never shuts down an executor it did not create.
        cache: a persistent cache (``DiskCache``) for every run of this Runner, unless
            a run passes its own.
    """

    def __init__(
        self,
        max_workers: int | Mapping[str, int] | None = None,
        executors: Mapping[str, Executor] | None = None,
        cache: DiskCache | None = None,
    ) -> None:
        self._pools = Pools(max_workers, executors)
        self._cache = _check_cache(cache)
        self._once = OnceMap()
        self._closed = False
        # Set by Graph.run: nobody else can reach this Runner, so the sorter alone
        # guarantees exactly-once and runs skip the once-map.
        self._private = False
        self._lock = threading.Lock()
        self._runs: set[_Run] = set()  # runs in progress, for cancel()
        self._abandoned = False  # a run left a thread task running (timeout, cancel)

    def submit(
        self,
        key: Hashable,
        fn: Callable[..., T],
        /,
        *args: Any,
        kind: str = "thread",
        **kwargs: Any,
    ) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` as task ``key`` unless it is running or held already.

        Every caller of the same key gets a future of the one execution. A failure sets
        a ``TaskFailed`` whose ``__cause__`` is the task's exception. Safe to call from
        any thread, including from inside a task (a waiting worker lends its pool a
        thread, so a pool of one worker does not deadlock).
        """
        self._check_open()
        task = _submitted_task(key, fn, args, kwargs, kind)
        future: _TaskFuture[T] = _TaskFuture()

        def done(ok: bool, value: Any) -> None:
            _settle_future(future, key, ok, value)

        cell, owner = self._once.claim(task, hold=True, on_done=done)
        future._once, future._cell, future._callback = self._once, cell, done
        if owner:
            self._once.subscribe(cell, done)
            calls: list[Call] = [(key, fn, args, task.kwargs, (), True)]
            worker_of = current_thread_pool()
            on_our_thread = worker_of is not None and worker_of is self._pools.peek("thread")
            if kind == "inline" or (kind == "thread" and on_our_thread):
                run_here(self._once, cell, calls)  # not queued behind ourselves
            else:
                run_for(self._once, self._pools, [cell], calls, stop=cell.unwanted)
        return future

    def run(
        self,
        graph: Graph,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        progress: bool | str = False,
        on_event: Callable[[TaskEvent], object] | None = None,
        cache: DiskCache | None = None,
    ) -> Results:
        """Run ``graph`` and return the values of its targets.

        Args:
            graph: the graph to run; keys this Runner holds with the same definition are
                reused, not run again.
            targets: keys (or Refs) to compute, with their ancestors only. Default: every
                task, returning the values of the sinks (tasks nothing depends on).
            keep: ``"targets"`` drops each intermediate value as soon as its last
                dependent has finished; ``"all"`` keeps and returns every value.
            on_error: ``"raise"`` stops dispatching at the first failure, lets running
                tasks finish and raises its ``TaskFailed`` (``.results`` holds what
                completed); ``"continue"`` runs everything that does not depend on a
                failure and reports failures in ``Results.errors``.
            retries, retry_on, backoff: retry defaults for tasks whose own definition
                and whose graph say nothing (see ``Graph.add``).
            timeout: seconds for the whole run; past it, the run is cancelled.
            limits: capacities of the resources tasks declare (``resources=`` of
                ``Graph.add``), like ``{"gpu": 1, "mem_gb": 16}``; a task starts only
                when what it needs is free.
            progress: ``True`` shows a live bar on stderr (done/total, running, failed,
                retried) when stderr is a terminal; ``"always"`` shows it anyway.
            on_event: called with a ``TaskEvent`` for everything that happens to a
                task (queued, started, finished, failed, retried, skipped, cached,
                cancelled), on the run's own thread, never under a lock. An exception
                it raises is reported once (a ``RuntimeWarning``) and the run goes on.
            cache: a ``DiskCache`` (default: the Runner's): a task whose value it holds
                is not run, and every task that runs stores its value there (unless
                added with ``cache=False``). Keys hash each function's code and its
                arguments, with dependencies standing in by their own keys.

        Raises:
            MissingDependencyError, CycleError: before any task starts.
            ValueError: a task needs a resource ``limits`` lack, or more than its limit.
            TaskFailed: with ``on_error="raise"``, the first failure.
            Cancelled: ``cancel()`` was called, ``timeout`` expired, or Ctrl-C (then it
                is also a ``KeyboardInterrupt``); ``.results`` holds what completed.
        """
        run = self._plan(
            graph,
            targets,
            keep,
            on_error,
            retries,
            retry_on,
            backoff,
            timeout,
            limits,
            progress,
            on_event,
            cache,
        )
        pool = current_thread_pool()
        if pool is None:
            return self._execute(run)
        with pool.blocking():  # a nested run waits on a worker thread: lend a thread
            return self._execute(run)

    async def arun(
        self,
        graph: Graph,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        progress: bool | str = False,
        on_event: Callable[[TaskEvent], object] | None = None,
        cache: DiskCache | None = None,
    ) -> Results:
        """Run ``graph`` from asyncio code; like ``run``, without blocking the event loop.

        The run's loop works in a thread of its own; ``kind="async"`` tasks run on the
        caller's event loop (so they may use loop-bound objects such as client
        sessions), thread and process tasks on their pools. Cancelling the awaiting
        task cancels the run: it raises ``asyncio.CancelledError`` once the run stopped.
        """
        return await self._arun(
            graph,
            False,
            targets=targets,
            keep=keep,
            on_error=on_error,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            timeout=timeout,
            limits=limits,
            progress=progress,
            on_event=on_event,
            cache=cache,
        )

    async def _arun(self, graph: Graph, close: bool, **options: Any) -> Results:
        """``arun``; ``close``: shut the pools down after the run, off the event loop."""
        try:
            run = self._plan(graph, **options)
        except BaseException:
            if close:
                self._close()
            raise
        loop = asyncio.get_running_loop()
        run.use_loop(loop)
        done: asyncio.Future[Results] = loop.create_future()

        def report(value: Results | None, exc: BaseException | None) -> None:
            if done.cancelled():
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(value)  # type: ignore[arg-type]

        def drive() -> None:
            try:
                try:
                    value = self._execute(run)
                finally:
                    if close:
                        self._close()
            except BaseException as exc:
                loop.call_soon_threadsafe(report, None, exc)
            else:
                loop.call_soon_threadsafe(report, value, None)

        driver = threading.Thread(target=drive, name="dagexec-arun", daemon=True)
        driver.start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            run.cancel(Cancelled("the task awaiting Runner.arun was cancelled"))
            with suppress(Exception):
                await done  # the run stops: processes terminated, async tasks cancelled
            raise
        finally:
            driver.join()  # it has reported: only its last line is left

    def cancel(self) -> None:
        """Cancel every run in progress on this Runner (callable from any thread).

        Each stops dispatching, drops its queued work, terminates the process workers
        running its tasks and cancels its async tasks, then raises ``Cancelled`` with
        the results completed so far. Thread tasks cannot be stopped in Python: one that
        is running is left to finish in the background, its value dropped.
        """
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.cancel(Cancelled("the run was cancelled (Runner.cancel)"))

    def _plan(
        self,
        graph: Graph,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: str = "targets",
        on_error: str = "raise",
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        progress: bool | str = False,
        on_event: Callable[[TaskEvent], object] | None = None,
        cache: DiskCache | None = None,
    ) -> _Run:
        """Check a run's arguments and plan it; raise before any work starts."""
        self._check_open()
        if keep not in ("targets", "all"):
            raise ValueError(f"keep must be 'targets' or 'all', not {keep!r}")
        if on_error not in ("raise", "continue"):
            raise ValueError(f"on_error must be 'raise' or 'continue', not {on_error!r}")
        if not isinstance(graph, Graph):
            raise TypeError(f"Runner.run needs a dagexec.Graph, not {type(graph).__name__}")
        policy = check_policy("run()", retries, retry_on, backoff)
        if timeout is not None and not positive_seconds(timeout):
            raise ValueError(f"run(timeout=) takes finite seconds > 0, not {timeout!r}")
        return _Run(
            self,
            graph,
            _target_keys(graph, targets),
            keep == "all",
            on_error == "raise",
            policy,
            timeout,
            check_limits(limits),
            self._cache if cache is None else _check_cache(cache),
            check_progress(progress),
            check_on_event(on_event),
        )

    def _execute(self, run: _Run) -> Results:
        with self._lock:
            self._runs.add(run)
        try:
            return run.execute()
        finally:
            with self._lock:
                self._runs.discard(run)
            if run.abandoned:
                self._abandoned = True

    def clear(self) -> None:
        """Drop every value this Runner holds; later runs compute them again."""
        self._once.clear()

    def shutdown(self, wait: bool = True) -> None:
        """Shut down the pools this Runner created (never the executors it was given)."""
        self._closed = True
        self._pools.shutdown(wait=wait)

    def _close(self) -> None:
        """Shut down after a private run; a thread task it abandoned is not waited for."""
        self._closed = True
        self._pools.shutdown(wait=True, threads=not self._abandoned)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Runner is shut down; create a new one")

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=True)


def take_batch(queue: SimpleQueue[T], wait: float = _POLL) -> list[T]:
    """Return the messages on ``queue``: at least one, or none after ``wait`` seconds.

    A loop blocks here, never for long, so Ctrl-C in its thread is handled promptly.
    """
    try:
        batch = [queue.get(timeout=wait)]
    except Empty:
        return []
    while not queue.empty():
        batch.append(queue.get())
    return batch


def run_here(once: OnceMap, cell: Cell, calls: list[Call]) -> None:
    """Run a one-task unit in this thread for whoever waits on ``cell``; settle it.

    Only Exceptions are task failures: Ctrl-C (or SystemExit) in the caller's thread is
    the caller's, and fails the cell on its way out, so nobody waits on it forever.
    """
    try:
        ok, value = run_calls(calls, None, Exception)[0]
    except BaseException as exc:
        once.settle(cell, False, exc)
        raise
    once.settle(cell, ok, value)


def run_for(
    once: OnceMap,
    pools: Pools,
    cells: list[Cell],
    calls: list[Call],
    raw: bool = False,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Run ``calls`` (one task or a chain) for whoever waits on ``cells``; settle each.

    ``raw``: a process task's value stays pickled (``Pickled``), for process tasks only.
    ``stop``: asked when the unit is about to start; True skips it (nobody wants it any
    more), and its cells are released, or the unit is run anyway for a caller that
    joined in between.
    """

    def each(i: int, ok: bool, value: Any) -> None:
        once.settle(cells[i], ok, value)

    def settle(_calls: list[Call], outcomes: list[Outcome], _stamp: Stamp | None) -> None:
        if not outcomes:  # skipped: every caller gave it up before it started
            if not all([once.release(cell) for cell in cells]):
                run_for(once, pools, cells, calls, raw)  # someone joined meanwhile
            return
        for cell, (ok, value) in zip(cells, outcomes):  # noqa: B905 (a failure ends it)
            once.settle(cell, ok, value)  # again: does nothing if ``each`` did it
        if len(outcomes) < len(cells):
            failed = task_failed(calls[len(outcomes) - 1][0], outcomes[-1][1])
            for cell in cells[len(outcomes) :]:
                once.settle(cell, False, failed)

    try:
        pool = pools.get(cells[0].task.kind)
        pool.submit(calls, settle, stop, each if len(calls) > 1 else None, raw)
    except RuntimeError as exc:  # the Runner was shut down
        for cell in cells:
            once.settle(cell, False, exc)


def _submitted_task(
    key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], kind: str
) -> _Task:
    try:
        hash(key)
    except TypeError:
        raise unhashable(key) from None
    check_task(key, fn, kind)
    if any(type(a) is Ref for a in (*args, *kwargs.values())):
        raise TypeError(f"task {key!r}: Runner.submit takes values, not Refs; use a Graph")
    return _Task(key, fn, args, kwargs or _NO_KWARGS, kind, (), (), ())


def _settle_future(future: Future[Any], key: Hashable, ok: bool, value: Any) -> None:
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(task_failed(key, value))
    except InvalidStateError:  # the caller cancelled it
        pass


class _Shipping(Mapping[Hashable, Any]):
    """A run's values, as a process task's arguments see them.

    A value sent to several tasks is pickled once (``Pickled``), and its bytes are copied
    into each payload; a value that stayed pickled (see ``_Run.raw``) goes as it is.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run

    def __getitem__(self, key: Hashable) -> Any:
        run = self.run
        shipped = run.shipped.get(key)
        if shipped is not None:
            return shipped
        value = run.state.values[key]
        if type(value) is Pickled or run.state.remaining.get(key, 0) < 2:
            return value
        try:
            shipped = run.shipped[key] = Pickled(dumps(value))
        except Exception:  # the task's own payload fails to pickle, naming it
            return value
        return shipped

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.run.state.values)

    def __len__(self) -> int:
        return len(self.run.state.values)


def _check_cache(cache: object) -> DiskCache | None:
    """Check a ``cache=`` argument: None or a DiskCache."""
    if cache is None or isinstance(cache, DiskCache):
        return cache
    raise TypeError(f"cache must be a dagexec.DiskCache or None, not {cache!r}")


def _upstream_order(
    tasks: Mapping[Hashable, _Task], wanted: Iterable[Hashable], held: Mapping[Hashable, Any]
) -> list[Hashable] | None:
    """The keys ``wanted`` needs (not through ``held`` ones), dependencies first; None
    if a needed key is missing or in a cycle (``RunState`` then says which, clearly)."""
    needed: dict[Hashable, None] = {}
    stack = [k for k in wanted if k not in held]
    while stack:
        key = stack.pop()
        if key in needed:
            continue
        task = tasks.get(key)
        if task is None:
            return None
        needed[key] = None
        stack.extend(d for d in task.preds if d not in held and d not in needed)
    sorter: graphlib.TopologicalSorter[Hashable] = graphlib.TopologicalSorter()
    for key in needed:
        sorter.add(key, *(d for d in tasks[key].preds if d in needed))
    try:
        return list(sorter.static_order())
    except graphlib.CycleError:
        return None


def _target_keys(
    graph: Graph, targets: Iterable[Hashable | Ref[Any]] | None
) -> list[Hashable] | None:
    if targets is None:
        return None
    if isinstance(targets, (str, bytes, Ref)):
        targets = [targets]
    keys = []
    for t in targets:
        if type(t) is Ref:
            if t._gid != graph._gid:
                raise TypeError(f"target {t!r} belongs to another Graph")
            keys.append(t.key)
        else:
            try:
                hash(t)
            except TypeError:
                raise TypeError(f"target {t!r} is not a hashable key") from None
            keys.append(t)
    return keys


#: (calls, outcomes, the kind of pool that ran them or None)
_Message = tuple[list[Call], list[Outcome], str | None]


class _Run:
    """One run of a graph: the loop that owns its RunState.

    Ready keys wait in a queue per kind; each pool gets at most ``capacity`` units at a
    time, so queued work stays ours (cheap to reorder or drop) and only a few work items
    exist at once.

    A private run (``Graph.run``) has the Runner to itself and never touches the once-map;
    a shared one (``Runner.run``) claims every key it starts, joins keys others compute
    and records each key's lineage so that values are shared only between callers whose
    inputs match.

    State fields:
        state      the RunState (pure)
        queue      (calls, outcomes, kind) messages from pools and joined cells
        waiting    kind -> ready keys not handed to a pool yet
        busy       kind -> units handed to that pool and not reported yet
        inflight   units submitted or joined, not reported yet
        cells      key -> once-cell this run owns, settled when the outcome arrives
        lineages   key -> what it is computed from (shared runs; built on demand)
        first      the first failure, when on_error="raise"
        stop       set at that failure (or an abort): queued work and chains stop
        orphaned   set by abort(): outcomes then settle their cells on arrival
        batch      the messages being handled, for abort() to finish if interrupted
        local      placement and kept values of process units (private runs on our own
                   process pool; see ``_locality``), created with the first one

    Recovery, when a value kept in a process worker died with it (lineage):
        parked_on    key -> its lost inputs it waits for (the key is not started)
        parked_by    lost key -> keys parked on it
        redoing      key being recomputed -> its own inputs still being recovered
        redo_waiters key -> keys whose recomputation waits for it
        restored     recomputed values the run had already released, kept only for
                     the recomputations that need them (``restored_need`` counts those)
        redo_errors  key -> (the key whose recomputation failed, its TaskFailed), for
                     every key that can no longer be recomputed

    Control (retries, timeouts, cancellation, resources):
        policy     the retry defaults of the graph over the run's
        attempts   key -> the attempt now running, for keys that failed before
        timers     heap of (when, seq, key): retries waiting for their backoff
        clocks     key -> (its _Clock, timeout): timed thread units (and units on a
                   given executor), watched by the loop; past it they are abandoned
        ignored    id(calls) -> calls of abandoned units, whose outcomes are dropped
        timed      a timed unit went to our process pool: the loop calls its expire()
        deadline   monotonic time the run's own timeout expires, or None
        cancelled  set by cancel() from any thread; the loop raises it
        free       resource -> amount not held; holding: key -> what it holds
        deferred   heap of (-priority, seq, key): ready keys waiting for resources

    Observation (``results.stats``, ``on_event``, ``progress``):
        stamps     id(calls) -> Stamp (worker, call times), written by the pools'
                   threads just before they post the unit, taken by the loop
        timing     key -> (worker, (started, finished)): where and when it last ran
        queued_at  key -> when it last became ready; cached: key -> when reused
        events     TaskEvents not handed to the callback yet (``flush``)
    """

    def __init__(
        self,
        runner: Runner,
        graph: Graph,
        targets: list[Hashable] | None,
        keep_all: bool,
        fail_fast: bool,
        policy: Policy | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        cache: DiskCache | None = None,
        show: bool | str = False,
        emitter: _Emitter | None = None,
    ) -> None:
        self.started = time.perf_counter()
        self.once = runner._once
        self.pools = runner._pools
        tasks = graph._tasks
        self.private = runner._private
        held = self.once.held(tasks) if len(self.once) else {}
        values = {k: c.value for k, c in held.items()}
        self.cache = cache
        self.cache_keys: dict[Hashable, str] = {}  # key -> its content key in ``cache``
        self.cache_hits = 0
        if cache is not None:
            values.update(self.from_cache(cache, tasks, targets, values))
        with _gc_paused():
            self.state = RunState(tasks, targets, values, keep_all)
        # What each held value was computed from, to record what new held values are.
        self.lineages: dict[Hashable, Lineage] = {k: c.lineage for k, c in held.items()}
        self.tasks = tasks
        self.fail_fast = fail_fast
        self.queue: SimpleQueue[_Message] = SimpleQueue()
        # Inline first: running one can make work ready for the pools in the same pump.
        self.waiting: dict[str, deque[Hashable]] = {kind: deque() for kind in _PUMP_ORDER}
        self.busy: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.inflight = 0
        self.cells: dict[Hashable, Cell] = {}
        self.first: TaskFailed | None = None
        self.stop = threading.Event()  # set at the first failure when failing fast
        self.orphan_lock = threading.Lock()
        self.orphaned = False  # set by abort: pools settle this run's cells themselves
        self.batch: list[_Message] = []  # the messages being handled
        self.ran = 0
        self.waited = 0
        self.bytes_before = self.pools.process_stats()
        # One sink per pool kind, so the loop knows whose capacity an outcome frees.
        self.sinks = {kind: partial(self.pooled_sink, kind) for kind in KINDS}
        # Values sent to several process tasks, pickled once (dropped with the value).
        self.shipped: dict[Hashable, Pickled] = {}
        self.read_here: set[Hashable] | None = None  # see raw()
        self.read_there: set[Hashable] = set()  # keys with a process dependent (see raw())
        self.local: Local | None = None
        self.localize = self.private and self.pools.owns("process")
        self.parked_on: dict[Hashable, set[Hashable]] = {}
        self.parked_by: dict[Hashable, list[Hashable]] = {}
        self.redoing: dict[Hashable, int] = {}
        self.redo_waiters: dict[Hashable, list[Hashable]] = {}
        self.restored: dict[Hashable, Any] = {}
        self.restored_need: dict[Hashable, int] = {}
        self.known = ChainMap(self.state.values, self.restored)  # what inputs can read
        self.redo_errors: dict[Hashable, tuple[Hashable, TaskFailed]] = {}
        self.recomputed = 0
        self.policy = graph._policy.under(policy or Policy(None, None, None))
        self.chaining = not self.policy  # a chain cannot retry one of its tasks alone
        self.attempts: dict[Hashable, int] = {}
        self.retried = 0
        self.timers: list[tuple[float, int, Hashable]] = []
        self.seq = itertools.count()
        self.clocks: dict[Hashable, tuple[_Clock, float]] = {}
        self.ignored: dict[int, list[Call]] = {}
        self.abandoned = False  # a thread unit was left running (timeout or cancel)
        self.timed = False
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cancelled: Cancelled | None = None
        self.free: dict[str, float] = dict(limits or {})
        self.holding: dict[Hashable, Mapping[str, float]] = {}
        self.deferred: list[tuple[int, int, Hashable]] = []
        self.loop_pool: Pool | None = None  # an _AsyncPool on the caller's loop (arun)
        self.early: dict[Hashable, Any] = {}  # values computed in chains (keep_each)
        self.early_done: dict[Hashable, float] = {}  # keys a chain computed -> when
        # What the run saw (statistics, events, progress); times are perf_counter().
        self.emitter = emitter  # hands TaskEvents to on_event
        self.show = show  # progress=
        self.progress: Progress | None = None
        self.next_draw = 0.0
        self.events: list[TaskEvent] = []
        self.stamps: dict[int, Stamp] = {}  # id(calls) -> its Stamp, from pool threads
        self.timing = Timing()  # key -> worker, started, finished
        self.queued_at: dict[Hashable, float] = {}
        self.cached: dict[Hashable, float] = {}  # keys whose value was reused -> when
        self.done = 0  # keys with a final outcome
        self.prioritized = False
        if graph._options:
            self.check_options()

    def from_cache(
        self,
        cache: DiskCache,
        tasks: Mapping[Hashable, _Task],
        targets: list[Hashable] | None,
        held: Mapping[Hashable, Any],
    ) -> dict[Hashable, Any]:
        """Key every task the targets need; return the values ``cache`` has for them.

        From the targets up: a task found in the cache is not run and its inputs are
        not needed (so they are neither run nor loaded); one not found needs its inputs.
        """
        wanted = sink_keys(tasks) if targets is None else targets
        order = _upstream_order(tasks, wanted, held)
        if order is None:
            return {}  # a bad graph: RunState raises before any work starts
        keys, why = task_keys(tasks, order)
        if why:
            first = ", ".join(f"{k!r} ({reason})" for k, reason in list(why.items())[:3])
            warnings.warn(
                f"{len(why)} task(s) have no cache key and are not cached: {first}",
                RuntimeWarning,
                stacklevel=5,
            )
        for key, content in keys.items():
            opts = tasks[key].opts
            if opts is None or opts.cache is not False:
                self.cache_keys[key] = content
        hits: dict[Hashable, Any] = {}
        seen = set(held)
        stack = list(wanted)
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            ckey = self.cache_keys.get(key)
            if ckey is not None:
                hit, value = cache.get(ckey)
                if hit:
                    hits[key] = value
                    continue
            stack.extend(tasks[key].preds)
        self.cache_hits = len(hits)
        return hits

    def stored(self, key: Hashable, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, wrapped to store its value in the run's cache if ``key`` has a key."""
        ckey = self.cache_keys.get(key)
        if ckey is None:
            return fn
        assert self.cache is not None
        return StoreValue(fn, self.cache, ckey, key)

    def check_options(self) -> None:
        """Check resources against the limits, and order ready keys by priority if set."""
        tasks = self.tasks
        prioritized = False
        for key in self.state.run_keys:
            opts = tasks[key].opts
            if opts is None:
                continue
            prioritized = prioritized or opts.priority != 0
            for name, amount in opts.resources.items():
                limit = self.free.get(name)
                if limit is None:
                    raise ValueError(
                        f"task {key!r} needs resource {name!r} but the run sets no limit "
                        f"for it; pass limits={{{name!r}: ...}} to run()"
                    )
                if amount > limit:
                    raise ValueError(
                        f"task {key!r} needs {name}={amount:g} but limits allow {limit:g}; "
                        "raise the limit or lower the task's resources"
                    )
        if prioritized:
            self.prioritized = True
            self.waiting = {kind: self.new_queue() for kind in _PUMP_ORDER}

    def new_queue(self) -> deque[Hashable]:
        """Return an empty queue of ready keys: by priority if the graph sets any."""
        return _Ready(self.priority) if self.prioritized else deque()  # type: ignore[return-value]

    def priority(self, key: Hashable) -> int:
        opts = self.tasks[key.key if type(key) is _Redo else key].opts
        return 0 if opts is None else opts.priority

    def pool(self, kind: str) -> Pool:
        """Return the pool for ``kind``: the Runner's, or the caller's loop for async."""
        if kind == "async" and self.loop_pool is not None:
            return self.loop_pool
        return self.pools.get(kind)

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run this run's async tasks on ``loop`` (the caller's, for ``arun``)."""
        from ._aio import _AsyncPool

        size = self.pools.size("async")
        self.loop_pool = _AsyncPool(size, loop=loop)

    def cancel(self, exc: Cancelled) -> None:
        """Ask the run to stop (any thread): the loop raises ``exc`` when it wakes."""
        if self.cancelled is None:
            self.cancelled = exc
            self.stop.set()
            self.queue.put(([], [], _WAKE))

    def execute(self) -> Results:
        """Drive the run to its end and return its Results (or raise its first failure)."""
        if self.show:
            self.progress = Progress(len(self.state.run_keys), self.show)
        try:
            self.loop()
        except BaseException as exc:  # cancel, Ctrl-C, or an inline task's SystemExit
            self.abort(exc)
            try:
                stopped = self.stopped(exc)  # closes the progress bar, with its results
            finally:
                if self.progress is not None:
                    self.progress.close(ok=False)
            if stopped is None:
                raise
            if stopped is exc:
                raise
            raise stopped from exc
        finally:
            if self.local is not None:
                self.local.close()  # the workers forget this run's values
            if self.loop_pool is not None:
                self.loop_pool.shutdown(wait=False)
        return self.results()  # draws the progress bar's final counts and closes it

    def stopped(self, exc: BaseException) -> Cancelled | None:
        """Return the Cancelled to raise for ``exc`` (with the results so far), if any."""
        if isinstance(exc, Cancelled):
            stopped = exc
        elif isinstance(exc, KeyboardInterrupt):
            stopped = _Interrupted("the run was interrupted (Ctrl-C)")
        else:
            return None
        stopped.results = self.results(raising=False, stopped=True)
        return stopped

    def loop(self) -> None:
        if self.state.reused:
            now = time.perf_counter()
            for key in self.state.reused:
                self.reuse(key, now)
        self.enqueue(self.state.ready(), first=False)
        while True:
            self.pump()
            if self.cancelled is not None:
                raise self.cancelled
            if not self.inflight:
                break
            if self.events:
                self.flush()
            if self.progress is not None:
                self.tick()
            batch = take_batch(self.queue, self.wait_time())
            if self.timers or self.clocks or self.timed or self.deadline is not None:
                self.watch()
            if self.cancelled is not None:
                if batch:
                    self.handle(batch)  # nothing computed is lost
                raise self.cancelled
            if not batch:
                continue
            self.batch = batch  # for abort(), should handling be interrupted
            ready = self.handle(batch)
            self.batch = batch = []  # hold no values the release rule has dropped
            if self.shipped:
                values = self.state.values
                self.shipped = {k: p for k, p in self.shipped.items() if k in values}
            self.enqueue(ready)

    def reuse(self, key: Hashable, now: float) -> None:
        """Note that ``key``'s value was reused, not computed here."""
        self.cached[key] = now
        if self.emitter is not None:
            task = self.tasks[key]
            self.events.append(TaskEvent("cached", key, task.kind, "", 1, now))

    def event(
        self,
        what: EventType,
        key: Hashable,
        error: BaseException | None = None,
        attempt: int | None = None,
    ) -> None:
        """Note a TaskEvent for the callback; its worker and time come from ``timing``."""
        worker = ""
        when = time.perf_counter()
        if what != "queued":
            timing = self.timing
            if key in timing:
                worker = timing.worker[key]
                when = (timing.started if what == "started" else timing.finished)[key]
        tries = self.attempts.get(key, 1) if attempt is None else attempt
        self.events.append(TaskEvent(what, key, self.tasks[key].kind, worker, tries, when, error))

    def flush(self) -> None:
        """Hand the events noted so far to the callback (on this thread, no lock held)."""
        events, self.events = self.events, []
        if self.emitter is not None:
            self.emitter.emit(events)

    def tick(self) -> None:
        """Redraw the progress bar, at most every 0.1 s."""
        now = time.perf_counter()
        if now < self.next_draw:
            return
        self.next_draw = now + 0.1
        assert self.progress is not None
        running = 0
        for kind in ("thread", "process", "async"):  # handed out, at most one per worker
            if self.busy[kind]:
                running += min(self.busy[kind], self.pools.size(kind))
        self.progress.update(self.done, running, len(self.state.errors), self.retried)

    def finished_early(self) -> set[Hashable]:
        """Keys that returned inside a chain the run's stop cut short: the loop never
        handled them (a private run noted them in ``keep_each``, a shared one settled
        their cells)."""
        early = {k for k in self.early_done if k not in self.timing}
        early.update(k for k, cell in self.cells.items() if cell.done and cell.ok)
        return early

    def unfinished(self, skipped: Mapping[Hashable, Any], early: set[Hashable]) -> list[Hashable]:
        """The keys of a stopped run that never got an outcome (cancelled)."""
        state = self.state
        done = self.timing
        cells = self.cells
        return [
            k
            for k in state.run_keys
            if k not in done
            and k not in state.errors
            and k not in skipped
            and k not in self.cached
            and k not in state.values
            and k not in early
            and not (k in cells and cells[k].done)  # failed inside a shared run's chain
        ]

    def workers(self) -> dict[str, int]:
        """The number of workers of each kind the run's tasks had."""
        kinds = {self.tasks[k].kind for k in self.state.run_keys}
        return {kind: 1 if kind == "inline" else self.pools.size(kind) for kind in kinds}

    def wait_time(self) -> float:
        """Seconds the loop may block: until the next retry, or the run's deadline."""
        wait = _POLL
        now = time.monotonic()
        if self.timers:
            wait = min(wait, max(0.0, self.timers[0][0] - now))
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - now))
        return wait

    def watch(self) -> None:
        """Start retries that are due; stop units past their timeout; the run's own."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline and self.cancelled is None:
            self.cancelled = Cancelled(f"the run's timeout of {self.timeout:g} s expired")
            self.stop.set()
        if self.timed:
            pool = self.pools.peek("process")
            if isinstance(pool, _ProcessPool):
                pool.expire()
        perf = time.perf_counter()
        for key, (clock, timeout) in list(self.clocks.items()):
            if clock.began and perf - clock.began > timeout:
                self.abandon(key, clock, timeout)
        timers = self.timers
        while timers and timers[0][0] <= now:
            key = heapq.heappop(timers)[2]
            self.inflight -= 1
            self.enqueue([key])

    def abandon(self, key: Hashable, clock: _Clock, timeout: float) -> None:
        """Give up a thread unit past its timeout: it runs on, its outcome is dropped."""
        del self.clocks[key]
        self.ignored[id(clock.calls)] = clock.calls
        self.inflight -= 1
        kind = self.tasks[key].kind
        self.busy[kind] -= 1
        clock.lend(self.pool(kind))  # what is queued behind it does not wait for it
        self.abandoned = True
        self.timing.note(key, (clock.worker, (clock.began, time.perf_counter())))
        if self.emitter is not None:
            self.event("started", key)
        exc = Expired(timeout, "a thread cannot be stopped: it was abandoned and runs on")
        if self.retry(key, exc):
            return
        cell = self.cells.pop(key, None)
        if cell is not None:
            self.once.settle(cell, False, exc)
        self.fail_final(key, exc)

    def abort(self, exc: BaseException) -> None:
        """Stop starting work; stop what runs where it can be; leave the rest to settle
        its once-cells by itself.

        Work queued in a pool is skipped (``stop``). Process workers running this run's
        tasks are terminated and its async tasks cancelled, except those another caller
        has joined. A task still running in a thread finishes in the background: its
        outcome settles its once-cell straight from the pool's thread, so other callers
        waiting on it get its value, and the key is never run twice at once.
        """
        self.stop.set()
        for keys in self.waiting.values():
            keys.clear()
        self.deferred.clear()
        if self.local is not None:
            self.local.clear()
        self.halt_workers()
        with self.orphan_lock:
            # A private run's keys nobody else waits on: no orphans to settle.
            self.orphaned = not self.private
            messages, self.batch = self.batch, []  # an interrupted handle() left these
            while not self.queue.empty():
                messages.append(self.queue.get())
        self.keep_computed(messages)
        if not self.private:
            for calls, outcomes, _ in messages:
                self.settle_orphans(calls, outcomes)

    def keep_computed(self, messages: list[_Message]) -> None:
        """Record the targets computed before the run stopped that it has not handled:
        outcomes still queued, values computed inside chains still running, cells
        settled for other callers. Nothing computed is lost."""
        state = self.state
        targets = state.targets
        keep_all = state.keep_all

        def keep(key: Hashable, value: Any) -> None:
            if (keep_all or key in targets) and not state.is_done(key):
                state.values[key] = value

        for calls, outcomes, kind in messages:
            if kind is None or type(kind) is str:  # a unit's outcomes
                for (key, *_), (ok, value) in zip(calls, outcomes):  # noqa: B905
                    if ok:
                        keep(key, value)
        for key, value in self.early.items():
            keep(key, value)
        for key, cell in self.cells.items():
            if cell.done and cell.ok:
                keep(key, cell.value)

    def halt_workers(self) -> None:
        """Terminate process workers and cancel async tasks running this run's units;
        withdraw its units from executors the user gave (dask drops them too)."""
        stop = self.stop.is_set
        spare = None if self.private else self.joined
        pool = self.pools.peek("process")
        if isinstance(pool, _ProcessPool):
            pool.kill(stop, spare)
        for kind in ("process", "thread"):
            given = self.pools.peek(kind)
            if isinstance(given, _ExecutorPool):
                given.cancel(stop, spare)
        for async_pool in (self.pools.peek("async"), self.loop_pool):
            if async_pool is not None:
                async_pool.cancel(stop)  # type: ignore[union-attr]
        if self.busy["thread"] or self.clocks:
            self.abandoned = True  # a thread cannot be stopped: it finishes on its own

    def joined(self, calls: list[Call]) -> bool:
        """Say whether another caller waits on one of these calls' keys."""
        return any(self.once.joined(self.cells.get(call[0])) for call in calls)

    def settle_orphans(self, calls: list[Call], outcomes: list[Outcome]) -> None:
        """Settle the cells of outcomes that arrive after the run's loop has gone."""
        for (key, *_), (ok, value) in zip(calls, outcomes):  # noqa: B905
            cell = self.cells.get(key)
            if cell is not None:
                self.once.settle(cell, ok, value)
                self.cells.pop(key, None)
        self.release_or_run(calls, outcomes)

    def enqueue(self, keys: Sequence[Hashable], first: bool = True) -> None:
        """Queue ready keys; ``first`` puts them before the keys already waiting.

        Keys made ready by an outcome go first (depth-first): they consume values just
        computed, so those are released soon, and a wide graph of big intermediates
        holds few of them at a time. Pools run what they are handed in order, and keep
        a shallow queue when units are long (see ``_ThreadPool.capacity``).
        """
        if self.first is not None or self.cancelled is not None:
            return  # stopping: nothing new starts
        tasks = self.tasks
        waiting = self.waiting
        localize = self.localize
        limited = bool(self.free)
        queued_at = self.queued_at
        emitter = self.emitter
        now = time.perf_counter()
        for key in reversed(keys) if first else keys:
            task = tasks[key]
            queued_at[key] = now
            if emitter is not None:
                self.event("queued", key)
            if limited and task.opts is not None and not self.acquire(key, task.opts.resources):
                continue  # deferred until what it needs is free
            if localize and task.kind == "process":
                self.local_units().enqueue(key, task.deps, first)
            elif first:
                waiting[task.kind].appendleft(key)
            else:
                waiting[task.kind].append(key)

    def acquire(self, key: Hashable, needs: Mapping[str, float]) -> bool:
        """Take the resources ``key`` needs, or defer it (by priority) until they are free."""
        if not needs or key in self.holding:
            return True
        free = self.free
        if all(free[name] >= amount for name, amount in needs.items()):
            for name, amount in needs.items():
                free[name] -= amount
            self.holding[key] = needs
            return True
        heapq.heappush(self.deferred, (-self.priority(key), next(self.seq), key))
        return False

    def release(self, key: Hashable) -> None:
        """Give back what ``key`` held; start deferred keys that fit now, best first."""
        needs = self.holding.pop(key, None)
        if needs is None:
            return
        for name, amount in needs.items():
            self.free[name] += amount
        deferred, self.deferred = self.deferred, []
        ready = [heapq.heappop(deferred)[2] for _ in range(len(deferred))]
        self.enqueue(ready, first=False)  # what does not fit goes back to waiting

    def pump(self) -> None:
        """Hand waiting keys to their pools up to capacity; run inline ones right here."""
        for kind, keys in self.waiting.items():
            if not keys:
                continue
            if kind == "inline":
                while keys and self.first is None and self.cancelled is None:
                    msg = self.start(keys.popleft(), None)
                    if msg is not None:
                        self.batch = [msg]  # for abort(), should handling be interrupted
                        del msg
                        ready = self.handle(self.batch)
                        self.batch = []  # hold no values the release rule has dropped
                        self.enqueue(ready)
                continue
            pool = self.pool(kind)
            capacity = pool.capacity  # it may change while we hand out work
            free = capacity - self.busy[kind]
            while keys and free > 0 and self.first is None and self.cancelled is None:
                if self.start(keys.popleft(), pool) is not None:
                    free -= 1
            self.busy[kind] = capacity - free
        local = self.local
        if local is not None:
            if self.first is None:
                local.pump(self.start_local, self.inputs_of)
            self.inflight += local.issued
            local.issued = 0

    def start(self, key: Hashable, pool: Pool | None) -> Any:
        """Claim ``key``, chain its followers and start them; return what was started."""
        task = self.tasks[key]
        if not (self.private or key in self.cells or self.claim(task)):
            return None  # joined (a retry owns its cell already)
        state = self.state
        fn = self.stored(key, task.fn) if self.cache_keys else task.fn
        if task.refs:
            if task.kind == "process":
                args, kwargs = resolve_args(task.args, task.kwargs, task.refs, _Shipping(self))
            else:
                args, kwargs = state.args(task)
            calls: list[Call] = [(key, fn, args, kwargs, (), True)]
        else:
            calls = [(key, fn, task.args, task.kwargs, (), True)]
        each = None
        timeout = None
        if task.opts is not None and task.opts.timeout is not None:
            timeout = self.time(key, calls, pool, task.opts.timeout)
        elif key in state._next_in_chain and self.chaining:
            chain = state.chain(key)
            if len(chain) > 1 and not self.private:
                chain = self.claim_followers(chain)
                if len(chain) > 1:
                    # Each key of the chain is settled the moment it is computed, so a
                    # caller that joined one never waits for the rest of the chain.
                    each = partial(self.settle_each, [self.cells[k] for k in chain])
            if len(chain) > 1:
                self.add_chain(calls, chain)
                if self.private:
                    # Should the run stop while the chain runs on, what it computed stays.
                    kept = {
                        i: k for i, k in enumerate(chain) if state.keep_all or k in state.targets
                    }
                    if kept or self.emitter is not None:
                        each = partial(self.keep_each, chain, kept)
        try:
            if pool is None:  # inline
                # Only Exceptions are task failures here: Ctrl-C in the caller's thread
                # stops the run, as it would stop the same code called directly.
                times = [time.perf_counter()]
                outcomes = run_calls(calls, None, Exception, None, times)
                self.stamps[id(calls)] = (threading.current_thread().name, tuple(times))
            else:
                raw = task.kind == "process" and self.raw(key)
                pool.submit(calls, self.sinks[task.kind], self.stop.is_set, each, raw, timeout)
        except BaseException as exc:
            # No message will ever carry these calls: settle their cells here.
            for call in calls:
                cell = self.cells.pop(call[0], None)
                if cell is not None:
                    self.once.settle(cell, False, exc)
            raise
        self.inflight += 1
        return pool if pool is not None else (calls, outcomes, None)

    def time(
        self, key: Hashable, calls: list[Call], pool: Pool | None, timeout: float
    ) -> float | None:
        """Arrange for a timed unit to be stopped; return the timeout the pool enforces.

        Our process pool terminates the worker and an async pool cancels the coroutine;
        a thread (or a given executor's worker) cannot be stopped, so its unit is
        watched here (``clocks``) and abandoned when late.
        """
        if isinstance(pool, _ProcessPool):
            self.timed = True
            return timeout
        if pool is not None and not isinstance(pool, (_ThreadPool, _ExecutorPool)):
            return timeout  # async
        _, fn, args, kwargs, refs, keep = calls[0]
        clock = _Clock(fn, calls)
        if isinstance(pool, _ExecutorPool):
            clock.began = time.perf_counter()  # its start is not seen from here: from now
        else:
            fn = clock
        calls[0] = (key, fn, args, kwargs, refs, keep)
        self.clocks[key] = (clock, timeout)
        return None

    def raw(self, key: Hashable) -> bool:
        """Say whether ``key``'s value may stay pickled: only process tasks will read it.

        Then it goes from worker to worker as the bytes the first worker pickled, never
        unpickled and pickled again here. Only in a private run: in a shared one, other
        callers may take the value itself.
        """
        state = self.state
        if not self.private or state.keep_all or key in state.targets:
            return False
        return key not in self.readers()

    def readers(self) -> set[Hashable]:
        """Return the keys read by a task that is not a process task (built once).

        ``read_there`` gets the keys read by a process task at the same time.
        """
        if self.read_here is None:
            tasks = self.tasks
            self.read_here = set()
            for k in self.state.run_keys:
                task = tasks[k]
                (self.read_there if task.kind == "process" else self.read_here).update(task.deps)
        return self.read_here

    # -- process units that run where their inputs are (see _locality) ----------------

    def local_units(self) -> Local:
        """Return the run's Local, created with its first process unit."""
        if self.local is None:
            pool = self.pools.get("process")
            assert isinstance(pool, _ProcessPool)
            self.local = Local(pool, self.post_local, self.stop.is_set, self.new_queue)
            self.state.released = []
        return self.local

    def post_local(self, message: UnitDone | _Fetched) -> None:
        self.queue.put(([], [], message))  # type: ignore[arg-type]

    def inputs_of(self, unit: Hashable) -> tuple[Hashable, ...]:
        key = unit.key if type(unit) is _Redo else unit
        return self.tasks[key].deps

    def start_local(self, unit: Hashable, slot: int) -> None:
        """Start a process unit on worker ``slot``, unless an input has to come first.

        An input lost with its worker parks the unit until it is recomputed; one that
        lives in another worker is fetched first (the unit is queued again then).
        """
        local = self.local
        assert local is not None
        redo = type(unit) is _Redo
        key = unit.key if redo else unit  # type: ignore[attr-defined]
        task = self.tasks[key]
        lost = [d for d in task.deps if not self.has_value(d)]
        if lost:
            if redo:
                self.restore_inputs(key, lost)
            else:
                self.park(key, lost)
            return
        try:
            if local.fetch_for(unit, task.deps, slot):
                return
        except CannotMove as exc:
            if redo:
                self.redo_failed(key, exc.failure(key))
            else:
                failed = exc.failure(key)
                self.state.fail(key, failed)
                self.stop_at(failed)
            return
        if task.refs:
            args, kwargs = resolve_args(
                task.args, task.kwargs, task.refs, _OnSlot(local, self.known, slot)
            )
        else:
            args, kwargs = task.args, task.kwargs
        read_here = self.readers()
        keep = key in self.read_there  # a process task reads it: it stays in the worker
        state = self.state
        send = not keep or state.keep_all or key in state.targets or key in read_here
        fn = local.function(task.fn, slot)
        if self.cache_keys:
            fn = self.stored(key, fn)
        timeout = task.opts.timeout if task.opts is not None else None
        self.timed = self.timed or timeout is not None
        calls: list[Call] = [(key, fn, args, kwargs, (), True)]
        local.run(slot, calls, keep, send, _REDO if redo else None, timeout)
        self.inflight += 1

    def has_value(self, key: Hashable) -> bool:
        """Say whether ``key``'s value is at hand (here, or in a live worker)."""
        if key not in self.known:
            return False
        return self.local is None or not self.local.lost(key)

    def handle_local(self, message: UnitDone | _Fetched) -> None:
        """Record how a process unit (or a fetch for one) of a local run ended."""
        local = self.local
        assert local is not None
        if type(message) is _Fetched:
            local.fetched(message, self.inputs_of)
            return
        done: UnitDone = message  # type: ignore[assignment]
        key = done.calls[0][0]
        redo = done.tag == _REDO
        if done.status == LOST:  # an input was not in its worker: place it again
            local.lose(done.value, done.slot)
            local.enqueue(_Redo(key) if redo else key, self.tasks[key].deps, True)
            return
        if done.status is None and done.value is SKIPPED:
            return  # the run stopped before it started
        local.ran(done, key, again=redo)
        if done.stamp is not None and not redo:
            self.timing.note(key, done.stamp)
        if self.emitter is not None and not redo:
            self.event("started", key)
        if done.status == OK:
            remote = done.remote
            value = remote if remote is not None and remote.data is None else done.value
            if redo:
                self.restored_value(key, value)
            else:
                self.ran += 1
                self.state.finish(key, value)
                self.done += 1
                if self.emitter is not None:
                    self.event("finished", key)
                if self.holding:
                    self.release(key)
            return
        if redo:
            self.redo_failed(key, done.value)
        else:
            self.ran += 1
            self.fail(key, done.value)

    def release_local(self) -> None:
        """Workers forget the values the run has just released."""
        released = self.state.released
        if released and self.local is not None:
            for key in released:
                if key not in self.restored:
                    self.local.release(key)
            released.clear()

    # -- recomputing values lost with a worker (lineage) --------------------------------

    def park(self, key: Hashable, lost: list[Hashable]) -> None:
        """Hold ``key`` until its lost inputs are recomputed."""
        for dep in lost:
            if dep in self.redo_errors:  # recomputing it failed already: not again
                self.fail_parked(key, dep, *self.redo_errors[dep])
                return
        self.parked_on[key] = set(lost)
        for dep in lost:
            self.parked_by.setdefault(dep, []).append(key)
            self.restore(dep)

    def restore(self, key: Hashable) -> None:
        """Recompute ``key``, after whichever of its own inputs are gone too."""
        if key in self.redoing or key in self.redo_errors:
            return
        missing = [d for d in self.tasks[key].preds if not self.has_value(d)]
        self.restore_inputs(key, missing)

    def restore_inputs(self, key: Hashable, missing: list[Hashable]) -> None:
        for dep in missing:
            if dep in self.redo_errors:
                self.redoing[key] = 0
                self.cascade(key, *self.redo_errors[dep])
                return
        self.redoing[key] = len(missing)
        for dep in missing:
            self.redo_waiters.setdefault(dep, []).append(key)
            self.restore(dep)
        if not missing:
            self.start_redo(key)

    def start_redo(self, key: Hashable) -> None:
        """Run ``key`` again; its outcome is a UnitDone tagged ``_REDO``."""
        task = self.tasks[key]
        if task.kind == "process" and self.local is not None:
            self.local.enqueue(_Redo(key), task.preds, True)
            return
        args, kwargs = resolve_args(task.args, task.kwargs, task.refs, self.known)
        calls: list[Call] = [(key, task.fn, args, kwargs, (), True)]
        self.inflight += 1
        if task.kind == "inline":
            self.redo_sink(calls, run_calls(calls, None, Exception))
        else:
            self.pools.get(task.kind).submit(calls, self.redo_sink, self.stop.is_set)

    def redo_sink(
        self, calls: list[Call], outcomes: list[Outcome], stamp: Stamp | None = None
    ) -> None:
        if not outcomes:
            self.post_local(UnitDone(calls, -1, _REDO, None, SKIPPED))
            return
        ok, value = outcomes[0]
        self.post_local(UnitDone(calls, -1, _REDO, OK if ok else FAILED, value))

    def restored_value(self, key: Hashable, value: Any) -> None:
        """A lost value is back: start what waited for it."""
        self.recomputed += 1
        del self.redoing[key]
        waiters = self.redo_waiters.pop(key, [])
        if key in self.state.values:
            self.state.values[key] = value
        else:
            self.restored[key] = value
            self.restored_need[key] = len(waiters)
        for dep in self.tasks[key].preds:  # a restored input nothing else needs now
            need = self.restored_need.get(dep)
            if need is not None:
                if need > 1:
                    self.restored_need[dep] = need - 1
                else:
                    del self.restored_need[dep], self.restored[dep]
                    if self.local is not None:
                        self.local.release(dep)
        for waiter in waiters:
            self.redoing[waiter] -= 1
            if not self.redoing[waiter]:
                self.start_redo(waiter)
        for unit in self.parked_by.pop(key, []):
            lost = self.parked_on[unit]
            lost.discard(key)
            if not lost:
                del self.parked_on[unit]
                self.enqueue([unit])

    def redo_failed(self, key: Hashable, exc: BaseException) -> None:
        """Recomputing ``key`` failed: whatever waited for it fails, now and later.

        The failure is remembered (``redo_errors``): a unit that finds the same value
        lost later fails at once instead of recomputing it (and maybe killing another
        worker) again.
        """
        self.cascade(key, key, exc if isinstance(exc, TaskFailed) else task_failed(key, exc))

    def cascade(self, start: Hashable, key: Hashable, failed: TaskFailed) -> None:
        """Fail ``start``'s recomputation and all that waits for it (``key`` failed)."""
        stack = [start]
        while stack:
            k = stack.pop()
            self.redo_errors[k] = (key, failed)
            self.redoing.pop(k, None)
            stack += self.redo_waiters.pop(k, [])
            for unit in self.parked_by.pop(k, []):
                if self.parked_on.pop(unit, None) is not None:
                    self.fail_parked(unit, k, key, failed)

    def fail_parked(
        self, unit: Hashable, lost: Hashable, key: Hashable, failed: TaskFailed
    ) -> None:
        """Fail a unit whose input ``lost`` could not be recomputed (``key`` failed)."""
        err = TaskFailed(
            unit,
            f"could not run: its input {lost!r} was lost with its process worker "
            f"and recomputing {key!r} failed",
        )
        err.__cause__ = failed
        self.state.fail(unit, err)
        self.stop_at(err)

    def claim_followers(self, chain: list[Hashable]) -> list[Hashable]:
        """Own the cells of a chain's followers; cut it before a key someone else has."""
        state = self.state
        for i, key in enumerate(chain[1:], 1):
            hold = state.keep_all or key in state.targets
            cell = self.once.claim_free(self.tasks[key], hold, self.lineage(key))
            if cell is None:
                state.fused.difference_update(chain[i:])
                return chain[:i]
            self.cells[key] = cell
        return chain

    def keep_each(
        self, chain: list[Hashable], kept: dict[int, Hashable], i: int, ok: bool, value: Any
    ) -> None:
        """Note, on the worker, that a chain computed a key (and a target's value), for a
        run that stops before the chain returns (``keep_computed``, ``unfinished``)."""
        if ok:
            self.early_done[chain[i]] = time.perf_counter()
            if i in kept:
                self.early[kept[i]] = value

    def settle_each(self, cells: list[Cell], i: int, ok: bool, value: Any) -> None:
        """Settle one key of a chain on the worker that just computed it."""
        self.once.settle(cells[i], ok, value)

    def add_chain(self, calls: list[Call], chain: list[Hashable]) -> None:
        """Append the chain's followers to ``calls``, keeping only the values needed."""
        keep = self.state.keep_all
        targets = self.state.targets
        key, fn, args, kwargs, refs, _ = calls[0]
        calls[0] = (key, fn, args, kwargs, refs, keep or key in targets)
        now = time.perf_counter()
        for nxt in chain[1:]:
            t = self.tasks[nxt]
            fn = self.stored(nxt, t.fn) if self.cache_keys else t.fn
            calls.append((nxt, fn, t.args, t.kwargs, t.refs, keep or nxt in targets))
            self.queued_at[nxt] = now  # handed out with the chain
            if self.emitter is not None:
                self.event("queued", nxt)
        key, fn, args, kwargs, refs, _ = calls[-1]
        calls[-1] = (key, fn, args, kwargs, refs, True)  # its dependents are elsewhere

    def pooled_sink(
        self, kind: str, calls: list[Call], outcomes: list[Outcome], stamp: Stamp | None
    ) -> None:
        """Report outcomes from a pool (called on the pool's thread)."""
        if stamp is not None:
            self.stamps[id(calls)] = stamp
        if self.fail_fast and outcomes and not outcomes[-1][0] and not self.may_retry(calls):
            self.stop.set()  # chains running elsewhere stop before their next task
        if self.private:  # nobody else waits on a private run's keys: no orphans
            self.queue.put((calls, outcomes, kind))
        else:
            self.post(calls, outcomes, kind)

    def may_retry(self, calls: list[Call]) -> bool:
        """Say whether a failure in ``calls`` may be retried (the loop decides)."""
        if self.policy:
            return True
        opts = self.tasks[calls[-1][0]].opts
        return opts is not None and bool(opts.retries)

    def sink(self, calls: list[Call], outcomes: list[Outcome], stamp: Stamp | None = None) -> None:
        """Report outcomes that no pool of this run produced (subscriptions, errors)."""
        self.post(calls, outcomes, None)

    def post(self, calls: list[Call], outcomes: list[Outcome], kind: str | None) -> None:
        """Queue a shared run's message, or settle its cells if the loop has gone."""
        with self.orphan_lock:  # an aborted run's loop no longer reads the queue
            if not self.orphaned:
                self.queue.put((calls, outcomes, kind))
                return
        self.settle_orphans(calls, outcomes)

    def claim(self, task: _Task) -> bool:
        """Own ``task``'s once-cell, or subscribe to it; return whether to run it here."""
        call: list[Call] = [(task.key, task.fn, (), {}, (), True)]

        def joined(ok: bool, value: Any) -> None:
            self.post(call, [(ok, value)], _JOINED)

        hold = self.state.keep_all or task.key in self.state.targets  # what it hands out
        try:
            cell, owner = self.once.claim(
                task, hold, joined, tasks=self.tasks, lineage=self.lineage(task.key)
            )
        except Busy as busy:
            # Another caller computes this key from another definition: wait for it to
            # settle, then claim the key again and compute our own.
            self.inflight += 1
            self.once.subscribe(busy.cell, lambda ok, value: self.post(call, [], _RETRY))
            return False
        if owner:
            self.cells[task.key] = cell
            return True
        self.inflight += 1
        self.waited += 1
        self.reuse(task.key, time.perf_counter())
        return False

    def lineage(self, key: Hashable) -> Lineage:
        """Return what ``key`` is computed from, recursively (built once per key)."""
        memo = self.lineages
        tasks = self.tasks
        stack = [key]
        while stack:  # iterative post-order: chains may be deeper than the C stack
            top = stack[-1]
            missing = [d for d in tasks[top].preds if d not in memo]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            memo[top] = tuple((d, tasks[d], memo[d]) for d in tasks[top].preds)
        return memo[key]

    def handle(self, batch: list[_Message]) -> list[Hashable]:
        """Record the outcomes of some units of work; return the keys that became ready."""
        self.inflight -= len(batch)
        state = self.state
        finish = state.finish
        cells = self.cells
        busy = self.busy
        private = self.private
        holding = self.holding
        stamps = self.stamps
        started_at = self.timing.started
        finished_at = self.timing.finished
        worker_of = self.timing.worker
        emitter = self.emitter
        ready: list[Hashable] = []
        for calls, outcomes, kind in batch:
            if kind is not None and type(kind) is not str:
                self.handle_local(kind)  # type: ignore[arg-type]
                continue
            stamp = stamps.pop(id(calls), None)
            if kind == _RETRY:
                ready.append(calls[0][0])
                continue
            if kind == _WAKE:
                self.inflight += 1  # not a unit
                continue
            if self.ignored and id(calls) in self.ignored:
                del self.ignored[id(calls)]  # abandoned: already accounted for
                self.inflight += 1
                continue
            if stamp is not None and outcomes:
                worker, times = stamp
                for i in range(len(outcomes)):  # one, or a chain's: each key its times
                    key = calls[i][0]
                    started_at[key] = times[i]
                    finished_at[key] = times[i + 1]
                    worker_of[key] = worker
            if kind is not None and kind is not _JOINED:
                busy[kind] -= 1
            if self.clocks:
                self.clocks.pop(calls[0][0], None)
            if private and len(calls) == 1 and outcomes:  # the common case, kept lean
                ok, value = outcomes[0]
                key = calls[0][0]
                if emitter is not None:
                    self.event("started", key)
                if ok:
                    finish(key, value)
                    self.done += 1
                    if emitter is not None:
                        self.event("finished", key)
                    if holding:
                        self.release(key)
                else:
                    self.fail(key, value)
                self.ran += 1
                continue
            last = len(calls) - 1
            for i, (ok, value) in enumerate(outcomes):
                key = calls[i][0]
                if emitter is not None and kind != _JOINED:
                    self.event("started", key)
                if not ok and self.retry(key, value):
                    self.ran += 1
                    break
                if cells:
                    cell = cells.get(key)
                    if cell is not None:
                        self.ran += 1
                        # Settled before it leaves ``cells``: if Ctrl-C lands in between,
                        # abort() settles it again, which does nothing.
                        self.once.settle(cell, ok, value)
                        del cells[key]
                if not ok:
                    self.fail_final(key, value)
                    break
                finish(key, value)
                self.done += 1
                if emitter is not None and kind != _JOINED:
                    self.event("finished", key)
                if holding:
                    self.release(key)
                if i < last:
                    ready += state.ready()  # graphlib hands out the chain's next key first
            if self.private:
                self.ran += len(outcomes)
            elif len(outcomes) <= last and cells:
                self.release_or_run(calls, outcomes)
        ready += state.ready()
        if state.released:
            self.release_local()
        return ready

    def release_or_run(self, calls: list[Call], outcomes: list[Outcome]) -> None:
        """Handle the calls of a unit that never ran because the run stopped first.

        Their once-cells are released, so the keys are free again; a cell another caller
        has joined is run for that caller instead (a failure elsewhere in this run is no
        reason to fail it), together with the chain keys before it, which it needs.
        Keys after a failure in the chain get that failure: they cannot run.
        """
        rest = calls[len(outcomes) :]
        cells = [self.cells.pop(call[0], None) for call in rest]
        cut = 0  # rest[:cut] is still wanted: released from the end, the first refusal
        for j in range(len(rest) - 1, -1, -1):
            cell = cells[j]
            if cell is not None and not self.once.release(cell):
                cut = j + 1
                break
        if not cut:
            return
        wanted: list[Cell] = cells[:cut]  # type: ignore[assignment]  # a unit's keys are ours
        if outcomes and not outcomes[-1][0]:
            failed = task_failed(calls[len(outcomes) - 1][0], outcomes[-1][1])
            for cell in wanted:
                self.once.settle(cell, False, failed)
            return
        run = rest[:cut]
        if outcomes:  # the first one takes the value of the last call that ran
            key, fn, args, kwargs, refs, _ = run[0]
            if refs:
                prev = {calls[len(outcomes) - 1][0]: outcomes[-1][1]}
                args, kwargs = resolve_args(args, kwargs, refs, prev)
            run[0] = (key, fn, args, kwargs, (), True)
        run_for(self.once, self.pools, wanted, run)

    def fail(self, key: Hashable, exc: BaseException) -> None:
        """Record a failed attempt of ``key``: retry it if its policy says so, else fail."""
        if not self.retry(key, exc):
            self.fail_final(key, exc)

    def fail_final(self, key: Hashable, exc: BaseException) -> None:
        failed = task_failed(key, exc)
        task = self.tasks[key]
        policy = self.policy_of(task)
        if policy.retries:
            tries = self.attempts.get(key, 1)
            failed.attempts = tries
            _note(failed, f"attempt {tries}/{policy.retries + 1} on {task.kind} pool")
        self.state.fail(key, failed)
        self.done += 1
        if self.emitter is not None:
            self.event("failed", key, failed)
        self.stop_at(failed)
        if self.holding:
            self.release(key)

    def policy_of(self, task: _Task) -> Policy:
        opts = task.opts
        if opts is None:
            return self.policy
        return Policy(opts.retries, opts.retry_on, opts.backoff).under(self.policy)

    def retry(self, key: Hashable, exc: BaseException) -> bool:
        """Schedule another attempt of ``key`` after its backoff, if its policy allows.

        A worker that died or a timeout counts as a failed attempt like any exception;
        what cannot change on another try (unpicklable data) is not retried.
        """
        task = self.tasks[key]
        policy = self.policy_of(task)
        if not policy.retries or self.first is not None or self.cancelled is not None:
            return False
        if isinstance(exc, (Unpicklable, Stopped)):
            return False
        tries = self.attempts.get(key, 1)
        cause = task_failed(key, exc) if isinstance(exc, Expired) else exc
        if tries > policy.retries or not policy.retries_on(cause):
            return False
        self.attempts[key] = tries + 1
        self.retried += 1
        if self.emitter is not None:
            self.event("retried", key, exc, tries)
        due = time.monotonic() + policy.delay(tries)
        heapq.heappush(self.timers, (due, next(self.seq), key))
        self.inflight += 1  # the loop waits for it like for a unit in flight
        if self.holding:
            self.release(key)
        return True

    def stop_at(self, failed: TaskFailed) -> None:
        """Stop starting work at the first failure, when failing fast."""
        if self.fail_fast and self.first is None:
            self.first = failed
            self.stop.set()
            if self.local is not None:
                self.local.clear()

    def results(self, raising: bool = True, stopped: bool = False) -> Results:
        """Return the run's Results; raise its first failure (with them) if it failed
        fast, unless not ``raising``. ``stopped``: the run was cancelled."""
        state = self.state
        errors: dict[Hashable, TaskFailed] = dict(state.errors)  # type: ignore[arg-type]
        skipped: dict[Hashable, TaskFailed] = {}
        if errors:
            for key, chains in state.blocked_by().items():
                errors[key]._set_chains(chains)
                for chain in chains:
                    skipped[chain[0]] = errors[key]
        cut_short = stopped or self.first is not None
        early = self.finished_early() if cut_short else set()
        if self.emitter is not None:
            for key, failure in skipped.items():
                self.event("skipped", key, failure)
            if cut_short:
                for key in early:
                    if key in self.early_done:  # a shared run reported its cells already
                        task = self.tasks[key]
                        when = self.early_done[key]
                        self.events.append(TaskEvent("finished", key, task.kind, "", 1, when))
                for key in self.unfinished(skipped, early):
                    self.event("cancelled", key)
            self.flush()
        if self.progress is not None:  # the final counts, then the bar is done
            self.progress.update(self.done + len(skipped), 0, len(errors), self.retried)
            self.progress.close(ok=not errors and not stopped)
        sent, received = self.pools.process_stats()
        local = self.local
        stats = RunStats(
            wall_time=time.perf_counter() - self.started,
            tasks_run=self.ran,
            tasks_reused=len(state.reused) + self.waited,
            tasks_failed=len(errors),
            tasks_skipped=len(skipped),
            bytes_to_processes=sent - self.bytes_before[0],
            bytes_from_processes=received - self.bytes_before[1],
            values_kept=local.kept if local is not None else 0,
            values_moved=local.moved if local is not None else 0,
            bytes_moved=local.bytes_moved if local is not None else 0,
            tasks_recomputed=self.recomputed,
            tasks_retried=self.retried,
            tasks_cached=self.cache_hits,
            tasks=TaskTable(
                self.tasks, self.timing, self.queued_at, self.attempts, errors, self.cached
            ),
            workers=self.workers(),
            deps=Deps(self.tasks, state.run_keys),
            started_at=self.started,
        )
        results = Results(state.target_values(), errors, skipped, stats)
        results._tasks = self.tasks
        results._keys = (state.reused, state.run_keys)
        results._stopped = cut_short
        results._finished = early
        if self.first is not None and raising:
            self.first.results = results
            raise self.first
        return results


def _note(exc: BaseException, note: str) -> None:
    """Add ``note`` to ``exc`` (``add_note``, Python 3.11+; on 3.10 into its message)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    elif isinstance(exc, TaskFailed):
        exc.reason = f"{exc.reason} ({note})"
        exc.args = (exc._message(),)


class _Clock:
    """Wraps a timed thread task's function to note when it starts running.

    A unit abandoned past its timeout keeps its pool thread until it returns, so the
    run lends the pool another one meanwhile (``lend``); the wrapper takes it back
    when the function returns.
    """

    __slots__ = ("began", "calls", "fn", "lent", "lock", "returned", "worker")

    def __init__(self, fn: Callable[..., Any], calls: list[Call]) -> None:
        self.fn = fn
        self.calls = calls
        self.began = 0.0  # perf_counter()
        self.worker = ""
        self.lock = threading.Lock()
        self.lent: _ThreadPool | None = None
        self.returned = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.worker = threading.current_thread().name
        self.began = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.returned = True
                pool, self.lent = self.lent, None
            if pool is not None:
                pool.unlend()

    def lend(self, pool: Pool) -> None:
        """Lend ``pool`` a thread for the one this unit holds, until it returns."""
        if not isinstance(pool, _ThreadPool):
            return  # a given executor's worker is not ours to replace
        with self.lock:
            if self.returned:
                return
            self.lent = pool
        pool.lend()


class _Ready:
    """Ready keys, highest priority first; a drop-in for the run's deques.

    Within one priority, ``appendleft`` goes before every key there and ``append``
    after, as with a deque, so the depth-first order holds among equals.
    """

    __slots__ = ("back", "front", "heap", "priority")

    def __init__(self, priority: Callable[[Hashable], int]) -> None:
        self.heap: list[tuple[int, int, Hashable]] = []
        self.priority = priority
        self.front = 0
        self.back = 0

    def appendleft(self, key: Hashable) -> None:
        self.front -= 1
        heapq.heappush(self.heap, (-self.priority(key), self.front, key))

    def append(self, key: Hashable) -> None:
        self.back += 1
        heapq.heappush(self.heap, (-self.priority(key), self.back, key))

    def popleft(self) -> Hashable:
        return heapq.heappop(self.heap)[2]

    def pop(self) -> Hashable:
        """Remove and return the key that would come out last."""
        last = max(self.heap)
        self.heap.remove(last)
        heapq.heapify(self.heap)
        return last[2]

    def __getitem__(self, index: int) -> Hashable:
        if index == 0:
            return self.heap[0][2]
        if index == -1:
            return max(self.heap)[2]
        raise IndexError("a priority queue is read only at its ends")

    def clear(self) -> None:
        self.heap.clear()

    def __len__(self) -> int:
        return len(self.heap)


class _Redo:
    """A unit that recomputes ``key`` (lost with its worker), in Local's queues."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable) -> None:
        self.key = key


class _OnSlot(Mapping[Hashable, Any]):
    """A process unit's inputs as worker ``slot`` receives them (held, moved or sent).

    Only looked up by key (``resolve_args``).
    """

    def __init__(self, local: Local, values: Mapping[Hashable, Any], slot: int) -> None:
        self.local = local
        self.inputs = values
        self.slot = slot

    def __getitem__(self, key: Hashable) -> Any:
        return self.local.arg(key, self.inputs[key], self.slot)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)
