"""The persistent cache end to end: ``run(cache=DiskCache(...))`` on real pools and files.

Task functions append a line per call to a log file (O_APPEND, so process workers can
too); a test counts calls from the log, never from the runner's own bookkeeping. Entries
are found on disk by recomputing the content keys (``task_keys``) and damaged or removed
by hand. The resume test kills a real run (a subprocess and its workers) while tasks are
held at a ``Gate``; every wait is bounded by ``WAIT``, none is a sleep.
"""

from __future__ import annotations

import contextlib
import graphlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from _control import WAIT, Gate, held, lines, record

import dagexec._cachekey
from dagexec import DiskCache, Graph, Results, Runner, TaskEvent
from dagexec._cachekey import task_keys

TESTS = Path(__file__).resolve().parent


# -- tasks (module level: process workers import them) -------------------------------------


def step(log: Path, tag: str, *inputs: object) -> tuple[object, ...]:
    """Record ``tag``; return it with the inputs, so values show what they came from."""
    record(log, tag)
    return (tag, *inputs)


def read(log: Path, name: str) -> str:
    record(log, f"read {name}")
    return f"{name} = 1\n{name}_two = 2\n"


def parse(log: Path, name: str, text: str) -> dict[str, object]:
    record(log, f"parse {name}")
    return {"name": name, "lines": text.splitlines()}


def check(log: Path, rule: str, tree: dict[str, object]) -> tuple[str, object, int]:
    record(log, f"check {rule} {tree['name']}")
    found = tree["lines"]
    assert isinstance(found, list)
    return rule, tree["name"], sum(len(line) for line in found)


def make_lock(log: Path, tag: str) -> threading.Lock:
    record(log, tag)
    return threading.Lock()


def is_locked(log: Path, tag: str, lock: threading.Lock) -> bool:
    record(log, tag)
    return lock.locked()


FILES = ("a", "b", "c")
RULES = ("length", "names", "style")
LINT_CHECKS = [f"check:{rule}:{name}" for name in FILES for rule in RULES]
LINT_CALLS = Counter(
    [f"read {n}" for n in FILES]
    + [f"parse {n}" for n in FILES]
    + [f"check {r} {n}" for n in FILES for r in RULES]
)


def lint_graph(log: Path) -> Graph:
    """Read (thread) and parse (process) each file, then several checks (thread) per parse."""
    g = Graph()
    for name in FILES:
        text = g.add(f"read:{name}", read, log, name)
        tree = g.add(f"parse:{name}", parse, log, name, text, kind="process")
        for rule in RULES:
            g.add(f"check:{rule}:{name}", check, log, rule, tree)
    return g


def chain_graph(log: Path) -> Graph:
    g = Graph()
    a = g.add("a", step, log, "a")
    b = g.add("b", step, log, "b", a)
    g.add("c", step, log, "c", b)
    return g


# -- helpers -------------------------------------------------------------------------------


def content_keys(g: Graph) -> dict[Hashable, str]:
    """Each task's content key, as a run computes it."""
    tasks = g._tasks
    order = list(graphlib.TopologicalSorter({k: t.preds for k, t in tasks.items()}).static_order())
    keys, why = task_keys(tasks, order)
    assert not why
    return keys


def entry(cache: DiskCache, ckey: str) -> Path:
    return cache.path / ckey[:2] / f"{ckey}.dxc"


def lint_run(log: Path, cache: DiskCache, **options: object) -> Results:
    return lint_graph(log).run(cache=cache, max_workers={"process": 2}, **options)  # type: ignore[arg-type]


def events_by_key(events: list[TaskEvent]) -> dict[Hashable, list[str]]:
    found: dict[Hashable, list[str]] = defaultdict(list)
    for event in events:
        found[event.key].append(event.type)
    return dict(found)


# -- cold, then warm -----------------------------------------------------------------------


def test_a_second_run_of_the_same_definition_runs_nothing(tmp_path: Path) -> None:
    log, path = tmp_path / "log", tmp_path / "cache"
    cold = lint_run(log, DiskCache(path))
    assert Counter(lines(log)) == LINT_CALLS
    assert cold.stats.tasks_cached == 0
    assert len(DiskCache(path)) == len(LINT_CALLS)  # every task stored its value

    events: list[TaskEvent] = []
    warm = lint_run(log, DiskCache(path), on_event=events.append)  # a new Graph and cache

    assert Counter(lines(log)) == LINT_CALLS  # nothing was called again
    assert dict(warm) == dict(cold)
    assert set(warm) == set(LINT_CHECKS)
    assert events_by_key(events) == {k: ["cached"] for k in LINT_CHECKS}
    assert {k: t.status for k, t in warm.stats.tasks.items()} == dict.fromkeys(
        LINT_CHECKS, "cached"
    )
    assert warm.stats.tasks_cached == len(LINT_CHECKS)
    assert warm.stats.tasks_run == 0


def test_a_warm_run_of_some_targets_returns_them_without_running_anything(
    tmp_path: Path,
) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")
    cold = lint_run(log, cache, keep="all")
    targets = ["check:style:b", "parse:c", "read:a"]

    warm = lint_run(log, cache, targets=targets)

    assert Counter(lines(log)) == LINT_CALLS
    assert dict(warm) == {k: cold[k] for k in targets}
    assert warm.stats.tasks_cached == len(targets)
    assert warm.stats.tasks_run == 0


# -- the Merkle chain: a downstream hit never reads upstream -------------------------------


def _garble(p: Path) -> None:
    p.write_bytes(b"not an entry")


@pytest.mark.parametrize("damage", [Path.unlink, _garble], ids=["deleted", "garbled"])
def test_downstream_hits_never_read_upstream_entries(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")
    cold = lint_run(log, cache)
    keys = content_keys(lint_graph(log))
    upstream = [k for k in keys if not str(k).startswith("check:")]
    for k in upstream:
        damage(entry(cache, keys[k]))

    warm = lint_run(log, cache)

    assert Counter(lines(log)) == LINT_CALLS
    assert dict(warm) == dict(cold)
    assert warm.stats.tasks_cached == len(LINT_CHECKS)
    if damage is _garble:  # a read would have found it bad and removed it
        assert all(entry(cache, keys[k]).read_bytes() == b"not an entry" for k in upstream)
    # The damage was real: a target upstream of the checks is computed again.
    lint_run(log, cache, targets=["parse:a"])
    assert Counter(lines(log)) - LINT_CALLS == Counter(["read a", "parse a"])


# -- what changes a key --------------------------------------------------------------------

_EDITED_V1 = """
from _control import record

def scale(x):
    return (x, "x2")

def middle(log, x):
    record(log, "mid")
    return ("mid", scale(x))
"""
# The same module with middle's own code edited.
_EDITED_MIDDLE = _EDITED_V1.replace('("mid", scale(x))', '("mid, edited", scale(x))')
# The same module with only the helper middle calls by name edited.
_EDITED_HELPER = _EDITED_V1.replace('(x, "x2")', '(x, "x3")')


def load_version(tmp_path: Path, version: str, source: str) -> ModuleType:
    """Import ``source`` as module ``cache_edited`` from its own folder: an edited file."""
    folder = tmp_path / version
    folder.mkdir()
    (folder / "cache_edited.py").write_text(source)
    spec = importlib.util.spec_from_file_location("cache_edited", folder / "cache_edited.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edited_graph(log: Path, module: ModuleType, side_arg: int = 0) -> Graph:
    """src -> mid (from ``module``) -> down, and src -> side(side_arg) -> side_down."""
    g = Graph()
    src = g.add("src", step, log, "src")
    mid = g.add("mid", module.middle, log, src)
    g.add("down", step, log, "down", mid)
    side = g.add("side", step, log, "side", src, side_arg)
    g.add("side_down", step, log, "side_down", side)
    return g


def test_edited_code_or_arguments_rerun_that_task_and_its_dependents_only(
    tmp_path: Path,
) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")

    def run_with(module: ModuleType, side_arg: int = 0) -> tuple[Counter[str], Results]:
        before = Counter(lines(log))
        results = edited_graph(log, module, side_arg).run(cache=cache)
        return Counter(lines(log)) - before, results

    ran, first = run_with(load_version(tmp_path, "v1", _EDITED_V1))
    assert ran == Counter(["src", "mid", "down", "side", "side_down"])

    ran, again = run_with(load_version(tmp_path, "v1-again", _EDITED_V1))
    assert ran == Counter()  # the same source in a new module object: the same keys
    assert dict(again) == dict(first)

    ran, edited = run_with(load_version(tmp_path, "middle-edited", _EDITED_MIDDLE))
    assert ran == Counter(["mid", "down"])
    assert edited["down"][1][0] == "mid, edited"
    assert edited["side_down"] == first["side_down"]

    ran, helper = run_with(load_version(tmp_path, "helper-edited", _EDITED_HELPER))
    assert ran == Counter(["mid", "down"])
    assert helper["down"][1][1][1] == "x3"

    ran, changed = run_with(load_version(tmp_path, "v1-arg", _EDITED_V1), side_arg=1)
    assert ran == Counter(["side", "side_down"])
    assert changed["down"] == first["down"]
    assert changed["side_down"] != first["side_down"]


def test_a_helper_redefined_in_the_same_process_changes_the_key(tmp_path: Path) -> None:
    # What re-running a notebook cell that defines the helper does: the module's name
    # now refers to a new function; the task's own function object is unchanged.
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")
    module = load_version(tmp_path, "v1", _EDITED_V1)
    first = edited_graph(log, module).run(cache=cache)
    assert first["down"][1][1][1] == "x2"
    before = Counter(lines(log))

    module.scale = load_version(tmp_path, "helper-edited", _EDITED_HELPER).scale
    again = edited_graph(log, module).run(cache=cache)

    assert Counter(lines(log)) - before == Counter(["mid", "down"])
    assert again["down"][1][1][1] == "x3"


# -- damaged entries, opting out -----------------------------------------------------------


def test_a_truncated_target_entry_is_recomputed_and_rewritten(tmp_path: Path) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")
    cold = lint_run(log, cache)
    ckey = content_keys(lint_graph(log))["check:names:b"]
    damaged = entry(cache, ckey)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])

    warm = lint_run(log, cache)

    assert Counter(lines(log)) - LINT_CALLS == Counter(["check names b"])  # parse:b was a hit
    assert dict(warm) == dict(cold)
    assert warm.stats.tasks_cached == len(LINT_CHECKS)  # the eight others, and parse:b
    assert cache.get(ckey) == (True, cold["check:names:b"])
    assert damaged.read_bytes() == data

    lint_run(log, cache)
    assert Counter(lines(log)) - LINT_CALLS == Counter(["check names b"])  # all hits now


def test_a_task_added_with_cache_false_runs_every_time_its_dependents_still_hit(
    tmp_path: Path,
) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")

    def graph() -> Graph:
        g = Graph()
        a = g.add("a", step, log, "a")
        b = g.add("b", step, log, "b", a, cache=False)
        g.add("c", step, log, "c", b)
        return g

    cold = graph().run(cache=cache, targets=["b", "c"])
    assert Counter(lines(log)) == Counter(["a", "b", "c"])
    keys = content_keys(graph())
    assert entry(cache, keys["a"]).exists()
    assert entry(cache, keys["c"]).exists()
    assert not entry(cache, keys["b"]).exists()

    warm = graph().run(cache=cache, targets=["b", "c"])
    assert Counter(lines(log)) == Counter(["a", "b", "b", "c"])
    assert dict(warm) == dict(cold)
    assert warm.stats.tasks["c"].status == "cached"
    assert warm.stats.tasks["b"].status == "finished"

    graph().run(cache=cache, targets=["c"])
    assert Counter(lines(log)) == Counter(["a", "b", "b", "c"])


# -- what cannot be pickled ----------------------------------------------------------------


def test_an_unpicklable_value_warns_once_and_runs_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reported once per function and process: start from "nothing reported yet".
    monkeypatch.setattr(dagexec._cachekey, "_reported", set())
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")

    def graph() -> Graph:
        g = Graph()
        lock = g.add("lock", make_lock, log, "lock")
        g.add("locked", is_locked, log, "locked", lock)
        return g

    for n in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = graph().run(cache=cache, targets=["lock", "locked"])
        assert results["locked"] is False
        assert isinstance(results["lock"], type(threading.Lock()))
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        if n == 1:
            assert len(runtime) == 1, [str(w.message) for w in runtime]
            assert "'lock'" in str(runtime[0].message)
            assert "not cached" in str(runtime[0].message)
        else:
            assert runtime == []  # once per function and process
    assert lines(log) == ["lock", "locked", "lock"]  # run again; its dependent hit
    keys = content_keys(graph())
    assert not entry(cache, keys["lock"]).exists()


def test_a_task_with_an_unpicklable_argument_has_no_key_and_runs_uncached(
    tmp_path: Path,
) -> None:
    log, cache = tmp_path / "log", DiskCache(tmp_path / "cache")
    lock = threading.Lock()

    def graph() -> Graph:
        g = Graph()
        guarded = g.add("guarded", is_locked, log, "guarded", lock)
        g.add("after", step, log, "after", guarded)
        g.add("plain", step, log, "plain")
        return g

    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = graph().run(cache=cache)
        assert dict(results) == {"after": ("after", False), "plain": ("plain",)}
        runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1, runtime
        assert "2 task(s) have no cache key" in runtime[0]
        assert "'guarded'" in runtime[0]
    # The second time "plain" hit; the task without a key and its dependent ran again.
    assert Counter(lines(log)) == Counter(["guarded", "after", "plain", "guarded", "after"])
    assert len(cache) == 1  # only "plain"


# -- resuming a run that was killed --------------------------------------------------------

RESUME_TASKS = 20
RESUME_GATED = 10  # tasks from here on wait at the gate, when there is one
RESUME_GATE = "DAGEXEC_TEST_CACHE_GATE"  # the Gate's port; the environment is not in keys
RESUME_WORKERS = 4


def resumable(log: Path, i: int) -> int:
    record(log, f"task {i}")
    port = os.environ.get(RESUME_GATE)
    if port is not None and i >= RESUME_GATED:
        held(int(port), f"task {i}")
    return i * i


def resume_graph(log: Path, gated_kind: str) -> Graph:
    """Ten process tasks; ten more of ``gated_kind`` that start once all ten are done."""
    g = Graph()
    first = [g.add(i, resumable, log, i, kind="process") for i in range(RESUME_GATED)]
    for i in range(RESUME_GATED, RESUME_TASKS):
        g.add(i, resumable, log, i, kind=gated_kind, after=first)
    return g


_RESUME_SCRIPT = """
import importlib
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from dagexec import DiskCache
tests = importlib.import_module(sys.argv[2])
tests.resume_graph(Path(sys.argv[3]), sys.argv[4]).run(
    cache=DiskCache(sys.argv[5]), max_workers=tests.RESUME_WORKERS
)
"""


def _kill_tree(root: psutil.Process) -> list[psutil.Process]:
    """SIGKILL ``root``, then everything it started; return them all."""
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    return tree


def _start_killed_run(tmp_path: Path, gated_kind: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "resume.py"
    script.write_text(_RESUME_SCRIPT)
    args = [str(TESTS), resumable.__module__, str(tmp_path / "log"), gated_kind]
    with (tmp_path / "stderr").open("wb") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, str(script), *args, str(tmp_path / "cache")], stderr=stderr
        )


@pytest.mark.parametrize("gated_kind", ["thread", "process"])
def test_a_killed_run_keeps_what_finished_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated_kind: str
) -> None:
    log, path = tmp_path / "log", tmp_path / "cache"
    with Gate() as gate:
        monkeypatch.setenv(RESUME_GATE, str(gate.port))
        child = _start_killed_run(tmp_path, gated_kind)
        monkeypatch.delenv(RESUME_GATE)
        try:
            try:
                arrived = gate.arrivals(RESUME_WORKERS, timeout=15)  # every worker is held
            except TimeoutError as exc:
                ran = [int(line.split()[1]) for line in lines(log)]
                pytest.fail(
                    f"{exc}: {sum(i >= RESUME_GATED for i in ran)} gated {gated_kind} "
                    f"tasks started on {RESUME_WORKERS} workers, after "
                    f"{sum(i < RESUME_GATED for i in ran)} of the {RESUME_GATED} before them "
                    f"finished; stderr: {(tmp_path / 'stderr').read_text()[-2000:]}"
                )
            cache = DiskCache(path)
            keys = content_keys(resume_graph(log, gated_kind))
            # Each stored its value before it reported: all ten exist once a gated one runs.
            assert all(entry(cache, keys[i]).exists() for i in range(RESUME_GATED))
            assert len(cache) == RESUME_GATED
        finally:
            tree = _kill_tree(psutil.Process(child.pid))
            child.wait(WAIT)
        _, alive = psutil.wait_procs(tree, timeout=WAIT)
        assert alive == [], f"left running after the kill: {alive}"
        assert all(gate.exited(pid) for pid in arrived)

    killed = Counter(lines(log))
    first = Counter(f"task {i}" for i in range(RESUME_GATED))
    gated = killed - first
    assert killed - gated == first  # each of the first ten ran once
    assert sum(gated.values()) == len(gated) == RESUME_WORKERS  # one gated task per worker

    results = resume_graph(log, gated_kind).run(
        cache=DiskCache(path), targets=range(RESUME_TASKS), max_workers=RESUME_WORKERS
    )

    assert Counter(lines(log)) - killed == Counter(
        f"task {i}" for i in range(RESUME_GATED, RESUME_TASKS)
    )
    assert dict(results) == {i: i * i for i in range(RESUME_TASKS)}
    assert results.stats.tasks_cached == RESUME_GATED
    assert len(DiskCache(path)) == RESUME_TASKS


# -- where the cache comes from ------------------------------------------------------------


def test_a_runners_cache_serves_its_runs_and_a_runs_own_cache_overrides_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    mine, other = DiskCache(tmp_path / "mine"), DiskCache(tmp_path / "other")
    with Runner(cache=mine) as runner:
        runner.run(chain_graph(log))
        assert lines(log) == ["a", "b", "c"]
        runner.clear()  # held values would be reused before the cache is asked

        second = runner.run(chain_graph(log))
        assert lines(log) == ["a", "b", "c"]
        assert second.stats.tasks_cached == 1
        runner.clear()

        third = runner.run(chain_graph(log), cache=other)
        assert lines(log) == ["a", "b", "c"] * 2
        assert third.stats.tasks_cached == 0
    assert len(mine) == len(other) == 3


@pytest.mark.parametrize("bad", ["path", 42, True, {}])
def test_a_cache_that_is_not_a_disk_cache_is_a_type_error_before_anything_runs(
    tmp_path: Path, bad: object
) -> None:
    log = tmp_path / "log"
    value = str(tmp_path / "cache") if bad == "path" else bad
    with pytest.raises(TypeError, match="cache"):
        chain_graph(log).run(cache=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cache"):
        Runner(cache=value)  # type: ignore[arg-type]
    with Runner() as runner, pytest.raises(TypeError, match="cache"):
        runner.run(chain_graph(log), cache=value)  # type: ignore[arg-type]
    if not isinstance(value, bool):  # Graph.add takes cache=True or False
        with pytest.raises(TypeError, match="cache"):
            Graph().add("a", step, log, "a", cache=value)  # type: ignore[arg-type]
    assert lines(log) == []
    assert not (tmp_path / "cache").exists()


_WRITER_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import importlib
from dagexec import DiskCache
tests = importlib.import_module(sys.argv[2])
tests.chain_graph(Path(sys.argv[3])).run(cache=DiskCache(sys.argv[4]))
"""


def test_values_written_by_another_process_are_hits(tmp_path: Path) -> None:
    log, path = tmp_path / "log", tmp_path / "cache"
    args = [str(TESTS), chain_graph.__module__, str(log), str(path)]
    done = subprocess.run(
        [sys.executable, "-c", _WRITER_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert lines(log) == ["a", "b", "c"]

    results = chain_graph(log).run(cache=DiskCache(path))

    assert lines(log) == ["a", "b", "c"]
    assert dict(results) == {"c": ("c", ("b", ("a",)))}
    assert results.stats.tasks_cached == 1


def test_a_bad_graph_with_a_cache_raises_the_usual_clear_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")
    missing = Graph()
    missing.add("b", str, missing.ref("a"))
    with pytest.raises(dagexec.MissingDependencyError, match="'a'"):
        missing.run(cache=cache)
    cycle = Graph()
    cycle.add("a", str, cycle.ref("b"))
    cycle.add("b", str, cycle.ref("a"))
    cycle.add("c", str, "c", after=["a"])
    with pytest.raises(dagexec.CycleError):
        cycle.run(cache=cache)
    assert len(cache) == 0
