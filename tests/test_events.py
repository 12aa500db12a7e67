"""``run(on_event=...)`` end to end on real pools: what each task is told to the callback,
in which order, with which worker and times, and how that agrees with ``results.stats``.

Every task reports where it ran itself (its thread's name, its process's pid), so the
events are checked against the truth, not against the runner's own bookkeeping. Runs are
stopped by events the tasks cause (a thread task entering, a process task arriving at a
Gate), never by sleeps; every wait is bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import psutil
import pytest
from _control import WAIT, Canceller, Gate, attempt, flaky, held, lines

from dagexec import Cancelled, Graph, Results, Runner, TaskEvent, TaskFailed

FINAL = {"finished", "failed", "skipped", "cached", "cancelled"}


def where(*deps: object) -> tuple[str, int]:
    """Return the name of the thread and the pid that ran this task."""
    return threading.current_thread().name, os.getpid()


async def where_async(*deps: object) -> tuple[str, int]:
    await asyncio.sleep(0)
    return threading.current_thread().name, os.getpid()


def value(v: object, *after: object) -> object:
    return v


def logged(log: Path, tag: str, *after: object) -> str:
    attempt(log, tag)
    return tag


def boom(*after: object) -> None:
    raise ValueError("boom")


class Hang:
    """A thread task that stays until released; says when it entered."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *after: object) -> str:
        self.entered.set()
        self.release.wait(WAIT)
        return "late"


class Recorder:
    """An on_event callback that keeps every event and the thread it was handed on."""

    def __init__(self) -> None:
        self.events: list[TaskEvent] = []
        self.threads: set[int] = set()

    def __call__(self, event: TaskEvent) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(event)

    def of(self, key: Hashable) -> list[TaskEvent]:
        return [e for e in self.events if e.key == key]

    def types(self, key: Hashable) -> list[str]:
        return [e.type for e in self.of(key)]

    def keys(self, type_: str) -> set[Hashable]:
        return {e.key for e in self.events if e.type == type_}

    def one(self, key: Hashable, type_: str) -> TaskEvent:
        found = [e for e in self.of(key) if e.type == type_]
        assert len(found) == 1, f"{key!r}: {self.types(key)}"
        return found[0]


def assert_times_never_go_back(recorder: Recorder) -> None:
    """Per key, the events arrive in the order they happened."""
    for key in {e.key for e in recorder.events}:
        times = [e.time for e in recorder.of(key)]
        assert times == sorted(times), f"{key!r}: {recorder.types(key)} at {times}"


# -- a mixed graph: every kind, a chain, a fan-in ---------------------------------------


def mixed_graph() -> Graph:
    g = Graph()
    root = g.add("root", where)
    p = g.add("p", where, root, kind="process")
    i = g.add("i", where, root, kind="inline")
    s = g.add("s", where_async, root)
    c1 = g.add("c1", where, root)  # c1 -> c2 -> c3: a chain run back to back
    c2 = g.add("c2", where, c1)
    c3 = g.add("c3", where, c2)
    g.add("join", where, p, i, s, c3)
    return g


KINDS = {
    "root": "thread",
    "p": "process",
    "i": "inline",
    "s": "async",
    "c1": "thread",
    "c2": "thread",
    "c3": "thread",
    "join": "thread",
}


class ChildCheck(Recorder):
    """A Recorder that checks, while the run's workers are alive, that each "pid N"
    worker is a child process of this one."""

    def __init__(self) -> None:
        super().__init__()
        self.children: dict[str, bool] = {}

    def __call__(self, event: TaskEvent) -> None:
        super().__call__(event)
        if event.worker.startswith("pid ") and event.worker not in self.children:
            kids = {p.pid for p in psutil.Process().children(recursive=True)}
            self.children[event.worker] = int(event.worker[4:]) in kids


def run_mixed(how: str, recorder: Recorder) -> Results:
    g = mixed_graph()
    if how == "graph":
        return g.run(keep="all", on_event=recorder)
    if how == "runner":
        with Runner() as runner:
            return runner.run(g, keep="all", on_event=recorder)
    return asyncio.run(g.arun(keep="all", on_event=recorder))


@pytest.mark.parametrize("how", ["graph", "runner", "arun"])
def test_each_task_is_queued_started_and_finished_where_it_ran(how: str) -> None:
    recorder = ChildCheck()
    caller = threading.get_ident()
    results = run_mixed(how, recorder)
    assert set(results) == set(KINDS)
    stats = results.stats.tasks
    for key, kind in KINDS.items():
        assert recorder.types(key) == ["queued", "started", "finished"], key
        queued, started, finished = recorder.of(key)
        assert {e.kind for e in recorder.of(key)} == {kind}, key
        assert {e.attempt for e in recorder.of(key)} == {1}, key
        assert {e.error for e in recorder.of(key)} == {None}, key
        assert queued.worker == "", key
        assert queued.time <= started.time <= finished.time, key
        # Where it ran, as the task itself saw it.
        thread_name, pid = results[key]
        expected = f"pid {pid}" if kind == "process" else thread_name
        assert started.worker == finished.worker == expected, key
        # The same times as the run's statistics.
        record = stats[key]
        assert (record.kind, record.worker, record.status) == (kind, expected, "finished")
        assert (record.started, record.finished) == (started.time, finished.time), key
        assert record.queued <= queued.time <= record.started, key
    for key in ("root", "c1", "c2", "c3", "join"):
        assert recorder.of(key)[1].worker.startswith("dagexec-thread-"), key
    pid = results["p"][1]
    assert pid != os.getpid()
    assert recorder.children == {f"pid {pid}": True}  # a live child process while it ran
    if how != "arun":
        assert results["i"][0] == threading.current_thread().name  # inline: the caller
        assert recorder.threads == {caller}
    else:
        assert len(recorder.threads) == 1  # the run's own thread
    # A chain runs back to back on one worker, each key still reported on its own.
    chain = [stats[k] for k in ("c1", "c2", "c3")]
    assert len({r.worker for r in chain}) == 1
    assert chain[0].finished <= chain[1].started <= chain[1].finished <= chain[2].started
    assert_times_never_go_back(recorder)


# -- retries, failures and what they keep from running ----------------------------------


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_retries_failures_and_skipped_dependents(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("flaky", flaky, log, "flaky", 2, kind=kind, retries=2, backoff=0)
    doomed = g.add("doomed", flaky, log, "doomed", 1_000, kind=kind, retries=1, backoff=0)
    child = g.add("child", value, 1, doomed)
    g.add("grandchild", value, 2, child)
    recorder = Recorder()
    results = g.run(on_error="continue", on_event=recorder)

    assert recorder.types("flaky") == [
        *["queued", "started", "retried"] * 2,
        *["queued", "started", "finished"],
    ]
    assert [e.attempt for e in recorder.of("flaky")] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    for n, retried in enumerate([e for e in recorder.of("flaky") if e.type == "retried"], 1):
        assert isinstance(retried.error, ValueError)
        assert str(retried.error) == f"flaky attempt {n}"  # the attempt's own exception
    assert results["flaky"] == 3

    assert recorder.types("doomed") == [
        "queued",
        "started",
        "retried",
        "queued",
        "started",
        "failed",
    ]
    failed = recorder.of("doomed")[-1]
    assert failed.attempt == 2
    assert isinstance(failed.error, TaskFailed)
    assert failed.error.key == "doomed"
    assert failed.error.attempts == 2
    assert isinstance(failed.error.__cause__, ValueError)
    assert failed.error is results.errors["doomed"]
    for key in ("child", "grandchild"):
        assert recorder.types(key) == ["skipped"]
        skipped = recorder.of(key)[0]
        assert skipped.error is failed.error
        assert skipped.worker == ""
    for key in ("flaky", "doomed"):
        workers = {e.worker for e in recorder.of(key) if e.type != "queued"}
        prefix = "pid " if kind == "process" else "dagexec-thread-"
        assert all(w.startswith(prefix) for w in workers), workers

    stats = results.stats
    assert (stats.tasks["flaky"].attempts, stats.tasks["flaky"].status) == (3, "finished")
    assert (stats.tasks["doomed"].attempts, stats.tasks["doomed"].status) == (2, "failed")
    assert stats.tasks["flaky"].started == recorder.of("flaky")[-2].time  # the last attempt
    assert "child" not in stats.tasks
    assert stats.tasks_retried == 3
    assert_times_never_go_back(recorder)


def test_a_run_that_fails_fast_ends_every_queued_task_with_a_final_event() -> None:
    # Tasks queued but dropped at the first failure must not stay open for a consumer
    # that counts open tasks.
    g = Graph()
    g.add("x", boom)
    for i in range(4):
        g.add(f"y{i}", value, i)
    recorder = Recorder()
    with pytest.raises(TaskFailed):
        g.run(max_workers=1, on_event=recorder)
    for key in g:
        types = recorder.types(key)
        assert types[:1] == ["queued"], (key, types)
        assert sum(t in FINAL for t in types) == 1, (key, types)


# -- cancellation ------------------------------------------------------------------------


def assert_cancelled_exactly_what_did_not_finish(recorder: Recorder, keys: list[Hashable]) -> None:
    for key in keys:
        final = [t for t in recorder.types(key) if t in FINAL]
        assert final in (["finished"], ["cancelled"]), (key, recorder.types(key))
        assert recorder.types(key)[-1] == final[0], (key, recorder.types(key))
    for event in recorder.events:
        if event.type == "cancelled":
            assert event.worker == ""
            assert event.error is None


def mermaid_classes(text: str) -> dict[str, str]:
    """Map each node's key (its label's first line) to its Mermaid class."""
    labels: dict[str, str] = {}
    classes: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("    n") and '"' in line:
            node_id = line.split('"')[0].strip().rstrip("[(")
            labels[node_id] = line.split('"')[1].split("<br/>")[0]
        elif parts[:1] == ["class"]:
            for node_id in parts[1].split(","):
                classes[node_id] = parts[2]
    return {labels[node_id]: cls for node_id, cls in classes.items()}


def test_a_cancelled_run_reports_what_never_finished() -> None:
    hang = Hang()
    recorder = Recorder()
    with Gate() as gate, Runner(max_workers={"thread": 1, "process": 1}) as runner:
        g = Graph()
        done = g.add("done", value, 1)
        g.add("hold", hang, done)  # two dependents: "done" is not chained to "hold"
        g.add("after", value, 2, g.ref("hold"))
        g.add("sib", value, 3, done)
        pquick = g.add("pquick", value, 4, kind="process")
        p = g.add("p", held, gate.port, "p", pquick, kind="process")
        g.add("pafter", value, 5, p)

        def both_hold() -> None:
            hang.entered.wait(WAIT)
            gate.arrivals(1)

        try:
            with Canceller(runner, both_hold), pytest.raises(Cancelled) as info:
                runner.run(g, on_event=recorder)
        finally:
            hang.release.set()
    keys = list(g)
    assert_cancelled_exactly_what_did_not_finish(recorder, keys)
    # "done" and "pquick" finished before the tasks that waited on them began.
    assert {"done", "pquick"} <= recorder.keys("finished")
    assert {"hold", "after", "p", "pafter"} <= recorder.keys("cancelled")
    results = info.value.results
    assert results is not None
    shown = mermaid_classes(results.to_mermaid())
    assert {k for k, c in shown.items() if c == "cancelled"} == recorder.keys("cancelled")
    assert {k for k, c in shown.items() if c == "finished"} == recorder.keys("finished")
    assert set(shown) == set(keys)


def test_a_run_past_its_timeout_reports_what_never_finished() -> None:
    hang = Hang()
    recorder = Recorder()
    with Gate() as gate:
        g = Graph()
        done = g.add("done", value, 1)
        g.add("hold", hang, done)
        g.add("p", held, gate.port, "p", done, kind="process")
        g.add("join", value, 2, g.ref("hold"), g.ref("p"))
        try:
            with pytest.raises(Cancelled) as info:
                g.run(timeout=0.5, on_event=recorder)  # held tasks: it can only time out
        finally:
            hang.release.set()
    assert_cancelled_exactly_what_did_not_finish(recorder, list(g))
    assert {"hold", "p", "join"} <= recorder.keys("cancelled")
    results = info.value.results
    assert results is not None
    shown = mermaid_classes(results.to_mermaid())
    assert {k for k, c in shown.items() if c == "cancelled"} == recorder.keys("cancelled")


def test_a_chained_task_that_finished_before_a_cancel_is_not_reported_cancelled() -> None:
    # A chain's keys reach the loop only when the whole chain returns; "a", which
    # returned before the cancel, must still not be reported "cancelled".
    hang = Hang()
    recorder = Recorder()
    with Runner(max_workers=1) as runner:
        g = Graph()
        a = g.add("a", value, 1)  # a -> b -> c: one chain
        b = g.add("b", hang, a)
        g.add("c", value, 2, b)

        try:  # "b" hangs: "a" has returned, "b" has its value
            with (
                Canceller(runner, lambda: hang.entered.wait(WAIT)),
                pytest.raises(Cancelled) as info,
            ):
                runner.run(g, on_event=recorder)
        finally:
            hang.release.set()
    assert recorder.keys("cancelled") >= {"b", "c"}
    assert "cancelled" not in recorder.types("a"), recorder.types("a")
    results = info.value.results
    assert results is not None
    assert mermaid_classes(results.to_mermaid())["a"] != "cancelled"


# -- values reused: cached ---------------------------------------------------------------


def test_a_second_run_on_a_runner_reports_its_targets_cached(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with Runner() as runner:
        g = Graph()
        a = g.add("a", logged, log, "a")
        g.add("b", logged, log, "b", a)
        g.add("c", logged, log, "c", a, kind="process")
        first = runner.run(g)
        recorder = Recorder()
        second = runner.run(g, on_event=recorder)
    assert dict(second) == dict(first) == {"b": "b", "c": "c"}
    assert sorted(line.split()[0] for line in lines(log)) == ["a", "b", "c"]  # once each
    assert sorted(e.key for e in recorder.events) == ["b", "c"]
    for key, kind in (("b", "thread"), ("c", "process")):
        event = recorder.one(key, "cached")
        assert (event.kind, event.worker, event.attempt, event.error) == (kind, "", 1, None)
        record = second.stats.tasks[key]
        assert (record.status, record.worker, record.attempts) == ("cached", "", 1)
        assert record.started == record.finished == event.time
    assert second.stats.critical_path == []  # reused values waited for nothing
    assert set(mermaid_classes(second.to_mermaid()).values()) == {"cached"}


def test_joining_a_key_another_caller_computes_reports_it_cached() -> None:
    hang = Hang()
    recorder = Recorder()
    with Runner() as runner:
        fut = runner.submit("slow", hang)
        try:
            assert hang.entered.wait(WAIT)
            g = Graph()
            g.add("use", value, "used", g.add("slow", hang))

            def release_once_joined(event: TaskEvent) -> None:
                recorder(event)
                if event.type == "cached":
                    hang.release.set()

            results = runner.run(g, on_event=release_once_joined)
        finally:
            hang.release.set()
        assert fut.result(WAIT) == "late"
    assert results["use"] == "used"
    assert recorder.types("slow") == ["queued", "cached"]
    assert recorder.types("use") == ["queued", "started", "finished"]
    assert results.stats.tasks["slow"].status == "cached"


# -- the callback ------------------------------------------------------------------------


def test_a_raising_callback_is_reported_once_and_the_run_goes_on() -> None:
    seen: list[TaskEvent] = []

    def raising(event: TaskEvent) -> None:
        seen.append(event)
        raise KeyError("in the callback")

    g = Graph()
    a = g.add("first", value, 1)
    g.add("second", value, 2, a)
    g.add("third", value, 3, a, kind="inline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = g.run(on_event=raising)
    assert dict(results) == {"second": 2, "third": 3}
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    text = str(ours[0].message)
    assert "on_event" in text
    assert f"{seen[0].type!r} event of task {seen[0].key!r}" in text
    assert "KeyError" in text
    assert len(seen) == 3 * 3  # every event still handed over


def test_the_callback_may_call_back_into_the_runner() -> None:
    problems: list[BaseException] = []
    got: list[Any] = []
    with Runner(max_workers=1) as runner:

        def reentrant(event: TaskEvent) -> None:
            if event.type != "finished" or event.key != "a":
                return
            try:  # an exception here would only be a warning: keep it for the test
                got.append(runner.submit("extra", value, 42).result(timeout=WAIT))
                inner = Graph()
                inner.add("inner", value, 7, kind="process")
                got.append(dict(runner.run(inner)))
            except BaseException as exc:
                problems.append(exc)

        g = Graph()
        a = g.add("a", value, 1)
        g.add("b", value, 2, a)
        g.add("c", value, 3, a)
        results = runner.run(g, on_event=reentrant)
        assert runner.submit("extra", value, 42).result(timeout=WAIT) == 42  # held
    assert problems == []
    assert got == [42, {"inner": 7}]
    assert dict(results) == {"b": 2, "c": 3}


def run_on_runner(g: Graph, kw: dict[str, Any]) -> object:
    with Runner() as runner:
        return runner.run(g, **kw)


async def arun_on_runner(g: Graph, kw: dict[str, Any]) -> object:
    with Runner() as runner:
        return await runner.arun(g, **kw)


RUNS: dict[str, Callable[[Graph, dict[str, Any]], object]] = {
    "Graph.run": lambda g, kw: g.run(**kw),
    "Runner.run": run_on_runner,
    "Graph.arun": lambda g, kw: asyncio.run(g.arun(**kw)),
    "Runner.arun": lambda g, kw: asyncio.run(arun_on_runner(g, kw)),
}


@pytest.mark.parametrize("how", list(RUNS))
@pytest.mark.parametrize("bad", ["x", 3, [print]])
def test_an_on_event_that_is_not_callable_is_refused_before_any_task_runs(
    how: str, bad: object, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", logged, log, "a")
    g.add("p", logged, log, "p", kind="process")
    with pytest.raises(TypeError, match="on_event"):
        RUNS[how](g, {"on_event": bad})
    assert lines(log) == []
