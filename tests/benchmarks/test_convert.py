"""The measurement of benchmarks/convert.py: peak memory and time of one operation."""

import numpy as np

from benchmark_test_utils import load_benchmark

bench = load_benchmark("convert")


def test_measure_sees_a_transient_allocation_of_known_size():
    size = 64 * 1024 * 1024

    def allocate_and_free():
        block = np.ones(size, "uint8")  # touched, so resident
        return int(block[::4096].sum())

    result, figures = bench._measure(allocate_and_free)
    assert result == size // 4096
    assert figures["seconds"] > 0
    if figures["peak_reset"]:
        # The peak includes the freed block, within a few MiB either way
        # (pages the allocator reuses or frees around it).
        slack = 8 * 1024 * 1024
        assert size - slack <= figures["peak_extra_bytes"] <= size + 4 * slack


def test_summary_takes_the_median():
    runs = [{"seconds": 3.0}, {"seconds": 1.0}, {"seconds": 2.0}]
    assert bench.summary(runs, "seconds") == {"median": 2.0, "min": 1.0, "all": [3.0, 1.0, 2.0]}
