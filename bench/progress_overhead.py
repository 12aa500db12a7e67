"""What the progress bar costs: a run of 100,000 no-op tasks with and without it.

What is measured
----------------
1. The bar alone (``dagexec._progress.Progress``), 100,000 ``update()`` calls as the
   run loop makes them: off, forced onto /dev/null, and on a pseudo-terminal; plain
   ``tqdm.update(1)`` beside them for scale, and the time ``import tqdm`` adds to
   ``import dagexec`` (paid only by a run that shows a bar: tqdm is imported lazily).
2. End to end, with the project's target: a bar may slow a run by at most 10%.

   * ``Graph.run``:  100,000 no-op tasks (``g.add(i, noop)``, thread kind, 2 workers);
     the graph is built before the clock starts, a fresh one for every repeat;
   * ``map_shared``: 100,000 items over 100 shared keys (thread kind, 2 workers).

   Each is run with ``progress=False``, with ``progress="always"`` and stderr on
   /dev/null (the bar is formatted and written in full; on a non-terminal it redraws
   once a second), and, on POSIX, with ``progress=True`` and stderr on a pseudo-terminal
   (a redraw every 0.1 s, as a user sees it; a thread drains the terminal).  The
   variants are interleaved (off, always, tty, off, ...), ``--repeats`` times each, with
   ``gc.collect()`` before every run.  Reported: the median, min and max wall time of
   each, and the headline ratio: the median over rounds of (this variant / the ``off``
   run of the same round), marked ok (<= 1.10) or OVER; pairing by round cancels drifts
   in machine load, which on a busy machine swamp a difference of a few per cent.

Run:  python bench/progress_overhead.py [--quick] [--repeats 11] [--n 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

# Benchmark the checkout this script lives in, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagexec
from dagexec._progress import Progress

TARGET = 1.10  # a run with a bar takes at most 10% longer
WORKERS = 2
KEYS = 100  # distinct shared keys in the map_shared workload


def noop() -> None:
    pass


def item_noop(item: int, shared_value: int) -> None:
    pass


def shared_noop(key: int) -> int:
    return key


def key_of(item: int) -> int:
    return item % KEYS


# --------------------------------------------------------------------------- stderr


@contextlib.contextmanager
def stderr_on(where: str) -> Iterator[TextIO]:
    """Point sys.stderr at /dev/null or at a pseudo-terminal drained by a thread."""
    saved = sys.stderr
    if where == "devnull":
        with open(os.devnull, "w") as sink:
            sys.stderr = sink
            try:
                yield sink
            finally:
                sys.stderr = saved
        return
    import pty

    master, slave = pty.openpty()
    drained = [0]

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                return
            if not chunk:
                return
            drained[0] += len(chunk)

    reader = threading.Thread(target=drain, name="pty-drain", daemon=True)
    reader.start()
    try:
        with open(slave, "w", encoding="utf-8") as tty:
            sys.stderr = tty
            try:
                yield tty
            finally:
                sys.stderr = saved
    finally:
        reader.join(timeout=5)
        os.close(master)


# --------------------------------------------------------------------------- micro


def per_call_us(fn: Callable[[], None], calls: int, repeats: int) -> float:
    """The best of ``repeats`` timings of ``fn`` (which makes ``calls`` calls), per call."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def updates(mode: bool | str, n: int) -> Callable[[], None]:
    def go() -> None:
        bar = Progress(n, mode)
        update = bar.update
        for done in range(1, n + 1):
            update(done, 2, 0, 0)
        bar.close()

    return go


def plain_tqdm(n: int) -> Callable[[], None]:
    from tqdm import tqdm

    def go() -> None:
        with open(os.devnull, "w") as sink:
            bar = tqdm(total=n, file=sink)  # default mininterval 0.1 s
            for _ in range(n):
                bar.update(1)
            bar.close()

    return go


def import_ms(module: str, repeats: int) -> float:
    """The median time ``import module`` adds after ``import dagexec``, in ms."""
    code = (
        "import time, dagexec; t = time.perf_counter(); "
        f"import {module}; print(time.perf_counter() - t)"
    )
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(runs) * 1e3


def micro(n: int, repeats: int) -> None:
    print(f"### The bar alone: {n:,} `update()` calls (best of {repeats})")
    print()
    print("| what | us/call |")
    print("|---|---:|")
    rows: list[tuple[str, Callable[[], None]]] = [("`Progress(mode=False)`", updates(False, n))]
    rows.append(("`Progress(mode='always')`, stderr on /dev/null", updates("always", n)))
    if os.name == "posix":
        rows.append(("`Progress(mode=True)`, stderr on a pseudo-terminal", updates(True, n)))
    rows.append(("plain `tqdm.update(1)` on /dev/null, for scale", plain_tqdm(n)))
    for label, fn in rows:
        where = "tty" if "terminal" in label else "devnull"
        with stderr_on(where):
            us = per_call_us(fn, n, repeats)
        print(f"| {label} | {us:.3f} |")
    print()
    print(f"`import tqdm` after `import dagexec`: {import_ms('tqdm', 7):.1f} ms (median of 7)")
    print()


# --------------------------------------------------------------------------- end to end


def graph_run(n: int, progress: bool | str) -> float:
    g = dagexec.Graph()
    for i in range(n):
        g.add(i, noop)
    gc.collect()
    t0 = time.perf_counter()
    results = g.run(max_workers=WORKERS, progress=progress)
    elapsed = time.perf_counter() - t0
    assert len(results) == n, (len(results), n)
    return elapsed


def map_run(n: int, progress: bool | str) -> float:
    items = range(n)
    gc.collect()
    t0 = time.perf_counter()
    out = dagexec.map_shared(
        item_noop,
        items,
        shared=shared_noop,
        key=key_of,
        max_workers=WORKERS,
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    assert len(out) == n, (len(out), n)
    return elapsed


VARIANTS: list[tuple[str, bool | str, str]] = [
    ("off", False, "devnull"),
    ("always, /dev/null", "always", "devnull"),
]
if os.name == "posix":
    VARIANTS.append(("True, terminal", True, "tty"))


def end_to_end(label: str, fn: Callable[[int, bool | str], float], n: int, repeats: int) -> bool:
    """Print one table; return whether every variant is within the target."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    fn(min(n, 1000), False)  # warm up: pools, imports
    for _ in range(repeats):
        for name, mode, where in VARIANTS:
            with stderr_on(where):
                times[name].append(fn(n, mode))
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"### {label}: {n:,} no-op units, {WORKERS} workers, {repeats} rounds")
    print()
    print(
        "| progress | median s | min s | max s | us/unit "
        "| **vs off** (median of per-round ratios) | min vs min | target <= 1.10 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for name, _, _ in VARIANTS:
        runs = times[name]
        # Each round's ratio to the "off" run beside it: drifts in machine load cancel.
        ratio = statistics.median(r / off for r, off in zip(runs, times["off"], strict=True))
        floor = min(runs) / min(times["off"])
        verdict = "" if name == "off" else ("ok" if ratio <= TARGET else "**OVER**")
        ok = ok and (name == "off" or ratio <= TARGET)
        print(
            f"| {name} | {statistics.median(runs):.3f} | {min(runs):.3f} | {max(runs):.3f} "
            f"| {statistics.median(runs) / n * 1e6:.2f} | **{ratio:.3f}** | {floor:.3f} "
            f"| {verdict} |"
        )
    print()
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="tasks / items (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=11, help="rounds (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="N=20,000 and 3 repeats")
    args = ap.parse_args(argv)
    n, repeats = (20_000, 3) if args.quick else (args.n, args.repeats)

    print("## What a progress bar costs")
    print()
    print(f"- python: {platform.python_implementation()} {platform.python_version()}")
    print(
        f"- cpus: {os.cpu_count()}, loadavg: {os.getloadavg() if hasattr(os, 'getloadavg') else '?'}"
    )
    from tqdm import __version__ as tqdm_version

    print(f"- tqdm: {tqdm_version}, dagexec: {dagexec.__version__}")
    print()
    micro(100_000, 5)
    try:
        ok = end_to_end("Graph.run", graph_run, n, repeats)
        ok = end_to_end("map_shared", map_run, n, repeats) and ok
    except TypeError as exc:
        if "progress" not in str(exc):
            raise
        print(f"end-to-end skipped: this dagexec has no progress= yet ({exc})")
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
