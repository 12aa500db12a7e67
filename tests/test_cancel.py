"""Runner.cancel and Ctrl-C: the run stops at once, queued work never runs, process
workers running its tasks are terminated, what completed is kept (``.results``), and no
child process is left behind, even when Ctrl-C lands while work is being handed out.

Cancels are triggered by events the tasks cause (a task arriving at a Gate, an Event a
task sets), never by a timer; a bound on how long something takes only turns a hang into
a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
from _control import WAIT, Canceller, Gate, held, lines, lingering, record_and_return
from conftest import _children

from dagexec import Cancelled, DagexecError, Graph, Results, Runner

HANG = 5.0  # seconds: "returns within about a second", with room for a noisy machine
TESTS = Path(__file__).parent


def value(v: object, *after: object) -> object:
    return v


def spawned(before: dict[int, str]) -> dict[int, str]:
    """Child processes (loky's singletons aside) that were not there ``before``."""
    return {pid: cmd for pid, cmd in _children().items() if pid not in before}


def new_children(before: dict[int, str]) -> dict[int, str]:
    """Those of ``spawned(before)`` that are not in the middle of exiting."""
    return lingering(spawned(before))


class Hang:
    """A thread task that hangs until released; says when it entered and when it left."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()

    def __call__(self, *after: object) -> str:
        self.entered.set()
        self.release.wait(WAIT)
        self.left.set()
        return "late"

    def finish(self) -> None:
        self.release.set()
        assert self.left.wait(WAIT)


def test_cancelled_is_a_cancelled_error_and_a_dagexec_error() -> None:
    assert issubclass(Cancelled, CancelledError)
    assert issubclass(Cancelled, DagexecError)
    assert not issubclass(Cancelled, KeyboardInterrupt)  # only the Ctrl-C one is


# -- Runner.cancel ---------------------------------------------------------------------


def test_cancel_from_another_thread_stops_the_process_tasks_and_keeps_the_results() -> None:
    ready = threading.Event()
    with Gate() as gate, Runner(max_workers={"process": 2}) as runner:

        def watch() -> str:
            gate.arrivals(2)
            ready.set()  # both process tasks are running: time to cancel
            return "watched"

        g = Graph()
        quick = g.add("quick", value, 1, kind="process")
        g.add("tquick", value, 2)
        g.add("p1", held, gate.port, "p1", quick, kind="process")
        g.add("p2", held, gate.port, "p2", quick, kind="process")
        g.add("watch", watch)
        with Canceller(runner, lambda: ready.wait(WAIT)) as canceller:
            with pytest.raises(Cancelled) as info:
                runner.run(g, keep="all")
            took = canceller.took()
        assert took < HANG
        exc = info.value
        assert isinstance(exc, CancelledError)
        assert not isinstance(exc, KeyboardInterrupt)
        assert exc.results is not None
        assert (exc.results["quick"], exc.results["tquick"]) == (1, 2)
        assert "p1" not in exc.results
        assert "p2" not in exc.results
        for pid in gate.pids:
            assert gate.exited(pid, HANG)  # terminated, with the Runner still open
        # Still usable, on fresh workers.
        again = Graph()
        again.add("p", value, "p", kind="process")
        again.add("t", value, "t")
        assert dict(runner.run(again)) == {"p": "p", "t": "t"}


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_cancel_drops_the_queued_work(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    hang = Hang()
    with Gate() as gate:
        with Runner(max_workers=1) as runner:
            g = Graph()
            if kind == "process":
                g.add("first", held, gate.port, "first", kind=kind, priority=1)
                trigger: Callable[[], object] = lambda: gate.arrivals(1)  # noqa: E731
            else:
                g.add("first", hang, priority=1)
                trigger = lambda: hang.entered.wait(WAIT)  # noqa: E731
                # Many short units first: the pool then takes a deep queue of units at
                # once, so the cancelled ones wait in the pool's own queue, not the run's.
                warm = Graph()
                for i in range(64):
                    warm.add(("warm", i), value, i)
                runner.run(warm)
            for i in range(10):
                g.add(f"q{i}", record_and_return, log, f"q{i}", i, kind=kind)
            try:
                with Canceller(runner, trigger) as canceller:
                    with pytest.raises(Cancelled):
                        runner.run(g)
                    assert canceller.took() < HANG
                assert not hang.left.is_set()  # a thread runs on; the run did not wait
            finally:
                if kind == "thread":
                    hang.finish()
            # Still usable: its one worker takes new work (after what was queued, were
            # any of that to run after all).
            again = Graph()
            again.add("again", value, "again", kind=kind)
            assert runner.run(again)["again"] == "again"
        # The Runner is shut down, its pools joined: anything queued would have run by now.
        assert lines(log) == []


def test_a_task_can_cancel_its_own_run() -> None:
    hang = Hang()
    with Runner() as runner:
        g = Graph()
        g.add("hang", hang)
        g.add("stop", lambda: hang.entered.wait(WAIT) and runner.cancel())
        try:
            with pytest.raises(Cancelled):
                runner.run(g)
        finally:
            hang.finish()


def test_a_cancel_with_no_run_in_progress_changes_nothing() -> None:
    with Runner() as runner:
        runner.cancel()
        g = Graph()
        g.add("p", value, "p", kind="process")
        g.add("t", value, "t")
        assert dict(runner.run(g)) == {"p": "p", "t": "t"}


def test_cancel_stops_every_run_in_progress() -> None:
    outcomes: list[BaseException | Results] = []

    def run(runner: Runner, g: Graph) -> None:
        try:
            outcomes.append(runner.run(g))
        except BaseException as exc:
            outcomes.append(exc)

    with Gate() as gate, Runner(max_workers={"process": 2}) as runner:
        runs = []
        for name in ("one", "two"):
            g = Graph()
            g.add(name, held, gate.port, name, kind="process")
            runs.append(threading.Thread(target=run, args=(runner, g)))
        with Canceller(runner, lambda: gate.arrivals(2)):
            for t in runs:
                t.start()
            for t in runs:
                t.join(WAIT)
        assert [type(o) for o in outcomes] == [Cancelled, Cancelled]
        assert all(gate.exited(pid, HANG) for pid in gate.pids)


@pytest.mark.parametrize("on", ["graph", "runner"])
def test_a_value_computed_early_in_a_thread_chain_is_kept_when_the_run_stops(on: str) -> None:
    """``a -> b``: "a" is computed; "b" (its only dependent) runs on the same worker right
    after it and hangs. Stopping the run must not lose "a"."""
    hang = Hang()
    g = Graph()
    g.add("b", hang, g.add("a", value, "a"))
    try:
        if on == "graph":
            with pytest.raises(Cancelled) as info:
                g.run(targets=["a", "b"], timeout=1.0)
        else:
            with Runner() as runner:
                with (
                    Canceller(runner, lambda: hang.entered.wait(WAIT)),
                    pytest.raises(Cancelled) as info,
                ):
                    runner.run(g, targets=["a", "b"])
                hang.finish()
    finally:
        hang.finish()
    assert info.value.results is not None
    assert dict(info.value.results) == {"a": "a"}


@pytest.mark.parametrize("how", ["cancel", "ctrl-c"])
def test_an_outcome_that_arrived_while_the_driver_was_busy_is_kept(how: str) -> None:
    """Task "compute" returns while the driver runs an inline task; the run stops before
    the driver reads that outcome off its queue. It was computed: it must be kept."""
    inline_started = threading.Event()

    def compute() -> str:
        assert inline_started.wait(WAIT)
        return "computed"

    # One thread: a task submitted behind "compute" runs only once its pool thread has
    # posted compute's outcome, which is how the inline task knows it is queued.
    with Runner(max_workers={"thread": 1}) as runner:

        def stop(*after: object) -> None:
            inline_started.set()
            assert runner.submit("probe", value, "probe").result(WAIT) == "probe"
            if how == "cancel":
                runner.cancel()
            else:
                signal.raise_signal(signal.SIGINT)

        g = Graph()
        g.add("compute", compute)
        go = g.add("go", value, "go", kind="async")  # lets "stop" start after "compute"
        g.add("stop", stop, go, kind="inline")
        with pytest.raises(Cancelled) as info:
            runner.run(g, targets=["compute", "stop"])
    results = info.value.results
    assert results is not None
    assert "compute" in results, f"lost: only {dict(results)} kept"
    assert results["compute"] == "computed"


# -- Ctrl-C ----------------------------------------------------------------------------


def interrupt_after(gate: Gate, n: int) -> None:
    """Wait until ``n`` tasks hold at ``gate``, then Ctrl-C (handled in the main thread)."""
    gate.arrivals(n)
    signal.raise_signal(signal.SIGINT)


def test_ctrl_c_raises_a_keyboard_interrupt_that_is_cancelled_with_the_results() -> None:
    with Gate() as gate, Runner(max_workers={"process": 2}) as runner:
        g = Graph()
        quick = g.add("quick", value, 1, kind="process")
        g.add("p1", held, gate.port, "p1", quick, kind="process")
        g.add("p2", held, gate.port, "p2", quick, kind="process")
        g.add("sigint", interrupt_after, gate, 2)
        with pytest.raises(KeyboardInterrupt) as info:
            runner.run(g, keep="all")
        exc = info.value
        assert isinstance(exc, Cancelled)
        assert isinstance(exc, CancelledError)
        assert exc.results is not None
        assert exc.results["quick"] == 1
        assert "p1" not in exc.results
        for pid in gate.pids:
            assert gate.exited(pid, HANG)
        again = Graph()
        again.add("p", value, "p", kind="process")
        assert runner.run(again)["p"] == "p"


def interrupt_inline(*after: object) -> None:
    signal.raise_signal(signal.SIGINT)  # in the main thread: raised right here


def test_ctrl_c_in_an_inline_task_with_process_tasks_running_leaves_no_child_process() -> None:
    before = _children()
    g = Graph()
    first = g.add("first", value, 0, kind="process")
    g.add("sigint", interrupt_inline, first, kind="inline")
    for i in range(200):
        g.add(i, time.sleep, 0.05, kind="process")
    with pytest.raises(KeyboardInterrupt) as info:
        g.run(max_workers={"process": 2})
    left = new_children(before)
    assert isinstance(info.value, Cancelled)
    assert left == {}


SCRIPT = """
import json, sys
import dagexec
from _control import held, lingering
from conftest import _children

g = dagexec.Graph()
quick = g.add("quick", int, "7")
for i in range(2):
    g.add(i, held, int(sys.argv[1]), str(i), quick, kind="process")
try:
    g.run(max_workers={"process": 2}, keep="all")
except KeyboardInterrupt as exc:
    print(json.dumps({
        "cancelled": isinstance(exc, dagexec.Cancelled),
        "results": dict(exc.results),
        "children": list(lingering(_children())),
    }))
"""


def test_a_real_sigint_to_the_process_stops_the_run_and_leaves_no_child(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the process, handled by its main thread."""
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    out, err = tmp_path / "out", tmp_path / "err"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    with Gate() as gate, out.open("w") as stdout, err.open("w") as stderr:
        # Files, not pipes: a worker left behind would hold a pipe open, and us with it.
        proc = subprocess.Popen(
            [sys.executable, str(script), str(gate.port)], env=env, stdout=stdout, stderr=stderr
        )
        try:
            workers = gate.arrivals(2)  # both held: the run is in full swing
            proc.send_signal(signal.SIGINT)
            proc.wait(WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in gate.pids:  # its workers, should they outlive it (a failure)
                if gate.alive(pid):
                    os.kill(pid, signal.SIGKILL)
        assert proc.returncode == 0, err.read_text()
        report = json.loads(out.read_text())
        assert report == {"cancelled": True, "results": {"quick": 7}, "children": []}
        assert all(gate.exited(pid, HANG) for pid in workers)


# Last in the file: an orphan they leave (a bug) slows every later test's leak check.


def interrupt_as_worker_starts(n: int, before: dict[int, str]) -> None:
    """Ctrl-C the moment the ``n``-th worker process of the run appears: the driver is
    still starting workers and handing out their first units (hundreds are ready)."""
    deadline = time.monotonic() + WAIT
    while len(spawned(before)) < n and time.monotonic() < deadline:
        time.sleep(0.0005)  # this task watches the process table as fast as it can
    signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ctrl_c_while_the_driver_starts_workers_leaves_no_child_process(n: int) -> None:
    before = _children()
    g = Graph()
    g.add("sigint", interrupt_as_worker_starts, n, before)
    for i in range(200):
        g.add(i, value, i, kind="process")
    with pytest.raises(KeyboardInterrupt) as info:
        g.run(max_workers={"process": 4})
    left = new_children(before)  # at once: Graph.run shut its pools down before it raised
    assert isinstance(info.value, Cancelled)
    assert left == {}
