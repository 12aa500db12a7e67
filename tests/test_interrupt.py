"""A run that stops early: queued work is skipped, Ctrl-C propagates, nothing hangs."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future

import pytest

import dagexec

WAIT = 10.0


def test_queued_work_is_skipped_after_the_first_failure() -> None:
    ran: list[int] = []

    def bad() -> None:
        raise ValueError("bad")

    g = dagexec.Graph()
    g.add("bad", bad)
    for i in range(20):
        g.add(i, ran.append, i)
    # One worker takes the queue in order: "bad" first, then units queued behind it.
    with pytest.raises(dagexec.TaskFailed) as info:
        g.run(max_workers=1)
    assert info.value.key == "bad"
    assert ran == []


def test_ctrl_c_in_the_callers_thread_stops_the_run_and_propagates() -> None:
    started = threading.Event()
    release = threading.Event()

    def interrupt() -> None:
        started.set()
        signal.raise_signal(signal.SIGINT)  # delivered to the main thread, inside run()

    def blocked() -> str:
        assert started.wait(WAIT)
        release.wait(WAIT)
        return "finished"

    g = dagexec.Graph()
    g.add("interrupt", interrupt)
    g.add("blocked", blocked)
    with dagexec.Runner(max_workers=2) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(g)
        release.set()
        # The Runner is still usable, and a key the interrupted run owned is not stuck.
        assert runner.submit("blocked", blocked).result(timeout=WAIT) == "finished"


def test_a_keyboard_interrupt_in_an_inline_task_is_not_a_task_failure() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    g = dagexec.Graph()
    g.add("a", interrupted, kind="inline")
    with pytest.raises(KeyboardInterrupt):
        g.run()


def test_a_caller_that_joined_a_key_of_an_interrupted_run_gets_its_value() -> None:
    inside = threading.Event()
    release = threading.Event()
    waiters: list[Future[int]] = []
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        inside.set()
        release.wait(WAIT)
        return 1

    with dagexec.Runner(max_workers=2) as runner:

        def interrupt(_: object) -> None:
            waiters.append(runner.submit("slow", slow))  # joins the run's execution
            raise KeyboardInterrupt

        g = dagexec.Graph()
        g.add("slow", slow)
        g.add("stop", interrupt, g.add("go", inside.wait, WAIT), kind="inline")
        with pytest.raises(KeyboardInterrupt):
            runner.run(g)
        # Still running in the background: asking again joins it, never starts it twice.
        waiters.append(runner.submit("slow", slow))
        release.set()
        assert [w.result(timeout=WAIT) for w in waiters] == [1, 1]
    assert calls == [1]
