"""imap_shared over an endless-style stream: a million items in bounded memory.

Streams ``--items`` (item, rule) pairs from a generator, eight per key, through
``dagexec.imap_shared`` on 2 worker threads with the default window, and prints the
wall time, the time per item and the peak RSS of the process (``ru_maxrss``). The
results are summed and checked against the closed form, so nothing is dropped.

Run:  python bench/imap_memory.py [--items 1000000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout

import dagexec

PER_KEY = 8


def stream(n: int) -> Iterator[tuple[int, int]]:
    for i in range(n):
        yield i // PER_KEY, i % PER_KEY


def shared(key: int) -> int:
    return key * 10


def check(item: tuple[int, int], value: int) -> int:
    return value + item[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    n = parser.parse_args(argv).items
    started = time.perf_counter()
    count = total = 0
    for _, value in dagexec.imap_shared(
        check, stream(n), shared=shared, key=lambda item: item[0], max_workers=2
    ):
        count += 1
        total += value
    wall = time.perf_counter() - started
    expected = sum(shared(i // PER_KEY) + i % PER_KEY for i in range(n))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{count:,} items over {-(-n // PER_KEY):,} keys: {wall:.1f} s, "
        f"{wall / max(count, 1) * 1e6:.1f} us/item, peak RSS {peak_mb:.0f} MB"
    )
    if (count, total) != (n, expected):
        print(f"MISMATCH: {count} results summing to {total}, expected {n} and {expected}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
