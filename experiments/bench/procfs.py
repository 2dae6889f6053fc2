"""Small, fast readers of /proc for the end-to-end benchmark's sampler (Linux only).

Each reader does one read of one small file and parses only the fields it needs: at 1024
node processes on 2 busy cores, every microsecond per process counts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: /proc/meminfo fields the memory section reports (kB in the file, bytes here).
MEMINFO_FIELDS = {
    b"MemAvailable": "available",
    b"PageTables": "page_tables",
    b"KernelStack": "kernel_stack",
    b"Slab": "slab",
}


def _read(path: str) -> bytes:
    """One file's content, or b"" if it (or its process) is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


@dataclass(frozen=True)
class MemInfo:
    """The machine's available memory and three kinds of kernel memory, in bytes."""

    available: int
    page_tables: int
    kernel_stack: int
    slab: int

    @classmethod
    def now(cls) -> MemInfo:
        values = dict.fromkeys(MEMINFO_FIELDS.values(), 0)
        for line in _read("/proc/meminfo").splitlines():
            key, _, rest = line.partition(b":")
            name = MEMINFO_FIELDS.get(key)
            if name is not None:
                values[name] = int(rest.split()[0]) * 1024
        return cls(**values)


@dataclass(frozen=True)
class Mem:
    """One process's proportional (PSS), proportional anonymous, and unique (USS) set size."""

    pss: int
    pss_anon: int
    uss: int

    @classmethod
    def of(cls, pid: int) -> Mem | None:
        """From /proc/<pid>/smaps_rollup (the kernel walks the whole address space for it:
        ~1-5 ms for a torch-laden process), or None if the process is gone."""
        fields: dict[bytes, int] = {}
        for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
            if line.startswith((b"Pss:", b"Pss_Anon:", b"Private_")):
                key, _, rest = line.partition(b":")
                fields[key] = int(rest.split()[0]) * 1024
        if b"Pss" not in fields:
            return None
        uss = fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0)
        return cls(fields[b"Pss"], fields.get(b"Pss_Anon", 0), uss)


@dataclass(frozen=True)
class Stat:
    """From /proc/<pid>/stat: scheduler state, CPU seconds used, and when it was created
    (seconds since boot, the clock of ``time.CLOCK_BOOTTIME``, to 1/CLK_TCK s)."""

    state: str
    cpu_s: float
    start_s: float
    minor_faults: int  # pages it touched that were not yet its own: copy-on-write or fresh

    @classmethod
    def of(cls, pid: int) -> Stat | None:
        text = _read(f"/proc/{pid}/stat")
        if not text:
            return None
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = text[text.rindex(b")") + 2 :].split()
        utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
        cpu = (utime + stime) / CLK_TCK
        return cls(fields[0].decode(), cpu, start / CLK_TCK, int(fields[7]))


@dataclass(frozen=True)
class SchedStat:
    """From /proc/<pid>/schedstat, for a process's main thread only: seconds on a CPU, and
    seconds runnable but waiting for one (the run-queue delay)."""

    run_s: float
    wait_s: float

    @classmethod
    def of(cls, pid: int) -> SchedStat | None:
        fields = _read(f"/proc/{pid}/schedstat").split()
        if len(fields) < 2:
            return None
        return cls(int(fields[0]) / 1e9, int(fields[1]) / 1e9)


def threads_cpu_s(pid: int, tids: list[int]) -> dict[int, float]:
    """CPU seconds of each of threads ``tids`` of ``pid`` that still exists, to the
    nanosecond (its /proc/<pid>/task/<tid>/schedstat). /proc/<pid>/stat counts in whole ticks
    of 1/CLK_TCK s (10 ms) and truncates: a node that has used 9 ms reads 0 there."""
    out = {}
    for tid in tids:
        fields = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
        if fields:
            out[tid] = int(fields[0]) / 1e9
    return out


def threads(pid: int) -> list[int]:
    """The ids of ``pid``'s threads now (none if it is gone)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The processes ``pid``'s main thread forked that still exist, oldest first
    (/proc/<pid>/task/<pid>/children; the local launcher forks from its main thread)."""
    return [int(x) for x in _read(f"/proc/{pid}/task/{pid}/children").split()]


def boot_clock() -> float:
    """Now, on the clock that /proc/<pid>/stat's start times use."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
