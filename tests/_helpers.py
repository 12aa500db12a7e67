"""Task helpers shared by the test modules (module level, so process workers import them)."""

from __future__ import annotations

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
