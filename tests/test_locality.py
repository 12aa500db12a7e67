"""Locality: in ``Graph.run`` a process task's value stays in the worker that computed it,
its dependents run there, values move only when that pays, workers forget values once
their readers are done, and values lost with a worker are recomputed.

Task functions are module level so that loky workers import them. Calls are counted
through a file (one O_APPEND line per call), across processes. Waits poll a file or a pid
with a deadline: they bound a failure, they never order events.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor as StdProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import loky
import psutil
import pytest

import dagexec
from dagexec import _worker
from dagexec._worker import Remote, live_values

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


class Blob:
    """A parsed file: where it was made, and some bytes."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.pid = os.getpid()
        self.data = b"x" * size


class Huge(Blob):
    """A Blob the engine estimates at a terabyte (``nbytes``): moving it never pays."""

    nbytes = 10**12


def _log(log: Path, name: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def calls(log: Path) -> Counter[str]:
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _until(done: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.005)


def parse(log: Path, name: str, size: int = 10, cls: type[Blob] = Blob) -> Blob:
    _log(log, name)
    return cls(name, size)


def parse_dies_when_redone(log: Path, name: str) -> Blob:
    again = calls(log)[name] > 0
    _log(log, name)
    if again:
        os.kill(os.getpid(), signal.SIGKILL)
    return Blob(name, 10)


def normalize(log: Path, name: str, blob: Blob) -> Blob:
    _log(log, name)
    return Blob(blob.name.upper(), 10)


def check(log: Path, name: str, blob: Blob, *after: Any) -> tuple[str, int, int]:
    _log(log, name)
    return blob.name, blob.pid, os.getpid()


def slow_check(blob: Blob, i: int) -> tuple[int, int]:
    time.sleep(0.25)  # the work itself, not a wait for anything
    return i, os.getpid()


def pid_of(*values: Any) -> int:
    return os.getpid()


def meet(rendezvous: Path, name: str, n: int) -> Blob:
    """Start, then wait until ``n`` tasks have started: only ``n`` workers at once pass."""
    (rendezvous / name).touch()
    _until(lambda: len(list(rendezvous.iterdir())) >= n, f"{name}: ran alone")
    return Blob(name, 1000)


def join(*blobs: Blob) -> tuple[list[str], int]:
    return [b.name for b in blobs], os.getpid()


def kill(pid: int) -> int:
    """Kill a worker; return once it is dead (not reaped: that is loky's to do, so no
    ``psutil.Process.wait``, which would reap loky's child behind its back)."""
    os.kill(pid, signal.SIGKILL)
    _until(lambda: dead(pid), f"worker {pid} still alive")
    return pid


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fail(blob: Blob) -> None:
    raise ValueError(blob.name)


def shared_value(k: int, log: Path | None = None) -> Huge:
    if log is not None:
        _log(log, f"shared{k}")
    return Huge(str(k), 0)


def shared_item(item: int, value: Huge) -> tuple[int, int, int]:
    if item < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return item, value.pid, os.getpid()


def grow(blob: Blob) -> Blob:
    return Blob(blob.name, 100_000)


def lock_beside(blob: Blob) -> tuple[str, Any]:
    return blob.name, threading.Lock()  # cannot be pickled


def lock_names(*values: Any) -> list[str]:
    return [v[0] if isinstance(v, tuple) else v.name for v in values]


# map_shared with process items and process shared values, on its own pool
process_map = partial(
    dagexec.map_shared, shared_item, kind="process", shared_kind="process", return_exceptions=True
)


def fan_out(log: Path, files: int, checks: int, cls: type[Blob] = Blob) -> dagexec.Graph:
    g = dagexec.Graph(default_kind="process")
    for f in range(files):
        p = g.add(("parse", f), parse, log, f"parse{f}", 100_000, cls)
        for c in range(checks):
            g.add(("check", f, c), check, log, f"check{f}.{c}", p)
    return g


# -- placement ------------------------------------------------------------------------


def test_each_check_runs_in_the_worker_that_parsed_its_file_and_nothing_moves(
    tmp_path: Path,
) -> None:
    results = fan_out(tmp_path / "log", files=4, checks=3, cls=Huge).run(max_workers=2)
    pids = set()
    for f, c in itertools.product(range(4), range(3)):
        name, parsed_in, ran_in = results[("check", f, c)]
        assert (name, ran_in) == (f"parse{f}", parsed_in)
        pids.add(ran_in)
    assert len(pids) == 2
    stats = results.stats
    assert (stats.values_kept, stats.values_moved, stats.bytes_moved) == (4, 0, 0)
    assert stats.bytes_from_processes < 5_000  # 12 small tuples; never the 4 x 100 kB parsed
    assert stats.tasks_recomputed == 0


def test_two_ready_process_tasks_run_on_two_idle_workers_at_once(tmp_path: Path) -> None:
    g = dagexec.Graph(default_kind="process")
    for i in range(2):
        g.add(("root", i), meet, tmp_path, str(i), 2)
    results = g.run(max_workers=2)  # one worker taking both: the first waits in vain
    assert {results[("root", i)].name for i in range(2)} == {"0", "1"}


def test_an_idle_worker_takes_checks_queued_for_a_busy_one_moving_the_value_once(
    tmp_path: Path,
) -> None:
    g = dagexec.Graph(default_kind="process")
    p = g.add("parse", parse, tmp_path / "log", "parse")
    for i in range(8):
        g.add(("check", i), slow_check, p, i)
    results = g.run(max_workers=2)
    pids = {results[("check", i)][1] for i in range(8)}
    assert len(pids) == 2
    assert results.stats.values_moved == 1  # then held there for the checks after it
    assert 0 < results.stats.bytes_moved < 1000


def test_a_join_gets_inputs_computed_on_different_workers(tmp_path: Path) -> None:
    g = dagexec.Graph(default_kind="process")
    roots = [g.add(("root", i), meet, tmp_path, str(i), 2) for i in range(4)]
    for i, r in enumerate(roots):
        g.add(("pid", i), pid_of, r)  # where each root is
    g.add("join", join, *roots)
    results = g.run(max_workers=2)
    names, joined_in = results["join"]
    assert names == ["0", "1", "2", "3"]
    root_pids = [results[("pid", i)] for i in range(4)]
    assert len(set(root_pids)) == 2
    elsewhere = sum(pid != joined_in for pid in root_pids)
    assert results.stats.values_moved == elsewhere >= 1


# -- values kept, released, counted ------------------------------------------------------


def test_a_worker_keeps_only_the_values_still_to_be_read(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = dagexec.Graph(default_kind="process")
    checked = []
    for f in range(4):
        p = g.add(("parse", f), parse, log, f"parse{f}")
        checked.append(g.add(("check", f), check, log, f"check{f}", p))
    g.add("live", live_values_after, *checked)
    results = g.run(max_workers=1)
    assert results["live"] == 4  # the checks it reads; every parsed file was dropped


def live_values_after(*inputs: Any) -> int:
    return live_values()


def stored() -> int:
    return len(_worker._store)  # values and the functions sent for the run


@pytest.mark.parametrize("outcome", ["ok", "failed"])
def test_a_run_leaves_no_values_in_its_workers(tmp_path: Path, outcome: str) -> None:
    g = fan_out(tmp_path / "log", files=3, checks=2)
    if outcome == "failed":
        g.add("bad", fail, g.ref(("parse", 0)))
    r = dagexec.Runner(max_workers={"process": 1})
    r._private = True  # as Graph.run runs, on a pool that outlives the run
    try:
        if outcome == "failed":
            with pytest.raises(dagexec.TaskFailed):
                r.run(g)
        else:
            assert r.run(g).stats.values_kept == 3
        assert r.submit("probe", stored, kind="process").result(timeout=WAIT) == 0
    finally:
        r.shutdown()


def test_every_task_runs_exactly_once_when_no_worker_dies(tmp_path: Path) -> None:
    log = tmp_path / "log"
    g = fan_out(log, files=3, checks=3)
    g.add("report", check, log, "report", g.ref(("parse", 0)), kind="thread")
    g.add("all", join, *(g.ref(("parse", f)) for f in range(3)))
    results = g.run(max_workers=2)
    checks = [f"check{f}.{c}" for f, c in itertools.product(range(3), range(3))]
    assert calls(log) == Counter(["parse0", "parse1", "parse2", "report", *checks])
    assert results["all"][0] == ["parse0", "parse1", "parse2"]
    assert results.stats.tasks_recomputed == 0


# -- workers that die -----------------------------------------------------------------

CHECKS = [("check", i) for i in range(3)]


def doomed(log: Path, killer: str, parser: Any = parse, normalized: bool = False) -> dagexec.Graph:
    """parse [-> normalize] -> checks, with the worker holding the value killed before them.

    ``killer="self"``: a process task reading the value kills its own worker (it runs
    there, ahead of the checks queued behind it). ``"thread"``: a thread task kills the
    worker from outside once it is idle, and the checks wait for it.
    """
    g = dagexec.Graph(default_kind="process")
    value = g.add("parse", parser, log, "parse")
    if normalized:
        value = g.add("normalize", normalize, log, "normalize", value)
    after = []
    if killer == "self":
        g.add("dies", suicide, value)
    else:
        after.append(g.add("kill", kill, g.add("where", pid_of, value), kind="thread"))
    for key in CHECKS:
        g.add(key, check, log, f"check{key[1]}", value, *after)
    return g


def suicide(blob: Blob) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("normalized", [False, True])
def test_values_lost_with_a_worker_its_task_killed_are_recomputed_for_the_rest(
    tmp_path: Path, normalized: bool, workers: int
) -> None:
    log = tmp_path / "log"
    g = doomed(log, "self", normalized=normalized)
    results = g.run(max_workers=workers, on_error="continue")
    assert set(results.errors) == {"dies"}
    assert isinstance(results.errors["dies"].__cause__, dagexec.WorkerDied)
    value = "PARSE" if normalized else "parse"
    assert [results[key][0] for key in CHECKS] == [value] * 3
    redone = {"parse", "normalize"} if normalized else {"parse"}
    assert results.stats.tasks_recomputed == len(redone)  # normalize needs parse again
    assert calls(log) == Counter(
        {**dict.fromkeys(redone, 2), "check0": 1, "check1": 1, "check2": 1}
    )


@pytest.mark.parametrize("normalized", [False, True])
def test_a_value_lost_with_a_worker_killed_from_outside_is_recomputed(
    tmp_path: Path, normalized: bool
) -> None:
    log = tmp_path / "log"
    results = doomed(log, "thread", normalized=normalized).run(max_workers=2)
    value = "PARSE" if normalized else "parse"
    assert [results[key][0] for key in CHECKS] == [value] * 3
    assert results.stats.tasks_recomputed == 1 + normalized
    assert calls(log)["parse"] == 2


@pytest.mark.parametrize("killer", ["self", "thread"])
def test_a_recomputation_that_kills_its_worker_fails_what_needs_it(
    tmp_path: Path, killer: str
) -> None:
    log = tmp_path / "log"
    g = doomed(log, killer, parser=parse_dies_when_redone)
    g.add("other_check", check, log, "other_check", g.add("other", parse, log, "other"))
    if killer == "thread":  # nothing else fails: the run raises that failure
        with pytest.raises(dagexec.TaskFailed) as info:
            g.run(max_workers=2)
        failed = info.value
    else:
        results = g.run(max_workers=2, on_error="continue")
        assert results["other_check"][0] == "other"
        assert set(results.errors) == {"dies", *CHECKS}
        failed = results.errors[("check", 0)]
    assert failed.key in CHECKS
    redo = failed.__cause__
    assert isinstance(redo, dagexec.TaskFailed)
    assert redo.key == "parse"
    assert isinstance(redo.__cause__, dagexec.WorkerDied)
    assert calls(log)["parse"] == 2  # no third try


# -- other pools, kinds and modes -------------------------------------------------------


@pytest.mark.parametrize("make", [loky.ProcessPoolExecutor, StdProcessPool])
def test_a_given_process_executor_still_works_without_locality(tmp_path: Path, make: Any) -> None:
    with make(2) as executor:
        results = fan_out(tmp_path / "log", files=2, checks=2).run(executors={"process": executor})
    checked = [results[("check", f, c)][0] for f, c in itertools.product(range(2), range(2))]
    assert checked == ["parse0", "parse0", "parse1", "parse1"]
    assert results.stats.values_kept == 0


def test_a_process_value_read_by_threads_and_processes_comes_back_as_itself(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    g = dagexec.Graph(default_kind="process")
    p = g.add("parse", parse, log, "parse")
    g.add("here", check, log, "here", p, kind="thread")
    g.add("there", check, log, "there", p)
    g.add("later", check, log, "later", g.add("normalize", normalize, log, "normalize", p))
    results = g.run(targets=["parse", "here", "there", "later"], max_workers=2)
    assert type(results["parse"]) is Blob
    assert results["parse"].name == "parse"
    assert results["here"][:2] == results["there"][:2] == ("parse", results["parse"].pid)
    assert results["here"][2] == os.getpid()
    assert results["later"][0] == "PARSE"


def test_keep_all_returns_every_value_never_a_handle(tmp_path: Path) -> None:
    results = fan_out(tmp_path / "log", files=2, checks=2).run(keep="all", max_workers=2)
    assert len(results) == 6
    assert not any(isinstance(v, Remote) for v in results.values())
    assert [results[("parse", f)].name for f in range(2)] == ["parse0", "parse1"]


def test_a_failing_process_task_mid_run_raises_and_leaves_no_workers(tmp_path: Path) -> None:
    g = fan_out(tmp_path / "log", files=3, checks=2)
    g.add("bad", fail, g.ref(("parse", 1)))
    with pytest.raises(dagexec.TaskFailed) as info:
        g.run(max_workers=2)
    assert info.value.key == "bad"
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.timeout(20)
def test_a_value_that_cannot_be_pickled_is_read_where_it_is_the_bigger_ones_move(
    tmp_path: Path,
) -> None:
    g = dagexec.Graph(default_kind="process")
    roots = [g.add(("root", i), meet, tmp_path, str(i), 2) for i in range(4)]
    lock = g.add("lock", lock_beside, roots[0])
    bigs = [g.add(("big", i), grow, r) for i, r in enumerate(roots)]
    g.add("join", lock_names, lock, *bigs[1:])  # the bigs are on both workers
    assert g.run(max_workers=2)["join"] == ["0", "1", "2", "3"]


@pytest.mark.timeout(20)
def test_a_join_of_values_that_cannot_be_pickled_on_two_workers_fails_saying_why(
    tmp_path: Path,
) -> None:
    g = dagexec.Graph(default_kind="process")
    roots = [g.add(("root", i), meet, tmp_path, str(i), 2) for i in range(4)]
    g.add("join", lock_names, *(g.add(("lock", i), lock_beside, r) for i, r in enumerate(roots)))
    with pytest.raises(dagexec.TaskFailed) as info:
        g.run(max_workers=2)
    assert info.value.key == "join"
    assert "pickle" in str(info.value)


def test_map_shared_items_run_in_the_worker_that_computed_their_value() -> None:
    out = process_map(range(12), shared=shared_value, key=lambda i: i % 3, max_workers=2)
    assert [item for item, _, _ in out] == list(range(12))
    assert all(made_in == ran_in for _, made_in, ran_in in out)


def test_map_shared_recomputes_a_value_lost_with_the_worker_an_item_killed(
    tmp_path: Path,
) -> None:
    # item -1 kills its worker, which holds the value the items queued behind it need
    shared = partial(shared_value, log=tmp_path / "log")
    out = process_map([-1, 1, 2, 3], shared=shared, key=lambda i: 0, max_workers=1)
    assert isinstance(out[0].__cause__, dagexec.WorkerDied)
    assert [item for item, _, _ in out[1:]] == [1, 2, 3]
    assert calls(tmp_path / "log") == Counter({"shared0": 2})


@pytest.fixture
def unimportable() -> Iterator[Any]:
    """A function pickled by reference to a module that only this process has."""
    module = types.ModuleType("dagexec_module_workers_lack")
    module.__file__ = "gone.py"  # not dynamic: cloudpickle pickles by reference
    exec("def shared(k):\n    return k\n", module.__dict__)
    sys.modules[module.__name__] = module
    yield module.shared
    del sys.modules[module.__name__]


def test_map_shared_with_a_shared_function_workers_cannot_import_fails_each_item(
    unimportable: Any,
) -> None:
    # the second key's shared call finds no function where the first one failed to load it
    out = process_map(range(4), shared=unimportable, key=lambda i: i % 2, max_workers=1)
    assert all(isinstance(failed, dagexec.TaskFailed) for failed in out)
    assert all("could not be unpickled" in str(failed) for failed in out)
