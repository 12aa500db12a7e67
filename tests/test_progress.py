"""Progress: the live bar of ``progress=``, driven directly as the run loop drives it.

The bar writes to the ``sys.stderr`` of its construction; tests point that at a
``Stream`` (a StringIO that counts its writes), at a closed or broken stream, or at the
slave end of a real pseudo-terminal. Redraws are spaced by a clock the test holds
(``Clock``), so "many updates, few redraws" is exact and needs no sleeps.
"""

from __future__ import annotations

import io
import os
import re
import select
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from dagexec._progress import FILE_INTERVAL, TTY_INTERVAL, Progress, check_progress

pytestmark = pytest.mark.timeout(30)


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Stream(io.StringIO):
    """A non-terminal stderr that counts its writes of something visible."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        if s:
            self.writes += 1
        return super().write(s)


class BrokenStream(Stream):
    """A stderr whose writes fail like a pipe whose reader has gone, once ``broken``."""

    broken = False

    def write(self, s: str) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(s)


def stderr_to(monkeypatch: pytest.MonkeyPatch, out: Stream | None = None) -> Stream:
    """Point sys.stderr at ``out`` (a new Stream by default) for the rest of the test.

    Called in the test itself: pytest puts its own capture back on sys.stderr between a
    fixture's setup and the test.
    """
    out = Stream() if out is None else out
    monkeypatch.setattr(sys, "stderr", out)
    return out


def last_line(text: str) -> str:
    """Return the bar as last drawn: the text after the last carriage return."""
    return text.rstrip("\n").rsplit("\r", 1)[-1]


# -- check_progress -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, True, "always"])
def test_check_progress_accepts_the_modes(value: bool | str) -> None:
    assert check_progress(value) is value


@pytest.mark.parametrize("value", [None, 0, 1, "yes", "ALWAYS", "", 0.1, [True]])
def test_check_progress_rejects_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match=r"progress= must be False, True .* or 'always'") as info:
        check_progress(value)
    assert repr(value) in str(info.value)


def test_a_bad_mode_is_rejected_by_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    with pytest.raises(ValueError, match="progress="):
        Progress(10, "yes")  # type: ignore[arg-type]
    assert stream.getvalue() == ""


# -- what is shown --------------------------------------------------------------------------


def test_always_shows_the_final_counts_after_close(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    clock = Clock()
    bar = Progress(4, "always", clock=clock)
    assert bar.enabled
    for done in range(1, 5):
        clock.now += FILE_INTERVAL
        bar.update(done, running=4 - done, failed=1, retried=2)
    bar.update(4, running=0, failed=1, retried=2)
    bar.close()
    text = stream.getvalue()
    assert text.endswith("\n")
    final = last_line(text)
    assert re.fullmatch(
        r"dagexec: 100%\|#+\| 4/4 \[\d\d:\d\d<\d\d:\d\d, [\d.]+k? tasks/s, "
        r"running 0, failed 1, retried 2\]",
        final,
    ), final


def test_zero_failed_and_retried_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    with Progress(3, "always", desc="build") as bar:
        bar.update(3, 0, 0, 0)
    final = last_line(stream.getvalue())
    assert final.startswith("build: 100%")
    assert final.endswith(", running 0]")


def test_the_counts_between_redraws_are_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    clock = Clock()
    bar = Progress(10, "always", clock=clock)
    bar.update(7, 2, 1, 0)  # no redraw is due yet
    assert "7/10" not in stream.getvalue()
    bar.close()
    assert "| 7/10 [" in last_line(stream.getvalue())
    assert "running 2, failed 1]" in last_line(stream.getvalue())


def test_close_not_ok_marks_the_bar_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)

    def fail_inside(bar: Progress) -> None:
        with bar:
            bar.update(2, 3, 0, 0)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        fail_inside(Progress(5, "always"))
    final = last_line(stream.getvalue())
    assert "| 2/5 [" in final
    assert final.endswith("running 3, stopped]")


def test_add_total_grows_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    clock = Clock()
    bar = Progress(0, "always", clock=clock)  # items still streaming in
    bar.add_total(10)
    bar.add_total(5)
    clock.now += FILE_INTERVAL
    bar.update(6, 4, 0, 0)
    assert "6/15" in last_line(stream.getvalue())
    bar.close()
    assert " 40%|" in last_line(stream.getvalue())


def test_the_stderr_of_construction_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    bar = Progress(2, "always")
    later = stderr_to(monkeypatch)
    bar.update(2, 0, 0, 0)
    bar.close()
    assert "2/2" in stream.getvalue()
    assert later.getvalue() == ""


# -- when nothing is shown ------------------------------------------------------------------


def test_true_on_a_non_terminal_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    bar = Progress(3, True)
    assert not bar.enabled
    bar.update(3, 0, 1, 1)
    bar.add_total(2)
    bar.close()
    assert stream.getvalue() == ""


def test_false_shows_nothing_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty, monkeypatch.context() as m:
            m.setattr(sys, "stderr", tty)
            bar = Progress(3, False)
            bar.update(3, 0, 0, 0)
            bar.close()
        assert not bar.enabled
        assert read_available(master) == b""
    finally:
        os.close(master)
        os.close(slave)


def test_false_imports_nothing_and_costs_little() -> None:
    """Without a bar tqdm is not even imported, and an update is a single check."""
    code = textwrap.dedent(
        """
        import sys, time
        from dagexec._progress import Progress
        bar = Progress(100_000, False)
        t0 = time.perf_counter()
        for i in range(100_000):
            bar.update(i, 2, 0, 0)
        bar.close()
        print(time.perf_counter() - t0, "tqdm" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=20
    )
    seconds, imported = out.stdout.split()
    assert imported == "False"
    # ~0.05 us per call in practice; the bound is loose enough for a busy machine.
    assert float(seconds) < 0.5


def test_using_a_bar_does_not_fix_the_process_start_method() -> None:
    """tqdm's default lock creates a multiprocessing RLock, which would fix it for good."""
    code = textwrap.dedent(
        """
        import io, multiprocessing, sys
        sys.stderr = io.StringIO()
        from dagexec._progress import Progress
        with Progress(2, "always") as bar:
            bar.update(2, 0, 0, 0)
        assert "2/2" in sys.stderr.getvalue()
        multiprocessing.set_start_method("spawn")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)


# -- redraws are rate-limited ---------------------------------------------------------------


def test_many_updates_make_few_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    clock = Clock()
    bar = Progress(100_000, "always", clock=clock)
    first = stream.writes
    assert first > 0  # the empty bar, drawn at once
    for done in range(1, 100_001):
        bar.update(done, 4, 0, 0)
    assert stream.writes == first  # the clock did not move: no redraw is due
    clock.now += FILE_INTERVAL
    for done in range(1, 1_001):
        bar.update(done, 4, 0, 0)
    after_one_redraw = stream.writes
    assert first < after_one_redraw <= 2 * first  # exactly one redraw's writes
    clock.now += FILE_INTERVAL / 2
    bar.update(1_000, 4, 0, 0)
    assert stream.writes == after_one_redraw


def test_the_real_clock_also_spaces_redraws(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    bar = Progress(200_000, "always")
    per_draw = stream.writes  # the empty bar, drawn at once
    t0 = time.monotonic()
    for done in range(1, 200_001):
        bar.update(done, 1, 0, 0)
    elapsed = time.monotonic() - t0
    draws = (stream.writes - per_draw) / per_draw
    assert draws <= elapsed / FILE_INTERVAL + 1
    bar.close()


# -- a real terminal ------------------------------------------------------------------------


def read_available(fd: int) -> bytes:
    """Return what can be read from ``fd`` now, without blocking."""
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # Linux: EIO once the slave side has nothing more
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize("columns", [0, 80], ids=["size-unknown", "80-columns"])
def test_true_on_a_terminal_shows_the_bar(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """A new pseudo-terminal is 0 x 0 until sized, as under ``docker run -t``."""
    import fcntl
    import termios

    master, slave = os.openpty()
    try:
        if columns:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with open(slave, "w", encoding="utf-8", closefd=False) as tty, monkeypatch.context() as m:
            m.setattr(sys, "stderr", tty)
            clock = Clock()
            bar = Progress(3, True, clock=clock)
            assert bar.enabled
            clock.now += TTY_INTERVAL
            bar.update(2, 1, 0, 1)
            bar.update(3, 0, 0, 1)
            bar.close()
        shown = read_available(master).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "| 2/3 [" in shown
    assert "running 1, retried 1]" in shown
    assert "█" in shown  # a terminal that speaks UTF-8 gets the smooth bar
    final = last_line(shown.replace("\r\n", "\n"))
    assert final.startswith("dagexec: 100%|")
    assert "| 3/3 [" in final
    assert final.rstrip().endswith("running 0, retried 1]")  # padded over a longer line
    if columns:
        assert len(final) == columns - 1  # the bar fills the line


# -- close, and a stream that fails ---------------------------------------------------------


def test_close_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    bar = Progress(1, "always")
    bar.update(1, 0, 0, 0)
    bar.close()
    written = stream.getvalue()
    bar.close()
    bar.close(ok=False)
    bar.update(1, 0, 5, 5)
    bar.add_total(3)
    assert not bar.enabled
    assert stream.getvalue() == written


def test_a_stderr_closed_before_the_bar_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    stream.close()
    for mode in (True, "always"):
        bar = Progress(3, mode, clock=Clock())
        bar.update(1, 1, 0, 0)
        bar.add_total(1)
        bar.close()
        bar.close()


def test_a_stderr_closed_during_the_run_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = stderr_to(monkeypatch)
    clock = Clock()
    bar = Progress(3, "always", clock=clock)
    stream.close()
    clock.now += FILE_INTERVAL
    bar.update(1, 1, 0, 0)
    bar.close()
    bar.close()


def test_a_broken_stderr_turns_the_bar_off(monkeypatch: pytest.MonkeyPatch) -> None:
    out = BrokenStream()
    stderr_to(monkeypatch, out)
    clock = Clock()
    bar = Progress(3, "always", clock=clock)
    out.broken = True
    clock.now += FILE_INTERVAL
    bar.update(1, 1, 0, 0)  # the redraw fails: no exception, no more bar
    assert not bar.enabled
    out.broken = False
    clock.now += FILE_INTERVAL
    bar.update(2, 1, 0, 0)
    bar.close()
    assert "2/3" not in out.getvalue()


def test_a_stderr_broken_at_close_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    out = BrokenStream()
    stderr_to(monkeypatch, out)
    bar = Progress(3, "always")
    bar.update(3, 0, 0, 0)
    out.broken = True
    bar.close()
    assert not bar.enabled


def test_no_stderr_at_all_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, or a daemon that closed it
    for mode in (True, "always"):
        bar = Progress(3, mode)
        assert not bar.enabled
        bar.update(3, 0, 0, 0)
        bar.close()
