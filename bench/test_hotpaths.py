"""Microbenchmarks of dagexec's hot paths (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/test_hotpaths.py`` (``make bench`` runs it too).
Not part of the test suite: the figures are for comparing commits on one machine, side by
side with ``--benchmark-compare``, never for asserting wall-clock limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import dagexec
from dagexec._graph import _NO_KWARGS, _Task
from dagexec._once import OnceMap
from dagexec._pools import run_calls
from dagexec._state import RunState

N = 10_000


def noop(*args: Any) -> None:
    return None


def _wide(n: int, kind: str = "thread") -> dagexec.Graph:
    g = dagexec.Graph(default_kind=kind)
    for i in range(n):
        g.add(i, noop)
    return g


def _fanout(n: int, kind: str = "thread") -> dagexec.Graph:
    g = dagexec.Graph(default_kind=kind)
    for p in range(n // 10):
        parent = g.add(("p", p), noop)
        for c in range(9):
            g.add(("c", p, c), noop, parent)
    return g


def test_graph_add(benchmark: Any) -> None:
    """Building: ``Graph.add`` of N independent tasks."""
    g = benchmark(_wide, N)
    assert len(g) == N


def test_graph_add_with_refs(benchmark: Any) -> None:
    """Building: N tasks in a fan-out shape, each child taking its parent's Ref."""
    g = benchmark(_fanout, N)
    assert len(g) == N


def test_run_state_inline(benchmark: Any) -> None:
    """The pure state machine alone: plan, then finish every key as it becomes ready."""
    g = _fanout(N)

    def drive() -> int:
        state = RunState(g._tasks, None, {}, False)
        ready = list(state.ready())
        done = 0
        while ready:
            key = ready.pop()
            state.finish(key, None)
            done += 1
            ready.extend(state.ready())
        return done

    assert benchmark(drive) == N


@pytest.mark.parametrize("kind", ["inline", "thread"])
@pytest.mark.parametrize("shape", [_wide, _fanout], ids=["wide", "fanout"])
def test_graph_run(benchmark: Any, kind: str, shape: Callable[..., dagexec.Graph]) -> None:
    """A whole run of N no-op tasks on 2 workers (plan, dispatch, release)."""
    g = shape(N, kind)
    results = benchmark(g.run, max_workers=2)
    assert results.stats.tasks_run == N


def test_once_map_claim_settle(benchmark: Any) -> None:
    """The once-cell map: claim, own and settle N distinct keys."""
    tasks = [_Task(i, noop, (), _NO_KWARGS, "thread", (), (), ()) for i in range(N)]

    def cycle() -> int:
        once = OnceMap()
        for task in tasks:
            cell, _ = once.claim(task, hold=True)
            once.settle(cell, True, None)
        return len(once)

    assert benchmark(cycle) == N


def test_run_calls_chain(benchmark: Any) -> None:
    """A fused chain of N calls in one worker, each taking the previous value."""
    calls = [(0, noop, (), _NO_KWARGS, (), False)]
    calls += [(i, noop, (i - 1,), _NO_KWARGS, (0,), False) for i in range(1, N)]
    outcomes = benchmark(run_calls, calls)
    assert len(outcomes) == N


@pytest.mark.parametrize("kind", ["inline", "thread"])
def test_map_shared(benchmark: Any, kind: str) -> None:
    """map_shared of N no-op items over N/10 shared keys on 2 workers."""
    items = list(range(N))
    out = benchmark(
        dagexec.map_shared,
        noop,
        items,
        shared=noop,
        key=lambda i: i % (N // 10),
        kind=kind,
        max_workers=2,
    )
    assert len(out) == N
