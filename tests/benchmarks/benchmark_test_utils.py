"""Import a benchmark script (benchmarks/ is no package) as a module for its tests."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_benchmark(name):
    """The module of `benchmarks/<name>.py`, with `benchmarks/` importable."""
    script = os.path.join(ROOT, "benchmarks", f"{name}.py")
    sys.path.insert(0, os.path.dirname(script))
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
