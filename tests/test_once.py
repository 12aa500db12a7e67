"""OnceMap on its own: the exactly-once cell map, driven by real threads.

Deadlock checks run the suspect call on a helper thread and give it a bounded join, so a
lock taken twice fails the test with a message instead of hanging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from dagexec import DuplicateKeyError
from dagexec._graph import _NO_KWARGS, _Task
from dagexec._once import Cell, OnceMap

N_THREADS = 32
JOIN = 10.0  # seconds: a bound on a call that must not block, not a synchronisation


def held_values(once: OnceMap, tasks: dict[Any, Any]) -> dict[Any, Any]:
    """The values of the cells ``once.held`` reuses for ``tasks``."""
    return {k: cell.value for k, cell in once.held(tasks).items()}


def _fn(*args: Any) -> Any:
    return args


def _other_fn(*args: Any) -> Any:
    return args


def task(key: Hashable, fn: Callable[..., Any] = _fn, *args: Any, kind: str = "thread") -> _Task:
    """Build a task definition as Runner.submit does (no dependencies)."""
    return _Task(key, fn, args, _NO_KWARGS, kind, (), (), False)


def finishes(target: Callable[[], None]) -> bool:
    """Run ``target`` on a helper thread and say whether it returned in time."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, name="once-test-helper")
    thread.start()
    thread.join(JOIN)
    if errors:
        raise errors[0]
    return not thread.is_alive()


# -- claim -----------------------------------------------------------------------------


@pytest.mark.parametrize("same_object", [True, False], ids=["one-task-object", "equal-tasks"])
def test_claim_has_exactly_one_owner_among_many_threads(same_object: bool) -> None:
    once = OnceMap()
    shared = task("k", _fn, 1, 2)
    barrier = threading.Barrier(N_THREADS)
    claims: list[tuple[Cell, bool]] = []

    def claimer() -> None:
        t = shared if same_object else task("k", _fn, 1, 2)
        barrier.wait()
        claims.append(once.claim(t))

    threads = [threading.Thread(target=claimer) for _ in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(claims) == N_THREADS
    assert sum(owner for _, owner in claims) == 1
    cells = {id(cell) for cell, _ in claims}
    assert len(cells) == 1
    assert len(once) == 1


def test_claim_of_a_new_key_owns_it_and_a_second_claim_does_not() -> None:
    once = OnceMap()
    cell, owner = once.claim(task("a"))
    again, owner_again = once.claim(task("a"))
    other, other_owner = once.claim(task("b"))
    assert owner
    assert not owner_again
    assert other_owner
    assert again is cell
    assert other is not cell
    assert not cell.done


def test_claim_compares_definitions_outside_the_lock() -> None:
    """A user __eq__ that touches the map (any user code) must not find the lock held."""
    once = OnceMap()
    seen: list[int] = []

    class Touchy:
        def __eq__(self, other: object) -> bool:
            seen.append(len(once))  # takes the map's lock
            return isinstance(other, Touchy)

        __hash__ = object.__hash__

    cell, owner = once.claim(task("k", _fn, Touchy()))
    assert owner
    result: list[tuple[Cell, bool]] = []
    assert finishes(lambda: result.append(once.claim(task("k", _fn, Touchy())))), (
        "claim deadlocked: it ran the definition's __eq__ while holding its lock"
    )
    assert seen, "claim did not compare the two definitions"
    assert result == [(cell, False)]


# -- subscribe and settle --------------------------------------------------------------


def test_subscribers_before_settle_are_called_once_with_the_outcome() -> None:
    once = OnceMap()
    cell, _ = once.claim(task("k"))
    got: list[tuple[str, bool, Any]] = []
    for name in ("first", "second"):
        once.subscribe(cell, lambda ok, value, name=name: got.append((name, ok, value)))
    assert got == []
    value = object()
    once.settle(cell, True, value)
    assert got == [("first", True, value), ("second", True, value)]
    assert cell.done
    assert cell.ok


@pytest.mark.parametrize(
    ("ok", "hold"),
    [(True, True), (False, True), (False, False)],
    ids=["held", "failure", "failure-not-held"],
)
def test_subscribe_after_settle_calls_back_immediately_with_the_outcome(
    ok: bool, hold: bool
) -> None:
    """An owner may subscribe after settling; a failure or a held value is still there."""
    once = OnceMap()
    cell, _ = once.claim(task("k"), hold=hold)
    outcome: Any = object() if ok else ValueError("boom")
    once.settle(cell, ok, outcome)
    got: list[tuple[bool, Any, threading.Thread]] = []
    once.subscribe(cell, lambda ok, v: got.append((ok, v, threading.current_thread())))
    # Called before subscribe returned, on the subscribing thread, with the outcome.
    assert got == [(ok, outcome, threading.current_thread())]


def test_a_settled_cell_nobody_holds_does_not_keep_its_value_alive() -> None:
    """Its subscribers got the value; the cell itself (still referenced by its owner until
    the owner's loop catches up) must not hold it past the release rule."""
    once = OnceMap()
    cell, _ = once.claim(task("k"), hold=False)
    got: list[Any] = []
    once.subscribe(cell, lambda ok, v: got.append(v))
    value = object()
    once.settle(cell, True, value)
    assert got == [value]
    assert cell.value is None
    assert len(once) == 0


def test_settle_calls_subscribers_outside_the_lock() -> None:
    """A callback that claims on the same map (as a run's sink can) must not deadlock."""
    once = OnceMap()
    cell, _ = once.claim(task("first"), hold=True)
    inside: list[Any] = []

    def callback(ok: bool, value: Any) -> None:
        inside.append(once.claim(task("next"))[1])
        inside.append(len(once))
        once.subscribe(cell, lambda ok, v: inside.append(("late", ok, v)))

    once.subscribe(cell, callback)
    assert finishes(lambda: once.settle(cell, True, "v")), (
        "settle deadlocked: it called a subscriber while holding its lock"
    )
    assert inside == [True, 2, ("late", True, "v")]


def test_every_subscriber_is_called_exactly_once_when_racing_settle() -> None:
    once = OnceMap()
    cell, _ = once.claim(task("k"), hold=True)
    barrier = threading.Barrier(N_THREADS + 1)
    calls: list[int] = []
    value = object()

    def subscriber(i: int) -> None:
        barrier.wait()
        once.subscribe(cell, lambda ok, v: calls.append(i) if ok and v is value else None)

    def settler() -> None:
        barrier.wait()
        once.settle(cell, True, value)

    threads = [threading.Thread(target=subscriber, args=(i,)) for i in range(N_THREADS)]
    threads.append(threading.Thread(target=settler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == list(range(N_THREADS))


# -- what stays in the map -------------------------------------------------------------


def test_a_value_is_kept_only_when_held() -> None:
    once = OnceMap()
    dropped = task("dropped")
    kept = task("kept")
    c1, _ = once.claim(dropped, hold=False)
    c2, _ = once.claim(kept, hold=True)
    v1, v2 = object(), object()
    once.settle(c1, True, v1)
    once.settle(c2, True, v2)

    assert len(once) == 1
    assert held_values(once, {"dropped": dropped, "kept": kept}) == {"kept": v2}
    again, owner = once.claim(dropped)
    assert owner
    assert again is not c1
    same, owner = once.claim(kept)
    assert not owner
    assert same is c2
    assert same.value is v2


def test_a_later_claim_with_hold_keeps_the_value() -> None:
    once = OnceMap()
    t = task("k")
    cell, owner = once.claim(t, hold=False)
    assert owner
    joined, owner = once.claim(t, hold=True)
    assert joined is cell
    assert not owner
    value = object()
    once.settle(cell, True, value)
    assert held_values(once, {"k": t}) == {"k": value}


def test_failures_leave_the_map_even_when_held() -> None:
    once = OnceMap()
    t = task("k")
    cell, _ = once.claim(t, hold=True)
    got: list[tuple[bool, Any]] = []
    once.subscribe(cell, lambda ok, v: got.append((ok, v)))
    error = RuntimeError("boom")
    once.settle(cell, False, error)

    assert got == [(False, error)]
    assert len(once) == 0
    assert held_values(once, {"k": t}) == {}
    retry, owner = once.claim(t, hold=True)
    assert owner
    assert retry is not cell


def test_held_matches_key_and_definition() -> None:
    once = OnceMap()
    t = task("k", _fn, 1)
    cell, _ = once.claim(t, hold=True)
    once.settle(cell, True, "v")
    assert held_values(once, {"k": task("k", _fn, 1)}) == {"k": "v"}  # equal, not identical
    assert held_values(once, {"k": task("k", _fn, 2)}) == {}
    assert held_values(once, {"k": task("k", _other_fn, 1)}) == {}
    assert held_values(once, {"k": task("k", _fn, 1, kind="process")}) == {}
    assert held_values(once, {"other": task("other", _fn, 1)}) == {}


def test_held_ignores_cells_in_flight() -> None:
    once = OnceMap()
    t = task("k")
    once.claim(t, hold=True)
    assert held_values(once, {"k": t}) == {}


# -- changed definitions ---------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [task("k", _other_fn, 1), task("k", _fn, 2), task("k", _fn, 1, kind="process")],
    ids=["fn", "args", "kind"],
)
def test_a_different_definition_replaces_a_settled_cell(changed: _Task) -> None:
    once = OnceMap()
    original = task("k", _fn, 1)
    old, _ = once.claim(original, hold=True)
    once.settle(old, True, "old")

    new, owner = once.claim(changed, hold=True)
    assert owner
    assert new is not old
    assert new.task is changed
    assert not new.done
    assert held_values(once, {"k": original}) == {}
    once.settle(new, True, "new")
    assert held_values(once, {"k": changed}) == {"k": "new"}
    assert old.value == "old"  # a caller still holding the old cell keeps its value


@pytest.mark.parametrize(
    "changed",
    [task("k", _other_fn, 1), task("k", _fn, 2), task("k", _fn, 1, kind="process")],
    ids=["fn", "args", "kind"],
)
def test_a_different_definition_of_an_in_flight_cell_raises(changed: _Task) -> None:
    once = OnceMap()
    cell, _ = once.claim(task("k", _fn, 1), hold=True)
    with pytest.raises(DuplicateKeyError) as info:
        once.claim(changed)
    assert info.value.key == "k"
    # The running cell is untouched and still settles for its callers.
    assert once.claim(task("k", _fn, 1)) == (cell, False)
    once.settle(cell, True, "v")
    assert held_values(once, {"k": task("k", _fn, 1)}) == {"k": "v"}


def test_an_eq_that_raises_counts_as_a_different_definition() -> None:
    once = OnceMap()

    class Ambiguous:
        def __eq__(self, other: object) -> bool:
            raise ValueError("truth value is ambiguous")

        __hash__ = object.__hash__

    cell, _ = once.claim(task("k", _fn, Ambiguous()), hold=True)
    with pytest.raises(DuplicateKeyError):
        once.claim(task("k", _fn, Ambiguous()))
    once.settle(cell, True, "v")
    replaced, owner = once.claim(task("k", _fn, Ambiguous()))
    assert owner
    assert replaced is not cell


# -- clear -----------------------------------------------------------------------------


def test_clear_drops_settled_cells_and_keeps_in_flight_ones() -> None:
    once = OnceMap()
    settled_task, running_task = task("settled"), task("running")
    settled, _ = once.claim(settled_task, hold=True)
    once.settle(settled, True, "s")
    running, _ = once.claim(running_task, hold=True)

    once.clear()

    assert len(once) == 1
    assert held_values(once, {"settled": settled_task}) == {}
    assert once.claim(running_task) == (running, False)
    recomputed, owner = once.claim(settled_task)
    assert owner
    assert recomputed is not settled
    # The in-flight cell still settles for its callers, and is held as asked.
    got: list[Any] = []
    once.subscribe(running, lambda ok, v: got.append(v))
    once.settle(running, True, "r")
    assert got == ["r"]
    assert held_values(once, {"running": running_task}) == {"running": "r"}
