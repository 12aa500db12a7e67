"""Failures in runs: on_error="raise" and "continue", unpicklable data, dead process workers.

Tasks record that they ran by appending their key to a file, so "never ran" is checked
for process workers too. Every test here ends in a failure; the autouse fixture of
conftest.py then checks that the failed run left no threads or child processes behind.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from _helpers import _record, ran, total, value

import dagexec

pytestmark = pytest.mark.timeout(60)

KINDS = ["thread", "process", "inline"]
WAIT = 10.0  # seconds an Event waits before the test gives up and fails


# -- task helpers (module level, so process workers can import them) -----------------------


def fail_parse(log: Path, key: str, *_: Any) -> None:
    _record(log, key)
    raise ValueError("bad input", 42)


def die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)


def pid() -> int:
    return os.getpid()


def identity(x: Any) -> Any:
    return x


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "ran.log"


# -- on_error="raise" -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failure_raises_task_failed_naming_the_key_and_what_could_not_run(
    kind: str, log: Path
) -> None:
    g = dagexec.Graph(default_kind=kind)
    parsed = g.add("parse:a", fail_parse, log, "parse:a")
    checked = g.add("check:a:r1", total, log, "check:a:r1", parsed)
    g.add("report", total, log, "report", checked)

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run()

    exc = info.value
    assert exc.key == "parse:a"
    message = str(exc)
    assert "'parse:a'" in message
    assert "check:a:r1 <- parse:a" in message
    assert "report <- check:a:r1 <- parse:a" in message
    assert ran(log) == ["parse:a"]  # its dependents never ran


@pytest.mark.parametrize("kind", KINDS)
def test_the_cause_is_the_tasks_own_exception_with_its_traceback(kind: str, log: Path) -> None:
    g = dagexec.Graph(default_kind=kind)
    g.add("parse:a", fail_parse, log, "parse:a")

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run()

    cause = info.value.__cause__
    assert type(cause) is ValueError
    assert cause.args == ("bad input", 42)
    if kind != "process":
        assert cause.__traceback__ is not None
    # From a process worker the traceback comes back as text in the cause chain.
    text = "".join(traceback.format_exception(info.value))
    assert "fail_parse" in text
    assert 'raise ValueError("bad input", 42)' in text


@pytest.mark.parametrize("kind", KINDS)
def test_the_raised_error_holds_the_values_completed_before_the_stop(kind: str, log: Path) -> None:
    g = dagexec.Graph(default_kind=kind)
    base = g.add("base", value, log, "base", 7)
    g.add("parse:a", fail_parse, log, "parse:a", base)

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run(keep="all")

    results = info.value.results
    assert isinstance(results, dagexec.Results)
    assert dict(results) == {"base": 7}
    assert list(results.errors) == ["parse:a"]


@pytest.mark.parametrize("shape", ["chain", "fan_out"])
def test_the_first_failure_stops_dispatch_and_lets_running_tasks_finish(shape: str) -> None:
    """A slow root, released by the failing task, finishes; its dependents never start.

    In "chain" the slow root's only dependent could run right after it on the same
    worker; in "fan_out" it has two, so both go through the scheduler.
    """
    events: list[str] = []
    release = threading.Event()
    sink_done = threading.Event()

    def slow() -> int:
        events.append("slow:start")
        assert release.wait(WAIT)
        events.append("slow:end")
        return 1

    def sink() -> str:
        events.append("sink")
        sink_done.set()
        return "done"

    def bad() -> None:
        assert sink_done.wait(WAIT)
        events.append("bad")
        release.set()
        raise ValueError("bad")

    g = dagexec.Graph()
    s = g.add("slow", slow)
    g.add("after-slow", lambda x: events.append("after-slow"), s)
    if shape == "fan_out":
        g.add("after-slow2", lambda x: events.append("after-slow2"), s)
    g.add("sink", sink)
    g.add("bad", bad)

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run()

    assert info.value.key == "bad"
    assert not [e for e in events if e.startswith("after-slow")], events
    assert events.index("bad") < events.index("slow:end")  # it was running; it finished
    assert dict(info.value.results) == {"sink": "done"}


# -- on_error="continue" --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_continue_runs_everything_that_does_not_depend_on_a_failure(kind: str, log: Path) -> None:
    g = dagexec.Graph(default_kind=kind)
    good = g.add("good", value, log, "good", 1)
    g.add("good2", total, log, "good2", good, 1)
    bad = g.add("bad", fail_parse, log, "bad")
    d1 = g.add("d1", total, log, "d1", bad)
    g.add("d2", total, log, "d2", d1)
    g.add("mixed", total, log, "mixed", good, bad)
    bad2 = g.add("bad2", fail_parse, log, "bad2", good)
    g.add("d3", value, log, "d3", 3, after=[bad2])  # an order-only dependent is skipped too

    res = g.run(on_error="continue")

    assert isinstance(res, dagexec.Results)
    assert dict(res) == {"good2": 2}
    assert not res.ok
    assert sorted(res.errors) == ["bad", "bad2"]
    assert all(isinstance(e, dagexec.TaskFailed) for e in res.errors.values())
    assert res.errors["bad"].key == "bad"
    assert type(res.errors["bad"].__cause__) is ValueError
    assert sorted(res.skipped) == ["d1", "d2", "d3", "mixed"]
    assert sorted(ran(log)) == ["bad", "bad2", "good", "good2"]
    for key in ["bad", "bad2", "d1", "d2", "d3", "mixed"]:
        with pytest.raises(dagexec.TaskFailed):
            res[key]
    with pytest.raises(dagexec.TaskFailed) as info:
        res["d2"]
    assert info.value.key == "bad"


# -- data that cannot cross to a process ---------------------------------------------------


def _lock() -> Any:
    return threading.Lock()


def _generator() -> Any:
    return (i for i in range(3))


UNPICKLABLE = pytest.mark.parametrize(
    ("make", "what"), [(_lock, "lock"), (_generator, "generator")], ids=["lock", "generator"]
)


@UNPICKLABLE
def test_an_unpicklable_argument_of_a_process_task_fails_that_task(
    make: Any, what: str, log: Path
) -> None:
    g = dagexec.Graph()
    g.add("fine", value, log, "fine", 1, kind="inline")
    sent = g.add("send:x", identity, make(), kind="process")
    g.add("after", total, log, "after", sent, kind="inline")

    res = g.run(on_error="continue")

    exc = res.errors["send:x"]
    assert "'send:x'" in str(exc)
    assert "pickle" in str(exc)
    assert what in str(exc)
    assert res.skipped == ["after"]
    assert dict(res) == {"fine": 1}


@UNPICKLABLE
def test_an_unpicklable_result_of_a_process_task_fails_that_task(make: Any, what: str) -> None:
    g = dagexec.Graph()
    g.add("make:x", make, kind="process")

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run()

    assert info.value.key == "make:x"
    assert "'make:x'" in str(info.value)
    assert "pickle" in str(info.value)
    assert what in str(info.value)


def test_an_unpicklable_value_passed_on_to_a_process_task_fails_the_receiver() -> None:
    g = dagexec.Graph()
    lock = g.add("lock", _lock, kind="thread")
    g.add("use:lock", identity, lock, kind="process")

    with pytest.raises(dagexec.TaskFailed) as info:
        g.run()

    assert info.value.key == "use:lock"
    assert "pickle" in str(info.value)


# -- dead process workers -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_dead_worker_fails_its_task_and_the_runner_recovers(how: str, log: Path) -> None:
    with dagexec.Runner(max_workers={"process": 1}) as runner:
        g1 = dagexec.Graph(default_kind="process")
        dead = g1.add("die", die, how)
        g1.add("after", identity, dead)

        with pytest.raises(dagexec.TaskFailed) as info:
            runner.run(g1)

        assert info.value.key == "die"
        assert isinstance(info.value.__cause__, dagexec.WorkerDied)
        assert "after <- die" in str(info.value)

        g2 = dagexec.Graph(default_kind="process")
        g2.add("pid", pid)
        g2.add("v", value, log, "v", 5)
        res = runner.run(g2)

        assert res["pid"] != os.getpid()
        assert res["v"] == 5


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_dead_worker_does_not_stop_the_other_process_tasks_with_continue(
    how: str, log: Path
) -> None:
    g = dagexec.Graph(default_kind="process")
    dead = g.add("die", die, how)
    g.add("after", identity, dead)
    for i in range(3):
        g.add(f"ok{i}", value, log, f"ok{i}", i)

    res = g.run(on_error="continue", max_workers={"process": 1})

    assert dict(res) == {"ok0": 0, "ok1": 1, "ok2": 2}
    assert list(res.errors) == ["die"]
    assert isinstance(res.errors["die"].__cause__, dagexec.WorkerDied)
    assert res.skipped == ["after"]
