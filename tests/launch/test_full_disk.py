"""Real runs on a really small filesystem: a full disk never loses the run's outcome.

A tmpfs of a few pages holds the run directory (tests/tinyfs.py: mounted as root, as here
and in CI; in a private mount namespace otherwise). Sizes are in pages because tmpfs
allocates whole pages: the launcher's start files take 3, its reserve for the outcome 17
(64 KiB plus 64 bytes per process), and each node record (~250 bytes) 1/16 of one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import strict_json
from tests.tinyfs import PAGE, fill, mount_mode, mounted_tmpfs, unshare_prefix

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.toml"
#: 6 nodes of quickstart, 300 short rounds: ~2 s if nothing stopped them, and ~15 KB of
#: records by round 10.
TINY = ["nodes=6", "topology.degree=3", "rounds=300", "training.local_steps=1",
        "evaluation.every=50", "evaluation.consensus=false"]  # fmt: skip

Launched = tuple[int, str, str, Path]  # exit code, stdout, stderr, the run directory


@pytest.fixture
def launch_on_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """Run `dlactor launch` with its --out on a tmpfs of ``pages`` pages (``full``: filled
    to the last byte first); the tmpfs is unmounted after the test, whatever happened."""
    mode = mount_mode(tmp_path / "probe")
    disk = tmp_path / "disk"
    with ExitStack() as mounts:

        def launch(pages: int, *, full: bool = False) -> Launched:
            sets = [arg for o in TINY for arg in ("--set", o)]
            cmd = [sys.executable, "-m", "dlactor", "launch", str(QUICKSTART),
                   "--out", str(disk / "runs"), "--no-progress", *sets]  # fmt: skip
            if mode == "mount":
                mounts.enter_context(mounted_tmpfs(disk, pages * PAGE))
                if full:
                    fill(disk)
                out = disk
            else:
                disk.mkdir()
                cmd = [*unshare_prefix(disk, pages * PAGE, full=full), *cmd]
                out = disk.with_suffix(".copy")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            (run_dir,) = (out / "runs").iterdir()
            return proc.returncode, proc.stdout, proc.stderr, run_dir

        yield launch


def test_a_run_on_a_full_filesystem_fails_with_a_summary_saying_why(
    launch_on_tmpfs: Callable[..., Launched],
) -> None:
    code, out, err, run_dir = launch_on_tmpfs(32)
    assert code == 1, err
    summary = strict_json((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "raised an exception" in summary["reason"], summary["reason"]
    assert "No space left on device" in summary["reason"] and ".jsonl" in summary["reason"]
    assert 0 < summary["rounds"] < 300
    manifest = strict_json((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["end"]
    written = 0
    for path in sorted((run_dir / "nodes").glob("*.jsonl")):
        text = path.read_text()
        assert text.endswith("\n"), f"{path.name} ends on a torn line: {text[-60:]!r}"
        written += len([strict_json(line) for line in text.splitlines()])
    assert written >= 6 * summary["rounds"]
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".outcome-reserve"))
    assert "run failed: node" in err and "No space left on device" in err
    assert "results so far are kept in" in err and "status" in out


def test_when_not_even_summary_json_fits_stderr_says_so_in_one_line(
    launch_on_tmpfs: Callable[..., Launched],
) -> None:
    """The filesystem is full before the launcher writes anything: no node starts, and
    summary.json cannot be written either."""
    code, out, err, run_dir = launch_on_tmpfs(32, full=True)
    assert code == 1, err
    assert not (run_dir / "summary.json").exists()
    last = err.strip().splitlines()[-1]  # (in a namespace, run_dir is the copy out of it)
    assert last.startswith("error: the launcher could not write /"), err
    assert last.endswith(
        f"{run_dir.name}/summary.json: [Errno 28] No space left on device; this run's outcome "
        "is only what is printed here"
    )
    assert "Traceback" not in err
    assert "run failed: the launcher could not write /" in err
    assert f"{run_dir.name}/.outcome-reserve: [Errno 28] No space left on device" in err
    assert "failed" in out  # the table, from memory, says so too
