"""What machine the figures come from, and how busy it was with other work meanwhile."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from report import Table

PACKAGES = ("torch", "numpy", "msgpack", "uvloop", "dlactor")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


@dataclass(frozen=True)
class CpuTimes:
    """Machine-wide CPU seconds (from /proc/stat) and this process tree's own (os.times)."""

    busy: float  # user + nice + system, all cores
    steal: float
    ours: float  # this process and every child it has waited for

    @classmethod
    def now(cls) -> CpuTimes:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return cls((user + nice + system) / tick, steal / tick, ours)


def others_cpu(before: CpuTimes, after: CpuTimes) -> tuple[float, float]:
    """CPU seconds used by processes outside this benchmark meanwhile, and stolen seconds."""
    busy = after.busy - before.busy
    ours = after.ours - before.ours
    return max(0.0, busy - ours), after.steal - before.steal


def machine_table(started: datetime) -> Table:
    table = Table(["", ""])
    table.add("CPU", cpu_model())
    table.add("cores (logical)", str(os.cpu_count()))
    table.add("memory", f"{mem_total_bytes() / 2**30:.1f} GiB")
    table.add("OS", platform.platform())
    table.add("Python", platform.python_version())
    for name in PACKAGES:
        table.add(name, package_version(name))
    table.add("date", started.isoformat(timespec="seconds"))
    return table


def load_text(before: CpuTimes, after: CpuTimes, wall_s: float, load: tuple[float, ...]) -> str:
    """A sentence on how much other work shared the machine during the run."""
    others, steal = others_cpu(before, after)
    cores = os.cpu_count() or 1
    share = others / (wall_s * cores)
    text = (
        f"Other processes used {others:.1f} CPU-seconds while this ran "
        f"({share:.0%} of the machine's {cores} cores over {wall_s:.0f} s; approximate: kernel "
        f"time not charged to a process counts as theirs); {steal:.1f} s were stolen by the "
        f"hypervisor. Load average at the start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
    )
    if share > 0.1 or steal > 0.05 * wall_s * cores:
        text += " **The machine was shared: treat the figures below as noisy.**"
    return text
