"""The README's quick start runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_opens_with_exactly_two_commands() -> None:
    text = README.read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block is not None
    assert text.index(first_block.group(0)) < text.index("## ")
    commands = [ln for ln in first_block.group(1).splitlines() if ln.strip()]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]


def _run_section_example(tmp_path: Path, heading: str) -> str:
    """Run the first Python block after ``heading`` beside two small sources; return stdout."""
    block = re.search(rf"{heading}.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    (tmp_path / "a.py").write_text("for i in range(3):\n    print(i)\n")
    (tmp_path / "b.py").write_text("x = len([1])\nfor y in [x]:\n    pass\n")
    (tmp_path / "example.py").write_text(block.group(1))
    out = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_quick_start_runs(tmp_path: Path) -> None:
    # a.py: range() and print() calls, one loop; b.py: len() call, one loop.
    assert _run_section_example(tmp_path, "## Quick start") == "5"


def test_map_shared_example_runs(tmp_path: Path) -> None:
    # (Call, For, Name) per file: a.py range(), print(), one loop, i/range/print/i;
    # b.py len(), one loop, x/len/y/x.
    output = _run_section_example(tmp_path, "## One call for the two-stage pattern")
    assert output == "[2, 1, 4, 1, 1, 4]"


def test_scaling_out_example_runs_on_a_local_cluster(tmp_path: Path) -> None:
    # Call nodes: a.py range() and print(); b.py len().
    assert _run_section_example(tmp_path, "## Scaling out") == "3"
