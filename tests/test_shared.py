"""map_shared and imap_shared: each shared value once, no barrier, bounded memory.

Shared calls that run in threads are counted by ``Counted`` under a lock; calls in process
workers append one line per call to a file in ``tmp_path``, with the pid and thread that ran
them. Threads meet on Events and Barriers whose timeouts only bound a failure: a wait that
must succeed is asserted to have returned True, so a bug fails instead of hanging.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from _helpers import PairedEntry

import dagexec
from dagexec import Runner, TaskFailed

pytestmark = pytest.mark.timeout(60)

KINDS = ["thread", "process", "inline"]
APIS = ["map", "imap"]
WAIT = 10.0  # seconds an Event or Barrier waits before the test gives up and fails


# -- functions for process workers (module level, so loky imports them) --------------------


def ten_times(k: Any) -> Any:
    return k * 10


def tagged(item: Any, value: Any) -> tuple[Any, Any]:
    return item, value


def record_shared(log: Path, k: int) -> int:
    """Append ``k`` and where it ran (pid, thread) as one line; O_APPEND is atomic."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{k} {os.getpid()} {threading.get_ident()}\n".encode())
    finally:
        os.close(fd)
    return k * 10


def located(item: int, value: int) -> tuple[int, int, int, int]:
    return item, value, os.getpid(), threading.get_ident()


def shared_or_fail(k: str) -> str:
    if k == "bad":
        raise ValueError(f"no shared value for {k!r}")
    return k.upper()


def item_or_fail(item: str, value: str) -> str:
    if item == "boom":
        raise LookupError("item 'boom' failed")
    return f"{value}:{item}"


# -- helpers --------------------------------------------------------------------------------


class Counted:
    """Wrap ``fn``, counting its calls per argument under a lock (threads call it at once)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.lock = threading.Lock()
        self.calls: Counter[Any] = Counter()

    def __call__(self, k: Any) -> Any:
        with self.lock:
            self.calls[k] += 1
        return self.fn(k)


class Payload:
    """A shared value that can be tracked with a weakref."""


def results(api: str, fn: Callable[..., Any], items: Iterable[Any], **options: Any) -> list[Any]:
    """Call map_shared, or imap_shared and put its ``(index, result)`` pairs in input order."""
    if api == "map":
        return dagexec.map_shared(fn, items, **options)
    pairs = list(dagexec.imap_shared(fn, items, **options))
    indices = [i for i, _ in pairs]
    assert sorted(indices) == list(range(len(pairs))), f"indices yielded: {indices}"
    return [r for _, r in sorted(pairs, key=lambda pair: pair[0])]


def call_at_once(api: str, fn: Callable[..., Any], items: Any, **options: Any) -> None:
    """Call the API; for imap_shared only create the generator (errors raised at call time)."""
    if api == "map":
        dagexec.map_shared(fn, items, **options)
    else:
        dagexec.imap_shared(fn, items, **options)


def check_where(kind: str, places: set[tuple[int, int]]) -> None:
    """Assert that every call in ``places`` (pid, thread ident) ran where ``kind`` says."""
    me = (os.getpid(), threading.get_ident())
    assert places
    if kind == "inline":
        assert places == {me}
    elif kind == "thread":
        assert {pid for pid, _ in places} == {me[0]}
        assert me[1] not in {tid for _, tid in places}
    else:
        assert me[0] not in {pid for pid, _ in places}


# -- results, keys and exactly-once ---------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_results_are_in_input_order_and_each_key_is_computed_once(kind: str, api: str) -> None:
    items = [(i * 37) % 200 for i in range(200)]  # every number once, out of order
    shared = Counted(ten_times)
    # A window of every item: imap_shared drops a value its window no longer needs.
    window = {"window": len(items)} if api == "imap" else {}

    out = results(api, tagged, items, shared=shared, key=lambda i: i % 7, kind=kind, **window)

    assert out == [(i, (i % 7) * 10) for i in items]
    assert shared.calls == dict.fromkeys(range(7), 1)


@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_every_item_of_a_key_gets_the_one_shared_object(kind: str) -> None:
    out = dagexec.map_shared(
        lambda item, value: value, list("abab"), shared=lambda k: Payload(), kind=kind
    )

    assert out[0] is out[2]
    assert out[1] is out[3]
    assert out[0] is not out[1]


def test_map_shared_returns_a_list() -> None:
    out = dagexec.map_shared(tagged, iter("ab"), shared=str.upper)

    assert type(out) is list
    assert out == [("a", "A"), ("b", "B")]


@pytest.mark.parametrize("shared_kind", [None, *KINDS])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_pairing_runs_each_key_once_where_asked(
    kind: str, shared_kind: str | None, tmp_path: Path
) -> None:
    """``shared_kind=None`` means the same kind as ``kind``."""
    log = tmp_path / "shared.log"
    items = [3, 1, 3, 2, 1, 3]

    out = dagexec.map_shared(
        located, items, shared=partial(record_shared, log), kind=kind, shared_kind=shared_kind
    )

    assert [(item, value) for item, value, _, _ in out] == [(i, i * 10) for i in items]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(k) for k, _, _ in lines) == [1, 2, 3]  # each key exactly once
    check_where(shared_kind or kind, {(int(pid), int(tid)) for _, pid, tid in lines})
    check_where(kind, {(pid, tid) for _, _, pid, tid in out})


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_no_items_give_no_results_and_call_nothing(kind: str, api: str, tmp_path: Path) -> None:
    log = tmp_path / "shared.log"
    shared = partial(record_shared, log)

    assert results(api, tagged, [], shared=shared, kind=kind) == []
    assert results(api, tagged, iter(()), shared=shared, kind=kind) == []
    assert not log.exists()


def test_duplicate_items_share_one_shared_call() -> None:
    shared = Counted(ten_times)

    out = dagexec.map_shared(tagged, [2, 1, 2, 2, 1], shared=shared)

    assert out == [(2, 20), (1, 10), (2, 20), (2, 20), (1, 10)]
    assert shared.calls == {1: 1, 2: 1}


def test_tuple_keys_are_passed_to_shared_as_they_are() -> None:
    items = [{"user": u, "day": d, "n": n} for n, (u, d) in enumerate([("a", 1), ("b", 1)] * 3)]
    shared = Counted(lambda k: f"{k[0]}@{k[1]}")

    out = dagexec.map_shared(
        lambda item, v: (item["n"], v), items, shared=shared, key=lambda x: (x["user"], x["day"])
    )

    assert out == [(n, ("a@1", "b@1")[n % 2]) for n in range(6)]
    assert shared.calls == {("a", 1): 1, ("b", 1): 1}


@pytest.mark.parametrize("api", APIS)
def test_none_is_a_shared_value_like_any_other(api: str) -> None:
    """A None value still counts as computed: never computed again for the next item."""
    shared = Counted(lambda k: None)
    items = ["a", "a", "b", "b", "b"]

    out = results(api, tagged, items, shared=shared, **({"window": 1} if api == "imap" else {}))

    assert out == [(i, None) for i in items]
    assert shared.calls == {"a": 1, "b": 1}


def test_none_and_falsy_items_are_keys_like_any_other() -> None:
    shared = Counted(lambda k: f"<{k!r}>")
    items = [None, 0, "", None, 0]

    out = dagexec.map_shared(tagged, items, shared=shared)

    assert out == [(i, f"<{i!r}>") for i in items]
    assert shared.calls == {None: 1, 0: 1, "": 1}


# -- no barrier, early release --------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "kind", "shared_kind", "order"),
    [
        ("map", "thread", "thread", ["slow", "fast"]),
        ("imap", "thread", "thread", ["slow", "fast"]),
        ("map", "thread", "thread", ["fast", "slow"]),
        ("map", "inline", "thread", ["slow", "fast"]),
        ("imap", "inline", "thread", ["fast", "slow"]),
        # An inline shared call blocks the caller's thread: the slow key must come second.
        ("map", "thread", "inline", ["fast", "slow"]),
        ("imap", "inline", "inline", ["fast", "slow"]),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, list) else None,
)
def test_an_item_starts_as_soon_as_its_own_shared_value_exists(
    api: str, kind: str, shared_kind: str, order: list[str]
) -> None:
    """The slow key's shared call waits for the fast key's item: a barrier would time out."""
    fast_item_ran = threading.Event()
    events: list[str] = []

    def shared(k: str) -> Any:
        events.append(f"shared:{k}")
        return fast_item_ran.wait(WAIT) if k == "slow" else "fast value"

    def fn(item: str, value: Any) -> Any:
        events.append(f"item:{item}")
        if item == "fast":
            fast_item_ran.set()
        return value

    out = results(api, fn, order, shared=shared, kind=kind, shared_kind=shared_kind)

    assert dict(zip(order, out, strict=True)) == {"slow": True, "fast": "fast value"}, events


def test_inline_shared_values_are_computed_one_key_at_a_time() -> None:
    """Inline on both sides: each key's items run before the next shared call starts, so
    only the value in use is alive; computing every value first would hold them all."""
    alive: list[weakref.ref[Payload]] = []
    seen: list[int] = []

    def shared(k: str) -> Payload:
        seen.append(sum(r() is not None for r in alive))
        p = Payload()
        alive.append(weakref.ref(p))
        return p

    out = dagexec.map_shared(
        lambda item, p: item,
        ["a", "a", "b", "c", "c"],
        shared=shared,
        kind="inline",
        shared_kind="inline",
    )

    assert out == ["a", "a", "b", "c", "c"]
    assert seen == [0, 0, 0], "shared values alive when the next shared call started"


@pytest.mark.parametrize("api", APIS)
def test_a_shared_value_is_dropped_after_its_last_item_while_other_keys_run(api: str) -> None:
    released = threading.Event()

    def shared(k: str) -> Payload:
        value = Payload()
        if k == "a":
            weakref.finalize(value, released.set)
        return value

    def fn(item: str, value: Payload) -> Any:
        if item == "b":  # still running when the value of "a" must go
            return released.wait(WAIT)
        return "a done"

    out = results(api, fn, ["a", "b", "a"], shared=shared)

    assert out == ["a done", True, "a done"], "the value of 'a' outlived its last item"


def test_imap_shared_yields_items_as_they_complete_not_in_input_order() -> None:
    first_seen = threading.Event()

    def fn(item: int, value: str) -> Any:
        return first_seen.wait(WAIT) if item == 0 else value

    it = dagexec.imap_shared(fn, [0, 1, 2], shared=lambda k: "v", key=lambda i: "k")
    try:
        first = next(it)
        first_seen.set()
        rest = list(it)
    finally:
        it.close()

    assert first[0] != 0, "item 0 was yielded first although it was still running"
    assert sorted([first, *rest]) == [(0, True), (1, "v"), (2, "v")]


# -- imap_shared: any iterable, a bounded window ----------------------------------------------


@pytest.mark.parametrize("window", [1, 7, None], ids=["1", "7", "default"])
def test_imap_shared_keeps_a_bounded_window_over_an_endless_iterable(window: int | None) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    shared = Counted(lambda k: k * 1000)
    options = {} if window is None else {"window": window}
    limit = window or max(64, 8 * (os.cpu_count() or 1))  # the documented default
    yielded = most_ahead = 0

    it = dagexec.imap_shared(
        lambda i, v: v + i, endless(), shared=shared, key=lambda i: i // 10, **options
    )
    try:
        for i, result in it:
            assert result == (i // 10) * 1000 + i
            yielded += 1
            most_ahead = max(most_ahead, pulled - yielded)
            if yielded == 500:
                break
    finally:
        it.close()

    assert yielded == 500
    assert most_ahead <= limit + 1  # one item is read ahead
    assert max(shared.calls.values()) == 1  # grouped keys: each computed once


def test_imap_shared_runs_a_full_window_of_items_at_once() -> None:
    window = 4
    barrier = threading.Barrier(window, timeout=WAIT)

    def fn(item: int, value: None) -> int:
        barrier.wait()  # breaks (and the item fails) unless `window` items run together
        return item

    out = dagexec.imap_shared(
        fn,
        range(8),
        shared=lambda k: None,
        key=lambda i: 0,
        shared_kind="inline",
        window=window,
        max_workers=8,
    )

    assert sorted(out) == [(i, i) for i in range(8)]


@pytest.mark.parametrize(
    "make",
    [lambda: (c for c in "abcab"), lambda: iter(list("abcab")), lambda: map(str, "abcab")],
    ids=["generator", "iterator", "map"],
)
def test_imap_shared_takes_any_iterable(make: Callable[[], Iterable[str]]) -> None:
    out = results("imap", tagged, make(), shared=str.upper, window=2)

    assert out == [(c, c.upper()) for c in "abcab"]


def test_imap_shared_computes_a_grouped_key_once_with_a_window_of_one() -> None:
    """The item read ahead keeps its key's value alive between two items of that key."""
    shared = Counted(str.upper)

    out = results("imap", tagged, list("aaabbc"), shared=shared, window=1)

    assert out == [(c, c.upper()) for c in "aaabbc"]
    assert shared.calls == {"a": 1, "b": 1, "c": 1}


def test_imap_shared_fails_the_items_of_a_grouped_key_with_one_shared_call() -> None:
    def compute(k: str) -> str:
        if k == "b":
            raise ValueError("no shared value for 'b'")
        return k.upper()

    shared = Counted(compute)

    out = results("imap", tagged, list("bbba"), shared=shared, window=1, return_exceptions=True)

    assert [err.key for err in out[:3]] == [(0, "b"), (1, "b"), (2, "b")]
    assert out[3] == ("a", "A")
    assert shared.calls == {"a": 1, "b": 1}


def test_imap_shared_drops_a_value_before_its_key_comes_back_unless_a_runner_holds_it() -> None:
    alone = Counted(str.upper)
    assert results("imap", tagged, list("aba"), shared=alone, window=1) == [
        ("a", "A"),
        ("b", "B"),
        ("a", "A"),
    ]
    assert alone.calls == {"a": 2, "b": 1}  # dropped after its item: bounded memory

    held = Counted(str.upper)
    with Runner() as runner:
        results("imap", tagged, list("aba"), shared=held, window=1, runner=runner)
    assert held.calls == {"a": 1, "b": 1}


# -- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("shared_kind", ["thread", "inline"])
def test_a_failing_shared_call_fails_every_item_of_its_key(shared_kind: str, api: str) -> None:
    raised: list[ValueError] = []

    def compute(k: str) -> str:
        if k == "b":
            raised.append(ValueError("no shared value for 'b'"))
            raise raised[-1]
        return k.upper()

    shared = Counted(compute)
    items = ["a1", "b1", "a2", "c1", "b2"]

    out = results(
        api,
        lambda item, v: v + item,
        items,
        shared=shared,
        key=lambda s: s[0],
        shared_kind=shared_kind,
        return_exceptions=True,
    )

    assert [out[i] for i in (0, 2, 3)] == ["Aa1", "Aa2", "Cc1"]
    for i in (1, 4):
        err = out[i]
        assert isinstance(err, TaskFailed)
        assert err.key == (i, "b")
        assert "shared('b')" in str(err)
        assert err.__cause__ is raised[0]
    assert shared.calls == {"a": 1, "b": 1, "c": 1}  # a failure is not retried per item


def test_a_failing_item_is_a_task_failed_naming_its_index_and_key() -> None:
    def fn(item: int, value: int) -> int:
        if item == 3:
            raise ZeroDivisionError("item 3")
        return item + value

    out = dagexec.map_shared(
        fn, range(5), shared=ten_times, key=lambda i: i % 2, return_exceptions=True
    )

    assert [out[i] for i in (0, 1, 2, 4)] == [0, 11, 2, 4]
    assert isinstance(out[3], TaskFailed)
    assert out[3].key == (3, 1)
    assert isinstance(out[3].__cause__, ZeroDivisionError)


def test_failures_in_process_workers_keep_the_cause_and_its_traceback() -> None:
    lock = threading.Lock()  # an item that cannot be sent to a worker
    items = ["ok", "bad", "boom", "bad", lock]

    out = dagexec.map_shared(
        item_or_fail,
        items,
        shared=shared_or_fail,
        key=lambda item: "bad" if item == "bad" else "ok",
        kind="process",
        return_exceptions=True,
    )

    assert out[0] == "OK:ok"
    for i in (1, 3):
        err = out[i]
        assert isinstance(err, TaskFailed)
        assert err.key == (i, "bad")
        assert "shared('bad')" in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "no shared value for 'bad'"
        assert "shared_or_fail" in str(err.__cause__.__cause__)  # the worker's traceback
    boom = out[2]
    assert isinstance(boom, TaskFailed)
    assert boom.key == (2, "ok")
    assert isinstance(boom.__cause__, LookupError)
    assert "item_or_fail" in str(boom.__cause__.__cause__)
    unsent = out[4]
    assert isinstance(unsent, TaskFailed)
    assert unsent.key == (4, "ok")
    assert "pickled" in str(unsent)


class Announced(str):
    """A key that sets ``named`` when its repr is taken: when a failure naming it is built."""

    named: threading.Event

    def __repr__(self) -> str:
        self.named.set()
        return super().__repr__()


def _failing_key_while_an_item_runs() -> tuple[Callable[..., str], Callable[[str], str], str]:
    """Return fn, shared and the failing key: shared("bad") fails while item 0 (key "ok")
    runs, and item 0 finishes only once the failure naming "bad" has been built."""
    running = threading.Event()
    bad = Announced("bad")
    bad.named = threading.Event()

    def shared(k: str) -> str:
        if k == "bad":
            assert running.wait(WAIT)
            raise ValueError("no shared value for 'bad'")
        return k

    def fn(item: tuple[str, int], value: str) -> str:
        if item[1] == 0:
            running.set()
            bad.named.wait(WAIT)  # not asserted: only makes the item outlast the failure
        return value + "!"

    return fn, shared, bad


def test_the_first_failure_raises_after_running_items_finish_with_what_completed() -> None:
    fn, shared, bad = _failing_key_while_an_item_runs()
    items = [("ok", 0), ("bad", 1), ("bad", 2)]

    with pytest.raises(TaskFailed) as info:
        dagexec.map_shared(
            fn, items, shared=shared, key=lambda item: bad if item[0] == "bad" else "ok"
        )

    first = info.value
    assert first.key == (1, "bad")
    assert "shared('bad')" in str(first)
    assert isinstance(first.__cause__, ValueError)
    assert first.results is not None
    assert dict(first.results) == {0: "ok!"}  # the running item finished and is kept
    assert set(first.results.errors) == {1, 2}
    assert first.results.errors[2].key == (2, "bad")
    with pytest.raises(TaskFailed):
        first.results[1]


def test_imap_shared_yields_what_completes_then_raises_the_first_failure() -> None:
    fn, shared, bad = _failing_key_while_an_item_runs()
    it = dagexec.imap_shared(
        fn,
        [("ok", 0), ("bad", 1)],
        shared=shared,
        key=lambda item: bad if item[0] == "bad" else "ok",
    )

    got = next(it)
    with pytest.raises(TaskFailed) as info:
        next(it)

    assert got == (0, "ok!")
    assert info.value.key == (1, "bad")


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which", ["fn", "shared", "key"])
def test_something_not_callable_is_refused_before_any_work(which: str, api: str) -> None:
    shared = Counted(ten_times)
    args: dict[str, Any] = {"fn": tagged, "shared": shared, "key": None, which: 42}
    fn = args.pop("fn")

    with pytest.raises(TypeError, match="not callable"):
        call_at_once(api, fn, [1, 2], **args)
    assert shared.calls == {}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("which", ["kind", "shared_kind"])
def test_an_unknown_kind_is_refused_before_any_work(which: str, api: str) -> None:
    shared = Counted(ten_times)

    with pytest.raises(TypeError, match="gpu"):
        call_at_once(api, tagged, [1, 2], shared=shared, **{which: "gpu"})
    assert shared.calls == {}


@pytest.mark.parametrize("window", [0, -1])
def test_a_window_below_one_is_refused(window: int) -> None:
    with pytest.raises(ValueError, match="window"):
        dagexec.imap_shared(tagged, [1], shared=ten_times, window=window)


@pytest.mark.parametrize("api", APIS)
def test_items_that_are_not_iterable_are_refused_at_call_time(api: str) -> None:
    for items in (42, None):
        with pytest.raises(TypeError):
            call_at_once(api, tagged, items, shared=ten_times)


def _raising_key(item: int) -> int:
    if item == 2:
        raise KeyError("no key for 2")
    return item % 2


def test_a_key_function_that_raises_fails_before_any_shared_call() -> None:
    shared = Counted(ten_times)
    fn_calls: list[int] = []

    with pytest.raises(TaskFailed) as info:
        dagexec.map_shared(
            lambda item, v: fn_calls.append(item), [0, 1, 2, 3], shared=shared, key=_raising_key
        )

    assert info.value.key[0] == 2
    assert isinstance(info.value.__cause__, KeyError)
    assert "key(item)" in str(info.value)
    assert shared.calls == {}
    assert fn_calls == []


@pytest.mark.parametrize("api", APIS)
def test_a_key_function_that_raises_fails_only_its_item_with_return_exceptions(api: str) -> None:
    out = results(api, tagged, range(4), shared=ten_times, key=_raising_key, return_exceptions=True)

    assert [out[i] for i in (0, 1, 3)] == [(0, 0), (1, 10), (3, 10)]
    assert isinstance(out[2], TaskFailed)
    assert out[2].key[0] == 2
    assert isinstance(out[2].__cause__, KeyError)


@pytest.mark.parametrize(
    ("items", "key"),
    [([[1], [2]], None), ([1, 2], lambda i: [i])],
    ids=["default-key", "key-function"],
)
def test_an_unhashable_key_is_refused_before_any_work(
    items: list[Any], key: Callable[[Any], Any] | None
) -> None:
    shared = Counted(lambda k: k)

    with pytest.raises(TaskFailed, match="not hashable") as info:
        dagexec.map_shared(tagged, items, shared=shared, key=key)

    assert isinstance(info.value.__cause__, TypeError)
    assert shared.calls == {}
    out = dagexec.map_shared(tagged, items, shared=shared, key=key, return_exceptions=True)
    assert all(isinstance(err, TaskFailed) for err in out)
    assert shared.calls == {}


@pytest.mark.parametrize("api", APIS)
def test_an_unpicklable_function_for_process_workers_is_a_type_error(api: str) -> None:
    lock = threading.Lock()
    shared = Counted(ten_times)

    def locked_fn(item: int, value: int) -> int:
        with lock:
            return value

    def locked_shared(k: int) -> int:
        with lock:
            return k

    with pytest.raises(TypeError, match="pickled"):
        call_at_once(api, locked_fn, [1, 2], shared=shared, kind="process", shared_kind="thread")
    with pytest.raises(TypeError, match="pickled"):
        call_at_once(api, tagged, [1, 2], shared=locked_shared, shared_kind="process")
    with pytest.raises(TypeError, match="pickled"):
        call_at_once(api, tagged, [1, 2], shared=locked_shared, kind="process")
    assert shared.calls == {}
    # Threads need no pickling: the same closures are fine there.
    assert results(api, locked_fn, [1, 2], shared=locked_shared) == [1, 2]


@pytest.mark.parametrize("api", APIS)
def test_a_runner_with_max_workers_or_executors_is_a_type_error(api: str) -> None:
    with Runner() as runner, ThreadPoolExecutor(1) as ex:
        for extra in ({"max_workers": 2}, {"executors": {"thread": ex}}):
            with pytest.raises(TypeError, match="runner"):
                call_at_once(api, tagged, [1], shared=ten_times, runner=runner, **extra)
        with pytest.raises(TypeError, match="Runner"):
            call_at_once(api, tagged, [1], shared=ten_times, runner=ex)
    with pytest.raises(RuntimeError, match="shut down"):
        call_at_once(api, tagged, [1], shared=ten_times, runner=runner)


# -- on a Runner ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "inline"])
def test_a_value_submitted_to_the_runner_is_reused(kind: str) -> None:
    shared = Counted(lambda k: k * 2)

    with Runner() as runner:
        assert runner.submit("a", shared, "a", kind=kind).result(timeout=WAIT) == "aa"
        out = dagexec.map_shared(
            tagged, list("aba"), shared=shared, shared_kind=kind, runner=runner
        )

    assert out == [("a", "aa"), ("b", "bb"), ("a", "aa")]
    assert shared.calls == {"a": 1, "b": 1}


def test_a_second_map_on_the_same_runner_calls_shared_zero_times() -> None:
    shared = Counted(ten_times)

    with Runner() as runner:
        first = dagexec.map_shared(tagged, [1, 2, 1], shared=shared, runner=runner)
        second = dagexec.map_shared(lambda i, v: v - i, [2, 1], shared=shared, runner=runner)
        pairs = list(dagexec.imap_shared(tagged, [1], shared=shared, runner=runner))
        # And Runner.submit of the same call gets the value the maps left there.
        submitted = runner.submit(2, shared, 2).result(timeout=WAIT)

    assert first == [(1, 10), (2, 20), (1, 10)]
    assert second == [18, 9]
    assert pairs == [(0, (1, 10))]
    assert submitted == 20
    assert shared.calls == {1: 1, 2: 1}


@pytest.mark.parametrize("shared_kind", ["thread", "inline"])
def test_concurrent_maps_on_one_runner_compute_each_key_once_overall(shared_kind: str) -> None:
    n_callers = 4
    keys = list(range(40))
    shared = Counted(ten_times)
    barrier = threading.Barrier(n_callers, timeout=WAIT)

    def caller(runner: Runner, t: int) -> list[Any]:
        items = keys[t * 10 :] + keys[: t * 10]  # each caller in its own order
        barrier.wait()
        out = dagexec.map_shared(
            lambda i, v: v + i, items, shared=shared, shared_kind=shared_kind, runner=runner
        )
        assert out == [k * 11 for k in items]
        return out

    with Runner() as runner, ThreadPoolExecutor(n_callers) as callers:
        futures = [callers.submit(caller, runner, t) for t in range(n_callers)]
        for f in futures:
            f.result(timeout=WAIT)

    assert shared.calls == dict.fromkeys(keys, 1)


def test_concurrent_maps_with_different_shared_functions_each_get_their_own_values() -> None:
    """Same keys, another definition: a map never takes a value computed by another function."""
    keys = list(range(30))
    barrier = threading.Barrier(2, timeout=WAIT)

    def caller(runner: Runner, tag: str) -> list[Any]:
        barrier.wait()
        return dagexec.map_shared(
            lambda i, v: v, keys, shared=lambda k: (tag, k), shared_kind="thread", runner=runner
        )

    with Runner() as runner, ThreadPoolExecutor(2) as callers:
        futures = {tag: callers.submit(caller, runner, tag) for tag in ("one", "two")}
        out = {tag: f.result(timeout=WAIT) for tag, f in futures.items()}

    assert out == {tag: [(tag, k) for k in keys] for tag in ("one", "two")}


def test_a_key_another_caller_is_computing_is_joined_not_recomputed() -> None:
    go = threading.Event()

    def compute(k: str) -> Any:
        return ("slow", go.wait(WAIT)) if k == "slow" else "other value"

    def fn(item: str, value: Any) -> Any:
        if item == "other":
            go.set()
        return value

    shared = Counted(compute)
    with Runner() as runner:
        pending = runner.submit("slow", shared, "slow")  # still running when the map starts
        out = dagexec.map_shared(fn, ["slow", "other"], shared=shared, runner=runner)
        assert pending.result(timeout=WAIT) == ("slow", True)

    assert out == [("slow", True), "other value"]
    assert shared.calls == {"slow": 1, "other": 1}


def test_a_runner_holds_the_shared_values_until_clear() -> None:
    alive: list[weakref.ref[Payload]] = []

    def make(k: str) -> Payload:
        p = Payload()
        alive.append(weakref.ref(p))
        return p

    shared = Counted(make)
    with Runner() as runner:
        dagexec.map_shared(lambda i, p: i, list("aba"), shared=shared, runner=runner)
        gc.collect()
        assert len(alive) == 2
        assert all(r() is not None for r in alive), "the runner did not hold the values"

        runner.clear()
        gc.collect()
        assert all(r() is None for r in alive), "runner.clear() did not drop the values"

        dagexec.map_shared(lambda i, p: i, list("aba"), shared=shared, runner=runner)
    assert shared.calls == {"a": 2, "b": 2}


def test_a_runner_reuses_a_value_only_for_the_same_shared_function() -> None:
    with Runner() as runner:
        first = dagexec.map_shared(tagged, ["a"], shared=lambda k: k + "1", runner=runner)
        second = dagexec.map_shared(tagged, ["a"], shared=lambda k: k + "2", runner=runner)

    assert (first, second) == ([("a", "a1")], [("a", "a2")])


def test_a_failed_shared_call_is_not_held_by_the_runner() -> None:
    attempts: Counter[str] = Counter()

    def flaky(k: str) -> str:
        attempts[k] += 1
        if attempts[k] == 1:
            raise ValueError("first attempt fails")
        return k.upper()

    with Runner() as runner:
        failed = dagexec.map_shared(
            tagged, ["a", "a"], shared=flaky, runner=runner, return_exceptions=True
        )
        again = dagexec.map_shared(tagged, ["a", "a"], shared=flaky, runner=runner)

    assert all(isinstance(err, TaskFailed) for err in failed)
    assert again == [("a", "A"), ("a", "A")]
    assert attempts == {"a": 2}


# -- interruption, early close, nesting -------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "shared_kind"),
    [("map", "thread"), ("map", "process"), ("map", "inline"), ("imap", "thread")],
)
def test_ctrl_c_in_an_inline_item_propagates_and_leaves_nothing_running(
    api: str, shared_kind: str
) -> None:
    def fn(item: int, value: int) -> int:
        if item == 3:
            raise KeyboardInterrupt
        return value

    with pytest.raises(KeyboardInterrupt):
        results(
            api,
            fn,
            range(6),
            shared=ten_times,
            key=lambda i: i % 3,
            kind="inline",
            shared_kind=shared_kind,
        )


def test_ctrl_c_in_an_inline_shared_call_on_a_runner_leaves_the_key_free() -> None:
    interrupt = True

    def compute(k: str) -> str:
        if interrupt:
            raise KeyboardInterrupt
        return k.upper()

    shared = Counted(compute)
    with Runner() as runner:
        with pytest.raises(KeyboardInterrupt):
            dagexec.map_shared(tagged, ["a"], shared=shared, shared_kind="inline", runner=runner)
        interrupt = False
        out = dagexec.map_shared(
            tagged, ["a", "a"], shared=shared, shared_kind="inline", runner=runner
        )

    assert out == [("a", "A"), ("a", "A")]
    assert shared.calls == {"a": 2}


def test_ctrl_c_while_items_run_on_threads_propagates_and_the_runner_stays_usable() -> None:
    release = threading.Event()
    shared = Counted(str.upper)

    def fn(item: str, value: str) -> str:
        if item == "interrupt":
            signal.raise_signal(signal.SIGINT)  # handled in the main thread, inside the map
            return value
        release.wait(WAIT)
        return value

    with Runner(max_workers=4) as runner:
        with pytest.raises(KeyboardInterrupt):
            dagexec.map_shared(fn, ["blocked", "interrupt"], shared=shared, runner=runner)
        release.set()
        out = dagexec.map_shared(tagged, ["interrupt", "blocked"], shared=shared, runner=runner)

    assert out == [("interrupt", "INTERRUPT"), ("blocked", "BLOCKED")]
    assert shared.calls == {"blocked": 1, "interrupt": 1}  # held by the runner, not redone


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_breaking_out_of_imap_shared_early_leaves_nothing_running(kind: str) -> None:
    seen = []
    for pair in dagexec.imap_shared(
        tagged, range(10_000), shared=ten_times, key=lambda i: i % 5, kind=kind, window=8
    ):
        seen.append(pair)
        if len(seen) == 5:
            break

    assert all(v == (i, (i % 5) * 10) for i, v in seen)


def test_closing_imap_shared_starts_no_more_of_the_items_queued_in_the_pool() -> None:
    """Two workers, four units handed out: items 1 and 2 block, item 3 waits in the queue."""
    release = threading.Event()
    started: list[int] = []

    def fn(item: int, value: None) -> int:
        started.append(item)
        if item:
            release.wait(WAIT)
        return item

    with ThreadPoolExecutor(2) as ex:
        it = dagexec.imap_shared(
            fn,
            range(100),
            shared=lambda k: None,
            key=lambda i: 0,
            shared_kind="inline",
            window=8,
            executors={"thread": ex},
        )
        assert next(it) == (0, 0)
        it.close()
        with pytest.raises(StopIteration):
            next(it)
        release.set()

    assert started[0] == 0
    assert set(started) <= {0, 1, 2}, f"items started after close(): {started}"


@pytest.mark.parametrize("api", APIS)
def test_an_iterable_that_raises_midway_propagates_and_leaves_nothing_running(api: str) -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        results(api, tagged, items(), shared=ten_times, **({"window": 2} if api == "imap" else {}))


@pytest.mark.parametrize("share_runner", [True, False], ids=["on-the-runner", "own-pools"])
def test_map_shared_inside_a_task_of_a_one_worker_runner_does_not_deadlock(
    share_runner: bool,
) -> None:
    shared = Counted(ten_times)

    with Runner(max_workers=1) as runner:

        def outer() -> list[Any]:
            inner = runner if share_runner else None
            return dagexec.map_shared(tagged, [1, 2, 1, 3], shared=shared, runner=inner)

        out = runner.submit("outer", outer).result(timeout=WAIT)

    assert out == [(1, 10), (2, 20), (1, 10), (3, 30)]
    assert shared.calls == {1: 1, 2: 1, 3: 1}


# -- pools and scale ------------------------------------------------------------------------


@pytest.mark.parametrize("max_workers", [2, {"thread": 2}], ids=["int", "dict"])
def test_max_workers_bounds_concurrent_items(max_workers: int | dict[str, int]) -> None:
    """Two items run at once, never three (see ``PairedEntry``)."""
    n = 8
    pairs = PairedEntry(n, WAIT)

    def fn(item: int, value: None) -> int:
        assert pairs.enter(), "no second item ran beside this one"
        return item

    out = dagexec.map_shared(
        fn,
        range(n),
        shared=lambda k: None,
        key=lambda i: 0,
        shared_kind="inline",
        max_workers=max_workers,
    )

    assert out == list(range(n))
    assert pairs.peak == 2


def test_a_user_executor_runs_the_work_and_stays_open() -> None:
    with ThreadPoolExecutor(2, thread_name_prefix="user-pool") as ex:
        out = dagexec.map_shared(
            lambda i, v: (threading.current_thread().name, v),
            range(4),
            shared=lambda k: threading.current_thread().name,
            key=lambda i: i % 2,
            executors={"thread": ex},
        )

        assert all(a.startswith("user-pool") and b.startswith("user-pool") for a, b in out)
        assert ex.submit(ten_times, 4).result(timeout=WAIT) == 40  # not shut down by dagexec


@pytest.mark.parametrize("api", APIS)
def test_a_hundred_thousand_items_over_a_few_hundred_keys(api: str) -> None:
    """Interleaved keys for map_shared; grouped for imap_shared, which drops each value
    once the items in its window are done with it."""
    n, n_keys = 100_000, 300

    def key(i: int) -> int:
        return i % n_keys if api == "map" else i * n_keys // n

    shared = Counted(lambda k: k * 1000)

    out = results(api, lambda i, v: v + i, range(n), shared=shared, key=key)

    assert out == [key(i) * 1000 + i for i in range(n)]
    assert shared.calls == dict.fromkeys(range(n_keys), 1)
