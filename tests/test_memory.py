"""keras_fusion.memory: freed pages go back to the system where glibc allows it."""

import ctypes.util
import os
import platform
import subprocess
import sys

import pytest

from keras_fusion import memory


def test_release_free_memory_returns_without_error():
    assert memory.release_free_memory() is None


@pytest.mark.skipif(
    ctypes.util.find_library("c") is None, reason="no C library to load malloc_trim from"
)
def test_malloc_trim_is_found_on_glibc():
    trim = memory._malloc_trim()
    assert callable(trim)
    # malloc_trim(0) returns 1 when it released memory, 0 when there was none.
    assert trim(0) in (0, 1)


# A fresh process allocates, touches and frees a 64 MiB block (above glibc's
# largest automatic mmap threshold, 32 MiB) over and over, and counts its minor
# page faults. The setting is process-wide, so it never runs in pytest's own.
REUSE_PROGRAM = """
import ctypes, resource, sys
from keras_fusion import memory
retained = memory.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, rounds = 64 << 20, 16
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(retained, after - before, size // resource.getpagesize(), rounds)
"""


def _block_reuse_faults(mode):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    output = subprocess.run(
        [sys.executable, "-c", REUSE_PROGRAM, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()
    return output[0], int(output[1]), int(output[2]), int(output[3])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_freed_memory_stops_refaulting_a_reused_block():
    _, default_faults, pages, rounds = _block_reuse_faults("default")
    retained, retained_faults, _, _ = _block_reuse_faults("retain")
    # By default every round maps the block afresh and faults in each page.
    assert default_faults >= pages * (rounds - 1)
    # Retained, the block is faulted in once and then reused from the heap.
    assert retained == "True"
    assert retained_faults <= 2 * pages


def test_retain_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    memory._mallopt.cache_clear()
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))
    try:
        assert memory.retain_freed_memory() is False
    finally:
        memory._mallopt.cache_clear()
