"""Locality: process tasks run where their inputs are, and values stay in their workers.

A run that owns its process pool (``Graph.run``, ``map_shared`` without a runner) gives
each process unit a worker (a *slot*) of its own choosing through ``Local``::

    ready unit ──enqueue──▶ at[slot holding most of its input bytes] or anywhere
                                 │ pump: each slot takes its own units first, then any
                                 ▼
                 run_unit(drops, calls with Held/Moved inputs, keep, send) on that slot
                                 │ UnitDone through the run's queue
                                 ▼
                 value kept there (Remote in the run) and/or sent back pickled

A worker with nothing to do takes a unit queued for a busy one when the wait it saves
is worth moving the unit's inputs (``_worth_moving``); inputs that only live in another
worker are fetched from there first (``fetch_value``), then sent along (``Moved``) and
kept where they arrive. When a value's last reader has finished, its token goes to
every worker holding it with the next unit for that worker, or alone if the worker is
idle (``drops``).

``Local`` is owned by the run's loop thread, like the rest of the run's state; pools
only call ``finish`` callbacks, which post a ``UnitDone`` to the run's queue.

Glossary:
    remotes   key -> Remote: the copies of the key's value in workers (and its bytes
              when the caller has them)
    at        slot -> units waiting for that worker; ``anywhere``: units with no held input
    drops     slot -> tokens that worker should forget with its next unit
    moving    unit -> (slot it is moving to, tokens still being fetched for it)
    fetching  token -> units waiting for that value's bytes
    bound     slot -> units moving to it (an idle worker waits for them, steals no more)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from contextlib import suppress
from typing import Any

from ._errors import TaskFailed
from ._pools import (
    SKIPPED,
    Call,
    Stamp,
    Unpicklable,
    _ProcessPool,
    decode_outcomes,
    dumps,
    encode_calls,
)
from ._worker import (
    FAILED,
    LOST,
    OK,
    Held,
    Moved,
    Remote,
    Token,
    fetch_value,
    new_token,
    run_unit,
)

__all__ = ["CannotMove", "Local", "UnitDone"]

_UNKNOWN = 1.0  # seconds a unit is assumed to take before one has finished
_MOVE_RATE = 200e6  # bytes per second a value moves at (pickle, pipe, unpickle): cautious


class UnitDone:
    """How a unit placed by ``Local`` ended, as posted to its run's queue.

    ``status`` is OK, FAILED, LOST (an input was not in its worker: ``value`` is its
    token), or None when it never ran (``value`` is SKIPPED or the pool's error).
    For OK, ``value`` is the value sent back (or None) and ``remote`` the handle on
    the copy kept in the worker (or None).
    """

    __slots__ = ("calls", "remote", "seconds", "slot", "stamp", "status", "tag", "value")

    def __init__(
        self, calls: list[Call], slot: int, tag: Any, status: int | None, value: Any
    ) -> None:
        self.calls = calls
        self.slot = slot
        self.tag = tag
        self.status = status
        self.value = value
        self.remote: Remote | None = None
        self.seconds = 0.0
        self.stamp: Stamp | None = None  # where and when it ran


class CannotMove(Exception):
    """A unit needs a value in another worker, and the value cannot be pickled."""

    def __init__(self, key: Hashable, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def failure(self, unit: Hashable) -> TaskFailed:
        """Return the TaskFailed of ``unit``, saying why and what to do."""
        return TaskFailed(
            unit,
            f"could not run: its inputs are kept in different process workers and "
            f"{self.key!r} cannot be pickled to move ({self.reason}); return plain data "
            f"from {self.key!r}, or use kind='thread'",
        )


class _Fetched:
    """A value's bytes fetched from a worker (``data``), or why not (``status``)."""

    __slots__ = ("data", "key", "status")

    def __init__(self, key: Hashable, status: int | None, data: Any) -> None:
        self.key = key
        self.status = status
        self.data = data


class Local:
    """Placement, kept values and moves for the process units of one run."""

    def __init__(
        self,
        pool: _ProcessPool,
        post: Callable[[Any], None],
        stop: Callable[[], bool],
        queue: Callable[[], deque[Hashable]] = deque,
    ) -> None:
        self.pool = pool
        self.post = post
        self.stop = stop
        n = pool.workers
        # ``queue`` makes the waiting queues: deques, or by priority when a run has them
        self.at: list[deque[Hashable]] = [queue() for _ in range(n)]
        self.anywhere: deque[Hashable] = queue()
        self.drops: list[list[Token]] = [[] for _ in range(n)]
        self.remotes: dict[Hashable, Remote] = {}
        # id(fn) -> (fn, its Remote): each function is pickled once and sent once to
        # each worker (a function sent by value costs ~0.4 ms to pickle per unit).
        self.functions: dict[int, tuple[Callable[..., Any], Remote]] = {}
        self.moving: dict[Hashable, tuple[int, set[Hashable]]] = {}
        self.fetching: dict[Hashable, list[Hashable]] = {}
        self.unmovable: dict[Hashable, str] = {}  # key -> why it cannot be pickled
        self.bound = [0] * n
        self.issued = 0  # fetches started, for the run to count as in flight
        self.mean = _UNKNOWN
        self.kept = 0  # values kept in the worker that computed them, never sent
        self.moved = 0  # values sent to a worker that did not compute them
        self.bytes_moved = 0

    # -- where values are ---------------------------------------------------------------

    def valid(self, remote: Remote, slot: int) -> bool:
        """Say whether worker ``slot`` still has its copy (it has not been replaced)."""
        return remote.holders.get(slot) == self.pool.generation(slot)

    def holder(self, remote: Remote) -> int | None:
        """Return a worker with a valid copy of the value, if any."""
        for slot in remote.holders:
            if self.valid(remote, slot):
                return slot
        return None

    def lost(self, key: Hashable) -> bool:
        """Say whether ``key``'s value only lived in workers that have died since."""
        remote = self.remotes.get(key)
        return remote is not None and remote.data is None and self.holder(remote) is None

    def where(self, inputs: Iterable[Hashable]) -> int | None:
        """Return the worker holding the most bytes of ``inputs``, or None."""
        weight: dict[int, int] = {}
        remotes = self.remotes
        for key in inputs:
            remote = remotes.get(key)
            if remote is None:
                continue
            if key in self.unmovable:  # it cannot leave its worker: its readers go there
                holder = self.holder(remote)
                if holder is not None:
                    return holder
            for slot in remote.holders:
                if self.valid(remote, slot):
                    weight[slot] = weight.get(slot, 0) + remote.size + 1
        return max(weight, key=weight.__getitem__) if weight else None

    # -- waiting units --------------------------------------------------------------------

    def enqueue(self, unit: Hashable, inputs: Iterable[Hashable], first: bool) -> None:
        """Queue a ready unit for the worker holding most of its inputs (or any worker)."""
        slot = self.where(inputs)
        queue = self.anywhere if slot is None else self.at[slot]
        if first:
            queue.appendleft(unit)
        else:
            queue.append(unit)

    def waiting(self) -> int:
        """Return how many units wait for a worker (or for their inputs to arrive)."""
        return sum(map(len, self.at)) + len(self.anywhere) + len(self.moving)

    def clear(self) -> None:
        """Forget every waiting unit (the run is stopping)."""
        for queue in self.at:
            queue.clear()
        self.anywhere.clear()

    def pump(
        self,
        start: Callable[[Hashable, int], None],
        inputs_of: Callable[[Hashable], Iterable[Hashable]],
    ) -> None:
        """Hand waiting units to workers with room: their own first, then any unit.

        One unit per worker per round, emptiest worker first, so that units no worker
        holds anything for spread over idle workers instead of queueing on one.
        """
        pool = self.pool
        anywhere = self.anywhere
        slots = range(pool.workers)
        progress = True
        while progress and not self.stop():
            progress = False
            for slot in sorted(slots, key=pool.room, reverse=True):
                if pool.room(slot) <= 0:
                    break
                own = self.at[slot]
                if own or anywhere:
                    start(own.popleft() if own else anywhere.popleft(), slot)
                    progress = True
        if not anywhere:
            self.steal(start, inputs_of)
        self.flush(idle_only=True)

    def steal(
        self,
        start: Callable[[Hashable, int], None],
        inputs_of: Callable[[Hashable], Iterable[Hashable]],
    ) -> None:
        """Give an idle worker a unit queued for a busy one, when moving it pays."""
        pool = self.pool
        for slot in range(pool.workers):
            if not pool.idle(slot) or self.bound[slot] or self.at[slot]:
                continue  # not idle, or work is on its way to it
            victim = max(range(pool.workers), key=lambda s: len(self.at[s]))
            backlog = self.at[victim]
            if not backlog:
                return
            unit = backlog[-1]  # the one its holder would reach last
            inputs = [k for k in inputs_of(unit) if k in self.remotes]
            if any(k in self.unmovable for k in inputs):
                continue
            size = sum(
                self.remotes[k].size for k in inputs if not self.valid(self.remotes[k], slot)
            )
            if not _worth_moving(len(backlog), self.mean, size):
                continue
            backlog.pop()
            if not self.fetch_for(unit, inputs, slot):
                start(unit, slot)

    def fetch_for(self, unit: Hashable, inputs: Iterable[Hashable], slot: int) -> bool:
        """Fetch the inputs worker ``slot`` lacks and only other workers have.

        Returns whether ``unit`` now waits for them (it is queued for ``slot`` when they
        arrive); False when it can start on ``slot`` right away.

        Raises:
            CannotMove: an input it needs there cannot be pickled.
        """
        need = set()
        for key in inputs:
            remote = self.remotes.get(key)
            if remote is None or remote.data is not None or self.valid(remote, slot):
                continue
            holder = self.holder(remote)
            if holder is None:
                continue  # lost: the run recomputes it when the unit starts
            if key in self.unmovable:
                raise CannotMove(key, self.unmovable[key])
            need.add(key)
            if key not in self.fetching:
                self.fetching[key] = []
                self.fetch(key, remote, holder)
            self.fetching[key].append(unit)
        if not need:
            return False
        self.moving[unit] = (slot, need)
        self.bound[slot] += 1
        return True

    def fetch(self, key: Hashable, remote: Remote, holder: int) -> None:
        def finish(result: Any, error: BaseException | None, generation: int) -> None:
            if result is SKIPPED or error is not None:
                self.post(_Fetched(key, None, error))
                return
            status, data = result
            if status == OK:
                self.pool.received(len(data))
            self.post(_Fetched(key, status, data))

        drops = self.take_drops(holder)
        self.issued += 1
        self.pool.place(holder, fetch_value, (drops, remote.token), finish)

    def fetched(self, done: _Fetched, inputs_of: Callable[[Hashable], Iterable[Hashable]]) -> None:
        """Record fetched bytes; queue again the units that waited for them.

        A unit whose fetch failed goes back to wherever its inputs are.
        """
        remote = self.remotes.get(done.key)
        units = self.fetching.pop(done.key, [])
        if remote is not None and done.status == OK:
            remote.data = done.data
            remote.size = len(done.data)
        elif done.status == FAILED:  # it cannot be pickled: its readers go to it
            self.unmovable[done.key] = done.data
        for unit in units:
            if unit not in self.moving:
                continue  # already sent back by the failed fetch of another input
            slot, need = self.moving[unit]
            need.discard(done.key)
            if need and done.status == OK:
                continue
            del self.moving[unit]
            self.bound[slot] -= 1
            if done.status == OK:
                self.at[slot].appendleft(unit)
            else:
                self.enqueue(unit, inputs_of(unit), True)

    # -- units ----------------------------------------------------------------------------

    def arg(self, key: Hashable, value: Any, slot: int) -> Any:
        """Return ``key``'s value as a unit on worker ``slot`` should carry it."""
        remote = self.remotes.get(key)
        if remote is None:
            try:  # a value of the caller's: pickled once, kept by each worker it goes to
                remote = self.remotes[key] = Remote(new_token(), dumps(value))
            except Exception:
                return value  # the unit's own pickling fails, naming its task
        if self.valid(remote, slot):
            return Held(remote.token)
        if remote.data is None:
            raise AssertionError(f"{key!r} is neither in worker {slot} nor fetched")
        remote.holders[slot] = self.pool.generation(slot)
        self.moved += 1
        self.bytes_moved += len(remote.data)
        return Moved(remote.token, remote.data)

    def function(self, fn: Callable[..., Any], slot: int) -> Any:
        """Return ``fn`` as a unit on worker ``slot`` should carry it (held or sent)."""
        entry = self.functions.get(id(fn))
        if entry is None:
            try:
                remote = Remote(new_token(code=True), dumps(fn))
            except Exception:
                return fn  # the unit's own pickling fails, naming its task
            self.functions[id(fn)] = (fn, remote)  # fn kept alive: its id stays its own
        else:
            remote = entry[1]
        if self.valid(remote, slot):
            return Held(remote.token)
        remote.holders[slot] = self.pool.generation(slot)
        return Moved(remote.token, remote.data)  # type: ignore[arg-type]

    def run(
        self,
        slot: int,
        calls: list[Call],
        keep: bool,
        send: bool,
        tag: Any,
        timeout: float | None = None,
    ) -> None:
        """Run a one-call unit on worker ``slot``; its ``UnitDone`` is posted with ``tag``."""
        token = new_token() if keep else None

        def finish(result: Any, error: BaseException | None, generation: int) -> None:
            if result is SKIPPED or error is not None:
                self.post(UnitDone(calls, slot, tag, None, error or SKIPPED))
                return
            status, data, size, pid, began, ended = result
            if status == OK:
                value = None
                if data is not None:
                    self.pool.received(len(data))
                    ok, value = decode_outcomes(calls, [(True, data)])[0]
                    if not ok:
                        status = FAILED
                if status == OK and token is not None:
                    remote = Remote(token, data, size)
                    remote.holders[slot] = generation
                    done = UnitDone(calls, slot, tag, OK, value)
                    done.remote = remote
                else:
                    done = UnitDone(calls, slot, tag, status, value)
            elif status == FAILED:
                self.pool.received(len(data))
                done = UnitDone(
                    calls, slot, tag, FAILED, decode_outcomes(calls, [(False, data)])[0][1]
                )
            else:
                done = UnitDone(calls, slot, tag, LOST, data)
            done.seconds = ended - began
            done.stamp = (f"pid {pid}", (began, ended))
            self.post(done)

        try:
            body = encode_calls(calls)
        except Unpicklable as exc:
            self.post(UnitDone(calls, slot, tag, FAILED, exc))
            return
        drops = self.take_drops(slot)
        args = (drops, body, token, send)
        self.pool.place(slot, run_unit, args, finish, self.stop, len(body), timeout)

    def ran(self, done: UnitDone, key: Hashable | None, again: bool = False) -> None:
        """Account a finished unit; keep its value's handle under ``key``.

        ``again``: it recomputed a lost value (not counted as kept a second time).
        """
        if done.seconds:
            self.mean += (done.seconds - self.mean) * 0.2
            self.pool.observe(done.seconds)
        if done.status == OK and done.remote is not None and key is not None:
            self.remotes[key] = done.remote
            self.unmovable.pop(key, None)
            if done.remote.data is None and not again:
                self.kept += 1

    def lose(self, token: Token, slot: int) -> None:
        """Forget worker ``slot``'s copy of the value named ``token`` (it was not there)."""
        remotes = [r for _, r in self.functions.values()] if token[1] < 0 else self.remotes.values()
        for remote in remotes:
            if remote.token == token:
                remote.holders.pop(slot, None)
                return

    # -- releasing ------------------------------------------------------------------------

    def release(self, key: Hashable) -> None:
        """``key``'s last reader has finished: its workers forget it."""
        remote = self.remotes.pop(key, None)
        if remote is None:
            return
        for slot in remote.holders:
            if self.valid(remote, slot):
                self.drops[slot].append(remote.token)

    def take_drops(self, slot: int) -> tuple[Token, ...]:
        drops = tuple(self.drops[slot])
        self.drops[slot].clear()
        return drops

    def flush(self, idle_only: bool = False) -> None:
        """Send pending drops to idle workers (to every worker unless ``idle_only``)."""
        pool = self.pool
        for slot, drops in enumerate(self.drops):
            if drops and (not idle_only or pool.idle(slot)):
                pool.place(slot, fetch_value, (self.take_drops(slot), None), _ignore)

    def close(self) -> None:
        """The run is over: every worker forgets every value it kept for it."""
        for key in list(self.remotes):
            self.release(key)
        for _, remote in self.functions.values():
            for slot in remote.holders:
                if self.valid(remote, slot):
                    self.drops[slot].append(remote.token)
        self.functions.clear()
        with suppress(RuntimeError):  # shut down: the workers are gone with their values
            self.flush()


def _ignore(result: Any, error: BaseException | None, generation: int) -> None:
    """A drop-only unit: nobody waits for it."""


def _worth_moving(backlog: int, mean: float, size: int) -> bool:
    """Say whether an idle worker should take one of ``backlog`` units queued elsewhere.

    It saves about half the backlog's time (the two workers share it) and costs
    moving ``size`` bytes, paid twice over: the holder pickles them while its own
    units wait, and the idle worker unpickles them.
    """
    return backlog * mean / 2 > 2 * size / _MOVE_RATE
