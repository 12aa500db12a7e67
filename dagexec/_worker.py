"""What runs inside a process worker for a local run: the value store and its units.

A process task's value stays in the worker that computed it (``keep``); the caller keeps
a handle, ``Remote``, saying which workers hold a copy. Later units refer to the value
by its token::

    caller                                   worker process (one per slot)
    Held(token)  ──pickled as a reference──▶ _store[token]          (no bytes moved)
    Moved(token, data) ─────the bytes──────▶ unpickled once, kept in _store
    drops=(token, ...) ─with the next unit─▶ deleted from _store
    fetch(token) ◀──────the value pickled─── (to move it to another worker)

A unit whose ``Held`` token is not in the store (its worker died and was replaced)
reports ``LOST`` instead of running, and the caller recomputes the value.

Glossary:
    token    (caller pid, counter): names one value of one run; a negative counter
             names a function, kept in the workers for the run like a value
    _store   token -> value, in each worker: what local runs keep there
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
from time import perf_counter
from typing import Any

__all__ = ["FAILED", "LOST", "OK", "Held", "Moved", "Remote", "live_values", "new_token"]

Token = tuple[int, int]
OK, FAILED, LOST = 0, 1, 2

_tokens = itertools.count()


def new_token(code: bool = False) -> Token:
    """Name a value (or, with ``code``, a function: its number is negative)."""
    n = next(_tokens)
    return (os.getpid(), -n - 1 if code else n)


_store: dict[Token, Any] = {}


def live_values() -> int:
    """Return how many values this worker process keeps for runs (0 outside workers).

    Functions kept for runs (negative token numbers) are not counted.
    """
    return sum(1 for token in _store if token[1] >= 0)


class _Lost(Exception):
    def __init__(self, token: Token) -> None:
        super().__init__(token)
        self.token = token


class Held:
    """A value in the store of the worker that receives this: sent as its token only."""

    __slots__ = ("token",)

    def __init__(self, token: Token) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, ...]:
        return (_held, (self.token,))


class Moved:
    """A value's pickled bytes, kept in the receiving worker's store once unpickled."""

    __slots__ = ("data", "token")

    def __init__(self, token: Token, data: bytes) -> None:
        self.token = token
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_adopt, (self.token, self.data))


def _held(token: Token) -> Any:
    try:
        return _store[token]
    except KeyError:
        raise _Lost(token) from None


def _adopt(token: Token, data: bytes) -> Any:
    if token in _store:
        return _store[token]
    value = _store[token] = pickle.loads(data)
    return value


class Remote:
    """The caller's handle on a value kept in process workers.

    Attributes:
        token: the value's name in the workers' stores.
        holders: slot -> the generation of that slot's worker when it got a copy; a
            copy is valid while the slot's worker is still that generation.
        data: the value pickled, when the caller has the bytes (then moving it to
            another worker needs no fetch).
        size: estimated bytes in memory (``data``'s length when known), for placement.
    """

    __slots__ = ("data", "holders", "size", "token")

    def __init__(self, token: Token, data: bytes | None = None, size: int = 0) -> None:
        self.token = token
        self.holders: dict[int, int] = {}
        self.data = data
        self.size = len(data) if data is not None else size

    def __repr__(self) -> str:
        return f"<value kept in process workers {sorted(self.holders)}>"


def run_unit(
    drops: tuple[Token, ...], body: bytes, keep: Token | None, send: bool
) -> tuple[int, Any, int, int, float, float]:
    """Run one call in this worker: ``(status, data, size, pid, began, ended)``.

    ``keep``: store the value under this token; ``send``: also return it pickled
    (``data``). A failure comes back pickled as ``_pools`` encodes them, for
    ``decode_outcomes``; a lost input as ``LOST`` with its token. ``size`` estimates a
    kept value's bytes; ``began`` and ``ended`` (``perf_counter``) frame the call.
    """
    from ._pools import encode_failure, encode_result, run_calls

    pid = os.getpid()
    began = perf_counter()
    for token in drops:
        _store.pop(token, None)
    try:
        calls = pickle.loads(body)
    except _Lost as lost:
        return LOST, lost.token, 0, pid, began, perf_counter()
    except Exception as exc:  # most often a module the worker cannot import
        return FAILED, encode_failure(None, exc, loading=True), 0, pid, began, perf_counter()
    began = perf_counter()
    ok, value = run_calls(calls)[0]
    ended = perf_counter()
    if not ok:
        return FAILED, encode_failure(calls[0][0], value), 0, pid, began, ended
    if keep is not None:
        _store[keep] = value
    if not send:
        return OK, None, approx_size(value), pid, began, ended
    ok, data = encode_result(calls[0][0], value)
    if not ok and keep is not None:
        del _store[keep]
    return (OK if ok else FAILED), data, len(data), pid, began, ended


def fetch_value(drops: tuple[Token, ...], token: Token | None) -> tuple[int, Any]:
    """Drop tokens, then return ``token``'s value pickled (to move it), or ``LOST``.

    With ``token`` None, only drops. A value that cannot be pickled is ``FAILED`` with
    the reason as text: it stays where it is, and its readers run there.
    """
    from ._pools import encode_value

    for t in drops:
        _store.pop(t, None)
    if token is None:
        return OK, None
    if token not in _store:
        return LOST, token
    try:
        return OK, encode_value(_store[token])
    except Exception as exc:
        return FAILED, f"{type(exc).__name__}: {exc}"


_SAMPLE = 8  # elements looked at per container when estimating a size
_LEVELS = 4  # containers looked into, nested


def approx_size(value: Any, depth: int = _LEVELS) -> int:
    """Estimate the bytes ``value`` takes in memory, cheaply: sample each container.

    Good enough to place tasks next to their biggest inputs and to decide whether a
    value is worth moving; never a walk of the whole object graph.
    """
    nbytes = getattr(value, "nbytes", None)  # numpy, memoryview, pyarrow
    if isinstance(nbytes, int):
        return nbytes
    size = sys.getsizeof(value, 64)
    if depth == 0 or isinstance(value, (str, bytes, bytearray, int, float)):
        return size
    if isinstance(value, dict):
        items: list[Any] = []
        for i, (k, v) in enumerate(value.items()):
            if i == _SAMPLE:
                break
            items += (k, v)
        n = 2 * len(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value[:_SAMPLE]) if isinstance(value, (list, tuple)) else []
        n = len(value)
        if not items:
            for i, v in enumerate(value):
                if i == _SAMPLE:
                    break
                items.append(v)
    else:
        attrs = getattr(value, "__dict__", None)
        return size + (approx_size(attrs, depth - 1) if isinstance(attrs, dict) else 0)
    if not items:
        return size
    sampled = sum(approx_size(v, depth - 1) for v in items)
    return size + sampled * n // len(items)
