"""Graph.add / call / ref: validation when a task is added and when a run is planned."""

from __future__ import annotations

import functools
import operator
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

import pytest

import dagexec
from dagexec import (
    CycleError,
    DuplicateKeyError,
    Graph,
    GraphError,
    MissingDependencyError,
    Ref,
)


def ident(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def pack(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def recorder() -> tuple[list[Any], Callable[..., Any]]:
    """Return a list and a task function that appends its arguments to it."""
    calls: list[Any] = []

    def record(*args: Any) -> Any:
        calls.append(args)
        return args

    return calls, record


def rotations(seq: list[Hashable]) -> list[list[Hashable]]:
    return [seq[i:] + seq[:i] for i in range(len(seq))]


# -- keys, options, the Ref --------------------------------------------------------------


@pytest.mark.parametrize("key", ["parse", 7, ("check", "a.md", 2), frozenset({"x"})])
def test_any_hashable_key_runs_and_feeds_dependents(key: Hashable) -> None:
    g = Graph()
    ref = g.add(key, ident, 20)
    g.add("next", inc, ref)
    results = g.run(keep="all")
    assert results[key] == 20
    assert results["next"] == 21


def test_add_returns_a_ref_to_its_key() -> None:
    g = Graph()
    ref = g.add("a", ident, 1)
    assert isinstance(ref, Ref)
    assert ref.key == "a"
    assert ref == g.ref("a")
    assert repr(ref) == "Ref('a')"


def test_refs_of_different_graphs_are_not_equal() -> None:
    assert Graph().ref("a") != Graph().ref("a")


def test_default_kind_inline_runs_on_the_calling_thread() -> None:
    g = Graph(default_kind="inline")
    g.add("where", threading.get_ident)
    assert g.run()["where"] == threading.get_ident()


def test_default_kind_thread_runs_off_the_calling_thread() -> None:
    g = Graph()
    g.add("where", threading.get_ident)
    assert g.run()["where"] != threading.get_ident()


def test_kind_option_overrides_the_default_kind() -> None:
    g = Graph()
    g.add("where", threading.get_ident, kind="inline")
    assert g.run()["where"] == threading.get_ident()


def test_unknown_default_kind_is_rejected() -> None:
    with pytest.raises(TypeError, match="'gpu'"):
        Graph(default_kind="gpu")


def test_options_are_keyword_only() -> None:
    g = Graph()
    g.add("k", pack, "thread", ())
    assert g.run()["k"] == (("thread", ()), {})


# -- same key again ----------------------------------------------------------------------


def test_same_definition_returns_the_existing_ref() -> None:
    g = Graph()
    a = g.add("a", ident, 1)
    first = g.add("b", pack, a, [a], flag=True, kind="inline", after=["x"])
    again = g.add("b", pack, a, [a], flag=True, kind="inline", after=["x"])
    assert again == first
    assert len(g) == 2


def test_same_definition_with_the_default_kind_spelled_out_is_the_same() -> None:
    g = Graph(default_kind="inline")
    first = g.add("a", ident, 1)
    assert g.add("a", ident, 1, kind="inline") == first
    assert len(g) == 1


@pytest.mark.parametrize(
    ("fn", "args", "options"),
    [
        pytest.param(inc, (1,), {}, id="other-fn"),
        pytest.param(ident, (2,), {}, id="other-args"),
        pytest.param(ident, (1,), {"extra": 1}, id="other-kwargs"),
        pytest.param(ident, (1,), {"kind": "process"}, id="other-kind"),
        pytest.param(ident, (1,), {"after": ["z"]}, id="other-after"),
    ],
)
def test_different_definition_raises_duplicate_key_error(
    fn: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    g = Graph()
    g.add("z", ident, 0)
    g.add("a", ident, 1)
    with pytest.raises(DuplicateKeyError, match="'a'") as info:
        g.add("a", fn, *args, **options)
    assert info.value.key == "a"
    assert isinstance(info.value, GraphError)
    assert isinstance(info.value, ValueError)


def test_rejected_redefinition_keeps_the_first_definition() -> None:
    g = Graph()
    g.add("a", ident, 1)
    with pytest.raises(DuplicateKeyError):
        g.add("a", ident, 2)
    assert len(g) == 1
    assert g.run()["a"] == 1


def test_equal_arguments_of_another_type_are_a_different_definition() -> None:
    # str(1) and str(1.0) differ: reusing the first task would hand back the wrong value.
    g = Graph()
    g.add("label", str, 1)
    with pytest.raises(DuplicateKeyError, match="'label'"):
        g.add("label", str, 1.0)


# -- Graph.call --------------------------------------------------------------------------


def load(name: str) -> str:
    return name.upper()


def test_identical_calls_collapse_into_one_task_that_runs_once() -> None:
    calls, record = recorder()
    g = Graph()
    first = g.call(record, "a.md")
    second = g.call(record, "a.md")
    g.add("use1", ident, first)
    g.add("use2", ident, second)
    assert first == second
    assert len(g) == 3
    results = g.run()
    assert calls == [("a.md",)]
    assert results["use1"] == results["use2"] == ("a.md",)


def test_call_key_starts_with_the_qualname() -> None:
    g = Graph()
    assert str(g.call(load, "a").key).startswith("load-")


def test_call_key_is_the_same_in_another_graph() -> None:
    assert Graph().call(load, "a").key == Graph().call(load, "a").key


def test_call_with_different_args_gives_different_keys() -> None:
    g = Graph()
    assert g.call(load, "a") != g.call(load, "b")
    assert g.call(pack, 1) != g.call(pack, 1.0)
    assert g.call(pack, x=1) != g.call(pack, x=2)
    assert len(g) == 6


def test_call_ignores_keyword_order() -> None:
    g = Graph()
    assert g.call(pack, x=1, y=2) == g.call(pack, y=2, x=1)
    assert len(g) == 1


def test_call_with_different_lambdas_gives_different_keys() -> None:
    g = Graph()
    first = g.call(lambda x: x + 1, 1)
    second = g.call(lambda x: x * 2, 1)
    assert first != second
    assert len(g) == 2
    assert g.run(keep="all") == {first.key: 2, second.key: 2}


def test_call_of_a_lambda_made_again_in_a_loop_collapses() -> None:
    # Each pass makes a new function object with the same code: the same call again.
    g = Graph()
    refs = [g.call(lambda x: x + 1, 1) for _ in range(2)]
    assert refs[0] == refs[1]
    assert len(g) == 1


def test_call_hashes_refs_by_key() -> None:
    g = Graph()
    a, b = g.add("a", ident, 1), g.add("b", ident, 2)
    assert g.call(inc, a) == g.call(inc, g.ref("a"))
    assert g.call(inc, a) != g.call(inc, b)
    assert len(g) == 4


def test_call_with_equal_sets_collapses() -> None:
    g = Graph()
    assert g.call(sorted, {1, 9}) == g.call(sorted, {9, 1})
    assert len(g) == 1


def test_call_key_is_stable_across_interpreters() -> None:
    script = (
        "import operator, dagexec; print(dagexec.Graph().call(operator.add, 'a', ('b', 1)).key)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == Graph().call(operator.add, "a", ("b", 1)).key


# -- bad input at add --------------------------------------------------------------------


def test_unhashable_key_raises_type_error_naming_it() -> None:
    g = Graph()
    with pytest.raises(TypeError, match=r"\['parse', 1\]"):
        g.add(["parse", 1], ident, 1)
    assert len(g) == 0


def test_unhashable_key_in_ref_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"\['parse'\]"):
        Graph().ref(["parse"])


def test_non_callable_raises_type_error_naming_the_key() -> None:
    g = Graph()
    with pytest.raises(TypeError, match="'parse'"):
        g.add("parse", "not a function")
    assert len(g) == 0


def test_unknown_kind_raises_type_error_naming_the_key() -> None:
    g = Graph()
    with pytest.raises(TypeError, match="'parse'") as info:
        g.add("parse", ident, 1, kind="gpu")
    assert "'gpu'" in str(info.value)
    assert len(g) == 0


@pytest.mark.parametrize(
    "place",
    ["arg", "list", "dict", "tuple", "kwarg", "nested-kwarg", "after"],
)
def test_ref_from_another_graph_raises_type_error_naming_the_key(place: str) -> None:
    foreign = Graph().ref("x")
    args: tuple[Any, ...] = ()
    options: dict[str, Any] = {}
    if place == "arg":
        args = (foreign,)
    elif place == "list":
        args = ([1, foreign],)
    elif place == "dict":
        args = ({"k": foreign},)
    elif place == "tuple":
        args = ((1, [foreign]),)
    elif place == "kwarg":
        options = {"value": foreign}
    elif place == "nested-kwarg":
        options = {"value": {"k": [foreign]}}
    else:
        options = {"after": [foreign]}
    g = Graph()
    with pytest.raises(TypeError, match=r"\('check', 1\)"):
        g.add(("check", 1), pack, *args, **options)
    assert len(g) == 0


def test_unhashable_after_entry_raises_type_error_naming_the_key() -> None:
    g = Graph()
    with pytest.raises(TypeError, match="'b'"):
        g.add("b", pack, after=[["a"]])


# -- validation when a run is planned ----------------------------------------------------


def test_missing_dependency_raises_before_any_task_starts() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    g.add("report", ident, g.ref("parse"))
    with pytest.raises(MissingDependencyError) as info:
        g.run()
    assert calls == []
    assert info.value.key == "parse"
    assert info.value.needed_by == ["report"]
    assert "'parse'" in str(info.value)
    assert "'report'" in str(info.value)
    assert isinstance(info.value, GraphError)
    assert isinstance(info.value, ValueError)


def test_missing_dependency_names_everyone_who_needs_it() -> None:
    g = Graph()
    g.add("b", ident, g.ref("a"))
    g.add("c", ident, [g.ref("a")])
    with pytest.raises(MissingDependencyError) as info:
        g.run()
    assert info.value.key == "a"
    assert sorted(info.value.needed_by) == ["b", "c"]


def test_missing_after_dependency_raises() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    g.add("b", pack, after=["a"])
    with pytest.raises(MissingDependencyError) as info:
        g.run()
    assert calls == []
    assert info.value.key == "a"
    assert info.value.needed_by == ["b"]


def test_missing_target_raises_before_any_task_starts() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    with pytest.raises(MissingDependencyError, match="'nope'") as info:
        g.run(targets=["probe", "nope"])
    assert calls == []
    assert info.value.key == "nope"


def test_two_cycle_raises_with_the_loop_in_order() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    g.add("a", ident, g.ref("b"))
    g.add("b", ident, g.ref("a"))
    with pytest.raises(CycleError) as info:
        g.run()
    assert calls == []
    assert info.value.cycle in rotations(["a", "b"])
    assert isinstance(info.value, GraphError)
    assert isinstance(info.value, ValueError)


def test_three_cycle_lists_each_key_before_the_key_it_needs() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    g.add("a", ident, g.ref("b"))  # a needs b
    g.add("b", ident, g.ref("c"))  # b needs c
    g.add("c", ident, g.ref("a"))  # c needs a
    g.add("d", ident, g.ref("a"))
    with pytest.raises(CycleError) as info:
        g.run()
    assert calls == []
    assert info.value.cycle in rotations(["a", "b", "c"])
    for key in info.value.cycle:
        assert repr(key) in str(info.value)


def test_cycle_through_after_is_detected() -> None:
    g = Graph()
    g.add("a", pack, after=["b"])
    g.add("b", pack, g.ref("c"))
    g.add("c", pack, after=[g.ref("a")])
    with pytest.raises(CycleError) as info:
        g.run()
    assert info.value.cycle in rotations(["a", "b", "c"])


def test_self_loop_raises_cycle_error() -> None:
    calls, record = recorder()
    g = Graph()
    g.add("probe", record)
    g.add("a", ident, g.ref("a"))
    with pytest.raises(CycleError, match="'a'") as info:
        g.run()
    assert calls == []
    assert info.value.cycle == ["a"]


# -- refs, after=, forward references, partials ------------------------------------------


def test_refs_nested_in_args_and_kwargs_resolve_to_values() -> None:
    g = Graph()
    a, b = g.add("a", ident, 1), g.add("b", ident, "two")
    g.add("c", pack, [a, (b, [a])], {"k": b}, opt={"x": [a, {"y": (b,)}]}, plain=a)
    args, kwargs = g.run()["c"]
    assert args == ([1, ("two", [1])], {"k": "two"})
    assert kwargs == {"opt": {"x": [1, {"y": ("two",)}]}, "plain": 1}


def test_after_orders_without_passing_a_value() -> None:
    order: list[str] = []
    g = Graph(default_kind="inline")
    # Added first, so without after= it would run first.
    g.add("second", order.append, "second", after=["first"])
    g.add("first", order.append, "first")
    g.run()
    assert order == ["first", "second"]


def test_after_accepts_a_ref_or_a_single_key() -> None:
    order: list[str] = []
    g = Graph(default_kind="inline")
    g.add("third", order.append, "third", after="second")
    g.add("second", order.append, "second", after=g.ref("first"))
    g.add("first", order.append, "first")
    g.run()
    assert order == ["first", "second", "third"]


def test_after_orders_thread_tasks() -> None:
    first_done = threading.Event()

    def first() -> None:
        first_done.set()

    g = Graph()
    g.add("second", first_done.is_set, after=["first"])
    g.add("first", first)
    assert g.run()["second"] is True


def test_forward_reference_resolves_once_the_task_is_added() -> None:
    g = Graph()
    b = g.add("b", inc, g.ref("a"))
    g.add("a", ident, 1)
    assert g.run(targets=[b])["b"] == 2


def configure(*, kind: str, after: str) -> tuple[str, str]:
    return kind, after


def test_partial_passes_kwargs_named_like_options() -> None:
    g = Graph()
    g.add("cfg", functools.partial(configure, kind="fast", after="never"))
    ref = g.call(functools.partial(configure, kind="slow", after="now"))
    results = g.run()
    assert results["cfg"] == ("fast", "never")
    assert results[ref.key] == ("slow", "now")


# -- container protocol ------------------------------------------------------------------


def test_len_contains_and_iteration_follow_the_tasks_added() -> None:
    g = Graph()
    assert len(g) == 0
    g.add("a", ident, 1)
    g.add(2, ident, 2)
    g.add(("c", 3), ident, 3)
    g.ref("forward")
    assert len(g) == 3
    assert list(g) == ["a", 2, ("c", 3)]
    assert "a" in g
    assert ("c", 3) in g
    assert "forward" not in g
    assert ["unhashable"] not in g


def test_repr_names_the_class_and_counts_tasks() -> None:
    g = Graph()
    g.add("a", ident, 1)
    g.add("b", ident, 2)
    text = repr(g)
    assert "Graph" in text
    assert "2 tasks" in text


def test_graph_is_exported_from_the_package() -> None:
    assert dagexec.Graph is Graph
