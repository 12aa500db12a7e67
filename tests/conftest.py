"""Shared fixtures: every test fails if it leaves threads or child processes behind."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

# Per-interpreter singletons that loky and multiprocessing start once and keep on purpose.
_SINGLETONS = ("resource_tracker", "forkserver", "semaphore_tracker")


def _children() -> dict[int, str]:
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            cmd = ""
        if not any(name in cmd for name in _SINGLETONS):
            found[proc.pid] = cmd
    return found


def _settled(
    before: set[threading.Thread], children_before: dict[int, str], deadline: float
) -> tuple[list[str], dict[int, str]]:
    """Return the threads and children still alive that were not there before.

    A thread or process that is already shutting down may need a moment to be reaped;
    poll until the deadline instead of asserting on the first look.
    """
    while True:
        threads = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        children = {p: c for p, c in _children().items() if p not in children_before}
        if (not threads and not children) or time.monotonic() > deadline:
            return threads, children
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves threads or child processes running.

    Also takes out gc callbacks a test installed (hypothesis adds one for good on its
    first example): on CPython 3.11 any gc callback breaks ``ast.parse`` run in two
    threads ("AST constructor recursion depth mismatch"), which the lint example does.
    """
    before = set(threading.enumerate())
    children_before = _children()
    callbacks = list(gc.callbacks)
    yield
    gc.callbacks[:] = callbacks
    threads, children = _settled(before, children_before, time.monotonic() + 5.0)
    assert not threads, f"test leaked threads: {threads}"
    assert not children, f"test leaked child processes: {children}"
