"""Memory of a whole run: PSS (proportional set size) summed over its processes.

PSS splits each shared page among the processes that map it, so the sum is the real
footprint of N forked nodes; RSS would count the shared template N times.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "MMAP_THRESHOLD",
    "MemorySampler",
    "ResidentMemory",
    "TRIM_THRESHOLD",
    "pss_bytes",
    "release_freed_memory",
    "rollup",
    "set_malloc_thresholds",
]

#: Allocations of at least this many bytes get their own mmap from glibc (see
#: :func:`set_malloc_thresholds`): frame bodies up to 64 MiB (16 M float32 parameters)
#: are served from the heap and reused.
MMAP_THRESHOLD = 64 << 20
#: Free memory at the top of the heap that glibc keeps instead of returning it at once:
#: twice the mmap threshold, the ratio glibc's own dynamic thresholds keep.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: The largest M_MMAP_THRESHOLD glibc before 2.35 accepts on 64-bit (HEAP_MAX_SIZE / 2).
_OLD_GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


def _libc_function(name: str) -> Callable[..., int] | None:
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    return getattr(libc, name, None)  # glibc only


_MALLOC_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")


class ResidentMemory:
    """This process's resident memory (RSS), read once per round by a node for its record.

    On Linux from ``/proc/self/statm`` through a descriptor kept open: one ``pread``, where
    psutil opens, reads and closes the file each time (0.7 against 6.3 µs, measured warm
    with ``timeit``); elsewhere from psutil. Both give resident pages times the page size.
    """

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._fd = -1
        self._open()

    def _open(self) -> None:
        """Open this process's statm (psutil where there is none)."""
        self._pid = os.getpid()
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            import psutil

            self._process = psutil.Process()

    def bytes(self) -> int:
        if self._pid != os.getpid():  # made before a fork: /proc/self was the parent's
            self.close()
            self._open()
        if self._fd < 0:
            return int(self._process.memory_info().rss)
        return int(os.pread(self._fd, 128, 0).split(maxsplit=2)[1]) * self._page

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def release_freed_memory() -> None:
    """Hand memory freed by a big temporary computation back to the OS.

    glibc keeps freed heap pages for reuse; in one process that is cheap, but times 64 or
    1024 node processes it is most of a run's memory (measured: about 45 MB per node after an
    evaluation pass). ``malloc_trim(0)`` returns them; elsewhere this does nothing.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def set_malloc_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> int:
    """Keep freed frame bodies on the heap for the next frame; a node calls this at start.

    glibc serves every allocation of at least its mmap threshold with a fresh ``mmap`` and
    unmaps it when freed. The threshold adapts to the blocks a process frees, but never
    beyond 32 MiB: every body of a frame over 32 MiB was mapped, faulted in page by page
    while the kernel copied the frame into it, and unmapped again (8,193 page faults per
    32 MB frame; the transport benchmark moved 25% of its ceiling). Fixing the threshold at
    ``mmap_threshold`` serves such bodies from the heap, where the next frame reuses the
    pages. Setting it turns glibc's adaptation off, so the trim threshold (free memory kept
    at the top of the heap) is set too, or the heap would shrink after every frame.

    One malloc arena serves every thread (``M_ARENA_MAX`` 1): a node's threads take turns
    (the loop, and one thread for training), and a second arena is a second heap of free
    chunks kept per process, times every node of a run.

    Returns the mmap threshold now in force: ``mmap_threshold``, or 32 MiB on a glibc older
    than 2.35 that refuses more; 0 without glibc, where this does nothing.
    """
    if _MALLOPT is None:
        return 0
    _MALLOPT(_M_ARENA_MAX, 1)
    applied = mmap_threshold
    if not _MALLOPT(_M_MMAP_THRESHOLD, applied):
        applied = min(mmap_threshold, _OLD_GLIBC_MAX_MMAP_THRESHOLD)
        if not _MALLOPT(_M_MMAP_THRESHOLD, applied):
            return 0
    _MALLOPT(_M_TRIM_THRESHOLD, max(trim_threshold, applied))
    return applied


def rollup(pid: int) -> dict[str, int]:
    """A process's /proc/<pid>/smaps_rollup in bytes by field ({} where unavailable)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def pss_bytes(pid: int) -> int:
    """PSS of one process in bytes (0 where smaps_rollup is unavailable)."""
    return rollup(pid).get("Pss", 0)


class MemorySampler:
    """Samples the total PSS of some processes (and this one) until told to stop. (Not RSS:
    summed over forked nodes it counts the shared template once per node.)

    ``pids`` is asked at every sample: a backend may learn its processes' pids as they
    start (Ray workers report theirs), and only processes on this machine can be read.
    ``templates`` are processes that are read at every sample, never extrapolated from
    (Ray agents: each is its machine's template, unlike the nodes).
    """

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        *,
        interval_s: float = 1.0,
        templates: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.pids = pids
        self.templates = templates
        self.interval_s = interval_s
        self.peak_pss = 0

    #: Reading one process's smaps costs ~8 ms of CPU here; 1024 busy nodes cannot all be
    #: read every second (one full sample took 35 s at 256 nodes and the peak was missed by
    #: a factor of 6), so beyond this many nodes an evenly spread subset is read and the
    #: nodes' total extrapolated from its mean. Forked nodes differ little (USS 15-16 MiB).
    MAX_READ = 32

    def sample(self) -> int:
        own = {os.getpid(), *(self.templates() if self.templates is not None else ())}
        nodes = sorted(set(self.pids()) - own)
        step = max(1, -(-len(nodes) // self.MAX_READ))  # ceil: at most MAX_READ are read
        read = [pss_bytes(p) for p in nodes[::step]]  # every node when there are few
        pss = sum(pss_bytes(p) for p in own)
        pss += sum(read) * len(nodes) // len(read) if read else 0
        self.peak_pss = max(self.peak_pss, pss)
        return pss

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            try:
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()
            except TimeoutError:
                pass
