"""Content-addressed keys of tasks, for a persistent cache (``DiskCache``).

A task's key hashes what decides its value: its function's code and its arguments,
with each dependency's value stood in for by that dependency's own key (a Merkle
chain). An edited function, or an edited function anywhere upstream, changes the key;
an unchanged upstream keeps every downstream key without hashing any large value.

A function is hashed by its module and qualified name plus its bytecode, constants
(nested code objects included), names, defaults and closure values, and the code of the
functions of its own module it calls by name (recursively); a
``functools.partial`` by its function and bound arguments; any other callable by its
type's name and its pickled state. Arguments are hashed pickled (cloudpickle), so a
task whose arguments cannot be pickled has no key: it is not cached.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import pickle
import threading
import types
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import cloudpickle

from ._graph import Ref, _Task

__all__ = ["StoreValue", "Uncacheable", "fn_digest", "task_keys"]


class Uncacheable(Exception):
    """Internal: a task's function or arguments cannot be hashed (pickled)."""


def _code_digest(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


def fn_digest(fn: Callable[..., Any], memo: dict[int, bytes] | None = None) -> bytes:
    """A digest of what ``fn`` computes (see the module docstring).

    ``memo`` (by ``id``, for one planning pass while the functions are alive) saves
    hashing a function once per task; it is never kept across runs, since a function
    or a helper it calls may be redefined in between (a notebook cell, autoreload).
    """
    if memo is None:
        return _fn_digest(fn)
    digest = memo.get(id(fn))
    if digest is None:
        digest = memo[id(fn)] = _fn_digest(fn)
    return digest


def _fn_digest(fn: Callable[..., Any]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if isinstance(fn, functools.partial):
        h.update(b"partial")
        h.update(fn_digest(fn.func))
        h.update(_pickled((fn.args, fn.keywords)))
        return h.digest()
    target = fn.__func__ if isinstance(fn, types.MethodType) else fn
    code = getattr(target, "__code__", None)
    h.update(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}".encode())
    if isinstance(code, types.CodeType):
        _code_digest(code, h)
        _helpers_digest(target, code, h)
        h.update(_pickled(getattr(target, "__defaults__", None)))
        h.update(_pickled(getattr(target, "__kwdefaults__", None)))
        closure = getattr(target, "__closure__", None) or ()
        h.update(_pickled(tuple(cell.cell_contents for cell in closure)))
        if isinstance(fn, types.MethodType):
            h.update(_pickled(fn.__self__))
    elif not isinstance(fn, (types.BuiltinFunctionType, type)):
        h.update(type(fn).__qualname__.encode())
        h.update(_pickled(fn))  # a callable object: its state decides
    return h.digest()


def _helpers_digest(fn: Any, code: types.CodeType, h: Any, seen: set[int] | None = None) -> None:
    """Hash the code of the functions of ``fn``'s own module that it calls by name, so
    that editing a helper changes the key of the tasks using it (recursively)."""
    seen = set() if seen is None else seen
    seen.add(id(code))
    module = getattr(fn, "__module__", None)
    namespace = getattr(fn, "__globals__", {})
    for name in _all_names(code):
        helper = namespace.get(name)
        helper_code = getattr(helper, "__code__", None)
        if (
            isinstance(helper_code, types.CodeType)
            and getattr(helper, "__module__", None) == module
            and id(helper_code) not in seen
        ):
            h.update(name.encode())
            _code_digest(helper_code, h)
            _helpers_digest(helper, helper_code, h, seen)


def _all_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _all_names(const)
    return names


def _pickled(value: Any) -> bytes:
    try:
        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise Uncacheable(f"{type(exc).__name__}: {exc}") from exc
    return data


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles arguments with each Ref replaced by its dependency's key."""

    def __init__(self, file: io.BytesIO, keys: Mapping[Hashable, str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.keys = keys

    def persistent_id(self, obj: Any) -> str | None:
        if type(obj) is Ref:
            return self.keys[obj.key]
        return None


def task_key(
    task: _Task, keys: Mapping[Hashable, str], memo: dict[int, bytes] | None = None
) -> str:
    """The content key of ``task``, given the keys of its dependencies."""
    h = hashlib.blake2b(digest_size=32)
    h.update(fn_digest(task.fn, memo))
    args = task.args
    if isinstance(task.refs, tuple) and task.refs:  # these positions hold dependency keys
        stored = list(args)
        for i in task.refs:
            stored[i] = Ref(stored[i], 0)
        args = tuple(stored)
    buf = io.BytesIO()
    try:
        _KeyPickler(buf, keys).dump((args, dict(task.kwargs)))
    except Exception as exc:
        raise Uncacheable(f"{type(exc).__name__}: {exc}") from exc
    h.update(buf.getvalue())
    for dep in task.after:  # ordering-only dependencies: their keys, not their values
        h.update(keys[dep].encode())
    return h.hexdigest()


def task_keys(
    tasks: Mapping[Hashable, _Task], order: list[Hashable]
) -> tuple[dict[Hashable, str], dict[Hashable, str]]:
    """Keys of the tasks in ``order`` (dependencies first); and for each task that has
    none (unpicklable, or downstream of one), why."""
    keys: dict[Hashable, str] = {}
    why: dict[Hashable, str] = {}
    memo: dict[int, bytes] = {}  # the tasks' functions are alive (in ``tasks``) meanwhile
    for key in order:
        task = tasks[key]
        missing = next((d for d in task.preds if d not in keys), None)
        if missing is not None:
            why[key] = f"it depends on {missing!r}, which has no cache key"
            continue
        try:
            keys[key] = task_key(task, keys, memo)
        except Uncacheable as exc:
            why[key] = str(exc)
    return keys, why


class StoreValue:
    """A task's function, wrapped to store its value in a cache where it ran.

    Process tasks store from their worker: the value is pickled there once and never
    crosses a pipe for the cache's sake. A value that cannot be stored (unpicklable,
    disk full) is reported once per function and process, and the run goes on.
    """

    __slots__ = ("cache", "ckey", "fn", "key")

    def __init__(self, fn: Callable[..., Any], cache: Any, ckey: str, key: Hashable) -> None:
        self.fn = fn
        self.cache = cache
        self.ckey = ckey
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = self.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            return self._store_later(value)
        self._store(value)
        return value

    async def _store_later(self, awaitable: Any) -> Any:
        value = await awaitable
        self._store(value)
        return value

    def _store(self, value: Any) -> None:
        try:
            self.cache.put(self.ckey, value)
        except Exception as exc:  # NotCacheable, or the disk: the value is still good
            _report_once(self.key, self.fn, exc)


_reported: set[str] = set()
_reported_lock = threading.Lock()


def _report_once(key: Hashable, fn: Callable[..., Any], exc: Exception) -> None:
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', type(target).__qualname__)}"
    with _reported_lock:
        if name in _reported:
            return
        _reported.add(name)
    warnings.warn(
        f"task {key!r}: its value is not cached ({type(exc).__name__}: {exc}); tasks of "
        f"{name} will run again next time. Further such errors of {name} are not reported.",
        RuntimeWarning,
        stacklevel=2,
    )
