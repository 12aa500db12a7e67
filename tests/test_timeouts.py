"""Task and run timeouts: a late process task's worker is terminated, a late thread task
is abandoned (it runs on; its dependents never start), the run's own timeout cancels it.

Late tasks are held at a Gate (a socket, see ``_control``) or on a threading.Event, so they
stay late for exactly as long as the test wants; whether a worker was terminated is read
from a pidfd of its process, not guessed from the time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path

import pytest
from _control import WAIT, Gate, held, held_first, lines, lingering, pids, record_and_return
from conftest import _children

import dagexec
from dagexec import Graph, Results, Runner, TaskFailed, TaskTimeout

ON = ["graph", "runner"]
HANG = 10.0  # seconds a test takes to fail, not hang, when a late task is never stopped

Run = Callable[..., Results]


@contextmanager
def running(on: str, max_workers: dict[str, int] | None = None) -> Iterator[Run]:
    """Yield ``run(graph, **options)``: ``Graph.run``, or ``Runner.run`` on a Runner that
    is shut down when the block ends."""
    if on == "graph":
        yield lambda g, **options: g.run(max_workers=max_workers, **options)
    else:
        with Runner(max_workers=max_workers) as runner:
            yield lambda g, **options: runner.run(g, **options)


def value(v: object, *after: object) -> object:
    return v


def new_children(before: dict[int, str]) -> dict[int, str]:
    """Child processes (loky's singletons aside) not there ``before`` and not exiting."""
    return lingering({pid: cmd for pid, cmd in _children().items() if pid not in before})


# -- process tasks ---------------------------------------------------------------------
#
# A late process task starts after a quick one on the same single worker ("warm"): how
# long a fresh worker takes to start is then no part of its time (see the test of that).


@pytest.mark.parametrize("on", ON)
def test_a_late_process_task_has_its_worker_terminated(on: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with Gate() as gate:
        g = Graph()
        warm = g.add("warm", value, "warm", kind="process")
        slow = g.add("slow", held, gate.port, "slow", warm, kind="process", timeout=0.5)
        g.add("dep", record_and_return, log, "dep", "dep", slow, kind="process")
        g.add("tdep", record_and_return, log, "tdep", "tdep", slow, kind="thread")
        g.add("free", value, "free", warm, kind="process")
        with running(on, max_workers={"process": 1}) as run:
            started = time.monotonic()
            results = run(g, on_error="continue")
            elapsed = time.monotonic() - started
            (pid,) = gate.arrivals(1, HANG)
            assert gate.exited(pid, HANG)  # terminated (with a Runner, still open)
        err = results.errors["slow"]
        assert isinstance(err, TaskTimeout)
        assert isinstance(err, TaskFailed)
        assert isinstance(err, TimeoutError)
        assert (err.key, err.timeout) == ("slow", 0.5)
        assert "terminated" in str(err)
        assert results["free"] == "free"
        assert sorted(results.skipped) == ["dep", "tdep"]
        assert lines(log) == []  # the dependents never started
        assert elapsed < HANG


def test_a_late_process_task_raises_task_timeout_with_on_error_raise() -> None:
    with Gate() as gate:
        g = Graph()
        warm = g.add("warm", value, "warm", kind="process")
        g.add("slow", held, gate.port, "slow", warm, kind="process", timeout=0.5)
        with pytest.raises(TaskTimeout) as info:
            g.run(max_workers={"process": 1})
        (pid,) = gate.arrivals(1, HANG)
        assert info.value.key == "slow"
        assert info.value.results is not None
        assert gate.exited(pid, HANG)


@pytest.mark.parametrize("on", ON)
def test_a_late_process_task_is_retried_and_its_quick_second_attempt_succeeds(
    on: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    with Gate() as gate:
        g = Graph()
        warm = g.add("warm", value, "warm", kind="process")
        g.add(
            "slow", held_first, gate.port, log, "slow", warm, kind="process", timeout=1.5, retries=1
        )
        with running(on, max_workers={"process": 1}) as run:
            results = run(g, backoff=0)
            (first,) = gate.arrivals(1, HANG)
            assert gate.exited(first, HANG)
        n, second = results["slow"]
        assert n == 2
        assert pids(log, "slow") == [first, second]
        assert first != second  # the late attempt's worker was replaced
        assert results.stats.tasks_retried == 1


def test_a_process_timeout_does_not_count_the_time_a_fresh_worker_takes_to_start() -> None:
    """The task takes microseconds; starting its worker process takes longer than its
    timeout. A task that never ran past its timeout must not fail for it."""
    g = Graph()
    g.add("quick", value, "done", kind="process", timeout=0.1)
    assert g.run()["quick"] == "done"


@pytest.mark.parametrize("on", ON)
def test_units_queued_behind_a_late_task_on_its_worker_still_run(on: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with Gate() as gate:
        g = Graph()
        warm = g.add("warm", value, "warm", kind="process")
        # One worker: "slow" goes first (priority), the rest queue behind it there.
        g.add("slow", held, gate.port, "slow", warm, kind="process", timeout=1.0, priority=1)
        for i in range(5):
            g.add(f"q{i}", record_and_return, log, f"q{i}", i, warm, kind="process")
        with running(on, max_workers={"process": 1}) as run:
            results = run(g, on_error="continue")
            (slow_pid,) = gate.arrivals(1, HANG)
            assert gate.exited(slow_pid, HANG)
        assert isinstance(results.errors["slow"], TaskTimeout)
        assert [results[f"q{i}"] for i in range(5)] == list(range(5))
        assert sorted(line.split()[0] for line in lines(log)) == [f"q{i}" for i in range(5)]
        assert slow_pid not in {pid for i in range(5) for pid in pids(log, f"q{i}")}


def test_after_a_timeout_graph_run_leaves_no_child_process() -> None:
    before = _children()
    with Gate() as gate:
        g = Graph()
        warm = g.add("warm", value, "warm", kind="process")
        for i in range(3):
            g.add(i, held, gate.port, str(i), warm, kind="process", timeout=0.5)
        results = g.run(on_error="continue", max_workers={"process": 1})
        left = new_children(before)  # at once: Graph.run shut its pools down before it returned
        assert sorted(results.errors) == [0, 1, 2]
        assert all(gate.exited(pid, HANG) for pid in gate.pids)  # terminated, at least later
        assert left == {}


# -- thread tasks ----------------------------------------------------------------------


class Hang:
    """A thread task that hangs until released; says when it entered and when it left."""

    def __init__(self, hang: float = HANG) -> None:
        self.hang = hang
        self.entered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()
        self.calls = 0

    def __call__(self, *after: object) -> str:
        self.calls += 1
        self.entered.set()
        self.release.wait(self.hang)
        self.left.set()
        return "late"

    def finish(self) -> None:
        """Let the abandoned thread return, and wait until it has."""
        self.release.set()
        assert self.left.wait(WAIT)


@pytest.mark.parametrize("on", ON)
def test_a_late_thread_task_is_abandoned_and_its_dependents_never_start(
    on: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    hang = Hang()
    g = Graph()
    late = g.add("late", hang, timeout=0.3)
    g.add("dep", record_and_return, log, "dep", "dep", late)
    g.add("pdep", record_and_return, log, "pdep", "pdep", late, kind="process")
    g.add("free", value, "free")
    with running(on) as run:
        try:
            results = run(g, on_error="continue")
            # The run returned while the thread still runs.
            assert hang.entered.is_set()
            assert not hang.left.is_set()
        finally:
            hang.finish()
    err = results.errors["late"]
    assert isinstance(err, TaskTimeout)
    assert err.timeout == 0.3
    assert "abandoned" in str(err)
    assert results["free"] == "free"
    assert sorted(results.skipped) == ["dep", "pdep"]
    assert lines(log) == []  # not even once the abandoned thread returned


def test_a_runner_runs_a_key_again_after_its_thread_task_was_abandoned(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hang = Hang()
    g = Graph()
    late = g.add("late", hang, timeout=0.3)
    g.add("dep", record_and_return, log, "dep", "dep", late)
    with Runner() as runner:
        try:
            with pytest.raises(TaskTimeout):
                runner.run(g)
        finally:
            hang.finish()
        # The abandoned value was dropped, the failure not kept: it runs again, in time now.
        assert runner.run(g, keep="all")["late"] == "late"
    assert hang.calls == 2
    assert len(pids(log, "dep")) == 1


def test_a_late_thread_task_is_retried_while_the_abandoned_attempt_runs_on() -> None:
    hang = Hang()
    calls: list[int] = []

    def late_first() -> str:
        calls.append(1)
        if len(calls) == 1:
            return hang()
        return "second"

    g = Graph()
    g.add("t", late_first, timeout=0.3, retries=1, backoff=0)
    try:
        results = g.run(max_workers={"thread": 2})
        assert not hang.left.is_set()
    finally:
        hang.finish()
    assert results["t"] == "second"
    assert len(calls) == 2
    assert results.stats.tasks_retried == 1


@pytest.mark.parametrize("then", ["others", "its-retry"])
def test_an_abandoned_thread_does_not_starve_what_is_queued_behind_it(then: str) -> None:
    """With one thread, the work after a late task must not wait for that task to return:
    a task that hangs for ever would hang the run despite its timeout."""
    hang = Hang(hang=3.0)  # how long the run takes to fail when it waits for it
    calls: list[int] = []

    def late_first() -> str:
        calls.append(1)
        return hang() if len(calls) == 1 else "second"

    g = Graph()
    if then == "others":
        g.add("late", hang, timeout=0.3, priority=1)
        for i in range(3):
            g.add(i, value, i)
    else:
        g.add("late", late_first, timeout=0.3, retries=1, backoff=0)
    started = time.monotonic()
    try:
        results = g.run(max_workers={"thread": 1}, on_error="continue")
        assert not hang.left.is_set(), "the run waited for the abandoned thread"
    finally:
        hang.finish()
    assert time.monotonic() - started < 3.0
    if then == "others":
        assert [results[i] for i in range(3)] == [0, 1, 2]
    else:
        assert results["late"] == "second"


# -- the run's own timeout -------------------------------------------------------------


@pytest.mark.parametrize("on", ON)
def test_the_run_timeout_cancels_the_run_and_keeps_what_completed(on: str) -> None:
    hang = Hang()
    before = _children()
    with Gate() as gate, running(on) as run:
        g = Graph()
        g.add("done", value, "done", kind="process")
        g.add("tdone", value, "tdone")
        g.add("held", held, gate.port, "held", kind="process", after=["done"])
        g.add("hung", hang, after=["tdone", "done"])  # two inputs: not chained to "tdone"
        try:
            started = time.monotonic()
            with pytest.raises(dagexec.Cancelled) as info:
                run(g, targets=["done", "tdone", "held", "hung"], timeout=2.0)
            elapsed = time.monotonic() - started
            left = new_children(before)
            (pid,) = gate.arrivals(1, HANG)
            assert gate.exited(pid, HANG)  # terminated (a Runner is still open)
            assert hang.entered.is_set()
            assert not hang.left.is_set()
        finally:
            hang.finish()
        exc = info.value
        assert isinstance(exc, CancelledError)
        assert "timeout" in str(exc)
        assert exc.results is not None
        assert dict(exc.results) == {"done": "done", "tdone": "tdone"}
        assert 2.0 <= elapsed < HANG
        if on == "graph":
            assert left == {}  # Graph.run shut its pools down before it raised
        else:
            assert run(g, targets=["done"])["done"] == "done"  # the Runner is still usable


def test_a_run_timeout_while_the_workers_are_still_starting_leaves_no_child_process() -> None:
    """Cancelled before any process task could start: every worker still goes."""
    before = _children()
    g = Graph()
    for i in range(8):
        g.add(i, time.sleep, HANG, kind="process")
    with pytest.raises(dagexec.Cancelled):
        g.run(timeout=0.05, max_workers={"process": 4})
    assert new_children(before) == {}
