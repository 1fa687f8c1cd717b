"""benchmarks/: a small library (benchmark_utils, instruments, protocol)
and scripts that import it, never each other."""

import ast
import glob
import os

import pytest

from benchmark_test_utils import BENCHMARKS, load_benchmark

LIBRARY = {"benchmark_utils", "instruments", "protocol"}


def is_script(path):
    return 'if __name__ == "__main__":' in open(path).read()


def imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_benchmark_script_imports_another():
    paths = sorted(glob.glob(os.path.join(BENCHMARKS, "*.py")))
    modules = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    scripts = {name for name, path in modules.items() if is_script(path)}
    assert {"growth_vs_scratch", "growth_vs_scratch_v2", "step_time"} <= scripts
    assert not LIBRARY & scripts, "the library modules are not scripts"
    assert set(modules) == scripts | LIBRARY, "every other file is a script"
    offenders = {
        name: sorted(imported_modules(path) & scripts)
        for name, path in modules.items()
        if imported_modules(path) & scripts
    }
    assert offenders == {}


def test_width_and_depth_splits():
    protocol = load_benchmark("protocol")
    config = dict(hidden_dim=64, num_heads=4, intermediate_dim=128, num_layers=4)
    assert protocol.divide_width(config, 2) == dict(
        hidden_dim=32, num_heads=2, intermediate_dim=64, num_layers=4
    )
    assert protocol.halve_depth(config)["num_layers"] == 2
    with pytest.raises(ValueError, match="num_heads=4 does not split into 8 models"):
        protocol.divide_width(config, 8)
    with pytest.raises(ValueError, match="num_layers=3 does not halve"):
        protocol.halve_depth(dict(config, num_layers=3))
