"""Graph, Ref and the task spec: pure data, no threads.

A task is a ``_Task``: the function, its raw arguments (which may hold ``Ref``s, nested in
lists, tuples and dicts) and its options. ``deps`` are the keys whose values the task
receives; ``after`` are ordering-only keys. Validation that needs the whole graph (missing
keys, cycles) happens when a run is planned, in ``_state``.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from types import FunctionType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import cloudpickle

from ._errors import DuplicateKeyError
from ._options import BackoffLike, Options, Policy, RetryOn, check_policy, make_options
from ._pictures import graph_nodes, to_dot, to_mermaid

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._cache import DiskCache
    from ._events import TaskEvent
    from ._results import Results
    from ._runner import Runner

__all__ = ["KINDS", "Graph", "Ref"]

T = TypeVar("T")

#: The kinds of pool a task can run on.
KINDS: frozenset[str] = frozenset({"thread", "process", "inline", "async"})

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

    ``refs`` says where the dependencies' values go: ``()`` nowhere; a tuple of
    positions when they are all direct positional arguments, stored as bare keys (so the
    spec holds no Ref objects and the garbage collector can skip its argument tuple);
    ``NESTED`` when Refs sit inside containers or keyword arguments (kept as Refs).
    """

    __slots__ = ("after", "args", "deps", "fn", "key", "kind", "kwargs", "opts", "preds", "refs")

    def __init__(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        kind: str,
        deps: tuple[Hashable, ...],
        after: tuple[Hashable, ...],
        refs: tuple[int, ...] | int,
        opts: Options | None = None,
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
        self.opts = opts

    def difference(self, other: _Task) -> str | None:
        """Say how ``other`` differs from this definition, or None if they are the same."""
        if not _same(self.fn, other.fn):
            return f"function {_name(self.fn)} vs {_name(other.fn)}"
        if self.kind != other.kind:
            return f"kind {self.kind!r} vs {other.kind!r}"
        if self.refs != other.refs or not (
            _same(_by_key(self.args), _by_key(other.args))
            and _same(_by_key(dict(self.kwargs)), _by_key(dict(other.kwargs)))
        ):
            return "different arguments"
        if set(self.after) != set(other.after):
            return "different after= dependencies"
        mine = self.opts.astuple() if self.opts else None
        theirs = other.opts.astuple() if other.opts else None
        if mine != theirs:
            return "different options (retries, timeout, resources or priority)"
        return None

    def __repr__(self) -> str:
        return f"<task {self.key!r}: {_name(self.fn)} on {self.kind}>"


def _same(a: Any, b: Any) -> bool:
    """Say whether two definitions' parts are the same: equal, and of the same types
    all the way down (``1`` and ``1.0`` are equal but not the same argument)."""
    if a is b:
        return True
    t = type(a)
    if t is not type(b):
        return False
    if t is tuple or t is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if t is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that raises or is ambiguous (arrays) means "not provably same"
        return False


class _KeyOf:
    """Stands in for a value map: a Ref resolves to a marker of its key."""

    def __getitem__(self, key: Hashable) -> tuple[str, Hashable]:
        return ("dagexec.Ref", key)


def _by_key(args: Any) -> Any:
    """Return ``args`` with Refs replaced by their keys: the same definition rebuilt in
    another Graph compares equal."""
    return resolve(args, _KeyOf())  # type: ignore[arg-type]


def unhashable(key: object) -> TypeError:
    """Return the error for a task key that cannot be a dict key."""
    return TypeError(f"task key {key!r} is not hashable; use a str, int or tuple")


def check_task(key: Hashable, fn: object, kind: str) -> None:
    """Raise TypeError naming ``key`` for a non-callable ``fn`` or an unknown ``kind``,
    or a coroutine function given a kind that would never await it."""
    if not callable(fn):
        raise TypeError(f"task {key!r}: {fn!r} is not callable; pass a function as fn")
    if kind not in KINDS:
        raise TypeError(f"task {key!r}: unknown kind {kind!r}; choose one of {sorted(KINDS)}")
    if kind != "async" and _is_coroutine_function(fn):
        raise TypeError(
            f"task {key!r}: {_name(fn)} is a coroutine function; use kind='async' "
            "(the default for coroutine functions) or wrap it in asyncio.run"
        )


def _is_coroutine_function(fn: object) -> bool:
    """``inspect.iscoroutinefunction``, with a fast path for plain functions (it is
    asked at every ``add``)."""
    if type(fn) is FunctionType and not hasattr(fn, "_is_coroutine_marker"):
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _collect(values: Iterable[Any], deps: dict[Hashable, None], gid: int, key: Hashable) -> bool:
    """Add the keys of the Refs found in ``values`` (at any depth) to ``deps``.

    Refs are resolved inside plain lists, tuples and dicts (as values); one anywhere
    else a container can hide it (a set, a dict key, a namedtuple) is an error, not a
    Ref silently passed to the task.
    """
    found = False
    for v in values:
        t = type(v)
        if t is Ref:
            if v._gid != gid:
                raise TypeError(
                    f"task {key!r}: argument {v!r} belongs to another Graph; "
                    "use graph.ref(key) of the graph you are adding to"
                )
            deps[v.key] = None
            found = True
        elif t is list or t is tuple:
            found = _collect(v, deps, gid, key) or found
        elif t is dict:
            if any(type(k) is Ref for k in v):
                _unresolvable(key, "dict key")
            found = _collect(v.values(), deps, gid, key) or found
        elif isinstance(v, _CONTAINERS) and _collect(v, {}, gid, key):
            _unresolvable(key, type(v).__name__)
    return found


def _unresolvable(key: Hashable, where: str) -> None:
    raise TypeError(
        f"task {key!r}: a Ref inside a {where} is not resolved; pass it directly or inside "
        "a plain list, tuple or dict (as a value)"
    )


#: ``_Task.refs`` of a task whose Refs are not all direct positional arguments.
NESTED = -1


def _scan_args(
    args: tuple[Any, ...], gid: int, key: Hashable
) -> tuple[tuple[Any, ...], tuple[Hashable, ...], tuple[int, ...] | int]:
    """Return (args to store, dependency keys, refs) for positional arguments."""
    positions: list[int] | None = None
    for i, a in enumerate(args):
        if type(a) is Ref:
            if a._gid != gid:
                _collect((a,), {}, gid, key)  # raises the TypeError naming the key
            if positions is None:
                positions = [i]
            else:
                positions.append(i)
        elif isinstance(a, _CONTAINERS):
            deps: dict[Hashable, None] = {}
            if _collect(args, deps, gid, key):
                return args, tuple(deps), NESTED
            return args, (), ()  # that scan covered every argument: no Ref anywhere
    if positions is None:
        return args, (), ()
    if len(args) == 1:
        return (args[0].key,), (args[0].key,), (0,)
    stored = list(args)
    for i in positions:
        stored[i] = stored[i].key
    return tuple(stored), tuple(dict.fromkeys([stored[i] for i in positions])), tuple(positions)


_NESTED = (list, tuple, dict)


def resolve_args(
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    refs: tuple[int, ...] | int,
    values: Mapping[Hashable, Any],
) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
    """Return the arguments with the dependencies' values in place of their keys/Refs."""
    if refs == NESTED:
        return resolve(args, values), resolve(kwargs, values) if kwargs else kwargs
    if len(refs) == 1 and len(args) == 1:  # type: ignore[arg-type]
        return (values[args[0]],), kwargs
    resolved = list(args)
    for i in refs:  # type: ignore[union-attr]
        resolved[i] = values[resolved[i]]
    return tuple(resolved), kwargs


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
            ``"thread"``, ``"process"``, ``"inline"`` or ``"async"`` (coroutine functions
            run on ``"async"`` unless a kind is named).
        retries, retry_on, backoff: retry defaults for this graph's tasks (see ``add``);
            a task's own settings win, and the run's apply where neither says.
    """

    def __init__(
        self,
        default_kind: str = "thread",
        *,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
    ) -> None:
        if default_kind not in KINDS:
            raise TypeError(f"unknown default_kind {default_kind!r}; choose one of {sorted(KINDS)}")
        self.default_kind = default_kind
        self._policy: Policy = check_policy("Graph()", retries, retry_on, backoff)
        self._gid = next(_graph_ids)
        self._tasks: dict[Hashable, _Task] = {}
        self._options = False  # a task has options: runs check resources and priorities

    def add(
        self,
        key: Hashable,
        fn: Callable[..., T],
        /,
        *args: Any,
        kind: str | None = None,
        after: Iterable[Hashable | Ref[Any]] = (),
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        resources: Mapping[str, float] | None = None,
        priority: int = 0,
        cache: bool | None = None,
        **kwargs: Any,
    ) -> Ref[T]:
        """Add task ``key`` that calls ``fn(*args, **kwargs)`` and return a Ref to its value.

        Refs among the arguments (also nested in lists, tuples and dicts) are dependencies
        whose values the task receives; keys or Refs in ``after`` are dependencies for
        ordering only. Adding the same key again with the same definition returns the
        existing Ref; a different definition raises ``DuplicateKeyError``.

        Options (their names are taken: pass a function's own keyword of the same name
        with ``functools.partial``):

        - ``retries``: attempts after the first when it raises one of ``retry_on``
          (default: any ``Exception``, including ``WorkerDied`` and ``TaskTimeout``),
          waiting ``backoff`` between them (default ``Backoff()``: exponential with
          jitter; or seconds, or ``f(attempt) -> seconds``).
        - ``timeout``: seconds; past it a process task's worker is terminated and an
          async task cancelled. A thread task cannot be stopped in Python: it is
          abandoned (it runs on; its value is dropped). Either way it fails with
          ``TaskTimeout`` (retried if ``retries`` allow) and its dependents never start.
        - ``resources``: amounts it holds while running, like ``{"gpu": 1}``, against
          the run's ``limits=``.
        - ``priority``: among ready tasks, higher first (default 0).
        - ``cache``: ``False`` keeps the task out of a run's persistent cache
          (``run(cache=DiskCache(...))``), which otherwise stores every task's value.

        Raises:
            TypeError, ValueError: unhashable key, non-callable ``fn``, unknown kind, a
                Ref from another graph or a bad option; the message names the key.
        """
        tasks = self._tasks
        try:
            existing = tasks.get(key)
        except TypeError:
            raise unhashable(key) from None
        if kind is None:
            kind = "async" if _is_coroutine_function(fn) else self.default_kind
            if not callable(fn):
                check_task(key, fn, kind)
        else:
            check_task(key, fn, kind)
        opts = None
        if not (
            retries is None
            and retry_on is None
            and backoff is None
            and timeout is None
            and not resources
            and not priority
            and cache is None
        ):
            opts = make_options(
                key, kind, retries, retry_on, backoff, timeout, resources, priority, cache
            )
        deps: tuple[Hashable, ...] = ()
        refs: tuple[int, ...] | int = ()
        if args:
            args, deps, refs = _scan_args(args, self._gid, key)
        if kwargs:
            found: dict[Hashable, None] = {}
            if _collect(kwargs.values(), found, self._gid, key):
                if refs != NESTED:  # keep Refs as Refs: resolve() walks everything
                    args = tuple(Ref(a, self._gid) if i in refs else a for i, a in enumerate(args))  # type: ignore[operator]
                    refs = NESTED
                deps = tuple(dict.fromkeys((*deps, *found)))
        else:
            kwargs = _NO_KWARGS  # type: ignore[assignment]
        order: tuple[Hashable, ...] = ()
        if after:
            order = self._after_keys(key, after, dict.fromkeys(deps))
        task = _Task(key, fn, args, kwargs, kind, deps, order, refs, opts)
        if opts is not None:
            self._options = True
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
        elif not isinstance(after, Iterable):
            raise TypeError(
                f"task {key!r}: after= takes a list of keys or Refs, not {after!r}; "
                f"write after=[{after!r}]"
            )
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

        The key is ``"<qualname>-<hash>"``, the hash covering the function (by value for
        lambdas and closures, so a lambda made again in a loop is the same function), the
        arguments (Refs by key, sets in a canonical order), ``kind``, ``after`` and the
        options of ``add`` (``retries``, ``timeout``, ...), which it takes too.
        Everything must be picklable with cloudpickle to be hashed.
        """
        if kind is None:
            kind = "async" if _is_coroutine_function(fn) else self.default_kind
        if isinstance(after, (str, bytes, Ref)) or not isinstance(after, Iterable):
            after = [after]  # add() rejects what is not a key
        after = list(after)
        content = (fn, args, sorted(kwargs.items()), kind, after)
        key = f"{_name(fn)}-{_content_hash(_name(fn), content)}"
        if key in self._tasks:
            return Ref(key, self._gid)  # same content: the same task, whatever fn object
        return self.add(key, fn, *args, kind=kind, after=after, **kwargs)

    def ref(self, key: Hashable) -> Ref[Any]:
        """Return a Ref to ``key``; the task may be added later (forward reference)."""
        try:
            hash(key)
        except TypeError:
            raise unhashable(key) from None
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

    def to_mermaid(self, title: str | None = None) -> str:
        """The graph as a Mermaid flowchart (renders on GitHub, GitLab and the like)."""
        return to_mermaid(graph_nodes(self._tasks), title=title)

    def to_dot(self, title: str | None = None) -> str:
        """The graph in Graphviz DOT (``dot -Tsvg`` renders it, if graphviz is installed)."""
        return to_dot(graph_nodes(self._tasks), title=title)

    def run(
        self,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
        max_workers: int | Mapping[str, int] | None = None,
        executors: Mapping[str, Executor] | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        progress: bool | str = False,
        on_event: Callable[[TaskEvent], object] | None = None,
        cache: DiskCache | None = None,
    ) -> Results:
        """Run the graph once on fresh pools and return the results.

        This is ``Runner(max_workers, executors).run(self, ...)`` with the pools shut down
        afterwards; see ``Runner.run`` for the other arguments.
        """
        runner = _private_runner(max_workers, executors)
        try:
            return runner.run(
                self,
                targets=targets,
                keep=keep,
                on_error=on_error,
                retries=retries,
                retry_on=retry_on,
                backoff=backoff,
                timeout=timeout,
                limits=limits,
                progress=progress,
                on_event=on_event,
                cache=cache,
            )
        finally:
            runner._close()

    async def arun(
        self,
        *,
        targets: Iterable[Hashable | Ref[Any]] | None = None,
        keep: Literal["targets", "all"] = "targets",
        on_error: Literal["raise", "continue"] = "raise",
        max_workers: int | Mapping[str, int] | None = None,
        executors: Mapping[str, Executor] | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        backoff: BackoffLike | None = None,
        timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        progress: bool | str = False,
        on_event: Callable[[TaskEvent], object] | None = None,
        cache: DiskCache | None = None,
    ) -> Results:
        """Run the graph from asyncio code on fresh pools; see ``Runner.arun``.

        The event loop is never blocked, not even to shut the pools down.
        """
        runner = _private_runner(max_workers, executors)
        return await runner._arun(
            self,
            True,
            targets=targets,
            keep=keep,
            on_error=on_error,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            timeout=timeout,
            limits=limits,
            progress=progress,
            on_event=on_event,
            cache=cache,
        )


def _private_runner(
    max_workers: int | Mapping[str, int] | None, executors: Mapping[str, Executor] | None
) -> Runner:
    from ._runner import Runner

    runner = Runner(max_workers=max_workers, executors=executors)
    runner._private = True
    return runner


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles for hashing: Refs by key."""

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is Ref:
            return ("dagexec.Ref", obj.key)
        return None


def _canonical_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    _KeyPickler(buf, protocol=5).dump(_canonical(obj))
    return buf.getvalue()


def _canonical(obj: Any) -> Any:
    """Return ``obj`` with sets as sorted tuples: their iteration order depends on hashing
    (``PYTHONHASHSEED`` for strings), so equal sets would pickle differently."""
    t = type(obj)
    if t is set or t is frozenset:
        return (f"dagexec.{t.__name__}", tuple(sorted(obj, key=_canonical_bytes)))
    if t is list or t is tuple:
        return t(_canonical(v) for v in obj)
    if t is dict:
        return {k: _canonical(v) for k, v in obj.items()}
    return obj


def _content_hash(name: str, content: Any) -> str:
    try:
        data = _canonical_bytes(content)
    except Exception as exc:
        raise TypeError(
            f"Graph.call({name}, ...) cannot hash its arguments to build a key; "
            "use Graph.add with an explicit key"
        ) from exc
    return hashlib.blake2b(data, digest_size=8).hexdigest()
