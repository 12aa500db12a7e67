"""map_shared and imap_shared: ``fn(item, shared(key(item)))`` for every item.

Each shared value is computed once per distinct key, every item that needs it starts as
soon as it exists (no stage barrier), and it is dropped once its last item is done.

::

    items ──admit (window)──▶ shared value known? ──yes──▶ ready ──▶ item pool ───────┐
                                     │ no                                             │
                                     ▼                                                │
                             wanted keys ──▶ once-map claim ──▶ shared pool ──────────┤
                                                                                      ▼
    (index, result) ◀─── the loop (owns every field below) ◀─── one SimpleQueue ◀────┘

The loop is a generator run by the caller's thread; pools and once-cells only put
messages on its queue. Items whose shared value exists are handed out before new shared
calls start (depth-first), so memory follows the keys in use, not the number of keys.

State fields:
    values    key -> its shared value, while an admitted item (or the next one) needs it
    failed    key -> the exception its shared call raised, kept under the same rule
    waiting   key -> items (index, item) admitted while its shared value is computed
    need      key -> items admitted and not finished
    ready     items (index, item, key) whose shared value exists, not handed out yet
    wanted    keys whose shared call waits for room in its pool
    owned     keys whose shared call this map runs (it takes room in the pool)
    busy      kind -> units handed to that pool and not reported yet
    inflight  units whose message has not arrived (items, shared calls, retries)
    next_key  the key of the item read ahead from the iterator, not admitted yet
    local     with process items on the map's own pool: placement and values kept in
              workers (see ``_locality``); ``units`` holds its items by index

With ``local``, a process shared value stays in the worker that computed it and its
items run there (or where it was moved to); a value lost with its worker is computed
again (``recomputed``), its items waiting for it as for a new key.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sized
from concurrent.futures import Executor
from contextlib import nullcontext
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

import cloudpickle

from ._errors import TaskFailed
from ._graph import _NO_KWARGS, KINDS, _Task
from ._locality import CannotMove, Local, UnitDone, _Fetched
from ._once import Busy, OnceMap
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
from ._progress import Progress, check_progress
from ._results import Results, RunStats
from ._runner import Runner, run_for, run_here, take_batch, task_failed
from ._worker import LOST, OK

__all__ = ["imap_shared", "map_shared"]

R = TypeVar("R")

_ITEM, _SHARED, _RETRY, _LOCAL = 0, 1, 2, 3
_NOTHING = object()  # no item read ahead

#: (index, item, key, the item's failure before it could start or None)
_Entry = tuple[int, Any, Hashable, "TaskFailed | None"]
#: (index, ok, result or TaskFailed)
_Done = tuple[int, bool, Any]


def map_shared(
    fn: Callable[[Any, Any], R],
    items: Iterable[Any],
    *,
    shared: Callable[[Any], Any],
    key: Callable[[Any], Hashable] | None = None,
    kind: str = "thread",
    shared_kind: str | None = None,
    max_workers: int | Mapping[str, int] | None = None,
    executors: Mapping[str, Executor] | None = None,
    return_exceptions: bool = False,
    runner: Runner | None = None,
    progress: bool | str = False,
) -> list[R]:
    """Return ``[fn(item, shared(key(item))) for item in items]``, computed in parallel.

    ``shared(k)`` runs exactly once per distinct key ``k``; each item starts as soon as
    its own shared value exists, and a shared value is dropped as soon as the last item
    that needs it has finished. This replaces "compute every shared value, then map the
    items over them" without its barrier or its memory.

    Args:
        fn: called as ``fn(item, shared_value)``.
        items: the items; every ``key(item)`` is computed before any work starts.
        shared: called as ``shared(k)`` once per distinct key.
        key: which shared value an item needs; default: the item itself.
        kind: where ``fn`` runs: ``"thread"``, ``"process"`` or ``"inline"``.
        shared_kind: where ``shared`` runs; default: the same as ``kind``.
        max_workers: pool sizes, as for ``Runner`` (not with ``runner``).
        executors: ``concurrent.futures`` executors per kind, as for ``Runner``.
        return_exceptions: put each failure's ``TaskFailed`` in the result list and run
            every other item, instead of raising the first failure.
        runner: run on this Runner: shared values it holds are reused, keys other
            callers are computing are joined, and the shared values computed here are
            held by it for later calls (``runner.clear()`` drops them).
        progress: ``True`` shows a live bar of the items on stderr when it is a
            terminal; ``"always"`` shows it anyway.

    Returns:
        The results in input order.

    Raises:
        TaskFailed: the first failure (unless ``return_exceptions``), after the items
            already running have finished; its ``key`` is ``(index, key)`` (``(index,
            None)`` when ``key(item)`` itself failed), and its
            ``results`` maps the index of every item that completed to its result. A
            failing ``shared(k)`` fails every item of ``k``; a failing ``key(item)``
            fails its item before any work starts.
    """
    spec = _Spec(fn, shared, key, kind, shared_kind, return_exceptions)
    _check_runner(runner, max_workers, executors)
    show = check_progress(progress)
    entries = [spec.entry(i, item) for i, item in enumerate(items)]
    if not return_exceptions:
        for entry in entries:
            if entry[3] is not None:
                raise entry[3]  # before any work starts
    started = time.perf_counter()
    loop, own = _start(spec, runner, max_workers, executors)
    out: list[Any] = [None] * len(entries)
    done: dict[Hashable, Any] = {}
    errors: dict[Hashable, TaskFailed] = {}
    stream = _stream(loop, iter(entries), len(entries) or 1, own)
    if show:
        stream = _shown(stream, loop, Progress(len(entries), show, unit="items"))
    try:
        for i, ok, value in stream:
            out[i] = value
            if ok:
                done[i] = value
            else:
                errors[i] = value
    except TaskFailed as first:
        # Nothing computed is lost: the failure carries every result that completed.
        skipped = {i: first for i in range(len(out)) if i not in done and i not in errors}
        stats = RunStats(
            wall_time=time.perf_counter() - started,
            tasks_run=loop.ran,
            tasks_reused=loop.reused,
            tasks_failed=len(errors),
            tasks_skipped=len(skipped),
        )
        first.results = Results(done, errors, skipped, stats)  # type: ignore[arg-type]
        raise
    return out


def imap_shared(
    fn: Callable[[Any, Any], R],
    items: Iterable[Any],
    *,
    shared: Callable[[Any], Any],
    key: Callable[[Any], Hashable] | None = None,
    kind: str = "thread",
    shared_kind: str | None = None,
    window: int | None = None,
    max_workers: int | Mapping[str, int] | None = None,
    executors: Mapping[str, Executor] | None = None,
    return_exceptions: bool = False,
    runner: Runner | None = None,
    progress: bool | str = False,
) -> Iterator[tuple[int, R]]:
    """Yield ``(index, fn(item, shared(key(item))))`` for every item, as items complete.

    Like ``map_shared``, for any iterable, also an endless one: at most ``window`` items
    are in flight (read and not yielded, plus one read ahead), so memory stays bounded. A shared value is
    kept while an item in flight, or the next item read, needs it; a key that comes
    back after its value was dropped is computed again, so group items by key (as
    ``itertools.product`` does) or pass a ``runner``, which holds every shared value.

    Args:
        window: items in flight at most; default 64, or 8 per CPU if that is more.
        fn, items, shared, key, kind, shared_kind, max_workers, executors,
            return_exceptions, runner, progress: as for ``map_shared``; with
            ``return_exceptions`` a failure is yielded as its ``TaskFailed``. The
            progress bar's total is ``len(items)`` when items have one, else it grows
            as items are read.

    Raises:
        TaskFailed: the first failure (unless ``return_exceptions``), once the items
            already running have finished and been yielded.
    """
    spec = _Spec(fn, shared, key, kind, shared_kind, return_exceptions)
    if window is None:
        window = max(64, 8 * (os.cpu_count() or 1))
    elif not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1, not {window!r}")
    _check_runner(runner, max_workers, executors)
    show = check_progress(progress)
    entries: Iterator[_Entry] = (spec.entry(i, item) for i, item in enumerate(items))
    loop, own = _start(spec, runner, max_workers, executors)
    bar = None
    if show:
        sized = isinstance(items, Sized)
        bar = Progress(len(items) if isinstance(items, Sized) else 0, show, unit="items")
        if not sized:
            entries = _counted(entries, bar)
    stream = _stream(loop, entries, window, own)
    if bar is not None:
        stream = _shown(stream, loop, bar)
    if spec.fail_fast:  # failures raise, the first one at the end
        return ((i, value) for i, ok, value in stream if ok)
    return ((i, value) for i, _, value in stream)


class _Spec:
    """What to call and where: validated before any work starts."""

    def __init__(
        self,
        fn: Callable[[Any, Any], Any],
        shared: Callable[[Any], Any],
        key: Callable[[Any], Hashable] | None,
        kind: str,
        shared_kind: str | None,
        return_exceptions: bool,
    ) -> None:
        shared_kind = kind if shared_kind is None else shared_kind
        for name, f in (("fn", fn), ("shared", shared), ("key", key)):
            if not (callable(f) or (name == "key" and f is None)):
                raise TypeError(f"map_shared: {name}={f!r} is not callable; pass a function")
        for name, k in (("kind", kind), ("shared_kind", shared_kind)):
            if k not in KINDS:
                raise TypeError(f"map_shared: unknown {name} {k!r}; choose one of {sorted(KINDS)}")
        for name, f, k in (("fn", fn, kind), ("shared", shared, shared_kind)):
            if k == "process":
                _check_picklable(name, f)
            if k != "async" and inspect.iscoroutinefunction(f):
                raise TypeError(
                    f"map_shared: {name} is a coroutine function; pass "
                    f"{'kind' if name == 'fn' else 'shared_kind'}='async'"
                )
        self.fn = fn
        self.shared = shared
        self.key = key
        self.kind = kind
        self.shared_kind = shared_kind
        self.fail_fast = not return_exceptions

    def entry(self, i: int, item: Any) -> _Entry:
        """Return the item with its key, or with the failure of computing that key."""
        if self.key is None:
            k = item
        else:
            try:
                k = self.key(item)
            except Exception as exc:
                failed = TaskFailed(
                    (i, None), f"could not run: key(item) raised {type(exc).__name__}"
                )
                failed.__cause__ = exc
                return i, item, None, failed
        try:
            hash(k)
        except TypeError as exc:
            what = "key(item)" if self.key is not None else "the item (the default key)"
            failed = TaskFailed(
                (i, None),
                f"could not run: {what} is {type(k).__name__}, which is not hashable; "
                "pass key= returning a str, an int or a tuple",
            )
            failed.__cause__ = exc
            return i, item, None, failed
        return i, item, k, None


def _check_picklable(name: str, f: Callable[..., Any]) -> None:
    try:
        cloudpickle.dumps(f)
    except Exception as exc:
        raise TypeError(
            f"map_shared: {name}={f!r} cannot be pickled for a process worker "
            f"({type(exc).__name__}: {exc}); use kind='thread' or a picklable function"
        ) from exc


def _check_runner(runner: Runner | None, max_workers: object, executors: object) -> None:
    if runner is None:
        return
    if not isinstance(runner, Runner):
        raise TypeError(f"map_shared: runner must be a dagexec.Runner, not {type(runner).__name__}")
    if max_workers is not None or executors is not None:
        raise TypeError(
            "map_shared: pass max_workers and executors to the Runner, not with runner="
        )
    runner._check_open()


def _start(
    spec: _Spec,
    runner: Runner | None,
    max_workers: int | Mapping[str, int] | None,
    executors: Mapping[str, Executor] | None,
) -> tuple[_Loop, Runner | None]:
    """Return a loop on ``runner``, or on a Runner of its own (returned, to shut down).

    The given Runner holds the shared values computed for later calls; our own does
    not, so each is dropped after its last item. No pool starts before the first item.
    """
    if runner is not None:
        return _Loop(spec, runner._once, runner._pools, hold=True), None
    own = Runner(max_workers, executors)
    return _Loop(spec, own._once, own._pools, hold=False), own


def _stream(
    loop: _Loop, entries: Iterator[_Entry], window: int, own: Runner | None
) -> Iterator[_Done]:
    """Run ``loop``, shut down ``own`` at the end, then raise the first failure."""
    worker_of = current_thread_pool()
    try:
        # A map waiting on a dagexec worker thread lends its pool a thread.
        with worker_of.blocking() if worker_of is not None else nullcontext():
            yield from loop.run(entries, window)
    except BaseException:  # Ctrl-C, or the consumer closed an imap early
        _halt(loop, own)
        raise
    finally:
        loop.stop.set()  # queued work is skipped, whatever ended the loop
        if loop.local is not None:
            loop.local.close()  # the workers forget the map's values
        if own is not None:
            own.shutdown(wait=True)
    if loop.first is not None:
        raise loop.first


def _shown(stream: Iterator[_Done], loop: _Loop, bar: Progress) -> Iterator[_Done]:
    """Pass ``stream`` through, drawing ``bar`` (at most every 0.1 s) as items complete."""
    done = failed = 0
    next_draw = 0.0
    ok_end = False
    try:
        for i, ok, value in stream:
            done += 1
            failed += not ok
            now = time.perf_counter()
            if now >= next_draw:
                next_draw = now + 0.1
                bar.update(done, sum(loop.busy.values()), failed, 0)
            yield i, ok, value
        ok_end = True
    finally:
        bar.update(done, 0, failed, 0)
        bar.close(ok_end)


def _counted(entries: Iterator[_Entry], bar: Progress) -> Iterator[_Entry]:
    """Grow the bar's total as an unsized iterable of items is read."""
    for entry in entries:
        bar.add_total(1)
        yield entry


def _halt(loop: _Loop, own: Runner | None) -> None:
    """Terminate the process workers running the map's units.

    Items and kept-value units carry the map's ``stop``; shared calls on our own
    Runner carry none (on a given Runner, another caller may have joined them).
    """
    loop.stop.set()
    pool = loop.pools.peek("process")
    if isinstance(pool, _ProcessPool):
        pool.kill(loop.stop.is_set)
        if own is not None:
            pool.kill(None)


class _Loop:
    """The scheduler loop of one map; see the module docstring for its fields."""

    def __init__(self, spec: _Spec, once: OnceMap, pools: Pools, hold: bool) -> None:
        self.spec = spec
        self.once = once
        self.pools = pools
        self.hold = hold
        # Process items get each shared value as bytes pickled once, not once per item;
        # a value computed in a process stays as the bytes its worker pickled when nobody
        # else could want the value itself (no Runner of the user's to hold it).
        self.ship = spec.kind == "process"
        self.dump_remotely = self.ship and spec.shared_kind == "process" and not hold
        self.queue: SimpleQueue[tuple[int, Any, Any, Any]] = SimpleQueue()
        self.stop = threading.Event()
        self.values: dict[Hashable, Any] = {}
        self.failed: dict[Hashable, BaseException] = {}
        self.waiting: dict[Hashable, list[tuple[int, Any]]] = {}
        self.need: dict[Hashable, int] = {}
        self.ready: deque[tuple[int, Any, Hashable]] = deque()
        self.wanted: deque[Hashable] = deque()
        self.owned: set[Hashable] = set()
        self.busy = {"thread": 0, "process": 0, "async": 0}
        self.inflight = 0
        self.open = 0  # items admitted and not finished
        self.next_key: object = _NOTHING
        self.first: TaskFailed | None = None
        self.ran = 0  # calls of fn and shared made for this map
        self.reused = 0  # shared values held by the Runner or computed by another caller
        self.sinks = {
            kind: partial(self.item_sink, kind) for kind in ("thread", "process", "async")
        }
        self.local: Local | None = None
        if self.ship and not hold and pools.owns("process"):
            pool = pools.get("process")
            assert isinstance(pool, _ProcessPool)
            self.local = Local(pool, self.post_local, self.stop.is_set)
        self.units: dict[Hashable, tuple[Any, Hashable]] = {}
        self.recomputed = 0

    def run(self, entries: Iterator[_Entry], window: int) -> Iterator[_Done]:
        ahead = next(entries, None)
        while True:
            while ahead is not None and self.open < window and self.first is None:
                entry, ahead = ahead, next(entries, None)
                self.next_key = _NOTHING if ahead is None or ahead[3] else ahead[2]
                yield from self.admit(entry)
            self.pump()
            if not self.inflight:
                if ahead is None or self.first is not None:
                    return
                continue
            # Results wait until the pools have their next work: the consumer may take
            # its time with each one. In a frame of its own, so that no message or
            # result outlives its handling (the release rule drops values).
            yield from self.handle_all(take_batch(self.queue))

    def admit(self, entry: _Entry) -> Iterator[_Done]:
        i, item, k, failure = entry
        if failure is not None:
            yield self.fail(i, failure)
            return
        self.open += 1
        self.need[k] = self.need.get(k, 0) + 1
        if k in self.values:
            self.ready.append((i, item, k))
        elif k in self.failed:
            yield self.item_done(i, k, self.shared_failure(i, k, self.failed[k]))
        elif k in self.waiting:
            self.waiting[k].append((i, item))
        else:
            self.waiting[k] = [(i, item)]
            self.wanted.append(k)

    def pump(self) -> None:
        """Hand out ready items first, then start shared calls while their pool has room."""
        if self.first is not None:
            return
        if self.local is not None:
            self.pump_local()
            return
        spec = self.spec
        ready = self.ready
        while ready and self.has_room(spec.kind):
            if spec.kind == "inline" and not self.queue.empty():
                return  # handle that outcome first: it may be the first failure
            self.start_item(*ready.popleft())
        # New shared values only while few items wait for a worker: values are made no
        # faster than items consume them, so memory follows the keys in use.
        while self.wanted and len(ready) < self.room(spec.kind):
            if not self.has_room(spec.shared_kind):
                return
            if spec.shared_kind == "inline" and not self.queue.empty():
                return  # hand out the items of the value just computed before the next
            self.start_shared(self.wanted.popleft())

    def pump_local(self) -> None:
        """Hand items to the workers holding their values; new shared calls after them."""
        local = self.local
        assert local is not None
        for i, item, k in self.ready:
            self.units[i] = (item, k)
            local.enqueue(i, (k,), False)
        self.ready.clear()
        spec = self.spec
        capacity = local.pool.capacity
        while self.wanted and local.waiting() < capacity:
            if spec.shared_kind == "process":
                k = self.wanted.popleft()
                self.owned.add(k)
                local.enqueue(_Shared(k), (), False)
            elif self.has_room(spec.shared_kind):
                if spec.shared_kind == "inline" and not self.queue.empty():
                    break
                self.start_shared(self.wanted.popleft())
            else:
                break
        local.pump(self.start_local, self.inputs_of)
        self.inflight += local.issued
        local.issued = 0

    def inputs_of(self, unit: Hashable) -> tuple[Hashable, ...]:
        return () if type(unit) is _Shared else (self.units[unit][1],)

    def start_local(self, unit: Hashable, slot: int) -> None:
        """Start an item (or a process shared call) on worker ``slot``."""
        local = self.local
        assert local is not None
        spec = self.spec
        if type(unit) is _Shared:
            k = unit.key
            shared = local.function(spec.shared, slot)
            calls: list[Call] = [(k, shared, (k,), _NO_KWARGS, (), True)]
            local.run(slot, calls, True, False, _SHARED)
            self.inflight += 1
            return
        item, k = self.units[unit]
        if k not in self.values or local.lost(
            k
        ):  # its worker died with it: compute it again, the item waits
            del self.units[unit]
            self.values.pop(k, None)
            local.remotes.pop(k, None)
            if k not in self.waiting:
                self.waiting[k] = []
                self.wanted.appendleft(k)
                self.recomputed += 1
            self.waiting[k].append((unit, item))  # type: ignore[arg-type]
            return
        try:
            if local.fetch_for(unit, (k,), slot):
                return
        except CannotMove as exc:  # not expected: a single input is read where it is
            del self.units[unit]
            self.inflight += 1
            self.queue.put((_ITEM, (unit, k), [(False, exc.failure((unit, k)))], None))
            return
        del self.units[unit]
        value = local.arg(k, self.values[k], slot)
        fn = local.function(spec.fn, slot)
        calls = [((unit, k), fn, (item, value), _NO_KWARGS, (), True)]
        local.run(slot, calls, False, True, _ITEM)
        self.inflight += 1

    def post_local(self, message: UnitDone | _Fetched) -> None:
        self.queue.put((_LOCAL, None, message, None))

    def handle_local(self, message: UnitDone | _Fetched) -> Iterator[_Done]:
        local = self.local
        assert local is not None
        if type(message) is _Fetched:
            local.fetched(message, self.inputs_of)
            return
        done: UnitDone = message  # type: ignore[assignment]
        if done.tag == _SHARED:
            yield from self.shared_unit_done(done)
            return
        ident: tuple[int, Hashable] = done.calls[0][0]  # type: ignore[assignment]
        i, k = ident
        if done.status == LOST:  # the value was not in its worker: place the item again
            local.lose(done.value, done.slot)
            self.units[i] = (done.calls[0][2][0], k)
            local.enqueue(i, (k,), True)
            return
        local.ran(done, None)
        if done.status is None:
            outcomes: list[Outcome] = [] if done.value is SKIPPED else [(False, done.value)]
        else:
            outcomes = [(done.status == OK, done.value)]
        yield from self.handle_item((i, k), outcomes, None)

    def shared_unit_done(self, done: UnitDone) -> Iterator[_Done]:
        local = self.local
        assert local is not None
        k = done.calls[0][0]
        if done.status == LOST:  # its function was not in that worker: place it again
            local.lose(done.value, done.slot)
            local.enqueue(_Shared(k), (), True)
            return
        self.owned.discard(k)
        if done.status is None and done.value is SKIPPED:
            self.waiting.pop(k, None)
            return
        local.ran(done, k)
        self.ran += 1
        ok = done.status == OK
        yield from self.handle_shared(k, ok, done.remote if ok else done.value)

    def has_room(self, kind: str) -> bool:
        return kind == "inline" or self.busy[kind] < self.pools.get(kind).capacity

    def room(self, kind: str) -> int:
        """Items a pool of ``kind`` takes at once (1 for inline: one at a time)."""
        return 1 if kind == "inline" else self.pools.get(kind).capacity

    def start_item(self, i: int, item: Any, k: Hashable) -> None:
        kind = self.spec.kind
        calls: list[Call] = [((i, k), self.spec.fn, (item, self.values[k]), _NO_KWARGS, (), True)]
        self.inflight += 1
        if kind == "inline":
            # Only Exceptions are failures here: Ctrl-C in the caller's thread is theirs.
            self.item_sink(None, calls, run_calls(calls, None, Exception))
            return
        pool: Pool = self.pools.get(kind)
        self.busy[kind] += 1
        pool.submit(calls, self.sinks[kind], self.stop.is_set)

    def item_sink(
        self, kind: str | None, calls: list[Call], outcomes: list[Outcome], _stamp: Any = None
    ) -> None:
        self.queue.put((_ITEM, calls[0][0], outcomes, kind))

    def start_shared(self, k: Hashable) -> None:
        """Claim ``k``'s once-cell: reuse its value, join its computation, or run it."""
        kind = self.spec.shared_kind
        task = _Task(k, self.spec.shared, (k,), _NO_KWARGS, kind, (), (), ())
        done = partial(self.shared_done, k)
        self.inflight += 1
        try:
            cell, owner = self.once.claim(task, self.hold, done)
        except Busy as busy:  # another caller computes ``k`` from another function
            self.once.subscribe(
                busy.cell, lambda ok, value: self.queue.put((_RETRY, k, None, None))
            )
            return
        if not owner:
            self.reused += 1
            return  # held or in flight elsewhere: ``done`` hears of it
        self.once.subscribe(cell, done)
        self.owned.add(k)
        calls: list[Call] = [(k, task.fn, task.args, task.kwargs, (), True)]
        if kind == "inline":
            run_here(self.once, cell, calls)
            return
        self.busy[kind] += 1
        try:
            run_for(self.once, self.pools, [cell], calls, raw=self.dump_remotely)
        except BaseException as exc:  # Ctrl-C: whoever joined the cell must not hang
            self.once.settle(cell, False, exc)
            raise

    def shared_done(self, k: Hashable, ok: bool, value: Any) -> None:
        self.queue.put((_SHARED, k, ok, value))

    def handle_all(self, batch: list[tuple[int, Any, Any, Any]]) -> Iterator[_Done]:
        done = [d for message in batch for d in self.handle(*message)]
        del batch
        self.pump()
        yield from done

    def handle(self, tag: int, ident: Any, a: Any, b: Any) -> Iterator[_Done]:
        self.inflight -= 1
        if tag == _ITEM:
            yield from self.handle_item(ident, a, b)
        elif tag == _SHARED:
            yield from self.handle_shared(ident, a, b)
        elif tag == _LOCAL:
            yield from self.handle_local(a)
        elif self.first is None:  # _RETRY: the other computation of the key is done
            self.wanted.appendleft(ident)

    def handle_item(
        self, ident: tuple[int, Hashable], outcomes: list[Outcome], kind: str | None
    ) -> Iterator[_Done]:
        if kind is not None:
            self.busy[kind] -= 1
        i, k = ident
        if not outcomes:  # the map stopped before it started
            self.finish(k)
            return
        ok, value = outcomes[0]
        self.ran += 1
        yield self.item_done(i, k, value if ok else task_failed(ident, value), ok)

    def handle_shared(self, k: Hashable, ok: bool, value: Any) -> Iterator[_Done]:
        if k in self.owned:
            self.owned.discard(k)
            self.ran += 1
            if self.spec.shared_kind != "inline":
                self.busy[self.spec.shared_kind] -= 1
        waiting = self.waiting.pop(k, [])
        if ok and self.ship and self.local is None:
            ok, value = self.pickled(k, value)
        if ok:
            self.values[k] = value
            if self.first is None:
                self.ready.extend((i, item, k) for i, item in waiting)
            else:
                for _ in waiting:
                    self.finish(k)
            return
        self.failed[k] = value
        for i, _ in waiting:
            yield self.item_done(i, k, self.shared_failure(i, k, value))

    def pickled(self, k: Hashable, value: Any) -> tuple[bool, Any]:
        """Return ``k``'s value pickled once for the process items, or why it cannot be."""
        if self.dump_remotely:
            return True, value  # a Pickled: pickled by the worker that computed it
        try:
            return True, Pickled(dumps(value))
        except Exception as exc:
            what = "returned a value that cannot be pickled for its process items"
            return False, Unpicklable(k, what, f"{type(exc).__name__}: {exc}", exc)

    def shared_failure(self, i: int, k: Hashable, exc: BaseException) -> TaskFailed:
        inner = task_failed(k, exc)
        failed = TaskFailed((i, k), f"could not run: shared({k!r}) {inner.reason}")
        failed.__cause__ = inner.__cause__
        return failed

    def item_done(self, i: int, k: Hashable, value: Any, ok: bool = False) -> _Done:
        self.finish(k)
        return (i, True, value) if ok else self.fail(i, value)

    def fail(self, i: int, failed: TaskFailed) -> _Done:
        if self.spec.fail_fast and self.first is None:
            self.first = failed
            self.stop.set()
            for _, _, k in self.ready:
                self.finish(k)
            self.ready.clear()
            if self.local is not None:
                for unit in list(self.units):
                    self.finish(self.units.pop(unit)[1])
                self.local.clear()
            self.wanted.clear()  # their items stay in ``waiting``; never started
        return i, False, failed

    def finish(self, k: Hashable) -> None:
        """An item of ``k`` is done: drop ``k``'s value if nothing else needs it."""
        self.open -= 1
        left = self.need[k] - 1
        if left or k == self.next_key:
            self.need[k] = left
            return
        del self.need[k]
        self.values.pop(k, None)
        self.failed.pop(k, None)
        if self.local is not None:
            self.local.release(k)


class _Shared:
    """A process shared call waiting for a worker, in Local's queues."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable) -> None:
        self.key = key
