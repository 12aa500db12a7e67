"""Keys are never left pending by an interrupted task, and a value (held or in flight) is
shared only with callers whose inputs are defined the same way.

Timeouts on waits only bound a failure (a hang becomes a failure); they never order events.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dagexec import Graph, Runner

WAIT = 10.0


def _leaf(value: int) -> int:
    return value


def _plus_one(value: int) -> int:
    return value + 1


class _SlowB:
    """Builds ``a -> b`` where ``b`` says it started, then holds until ``go`` is set."""

    def __init__(self) -> None:
        self.b_started = threading.Event()
        self.go = threading.Event()

    def slow_plus_one(self, value: int) -> int:
        self.b_started.set()
        assert self.go.wait(WAIT)
        return value + 1

    def build(self, a: int) -> Graph:
        g = Graph()
        g.add("b", self.slow_plus_one, g.add("a", _leaf, a))
        return g


class _FirstCallRaises:
    """Raise ``exc`` on the first call, then return ``"ok"``."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise self.exc
        return "ok"


# -- once-cells left pending after a BaseException ------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_an_inline_task_interrupted_in_a_shared_run_does_not_leave_its_key_stuck(
    exc: type[BaseException],
) -> None:
    """The cell of an inline task that raised a BaseException is settled or released."""
    flaky = _FirstCallRaises(exc)
    g = Graph()
    g.add("k", flaky, kind="inline")
    with Runner() as runner:
        with pytest.raises(exc):
            runner.run(g)
        assert runner.submit("k", flaky, kind="inline").result(timeout=WAIT) == "ok"


@pytest.mark.timeout(30)
def test_an_interrupted_inline_submit_does_not_leave_its_key_stuck() -> None:
    """Runner.submit running a task in the caller's thread frees the key on Ctrl-C."""
    flaky = _FirstCallRaises(KeyboardInterrupt)
    with Runner() as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.submit("k", flaky, kind="inline")
        assert runner.submit("k", flaky, kind="inline").result(timeout=WAIT) == "ok"


@pytest.mark.timeout(30)
def test_a_submit_from_a_worker_that_raises_system_exit_does_not_leave_its_key_stuck() -> None:
    """A nested submit run on the submitting worker frees its key on SystemExit."""
    flaky = _FirstCallRaises(SystemExit)
    with Runner(max_workers={"thread": 1}) as runner:

        def outer() -> str:
            return runner.submit("inner", flaky).result(timeout=WAIT)

        assert runner.submit("outer", outer).exception(timeout=WAIT) is not None
        assert runner.submit("inner", flaky).result(timeout=WAIT) == "ok"


# -- held values reused although their inputs changed ---------------------------------


def test_held_values_sharing_an_input_are_each_checked_against_their_own_lineage() -> None:
    """A held value computed from old inputs is not reused because another held value
    that shares one of its intermediates happened to be checked first."""

    def build(y: int, targets: tuple[str, ...]) -> Graph:
        g = Graph()
        x = g.add("x", _plus_one, g.add("y", _leaf, y))
        for key in targets:
            g.add(key, _plus_one, x)
        return g

    with Runner() as runner:
        assert runner.run(build(1, ("p",)))["p"] == 3  # p held: x <- y = 1
        assert runner.run(build(5, ("q",)))["q"] == 7  # q held: x <- y = 5
        results = runner.run(build(1, ("p", "q")))
        # p's lineage has x unchanged; q's x <- y = 5 must still be looked at.
        assert (results["p"], results["q"]) == (3, 3)


@pytest.mark.timeout(30)
def test_a_value_held_by_a_run_that_joined_it_records_what_it_was_computed_from() -> None:
    """A key one run computes as an intermediate and another joins as a target is not
    reused later when its inputs are defined differently."""
    slow = _SlowB()
    b_started, go, build = slow.b_started, slow.go, slow.build

    owner_graph = build(1)
    owner_graph.add("c", _leaf, owner_graph.ref("b"))  # b is an intermediate: not held
    joiner_graph = build(1)
    tick = joiner_graph.add("tick", _leaf, 0)
    # Ready with b, started in the same pump: by the time it reports, b has been joined.
    joiner_graph.add("probe", lambda _: go.set(), tick, kind="inline")

    outcome: dict[str, Any] = {}

    def drive(name: str, g: Graph, targets: list[str]) -> None:
        try:
            outcome[name] = runner.run(g, targets=targets)
        except BaseException as exc:  # recorded for the assertion below
            outcome[name] = exc

    with Runner(max_workers={"thread": 4}) as runner:
        assert runner.run(build(1), targets=["a"])["a"] == 1  # a held, so b is ready at once
        owner = threading.Thread(target=drive, args=("owner", owner_graph, ["c"]))
        owner.start()
        try:
            assert b_started.wait(WAIT)
            drive("joiner", joiner_graph, ["b", "probe"])
        finally:
            go.set()
            owner.join(WAIT)
        assert outcome["owner"]["c"] == 2
        assert outcome["joiner"]["b"] == 2
        # The joiner made b held: b still records what it was computed from, so a
        # changed input is noticed.
        assert runner.run(build(5), targets=["b"])["b"] == 6


@pytest.mark.timeout(30)
def test_a_run_does_not_join_a_key_in_flight_that_is_computed_from_other_inputs() -> None:
    """Joining an execution in flight checks its inputs as reuse of a held value does."""
    slow = _SlowB()
    b_started, go, build = slow.b_started, slow.go, slow.build

    other = build(5)
    tick = other.add("tick", _leaf, other.ref("a"))  # ready with b once a is done
    other.add("probe", lambda _: go.set(), tick, kind="inline")

    outcome: dict[str, Any] = {}

    def drive(g: Graph) -> None:
        try:
            outcome["first"] = runner.run(g, targets=["b"])
        except BaseException as exc:  # recorded for the assertion below
            outcome["first"] = exc

    with Runner(max_workers={"thread": 4}) as runner:
        first = threading.Thread(target=drive, args=(build(1),))
        first.start()
        try:
            assert b_started.wait(WAIT)
            second = runner.run(other, targets=["b", "probe"])
        finally:
            go.set()
            first.join(WAIT)
        assert outcome["first"]["b"] == 2
        assert second["b"] == 6
