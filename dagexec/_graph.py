"""Graph, Ref and the task spec: pure data, no threads.

A task is a ``_Task``: the function, its raw arguments (which may hold ``Ref``s, nested in
lists, tuples and dicts) and its options. ``deps`` are the keys whose values the task
receives; ``after`` are ordering-only keys. Validation that needs the whole graph (missing
keys, cycles) happens when a run is planned, in ``_state``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import cloudpickle

from ._errors import DuplicateKeyError

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._results import Results

__all__ = ["KINDS", "Graph", "Ref"]

T = TypeVar("T")

#: The kinds of pool a task can run on.
KINDS: frozenset[str] = frozenset({"thread", "process", "inline"})

_graph_ids = itertools.count(1)
_NO_KWARGS: Mapping[str, Any] = {}


class Ref(Generic[T]):
    """A handle to a task's future value in one graph.

    Passing a Ref as an argument (also inside a list, tuple or dict) makes the task
    depend on the referenced key and receive its value.
    """

    __slots__ = ("_gid", "key")

    def __init__(self, key: Hashable, gid: int) -> None:
        self.key = key
        self._gid = gid

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is Ref and other.key == self.key and other._gid == self._gid

    def __hash__(self) -> int:
        return hash((Ref, self.key))


class _Task:
    """One task's definition; ``deps`` and ``after`` are disjoint tuples of keys.

    ``refs`` says where Refs are in the arguments: 0 none, FLAT only directly among the
    positional arguments, NESTED anywhere else too.
    """

    __slots__ = ("after", "args", "deps", "fn", "key", "kind", "kwargs", "preds", "refs")

    def __init__(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        kind: str,
        deps: tuple[Hashable, ...],
        after: tuple[Hashable, ...],
        refs: int,
    ) -> None:
        self.key = key
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.kind = kind
        self.deps = deps
        self.after = after
        self.preds = deps + after if after else deps  # everything it waits for
        self.refs = refs

    def difference(self, other: _Task) -> str | None:
        """Say how ``other`` differs from this definition, or None if they are the same."""
        if not _same(self.fn, other.fn):
            return f"function {_name(self.fn)} vs {_name(other.fn)}"
        if self.kind != other.kind:
            return f"kind {self.kind!r} vs {other.kind!r}"
        if not (_same(self.args, other.args) and _same(dict(self.kwargs), dict(other.kwargs))):
            return "different arguments"
        if set(self.after) != set(other.after):
            return "different after= dependencies"
        return None

    def __repr__(self) -> str:
        return f"<task {self.key!r}: {_name(self.fn)} on {self.kind}>"


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # an __eq__ that raises or is ambiguous (arrays) means "not provably same"
        return False


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _collect(values: Iterable[Any], deps: dict[Hashable, None], gid: int, key: Hashable) -> int:
    """Add the keys of the Refs found in ``values`` to ``deps``.

    Return 0 if there is none, ``FLAT`` if all are directly in ``values``, else ``NESTED``.
    """
    found = 0
    for v in values:
        t = type(v)
        if t is Ref:
            if v._gid != gid:
                raise TypeError(
                    f"task {key!r}: argument {v!r} belongs to another Graph; "
                    "use graph.ref(key) of the graph you are adding to"
                )
            deps[v.key] = None
            found = found or FLAT
        elif (t is list or t is tuple or t is dict) and _collect(
            v.values() if t is dict else v, deps, gid, key
        ):
            found = NESTED
    return found


FLAT, NESTED = 1, 2


_NESTED = (list, tuple, dict)


def resolve(value: Any, values: Mapping[Hashable, Any]) -> Any:
    """Return ``value`` with every Ref replaced by its value (lists, tuples, dicts rebuilt)."""
    t = type(value)
    if t is Ref:
        return values[value.key]
    if t is tuple:
        # The common case: a Ref among positional arguments; avoid a call per element.
        return tuple(
            [
                values[v.key]
                if type(v) is Ref
                else v
                if type(v) not in _NESTED
                else resolve(v, values)
                for v in value
            ]
        )
    if t is list:
        return [resolve(v, values) for v in value]
    if t is dict:
        return {k: resolve(v, values) for k, v in value.items()}
    return value


class Graph:
    """A DAG of tasks keyed by any hashable; build it with ``add``, run it with ``run``.

    Args:
        default_kind: the kind of pool a task runs on when ``add`` names none:
            ``"thread"``, ``"process"`` or ``"inline"``.
    """

    def __init__(self, default_kind: str = "thread") -> None:
        if default_kind not in KINDS:
            raise TypeError(f"unknown default_kind {default_kind!r}; choose one of {sorted(KINDS)}")
        self.default_kind = default_kind
        self._gid = next(_graph_ids)
        self._tasks: dict[Hashable, _Task] = {}

    def add(
        self,
        key: Hashable,
        fn: Callable[..., T],
        /,
        *args: Any,
        kind: str | None = None,
        after: Iterable[Hashable | Ref[Any]] = (),
        **kwargs: Any,
    ) -> Ref[T]:
        """Add task ``key`` that calls ``fn(*args, **kwargs)`` and return a Ref to its value.

        Refs among the arguments (also nested in lists, tuples and dicts) are dependencies
        whose values the task receives; keys or Refs in ``after`` are dependencies for
        ordering only. Adding the same key again with the same definition returns the
        existing Ref; a different definition raises ``DuplicateKeyError``.

        Raises:
            TypeError: unhashable key, non-callable ``fn``, unknown kind, or a Ref from
                another graph; the message names the key.
        """
        tasks = self._tasks
        try:
            existing = tasks.get(key)
        except TypeError:
            raise TypeError(f"task key {key!r} is not hashable; use a str, int or tuple") from None
        if not callable(fn):
            raise TypeError(f"task {key!r}: {fn!r} is not callable; pass a function as fn")
        if kind is None:
            kind = self.default_kind
        elif kind not in KINDS:
            raise TypeError(f"task {key!r}: unknown kind {kind!r}; choose one of {sorted(KINDS)}")
        deps: dict[Hashable, None] = {}
        refs = _collect(args, deps, self._gid, key) if args else 0
        if kwargs:
            if _collect(kwargs.values(), deps, self._gid, key):
                refs = NESTED
        else:
            kwargs = _NO_KWARGS  # type: ignore[assignment]
        order: tuple[Hashable, ...] = ()
        if after:
            order = self._after_keys(key, after, deps)
        task = _Task(key, fn, args, kwargs, kind, tuple(deps), order, refs)
        if existing is not None:
            detail = existing.difference(task)
            if detail is not None:
                raise DuplicateKeyError(key, detail)
        else:
            tasks[key] = task
        return Ref(key, self._gid)

    def _after_keys(
        self, key: Hashable, after: Iterable[Hashable | Ref[Any]], deps: Mapping[Hashable, None]
    ) -> tuple[Hashable, ...]:
        if isinstance(after, (str, bytes, Ref)):
            after = [after]
        keys: dict[Hashable, None] = {}
        for item in after:
            if type(item) is Ref:
                _collect((item,), keys, self._gid, key)
            else:
                try:
                    keys[item] = None
                except TypeError:
                    raise TypeError(
                        f"task {key!r}: after= entry {item!r} is not a hashable key"
                    ) from None
        return tuple(k for k in keys if k not in deps)

    def call(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        kind: str | None = None,
        after: Iterable[Hashable | Ref[Any]] = (),
        **kwargs: Any,
    ) -> Ref[T]:
        """Add ``fn(*args, **kwargs)`` keyed by its content, so identical calls collapse.

        The key is ``"<qualname>-<hash>"``, the hash covering the function and the
        arguments (Refs by key). Arguments must be picklable (cloudpickle) to be hashed.
        """
        key = f"{_name(fn)}-{_content_hash(fn, args, kwargs)}"
        return self.add(key, fn, *args, kind=kind, after=after, **kwargs)

    def ref(self, key: Hashable) -> Ref[Any]:
        """Return a Ref to ``key``; the task may be added later (forward reference)."""
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"task key {key!r} is not hashable; use a str, int or tuple") from None
        return Ref(key, self._gid)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._tasks
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"<dagexec.Graph with {len(self._tasks)} tasks>"

    def run(
        self,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
        max_workers: int | Mapping[str, int] | None = None,
        executors: Mapping[str, Executor] | None = None,
    ) -> Results:
        """Run the graph once on fresh pools and return the results.

        This is ``Runner(max_workers, executors).run(self, ...)`` with the pools shut down
        afterwards; see ``Runner.run`` for ``targets``, ``keep`` and ``on_error``.
        """
        from ._runner import Runner

        with Runner(max_workers=max_workers, executors=executors) as runner:
            runner._private = True
            return runner.run(self, targets=targets, keep=keep, on_error=on_error)


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is Ref:
            return ("dagexec.Ref", obj.key)
        return None


def _content_hash(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    buf = io.BytesIO()
    try:
        _KeyPickler(buf, protocol=5).dump((fn, args, sorted(kwargs.items())))
    except Exception as exc:
        raise TypeError(
            f"Graph.call({_name(fn)}, ...) cannot hash its arguments to build a key; "
            "use Graph.add with an explicit key"
        ) from exc
    return hashlib.blake2b(buf.getvalue(), digest_size=8).hexdigest()
