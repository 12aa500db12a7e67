"""map_shared / imap_shared edge cases found in review: each test pins one fixed bug.

Threads meet on Events whose timeouts only bound a failure, or stand for an item's
work (an Event that a bug sets early), never for synchronisation.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import pytest

import dagexec
from dagexec import TaskFailed

pytestmark = pytest.mark.timeout(60)

WAIT = 2.0  # seconds a wait that must succeed may take before the test fails


class Payload:
    """A shared value that can be tracked with a weakref."""


def unpicklable(k: int) -> Any:
    return threading.Lock()


def first_of(item: int, value: Any) -> int:
    return item


def test_inline_items_stop_starting_at_the_first_failure() -> None:
    """Graph.run stops inline tasks at the first failure; the map runs every ready one."""
    ran: list[int] = []

    def fn(item: int, value: None) -> int:
        ran.append(item)
        if item == 0:
            raise ValueError("item 0")
        return item

    with pytest.raises(TaskFailed) as info:
        dagexec.map_shared(
            fn,
            range(4),
            shared=lambda k: None,
            key=lambda i: 0,
            kind="inline",
            shared_kind="inline",
        )

    assert info.value.key == (0, 0)
    assert ran == [0], "inline items started after the first failure"


def test_a_process_shared_value_that_cannot_be_pickled_says_so() -> None:
    """Process to process on a given executor, the value is pickled in the worker: its
    error must read like the thread-shared case, not like shared() itself raised."""
    from loky import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1) as executor:
        out = dagexec.map_shared(
            first_of,
            [1],
            shared=unpicklable,
            key=lambda i: 0,
            kind="process",
            shared_kind="process",
            return_exceptions=True,
            executors={"process": executor},
        )

    failed = out[0]
    assert isinstance(failed, TaskFailed)
    assert "cannot be pickled" in str(failed), str(failed)
    assert "kind='thread'" in str(failed), str(failed)


def test_a_process_shared_value_that_cannot_be_pickled_is_read_where_it_was_made() -> None:
    """On dagexec's own pool the value stays in its worker: it never has to be pickled."""
    out = dagexec.map_shared(
        first_of,
        [1, 2, 3],
        shared=unpicklable,
        key=lambda i: 0,
        kind="process",
        shared_kind="process",
        max_workers=2,
    )
    assert out == [1, 2, 3]


def test_imap_keeps_the_pool_busy_while_the_consumer_holds_a_result() -> None:
    """Work is handed out only after the whole batch has been yielded and consumed."""
    started = {i: threading.Event() for i in range(3)}

    def fn(item: int, value: None) -> int:
        started[item].set()
        return item

    it = dagexec.imap_shared(
        fn, range(3), shared=lambda k: None, key=lambda i: 0, shared_kind="inline", max_workers=1
    )
    try:
        first = next(it)
        assert first == (0, 0)
        assert started[1].wait(WAIT), "item 1 waits until the consumer asks for the next result"
    finally:
        it.close()


def test_shared_calls_do_not_run_ahead_of_items_waiting_for_a_worker() -> None:
    """Items whose value exists go before new shared calls (module docstring); with the
    shared calls on another pool (here inline), every value gets computed and held."""
    alive: list[weakref.ref[Payload]] = []
    most = 0
    flooded = threading.Event()

    def shared(k: int) -> Payload:
        nonlocal most
        value = Payload()
        alive.append(weakref.ref(value))
        most = max(most, sum(r() is not None for r in alive))
        if most >= 4:
            flooded.set()
        return value

    def fn(item: int, value: Payload) -> int:
        flooded.wait(0.15)  # the item's work; over at once when the bug shows
        return item

    out = dagexec.map_shared(
        fn, range(5), shared=shared, kind="thread", shared_kind="inline", max_workers=1
    )

    assert out == list(range(5))
    assert most <= 3, f"{most} shared values alive at once with one item worker"


def test_a_key_failure_read_ahead_does_not_keep_the_value_of_key_none() -> None:
    """A failed entry read ahead has key None: next_key then protects a real key None."""
    ref: list[weakref.ref[Payload]] = []

    def shared(k: Any) -> Payload:
        value = Payload()
        if k is None:
            ref.append(weakref.ref(value))
        return value

    def key(item: str) -> Any:
        if item == "x":
            raise ValueError("no key for 'x'")
        return None if item == "n" else item

    def fn(item: str, value: Payload) -> Any:
        return ref[0]() is None if item == "b" else item

    out = dict(
        dagexec.imap_shared(
            fn,
            ["n", "x", "b"],
            shared=shared,
            key=key,
            window=1,
            return_exceptions=True,
            max_workers=1,
        )
    )

    assert out[0] == "n"
    assert isinstance(out[1], TaskFailed)
    assert out[2] is True, "the value of key None outlived its last item"
