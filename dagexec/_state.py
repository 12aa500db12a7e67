"""The state of one run: a pure, synchronous state machine over graphlib.TopologicalSorter.

The runner's loop is its only caller: ``start()`` hands out the first ready keys, each
``finish``/``fail`` records an outcome and ``ready()`` hands out what became runnable.
No threads, no locks, no user code (apart from argument resolution), so it is tested
without pools.

Glossary of state fields:
    tasks      the graph's task specs (shared, read-only)
    order      the TopologicalSorter over the keys this run executes
    held       values handed in by the runner for keys it already holds (not run again)
    values     values produced or held that a pending dependent or the caller still needs
    remaining  per key: dependents of it in this run that have not finished yet
    targets    keys whose values the run returns
    fused      keys already handed out inside a chain segment; ``ready()`` skips them
    errors     key -> exception, for the tasks that failed
    released   when a list: keys whose values ``finish`` dropped, for the caller to
               release wherever else it keeps them (process workers)
"""

from __future__ import annotations

import graphlib
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from ._errors import CycleError, MissingDependencyError
from ._graph import _Task, resolve_args

__all__ = ["RunState", "sink_keys"]


class RunState:
    """Plan and track one run of a graph.

    Args:
        tasks: the graph's tasks by key.
        targets: the keys to compute, or None for every sink of the graph.
        held: values the caller already holds by key; those keys are not run again and
            their ancestors run only if something else needs them.
        keep_all: keep every value produced, not just the targets'.

    Raises:
        MissingDependencyError, CycleError: before anything runs.
    """

    def __init__(
        self,
        tasks: Mapping[Hashable, _Task],
        targets: Iterable[Hashable] | None,
        held: Mapping[Hashable, Any],
        keep_all: bool = False,
    ) -> None:
        self.tasks = tasks
        self.keep_all = keep_all
        self.reused: dict[Hashable, None] = {}
        if targets is None and not held:
            # Everything runs: no walk needed, and the sinks fall out of the counts.
            self._build(tasks)
            self.targets: dict[Hashable, None] = {k: None for k in tasks if k not in self.remaining}
        else:
            self.targets = dict.fromkeys(sink_keys(tasks) if targets is None else targets)
            self._build(self._plan(held))
        self.values: dict[Hashable, Any] = {k: held[k] for k in self.reused}
        self.errors: dict[Hashable, BaseException] = {}
        self.fused: set[Hashable] = set()
        self.released: list[Hashable] | None = None

    def _plan(self, held: Mapping[Hashable, Any]) -> dict[Hashable, None]:
        """Collect the keys to run: targets and their ancestors, stopping at held keys."""
        tasks = self.tasks
        run_keys: dict[Hashable, None] = {}
        reused = self.reused
        for key in self.targets:
            if key not in tasks and key not in held:
                raise MissingDependencyError(key, ["targets="])
        stack = list(self.targets)
        while stack:
            key = stack.pop()
            if key in run_keys or key in reused:
                continue
            if key in held:
                reused[key] = None
                continue
            task = tasks.get(key)
            if task is not None:  # a missing key is reported by _build, naming who needs it
                run_keys[key] = None
                stack.extend(task.preds)
        return run_keys

    def _build(self, run_keys: Mapping[Hashable, Any]) -> None:
        """Fill the sorter, the dependent counts and the chain links; check the graph."""
        tasks = self.tasks
        reused = self.reused
        order: graphlib.TopologicalSorter[Hashable] = graphlib.TopologicalSorter()
        add = order.add
        remaining: dict[Hashable, int] = {}
        get = remaining.get
        # next_in_chain[a] = b when b's only predecessor is a: a fusion candidate.
        next_in_chain: dict[Hashable, Hashable] = {}
        missing: dict[Hashable, list[Hashable]] = {}
        for key in run_keys:
            preds = tasks[key].preds
            for dep in preds:
                remaining[dep] = get(dep, 0) + 1
                if dep not in tasks and dep not in reused:
                    missing.setdefault(dep, []).append(key)
            if len(preds) == 1:
                next_in_chain[preds[0]] = key
            if reused:
                preds = tuple(p for p in preds if p not in reused)
            add(key, *preds)
        if missing:
            raise MissingDependencyError(*next(iter(missing.items())))
        try:
            order.prepare()
        except graphlib.CycleError as exc:
            raise _cycle_error(exc) from None
        self.order = order
        self.remaining = remaining
        self.run_keys = run_keys
        self._next_in_chain = next_in_chain

    # -- dispatch -----------------------------------------------------------------------

    def ready(self) -> tuple[Hashable, ...]:
        """Return the keys that became runnable since the last call."""
        keys = self.order.get_ready()
        if self.fused and keys:
            fused = self.fused
            return tuple(k for k in keys if k not in fused)
        return keys

    def chain(self, key: Hashable) -> list[Hashable]:
        """Return ``key`` followed by the tasks that can run right after it in one go.

        A thread task joins the chain when its only predecessor is the previous task of
        the chain, it is that task's only dependent, and it is a thread task without
        options too. Nothing
        is lost by running them back to back on one worker: each could only start when
        the previous one finished. (Process tasks are not chained: a chain on another
        process could not see the run stop between its tasks.)
        """
        tasks = self.tasks
        chain = [key]
        if tasks[key].kind != "thread" or tasks[key].opts is not None:
            return chain  # a task with options (retries, timeout, ...) runs on its own
        nxt = self._next_in_chain.get(key)
        while (
            nxt is not None
            and self.remaining.get(key) == 1
            and tasks[nxt].kind == "thread"
            and tasks[nxt].opts is None
        ):
            chain.append(nxt)
            self.fused.add(nxt)
            key = nxt
            nxt = self._next_in_chain.get(key)
        return chain

    def args(self, task: _Task) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
        """Return the task's positional and keyword arguments with Refs resolved."""
        if not task.refs:
            return task.args, task.kwargs
        return resolve_args(task.args, task.kwargs, task.refs, self.values)

    # -- outcomes -----------------------------------------------------------------------

    def finish(self, key: Hashable, value: Any) -> None:
        """Record that ``key`` returned ``value``; release inputs nobody needs any more."""
        remaining = self.remaining
        if key in remaining or key in self.targets or self.keep_all:
            self.values[key] = value
        if self.fused:
            self.fused.discard(key)
        self.order.done(key)
        if self.keep_all:
            return
        for dep in self.tasks[key].preds:
            left = remaining[dep] - 1
            if left:
                remaining[dep] = left
            else:  # its last dependent finished: nobody needs its value any more
                del remaining[dep]
                if dep not in self.targets:
                    self.values.pop(dep, None)
                    if self.released is not None:
                        self.released.append(dep)

    def fail(self, key: Hashable, error: BaseException) -> None:
        """Record that ``key`` failed; its dependents will never become ready."""
        self.errors[key] = error
        self.fused.discard(key)

    def is_done(self, key: Hashable) -> bool:
        """Say whether ``key`` has an outcome."""
        return key in self.values or key in self.errors

    # -- reporting ----------------------------------------------------------------------

    def blocked_by(self) -> dict[Hashable, list[list[Hashable]]]:
        """Map each failed key to the chains of dependents it kept from running.

        Each chain runs from a blocked key back to the failure (``report <- check <-
        parse``), nearest dependents first; a key blocked by several failures is
        attributed to the first one that failed.
        """
        dependents: dict[Hashable, list[Hashable]] = {}
        for key in self.run_keys:
            task = self.tasks[key]
            for dep in task.preds:
                dependents.setdefault(dep, []).append(key)
        seen: set[Hashable] = set(self.errors)
        chains: dict[Hashable, list[list[Hashable]]] = {}
        for failed in self.errors:
            out: list[list[Hashable]] = []
            frontier = [[failed]]
            while frontier:
                nxt = []
                for path in frontier:
                    for child in dependents.get(path[0], ()):
                        if child not in seen and not self.is_done(child):
                            seen.add(child)
                            out.append([child, *path])
                            nxt.append([child, *path])
                frontier = nxt
            chains[failed] = out
        return chains

    def target_values(self) -> dict[Hashable, Any]:
        """Return the values of the targets that finished (or every value with keep_all)."""
        if self.keep_all:
            return dict(self.values)
        values = self.values
        return {k: values[k] for k in self.targets if k in values}


def sink_keys(tasks: Mapping[Hashable, _Task]) -> list[Hashable]:
    """The keys nothing depends on: what a run returns by default."""
    needed: set[Hashable] = set()
    for task in tasks.values():
        needed.update(task.preds)
    return [k for k in tasks if k not in needed]


def _cycle_error(exc: graphlib.CycleError) -> CycleError:
    # graphlib lists [a, b, ..., a] with each node a predecessor of the next; we list
    # each key needing the next.
    cycle = list(exc.args[1][:-1])
    cycle.reverse()
    return CycleError(cycle)
