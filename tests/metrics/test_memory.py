"""A node's malloc settings: big frame bodies are reused from the heap, not mapped anew."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from dlactor.metrics import memory
from dlactor.metrics.memory import MMAP_THRESHOLD, TRIM_THRESHOLD, set_malloc_thresholds

# Runs in a fresh interpreter: the thresholds are process-wide and must not leak into the
# test session. A bytearray is zero-filled by memset, so allocating one touches every page:
# the minor faults count the pages that were not already mapped.
FAULTS_PER_BLOCK = textwrap.dedent(
    """
    import resource
    from dlactor.metrics.memory import set_malloc_thresholds

    def faults(nbytes):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(nbytes)
        del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    size = 48 << 20  # over the 32 MiB that glibc's own threshold never goes beyond
    faults(size)
    default = faults(size)
    applied = set_malloc_thresholds()
    faults(size)
    print(default, faults(size), applied)
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_after_set_malloc_thresholds_a_freed_48_mib_block_is_reused_without_page_faults() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_BLOCK], capture_output=True, text=True, check=True
    ).stdout
    default, tuned, applied = (int(word) for word in out.split())

    assert default > 10_000, "glibc's default maps every 48 MiB block afresh"
    assert tuned < 100, f"the block was mapped again ({tuned} page faults)"
    assert applied == MMAP_THRESHOLD


# Threads that allocate (blocks of 200 KB: glibc's malloc, not Python's small-object pool),
# then glibc's own count of its arenas (malloc_stats writes "Arena N:" to stderr).
ARENAS_AFTER_THREADS = textwrap.dedent(
    """
    import ctypes, sys, threading
    from dlactor.metrics.memory import set_malloc_thresholds

    if sys.argv[1] == "set":
        set_malloc_thresholds()
    kept = []
    def allocate():
        kept.append(bytearray(200_000))
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
def test_after_set_malloc_thresholds_every_thread_allocates_from_one_arena() -> None:
    def arenas(mode: str) -> int:
        err = subprocess.run(
            [sys.executable, "-c", ARENAS_AFTER_THREADS, mode],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
        return err.count("Arena ")

    assert arenas("default") > 1, "glibc gives threads arenas of their own by default"
    assert arenas("set") == 1


def test_set_malloc_thresholds_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_MALLOPT", None)

    assert set_malloc_thresholds() == 0


def test_a_glibc_that_refuses_a_threshold_over_32_mib_gets_32_mib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []

    def old_glibc_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return int(param != -3 or value <= 32 << 20)

    monkeypatch.setattr(memory, "_MALLOPT", old_glibc_mallopt)

    assert set_malloc_thresholds() == 32 << 20
    assert calls == [(-8, 1), (-3, MMAP_THRESHOLD), (-3, 32 << 20), (-1, TRIM_THRESHOLD)]


def test_the_sampler_reads_every_node_of_a_small_run(monkeypatch: pytest.MonkeyPatch) -> None:

    read: list[int] = []
    monkeypatch.setattr(memory, "pss_bytes", lambda pid: read.append(pid) or pid)
    own = os.getpid()
    total = memory.MemorySampler(lambda: [10, 20, 30]).sample()
    assert total == own + 60 and sorted(read) == sorted([own, 10, 20, 30])


def test_the_sampler_extrapolates_a_big_run_from_a_spread_subset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    read: list[int] = []
    monkeypatch.setattr(memory, "pss_bytes", lambda pid: read.append(pid) or 100)
    # pids above Linux's largest (2**22): none of them is this process's own
    sampler = memory.MemorySampler(lambda: range(1 << 23, (1 << 23) + 1024))
    assert sampler.sample() == 100 + 1024 * 100
    assert len(read) == 1 + memory.MemorySampler.MAX_READ
    assert sampler.peak_pss == 100 + 1024 * 100


def test_the_sampler_reads_every_template_and_extrapolates_only_over_the_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's agents are templates: a big one counted as one node of a spread subset would be
    multiplied by the stride (or left out)."""
    sizes = {7: 300}  # the one template: 300
    monkeypatch.setattr(memory, "pss_bytes", lambda pid: sizes.get(pid, 10))
    nodes = range(1 << 23, (1 << 23) + 1024)
    sampler = memory.MemorySampler(lambda: [7, *nodes], templates=lambda: [7])
    assert sampler.sample() == 10 + 300 + 1024 * 10  # this process, the template, the nodes


def test_resident_memory_reads_what_psutil_reads() -> None:
    """The kept-open /proc/self/statm and psutil give this process's RSS alike, and a
    megabyte touched shows in the next read."""
    import psutil

    rss = memory.ResidentMemory()
    try:
        before = rss.bytes()
        assert abs(before - psutil.Process().memory_info().rss) < 1 << 20
        block = bytearray(32 << 20)  # zero pages touched on write below
        for i in range(0, len(block), 4096):
            block[i] = 1
        assert rss.bytes() - before > 16 << 20
        del block
    finally:
        rss.close()
    rss.close()  # twice is harmless


def test_resident_memory_made_before_a_fork_reads_the_child_in_the_child() -> None:
    rss = memory.ResidentMemory()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: grow by 64 MiB, then say what it and psutil read
        import psutil

        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        os.write(write, f"{rss.bytes()} {psutil.Process().memory_info().rss}".encode())
        os._exit(0)
    os.close(write)
    ours, psutils = map(int, os.read(read, 64).split())
    os.close(read)
    os.waitpid(pid, 0)
    assert abs(ours - psutils) < 1 << 20
    rss.close()


def test_resident_memory_without_procfs(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    def no_procfs(*args: object, **kwargs: object) -> int:
        raise FileNotFoundError("/proc/self/statm")

    monkeypatch.setattr(memory.os, "open", no_procfs)
    rss = memory.ResidentMemory()
    assert abs(rss.bytes() - psutil.Process().memory_info().rss) < 1 << 20
