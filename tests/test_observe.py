"""Seeing a run, end to end on real pools: ``results.stats`` (critical path, parallelism,
summary, Chrome trace), ``progress=`` on stderr, and the pictures of a run.

Durations come from tasks that sleep for lengths far apart (0.02 s against 0.3 s), and
only orderings and inequalities are asserted, never wall-clock bounds. Tasks that must
run at the same time meet at a ``threading.Barrier``; every wait is bounded by ``WAIT``.
(The events of a run, ``on_event=``, are in ``test_events.py``.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _control import WAIT, attempt, lines

import dagexec
from dagexec import Graph, Runner

SHORT, LONG = 0.02, 0.3


def napped(seconds: float, *deps: object) -> float:
    time.sleep(seconds)
    return seconds


def value(v: object, *after: object) -> object:
    return v


def pid(*deps: object) -> int:
    return os.getpid()


def boom(*deps: object) -> None:
    raise ValueError("boom")


def logged(log: Path, tag: str, *after: object) -> str:
    attempt(log, tag)
    return tag


# -- statistics of a real run -------------------------------------------------------------


def diamond() -> Graph:
    g = Graph()
    top = g.add("top", napped, SHORT)
    short = g.add("short", napped, SHORT, top)
    long = g.add("long", napped, LONG, top)
    g.add("bottom", napped, SHORT, short, long)
    return g


def test_the_long_branch_of_a_diamond_is_its_critical_path() -> None:
    results = diamond().run()
    stats = results.stats
    tasks = stats.tasks
    assert set(tasks) == {"top", "short", "long", "bottom"}
    assert tasks["long"].duration >= LONG * 0.99  # slept at least that long
    assert tasks["long"].duration > tasks["short"].duration
    assert stats.critical_path == ["top", "long", "bottom"]
    on_path = sum(tasks[k].duration for k in stats.critical_path)
    assert stats.critical_path_time == pytest.approx(on_path)
    assert stats.critical_path_time < sum(t.duration for t in tasks.values())
    assert stats.parallelism > 1.0  # "short" could run beside "long"
    assert stats.busy_time["thread"] == pytest.approx(sum(t.duration for t in tasks.values()))
    assert 0.0 < stats.utilization["thread"] <= 1.0
    assert stats.wall_time >= stats.critical_path_time
    for task in tasks.values():
        assert task.queued <= task.started <= task.finished
        assert (task.status, task.attempts, task.kind) == ("finished", 1, "thread")
    text = str(stats)
    assert "critical path: 3 tasks" in text
    assert "top -> long -> bottom" in text
    assert "parallelism the graph allows" in text


def test_a_failed_run_still_has_its_figures() -> None:
    g = diamond()
    g.add("broken", boom, g.ref("top"))
    results = g.run(on_error="continue")
    stats = results.stats
    assert stats.tasks["broken"].status == "failed"
    assert stats.critical_path == ["top", "long", "bottom"]
    assert (stats.tasks_failed, stats.tasks_skipped) == (1, 0)
    assert stats.parallelism >= 1.0


class Meet:
    """Thread tasks that return only once ``n`` of them run at the same time."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n, timeout=WAIT)

    def __call__(self, *deps: object) -> str:
        self.barrier.wait()
        return threading.current_thread().name


def traced_run() -> dagexec.Results:
    meet = Meet(2)  # two thread tasks at once: two thread workers
    g = Graph()
    t1 = g.add("t1", meet)
    t2 = g.add("t2", meet)
    p1 = g.add("p1", pid, t1, kind="process")
    p2 = g.add("p2", pid, t2, kind="process")
    i = g.add("i", value, "inline", kind="inline")
    g.add("sink", value, "sink", p1, p2, i)
    return g.run(keep="all", max_workers={"thread": 2, "process": 2})


def test_the_chrome_trace_has_a_slice_per_task_on_a_track_per_worker(tmp_path: Path) -> None:
    results = traced_run()
    path = tmp_path / "trace.json"
    results.stats.to_chrome_trace(path)
    with path.open(encoding="utf-8") as file:
        trace = json.load(file)
    events = trace["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in slices) == sorted(results.stats.tasks)
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    tracks: dict[str, set[int]] = {}
    for e in slices:
        assert e["ts"] >= 0
        assert e["dur"] >= 0
        assert e["args"]["status"] == "finished"
        record = results.stats.tasks[e["name"]]
        assert e["args"]["worker"] == record.worker
        assert names[e["tid"]].startswith(record.worker)  # the track is named after it
        tracks.setdefault(record.worker, set()).add(e["tid"])
    workers = list(tracks)
    for i, worker in enumerate(workers):  # no two workers share a track
        for other in workers[i + 1 :]:
            assert not tracks[worker] & tracks[other], (worker, other)
    # The two thread tasks that met ran on two workers, so on two tracks.
    assert results["t1"] != results["t2"]
    assert tracks[results["t1"]] != tracks[results["t2"]]
    for key in ("p1", "p2"):
        worker = f"pid {results[key]}"
        assert results[key] != os.getpid()
        assert results.stats.tasks[key].worker == worker
        assert any(name == worker for name in names.values())
    assert trace["otherData"]["critical_path"] == [str(k) for k in results.stats.critical_path]


# -- progress on stderr ---------------------------------------------------------------------


def final_line(err: str) -> str:
    """Return the last thing drawn on stderr (bars redraw with \\r, end with \\n)."""
    drawn = [part for part in re.split(r"[\r\n]", err) if part.strip()]
    assert drawn, "nothing was drawn"
    return drawn[-1]


def five_tasks(fail: bool = False) -> Graph:
    g = Graph()
    first = g.add("first", value, 0)
    if fail:
        g.add("broken", boom, first)
    else:
        g.add("fine", value, 1, first)
    g.add("after", value, 2, g.ref("broken" if fail else "fine"))
    g.add("p", value, 3, first)
    g.add("i", value, 4, kind="inline")
    return g


def test_progress_always_shows_the_final_count(capsys: pytest.CaptureFixture[str]) -> None:
    # A quick run has no redraw due before it ends: the last line must still be final.
    five_tasks().run(progress="always")
    last = final_line(capsys.readouterr().err)
    assert re.search(r"\b5/5\b", last), last
    assert "running 0" in last


def test_progress_always_counts_failed_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    # The final line counts failures and skipped tasks as done.
    with Runner() as runner:
        results = runner.run(five_tasks(fail=True), on_error="continue", progress="always")
    assert results.skipped == ["after"]
    last = final_line(capsys.readouterr().err)
    assert re.search(r"\b5/5\b", last), last
    assert "failed 1" in last


def test_progress_true_on_a_non_terminal_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    results = five_tasks().run(progress=True)
    assert dict(results) == {"after": 2, "p": 3, "i": 4}
    assert capsys.readouterr().err == ""


def times_two(item: int, shared: int) -> int:
    return item * shared


def test_map_shared_shows_its_items(capsys: pytest.CaptureFixture[str]) -> None:
    out = dagexec.map_shared(times_two, [1, 2, 3, 4], shared=lambda k: 2, progress="always")
    assert out == [2, 4, 6, 8]
    last = final_line(capsys.readouterr().err)
    assert re.search(r"\b4/4\b", last), last
    assert "items" in last


def test_imap_shared_over_a_generator_shows_the_final_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    items = (i for i in range(7))  # no len(): the total grows as items are read
    out = dict(dagexec.imap_shared(times_two, items, shared=lambda k: 2, progress="always"))
    assert out == {i: 2 * i for i in range(7)}
    last = final_line(capsys.readouterr().err)
    assert re.search(r"\b7/7\b", last), last


def run_graph(g: Graph, log: Path, progress: object) -> object:
    return g.run(progress=progress)


def run_runner(g: Graph, log: Path, progress: object) -> object:
    with Runner() as runner:
        return runner.run(g, progress=progress)


def arun_graph(g: Graph, log: Path, progress: object) -> object:
    return asyncio.run(g.arun(progress=progress))


def keyed(log: Path) -> Callable[[int], int]:
    def key(item: int) -> int:
        attempt(log, "key")
        return item

    return key


def map_items(g: Graph, log: Path, progress: object) -> object:
    return dagexec.map_shared(
        times_two, [1, 2], shared=lambda k: logged(log, "shared"), key=keyed(log), progress=progress
    )


def imap_items(g: Graph, log: Path, progress: object) -> object:
    def items() -> Iterator[int]:
        attempt(log, "item")
        yield 1

    return list(
        dagexec.imap_shared(
            times_two, items(), shared=lambda k: 2, key=keyed(log), progress=progress
        )
    )


BAD_PROGRESS = [1, 0, None, "yes", "ALWAYS", "always "]


@pytest.mark.parametrize("bad", BAD_PROGRESS, ids=repr)
@pytest.mark.parametrize("how", [run_graph, run_runner, arun_graph, map_items, imap_items])
def test_a_bad_progress_is_refused_before_any_work(
    how: Callable[[Graph, Path, object], object], bad: object, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    g = Graph()
    g.add("a", logged, log, "a")
    g.add("p", logged, log, "p", kind="process")
    with pytest.raises(ValueError, match="progress"):
        how(g, log, bad)
    assert lines(log) == []


# -- pictures after a run -------------------------------------------------------------------


def mermaid_nodes(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return (key -> node id, key -> class) of our Mermaid, keys from labels' first lines."""
    ids: dict[str, str] = {}
    classes: dict[str, str] = {}
    for line in text.splitlines():
        node = re.fullmatch(r'    (n\d+)[\[(]+"([^"]*)"[\])]+', line)
        if node:
            ids[node[2].split("<br/>")[0]] = node[1]
        cls = re.fullmatch(r"    class ([n\d,]+) (\w+)", line)
        if cls:
            for node_id in cls[1].split(","):
                classes[node_id] = cls[2]
    return ids, {key: classes[node_id] for key, node_id in ids.items() if node_id in classes}


def lint_like(parse_kind: str = "thread") -> Graph:
    g = Graph()
    cfg = g.add("cfg", value, {"strict": True})
    parses = [g.add(f"parse:{f}", value, f, cfg, kind=parse_kind) for f in "ab"]
    bad = g.add("check:bad", boom, cfg)
    checks = [g.add(f"check:{f}", value, f, p, p) for f, p in zip("ab", parses, strict=True)]
    g.add("report", value, "report", *checks, bad, after=["cfg"])
    g.add("summary", value, "summary", g.ref("report"), kind="inline")
    g.add("other", value, "other", cfg)
    return g


def test_a_run_that_went_on_after_a_failure_draws_each_status() -> None:
    g = lint_like(parse_kind="process")
    results = g.run(on_error="continue")
    ids, classes = mermaid_nodes(results.to_mermaid(title="lint"))
    assert set(ids) == set(g)
    assert classes == {
        "cfg": "finished",
        "parse:a": "finished",
        "parse:b": "finished",
        "check:a": "finished",
        "check:b": "finished",
        "check:bad": "failed",
        "report": "skipped",
        "summary": "skipped",
        "other": "finished",
    }
    dot = results.to_dot()
    for key in g:
        assert len(re.findall(rf'label="{re.escape(key)}\\n', dot)) == 1, key
    assert '"#ffe3e3"' in dot  # the failed fill
    before = g.to_mermaid()
    assert "classDef" not in before  # a graph that has not run has no status


def test_graph_to_dot_has_a_node_per_task_and_an_edge_per_dependency() -> None:
    g = lint_like()
    dot = g.to_dot()
    nodes = dict(re.findall(r'^    (n\d+) \[label="([^"\\]*)\\n', dot, flags=re.MULTILINE))
    assert len(nodes) == len(g)
    key_of = {node_id: key for node_id, key in nodes.items()}
    assert sorted(key_of.values()) == sorted(g)
    edges = re.findall(r"^    (n\d+) -> (n\d+);$", dot, flags=re.MULTILINE)
    drawn = sorted((key_of[a], key_of[b]) for a, b in edges)
    expected = sorted(
        [("cfg", f"parse:{f}") for f in "ab"]
        + [("cfg", "check:bad"), ("cfg", "other")]
        + [(f"parse:{f}", f"check:{f}") for f in "ab"]  # a Ref passed twice: one edge
        + [("check:a", "report"), ("check:b", "report"), ("check:bad", "report")]
        + [("cfg", "report")]  # after=
        + [("report", "summary")]
    )
    assert drawn == expected
    assert len(re.findall(r"^    n\d+ \[", dot, flags=re.MULTILINE)) == len(g)


def test_results_of_a_target_run_draw_only_its_keys() -> None:
    g = lint_like()
    results = g.run(targets=["check:a"])
    ids, classes = mermaid_nodes(results.to_mermaid())
    assert set(ids) == {"cfg", "parse:a", "check:a"}
    assert set(classes.values()) == {"finished"}


def test_map_shared_results_have_no_picture() -> None:
    # map_shared has no graph: its failure's Results say so instead of drawing nothing.
    with pytest.raises(dagexec.TaskFailed) as info:
        dagexec.map_shared(times_two, [1, 2], shared=boom)
    results = info.value.results
    assert results is not None
    with pytest.raises(ValueError, match="no graph"):
        results.to_mermaid()
