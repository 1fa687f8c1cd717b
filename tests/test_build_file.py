"""BUILD declares every library file and a py_test for every test file."""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_build():
    """Evaluate BUILD (a Starlark subset of Python) and collect its rules."""
    rules = []

    def rule(kind):
        return lambda **kwargs: rules.append(dict(kwargs, kind=kind))

    namespace = {
        "py_library": rule("py_library"),
        "py_test": rule("py_test"),
        "package": lambda **kwargs: None,
    }
    with open(os.path.join(ROOT, "BUILD")) as f:
        exec(compile(f.read(), "BUILD", "exec"), namespace)
    return rules


def files(pattern):
    return sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )


def test_library_lists_every_package_file():
    (library,) = [r for r in load_build() if r["name"] == "keras_fusion"]
    assert sorted(library["srcs"]) == files("keras_fusion/**/*.py")


def test_one_py_test_per_test_file():
    rules = load_build()
    tests = [r for r in rules if r["kind"] == "py_test"]
    declared = sorted(src for r in tests for src in r["srcs"])
    assert declared == files("tests/**/test_*.py")
    for r in tests:
        (src,) = r["srcs"]
        assert r["name"] == os.path.splitext(os.path.basename(src))[0]
        assert r["deps"], r["name"]


def test_names_are_unique_and_deps_exist():
    rules = load_build()
    names = [r["name"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        for dep in r.get("deps", []):
            assert dep.lstrip(":") in names, (r["name"], dep)
    helpers = [r for r in rules if r["name"] == "test_utils"][0]
    expected = sorted(set(files("tests/**/*.py")) - set(files("tests/**/test_*.py")))
    assert sorted(helpers["srcs"]) == expected


def test_tools_are_declared():
    (tools,) = [r for r in load_build() if r["name"] == "tools"]
    assert sorted(tools["srcs"]) == files("tools/*.py")


def test_benchmarks_are_declared():
    (benchmarks,) = [r for r in load_build() if r["name"] == "benchmarks"]
    assert sorted(benchmarks["srcs"]) == files("benchmarks/*.py")
