"""Dispatch order: consumers of values just computed run first, so few values live at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import dagexec


class _Live:
    """Counts parse values alive (produced, not yet consumed by all their checks)."""

    def __init__(self, checks: int) -> None:
        self.lock = threading.Lock()
        self.remaining: dict[int, int] = {}
        self.checks = checks
        self.peak = 0

    def parse(self, i: int) -> int:
        time.sleep(0.002)  # a unit long enough that the pool keeps a shallow queue
        with self.lock:
            self.remaining[i] = self.checks
            self.peak = max(self.peak, len(self.remaining))
        return i

    def check(self, i: int, r: int) -> tuple[int, int]:
        time.sleep(0.002)
        with self.lock:
            self.remaining[i] -= 1
            if not self.remaining[i]:
                del self.remaining[i]
        return i, r


@pytest.mark.parametrize("workers", [1, 2])
def test_a_wide_graph_holds_few_intermediates_at_once(workers: int) -> None:
    live = _Live(checks=3)
    g = dagexec.Graph()
    for i in range(40):
        p = g.add(("parse", i), live.parse, i)
        for r in range(3):
            g.add(("check", i, r), live.check, p, r)
    results = g.run(max_workers=workers)
    assert len(results) == 120
    # Breadth-first would parse all 40 before the first check; depth-first holds about
    # one value per worker plus the one whose checks are draining.
    assert live.peak <= 2 * workers + 1, live.peak


def test_initial_ready_keys_start_in_insertion_order() -> None:
    order: list[Any] = []
    g = dagexec.Graph()
    for i in range(10):
        g.add(i, order.append, i, kind="inline")
    g.run()
    assert order == list(range(10))
