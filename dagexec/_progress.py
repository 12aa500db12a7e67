"""The live progress bar of ``run(progress=...)`` and ``map_shared(..., progress=...)``.

::

    run loop ──update(done, running, failed, retried)──▶ Progress ──at most every 0.1 s──▶ tqdm ──▶ stderr
             ──add_total(n)──────────────────────────▶   (counts kept, nothing drawn in between)
             ──close(ok)─────────────────────────────▶   final redraw, newline

The run loop calls ``update`` after every batch of outcomes, possibly 100,000 times a
second, so an update only stores the counts and compares the clock with the next
redraw time; the postfix string is built and tqdm is touched only when a redraw is due
(every 0.1 s on a terminal, every second when forced onto a file or a pipe).
tqdm is imported on the first enabled bar, so a run without progress pays nothing.

A ``Progress`` belongs to the thread that runs the loop: it has no lock and no thread of
its own (tqdm's monitor thread is turned off for our bars).

State fields:
    enabled     False once disabled, closed or broken: every method returns at once
    _bar        the tqdm bar while enabled, else None
    _counts     the latest (done, running, failed, retried) from ``update``
    _next_draw  the clock time before which ``update`` draws nothing
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

__all__ = ["PROGRESS_MODES", "Progress", "check_progress"]

#: The values ``progress=`` accepts.
PROGRESS_MODES: tuple[bool | str, ...] = (False, True, "always")

#: Seconds between redraws on a terminal, and when forced onto a file or pipe (where
#: every redraw is kept, so fewer are drawn).
TTY_INTERVAL = 0.1
FILE_INTERVAL = 1.0

# A redraw that fails because of the stream (closed, broken pipe, gone) disables the bar.
_STREAM_ERRORS = (OSError, ValueError)


def check_progress(value: object) -> bool | str:
    """Return ``value`` if it is a valid ``progress=`` argument, else raise ValueError.

    Accepted: ``False`` (no bar), ``True`` (a bar when stderr is a terminal) and
    ``"always"`` (a bar even when stderr is a file or a pipe).
    """
    # Not `in PROGRESS_MODES`: 1 and 0 equal True and False, and are more likely a mistake.
    if isinstance(value, bool) or (isinstance(value, str) and value == "always"):
        return value
    raise ValueError(
        f"progress= must be False, True (a bar when stderr is a terminal) or 'always', "
        f"not {value!r}"
    )


@functools.cache
def _bar_class() -> Any:
    """Return our tqdm subclass, importing tqdm on first use."""
    tqdm = importlib.import_module("tqdm").tqdm
    # Class attributes of our own, so that a bar of ours changes nothing for the user's
    # tqdm bars: no monitor thread, and a plain thread lock instead of tqdm's default
    # lock, which also creates a multiprocessing RLock and thereby fixes the start method
    # of the whole interpreter (a later multiprocessing.set_start_method() would raise).
    # The instance set goes with the lock that guards it.
    namespace = {"monitor_interval": 0, "_lock": threading.RLock(), "_instances": weakref.WeakSet()}
    return type("DagexecBar", (tqdm,), namespace)


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except _STREAM_ERRORS:  # closed, or a stand-in without a real file behind it
        return False


def _screen_shape(stream: Any) -> tuple[int | None, int | None]:
    """Return the columns and rows tqdm may use on ``stream``; None where unknown.

    As tqdm's own, except for a size of 0 x 0 (a new pseudo-terminal, ``docker run -t``
    before its first resize): tqdm makes that -1 x -1 and then draws nothing at all.
    """
    try:
        cols, rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None, None
    return (cols - 1 if cols > 1 else None), (rows - 1 if rows > 1 else None)


def _postfix(running: int, failed: int, retried: int) -> str:
    text = f"running {running}"
    if failed:
        text += f", failed {failed}"
    if retried:
        text += f", retried {retried}"
    return text


class Progress:
    """Show a live progress bar of a run on stderr: done/total, running, failed, retried.

    Every method is a near-free no-op when the bar is not shown (``enabled`` is False),
    and none raises because of the stream: a failed redraw turns the bar off. Also a
    context manager, which closes the bar on exit.

    Args:
        total: how many units the run has; ``add_total`` raises it later.
        mode: ``False``: no bar; ``True``: a bar if stderr is a terminal; ``"always"``:
            a bar even on a file or a pipe.
        desc: the label in front of the bar.
        unit: what is counted, as shown in the rate (``"12.3k tasks/s"``).
        clock: the monotonic clock that spaces redraws (tests pass their own).
    """

    def __init__(
        self,
        total: int,
        mode: bool | str,
        desc: str = "dagexec",
        *,
        unit: str = "tasks",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_progress(mode)
        self._clock = clock
        self._counts = (0, 0, 0, 0)
        self._bar: Any = None
        self.enabled = False
        stream = sys.stderr  # the stderr of now, even if it is replaced during the run
        terminal = _is_terminal(stream)
        if not mode or stream is None or (mode is True and not terminal):
            return
        self._interval = TTY_INTERVAL if terminal else FILE_INTERVAL
        try:
            self._bar = _bar_class()(
                total=total,
                desc=desc,
                unit=" " + unit,
                unit_scale=True,  # a short rate (12.3k); the counts stay exact: {n}, not {n_fmt}
                file=stream,
                # We space the redraws ourselves; tqdm draws whenever it is asked.
                mininterval=0,
                miniters=0,
                bar_format=(
                    "{l_bar}{bar}| {n}/{total} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
                ),
                postfix=_postfix(0, 0, 0),
            )
        except _STREAM_ERRORS:
            return
        if terminal:  # follow the terminal's width as it is resized
            self._bar.dynamic_ncols = _screen_shape
            self._bar.ncols, self._bar.nrows = _screen_shape(stream)
        self.enabled = True
        self._next_draw = clock() + self._interval

    def update(self, done: int, running: int, failed: int, retried: int) -> None:
        """Record the run's counts (absolute, not increments); redraw if one is due."""
        if not self.enabled:
            return
        self._counts = (done, running, failed, retried)
        now = self._clock()
        if now < self._next_draw:
            return
        self._next_draw = now + self._interval
        try:
            self._bar.set_postfix_str(_postfix(running, failed, retried), refresh=False)
            # update(), not n=: tqdm's rate and ETA follow the increments it is given.
            self._bar.update(done - self._bar.n)
        except _STREAM_ERRORS:
            self._disable()

    def add_total(self, n: int) -> None:
        """Raise the total by ``n`` units (shown at the next redraw)."""
        if self.enabled:
            self._bar.total += n

    def close(self, ok: bool = True) -> None:
        """Draw the final counts and end the bar's line; ``ok=False`` marks it stopped.

        Safe to call more than once, and in a ``finally``.
        """
        if not self.enabled:
            return
        done, running, failed, retried = self._counts
        postfix = _postfix(running, failed, retried) + ("" if ok else ", stopped")
        bar = self._bar
        self.enabled, self._bar = False, None
        try:
            bar.n = done
            bar.set_postfix_str(postfix, refresh=False)
            bar.close()  # draws with the overall rate, then a newline
        except _STREAM_ERRORS:
            self._disable(bar)

    def _disable(self, bar: Any = None) -> None:
        bar = bar if bar is not None else self._bar
        self.enabled, self._bar = False, None
        # Not bar.close(): it writes again and may fail the same way. A disabled bar
        # neither draws nor closes, even from its __del__.
        bar.disable = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ok=exc_type is None)
