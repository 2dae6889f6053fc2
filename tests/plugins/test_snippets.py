"""The plugin guide's test snippets run as pasted: copied out of README.md and
docs/plugins.md into a file of their own, run by pytest with no configuration of ours (so
pytest-asyncio's default strict mode), from the repository's root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _test_snippet(doc: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)
    tests = [b for b in blocks if "run_in_memory" in b and "async def test_" in b]
    assert len(tests) == 1, f"{doc}: expected one test snippet, found {len(tests)}"
    return tests[0]


@pytest.mark.parametrize("doc", ["README.md", "docs/plugins.md"])
def test_the_test_snippet_runs_as_pasted(doc: str, tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(_test_snippet(ROOT / doc))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest-asyncio's defaults
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
         str(tmp_path / "test_mine.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "1 passed" in ran.stdout


@pytest.mark.parametrize(
    ("marker", "source"),
    [("class DampedSharing", "damped_sharing.py"), ("class RotatingRing", "rotating_ring.py")],
)
def test_the_guides_code_is_the_example_files_code(marker: str, source: str) -> None:
    """Every line docs/plugins.md shows of the worked example is in the example's file, in
    the same order (lines the guide leaves out may sit between; a body it leaves out is
    written ``...``)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/plugins.md").read_text(), re.DOTALL)
    (block,) = [b for b in blocks if marker in b]
    lines = iter((ROOT / "experiments/plugins" / source).read_text().splitlines())
    for shown in block.splitlines():
        shown = shown.removesuffix(" ...")
        if shown.strip() and not any(line.startswith(shown) for line in lines):
            raise AssertionError(f"docs/plugins.md shows {shown!r}, not in {source} there")
