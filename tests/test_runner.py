"""Runner: exactly-once across submits and runs, reuse of held values, nesting, shutdown.

Calls in process workers are counted through a file in ``tmp_path`` (one O_APPEND line
per call). A process task is held by a localhost socket: it connects and blocks on recv
until the test sends "go". Timeouts on waits only bound a failure; they never order events.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import dagexec
from dagexec import DuplicateKeyError, Graph, Runner, TaskFailed

N_THREADS = 32
WAIT = 30.0  # seconds: bounds a wait that must succeed, so a bug fails instead of hanging


# -- helpers that run in process workers (module level, so loky can import them) ------


def record(log: str, line: str) -> None:
    """Append one line to ``log``; O_APPEND writes this small are atomic across processes."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def read_log(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def make_payload(log: str) -> dict[str, Any]:
    record(log, "shared")
    return {"pid": os.getpid(), "items": list(range(10))}


def use_payload(log: str, i: int, payload: dict[str, Any]) -> tuple[int, int]:
    record(log, f"dep:{i}")
    return i, len(payload["items"])


def held_by_socket(log: str, port: int) -> dict[str, Any]:
    """Count the call, then block until the test sends on the socket."""
    record(log, "held")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        word = conn.recv(16)
    return {"pid": os.getpid(), "word": word}


def fail_with(message: str) -> None:
    raise ValueError(message)


def fail_first_call(log: str) -> str:
    record(log, "call")
    if len(read_log(Path(log))) == 1:
        raise ValueError("first call fails")
    return "ok"


def identity(value: Any) -> Any:
    return value


def one() -> int:
    return 1


@contextmanager
def go_server() -> Iterator[tuple[int, Callable[[], None]]]:
    """Yield a port and a ``release`` that lets the one task connected to it go on."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(WAIT)

    def release() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"go")

    try:
        yield server.getsockname()[1], release
    finally:
        server.close()


class Counter:
    """Thread-safe call counter for thread tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.n = 0

    def __call__(self) -> None:
        with self._lock:
            self.n += 1


def in_threads(n: int, body: Callable[[int], None]) -> None:
    """Run ``body(i)`` on n threads released together by a Barrier; re-raise failures."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            body(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# -- exactly once within a run ---------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 8])
@pytest.mark.parametrize("dependents_kind", ["thread", "process"])
def test_a_shared_process_task_runs_once_whatever_the_fan_out(
    tmp_path: Path, dependents_kind: str, size: int
) -> None:
    log = str(tmp_path / "calls.log")
    g = Graph()
    shared = g.add("shared", make_payload, log, kind="process")
    for i in range(50):
        g.add(("dep", i), use_payload, log, i, shared, kind=dependents_kind)

    with Runner(max_workers=size) as runner:
        results = runner.run(g)

    lines = read_log(tmp_path / "calls.log")
    assert lines.count("shared") == 1
    assert sorted(line for line in lines if line != "shared") == sorted(
        f"dep:{i}" for i in range(50)
    )
    assert dict(results) == {("dep", i): (i, 10) for i in range(50)}
    assert results.stats.tasks_run == 51
    assert results.stats.tasks_reused == 0


def test_graph_run_calls_a_shared_process_task_once(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    g = Graph()
    shared = g.add("shared", make_payload, log, kind="process")
    for i in range(50):
        g.add(("dep", i), use_payload, log, i, shared, kind="thread")
    results = g.run(max_workers=2)
    lines = read_log(tmp_path / "calls.log")
    assert lines.count("shared") == 1
    assert len(lines) == 51
    assert len(results) == 50


# -- submit: one key, many callers -----------------------------------------------------


def test_submit_returns_a_future_of_the_value() -> None:
    with Runner() as runner:
        future = runner.submit("k", lambda a, b=0: a + b, 1, b=2)
        assert isinstance(future, Future)
        assert future.result(timeout=WAIT) == 3


def test_concurrent_submits_of_one_key_share_one_execution() -> None:
    calls = Counter()
    release = threading.Event()

    def compute() -> object:
        calls()
        assert release.wait(WAIT), "the test never released the task"
        return object()

    futures: list[Future[object]] = [Future()] * N_THREADS
    with Runner() as runner:

        def submitter(i: int) -> None:
            futures[i] = runner.submit("k", compute)

        in_threads(N_THREADS, submitter)
        # Every submit has returned while the one execution is still held.
        assert not any(f.done() for f in futures)
        release.set()
        values = [f.result(timeout=WAIT) for f in futures]
        again = runner.submit("k", compute).result(timeout=WAIT)

    assert calls.n == 1
    assert all(v is values[0] for v in values)
    assert again is values[0]  # held: a later submit reuses it


def test_concurrent_submits_of_one_process_key_share_one_execution(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    futures: list[Future[dict[str, Any]]] = [Future()] * 16
    with Runner(max_workers={"process": 2}) as runner, go_server() as (port, release):

        def submitter(i: int) -> None:
            futures[i] = runner.submit("k", held_by_socket, log, port, kind="process")

        in_threads(len(futures), submitter)
        release()  # the one execution is connected; all submits have returned
        values = [f.result(timeout=WAIT) for f in futures]

    assert read_log(tmp_path / "calls.log") == ["held"]
    assert values[0]["word"] == b"go"
    assert all(v is values[0] for v in values)


def test_submit_of_a_different_definition_while_in_flight_raises() -> None:
    release = threading.Event()

    def slow() -> str:
        assert release.wait(WAIT)
        return "slow"

    with Runner() as runner:
        first = runner.submit("k", slow)
        with pytest.raises(DuplicateKeyError) as info:
            runner.submit("k", lambda: "other")
        assert info.value.key == "k"
        release.set()
        assert first.result(timeout=WAIT) == "slow"
        # Settled now: a different definition replaces it and is computed.
        assert runner.submit("k", lambda: "other").result(timeout=WAIT) == "other"


# -- submit: failures ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["thread", "inline", "process"])
def test_a_failed_submit_sets_task_failed_with_the_cause(kind: str) -> None:
    with Runner(max_workers=1) as runner:
        future = runner.submit("bad", fail_with, "boom", kind=kind)
        exc = future.exception(timeout=WAIT)
    assert isinstance(exc, TaskFailed)
    assert exc.key == "bad"
    assert isinstance(exc.__cause__, ValueError)
    assert exc.__cause__.args == ("boom",)
    with pytest.raises(TaskFailed):
        future.result()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_failures_are_not_memoised(tmp_path: Path, kind: str) -> None:
    log = str(tmp_path / "calls.log")
    with Runner(max_workers=1) as runner:
        first = runner.submit("flaky", fail_first_call, log, kind=kind)
        assert isinstance(first.exception(timeout=WAIT), TaskFailed)
        second = runner.submit("flaky", fail_first_call, log, kind=kind)
        assert second.result(timeout=WAIT) == "ok"
        third = runner.submit("flaky", fail_first_call, log, kind=kind)
        assert third.result(timeout=WAIT) == "ok"
    assert read_log(tmp_path / "calls.log") == ["call", "call"]  # the success is held


def test_a_run_over_mixed_kinds_returns_every_target() -> None:
    """Each task's outcome makes a task of another kind ready (inline <-> thread, process)."""
    kinds = ["thread", "inline", "thread", "inline", "process", "inline", "thread"]
    g = Graph()
    ref = g.add(0, one, kind=kinds[0])
    for i, kind in enumerate(kinds[1:], 1):
        ref = g.add(i, identity, ref, kind=kind)
    with Runner(max_workers=1) as runner:
        results = runner.run(g)
    assert dict(results) == {len(kinds) - 1: 1}
    assert results.stats.tasks_run == len(kinds)


# -- run: what a Runner holds and reuses -----------------------------------------------


def counted_chain(calls: dict[str, int]) -> Graph:
    """a -> b, counting calls per key."""

    def a() -> object:
        calls["a"] += 1
        return object()

    def b(value: object) -> tuple[object]:
        calls["b"] += 1
        return (value,)

    g = Graph()
    g.add("b", b, g.add("a", a))
    return g


def test_a_second_run_reuses_the_targets_it_holds() -> None:
    calls = {"a": 0, "b": 0}
    g = counted_chain(calls)
    with Runner() as runner:
        first = runner.run(g)
        second = runner.run(g)
    assert calls == {"a": 1, "b": 1}
    assert second["b"] is first["b"]
    assert (first.stats.tasks_run, first.stats.tasks_reused) == (2, 0)
    assert (second.stats.tasks_run, second.stats.tasks_reused) == (0, 1)


def test_a_released_intermediate_is_recomputed() -> None:
    calls = {"a": 0, "b": 0}
    g = counted_chain(calls)
    with Runner() as runner:
        first = runner.run(g)
        again = runner.run(g, targets=["a"])
    assert calls == {"a": 2, "b": 1}
    assert again["a"] is not first["b"][0]
    assert (again.stats.tasks_run, again.stats.tasks_reused) == (1, 0)


def test_a_target_held_from_an_earlier_run_is_reused_as_a_dependency() -> None:
    calls = {"a": 0, "b": 0}
    g = counted_chain(calls)
    with Runner() as runner:
        first = runner.run(g, targets=["a"])
        second = runner.run(g)
    assert calls == {"a": 1, "b": 1}
    assert second["b"][0] is first["a"]
    assert (second.stats.tasks_run, second.stats.tasks_reused) == (1, 1)


def test_clear_drops_what_the_runner_holds() -> None:
    calls = {"a": 0, "b": 0}
    g = counted_chain(calls)
    with Runner() as runner:
        runner.run(g)
        runner.clear()
        again = runner.run(g)
    assert calls == {"a": 2, "b": 2}
    assert (again.stats.tasks_run, again.stats.tasks_reused) == (2, 0)


def _leaf(value: int) -> list[int]:
    return [value]


def _other_leaf(value: int) -> list[int]:
    return [value, value]


@pytest.mark.parametrize(
    ("fn", "arg", "kind", "expected"),
    [(_other_leaf, 1, "thread", [1, 1]), (_leaf, 2, "thread", [2]), (_leaf, 1, "inline", [1])],
    ids=["fn", "args", "kind"],
)
def test_a_changed_definition_under_the_same_key_is_recomputed(
    fn: Callable[[int], list[int]], arg: int, kind: str, expected: list[int]
) -> None:
    original = Graph()
    original.add("k", _leaf, 1, kind="thread")
    changed = Graph()
    changed.add("k", fn, arg, kind=kind)
    with Runner() as runner:
        first = runner.run(original)
        second = runner.run(changed)
        third = runner.run(original)
    assert first["k"] == [1]
    assert second["k"] == expected
    assert (second.stats.tasks_run, second.stats.tasks_reused) == (1, 0)
    # The changed definition replaced the original, so the original runs again.
    assert third["k"] == [1]
    assert third["k"] is not first["k"]
    assert third.stats.tasks_run == 1


def test_a_rebuilt_graph_with_new_function_objects_is_recomputed() -> None:
    calls = {"a": 0, "b": 0}
    with Runner() as runner:
        runner.run(counted_chain(calls))
        second = runner.run(counted_chain(calls))  # new closures: different definitions
    assert calls == {"a": 2, "b": 2}
    assert (second.stats.tasks_run, second.stats.tasks_reused) == (2, 0)


def _plus_one(value: int) -> int:
    return value + 1


def _total(values: Any = (), *, named: Any = ()) -> int:
    return sum(values) + sum(named)


@pytest.mark.parametrize("where", ["positional", "in-a-list", "keyword"])
def test_a_rebuilt_graph_with_the_same_definitions_reuses_held_targets(where: str) -> None:
    """Same keys, functions, arguments and kinds in a new Graph object: same definitions."""
    calls = Counter()

    def a() -> int:
        calls()
        return 1

    def build() -> Graph:
        g = Graph()
        ref = g.add("a", a)
        if where == "positional":
            g.add("b", _plus_one, ref)
        elif where == "in-a-list":
            g.add("b", _total, [ref, 1])
        else:
            g.add("b", _total, named=(ref, 1))
        return g

    with Runner() as runner:
        first = runner.run(build())
        second = runner.run(build())
    assert first["b"] == 2
    assert calls.n == 1, "'b' (same fn, same dependency key) was recomputed for a new Graph"
    assert second["b"] == 2
    assert (second.stats.tasks_run, second.stats.tasks_reused) == (0, 1)


@pytest.mark.parametrize(
    ("args", "kwargs"), [((2,), {}), ((), {"value": 2})], ids=["args", "kwargs"]
)
def test_a_submitted_key_is_reused_by_a_run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    calls = Counter()

    def leaf(value: int) -> list[int]:
        calls()
        return [value]

    g = Graph()
    g.add("top", identity, g.add("leaf", leaf, *args, **kwargs))
    with Runner() as runner:
        submitted = runner.submit("leaf", leaf, *args, **kwargs).result(timeout=WAIT)
        results = runner.run(g)
    assert calls.n == 1
    assert results["top"] is submitted
    assert (results.stats.tasks_run, results.stats.tasks_reused) == (1, 1)


def test_a_submitted_key_with_another_kind_is_recomputed_by_a_run() -> None:
    calls = Counter()

    def leaf() -> list[int]:
        calls()
        return [1]

    g = Graph()
    g.add("leaf", leaf, kind="inline")
    with Runner() as runner:
        submitted = runner.submit("leaf", leaf, kind="thread").result(timeout=WAIT)
        results = runner.run(g)
    assert calls.n == 2
    assert results["leaf"] == submitted
    assert results["leaf"] is not submitted


def test_a_run_target_is_reused_by_submit() -> None:
    calls = Counter()

    def leaf() -> object:
        calls()
        return object()

    g = Graph()
    g.add("leaf", leaf)
    with Runner() as runner:
        results = runner.run(g)
        submitted = runner.submit("leaf", leaf).result(timeout=WAIT)
    assert calls.n == 1
    assert submitted is results["leaf"]


# -- two runs at once ------------------------------------------------------------------


class Rendezvous:
    """An argument that signals when a run compares its definition with another's.

    A run that meets a key in flight compares the two definitions before it waits on
    the running one, so the shared task can hold until the second run has got there.
    """

    def __init__(self, met: threading.Event) -> None:
        self.met = met

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rendezvous):
            return NotImplemented
        self.met.set()
        return True

    def __hash__(self) -> int:
        return 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("with_dependency", [False, True], ids=["leaf", "with-dependency"])
def test_two_concurrent_runs_of_different_graphs_run_a_shared_key_once(
    with_dependency: bool,
) -> None:
    met = threading.Event()
    started = threading.Event()
    calls = Counter()

    def shared(rendezvous: Rendezvous, *inputs: int) -> object:
        calls()
        started.set()
        assert met.wait(WAIT), "the second run never reached the shared key"
        return object()

    def build(i: int) -> Graph:
        g = Graph()
        inputs = [g.add("load", one, kind="inline")] if with_dependency else []
        g.add(("out", i), identity, g.add("shared", shared, Rendezvous(met), *inputs))
        return g

    with Runner() as runner:
        first: list[dagexec.Results] = []
        errors: list[BaseException] = []

        def run_first() -> None:
            try:
                # "shared" is a target, so its value stays whenever the second run looks.
                first.append(runner.run(build(1), targets=["shared", ("out", 1)]))
            except BaseException as exc:
                errors.append(exc)
            finally:
                started.set()  # a first run that ended without the shared task fails below

        thread = threading.Thread(target=run_first)
        thread.start()
        try:
            assert started.wait(WAIT)
            second = runner.run(build(2))
        finally:
            met.set()  # never leave the first run hanging on a failure here
            thread.join()
    assert not errors, errors
    assert calls.n == 1
    assert second[("out", 2)] is first[0]["shared"] is first[0][("out", 1)]
    assert second.stats.tasks_reused == 1
    assert second.stats.tasks_run == (2 if with_dependency else 1)  # load is not held


# -- tasks that submit and wait --------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_task_that_submits_and_waits_does_not_deadlock_a_pool_of_one() -> None:
    with Runner(max_workers={"thread": 1}) as runner:

        def outer() -> list[int]:
            return [runner.submit("inner", one).result(timeout=WAIT)]

        assert runner.submit("outer", outer).result(timeout=WAIT) == [1]


@pytest.mark.timeout(30)
def test_two_tasks_waiting_on_a_key_owned_elsewhere_do_not_deadlock_a_pool_of_one() -> None:
    """The inner key is queued behind the outer tasks on the only worker."""
    inner_calls = Counter()
    outer_running = threading.Event()
    inner_queued = threading.Event()

    def inner() -> object:
        inner_calls()
        return object()

    with Runner(max_workers={"thread": 1}) as runner:

        def outer(i: int) -> object:
            if i == 1:
                outer_running.set()
                assert inner_queued.wait(WAIT)
            return runner.submit("inner", inner).result(timeout=WAIT)

        first = runner.submit(("outer", 1), outer, 1)
        second = runner.submit(("outer", 2), outer, 2)
        assert outer_running.wait(WAIT)
        # Owned by this thread, queued behind both outer tasks on the one worker.
        owned = runner.submit("inner", inner)
        inner_queued.set()
        values = [f.result(timeout=WAIT) for f in (first, second, owned)]
    assert inner_calls.n == 1
    assert values[0] is values[1] is values[2]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("inner_kind", ["thread", "process"])
def test_a_graph_task_that_submits_and_waits_does_not_deadlock(inner_kind: str) -> None:
    with Runner(max_workers=1) as runner:

        def outer(offset: int) -> int:
            return runner.submit("inner", one, kind=inner_kind).result(timeout=WAIT) + offset

        g = Graph()
        g.add("total", identity, g.add("outer", outer, 10))
        results = runner.run(g)
        assert runner.submit("inner", one, kind=inner_kind).result(timeout=WAIT) == 1
    assert dict(results) == {"total": 11}


@pytest.mark.timeout(30)
def test_a_graph_task_that_submits_a_key_its_own_run_also_runs() -> None:
    """Whoever claims 'inner' first (the run or outer's submit), it runs once, no deadlock."""
    calls = Counter()

    def inner() -> object:
        calls()
        return object()

    with Runner(max_workers={"thread": 1}) as runner:
        g = Graph()
        g.add("outer", lambda: runner.submit("inner", inner).result(timeout=WAIT))
        g.add("inner", inner)
        results = runner.run(g)
    assert calls.n == 1
    assert results["outer"] is results["inner"]
    assert results.stats.tasks_run + results.stats.tasks_reused == 2


@pytest.mark.timeout(60)
def test_a_pool_keeps_its_size_after_a_task_waited_on_a_nested_run() -> None:
    """A worker that waits lends its pool a thread; handing it back must not shrink the pool."""
    with Runner(max_workers={"thread": 2}) as runner:

        def outer() -> int:
            g = Graph()
            g.add("n", one, kind="inline")
            return runner.run(g)["n"]  # type: ignore[no-any-return]

        assert runner.submit("outer", outer).result(timeout=WAIT) == 1
        barrier = threading.Barrier(2, timeout=10)

        def meet(i: int) -> int:
            barrier.wait()  # needs both tasks running at once: a pool of 2
            return i

        futures = [runner.submit(("meet", i), meet, i) for i in range(2)]
        assert [f.result(timeout=WAIT) for f in futures] == [0, 1]


# -- pools, context manager and shutdown -----------------------------------------------


def test_runner_runs_tasks_in_parallel_up_to_max_workers() -> None:
    barrier = threading.Barrier(3, timeout=WAIT)

    def meet(i: int) -> int:
        barrier.wait()
        return i

    with Runner(max_workers={"thread": 3}) as runner:
        futures = [runner.submit(("meet", i), meet, i) for i in range(3)]
        assert [f.result(timeout=WAIT) for f in futures] == [0, 1, 2]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": {"thread": 0}}, ValueError),
        ({"max_workers": {"gpu": 1}}, TypeError),
        ({"max_workers": "2"}, TypeError),
        ({"executors": {"inline": ThreadPoolExecutor}}, TypeError),
        ({"executors": {"thread": object()}}, TypeError),
    ],
    ids=["zero", "zero-per-kind", "unknown-kind", "not-int", "inline-executor", "not-executor"],
)
def test_runner_checks_pool_options_as_graph_run_does(
    options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Runner(**options)
    g = Graph()
    g.add("k", one)
    with pytest.raises(error):
        g.run(**options)


def test_exiting_the_runner_shuts_down_its_pools(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    with Runner(max_workers=2) as runner:
        assert runner.submit("t", one).result(timeout=WAIT) == 1
        payload = runner.submit("p", make_payload, log, kind="process").result(timeout=WAIT)
        assert payload["pid"] != os.getpid()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("dagexec-")]
    with pytest.raises(RuntimeError):
        runner.submit("late", one)
    g = Graph()
    g.add("k", one)
    with pytest.raises(RuntimeError):
        runner.run(g)


def test_shutdown_without_context_manager() -> None:
    runner = Runner()
    assert runner.submit("t", one).result(timeout=WAIT) == 1
    runner.shutdown()
    with pytest.raises(RuntimeError):
        runner.submit("t2", one)


def test_a_runner_never_shuts_down_an_executor_it_was_given() -> None:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="users-pool") as executor:
        with Runner(executors={"thread": executor}) as runner:
            name = runner.submit("where", lambda: threading.current_thread().name)
            assert name.result(timeout=WAIT).startswith("users-pool")
            g = Graph()
            g.add("k", lambda: threading.current_thread().name)
            assert runner.run(g)["k"].startswith("users-pool")
        assert executor.submit(one).result(timeout=WAIT) == 1


# -- chains in shared runs -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_chain_in_a_shared_run_settles_each_key_as_soon_as_it_is_computed() -> None:
    """Another run waiting on a key in the middle of a chain gets it at once, even while
    a later task of the chain waits for that other run (no deadlock)."""
    started = threading.Event()
    joined = threading.Event()
    go = threading.Event()
    got_b = threading.Event()
    calls = Counter()

    def a(_: Rendezvous) -> int:
        calls()
        started.set()
        assert go.wait(WAIT)
        return 1

    def b(x: int) -> int:
        return x + 1

    def c(x: int) -> int:
        assert got_b.wait(WAIT), "the other run never got b while the chain was running"
        return x + 1

    def d(x: int) -> int:
        got_b.set()
        return x * 10

    def build(last: Callable[[int], int], kind: str) -> Graph:
        g = Graph()
        g.add(last.__name__, last, g.add("b", b, g.add("a", a, Rendezvous(joined))), kind=kind)
        return g

    with Runner(max_workers={"thread": 4}) as runner:
        results: dict[str, Any] = {}
        first = threading.Thread(target=lambda: results.update(runner.run(build(c, "thread"))))
        first.start()
        try:
            assert started.wait(WAIT)
            second = threading.Thread(target=lambda: results.update(runner.run(build(d, "inline"))))
            second.start()
            assert joined.wait(WAIT)  # the second run compared definitions: it joins "a"
            go.set()
            second.join(WAIT)
        finally:
            go.set()
            got_b.set()
            first.join(WAIT)
    assert results == {"c": 3, "d": 20}
    assert calls.n == 1
