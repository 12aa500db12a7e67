"""RunState, the pure state machine of one run, driven by hand: no threads, no pools."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import pytest

from dagexec import CycleError, Graph, MissingDependencyError
from dagexec._state import RunState


def ident(x: Any) -> Any:
    return x


def pack(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def pair(x: Any, y: Any) -> tuple[Any, Any]:
    return x, y


def state_of(
    g: Graph,
    targets: Iterable[Hashable] | None = None,
    held: Mapping[Hashable, Any] | None = None,
    keep_all: bool = False,
) -> RunState:
    return RunState(g._tasks, targets, {} if held is None else held, keep_all)


def drain(state: RunState) -> list[Hashable]:
    """Run every ready task in this thread, first come first served; return the order."""
    order: list[Hashable] = []
    pending = list(state.ready())
    while pending:
        key = pending.pop(0)
        args, kwargs = state.args(state.tasks[key])
        state.finish(key, state.tasks[key].fn(*args, **kwargs))
        order.append(key)
        pending += state.ready()
    return order


def diamond() -> Graph:
    """a and b feed c; c feeds d."""
    g = Graph()
    a, b = g.add("a", ident, 1), g.add("b", ident, 2)
    c = g.add("c", pair, a, b)
    g.add("d", ident, c)
    return g


def linear(*kinds: str) -> Graph:
    """k0 -> k1 -> ... with the given kinds."""
    g = Graph()
    prev = g.add("k0", ident, 0, kind=kinds[0])
    for i, kind in enumerate(kinds[1:], 1):
        prev = g.add(f"k{i}", ident, prev, kind=kind)
    return g


# -- what becomes ready, and when --------------------------------------------------------


def test_initially_ready_are_the_roots() -> None:
    state = state_of(diamond())
    assert set(state.ready()) == {"a", "b"}


def test_a_key_is_handed_out_once() -> None:
    state = state_of(diamond())
    state.ready()
    assert state.ready() == ()


def test_a_key_becomes_ready_when_its_last_dependency_finishes() -> None:
    state = state_of(diamond())
    state.ready()
    state.finish("a", 1)
    assert state.ready() == ()
    state.finish("b", 2)
    assert state.ready() == ("c",)


def test_no_stage_barrier_between_independent_branches() -> None:
    g = Graph()
    g.add("b", ident, g.add("a", ident, 1))
    g.add("d", ident, g.add("c", ident, 2))  # c is slow: it never finishes here
    state = state_of(g)
    assert set(state.ready()) == {"a", "c"}
    state.finish("a", 1)
    assert state.ready() == ("b",)


def test_failing_a_key_means_its_dependents_never_become_ready() -> None:
    state = state_of(diamond())
    state.ready()
    error = ValueError("boom")
    state.fail("a", error)
    assert state.ready() == ()
    state.finish("b", 2)
    assert state.ready() == ()
    assert state.errors == {"a": error}
    assert not state.is_done("c")


# -- targets -----------------------------------------------------------------------------


def test_no_targets_selects_the_sinks() -> None:
    g = diamond()
    g.add("e", ident, g.ref("a"))
    state = state_of(g)
    assert sorted(drain(state)) == ["a", "b", "c", "d", "e"]
    assert state.target_values() == {"d": (1, 2), "e": 1}


def test_no_targets_with_held_values_selects_the_sinks() -> None:
    g = diamond()
    g.add("e", ident, g.ref("a"))
    state = state_of(g, held={"b": 20})
    drain(state)
    assert state.target_values() == {"d": (1, 20), "e": 1}


def test_a_key_needed_only_for_ordering_is_not_a_sink() -> None:
    g = Graph()
    g.add("first", ident, 1)
    g.add("second", ident, 2, after=["first"])
    state = state_of(g)
    drain(state)
    assert state.target_values() == {"second": 2}


def test_targets_select_only_their_ancestors() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    b = g.add("b", ident, a)
    g.add("c", ident, b)
    g.add("other", ident, g.add("unrelated", ident, 3))
    state = state_of(g, ["b"])
    assert drain(state) == ["a", "b"]
    assert state.target_values() == {"b": 1}


def test_target_values_leave_out_targets_that_did_not_finish() -> None:
    g = Graph()
    g.add("b", ident, g.add("a", ident, 1))
    g.add("c", ident, 3)
    state = state_of(g, ["b", "c"])
    state.ready()
    state.fail("a", ValueError("boom"))
    state.finish("c", 3)
    assert state.target_values() == {"c": 3}


def test_missing_dependency_is_raised_when_the_state_is_built() -> None:
    g = Graph()
    g.add("b", ident, g.ref("a"))
    with pytest.raises(MissingDependencyError) as info:
        state_of(g)
    assert info.value.key == "a"
    assert info.value.needed_by == ["b"]


def test_missing_target_is_raised_when_the_state_is_built() -> None:
    g = Graph()
    g.add("a", ident, 1)
    with pytest.raises(MissingDependencyError, match="'nope'") as info:
        state_of(g, ["nope"])
    assert info.value.key == "nope"


def test_cycle_is_raised_when_the_state_is_built() -> None:
    g = Graph()
    g.add("a", ident, g.ref("b"))
    g.add("b", ident, g.ref("a"))
    with pytest.raises(CycleError) as info:
        state_of(g)
    assert info.value.cycle in (["a", "b"], ["b", "a"])


# -- values: resolved, released, kept ----------------------------------------------------


def test_args_resolve_nested_refs_from_finished_values() -> None:
    g = Graph()
    a, b = g.add("a", ident, 1), g.add("b", ident, 2)
    g.add("c", pack, [a, (b,)], {"k": a}, 5, opt={"x": [b]})
    state = state_of(g)
    state.ready()
    state.finish("a", "A")
    state.finish("b", "B")
    assert state.args(state.tasks["c"]) == ((["A", ("B",)], {"k": "A"}, 5), {"opt": {"x": ["B"]}})


def test_args_resolve_flat_refs() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("c", pack, a, 5, a)
    state = state_of(g)
    state.ready()
    state.finish("a", "A")
    assert state.args(state.tasks["c"]) == (("A", 5, "A"), {})


def test_remaining_counts_pending_dependents() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("b", ident, a)
    g.add("c", ident, [a])
    state = state_of(g)
    assert state.remaining == {"a": 2}
    state.ready()
    state.finish("a", 1)
    state.ready()
    state.finish("b", 1)
    assert state.remaining == {"a": 1}
    state.finish("c", [1])
    assert state.remaining == {}


def test_intermediate_value_is_dropped_when_its_last_dependent_finishes() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("b", ident, a)
    g.add("c", ident, a)
    state = state_of(g)
    state.ready()
    state.finish("a", "A")
    assert state.values == {"a": "A"}
    state.ready()
    state.finish("b", "B")
    assert state.values == {"a": "A", "b": "B"}
    state.finish("c", "C")
    assert state.values == {"b": "B", "c": "C"}
    assert state.target_values() == {"b": "B", "c": "C"}


def test_targets_are_kept_after_their_dependents_finish() -> None:
    g = Graph()
    g.add("b", ident, g.add("a", ident, 1))
    state = state_of(g, ["a", "b"])
    drain(state)
    assert state.values == {"a": 1, "b": 1}
    assert state.target_values() == {"a": 1, "b": 1}


def test_keep_all_keeps_every_value() -> None:
    g = Graph()
    g.add("c", ident, g.add("b", ident, g.add("a", ident, 1)))
    state = state_of(g, keep_all=True)
    drain(state)
    assert state.values == {"a": 1, "b": 1, "c": 1}
    assert state.target_values() == {"a": 1, "b": 1, "c": 1}


# -- held values ---------------------------------------------------------------------


def test_held_key_and_its_ancestors_are_not_run() -> None:
    g = Graph()
    g.add("c", ident, g.add("b", ident, g.add("a", ident, 1)))
    state = state_of(g, ["c"], held={"b": 5})
    assert state.ready() == ("c",)
    assert state.args(state.tasks["c"]) == ((5,), {})
    state.finish("c", 5)
    assert state.ready() == ()
    assert state.target_values() == {"c": 5}


def test_ancestor_of_a_held_key_runs_when_something_else_needs_it() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("c", ident, g.add("b", ident, a))
    g.add("d", ident, a)
    state = state_of(g, ["c", "d"], held={"b": 5})
    assert sorted(drain(state)) == ["a", "c", "d"]
    assert state.target_values() == {"c": 5, "d": 1}


def test_held_target_is_returned_without_running() -> None:
    g = Graph()
    g.add("b", ident, g.add("a", ident, 1))
    state = state_of(g, ["b"], held={"b": 7})
    assert state.ready() == ()
    assert state.target_values() == {"b": 7}


# -- chains ------------------------------------------------------------------------------


def test_chain_fuses_a_linear_run_of_same_kind_tasks() -> None:
    state = state_of(linear("thread", "thread", "thread"))
    assert state.ready() == ("k0",)
    assert state.chain("k0") == ["k0", "k1", "k2"]


def test_process_tasks_are_not_chained() -> None:
    # A chain running in another process could not see the run stop between its tasks.
    state = state_of(linear("process", "process"))
    state.ready()
    assert state.chain("k0") == ["k0"]


def test_fused_keys_are_not_handed_out_again() -> None:
    state = state_of(linear("thread", "thread", "thread"))
    state.ready()
    state.chain("k0")
    state.finish("k0", 0)
    assert state.ready() == ()
    state.finish("k1", 0)
    assert state.ready() == ()
    state.finish("k2", 0)
    assert state.target_values() == {"k2": 0}


def test_chain_stops_before_a_fan_out() -> None:
    g = linear("thread", "thread")
    g.add("x", ident, g.ref("k1"))
    g.add("y", ident, g.ref("k1"))
    state = state_of(g)
    state.ready()
    assert state.chain("k0") == ["k0", "k1"]


def test_chain_does_not_start_across_a_fan_out() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("b", ident, a)
    g.add("c", ident, a)
    state = state_of(g)
    state.ready()
    assert state.chain("a") == ["a"]


def test_chain_does_not_cross_a_fan_in() -> None:
    g = Graph()
    g.add("c", pack, g.add("a", ident, 1), g.add("b", ident, 2))
    state = state_of(g)
    state.ready()
    assert state.chain("a") == ["a"]


def test_chain_stops_at_a_kind_change() -> None:
    state = state_of(linear("thread", "thread", "process"))
    state.ready()
    assert state.chain("k0") == ["k0", "k1"]
    state.finish("k0", 0)
    assert state.ready() == ()
    state.finish("k1", 0)
    assert state.ready() == ("k2",)


def test_inline_tasks_are_not_chained() -> None:
    state = state_of(linear("inline", "inline", "inline"))
    state.ready()
    assert state.chain("k0") == ["k0"]
    state.finish("k0", 0)
    assert state.ready() == ("k1",)


def test_chain_stays_inside_the_run() -> None:
    state = state_of(linear("thread", "thread", "thread"), ["k1"])
    state.ready()
    assert state.chain("k0") == ["k0", "k1"]


def test_chain_does_not_fuse_a_task_that_also_needs_a_held_key() -> None:
    # A fused task receives only the previous task's value; "b" also needs "h".
    g = Graph()
    h = g.add("h", ident, 10)
    a = g.add("a", ident, 1)
    g.add("b", pack, a, h)
    state = state_of(g, ["b"], held={"h": 10})
    assert state.ready() == ("a",)
    assert state.chain("a") == ["a"]


# -- blocked_by --------------------------------------------------------------------------


def test_blocked_by_gives_the_chains_back_to_the_failure() -> None:
    g = Graph()
    g.add("report", ident, g.add("check", ident, g.add("parse", ident, "a.md")))
    state = state_of(g)
    state.ready()
    state.fail("parse", ValueError("bad"))
    assert state.blocked_by() == {"parse": [["check", "parse"], ["report", "check", "parse"]]}


def test_blocked_by_lists_nearest_dependents_first() -> None:
    g = Graph()
    parse = g.add("parse", ident, "a.md")
    g.add("report", pack, g.add("check1", ident, parse), g.add("check2", ident, parse))
    state = state_of(g)
    state.ready()
    state.fail("parse", ValueError("bad"))
    assert state.blocked_by() == {
        "parse": [["check1", "parse"], ["check2", "parse"], ["report", "check1", "parse"]]
    }


def test_blocked_by_attributes_a_key_to_the_first_failure() -> None:
    state = state_of(diamond())
    state.ready()
    state.fail("b", ValueError("first"))
    state.fail("a", ValueError("second"))
    assert state.blocked_by() == {"b": [["c", "b"], ["d", "c", "b"]], "a": []}


def test_blocked_by_lists_only_dependents_of_the_failure() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    g.add("c", ident, a)
    g.add("d", pack, a, g.add("b", ident, 2))
    state = state_of(g)
    state.ready()
    state.finish("a", 1)
    state.ready()
    state.finish("c", 1)
    state.fail("b", ValueError("bad"))
    assert state.blocked_by() == {"b": [["d", "b"]]}


def test_blocked_by_is_empty_without_failures() -> None:
    state = state_of(diamond())
    drain(state)
    assert state.blocked_by() == {}
