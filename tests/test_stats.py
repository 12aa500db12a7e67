"""RunStats and TaskStats built by hand: critical path, utilization, summary and trace."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

import dagexec
from dagexec._results import RunStats as RunStatsFromResults
from dagexec._stats import CACHED_TRACK, RunStats, TaskStats

T0 = 1000.0  # a made-up time.monotonic() at the start of the run


def task(
    key: Hashable,
    start: float,
    end: float,
    *,
    kind: str = "thread",
    worker: str = "dagexec-thread-0",
    status: str = "finished",
    attempts: int = 1,
    queued: float | None = None,
) -> TaskStats:
    """Return a record running from T0+start to T0+end, queued at T0+queued (or start)."""
    return TaskStats(
        key=key,
        kind=kind,
        worker=worker,
        attempts=attempts,
        queued=T0 + (start if queued is None else queued),
        started=T0 + start,
        finished=T0 + end,
        status=status,
    )


def cached(key: Hashable, at: float) -> TaskStats:
    return task(key, at, at, worker="", status="cached")


def stats(
    tasks: list[TaskStats],
    deps: dict[Hashable, tuple[Hashable, ...]] | None = None,
    *,
    wall_time: float = 10.0,
    workers: dict[str, int] | None = None,
) -> RunStats:
    ran = [t for t in tasks if t.status != "cached"]
    return RunStats(
        wall_time=wall_time,
        tasks_run=len(ran),
        tasks_reused=len(tasks) - len(ran),
        tasks_failed=sum(t.status == "failed" for t in tasks),
        tasks_skipped=0,
        tasks={t.key: t for t in tasks},
        workers=workers or {},
        deps=deps or {},
        started_at=T0,
    )


def diamond() -> RunStats:
    """a -> (b, c) -> d; b is the long branch: critical path a, b, d (1 + 3 + 0.5 s)."""
    return stats(
        [
            task("a", 0.0, 1.0),
            task("b", 1.0, 4.0, worker="dagexec-thread-1"),
            task("c", 1.0, 2.0, kind="process", worker="pid 4242"),
            task("d", 4.0, 4.5),
        ],
        {"b": ("a",), "c": ("a",), "d": ("b", "c")},
        wall_time=5.0,
        workers={"thread": 2, "process": 1},
    )


# --- TaskStats ---------------------------------------------------------------------------


def test_task_stats_duration_and_wait() -> None:
    record = task("k", 2.0, 5.5, queued=0.5)
    assert record.duration == pytest.approx(3.5)
    assert record.wait == pytest.approx(1.5)


def test_task_stats_is_frozen_with_slots() -> None:
    record = task("k", 0.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]
    assert not hasattr(record, "__dict__")


def test_run_stats_still_importable_from_results() -> None:
    assert RunStatsFromResults is RunStats
    assert dagexec.RunStats is RunStats


# --- critical path -----------------------------------------------------------------------


def test_critical_path_of_a_diamond() -> None:
    s = diamond()
    assert s.critical_path == ["a", "b", "d"]
    assert s.critical_path_time == pytest.approx(4.5)


def test_critical_path_follows_the_other_branch_when_it_is_longer() -> None:
    s = stats(
        [task("a", 0, 1), task("b", 1, 2), task("c", 1, 4), task("d", 4, 5)],
        {"b": ("a",), "c": ("a",), "d": ("b", "c")},
    )
    assert s.critical_path == ["a", "c", "d"]
    assert s.critical_path_time == pytest.approx(5.0)


def test_critical_path_of_a_deep_chain_without_recursion() -> None:
    n = 100_000
    # Listed last first, so an order that trusted the mapping's order would be wrong.
    records = [task(i, i * 1e-3, (i + 1) * 1e-3) for i in reversed(range(n))]
    s = stats(records, {i: (i - 1,) for i in range(1, n)}, wall_time=n * 1e-3)
    begun = time.perf_counter()
    path = s.critical_path
    elapsed = time.perf_counter() - begun
    assert path == list(range(n))
    assert s.critical_path_time == pytest.approx(n * 1e-3)
    assert s.parallelism == pytest.approx(1.0)
    assert elapsed < 5.0
    assert f"... ({n - 5} more) ..." in str(s)


def test_critical_path_with_equal_timestamps_follows_deps() -> None:
    # b takes no measurable time: a, b and c share timestamps, and b "finishes" when c
    # starts. Only the deps say that b comes after a and before c.
    s = stats(
        [task("c", 1.0, 3.0), task("b", 1.0, 1.0), task("a", 0.0, 1.0)],
        {"b": ("a",), "c": ("b",)},
    )
    assert s.critical_path == ["a", "b", "c"]
    assert s.critical_path_time == pytest.approx(3.0)


def test_critical_path_of_zero_duration_tasks_is_the_whole_chain() -> None:
    s = stats([task(k, 0.0, 0.0) for k in "zyx"], {"y": ("x",), "z": ("y",)})
    assert s.critical_path == ["x", "y", "z"]
    assert s.critical_path_time == 0.0
    assert s.parallelism == 1.0


def test_critical_path_ignores_deps_without_records() -> None:
    s = stats(
        [task("a", 0, 1), task("b", 1, 2)],
        {"b": ("gone", "a"), "a": ("also gone",), "not a task": ("a",)},
    )
    assert s.critical_path == ["a", "b"]


def test_critical_path_leaves_out_reused_values() -> None:
    # The reused value did not wait for anything and took no time; it is not a link.
    s = stats([cached("held", 0.0), task("a", 0, 1), task("b", 1, 2)], {"b": ("held", "a")})
    assert s.critical_path == ["a", "b"]
    assert stats([cached("held", 0.0)]).critical_path == []


def test_critical_path_survives_a_cycle_in_deps() -> None:
    s = stats([task("a", 0, 1), task("b", 1, 3)], {"a": ("b",), "b": ("a",)})
    path = s.critical_path
    assert path in (["a", "b"], ["b", "a"])
    assert s.critical_path_time == pytest.approx(3.0)


def test_critical_path_is_a_copy() -> None:
    s = diamond()
    s.critical_path.clear()
    s.busy_time.clear()
    assert s.critical_path == ["a", "b", "d"]
    assert s.busy_time


# --- parallelism, busy time, utilization -------------------------------------------------


def test_parallelism_is_total_work_over_critical_path() -> None:
    assert diamond().parallelism == pytest.approx((1 + 3 + 1 + 0.5) / 4.5)
    independent = stats([task(k, 0, 2) for k in range(4)])
    assert independent.parallelism == pytest.approx(4.0)


def test_parallelism_is_one_without_work() -> None:
    assert RunStats(0.0, 0, 0, 0, 0).parallelism == 1.0


def test_busy_time_per_kind_excludes_cached() -> None:
    s = stats(
        [
            task("a", 0, 1),
            task("b", 0, 2.5, kind="process", worker="pid 1"),
            task("f", 0, 0.5, status="failed"),
            cached("c", 0.0),
        ]
    )
    assert s.busy_time == pytest.approx({"thread": 1.5, "process": 2.5})


def test_utilization_per_kind_with_workers() -> None:
    s = stats(
        [task("a", 0, 2), task("b", 0, 1), task("p", 0, 3, kind="process", worker="pid 1")],
        wall_time=4.0,
        workers={"thread": 2, "process": 1, "async": 0},
    )
    assert s.utilization == pytest.approx({"thread": 3 / 8, "process": 3 / 4})


def test_utilization_is_clamped_and_zero_without_wall_time() -> None:
    busy = [task("a", 0, 5), task("b", 0, 5)]
    assert stats(busy, wall_time=4.0, workers={"thread": 1}).utilization == {"thread": 1.0}
    assert stats(busy, wall_time=0.0, workers={"thread": 1}).utilization == {"thread": 0.0}
    # Kinds with workers but no task are 0% utilized.
    assert stats(busy, wall_time=4.0, workers={"process": 2}).utilization == {"process": 0.0}


# --- the summary -------------------------------------------------------------------------


def test_old_style_construction_prints_one_line() -> None:
    s = RunStats(wall_time=1.2345, tasks_run=12, tasks_reused=0, tasks_failed=1, tasks_skipped=2)
    assert str(s) == "12 tasks run, 0 reused, 1 failed, 2 skipped in 1.234 s"
    assert s.tasks == {}
    assert s.critical_path == []
    assert s.busy_time == {}
    assert s.utilization == {}


def test_only_reused_values_print_one_line() -> None:
    s = stats([cached("a", 0.0)])
    assert str(s) == "0 tasks run, 1 reused, 0 failed, 0 skipped in 10.000 s"


def test_summary_of_a_diamond() -> None:
    lines = str(diamond()).splitlines()
    assert lines[0] == "4 tasks run, 0 reused, 0 failed, 0 skipped in 5.000 s"
    assert "thread: busy 4.50 s over 2 workers, 45% utilized" in lines
    assert "process: busy 1.00 s over 1 worker, 20% utilized" in lines
    assert "critical path: 3 tasks, 4.50 s: a -> b -> d" in lines
    assert "parallelism the graph allows: 1.2x" in lines
    top = lines[lines.index("top tasks by time:") + 1 :]
    assert [line.split()[2] for line in top] == ["b", "a", "c", "d"]
    assert top[0].split() == ["3.00", "s", "b", "(thread,", "dagexec-thread-1)"]
    assert "(process, pid 4242)" in top[2]
    assert len(lines) <= 12


def test_summary_lists_the_five_longest_tasks() -> None:
    s = stats([task(f"t{i}", 0, i + 1) for i in range(8)])
    lines = str(s).splitlines()
    top = lines[lines.index("top tasks by time:") + 1 :]
    assert [line.split()[2] for line in top] == ["t7", "t6", "t5", "t4", "t3"]


def test_summary_shortens_long_keys_and_shows_tuples_as_repr() -> None:
    long_key = "head" + "x" * 92 + "tail"
    s = stats(
        [
            task(long_key, 0, 2),
            task(("parse", 3), 2, 3, attempts=3, status="failed"),
        ],
        {("parse", 3): (long_key,)},
    )
    text = str(s)
    assert long_key not in text
    assert "headxxxxxxxx..." + "x" * 21 + "tail" in text  # both ends: keys differ at the end
    assert "('parse', 3)" in text
    assert "3 attempts, failed" in text
    assert all(len(line) < 120 for line in text.splitlines())


def test_summary_abbreviates_a_long_critical_path() -> None:
    keys = [f"k{i}" for i in range(10)]
    s = stats(
        [task(k, i, i + 1) for i, k in enumerate(keys)],
        {k: (keys[i - 1],) for i, k in enumerate(keys) if i},
    )
    line = next(x for x in str(s).splitlines() if x.startswith("critical path:"))
    assert (
        line == "critical path: 10 tasks, 10.00 s: k0 -> k1 -> k2 -> ... (5 more) ... -> k8 -> k9"
    )


def test_summary_units_for_short_tasks() -> None:
    s = stats([task("quick", 0, 0.0042), task("quicker", 0, 0.000_007)])
    text = str(s)
    assert "4.2 ms" in text
    assert "7 us" in text


# --- equality, hashing, pickling ---------------------------------------------------------


def test_stats_with_records_hash_compare_and_pickle() -> None:
    s = diamond()
    assert s.critical_path == ["a", "b", "d"]  # fills the cache before pickling
    again = pickle.loads(pickle.dumps(s))
    assert again == s
    assert hash(again) == hash(s)
    assert again.critical_path == ["a", "b", "d"]
    assert dataclasses.replace(s, deps={}) == s  # deps do not take part in equality
    assert dataclasses.replace(s, deps={}).critical_path == ["b"]
    assert "tasks=" not in repr(s)


# --- the Chrome trace --------------------------------------------------------------------


def load_trace(s: RunStats, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "trace.json"
    s.to_chrome_trace(path)
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_trace_structure(tmp_path: Path) -> None:
    s = stats(
        [
            task("a", 0.5, 1.0, queued=0.25),
            task("b", 1.0, 4.0, worker="dagexec-thread-1"),
            task(("c", 1), 1.0, 2.0, kind="process", worker="pid 4242", status="failed"),
            task("d", 4.0, 4.5),
            cached("held", 0.0),
        ],
        {"b": ("a",), ("c", 1): ("a",), "d": ("b", ("c", 1), "held")},
    )
    data = load_trace(s, tmp_path)
    assert set(data) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert data["displayTimeUnit"] == "ms"
    events = data["traceEvents"]
    assert all({"ph", "name", "pid", "tid"} <= set(e) for e in events)

    complete = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in complete) == ["('c', 1)", "a", "b", "d"]
    for e in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid", "cat", "args"} <= set(e)
        assert isinstance(e["ts"], int)
        assert isinstance(e["dur"], int)
        assert e["ts"] >= 0
        assert e["dur"] >= 0
        assert e["pid"] == 1
    by_name = {e["name"]: e for e in complete}
    assert_no_overlap_per_track(events)
    assert by_name["a"]["ts"] == 500_000
    assert by_name["a"]["dur"] == 500_000
    assert by_name["a"]["args"]["queued_us"] == pytest.approx(250_000)
    assert by_name["b"]["args"] == {
        "key": "'b'",
        "kind": "thread",
        "worker": "dagexec-thread-1",
        "attempts": 1,
        "status": "finished",
        "queued_us": pytest.approx(1_000_000),
        "critical_path": True,
    }
    assert by_name["('c', 1)"]["cat"] == "process"
    assert by_name["('c', 1)"]["cname"] == "terrible"
    assert "cname" not in by_name["a"]

    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted(
        ["dagexec-thread-0", "dagexec-thread-1", "pid 4242", CACHED_TRACK]
    )
    assert len(names) == 4  # a tid per worker, each named once
    tid_of = {name: tid for tid, name in names.items()}
    assert by_name["a"]["tid"] == by_name["d"]["tid"] == tid_of["dagexec-thread-0"]
    assert by_name["b"]["tid"] == tid_of["dagexec-thread-1"]
    assert by_name["('c', 1)"]["tid"] == tid_of["pid 4242"]

    (instant,) = [e for e in events if e["ph"] == "i"]
    assert instant["name"] == "held"
    assert instant["s"] == "t"
    assert instant["tid"] == tid_of[CACHED_TRACK]
    assert instant["args"]["status"] == "cached"

    (process,) = [e for e in events if e["name"] == "process_name"]
    assert process["args"] == {"name": "dagexec run"}
    assert data["otherData"]["critical_path"] == ["a", "b", "d"]
    assert data["otherData"]["parallelism"] == pytest.approx(s.parallelism)


def test_trace_ts_is_never_negative_without_started_at(tmp_path: Path) -> None:
    s = dataclasses.replace(diamond(), started_at=0.0)
    events = load_trace(s, tmp_path)["traceEvents"]
    starts = sorted(e["ts"] for e in events if e["ph"] == "X")
    assert starts[0] == 0
    assert all(ts >= 0 for ts in starts)


def test_trace_of_old_style_stats_is_valid(tmp_path: Path) -> None:
    data = load_trace(RunStats(1.0, 0, 0, 0, 0), tmp_path)
    assert [e["name"] for e in data["traceEvents"]] == ["process_name"]
    assert data["otherData"]["critical_path"] == []


def assert_no_overlap_per_track(events: list[dict[str, Any]]) -> None:
    """Perfetto drops slices that overlap on one track without nesting."""
    by_tid: dict[int, list[tuple[int, int]]] = {}
    for e in events:
        if e["ph"] == "X":
            by_tid.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_tid.values():
        spans.sort()
        assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))


def test_trace_back_to_back_tasks_share_one_track(tmp_path: Path) -> None:
    # Boundaries that are awkward in binary: each task starts where the last one ended.
    edges = [i * 0.1 for i in range(30)]
    records = [task(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(edges))]
    events = load_trace(stats(records), tmp_path)["traceEvents"]
    assert [e["args"]["name"] for e in events if e["name"] == "thread_name"] == ["dagexec-thread-0"]
    assert_no_overlap_per_track(events)


def test_trace_spreads_overlapping_tasks_of_one_worker(tmp_path: Path) -> None:
    loop = "dagexec-async"
    s = stats(
        [
            task("x", 0, 3, kind="async", worker=loop),
            task("y", 1, 2, kind="async", worker=loop),
            task("z", 2.5, 4, kind="async", worker=loop),
        ]
    )
    events = load_trace(s, tmp_path)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names.values()) == [loop, f"{loop} #2"]
    tid = {e["name"]: e["tid"] for e in events if e["ph"] == "X"}
    assert names[tid["x"]] == loop
    assert tid["y"] == tid["z"] != tid["x"]
    assert_no_overlap_per_track(events)
