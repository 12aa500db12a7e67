"""_AsyncPool: units as asyncio tasks on one loop (ours or the caller's), cancel, shutdown.

Coroutines are held on asyncio.Events and released by a unit submitted to the same pool
(it runs on the loop thread), never by sleeps. Timeouts on waits only bound a failure.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from dagexec._aio import _AsyncPool
from dagexec._pools import Call, Expired, Outcome, Stopped

WAIT = 30.0  # seconds: bounds a wait that must succeed, so a bug fails instead of hanging


class Sunk:
    """A sink that collects ``(calls, outcomes)`` in a SimpleQueue."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[list[Call], list[Outcome]]] = queue.SimpleQueue()

    def __call__(self, calls: list[Call], outcomes: list[Outcome], stamp: object = None) -> None:
        self.queue.put((calls, outcomes))

    def take(self, n: int = 1) -> dict[Any, list[Outcome]]:
        """Wait for ``n`` sink calls; return their outcomes by key."""
        got = [self.queue.get(timeout=WAIT) for _ in range(n)]
        return {calls[0][0]: outcomes for calls, outcomes in got}

    def one(self) -> list[Outcome]:
        """Wait for one sink call and return its outcomes."""
        (outcomes,) = self.take().values()
        return outcomes


def call(key: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Call]:
    return [(key, fn, args, kwargs, (), True)]


class Flag:
    """A stop signal; ``flag.stop`` is a fresh bound method each time, equal each time."""

    def __init__(self, value: bool = False) -> None:
        self.value = value

    def stop(self) -> bool:
        return self.value


class Started:
    """Counts coroutines that have started; ``all`` is set when ``n`` have."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.all = threading.Event()

    def arrive(self) -> None:
        self.count += 1  # on the loop thread only
        if self.count == self.n:
            self.all.set()


async def held(started: Started, gate: asyncio.Event, value: Any = None) -> Any:
    started.arrive()
    await gate.wait()
    return value


def async_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dagexec-async"]


@pytest.fixture
def pool() -> Iterator[_AsyncPool]:
    p = _AsyncPool(8)
    try:
        yield p
    finally:
        p.shutdown(wait=False)  # a failed test may leave a unit held: cancel it


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A caller's loop, running in a test thread that is joined afterwards."""
    lp = asyncio.new_event_loop()
    thread = threading.Thread(target=lp.run_forever, name="caller-loop")
    thread.start()
    try:
        yield lp
    finally:
        lp.call_soon_threadsafe(lp.stop)
        thread.join(WAIT)
        lp.close()


# -- running -----------------------------------------------------------------------


def test_2000_concurrent_awaits_share_one_thread() -> None:
    n = 2000
    before = threading.active_count()
    gate = asyncio.Event()
    arrived = 0
    peak = 0

    async def arrive(i: int) -> tuple[int, str]:
        nonlocal arrived, peak
        arrived += 1
        peak = max(peak, threading.active_count())
        if arrived == n:  # every coroutine is suspended on the gate but this one
            gate.set()
        await gate.wait()
        return i, threading.current_thread().name

    p = _AsyncPool(n)
    sink = Sunk()
    try:
        for i in range(n):
            p.submit(call(i, arrive, i), sink)
        got = sink.take(n)
    finally:
        p.shutdown(wait=True)
    assert got == {i: [(True, (i, "dagexec-async"))] for i in range(n)}
    assert peak <= before + 1
    assert sink.queue.empty()


def test_failing_coroutine_reports_its_exception(pool: _AsyncPool) -> None:
    error = ValueError("bad")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    sink = Sunk()
    pool.submit(call("f", fail), sink)
    assert sink.one() == [(False, error)]


class Later:
    """An awaitable that is neither a coroutine nor a future."""

    def __await__(self) -> Generator[Any, None, str]:
        yield from asyncio.sleep(0).__await__()
        return "later"


def add(a: int, b: int = 0) -> int:
    return a + b


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        pytest.param(lambda: add(1, b=2), 3, id="sync"),
        pytest.param(lambda: asyncio.sleep(0, "slept"), "slept", id="returns-coroutine"),
        pytest.param(Later, "later", id="returns-awaitable"),
    ],
)
def test_sync_callables_and_awaitables(
    pool: _AsyncPool, fn: Callable[[], Any], expected: Any
) -> None:
    sink = Sunk()
    pool.submit(call("k", fn), sink)
    assert sink.one() == [(True, expected)]


def test_args_and_kwargs_are_passed_and_values_returned_as_is(pool: _AsyncPool) -> None:
    value = object()

    async def echo(a: object, *, b: int) -> tuple[object, int]:
        return a, b

    sink = Sunk()
    pool.submit(call("k", echo, value, b=2), sink)
    [(ok, (got, b))] = sink.one()
    assert ok
    assert got is value
    assert b == 2


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_base_exception_is_reported_and_the_loop_lives_on(
    pool: _AsyncPool, error: type[BaseException]
) -> None:
    async def interrupt() -> None:
        raise error

    def sync_interrupt() -> None:
        raise error

    sink = Sunk()
    pool.submit(call("async", interrupt), sink)
    pool.submit(call("sync", sync_interrupt), sink)
    got = sink.take(2)
    assert all(isinstance(got[k][0][1], error) for k in ("async", "sync"))
    pool.submit(call("after", asyncio.sleep, 0, "alive"), sink)
    assert sink.one() == [(True, "alive")]
    assert async_threads()[0].is_alive()


# -- timeout -------------------------------------------------------------------------


def test_timeout_cancels_the_coroutine_and_reports_expired(pool: _AsyncPool) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sink = Sunk()
    pool.submit(call("slow", forever), sink, timeout=0.05)
    pool.submit(call("quick", asyncio.sleep, 0, "done"), sink, timeout=WAIT)
    got = sink.take(2)
    assert got["quick"] == [(True, "done")]
    [(ok, exc)] = got["slow"]
    assert not ok
    assert isinstance(exc, Expired)
    assert exc.timeout == 0.05
    assert cancelled.is_set()


def test_a_timeout_error_of_the_task_is_not_expired(pool: _AsyncPool) -> None:
    async def raise_timeout() -> None:
        raise TimeoutError("the task's own")

    sink = Sunk()
    pool.submit(call("k", raise_timeout), sink, timeout=WAIT)
    [(ok, exc)] = sink.one()
    assert not ok
    assert type(exc) is TimeoutError


# -- stop and cancel -----------------------------------------------------------------


def test_stop_true_before_start_runs_nothing(pool: _AsyncPool) -> None:
    ran: list[int] = []
    sink = Sunk()
    pool.submit(call("k", ran.append, 1), sink, stop=Flag(True).stop)
    assert sink.one() == []
    assert ran == []


def test_cancel_stops_only_the_units_of_that_stop(pool: _AsyncPool) -> None:
    a, b = Flag(), Flag()
    started = Started(6)
    gate = asyncio.Event()
    sink = Sunk()
    for i in range(3):
        pool.submit(call(("a", i), held, started, gate, i), sink, stop=a.stop)
        pool.submit(call(("b", i), held, started, gate, i), sink, stop=b.stop)
    assert started.all.wait(WAIT)
    pool.cancel(a.stop)  # an equal bound method, not the same object
    stopped = sink.take(3)
    assert set(stopped) == {("a", i) for i in range(3)}
    assert all(len(o) == 1 and isinstance(o[0][1], Stopped) for o in stopped.values())
    pool.submit(call("release", gate.set), sink)
    finished = sink.take(4)
    assert finished == {("b", i): [(True, i)] for i in range(3)} | {"release": [(True, None)]}


def test_cancel_before_the_first_step_reports_stopped_without_running(
    pool: _AsyncPool,
) -> None:
    ran: list[int] = []

    async def record() -> None:
        ran.append(1)

    def block() -> None:  # a sync unit: it holds the loop thread itself
        blocked.set()
        assert release.wait(WAIT)

    blocked, release = threading.Event(), threading.Event()
    flag = Flag()
    sink = Sunk()
    pool.submit(call("block", block), sink)
    assert blocked.wait(WAIT)
    # The loop is held: both posts wait behind it and reach it in order, so the task
    # exists but takes its first step only after the cancel.
    pool.submit(call("k", record), sink, stop=flag.stop)
    pool.cancel(flag.stop)
    release.set()
    got = sink.take(2)
    assert got["block"] == [(True, None)]
    [(ok, exc)] = got["k"]
    assert not ok
    assert isinstance(exc, Stopped)
    assert ran == []


def test_cancel_on_an_unused_pool_does_nothing() -> None:
    p = _AsyncPool(1)
    p.cancel(Flag().stop)
    p.shutdown()
    assert async_threads() == []


# -- shutdown ------------------------------------------------------------------------


def test_shutdown_waits_for_units_in_flight_and_joins_the_thread() -> None:
    events: list[str] = []
    started = threading.Event()

    async def work() -> str:
        started.set()
        for _ in range(20):  # in flight over many loop iterations
            await asyncio.sleep(0.005)
        events.append("unit done")
        return "ok"

    p = _AsyncPool(2)
    sink = Sunk()
    p.submit(call("k", work), sink)
    assert started.wait(WAIT)
    p.shutdown(wait=True)
    events.append("shutdown returned")
    assert events == ["unit done", "shutdown returned"]
    assert sink.queue.get_nowait()[1] == [(True, "ok")]  # already reported
    assert async_threads() == []


def test_shutdown_without_wait_cancels_units_in_flight() -> None:
    started = Started(3)
    gate = asyncio.Event()
    p = _AsyncPool(4)
    sink = Sunk()
    for i in range(3):
        p.submit(call(i, held, started, gate), sink)
    assert started.all.wait(WAIT)
    p.shutdown(wait=False)
    got = sink.take(3)
    assert all(len(o) == 1 and isinstance(o[0][1], Stopped) for o in got.values())
    for thread in async_threads():
        thread.join(WAIT)
    assert sink.queue.empty()


@pytest.mark.parametrize("used", [False, True])
def test_submit_after_shutdown_raises(used: bool) -> None:
    p = _AsyncPool(1)
    sink = Sunk()
    if used:
        p.submit(call("k", add, 1), sink)
    p.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        p.submit(call("k", add, 1), sink)
    assert len(sink.take(int(used))) == int(used)
    p.shutdown()  # twice is fine


def test_every_unit_reports_once_when_shutdown_races_submits() -> None:
    p = _AsyncPool(64)
    sink = Sunk()
    barrier = threading.Barrier(5)
    accepted = [0] * 4

    def submitter(n: int) -> None:
        barrier.wait()
        for i in range(100_000):
            try:
                p.submit(call((n, i), asyncio.sleep, 0, i), sink)
            except RuntimeError:
                return
            accepted[n] += 1

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    p.shutdown(wait=False)
    for t in threads:
        t.join(WAIT)
    for t in async_threads():
        t.join(WAIT)
    got = sink.take(sum(accepted))
    assert len(got) == sum(accepted)
    assert sink.queue.empty()


# -- a caller's loop -----------------------------------------------------------------


def test_a_given_loop_runs_the_units_and_is_left_running(
    loop: asyncio.AbstractEventLoop,
) -> None:
    idents: list[int] = []
    loop.call_soon_threadsafe(lambda: idents.append(threading.get_ident()))

    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    p = _AsyncPool(4, loop=loop)
    sink = Sunk()
    try:
        for i in range(10):
            p.submit(call(i, where), sink)
        got = sink.take(10)
    finally:
        p.shutdown(wait=True)
    assert got == {i: [(True, idents[0])] for i in range(10)}
    assert loop.is_running()
    assert not loop.is_closed()
    assert async_threads() == []
    # Still usable by its owner after our shutdown.
    future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "still"), loop)
    assert future.result(WAIT) == "still"


def test_shutdown_on_a_given_loop_waits_for_units_in_flight(
    loop: asyncio.AbstractEventLoop,
) -> None:
    started = Started(1)
    gate = asyncio.Event()
    p = _AsyncPool(2, loop=loop)
    sink = Sunk()
    p.submit(call("held", held, started, gate, "v"), sink)
    assert started.all.wait(WAIT)
    done = threading.Event()

    def shut() -> None:
        p.shutdown(wait=True)
        done.set()

    closer = threading.Thread(target=shut)
    closer.start()
    try:
        assert not done.wait(0.1)  # bounded look: it must still be waiting
        loop.call_soon_threadsafe(gate.set)
        assert done.wait(WAIT)
    finally:
        loop.call_soon_threadsafe(gate.set)
        closer.join(WAIT)
    assert sink.queue.get_nowait()[1] == [(True, "v")]
    assert loop.is_running()


def test_cancel_and_timeout_work_on_a_given_loop(loop: asyncio.AbstractEventLoop) -> None:
    flag = Flag()
    started = Started(1)
    gate = asyncio.Event()
    p = _AsyncPool(2, loop=loop)
    sink = Sunk()
    try:
        p.submit(call("held", held, started, gate), sink, stop=flag.stop)
        assert started.all.wait(WAIT)
        p.cancel(flag.stop)
        [(_, stopped)] = sink.one()
        p.submit(call("slow", gate.wait), sink, timeout=0.01)
        [(_, expired)] = sink.one()
    finally:
        p.shutdown(wait=False)
    assert isinstance(stopped, Stopped)
    assert isinstance(expired, Expired)
