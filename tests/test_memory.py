"""keras_fusion.memory: freed pages go back to the system where glibc allows it."""

import ctypes.util

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
