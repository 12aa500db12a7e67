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

import gc
import threading
import time
from collections import ChainMap, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, InvalidStateError
from contextlib import contextmanager
from functools import partial
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import Any, Literal, TypeVar

from ._errors import DuplicateKeyError, TaskFailed, WorkerDied
from ._graph import _NO_KWARGS, KINDS, Graph, Ref, _Task, check_task, resolve_args, unhashable
from ._locality import CannotMove, Local, UnitDone, _Fetched
from ._once import Busy, Cell, Lineage, OnceMap
from ._pools import (
    SKIPPED,
    Call,
    Outcome,
    Pickled,
    Pool,
    Pools,
    Unpicklable,
    _ProcessPool,
    current_thread_pool,
    dumps,
    run_calls,
)
from ._results import Results, RunStats
from ._state import RunState
from ._worker import FAILED, LOST, OK

__all__ = ["Runner"]

T = TypeVar("T")

_POLL = 0.1  # seconds the loop blocks at most, so Ctrl-C is handled promptly
_PUMP_ORDER = ("inline", "thread", "process")
_RETRY = "retry"  # the "kind" of a message asking to claim a key again
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
    """A Future whose waiters on a dagexec worker thread lend their pool a thread."""

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
    """

    def __init__(
        self,
        max_workers: int | Mapping[str, int] | None = None,
        executors: Mapping[str, Executor] | None = None,
    ) -> None:
        self._pools = Pools(max_workers, executors)
        self._once = OnceMap()
        self._closed = False
        # Set by Graph.run: nobody else can reach this Runner, so the sorter alone
        # guarantees exactly-once and runs skip the once-map.
        self._private = False

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
        if owner:
            self._once.subscribe(cell, done)
            calls: list[Call] = [(key, fn, args, task.kwargs, (), True)]
            worker_of = current_thread_pool()
            on_our_thread = worker_of is not None and worker_of is self._pools.peek("thread")
            if kind == "inline" or (kind == "thread" and on_our_thread):
                run_here(self._once, cell, calls)  # not queued behind ourselves
            else:
                run_for(self._once, self._pools, [cell], calls)
        return future

    def run(
        self,
        graph: Graph,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
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

        Raises:
            MissingDependencyError, CycleError: before any task starts.
            TaskFailed: with ``on_error="raise"``, the first failure.
        """
        self._check_open()
        if keep not in ("targets", "all"):
            raise ValueError(f"keep must be 'targets' or 'all', not {keep!r}")
        if on_error not in ("raise", "continue"):
            raise ValueError(f"on_error must be 'raise' or 'continue', not {on_error!r}")
        if not isinstance(graph, Graph):
            raise TypeError(f"Runner.run needs a dagexec.Graph, not {type(graph).__name__}")
        run = _Run(self, graph, _target_keys(graph, targets), keep == "all", on_error == "raise")
        pool = current_thread_pool()
        if pool is None:
            return run.execute()
        with pool.blocking():  # a nested run waits on a worker thread: lend a thread
            return run.execute()

    def clear(self) -> None:
        """Drop every value this Runner holds; later runs compute them again."""
        self._once.clear()

    def shutdown(self, wait: bool = True) -> None:
        """Shut down the pools this Runner created (never the executors it was given)."""
        self._closed = True
        self._pools.shutdown(wait=wait)

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


def take_batch(queue: SimpleQueue[T]) -> list[T]:
    """Return the messages on ``queue``: at least one, or none after ``_POLL`` seconds.

    A loop blocks here, never for long, so Ctrl-C in its thread is handled promptly.
    """
    try:
        batch = [queue.get(timeout=_POLL)]
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
    once: OnceMap, pools: Pools, cells: list[Cell], calls: list[Call], raw: bool = False
) -> None:
    """Run ``calls`` (one task or a chain) for whoever waits on ``cells``; settle each.

    ``raw``: a process task's value stays pickled (``Pickled``), for process tasks only.
    """

    def each(i: int, ok: bool, value: Any) -> None:
        once.settle(cells[i], ok, value)

    def settle(_calls: list[Call], outcomes: list[Outcome]) -> None:
        for cell, (ok, value) in zip(cells, outcomes):  # noqa: B905 (a failure ends it)
            once.settle(cell, ok, value)  # again: does nothing if ``each`` did it
        if len(outcomes) < len(cells):
            failed = task_failed(calls[len(outcomes) - 1][0], outcomes[-1][1])
            for cell in cells[len(outcomes) :]:
                once.settle(cell, False, failed)

    try:
        pool = pools.get(cells[0].task.kind)
        pool.submit(calls, settle, None, each if len(calls) > 1 else None, raw)
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
    """

    def __init__(
        self,
        runner: Runner,
        graph: Graph,
        targets: list[Hashable] | None,
        keep_all: bool,
        fail_fast: bool,
    ) -> None:
        self.started = time.perf_counter()
        self.once = runner._once
        self.pools = runner._pools
        tasks = graph._tasks
        self.private = runner._private
        held = self.once.held(tasks) if len(self.once) else {}
        with _gc_paused():
            self.state = RunState(tasks, targets, {k: c.value for k, c in held.items()}, keep_all)
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

    def execute(self) -> Results:
        """Drive the run to its end and return its Results (or raise its first failure)."""
        try:
            self.loop()
        except BaseException as exc:  # Ctrl-C, or an inline task's SystemExit
            self.abort(exc)
            raise
        finally:
            if self.local is not None:
                self.local.close()  # the workers forget this run's values
        return self.results()

    def loop(self) -> None:
        self.enqueue(self.state.ready(), first=False)
        while True:
            self.pump()
            if not self.inflight:
                break
            batch = take_batch(self.queue)
            if not batch:
                continue
            self.batch = batch  # for abort(), should handling be interrupted
            ready = self.handle(batch)
            self.batch = batch = []  # hold no values the release rule has dropped
            if self.shipped:
                values = self.state.values
                self.shipped = {k: p for k, p in self.shipped.items() if k in values}
            self.enqueue(ready)

    def abort(self, exc: BaseException) -> None:
        """Stop starting work; leave what runs to settle its once-cells by itself.

        Work queued in a pool is skipped (``stop``). A task still running finishes in the
        background: its outcome settles its once-cell straight from the pool's thread, so
        other callers waiting on it get its value, and the key is never run twice at once.
        """
        self.stop.set()
        for keys in self.waiting.values():
            keys.clear()
        if self.local is not None:
            self.local.clear()
        if self.private:
            return  # nobody else can wait on anything of this run
        with self.orphan_lock:
            self.orphaned = True
            messages, self.batch = self.batch, []  # an interrupted handle() left these
            while not self.queue.empty():
                messages.append(self.queue.get())
        for calls, outcomes, _ in messages:
            self.settle_orphans(calls, outcomes)

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
        if self.first is not None:
            return  # stopping: nothing new starts
        tasks = self.tasks
        waiting = self.waiting
        localize = self.localize
        for key in reversed(keys) if first else keys:
            task = tasks[key]
            if localize and task.kind == "process":
                self.local_units().enqueue(key, task.preds, first)
            elif first:
                waiting[task.kind].appendleft(key)
            else:
                waiting[task.kind].append(key)

    def pump(self) -> None:
        """Hand waiting keys to their pools up to capacity; run inline ones right here."""
        for kind, keys in self.waiting.items():
            if not keys:
                continue
            if kind == "inline":
                while keys and self.first is None:
                    msg = self.start(keys.popleft(), None)
                    if msg is not None:
                        self.batch = [msg]  # for abort(), should handling be interrupted
                        del msg
                        ready = self.handle(self.batch)
                        self.batch = []  # hold no values the release rule has dropped
                        self.enqueue(ready)
                continue
            pool = self.pools.get(kind)
            capacity = pool.capacity  # it may change while we hand out work
            free = capacity - self.busy[kind]
            while keys and free > 0 and self.first is None:
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
        if not (self.private or self.claim(task)):
            return None
        state = self.state
        if task.refs:
            if task.kind == "process":
                args, kwargs = resolve_args(task.args, task.kwargs, task.refs, _Shipping(self))
            else:
                args, kwargs = state.args(task)
            calls: list[Call] = [(key, task.fn, args, kwargs, (), True)]
        else:
            calls = [(key, task.fn, task.args, task.kwargs, (), True)]
        each = None
        if key in state._next_in_chain:
            chain = state.chain(key)
            if len(chain) > 1 and not self.private:
                chain = self.claim_followers(chain)
                if len(chain) > 1:
                    # Each key of the chain is settled the moment it is computed, so a
                    # caller that joined one never waits for the rest of the chain.
                    each = partial(self.settle_each, [self.cells[k] for k in chain])
            if len(chain) > 1:
                self.add_chain(calls, chain)
        try:
            if pool is None:  # inline
                # Only Exceptions are task failures here: Ctrl-C in the caller's thread
                # stops the run, as it would stop the same code called directly.
                outcomes = run_calls(calls, None, Exception)
            else:
                raw = task.kind == "process" and self.raw(key)
                pool.submit(calls, self.sinks[task.kind], self.stop.is_set, each, raw)
        except BaseException as exc:
            # No message will ever carry these calls: settle their cells here.
            for call in calls:
                cell = self.cells.pop(call[0], None)
                if cell is not None:
                    self.once.settle(cell, False, exc)
            raise
        self.inflight += 1
        return pool if pool is not None else (calls, outcomes, None)

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
                (self.read_there if task.kind == "process" else self.read_here).update(task.preds)
        return self.read_here

    # -- process units that run where their inputs are (see _locality) ----------------

    def local_units(self) -> Local:
        """Return the run's Local, created with its first process unit."""
        if self.local is None:
            pool = self.pools.get("process")
            assert isinstance(pool, _ProcessPool)
            self.local = Local(pool, self.post_local, self.stop.is_set)
            self.state.released = []
        return self.local

    def post_local(self, message: UnitDone | _Fetched) -> None:
        self.queue.put(([], [], message))  # type: ignore[arg-type]

    def inputs_of(self, unit: Hashable) -> tuple[Hashable, ...]:
        key = unit.key if type(unit) is _Redo else unit
        return self.tasks[key].preds

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
        lost = [d for d in task.preds if not self.has_value(d)]
        if lost:
            if redo:
                self.restore_inputs(key, lost)
            else:
                self.park(key, lost)
            return
        try:
            if local.fetch_for(unit, task.preds, slot):
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
        local.run(slot, [(key, fn, args, kwargs, (), True)], keep, send, _REDO if redo else None)
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
            local.enqueue(_Redo(key) if redo else key, self.tasks[key].preds, True)
            return
        if done.status is None and done.value is SKIPPED:
            return  # the run stopped before it started
        local.ran(done, key, again=redo)
        if done.status == OK:
            remote = done.remote
            value = remote if remote is not None and remote.data is None else done.value
            if redo:
                self.restored_value(key, value)
            else:
                self.ran += 1
                self.state.finish(key, value)
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

    def redo_sink(self, calls: list[Call], outcomes: list[Outcome]) -> None:
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

    def settle_each(self, cells: list[Cell], i: int, ok: bool, value: Any) -> None:
        """Settle one key of a chain on the worker that just computed it."""
        self.once.settle(cells[i], ok, value)

    def add_chain(self, calls: list[Call], chain: list[Hashable]) -> None:
        """Append the chain's followers to ``calls``, keeping only the values needed."""
        keep = self.state.keep_all
        targets = self.state.targets
        key, fn, args, kwargs, refs, _ = calls[0]
        calls[0] = (key, fn, args, kwargs, refs, keep or key in targets)
        for nxt in chain[1:]:
            t = self.tasks[nxt]
            calls.append((nxt, t.fn, t.args, t.kwargs, t.refs, keep or nxt in targets))
        key, fn, args, kwargs, refs, _ = calls[-1]
        calls[-1] = (key, fn, args, kwargs, refs, True)  # its dependents are elsewhere

    def pooled_sink(self, kind: str, calls: list[Call], outcomes: list[Outcome]) -> None:
        """Report outcomes from a pool (called on the pool's thread)."""
        if self.fail_fast and outcomes and not outcomes[-1][0]:
            self.stop.set()  # chains running elsewhere stop before their next task
        if self.private:  # nobody else waits on a private run's keys: no orphans
            self.queue.put((calls, outcomes, kind))
        else:
            self.post(calls, outcomes, kind)

    def sink(self, calls: list[Call], outcomes: list[Outcome]) -> None:
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
            self.sink(call, [(ok, value)])

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
        ready: list[Hashable] = []
        for calls, outcomes, kind in batch:
            if kind is not None and type(kind) is not str:
                self.handle_local(kind)  # type: ignore[arg-type]
                continue
            if kind == _RETRY:
                ready.append(calls[0][0])
                continue
            if kind is not None:
                busy[kind] -= 1
            if private and len(calls) == 1 and outcomes:  # the common case, kept lean
                ok, value = outcomes[0]
                if ok:
                    finish(calls[0][0], value)
                else:
                    self.fail(calls[0][0], value)
                self.ran += 1
                continue
            last = len(calls) - 1
            for i, (ok, value) in enumerate(outcomes):
                key = calls[i][0]
                if cells:
                    cell = cells.get(key)
                    if cell is not None:
                        self.ran += 1
                        # Settled before it leaves ``cells``: if Ctrl-C lands in between,
                        # abort() settles it again, which does nothing.
                        self.once.settle(cell, ok, value)
                        del cells[key]
                if not ok:
                    self.fail(key, value)
                    break
                finish(key, value)
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
        failed = task_failed(key, exc)
        self.state.fail(key, failed)
        self.stop_at(failed)

    def stop_at(self, failed: TaskFailed) -> None:
        """Stop starting work at the first failure, when failing fast."""
        if self.fail_fast and self.first is None:
            self.first = failed
            self.stop.set()
            if self.local is not None:
                self.local.clear()

    def results(self) -> Results:
        state = self.state
        errors: dict[Hashable, TaskFailed] = dict(state.errors)  # type: ignore[arg-type]
        skipped: dict[Hashable, TaskFailed] = {}
        if errors:
            for key, chains in state.blocked_by().items():
                errors[key]._set_chains(chains)
                for chain in chains:
                    skipped[chain[0]] = errors[key]
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
        )
        results = Results(state.target_values(), errors, skipped, stats)
        if self.first is not None:
            self.first.results = results
            raise self.first
        return results


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
