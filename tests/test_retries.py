"""Retries: per task, graph and run (task > graph > run), retry_on, backoff, attempts
counted through a file, WorkerDied retried on a fresh worker, shared runs, bad options.

Attempts are counted by the tasks themselves (a line per attempt, appended with O_APPEND),
so process, thread and inline tasks are counted the same way.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from _control import (
    WAIT,
    attempt,
    changing,
    exits_first,
    flaky,
    lines,
    pids,
    record_and_return,
    stamp,
    stamps,
    unpicklable_result,
)

import dagexec
from dagexec import Backoff, Graph, Runner, TaskFailed, WorkerDied

KINDS = ["thread", "process", "inline"]
ALWAYS = 1_000  # "fails" for a task that never succeeds


def notes(exc: BaseException) -> list[str]:
    """The notes added to ``exc`` (``__notes__`` on 3.11+, its message on 3.10)."""
    return list(getattr(exc, "__notes__", [])) or [str(exc)]


class Delays:
    """A backoff callable that records the attempt numbers it is asked about."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, attempt: int) -> float:
        self.asked.append(attempt)
        return 0


# -- retries on each kind --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_task_that_fails_twice_succeeds_on_its_third_attempt(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", flaky, log, "a", 2, kind=kind, retries=2, backoff=0)
    results = g.run()
    assert results["a"] == 3
    assert len(pids(log, "a")) == 3
    assert results.ok
    assert results.stats.tasks_retried == 2
    assert results.stats.tasks_run == 3  # each attempt counts as a task run


@pytest.mark.parametrize("kind", KINDS)
def test_the_last_failure_says_how_many_attempts_were_made(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", flaky, log, "a", ALWAYS, kind=kind, retries=2, backoff=0)
    with pytest.raises(TaskFailed) as info:
        g.run()
    err = info.value
    assert err.key == "a"
    assert err.attempts == 3
    assert len(pids(log, "a")) == 3  # not one more
    assert any(f"attempt 3/3 on {kind} pool" in note for note in notes(err))
    assert isinstance(err.__cause__, ValueError)
    assert str(err.__cause__) == "a attempt 3"  # the last attempt's own exception
    assert err.results is not None
    assert err.results.stats.tasks_retried == 2


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_retry_on_retries_only_the_exception_types_it_names(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    # ConnectionError is an OSError: retried. ValueError is not: one attempt only.
    g.add("sub", flaky, log, "sub", 1, ConnectionError, kind=kind, retries=3, retry_on=OSError)
    g.add("other", flaky, log, "other", 1, ValueError, kind=kind, retries=3, retry_on=(OSError,))
    results = g.run(on_error="continue", backoff=0)
    assert results["sub"] == 2
    assert len(pids(log, "sub")) == 2
    assert len(pids(log, "other")) == 1
    err = results.errors["other"]
    assert err.attempts == 1
    assert isinstance(err.__cause__, ValueError)


def test_retrying_stops_at_an_exception_that_retry_on_does_not_name(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    errors = (ConnectionError, TimeoutError, KeyError)  # OSError, OSError, not an OSError
    g.add("a", changing, log, "a", errors, retries=5, retry_on=OSError, backoff=0)
    with pytest.raises(TaskFailed) as info:
        g.run()
    assert len(pids(log, "a")) == 3
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, KeyError)


def test_a_base_exception_that_is_not_an_exception_is_not_retried_by_default(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", flaky, log, "a", 1, SystemExit, retries=3, backoff=0)
    with pytest.raises(TaskFailed) as info:
        g.run()
    assert len(pids(log, "a")) == 1
    assert isinstance(info.value.__cause__, SystemExit)


def test_a_value_that_cannot_be_pickled_is_not_retried(tmp_path: Path) -> None:
    """Another attempt would return the same unpicklable value: one attempt only."""
    log = tmp_path / "log"
    g = Graph()
    g.add("gen", unpicklable_result, log, "gen", kind="process", retries=3, backoff=0)
    with pytest.raises(TaskFailed) as info:
        g.run()
    assert len(pids(log, "gen")) == 1
    assert "pickle" in str(info.value)


# -- backoff ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_backoff_is_asked_with_the_attempt_numbers_1_2_3(kind: str, tmp_path: Path) -> None:
    always, twice = Delays(), Delays()
    g = Graph()
    g.add("always", flaky, tmp_path / "a", "a", ALWAYS, kind=kind, retries=3, backoff=always)
    g.add("twice", flaky, tmp_path / "t", "t", 2, kind=kind, retries=5, backoff=twice)
    results = g.run(on_error="continue")
    assert always.asked == [1, 2, 3]  # 4 attempts: 3 waits, none after the last
    assert twice.asked == [1, 2]
    assert results["twice"] == 3


def test_backoff_in_seconds_spaces_the_attempts(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", stamp, log, "a", retries=2, backoff=0.2)
    with pytest.raises(TaskFailed):
        g.run()
    started = stamps(log)
    assert len(started) == 3
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(started))


def test_a_backoff_policy_grows_exponentially(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", stamp, log, "a", retries=2, backoff=Backoff(base=0.1, factor=3, jitter=False))
    with pytest.raises(TaskFailed):
        g.run()
    first, second, third = stamps(log)
    assert second - first >= 0.095
    assert third - second >= 0.295  # 0.1 * 3


def test_backoff_delays_are_exponential_capped_and_jittered_downwards() -> None:
    plain = Backoff(base=1, factor=2, max=5, jitter=False)
    assert [plain(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = Backoff(base=1, factor=2, max=5)
    samples = [jittered(3) for _ in range(200)]
    assert all(2 <= s <= 4 for s in samples)  # times a factor in [0.5, 1]
    assert len(set(samples)) > 1  # tasks failing together do not retry in lockstep
    assert 0.05 <= Backoff()(1) <= 0.1  # the default: 0.1 s before the first retry


# -- defaults and precedence -----------------------------------------------------------


@pytest.mark.parametrize("level", ["graph", "run"])
def test_graph_and_run_retry_defaults_apply_to_tasks_that_say_nothing(
    level: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    g = Graph(retries=2, backoff=0) if level == "graph" else Graph()
    g.add("a", flaky, log, "a", 2)
    g.add("p", flaky, log, "p", 1, kind="process")
    results = g.run(retries=2, backoff=0) if level == "run" else g.run()
    assert (results["a"], results["p"]) == (3, 2)
    assert results.stats.tasks_retried == 3


def test_the_task_setting_beats_the_graphs_which_beats_the_runs(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph(retries=2, backoff=0)
    g.add("own", flaky, log, "own", ALWAYS, retries=1)
    g.add("none", flaky, log, "none", ALWAYS, retries=0)
    g.add("graph", flaky, log, "graph", ALWAYS)
    results = g.run(on_error="continue", retries=5, backoff=0)
    tried = {key: len(pids(log, key)) for key in ("own", "none", "graph")}
    assert tried == {"own": 2, "none": 1, "graph": 3}
    assert {k: e.attempts for k, e in results.errors.items()} == tried

    zero = Graph(retries=0)  # a graph's 0 is a setting: the run's default does not apply
    zero.add("z", flaky, log, "z", ALWAYS)
    with pytest.raises(TaskFailed):
        zero.run(retries=5, backoff=0)
    assert len(pids(log, "z")) == 1


def test_retry_on_and_backoff_follow_the_same_precedence(tmp_path: Path) -> None:
    log = tmp_path / "log"
    on_run, on_graph, on_task = Delays(), Delays(), Delays()
    g = Graph(retries=3, retry_on=OSError, backoff=on_graph)
    # The task's retry_on (ValueError) replaces the graph's (OSError); its backoff too.
    g.add("task", flaky, log, "task", 1, ValueError, retry_on=ValueError, backoff=on_task)
    # Nothing of its own: the graph's retry_on and backoff, not the run's.
    g.add("graph", flaky, log, "graph", 1, ConnectionError)
    g.add("refused", flaky, log, "refused", 1, KeyError)  # not an OSError
    results = g.run(on_error="continue", retry_on=KeyError, backoff=on_run)
    assert (results["task"], results["graph"]) == (2, 2)
    assert len(pids(log, "refused")) == 1
    assert (on_task.asked, on_graph.asked, on_run.asked) == ([1], [1], [])


# -- what retries do to the rest of the run ----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dependents_get_the_value_of_the_successful_attempt(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    a = g.add("a", flaky, log, "a", 2, kind=kind, retries=2, backoff=0)
    for dep_kind in KINDS:
        g.add(dep_kind, record_and_return, log, dep_kind, a, kind=dep_kind)
    results = g.run()
    assert dict(results) == {"thread": 3, "process": 3, "inline": 3}
    assert [len(pids(log, k)) for k in KINDS] == [1, 1, 1]  # each dependent ran once
    assert len(pids(log, "a")) == 3


def test_stats_count_every_retry_of_every_task(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph(retries=3, backoff=0)
    g.add("zero", flaky, log, "zero", 0)
    g.add("one", flaky, log, "one", 1, kind="process")
    g.add("two", flaky, log, "two", 2, kind="inline")
    g.add("sum", lambda *xs: sum(xs), g.ref("zero"), g.ref("one"), g.ref("two"))
    results = g.run()
    assert results["sum"] == 1 + 2 + 3
    assert results.stats.tasks_retried == 3
    assert results.stats.tasks_run == 6 + 1  # 6 attempts, and "sum"


@pytest.mark.parametrize("on", ["graph", "runner"])
def test_a_worker_that_dies_is_retried_on_a_fresh_worker(on: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("crash", exits_first, log, "crash", kind="process", retries=1, backoff=0)
    g.add("after", record_and_return, log, "after", "ok", g.ref("crash"), kind="process")
    if on == "graph":
        results = g.run(keep="all")
    else:
        with Runner() as runner:
            results = runner.run(g, keep="all")
    first, second = pids(log, "crash")
    assert first != second  # a fresh worker
    assert results["crash"] == second
    assert results["after"] == "ok"
    assert results.stats.tasks_retried == 1
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"


def test_a_worker_that_dies_without_retries_fails_its_task_with_worker_died(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("crash", exits_first, log, "crash", kind="process")
    with pytest.raises(TaskFailed) as info:
        g.run()
    assert isinstance(info.value.__cause__, WorkerDied)
    assert info.value.attempts == 1
    assert len(pids(log, "crash")) == 1


def test_on_error_continue_retries_and_reports_what_still_failed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph(retries=2, backoff=0)
    g.add("flaky", flaky, log, "flaky", 1, kind="process")
    broken = g.add("broken", flaky, log, "broken", ALWAYS)
    g.add("child", record_and_return, log, "child", "never", broken)
    g.add("free", record_and_return, log, "free", "free")
    results = g.run(on_error="continue")
    assert (results["flaky"], results["free"]) == (2, "free")
    assert list(results.errors) == ["broken"]
    assert results.errors["broken"].attempts == 3
    assert results.skipped == ["child"]
    assert pids(log, "child") == []
    assert results.stats.tasks_retried == 1 + 2


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_on_error_raise_does_not_stop_the_run_at_a_failure_that_will_be_retried(
    kind: str, tmp_path: Path
) -> None:
    """One worker: the units queued behind the failed attempt still run."""
    log = tmp_path / "log"
    g = Graph()
    g.add("flaky", flaky, log, "flaky", 1, kind=kind, retries=1, backoff=0, priority=1)
    for i in range(6):
        g.add(f"q{i}", record_and_return, log, f"q{i}", i, kind=kind)
    results = g.run(on_error="raise", max_workers=1)
    assert results["flaky"] == 2
    assert [results[f"q{i}"] for i in range(6)] == list(range(6))
    assert sorted(line.split()[0] for line in lines(log)) == sorted(
        ["flaky", "flaky", *(f"q{i}" for i in range(6))]
    )


def test_on_error_raise_raises_once_the_retries_are_spent(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("done", record_and_return, log, "done", "done")
    g.add("broken", flaky, log, "broken", ALWAYS, kind="process", retries=2, backoff=0)
    with pytest.raises(TaskFailed) as info:
        g.run(on_error="raise", targets=["done", "broken"])
    assert info.value.key == "broken"
    assert info.value.attempts == 3
    assert info.value.results is not None
    assert info.value.results["done"] == "done"


# -- a Runner's shared runs ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_runner_retries_and_keeps_the_successful_value(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    a = g.add("a", flaky, log, "a", 2, kind=kind)
    g.add("b", record_and_return, log, "b", "b", a, kind=kind)
    with Runner() as runner:
        results = runner.run(g, keep="all", retries=2, backoff=0)
        assert (results["a"], results["b"]) == (3, "b")
        assert results.stats.tasks_retried == 2
        again = runner.run(g, targets=["a"])  # held: not run again
        assert again["a"] == 3
        assert len(pids(log, "a")) == 3


def test_a_runner_gives_every_run_its_own_retries(tmp_path: Path) -> None:
    """A failure is not kept: the next run tries again, with all its attempts."""
    log = tmp_path / "log"
    g = Graph()
    g.add("a", flaky, log, "a", 3, retries=1, backoff=0)
    with Runner() as runner:
        with pytest.raises(TaskFailed) as info:
            runner.run(g)
        assert info.value.attempts == 2
        assert runner.run(g)["a"] == 4  # attempts 3 (fails) and 4 (succeeds)
    assert len(pids(log, "a")) == 4


def test_a_run_that_joins_a_key_being_retried_gets_the_successful_value(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    inside = threading.Event()
    joined = threading.Event()

    def first_fails() -> int:
        n = attempt(log, "k")
        if n == 1:
            inside.set()
            assert joined.wait(WAIT)
            raise ValueError("first attempt")
        return n

    g = Graph()
    g.add("k", first_fails, retries=1, backoff=0)
    same = Graph()  # the same definition: a run of it joins the running "k"
    same.add("k", first_fails, retries=1, backoff=0)
    same.add("joined", joined.set, priority=-1)  # started after "k" was claimed
    out: list[dagexec.Results] = []
    with Runner() as runner:
        first = threading.Thread(target=lambda: out.append(runner.run(g)))
        first.start()
        try:
            assert inside.wait(WAIT)
            second = runner.run(same)
        finally:
            joined.set()
            first.join(WAIT)
        assert [r["k"] for r in out] == [2]
        assert second["k"] == 2  # not the first attempt's failure
    assert len(pids(log, "k")) == 2


# -- bad options -----------------------------------------------------------------------


def show(v: object) -> str:
    """A test id for an option value (classes by name: ids must not hold spaces)."""
    if isinstance(v, type):
        return v.__name__
    if isinstance(v, tuple):
        return f"({','.join(show(x) for x in v)})"
    return repr(v)


BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"retries": -1}, ValueError),
    ({"retries": 1.5}, ValueError),
    ({"retries": True}, ValueError),
    ({"retries": "2"}, ValueError),
    ({"retry_on": ValueError("x")}, TypeError),
    ({"retry_on": "ValueError"}, TypeError),
    ({"retry_on": ()}, TypeError),
    ({"retry_on": (ValueError, "int")}, TypeError),
    ({"backoff": "fast"}, TypeError),
    ({"backoff": -1}, TypeError),
    ({"backoff": math.nan}, TypeError),
    ({"backoff": math.inf}, TypeError),
    ({"timeout": 0}, ValueError),
    ({"timeout": -1}, ValueError),
    ({"timeout": math.nan}, ValueError),
    ({"timeout": "1"}, ValueError),
    ({"timeout": 1.0, "kind": "inline"}, ValueError),
    ({"timeout": math.inf}, ValueError),
    ({"priority": 1.5}, TypeError),
    ({"resources": {"gpu": 0}}, ValueError),
    ({"resources": ["gpu"]}, TypeError),
]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        pytest.param(o, e, id=",".join(f"{k}={show(v)}" for k, v in o.items()))
        for o, e in BAD_OPTIONS
    ],
)
def test_a_bad_task_option_raises_at_add_naming_the_task(
    options: dict[str, Any], error: type[Exception]
) -> None:
    g = Graph()
    with pytest.raises(error, match="task 'bad:key'"):
        g.add("bad:key", print, **options)
    assert "bad:key" not in g


def run_on_a_runner(g: Graph, **options: Any) -> dagexec.Results:
    with Runner() as runner:
        return runner.run(g, **options)


@pytest.mark.parametrize(
    ("where", "make"),
    [
        ("Graph()", lambda g: Graph(retries=-1)),
        ("Graph()", lambda g: Graph(retry_on=42)),
        ("run()", lambda g: g.run(retries="3")),
        ("run()", lambda g: g.run(backoff="slow")),
        ("run()", lambda g: g.run(retry_on=(ValueError, "x"))),
        ("timeout", lambda g: g.run(timeout=0)),
        ("timeout", lambda g: g.run(timeout=math.inf)),
        ("timeout", lambda g: g.run(timeout=math.nan)),
        ("timeout", lambda g: g.run(timeout="5")),
        ("limits", lambda g: g.run(limits={"gpu": -1})),
        ("run()", lambda g: run_on_a_runner(g, retries=-2)),
    ],
)
def test_bad_graph_and_run_options_raise_before_any_task_runs(
    where: str, make: Callable[[Graph], Any], tmp_path: Path
) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", record_and_return, log, "a", 1)
    g.add("p", record_and_return, log, "p", 1, kind="process")
    with pytest.raises(
        (TypeError, ValueError), match=where.replace("(", r"\(").replace(")", r"\)")
    ):
        make(g)
    assert lines(log) == []
