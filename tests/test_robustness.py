"""Robustness: results that cannot cross back, shutdown mid-run, failures and interrupts
that must not leak into other callers, held values with changed inputs, bad after=.

Timeouts on waits only bound a failure (a hang becomes a failure); they never order events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from dagexec import Graph, Runner, TaskFailed

WAIT = 10.0


class _UnpicklableInParent(Exception):
    """Pickles fine, but unpickling calls ``cls(*args)`` without ``extra``: TypeError."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def _returns_a_value_the_parent_cannot_unpickle() -> Any:
    # Defined here, the class is pickled by value, so the worker needs no import of tests.
    class Broken(_UnpicklableInParent):
        pass

    return Broken("made in the worker", "extra")


@pytest.mark.timeout(60)
def test_a_process_result_that_fails_to_unpickle_fails_the_task_instead_of_hanging() -> None:
    """A result the worker could pickle but the caller cannot unpickle fails the task."""
    with Runner(max_workers={"process": 1}) as runner:
        fut = runner.submit("k", _returns_a_value_the_parent_cannot_unpickle, kind="process")
        with pytest.raises(TaskFailed):
            fut.result(timeout=WAIT)


@pytest.mark.timeout(30)
def test_shutdown_while_a_run_is_in_flight_leaks_no_threads() -> None:
    """A Runner shut down while its run is in flight starts no new pool (no leaked threads)."""
    a_started = threading.Event()
    a_go = threading.Event()

    def a() -> int:
        a_started.set()
        assert a_go.wait(WAIT)
        return 1

    g = Graph()
    ref = g.add("a", a)
    g.add("b", lambda x: x + 1, ref)
    g.add("c", lambda x: x + 2, ref)  # two dependents: no chain, b and c go through pump

    runner = Runner(max_workers={"thread": 2})
    outcome: list[Any] = []

    def drive() -> None:
        try:
            outcome.append(runner.run(g))
        except BaseException as exc:  # recorded for the assertion below
            outcome.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        assert a_started.wait(WAIT)
        closer = threading.Thread(target=runner.shutdown)  # joins the worker running a
        closer.start()
        a_go.set()
        closer.join(WAIT)
        driver.join(WAIT)
        assert not driver.is_alive()
        alive = [t.name for t in threading.enumerate() if t.name.startswith("dagexec-thread")]
        assert not alive, f"threads of a pool created after shutdown: {alive}; {outcome}"
    finally:
        a_go.set()
        runner._pools.shutdown(wait=True)  # clean up the pool the bug created


class _CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that says when it has been handed ``n`` work items."""

    def __init__(self, workers: int, n: int) -> None:
        super().__init__(workers)
        self._n = n
        self._lock = threading.Lock()
        self.reached = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._n -= 1
            if self._n == 0:
                self.reached.set()
        return fut


@pytest.mark.timeout(30)
def test_an_unrelated_failure_in_one_run_does_not_fail_a_submit_of_a_key_it_had_queued() -> None:
    """A run stopping at its first failure still runs a queued key another caller joined."""
    gate_go = threading.Event()
    hold_go = threading.Event()
    calls: list[str] = []

    def gate() -> None:
        assert gate_go.wait(WAIT)
        raise ValueError("unrelated")

    def hold() -> None:
        assert hold_go.wait(WAIT)

    def k() -> str:
        calls.append("k")
        return "value"

    g = Graph()
    g.add("gate", gate)
    g.add("hold", hold)
    g.add("k", k)  # queued behind gate and hold on a pool of two

    executor = _CountingExecutor(workers=2, n=3)
    errors: list[BaseException] = []

    def drive(runner: Runner) -> None:
        try:
            runner.run(g)
        except TaskFailed as exc:
            errors.append(exc)

    try:
        with Runner(executors={"thread": executor}) as runner:
            driver = threading.Thread(target=drive, args=(runner,))
            driver.start()
            try:
                assert executor.reached.wait(WAIT)  # the run has claimed and queued k
                fut = runner.submit("k", k)  # joins the run's execution of k
                gate_go.set()
                error = fut.exception(timeout=WAIT)
            finally:
                gate_go.set()
                hold_go.set()
                driver.join(WAIT)
            assert [e.key for e in errors] == ["gate"]
            assert error is None, f"submit of 'k' failed: {error}"
            assert fut.result() == "value"
    finally:
        executor.shutdown(wait=True)


def _plus_one(value: int) -> int:
    return value + 1


def _leaf(value: int) -> int:
    return value


def test_a_held_target_is_not_reused_when_a_dependency_definition_changed() -> None:
    """A held value is not reused when one of its inputs is defined differently now."""

    def build(leaf_value: int) -> Graph:
        g = Graph()
        g.add("b", _plus_one, g.add("a", _leaf, leaf_value))
        return g

    with Runner() as runner:
        assert runner.run(build(1))["b"] == 2
        assert runner.run(build(5))["b"] == 6


def _fails() -> None:
    raise ValueError("inner")


def test_a_task_that_raises_task_failed_is_reported_under_its_own_key() -> None:
    """A task that itself raises TaskFailed (a nested run) is reported under its own key."""

    def outer() -> None:
        inner = Graph()
        inner.add("inner", _fails)
        inner.run()

    g = Graph()
    g.add("outer", outer)
    g.add("after", lambda x: x, g.ref("outer"))
    results = g.run(on_error="continue")
    failure = results.errors["outer"]
    assert failure.key == "outer", str(failure)
    assert isinstance(failure.__cause__, TaskFailed)
    assert results.skipped == ["after"]


def test_a_non_iterable_after_is_rejected_naming_the_task() -> None:
    """A non-iterable after= is rejected naming the task, with what to write instead."""
    g = Graph()
    g.add("a", _leaf, 1)
    with pytest.raises(TypeError, match=r"'b'.*after"):
        g.add("b", _leaf, 2, after=5)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_a_key_still_running_after_its_run_was_interrupted_is_not_started_again() -> None:
    """A key still running after its run was interrupted is joined, never started twice."""
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        started.set()
        assert release.wait(WAIT)
        return len(calls)

    def interrupt() -> None:
        assert started.wait(WAIT)
        raise KeyboardInterrupt  # as Ctrl-C in the caller's thread

    g = Graph()
    g.add("slow", slow)
    g.add("interrupt", interrupt, kind="inline", after=[g.add("pre", _leaf, 0)])

    with Runner(max_workers={"thread": 2}) as runner:
        try:
            with pytest.raises(KeyboardInterrupt):
                runner.run(g)
            fut = runner.submit("slow", slow)  # "slow" is still running from the run
        finally:
            release.set()
        fut.result(timeout=WAIT)
    assert len(calls) == 1, "'slow' was started again while its first execution was still running"
