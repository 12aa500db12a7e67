"""Task helpers shared by the test modules (module level, so process workers import them)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


def _record(log: Path, key: str) -> None:
    with log.open("a") as f:
        f.write(f"{key}\n")


def ran(log: Path) -> list[str]:
    """Return the keys recorded in ``log``, in the order they ran."""
    return log.read_text().split() if log.exists() else []


def value(log: Path, key: str, v: Any) -> Any:
    """Record ``key`` and return ``v``."""
    _record(log, key)
    return v


def total(log: Path, key: str, *values: int) -> int:
    """Record ``key`` and return the sum of ``values``."""
    _record(log, key)
    return sum(values)


class PairedEntry:
    """Measures how many calls run at once, with no sleeps.

    Each call of ``enter()`` stays until the call after next has entered (or all ``n``
    have): two workers always make progress, a pool of one leaves the first call waiting
    in vain (``enter`` then returns False), and a third worker would let a third call in
    while two are held, pushing ``peak`` to 3.
    """

    def __init__(self, n: int, wait: float) -> None:
        self.n = n
        self.wait = wait
        self.cond = threading.Condition()
        self.entered = self.active = self.peak = 0

    def enter(self) -> bool:
        """Enter, wait for the partner; return whether it came."""
        with self.cond:
            mine = self.entered
            self.entered += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            came = self.cond.wait_for(
                lambda: self.entered >= min(self.n, mine + 2), timeout=self.wait
            )
            self.active -= 1
        return came
