"""OnceMap: the exactly-once guarantee shared by every run and submit of a Runner.

A cell per key, in a dict guarded by one lock that is held only for dict and field
operations. ``claim`` returns the live cell for a key and whether the caller now owns it;
the owner runs the task and ``settle``s the cell; everyone else ``subscribe``s and is
called back (never while the lock is held) with the outcome.

A cell stays in the map while its task is in flight, and afterwards only if someone asked
to hold its value (a run's target, a submitted future). Failures are not memoised: a
failed cell leaves the map, so a later run or submit tries the task again. A settled cell
keeps its outcome for whoever still holds the cell (a subscriber that claimed it just
before it settled), so no caller ever sees a settled cell without its value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ._errors import DuplicateKeyError
from ._graph import _Task

__all__ = ["Cell", "OnceMap"]

Callback = Callable[[bool, Any], None]


class Cell:
    """The once-cell of one key: pending until its owner settles it."""

    __slots__ = ("callbacks", "done", "hold", "ok", "task", "value")

    def __init__(self, task: _Task, hold: bool) -> None:
        self.task = task
        self.hold = hold
        self.done = False
        self.ok = False
        self.value: Any = None
        self.callbacks: list[Callback] = []


class OnceMap:
    """Cells by key behind one lock; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[Hashable, Cell] = {}

    def claim(self, task: _Task, hold: bool = False) -> tuple[Cell, bool]:
        """Return the cell for ``task.key`` and True if the caller must run it.

        A settled cell with a different definition is replaced (the key is recomputed);
        an in-flight one with a different definition raises ``DuplicateKeyError``.
        """
        key = task.key
        checked: Cell | None = None  # a cell whose definition matched, compared unlocked
        while True:
            with self._lock:
                cell = self._cells.get(key)
                if cell is None:
                    cell = self._cells[key] = Cell(task, hold)
                    return cell, True
                if cell.task is task or cell is checked:
                    cell.hold = cell.hold or hold
                    return cell, False
            # Comparing definitions runs user __eq__ code: never under the lock.
            detail = cell.task.difference(task)
            if detail is None:
                checked = cell
                continue
            if not cell.done:
                raise DuplicateKeyError(key, f"{detail}, and that one is running now")
            with self._lock:
                if self._cells.get(key) is cell:
                    cell = self._cells[key] = Cell(task, hold)
                    return cell, True

    def subscribe(self, cell: Cell, callback: Callback) -> None:
        """Call ``callback(ok, value)`` once ``cell`` settles (now, if it already has)."""
        with self._lock:
            if not cell.done:
                cell.callbacks.append(callback)
                return
        callback(cell.ok, cell.value)

    def settle(self, cell: Cell, ok: bool, value: Any) -> None:
        """Record the outcome of ``cell`` and call its subscribers outside the lock."""
        with self._lock:
            cell.done = True
            cell.ok = ok
            # Kept on the cell for late subscribers even when the map lets go of it.
            cell.value = value
            if not (ok and cell.hold) and self._cells.get(cell.task.key) is cell:
                del self._cells[cell.task.key]
            callbacks, cell.callbacks = cell.callbacks, []
        for callback in callbacks:
            callback(ok, value)

    def hold(self, cell: Cell, value: Any) -> None:
        """Keep a settled cell's value (it became a target after it was claimed)."""
        with self._lock:
            if cell.done and cell.ok and not cell.hold:
                cell.hold = True
                cell.value = value
                self._cells.setdefault(cell.task.key, cell)

    def held(self, tasks: Mapping[Hashable, _Task]) -> dict[Hashable, Any]:
        """Return the held values whose key is in ``tasks`` with the same definition."""
        with self._lock:
            cells = [c for c in self._cells.values() if c.done and c.ok]
        found = {}
        for cell in cells:
            task = tasks.get(cell.task.key)
            if task is not None and (task is cell.task or cell.task.difference(task) is None):
                found[task.key] = cell.value
        return found

    def clear(self) -> None:
        """Forget every held value; tasks in flight keep running for their callers."""
        with self._lock:
            self._cells = {k: c for k, c in self._cells.items() if not c.done}

    def __len__(self) -> int:
        with self._lock:
            return len(self._cells)
