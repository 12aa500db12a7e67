"""Tasks and probes for the retry, timeout and cancellation tests.

Module level, so process workers import them. Tasks in any process report through files
appended with O_APPEND (one line per attempt: ``"<tag> <pid>"``) and through a ``Gate``,
a local socket: a task arrives (says its pid) and is held until the test releases it.
The tests wait on these events, never on sleeps; every wait is bounded by ``WAIT`` so a
bug fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

WAIT = 30.0  # seconds: bounds a wait that must succeed


def record(log: Path, line: str) -> None:
    """Append one line to ``log``; O_APPEND writes this small are atomic across processes."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def pids(log: Path, tag: str) -> list[int]:
    """Return the pid of each attempt of ``tag``, in order."""
    return [int(line.split()[1]) for line in lines(log) if line.split()[0] == tag]


def attempt(log: Path, tag: str) -> int:
    """Record an attempt of ``tag``; return its number (1 for the first)."""
    record(log, f"{tag} {os.getpid()}")
    return len(pids(log, tag))


def flaky(log: Path, tag: str, fails: int, exc: type[BaseException] = ValueError) -> int:
    """Fail the first ``fails`` attempts with ``exc``; then return the attempt number."""
    n = attempt(log, tag)
    if n <= fails:
        raise exc(f"{tag} attempt {n}")
    return n


def changing(log: Path, tag: str, errors: tuple[type[BaseException], ...]) -> int:
    """Raise ``errors[n - 1]`` on attempt ``n`` while there are some; then return ``n``."""
    n = attempt(log, tag)
    if n <= len(errors):
        raise errors[n - 1](f"{tag} attempt {n}")
    return n


def exits_first(log: Path, tag: str) -> int:
    """Kill this worker process on the first attempt (a native crash); then return the pid."""
    if attempt(log, tag) == 1:
        os._exit(3)
    return os.getpid()


def record_and_return(log: Path, tag: str, value: object, *after: object) -> object:
    attempt(log, tag)
    return value


def stamp(log: Path, tag: str) -> None:
    """Record an attempt with the time it started, then fail."""
    record(log, f"{tag} {os.getpid()} {time.monotonic()}")
    raise ValueError(tag)


def stamps(log: Path) -> list[float]:
    return [float(line.split()[2]) for line in lines(log)]


def unpicklable_result(log: Path, tag: str) -> object:
    attempt(log, tag)
    return (i for i in range(3))  # a generator cannot be pickled back to the caller


def held(port: int, tag: str, *after: object) -> str:
    """Arrive at the Gate on ``port`` and stay until it is released; return ``tag``."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(f"{os.getpid():>10}".encode())
        conn.recv(1)  # returns when the gate is released (or this process is killed)
    return tag


def held_first(port: int, log: Path, tag: str, *after: object) -> tuple[int, int]:
    """Hold the first attempt at the Gate; later ones return ``(attempt, pid)`` at once."""
    n = attempt(log, tag)
    if n == 1:
        held(port, tag)
    return n, os.getpid()


def lingering(children: dict[int, str], grace: float = 0.25) -> dict[int, str]:
    """Return those of ``children`` (pid -> command) still running ``grace`` seconds on.

    A worker seen in the middle of exiting (its command line already gone) has ended a
    moment later; one left behind has not. Waits on pidfds, so it takes no longer than
    the last of them needs.
    """
    fds: dict[int, int] = {}
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            fds[pid] = os.pidfd_open(pid)
    try:
        deadline = time.monotonic() + grace
        running = dict(fds)
        while running and (left := deadline - time.monotonic()) > 0:
            ended, _, _ = select.select(list(running.values()), [], [], left)
            running = {pid: fd for pid, fd in running.items() if fd not in ended}
        return {pid: children[pid] for pid in running}
    finally:
        for fd in fds.values():
            os.close(fd)


class Gate:
    """A rendezvous with tasks in this or other processes (see ``held``).

    A thread accepts the tasks as they arrive and opens a pidfd on each one's process at
    once, while it is held alive: ``exited(pid)`` then waits on the very process, even if
    its pid were reused later (a zombie counts as ended: reaping is loky's business).
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.pids: list[int] = []
        self._conns: list[socket.socket] = []
        self._pidfds: dict[int, int | None] = {}  # None: it had ended before it was seen
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="gate", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # released
            conn.settimeout(WAIT)
            data = b""
            while len(data) < 10:
                chunk = conn.recv(10 - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) < 10:
                conn.close()  # killed before it said its pid: it never arrived
                continue
            pid = int(data)
            try:
                fd: int | None = os.pidfd_open(pid)
            except ProcessLookupError:
                fd = None
            with self._cond:
                if self._closed:
                    conn.close()
                    if fd is not None:
                        os.close(fd)
                    return
                self._conns.append(conn)
                self.pids.append(pid)
                self._pidfds.setdefault(pid, fd)
                self._cond.notify_all()

    def arrivals(self, n: int, timeout: float = WAIT) -> list[int]:
        """Wait until ``n`` tasks have arrived; return their pids in arrival order."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.pids) >= n, timeout):
                raise TimeoutError(f"{len(self.pids)} of {n} tasks arrived at the gate")
            return self.pids[:n]

    def exited(self, pid: int, timeout: float = WAIT) -> bool:
        """Wait up to ``timeout`` seconds for process ``pid`` (arrived here) to end."""
        fd = self._pidfds[pid]
        return fd is None or bool(select.select([fd], [], [], timeout)[0])

    def alive(self, pid: int) -> bool:
        """Say whether process ``pid`` (arrived here) is still running, without waiting."""
        return not self.exited(pid, 0)

    def release(self) -> None:
        """Let every held task return; close the gate."""
        with self._cond:
            self._closed = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        self._thread.join(WAIT)
        with self._cond:
            for fd in self._pidfds.values():
                if fd is not None:
                    os.close(fd)
            self._pidfds.clear()

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Canceller:
    """Calls ``runner.cancel()`` from its own thread once ``trigger()`` returns, or
    raises (the run must end either way; ``__exit__`` raises that error)."""

    def __init__(self, runner: Any, trigger: Callable[[], object]) -> None:
        self.at = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(runner, trigger), name="cancel")

    def _run(self, runner: Any, trigger: Callable[[], object]) -> None:
        try:
            trigger()
        except BaseException as exc:  # reported by __exit__
            self.error = exc
        finally:
            self.at = time.monotonic()
            runner.cancel()

    def __enter__(self) -> Canceller:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def took(self) -> float:
        """Seconds from the cancel to now."""
        assert self.at, "cancel() was never called"
        return time.monotonic() - self.at
