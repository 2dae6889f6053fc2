"""Really small filesystems, for tests of what a full disk does.

As root (here and in CI) a tmpfs of a few pages is mounted for the test and unmounted after
it, always. Otherwise a command can run in a private mount namespace of its own
(``unshare --user --map-root-user --mount``), with the tmpfs mounted inside it. Where
neither works, ``mount_mode`` skips the test saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["PAGE", "fill", "mount_mode", "mounted_tmpfs", "unshare_prefix"]

PAGE = os.sysconf("SC_PAGE_SIZE")
_UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def _mount(path: Path, size: int) -> subprocess.CompletedProcess[str]:
    options = f"size={size},mode=0755"
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def mount_mode(probe: Path) -> str:
    """How this process can have a tmpfs: "mount" (root: here and in CI) or "unshare" (a
    private mount namespace per command). Neither: the test is skipped, saying why.
    ``probe``, an empty directory, is where mounting is tried."""
    probe.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and _mount(probe, PAGE).returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
        return "mount"
    try_it = [*_UNSHARE, "sh", "-c", f"mount -t tmpfs -o size={PAGE} tmpfs {probe}"]
    if shutil.which("unshare") and subprocess.run(try_it, capture_output=True).returncode == 0:
        return "unshare"
    pytest.skip(
        f"cannot mount a tmpfs: uid {os.geteuid()} may not mount (not root, or no "
        "CAP_SYS_ADMIN) and `unshare --user --map-root-user --mount` is not allowed here"
    )


@contextmanager
def mounted_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes at ``path`` (created), unmounted on the way out whatever
    happened (lazily, if something still holds it open)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = _mount(path, size)
    if mounted.returncode != 0:
        raise RuntimeError(f"mount -t tmpfs at {path} failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def unshare_prefix(path: Path, size: int, *, full: bool = False) -> list[str]:
    """A command prefix that runs the command after it in a private mount namespace with a
    tmpfs of ``size`` bytes at ``path`` (``full``: filled first), then copies ``path`` to
    ``path.with_suffix(".copy")`` (the tmpfs ends with the namespace) and exits with the
    command's code."""
    fill_it = f"head -c {size} /dev/zero > {path}/filler 2>/dev/null;" if full else ""
    script = (
        f"mount -t tmpfs -o size={size},mode=0755 tmpfs {path} || exit 99; {fill_it}"
        f'"$@"; rc=$?; cp -a {path} {path.with_suffix(".copy")}; exit $rc'
    )
    return [*_UNSHARE, "sh", "-c", script, "sh"]


def fill(path: Path) -> int:
    """Fill the filesystem of directory ``path`` to the last byte (``filler``); bytes
    written."""
    total, chunk = 0, 1 << 20
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while chunk:
            try:
                total += os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)
    return total
