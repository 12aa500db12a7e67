"""Values sent to process workers: pickled once however many tasks need them."""

from __future__ import annotations

import importlib
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import dagexec


class Counted:
    """A value that counts, in the process that does it, how often it is (un)pickled."""

    pickles = 0
    unpickles = 0

    def __init__(self, payload: int) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        type(self).pickles += 1
        return (_unpickle, (self.payload,))


def _unpickle(payload: int) -> Counted:
    Counted.unpickles += 1
    return Counted(payload)


def make(n: int) -> Counted:
    return Counted(n)


def read(value: Counted, plus: int = 0) -> int:
    return value.payload + plus


def read_item(item: int, value: Counted) -> int:
    return value.payload * 100 + item


@pytest.fixture(autouse=True)
def _zero() -> None:
    Counted.pickles = Counted.unpickles = 0


def test_a_value_sent_to_many_process_tasks_is_pickled_once() -> None:
    g = dagexec.Graph()
    v = g.add("v", make, 7)  # computed here, in a thread
    for i in range(5):
        g.add(("use", i), read, v, i, kind="process")
    results = g.run(max_workers={"process": 2})
    assert {results[("use", i)] for i in range(5)} == {7, 8, 9, 10, 11}
    assert Counted.pickles == 1


def test_a_value_only_process_tasks_read_goes_from_worker_to_worker_as_bytes() -> None:
    g = dagexec.Graph(default_kind="process")
    v = g.add("v", make, 7)
    for i in range(4):
        g.add(("use", i), read, v, i)
    results = g.run(max_workers=2)
    assert [results[("use", i)] for i in range(4)] == [7, 8, 9, 10]
    assert (Counted.pickles, Counted.unpickles) == (0, 0)  # none of it in this process


def test_a_value_a_thread_task_reads_is_unpickled_here_once() -> None:
    g = dagexec.Graph(default_kind="process")
    v = g.add("v", make, 7)
    g.add("in_process", read, v, 1)
    g.add("here", read, v, 2, kind="thread")
    results = g.run(max_workers=2)
    assert (results["in_process"], results["here"]) == (8, 9)
    assert Counted.unpickles == 1


def test_a_target_computed_in_a_process_comes_back_as_its_value() -> None:
    g = dagexec.Graph(default_kind="process")
    v = g.add("v", make, 7)
    g.add("use", read, v)
    results = g.run(targets=["v", "use"], max_workers=2)
    assert type(results["v"]) is Counted
    assert (results["v"].payload, results["use"]) == (7, 7)


def test_a_value_sent_to_one_process_task_is_pickled_with_it() -> None:
    g = dagexec.Graph()
    v = g.add("v", make, 7)
    g.add("use", read, v, kind="process")
    assert g.run(max_workers={"process": 1})["use"] == 7
    assert Counted.pickles == 1


def test_map_shared_pickles_each_shared_value_once_for_its_process_items() -> None:
    items = list(range(12))
    out = dagexec.map_shared(
        read_item,
        items,
        shared=make,
        key=lambda i: i % 3,
        kind="process",
        shared_kind="thread",
        max_workers={"process": 2},
    )
    assert out == [(i % 3) * 100 + i for i in items]
    assert Counted.pickles == 3  # one per key, not one per item


def test_map_shared_process_to_process_never_pickles_in_the_caller() -> None:
    items = list(range(8))
    out = dagexec.map_shared(
        read_item, items, shared=make, key=lambda i: i % 2, kind="process", max_workers=2
    )
    assert out == [(i % 2) * 100 + i for i in items]
    assert Counted.pickles == 0  # pickled by the workers that made them


def test_a_shared_value_that_cannot_be_pickled_fails_its_process_items_saying_why() -> None:
    import threading

    def locked(k: int) -> Any:
        return threading.Lock()

    out = dagexec.map_shared(
        lambda item, value: item,
        [1, 2],
        shared=locked,
        key=lambda i: 0,
        kind="process",
        shared_kind="thread",
        return_exceptions=True,
        max_workers=1,
    )
    for i, failed in enumerate(out):
        assert isinstance(failed, dagexec.TaskFailed)
        assert failed.key == (i, 0)
        assert "cannot be pickled" in str(failed)
        assert "kind='thread'" in str(failed)


def test_a_function_the_worker_cannot_import_fails_saying_what_to_do(tmp_path: Path) -> None:
    module = tmp_path / "vanishing_module_for_dagexec.py"
    module.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module("vanishing_module_for_dagexec")
        assert pickle.loads(pickle.dumps(mod.f)) is mod.f  # pickled by reference
        module.unlink()
        shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)
        g = dagexec.Graph()
        g.add("t", mod.f, 1, kind="process")
        with pytest.raises(dagexec.TaskFailed) as info:
            g.run(max_workers=1)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("vanishing_module_for_dagexec", None)
    message = str(info.value)
    assert info.value.key == "t"
    assert "could not be unpickled in its worker process" in message
    assert "ModuleNotFoundError" in message
    assert "register_pickle_by_value" in message


def unpickles_seen(value: Counted, i: int) -> int:
    """How often this worker process has unpickled a Counted so far."""
    return Counted.unpickles


def test_tasks_reading_a_value_in_the_worker_that_made_it_never_unpickle_it() -> None:
    g = dagexec.Graph(default_kind="process")
    v = g.add("v", make, 7)
    for i in range(6):
        g.add(("seen", i), unpickles_seen, v, i)
    results = g.run(max_workers=1)
    assert [results[("seen", i)] for i in range(6)] == [0] * 6  # kept there, as it was


def test_on_a_given_executor_tasks_in_one_worker_unpickle_a_value_once() -> None:
    from loky import ProcessPoolExecutor

    g = dagexec.Graph(default_kind="process")
    v = g.add("v", make, 7)
    for i in range(6):
        g.add(("seen", i), unpickles_seen, v, i)
    with ProcessPoolExecutor(max_workers=1) as executor:
        results = g.run(executors={"process": executor})
    assert [results[("seen", i)] for i in range(6)] == [1] * 6


def test_map_shared_items_in_one_worker_unpickle_their_value_once() -> None:
    out = dagexec.map_shared(
        unpickles_seen,
        range(6),
        shared=make,
        key=lambda i: 0,
        kind="process",
        shared_kind="thread",
        max_workers=1,
    )
    assert out == [1] * 6


def make_adder(n: int) -> Any:
    class Local:  # defined in the worker: plain pickle cannot send it by reference
        def __init__(self, n: int) -> None:
            self.n = n

    return (lambda x: x + n), Local(n)


def test_values_plain_pickle_refuses_come_back_with_cloudpickle() -> None:
    g = dagexec.Graph(default_kind="process")
    pair = g.add("pair", make_adder, 5)
    g.add("used", lambda p: p[0](1) + p[1].n, pair)
    results = g.run(targets=["pair", "used"], max_workers=1)
    adder, local = results["pair"]
    assert (adder(2), local.n, results["used"]) == (7, 5, 11)
