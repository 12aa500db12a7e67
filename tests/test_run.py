"""Graph.run end to end on real pools: results, targets, kinds, pool sizes, executors, release.

Tasks that must run on every kind record that they ran by appending their key to a file,
so the record survives process workers. Ordering is asserted from recorded events;
threads meet on Events and Barriers, never on sleeps.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import loky
import pytest
from _helpers import PairedEntry, _record, ran, total, value

import dagexec

pytestmark = pytest.mark.timeout(60)

KINDS = ["thread", "process", "inline"]
WAIT = 10.0  # seconds an Event or Barrier waits before the test gives up and fails


# -- task helpers (module level, so process workers can import them) -----------------------


def args_of(log: Path, key: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    _record(log, key)
    return args, kwargs


def where() -> tuple[int, int, str]:
    t = threading.current_thread()
    return os.getpid(), threading.get_ident(), t.name


def inc(x: int) -> int:
    return x + 1


def extend(d: dict[str, list[int]], x: int) -> dict[str, list[int]]:
    return {"n": [*d["n"], x]}


def pid_pair(x: int) -> tuple[int, int]:
    return x, os.getpid()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "ran.log"


# -- results, sinks, targets, keep -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_run_returns_the_sinks_values_counting_after_edges(kind: str, log: Path) -> None:
    g = dagexec.Graph()
    a = g.add("a", value, log, "a", 1, kind=kind)
    b = g.add("b", total, log, "b", a, 10, kind=kind)
    g.add("c", total, log, "c", a, 100, kind=kind)
    g.add("d", args_of, log, "d", after=[b], kind=kind)  # b is no sink: d runs after it

    res = g.run()

    assert isinstance(res, dagexec.Results)
    assert isinstance(res, Mapping)
    assert dict(res) == {"c": 101, "d": ((), {})}
    assert sorted(ran(log)) == ["a", "b", "c", "d"]
    assert ran(log).index("b") < ran(log).index("d")


@pytest.mark.parametrize("as_ref", [False, True], ids=["keys", "refs"])
@pytest.mark.parametrize("kind", KINDS)
def test_targets_run_only_themselves_and_their_ancestors(
    kind: str, as_ref: bool, log: Path
) -> None:
    g = dagexec.Graph()
    a = g.add("a", value, log, "a", 1, kind=kind)
    b = g.add("b", total, log, "b", a, 2, kind=kind)
    g.add("c", total, log, "c", b, 3, kind=kind)
    g.add("x", value, log, "x", 0, kind=kind)
    y = g.add("y", total, log, "y", a, 4, kind=kind)

    res = g.run(targets=[b, y] if as_ref else ["b", "y"])

    assert dict(res) == {"b": 3, "y": 5}
    assert sorted(ran(log)) == ["a", "b", "y"]  # c and x never ran


def test_a_single_target_may_be_a_bare_key_or_ref(log: Path) -> None:
    g = dagexec.Graph()
    a = g.add("a", value, log, "a", 1)
    b = g.add("b", total, log, "b", a, 1)
    g.add("c", total, log, "c", b, 1)

    assert dict(g.run(targets=b)) == {"b": 2}
    assert dict(g.run(targets="a")) == {"a": 1}
    assert ran(log) == ["a", "b", "a"]


@pytest.mark.parametrize("kind", KINDS)
def test_keep_all_returns_every_value(kind: str, log: Path) -> None:
    g = dagexec.Graph()
    a = g.add("a", value, log, "a", 1, kind=kind)
    b = g.add("b", total, log, "b", a, 1, kind=kind)
    g.add("c", total, log, "c", a, b, kind=kind)
    g.add("d", args_of, log, "d", after=["c"], kind=kind)

    res = g.run(keep="all")

    assert dict(res) == {"a": 1, "b": 2, "c": 3, "d": ((), {})}


# -- kinds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kind_decides_where_a_task_runs(kind: str) -> None:
    g = dagexec.Graph()
    g.add("where", where, kind=kind)

    pid, ident, name = g.run()["where"]

    if kind == "inline":
        assert (pid, ident) == (os.getpid(), threading.get_ident())
    elif kind == "thread":
        assert pid == os.getpid()
        assert ident != threading.get_ident()
        assert name != threading.current_thread().name
    else:
        assert pid != os.getpid()


def test_default_kind_applies_to_tasks_that_name_none() -> None:
    g = dagexec.Graph(default_kind="inline")
    g.add("where", where)

    pid, ident, _ = g.run()["where"]

    assert (pid, ident) == (os.getpid(), threading.get_ident())


def test_process_tasks_may_be_lambdas_closures_and_local_functions() -> None:
    offset = 100

    def double(x: int) -> int:
        return x * 2

    def shifted(x: int) -> int:
        return x + offset  # a closure over a local

    g = dagexec.Graph(default_kind="process")
    pid = g.add("pid", lambda: os.getpid())
    doubled = g.add("double", double, 21)
    moved = g.add("shift", shifted, doubled)
    g.add("pair", lambda p, v: (p, v, os.getpid()), pid, moved)

    worker, result, pair_pid = g.run()["pair"]

    assert result == 142
    assert os.getpid() not in (worker, pair_pid)


def test_values_flow_across_kinds() -> None:
    """Every hand-over between two kinds: process->thread->inline->process->inline->thread."""
    kinds = ["process", "thread", "inline", "process", "inline", "thread"]
    g = dagexec.Graph()
    prev: Any = {"n": []}
    for i, kind in enumerate(kinds):
        prev = g.add(i, extend, prev, i, kind=kind)

    assert dict(g.run()) == {5: {"n": [0, 1, 2, 3, 4, 5]}}


# -- pool sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_workers", [2, {"thread": 2}], ids=["int", "dict"])
def test_max_workers_bounds_concurrent_thread_tasks(max_workers: int | dict[str, int]) -> None:
    """Two tasks run at once, never three (see ``PairedEntry``)."""
    n = 8
    pairs = PairedEntry(n, WAIT)

    def task(i: int) -> int:
        assert pairs.enter(), "no second task ran beside this one"
        return i

    g = dagexec.Graph()
    for i in range(n):
        g.add(i, task, i)

    res = g.run(max_workers=max_workers)

    assert dict(res) == {i: i for i in range(n)}
    assert pairs.peak == 2


@pytest.mark.parametrize(
    ("max_workers", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        ("x", TypeError),
        ({"gpu": 1}, TypeError),
        ({"thread": 0}, ValueError),
        ({"process": "2"}, ValueError),
    ],
)
def test_invalid_max_workers_is_refused_clearly(max_workers: Any, error: type[Exception]) -> None:
    g = dagexec.Graph()
    g.add("a", inc, 1)

    with pytest.raises(error, match="max_workers"):
        g.run(max_workers=max_workers)
    with pytest.raises(error, match="max_workers"):
        dagexec.Runner(max_workers=max_workers)


# -- user executors -------------------------------------------------------------------------


def test_user_thread_executor_runs_thread_tasks_and_stays_open() -> None:
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user-pool") as ex:
        g = dagexec.Graph()
        for i in range(4):
            g.add(f"w{i}", where)
        g.add("inline", where, kind="inline")

        res = g.run(executors={"thread": ex})

        assert all(res[f"w{i}"][2].startswith("user-pool") for i in range(4))
        assert res["inline"][1] == threading.get_ident()
        assert ex.submit(inc, 41).result(timeout=WAIT) == 42  # not shut down by dagexec


def test_a_chain_of_thread_tasks_on_a_user_thread_executor_has_each_task_timed() -> None:
    # a -> b -> c is a chain, run back to back on one of the user's threads.
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="user-pool") as ex:
        g = dagexec.Graph()
        c = g.add("c", inc, g.add("b", inc, g.add("a", inc, 0)))
        res = g.run(executors={"thread": ex}, targets=[c])
    assert res["c"] == 3
    tasks = res.stats.tasks
    assert [tasks[k].worker.startswith("user-pool") for k in "abc"] == [True] * 3
    assert tasks["a"].started <= tasks["a"].finished <= tasks["b"].started
    assert tasks["b"].finished <= tasks["c"].started <= tasks["c"].finished


def _loky_pool() -> concurrent.futures.Executor:
    return loky.ProcessPoolExecutor(max_workers=1)


def _stdlib_pool() -> concurrent.futures.Executor:
    return concurrent.futures.ProcessPoolExecutor(max_workers=1)


@pytest.mark.parametrize("make", [_loky_pool, _stdlib_pool], ids=["loky", "concurrent.futures"])
def test_user_process_executor_runs_process_tasks_and_stays_open(
    make: Callable[[], concurrent.futures.Executor],
) -> None:
    ex = make()
    try:
        g = dagexec.Graph(default_kind="process")
        a = g.add("a", lambda: os.getpid())
        g.add("b", pid_pair, a)

        res = g.run(executors={"process": ex})

        worker = ex.submit(os.getpid).result(timeout=WAIT)  # not shut down by dagexec
        assert res["b"] == (worker, worker)
        assert worker != os.getpid()
    finally:
        ex.shutdown(wait=True)


# -- scheduling -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["chain", "fan_out"])
def test_a_task_starts_as_soon_as_its_own_dependencies_finish(shape: str) -> None:
    """Chains a->b and c->d: b runs while c, a root like a, is still blocked waiting for it."""
    events: list[str] = []
    b_ran = threading.Event()

    def a() -> int:
        events.append("a")
        return 1

    def b(x: int) -> int:
        events.append("b")
        b_ran.set()
        return x + 1

    def c() -> bool:
        events.append("c:start")
        seen = b_ran.wait(WAIT)
        events.append("c:end")
        return seen

    g = dagexec.Graph()
    ra = g.add("a", a)
    g.add("b", b, ra)
    if shape == "fan_out":  # a second dependent of a: a and b are not run back to back
        g.add("a2", inc, ra)
    rc = g.add("c", c)
    g.add("d", lambda seen: seen, rc)

    res = g.run()

    assert res["d"] is True, f"c waited for b in vain: {events}"
    assert events.index("b") < events.index("c:end")


class Payload:
    """A value that can be tracked with a weakref."""


@pytest.mark.parametrize("shape", ["chain", "fan_in"])
@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_intermediate_value_is_dropped_after_its_last_consumer(kind: str, shape: str) -> None:
    tracked: dict[str, weakref.ref[Payload]] = {}

    def make() -> Payload:
        p = Payload()
        tracked["p"] = weakref.ref(p)
        return p

    def consume(p: Payload) -> str:
        return type(p).__name__

    def later(*done: str) -> bool:
        gc.collect()
        return tracked["p"]() is None

    g = dagexec.Graph(default_kind=kind)
    made = g.add("make", make)
    if shape == "chain":
        used = [g.add("use", consume, made)]
    else:
        used = [g.add("use1", consume, made), g.add("use2", consume, made)]
    g.add("later", later, *used)

    res = g.run()

    assert res["later"] is True, "the intermediate value was still alive after its consumers"


@pytest.mark.parametrize(
    "options", [{"keep": "all"}, {"targets": ["make", "later"]}], ids=["keep-all", "target"]
)
@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_kept_values_stay_alive(kind: str, options: dict[str, Any]) -> None:
    tracked: dict[str, weakref.ref[Payload]] = {}

    def make() -> Payload:
        p = Payload()
        tracked["p"] = weakref.ref(p)
        return p

    def later(_: str) -> bool:
        gc.collect()
        return tracked["p"]() is not None

    g = dagexec.Graph(default_kind=kind)
    made = g.add("make", make)
    used = g.add("use", lambda p: type(p).__name__, made)
    g.add("later", later, used)

    res = g.run(**options)

    assert res["later"] is True
    assert isinstance(res["make"], Payload)


@pytest.mark.parametrize("kind", KINDS)
def test_nested_refs_resolve_and_after_passes_no_value(kind: str, log: Path) -> None:
    g = dagexec.Graph(default_kind=kind)
    a = g.add("a", value, log, "a", 1)
    b = g.add("b", value, log, "b", 2)
    g.add(
        "nested",
        args_of,
        log,
        "nested",
        [a, (b, {"k": a})],
        {"x": [b]},
        t=(a,),
        d={"z": {"y": b}},
    )
    g.add("ordered", args_of, log, "ordered", 3, after=[a, "b"])

    res = g.run()

    assert res["nested"] == (([1, (2, {"k": 1})], {"x": [2]}), {"t": (1,), "d": {"z": {"y": 2}}})
    assert res["ordered"] == ((3,), {})
    order = ran(log)
    assert order.index("ordered") > max(order.index("a"), order.index("b"))


@pytest.mark.parametrize("kind", ["thread", "inline", "alternating"])
def test_a_long_chain_completes(kind: str) -> None:
    n = 5_000
    g = dagexec.Graph()
    prev = g.add(0, inc, 0, kind="thread" if kind == "alternating" else kind)
    for i in range(1, n):
        k = ("thread", "inline")[i % 2] if kind == "alternating" else kind
        prev = g.add(i, inc, prev, kind=k)

    assert dict(g.run()) == {n - 1: n}
