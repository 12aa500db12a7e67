"""Per-task options (retries, timeout, resources, priority) and the backoff policy.

Pure data and validation, no threads. A task without options has ``opts=None`` so the
common case costs nothing; a run resolves what a task does not say from the graph's
defaults, then the run's (``Policy``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Backoff", "Options", "Policy", "check_limits", "make_options", "positive_seconds"]

#: What ``backoff=`` accepts: a Backoff, seconds as a number, or ``f(attempt) -> seconds``.
BackoffLike = Union["Backoff", float, int, Callable[[int], float]]
RetryOn = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: the wait before retry ``n`` (1, 2, ...).

    ``min(max, base * factor ** (n - 1))`` seconds, times a random factor in
    ``[0.5, 1]`` when ``jitter`` is on, so that tasks failing together do not retry in
    lockstep. Any ``f(attempt) -> seconds`` works in its place (tenacity-style).
    """

    base: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    jitter: bool = True

    def __call__(self, attempt: int) -> float:
        """Return the seconds to wait before retry number ``attempt``."""
        delay = min(self.max, self.base * self.factor ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay


class Options:
    """A task's own options; ``None`` fields fall back to the graph's, then the run's."""

    __slots__ = ("backoff", "cache", "priority", "resources", "retries", "retry_on", "timeout")

    def __init__(
        self,
        retries: int | None,
        retry_on: RetryOn | None,
        backoff: BackoffLike | None,
        timeout: float | None,
        resources: Mapping[str, float],
        priority: int,
        cache: bool | None = None,
    ) -> None:
        self.retries = retries
        self.retry_on = retry_on
        self.backoff = backoff
        self.timeout = timeout
        self.resources = resources
        self.priority = priority
        self.cache = cache  # None: as the run says (cached when the run has a cache)

    def astuple(self) -> tuple[Any, ...]:
        return (
            self.retries,
            self.retry_on,
            self.backoff,
            self.timeout,
            sorted(self.resources.items()),
            self.priority,
            self.cache,
        )


class Policy:
    """Retry defaults (``retries``, ``retry_on``, ``backoff``) at one level."""

    __slots__ = ("backoff", "retries", "retry_on")

    def __init__(
        self, retries: int | None, retry_on: RetryOn | None, backoff: BackoffLike | None
    ) -> None:
        self.retries = retries
        self.retry_on = retry_on
        self.backoff = backoff

    def __bool__(self) -> bool:
        return bool(self.retries)

    def under(self, outer: Policy) -> Policy:
        """Return this policy with the fields it leaves unset taken from ``outer``."""
        return Policy(
            outer.retries if self.retries is None else self.retries,
            outer.retry_on if self.retry_on is None else self.retry_on,
            outer.backoff if self.backoff is None else self.backoff,
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (1 for the first retry)."""
        backoff = _DEFAULT_BACKOFF if self.backoff is None else self.backoff
        if callable(backoff):
            return max(0.0, float(backoff(attempt)))
        return float(backoff)

    def retries_on(self, exc: BaseException) -> bool:
        """Say whether ``exc`` is worth another attempt under this policy."""
        return isinstance(exc, Exception if self.retry_on is None else self.retry_on)


_DEFAULT_BACKOFF = Backoff()


def check_policy(where: str, retries: Any, retry_on: Any, backoff: Any) -> Policy:
    """Validate retry settings; ``where`` names the task or level in the message."""
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or retries < 0
    ):
        raise ValueError(f"{where}: retries must be an int >= 0, not {retries!r}")
    if retry_on is not None:
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not classes or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes
        ):
            raise TypeError(
                f"{where}: retry_on takes an exception class or a tuple of them, not {retry_on!r}"
            )
    if (
        backoff is not None
        and not callable(backoff)
        and not positive_seconds(backoff)
        and backoff != 0
    ):
        raise TypeError(
            f"{where}: backoff takes seconds, a dagexec.Backoff or "
            f"f(attempt) -> seconds, not {backoff!r}"
        )
    return Policy(retries, retry_on, backoff)


def positive_seconds(value: Any) -> bool:
    """Say whether ``value`` is a finite number of seconds > 0 (a timeout, a delay)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def make_options(
    key: Hashable,
    kind: str,
    retries: Any,
    retry_on: Any,
    backoff: Any,
    timeout: Any,
    resources: Any,
    priority: Any,
    cache: Any = None,
) -> Options:
    """Validate a task's options (``Graph.add`` calls it only when some are set)."""
    where = f"task {key!r}"
    check_policy(where, retries, retry_on, backoff)
    if timeout is not None:
        if not positive_seconds(timeout):
            raise ValueError(f"{where}: timeout must be seconds > 0, not {timeout!r}")
        if kind == "inline":
            raise ValueError(
                f"{where}: an inline task runs in the caller's thread and cannot be "
                "stopped; use kind='thread', 'process' or 'async' with timeout="
            )
    res: dict[str, float] = {}
    if resources:
        if not isinstance(resources, Mapping):
            raise TypeError(f"{where}: resources takes a dict like {{'gpu': 1}}, not {resources!r}")
        for name, amount in resources.items():
            if not isinstance(name, str) or not positive_seconds(amount):
                raise ValueError(
                    f"{where}: resources[{name!r}] must be a number > 0 named by a str, "
                    f"not {amount!r}"
                )
            res[name] = amount
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"{where}: priority must be an int (higher runs first), not {priority!r}")
    if cache is not None and not isinstance(cache, bool):
        raise TypeError(f"{where}: cache must be True or False, not {cache!r}")
    return Options(retries, retry_on, backoff, timeout, res, priority, cache)


def check_limits(limits: Any) -> dict[str, float]:
    """Validate a run's ``limits={"gpu": 1, ...}`` capacities."""
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise TypeError(f"limits takes a dict like {{'gpu': 1}}, not {limits!r}")
    for name, amount in limits.items():
        if not isinstance(name, str) or not positive_seconds(amount):
            raise ValueError(f"limits[{name!r}] must be a number > 0, not {amount!r}")
    return dict(limits)
