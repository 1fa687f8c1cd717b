"""Memory release after a growth: give freed pages back to the system.

```python
from keras_fusion import memory

memory.retain_freed_memory()  # once, at the start of a training script
memory.release_free_memory()  # after dropping a large model
```
"""

import ctypes
import ctypes.util
import functools
import platform


def release_free_memory():
    """Hand the allocator's free pages back to the system (glibc only).

    The grown model is built (prepared ahead) in another thread, whose
    allocations come from another malloc arena, and large freed blocks raise
    glibc's mmap threshold, so the memory of a replaced model, once freed,
    stays in the process as free heap pages: after five growths resident
    memory was 1.24x that of the final model built directly, against 1.07x
    after `malloc_trim(0)` (`benchmarks/growth_memory.py`). A no-op where
    there is no glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
RETAINED_TOP_PAD = 64 << 20  # bytes kept at the top of a heap when it shrinks
MAX_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def retain_freed_memory():
    """Keep freed memory in the process between training steps (glibc only).

    TensorFlow's CPU runtime allocates its step buffers with malloc and frees
    them after every step. By default glibc serves blocks over its mmap
    threshold with fresh `mmap`s and gives the top of a heap back to the
    kernel once it is free, so every step maps the same memory again and
    touches it page by page. On the 2-core VMs these benchmarks run on that
    cost about 75,000 page faults a second and a quarter of the CPU in the
    kernel while training a 4-layer, 64-wide T5 with XLA; after this call,
    about 1,500 (`benchmarks/README.md`, "Process set-up").

    It sets three of malloc's parameters with `mallopt`: large blocks come
    from the heap, not from `mmap` (`M_MMAP_MAX=0`); a heap is not trimmed
    automatically (`M_TRIM_THRESHOLD`); and a heap that grows keeps 64 MiB
    spare (`M_TOP_PAD`). The cost is resident memory: the process keeps its
    peak. `release_free_memory()` still hands free pages back when asked
    (after a growth, say). The setting is process-wide and applies to
    allocations made after the call, so call it once, early, in a script's
    `main` rather than from library code; `tools/train.py` and the
    benchmarks do (`--noretain_freed_memory` turns it off in the tool).

    Returns:
        True where the parameters were set, False where there is no glibc
        (macOS, musl), which changes nothing.

    Example:

    ```python
    from keras_fusion import memory

    if memory.retain_freed_memory():
        print("glibc will keep freed memory for the next step")
    ```
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    settings = (
        (M_MMAP_MAX, 0),
        (M_TRIM_THRESHOLD, MAX_TRIM_THRESHOLD),
        (M_TOP_PAD, RETAINED_TOP_PAD),
    )
    # mallopt returns 1 on success, 0 on error.
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


@functools.cache
def _mallopt():
    """glibc's `mallopt`, or None where there is none (or it is not glibc's)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    return _c_function("mallopt", [ctypes.c_int, ctypes.c_int])


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where there is none."""
    return _c_function("malloc_trim", [ctypes.c_size_t])


def _c_function(name, argtypes):
    """The C library's function `name` returning an int, or None where there is none."""
    library = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(library), name, None) if library else None
    except OSError:
        return None
    if function is not None:
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
