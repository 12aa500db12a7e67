"""OnceMap: the exactly-once guarantee shared by every run and submit of a Runner.

A cell per key, in a dict guarded by one lock that is held only for dict and field
operations. ``claim`` returns the live cell for a key and whether the caller now owns it;
a caller that does not own it is subscribed in the same step. The owner runs the task
and ``settle``s the cell; subscribers are called back (never while the lock is held)
with the outcome. A cell is joined only by callers that compute the same thing: the
same definition, and inputs defined the same way all the way up (its ``lineage``).

A cell stays in the map while its task is in flight, and afterwards only if someone asked
to hold its value (a run's target, a submitted future). Failures are not memoised: a
failed cell leaves the map, so a later run or submit tries the task again. A settled cell
that nobody holds drops its value once its subscribers have it (its owner may still
reference the cell, and must not keep the value alive); ``release`` gives up a cell that
never ran and that nobody joined.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ._errors import DuplicateKeyError
from ._graph import _Task

__all__ = ["Busy", "Cell", "OnceMap"]

Callback = Callable[[bool, Any], None]

#: What a held value was computed from: ``(dep_key, dep_task, dep_lineage)`` per
#: dependency, recursively, so a held value is reused only if its inputs are unchanged.
Lineage = tuple[tuple[Hashable, _Task, "Lineage"], ...]


class Busy(DuplicateKeyError):
    """The key is being computed right now from another definition (``cell``)."""

    def __init__(self, key: Hashable, detail: str, cell: Cell) -> None:
        super().__init__(key, detail)
        self.cell = cell


class Cell:
    """The once-cell of one key: pending until its owner settles it."""

    __slots__ = ("callbacks", "done", "hold", "lineage", "ok", "task", "value", "wanted")

    def __init__(self, task: _Task, hold: bool) -> None:
        self.task = task
        self.hold = hold
        self.done = False
        self.ok = False
        self.value: Any = None
        self.callbacks: list[Callback] = []
        self.lineage: Lineage = ()
        self.wanted = 1  # callers that want its outcome (its owner, then joiners)

    def unwanted(self) -> bool:
        """Say whether every caller has given it up (``OnceMap.unwant``); a hint."""
        return self.wanted <= 0


class OnceMap:
    """Cells by key behind one lock; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[Hashable, Cell] = {}

    def claim(
        self,
        task: _Task,
        hold: bool = False,
        on_done: Callback | None = None,
        tasks: Mapping[Hashable, _Task] | None = None,
        lineage: Lineage = (),
    ) -> tuple[Cell, bool]:
        """Return the cell for ``task.key`` and True if the caller must run it.

        An existing cell is joined only if it computes the same thing: the same
        definition and, when the caller passes its graph's ``tasks``, inputs defined the
        same way all the way up (the cell's lineage). Otherwise a settled cell is
        replaced (the key is recomputed) and an in-flight one raises
        ``DuplicateKeyError``. A new cell records ``lineage``. When the caller does not
        own the cell, ``on_done(ok, value)`` is subscribed in the same step (called at
        once, outside the lock, if the cell has settled), so no settle or release can
        slip in between claiming and subscribing; an owner subscribes with
        ``subscribe`` if it wants to.
        """
        key = task.key
        checked: Cell | None = None  # a cell found to compute the same thing, unlocked
        while True:
            with self._lock:
                cell = self._cells.get(key)
                if cell is None:
                    return self._new(task, hold, lineage), True
                if cell.task is task or cell is checked:
                    cell.hold = cell.hold or hold
                    if not cell.done:
                        if on_done is not None:
                            cell.callbacks.append(on_done)
                        cell.wanted += 1
                        return cell, False
                    break  # settled and held: answer outside the lock
            # Comparing definitions runs user __eq__ code: never under the lock.
            detail = cell.task.difference(task)
            if detail is None and tasks is not None and not _unchanged(cell.lineage, tasks, set()):
                detail = "its inputs are defined differently"
            if detail is None:
                checked = cell
                continue
            if not cell.done:
                raise Busy(key, f"{detail}, and that one is running now", cell)
            with self._lock:
                if self._cells.get(key) is cell:
                    return self._new(task, hold, lineage), True
        if on_done is not None:
            on_done(cell.ok, cell.value)
        return cell, False

    def _new(self, task: _Task, hold: bool, lineage: Lineage) -> Cell:
        cell = self._cells[task.key] = Cell(task, hold)
        cell.lineage = lineage
        return cell

    def subscribe(self, cell: Cell, callback: Callback) -> None:
        """Call ``callback(ok, value)`` once ``cell`` settles (now, if it already has)."""
        with self._lock:
            if not cell.done:
                cell.callbacks.append(callback)
                return
        callback(cell.ok, cell.value)

    def settle(self, cell: Cell, ok: bool, value: Any) -> None:
        """Record the outcome of ``cell`` and call its subscribers outside the lock.

        Settling a cell that has already settled (or been released) does nothing.
        """
        with self._lock:
            if cell.done:
                return
            cell.done = True
            cell.ok = ok
            cell.value = value
            kept = ok and cell.hold
            if not kept and self._cells.get(cell.task.key) is cell:
                del self._cells[cell.task.key]
            callbacks, cell.callbacks = cell.callbacks, []
            if ok and not kept:
                cell.value = None  # delivered below; a cell must not keep a value alive
        for callback in callbacks:
            callback(ok, value)

    def unwant(self, cell: Cell, callback: Callback | None) -> None:
        """A caller gives ``cell`` up (it cancelled its future): forget its callback.

        Once nobody wants it, a unit that has not started is skipped (``Cell.unwanted``
        is its ``stop``), and its cell is released.
        """
        with self._lock:
            if cell.done:
                return
            cell.wanted -= 1
            if callback is not None and callback in cell.callbacks:
                cell.callbacks.remove(callback)

    def joined(self, cell: Cell | None) -> bool:
        """Say whether someone other than its owner waits on ``cell``."""
        if cell is None:
            return False
        with self._lock:
            return bool(cell.callbacks)

    def claim_free(self, task: _Task, hold: bool, lineage: Lineage) -> Cell | None:
        """Own a new cell for ``task.key`` only if the key has none; else return None."""
        with self._lock:
            if task.key in self._cells:
                return None
            return self._new(task, hold, lineage)

    def release(self, cell: Cell) -> bool:
        """Give up an unsettled cell nobody else waits on; False if someone does.

        The key is free again: the next claim runs the task. A cell with subscribers
        must be run for them (the caller's job) and settled.
        """
        with self._lock:
            if cell.callbacks:
                return False
            cell.done = True
            if self._cells.get(cell.task.key) is cell:
                del self._cells[cell.task.key]
            return True

    def held(self, tasks: Mapping[Hashable, _Task]) -> dict[Hashable, Cell]:
        """Return the held cells reusable for ``tasks``.

        Reusable means the same definition all the way up: a held value whose inputs are
        defined differently in ``tasks`` is stale, and its key is computed again.
        """
        with self._lock:
            cells = [c for c in self._cells.values() if c.done and c.ok]
        same: set[tuple[Hashable, int]] = set()  # (key, id of the old task) verified
        return {
            cell.task.key: cell
            for cell in cells
            if _unchanged(((cell.task.key, cell.task, cell.lineage),), tasks, same)
        }

    def clear(self) -> None:
        """Forget every held value; tasks in flight keep running for their callers."""
        with self._lock:
            self._cells = {k: c for k, c in self._cells.items() if not c.done}

    def __len__(self) -> int:
        with self._lock:
            return len(self._cells)


def _unchanged(
    lineage: Lineage, tasks: Mapping[Hashable, _Task], same: set[tuple[Hashable, int]]
) -> bool:
    """Say whether every task in ``lineage`` is defined the same way in ``tasks``.

    ``same`` holds (key, id of the old task) pairs already verified with all their inputs
    (the same key may stand for different old tasks in different lineages); it grows on
    success. The lineage keeps the old tasks alive, so their ids are not reused meanwhile.
    """
    seen: set[tuple[Hashable, int]] = set()
    stack = [lineage]
    while stack:
        for key, old, inputs in stack.pop():
            mark = (key, id(old))
            if mark in same or mark in seen:
                continue
            new = tasks.get(key)
            if new is None or (new is not old and old.difference(new) is not None):
                return False
            seen.add(mark)
            stack.append(inputs)
    same |= seen
    return True
