"""Running on dask.distributed: a real LocalCluster of two worker processes.

The same graphs run with ``executors=dagexec.executors.dask(client)``: results as
locally, each task run once, error chains with the worker's traceback, retries,
cancellation that leaves nothing queued on the cluster, progress and events, and
workers killed during a run. Tasks run in the cluster's worker processes, so they
count their runs through files (``_control``); every wait is bounded.

One cluster serves the module. The conftest's leak check is replaced here by one that
also allows what the cluster starts by itself (see ``no_leaks``); the module fixture
checks that closing the cluster leaves nothing behind.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from _control import WAIT, Gate, attempt, flaky, held, lines, pids, record
from conftest import _children, _settled

import dagexec
import dagexec.executors
from dagexec import Cancelled, Graph, Runner, TaskEvent, TaskFailed, WorkerDied

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(60)

# Started by distributed for its own use and kept for the interpreter's life (like loky's
# resource tracker), or by a nanny watching a worker it started to replace a dead one.
_CLUSTER_THREADS = ("Dask-Offload", "AsyncProcess Dask Worker", "QueueFeederThread")


# -- the cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A LocalCluster of two single-threaded worker processes, closed at module end.

    The client gives up fetching a value from a dead worker after the connect timeout
    (30 s by default) before dask computes it again elsewhere: 5 s here.
    """
    threads = set(threading.enumerate())
    children = _children()
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "5s"}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
    ):
        yield local
    gc.collect()
    threads |= {t for t in threading.enumerate() if t.name.startswith("Dask-Offload")}
    left, kids = _settled(threads, children, time.monotonic() + 10.0)
    assert not left, f"the cluster left threads behind: {left}"
    assert not kids, f"the cluster left processes behind: {kids}"


@pytest.fixture
def client(cluster: Any) -> Iterator[Any]:
    """A Client of the module's cluster, closed after the test (with its futures)."""
    with distributed.Client(cluster) as c:
        yield c
        whole(c)


@pytest.fixture(autouse=True)
def no_leaks(cluster: Any) -> Iterator[None]:
    """The conftest's check, less what the cluster starts on its own.

    A killed worker is replaced by a new process (with new threads watching it), and
    distributed starts a process-wide thread of its own on first use: those are the
    cluster's, not leaks of dagexec. Anything else new fails the test.
    """
    before = set(threading.enumerate())
    children_before = _children()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    before |= {t for t in threading.enumerate() if t.name.startswith(_CLUSTER_THREADS)}
    workers = {w.pid: "dask worker" for w in cluster.workers.values() if w.pid}
    threads, children = _settled(before, children_before | workers, time.monotonic() + 5.0)
    assert not threads, f"test leaked threads: {threads}"
    assert not children, f"test leaked child processes: {children}"


def whole(client: Any) -> None:
    """Wait until the cluster has two live workers again and holds no tasks."""
    client.wait_for_workers(2, timeout=WAIT)
    until(lambda: len(live_workers(client)) == 2, "two live workers")
    until(lambda: forgotten(client), "the scheduler to forget every task")


def forgotten(client: Any) -> bool:
    """Say whether the scheduler holds no task: no future of ours is left alive.

    When a worker dies, dask's client keeps the futures of the tasks it lost in frames
    caught in reference cycles (tracebacks) until the garbage collector runs: run it.
    """
    gc.collect()
    return scheduler_tasks(client) == 0


def live_workers(client: Any) -> dict[str, int]:
    """Return the pid of each worker that answers, if it is alive."""
    try:
        found = client.run(os.getpid, on_error="ignore")
    except OSError:
        return {}
    return {addr: pid for addr, pid in found.items() if psutil.pid_exists(pid)}


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def scheduler_tasks(client: Any) -> int:
    """Return how many tasks the scheduler knows (queued, running or held)."""
    return int(client.run_on_scheduler(_task_count))


def _worker_states(dask_worker: Any) -> list[str]:
    return sorted(ts.state for ts in dask_worker.state.tasks.values())


def _set_allowed_failures(n: int, dask_scheduler: Any) -> int:
    old = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = n
    return old


@contextmanager
def allowed_failures(client: Any, n: int) -> Iterator[None]:
    """Let the scheduler run a task whose worker died on ``n`` more workers (default 3)."""
    old = client.run_on_scheduler(_set_allowed_failures, n)
    try:
        yield
    finally:
        client.run_on_scheduler(_set_allowed_failures, old)


# -- tasks (module level: the workers import them) ----------------------------------------


def parse(log: Path, name: str) -> dict[str, Any]:
    """The shared work: one line in ``log`` per call."""
    record(log, f"parse:{name} {os.getpid()}")
    return {"name": name, "words": name.split("-")}


def check(tree: dict[str, Any], rule: int) -> str:
    return f"{tree['name']}:{rule}:{len(tree['words']) * rule}"


def plus_one(n: int) -> int:
    return n + 1


def broken(tree: dict[str, Any]) -> str:
    raise ValueError(f"no rule for {tree['name']}")


def killed_first(log: Path, tag: str) -> int:
    """Kill this worker process on the first attempt; then return the pid."""
    if attempt(log, tag) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def always_killed(log: Path, tag: str, *after: object) -> None:
    attempt(log, tag)
    os.kill(os.getpid(), signal.SIGKILL)


def fan_out(log: Path, names: int = 6, rules: int = 4) -> Graph:
    g = Graph()
    for i in range(names):
        name = f"file-{i}" + "-x" * i
        tree = g.add(f"parse:{name}", parse, log, name, kind="process")
        for rule in range(1, rules + 1):
            g.add(f"check:{name}:{rule}", check, tree, rule, kind="process")
    g.add("count", len, [g.ref(k) for k in g if str(k).startswith("check")], kind="thread")
    return g


# -- the helper ---------------------------------------------------------------------------


def test_dask_returns_an_executor_per_kind(client: Any) -> None:
    assert set(dagexec.executors.dask(client)) == {"process"}
    both = dagexec.executors.dask(client, kinds=["thread", "process", "thread"])
    assert set(both) == {"thread", "process"}
    with pytest.raises(ValueError, match="'inline' cannot run on a dask cluster"):
        dagexec.executors.dask(client, kinds=("inline",))
    with pytest.raises(ValueError, match="kinds is empty"):
        dagexec.executors.dask(client, kinds=())
    with pytest.raises(TypeError, match=r"takes a distributed\.Client"):
        dagexec.executors.dask("tcp://127.0.0.1:8786")  # type: ignore[arg-type]


def test_a_shut_down_executor_takes_nothing_more(client: Any, tmp_path: Path) -> None:
    executor = dagexec.executors.DaskExecutor(client)
    assert executor.submit(plus_one, 1).result(timeout=WAIT) == 2
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(plus_one, 1)


def test_two_identical_submissions_both_run(client: Any, tmp_path: Path) -> None:
    # pure=False: dask must not merge them (a retry resubmits the very same payload).
    log = tmp_path / "log"
    executor = dagexec.executors.dask(client)["process"]
    futures = [executor.submit(attempt, log, "same") for _ in range(2)]
    done, _ = wait(futures, timeout=WAIT)
    assert len(done) == 2
    assert len(lines(log)) == 2


# -- the same graph, on the cluster --------------------------------------------------------


def test_a_fan_out_gives_the_local_results_and_parses_each_file_once(
    client: Any, tmp_path: Path
) -> None:
    here = fan_out(tmp_path / "here").run(keep="all")
    log = tmp_path / "log"
    there = fan_out(log).run(keep="all", executors=dagexec.executors.dask(client))
    assert dict(there) == dict(here)
    assert there["count"] == 24
    parsed = [line.split()[0] for line in lines(log)]
    assert sorted(parsed) == sorted(k for k in there if str(k).startswith("parse"))
    workers = set(live_workers(client).values())
    assert {int(line.split()[1]) for line in lines(log)} <= workers
    for key, task in there.stats.tasks.items():
        if key != "count":
            assert task.worker.startswith("DaskExecutor pid "), (key, task.worker)


def test_dasks_own_client_executor_works_too(client: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    results = fan_out(log, names=2, rules=2).run(executors={"process": client.get_executor()})
    assert results["count"] == 4
    assert len(lines(log)) == 2


def test_thread_tasks_run_on_the_cluster_when_asked(client: Any, tmp_path: Path) -> None:
    g = Graph()
    g.add("pid", os.getpid)  # a thread task
    g.add("lock", threading.Lock)  # a thread task whose value cannot travel
    g.add("n2", plus_one, g.add("n1", plus_one, g.add("n0", int, 1)))  # a chain, one unit
    executors = dagexec.executors.dask(client, kinds=("thread", "process"))
    results = g.run(executors=executors, on_error="continue")
    assert results["pid"] in live_workers(client).values()
    with pytest.raises(TaskFailed, match="cannot be pickled"):
        results["lock"]
    assert results["n2"] == 3
    chain = [results.stats.tasks[k] for k in ("n0", "n1", "n2")]
    assert len({t.worker for t in chain}) == 1
    assert chain[0].worker.startswith("DaskExecutor pid ")
    assert chain[0].finished <= chain[1].started <= chain[1].finished <= chain[2].started


def test_a_failure_skips_its_dependents_and_carries_the_workers_traceback(
    client: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    g = Graph()
    tree = g.add("parse:a", parse, log, "a", kind="process")
    bad = g.add("rule:a", broken, tree, kind="process")
    g.add("report:a", str, bad, kind="process")
    g.add("parse:b", parse, log, "b", kind="process")
    executors = dagexec.executors.dask(client)
    with pytest.raises(TaskFailed) as info:
        g.run(executors=executors)
    err = info.value
    assert err.key == "rule:a"
    assert isinstance(err.__cause__, ValueError)
    assert "report:a <- rule:a" in str(err)
    remote = str(err.__cause__.__cause__)
    assert 'raise ValueError(f"no rule for' in remote
    assert "in broken" in remote

    results = g.run(executors=executors, on_error="continue")
    assert results.skipped == ["report:a"]
    assert set(results.errors) == {"rule:a"}
    assert results["parse:b"] == {"name": "b", "words": ["b"]}


def test_a_task_failing_twice_succeeds_on_its_third_attempt(client: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", flaky, log, "a", 2, kind="process", retries=2, backoff=0)
    results = g.run(executors=dagexec.executors.dask(client))
    assert results["a"] == 3
    assert len(pids(log, "a")) == 3
    assert results.stats.tasks_retried == 2


def test_progress_and_events_follow_a_run_on_the_cluster(
    client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[TaskEvent] = []
    g = fan_out(tmp_path / "log", names=3, rules=2)
    results = g.run(
        executors=dagexec.executors.dask(client), progress="always", on_event=events.append
    )
    assert results["count"] == 6
    assert re.search(r"\b\d+/10\b", capsys.readouterr().err)  # the bar knows the total
    finished = {e.key: e for e in events if e.type == "finished"}
    assert set(finished) == set(g)
    assert finished["check:file-0:1"].worker.startswith("DaskExecutor pid ")
    assert [e.type for e in events if e.key == "parse:file-0"] == ["queued", "started", "finished"]


# -- cancellation -------------------------------------------------------------------------


def test_cancel_raises_with_the_results_and_leaves_nothing_queued_on_the_cluster(
    client: Any, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    outcome: dict[str, BaseException] = {}
    with Gate() as gate, Runner(executors=dagexec.executors.dask(client)) as runner:
        g = Graph()
        quick = g.add("quick", parse, log, "quick", kind="process")
        for i in range(6):
            g.add(f"held:{i}", held, gate.port, f"held:{i}", quick, kind="process")
        thread = threading.Thread(target=_run_into, args=(runner, g, outcome))
        thread.start()
        gate.arrivals(2)  # each worker runs one; four wait on the cluster
        runner.cancel()
        thread.join(WAIT)
        assert not thread.is_alive()
        # The scheduler forgets them all; the two running still hold their workers.
        until(lambda: scheduler_tasks(client) == 0, "the scheduler to drop the run's tasks")
        until(
            lambda: all(s in ([], ["cancelled"]) for s in client.run(_worker_states).values()),
            "the workers to drop the queued tasks",
        )
    until(lambda: not any(client.run(_worker_states).values()), "the held tasks to return")
    assert len(gate.pids) == 2  # none of the four queued ones started
    err = outcome["error"]
    assert isinstance(err, Cancelled)
    assert err.results["quick"] == {"name": "quick", "words": ["quick"]}
    assert not any(str(k).startswith("held") for k in err.results)


def _run_into(runner: Runner, g: Graph, outcome: dict[str, BaseException]) -> None:
    try:
        runner.run(g, keep="all")
    except BaseException as exc:
        outcome["error"] = exc


# -- workers that die ---------------------------------------------------------------------


def test_a_task_that_kills_its_worker_fails_with_worker_died(client: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("crash", killed_first, log, "crash", kind="process")
    with allowed_failures(client, 0), pytest.raises(TaskFailed) as info:
        g.run(executors=dagexec.executors.dask(client))
    assert isinstance(info.value.__cause__, WorkerDied)
    assert type(info.value.__cause__.__cause__).__name__ == "KilledWorker"
    assert len(pids(log, "crash")) == 1


def test_a_task_that_kills_its_worker_succeeds_when_retried(client: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("crash", killed_first, log, "crash", kind="process", retries=1, backoff=0)
    with allowed_failures(client, 0):
        results = g.run(executors=dagexec.executors.dask(client))
    first, second = pids(log, "crash")
    assert results["crash"] == second != first
    assert results.stats.tasks_retried == 1
    whole(client)  # the nanny replaced the worker
    assert first not in live_workers(client).values()


def test_by_default_dask_itself_reruns_a_task_whose_worker_died(
    client: Any, tmp_path: Path
) -> None:
    # distributed.scheduler.allowed-failures (3): dagexec sees only the second attempt.
    log = tmp_path / "log"
    g = Graph()
    g.add("crash", killed_first, log, "crash", kind="process")
    results = g.run(executors=dagexec.executors.dask(client))
    assert results["crash"] == pids(log, "crash")[1]
    assert results.stats.tasks_retried == 0


def test_the_rest_of_the_graph_completes_when_a_task_kills_workers(
    client: Any, tmp_path: Path
) -> None:
    # Tasks queued on a worker that dies fail with it (allowed-failures 0) and are
    # retried. A value that lived only there, not yet fetched, is computed again by dask
    # (as by dagexec's own pool): a task runs again only if the worker it ran on died.
    log = tmp_path / "log"
    g = fan_out(log)
    g.add("crash", always_killed, log, "crash", kind="process", retries=1, backoff=0)
    # Two deaths: a task queued behind both attempts still has a third attempt.
    with allowed_failures(client, 0):
        results = g.run(
            executors=dagexec.executors.dask(client), on_error="continue", retries=2, backoff=0
        )
    assert set(results.errors) == {"crash"}
    assert isinstance(results.errors["crash"].__cause__, WorkerDied)
    killed = pids(log, "crash")
    assert len(killed) == 2  # each attempt killed a worker
    assert results["count"] == 24
    runs: dict[str, list[int]] = {}
    for line in lines(log):
        tag, pid = line.split()
        runs.setdefault(tag, []).append(int(pid))
    del runs["crash"]
    assert len(runs) == 6
    for tag, where in runs.items():
        assert set(where[:-1]) <= set(killed), (tag, where, killed)
