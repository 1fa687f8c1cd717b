"""The package itself: submodules as attributes, and what importing it changes."""

import ast
import json
import os
import subprocess
import sys

import pytest

import keras_fusion as kf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", kf.SUBMODULES)
def test_every_submodule_is_an_attribute(name):
    module = getattr(kf, name)
    assert module.__name__ == f"keras_fusion.{name}"
    assert name in dir(kf)


def test_every_module_of_the_package_is_listed():
    package = os.path.join(ROOT, "keras_fusion")
    modules = {e[:-3] for e in os.listdir(package) if e.endswith(".py") and not e.startswith("_")}
    packages = {
        e for e in os.listdir(package) if os.path.isfile(os.path.join(package, e, "__init__.py"))
    }
    assert modules | packages == set(kf.SUBMODULES)


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        kf.nonexistent  # noqa: B018


def test_importing_the_package_changes_only_what_its_docstring_says():
    """In a fresh process: KERAS_BACKEND is set only when unset, nothing else
    in the environment changes, and of the warnings filters only the one for
    keras-hub's mask warning is added (once TensorFlow, Keras and keras-hub,
    which add their own, are imported)."""
    script = (
        "import json, os, warnings\n"
        "before_env = dict(os.environ)\n"
        "import tensorflow, keras, keras_hub\n"
        "before_filters = list(warnings.filters)\n"
        "import keras_fusion\n"
        "after = dict(os.environ)\n"
        "changed = {k: after.get(k) for k in set(before_env) | set(after) "
        "if before_env.get(k) != after.get(k)}\n"
        "added = [getattr(f[1], 'pattern', None) "
        "for f in warnings.filters if f not in before_filters]\n"
        "print(json.dumps({'changed': changed, 'added': added, "
        "'backend': keras.backend.backend()}))\n"
    )
    for preset, expected in [(None, {"KERAS_BACKEND": "tensorflow"}), ("tensorflow", {})]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")
        }
        if preset:
            env["KERAS_BACKEND"] = preset
        process = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert process.returncode == 0, process.stderr[-2000:]
        result = json.loads(process.stdout.strip().splitlines()[-1])
        assert result["changed"] == expected and result["backend"] == "tensorflow"
        assert result["added"] == [kf.KERAS_HUB_MASK_WARNING]


def first_party_imports(path):
    """`(module imported, line, inside a function)` for each keras_fusion import in a file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "keras_fusion":
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                if (child.module or "").split(".")[0] == "keras_fusion":
                    for alias in child.names:  # a submodule, else the module itself
                        sub = f"{child.module}.{alias.name}"
                        target = sub if module_file(sub) else child.module
                        found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def module_file(name):
    base = os.path.join(ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def package_modules():
    names = []
    for folder, _, files in os.walk(os.path.join(ROOT, "keras_fusion")):
        for name in files:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
                names.append(relative.replace(os.sep, ".").removesuffix(".__init__"))
    return sorted(names)


def test_no_first_party_import_inside_a_function():
    inside = [
        f"{module}:{line} imports {target}"
        for module in package_modules()
        for target, line, in_function in first_party_imports(module_file(module))
        if in_function
    ]
    assert not inside, inside


def test_imports_run_one_way():
    """No import cycles between keras_fusion's modules, and utils/ (the
    checkpoint formats) imports nothing from models/ (the models import it)."""
    graph = {
        module: {t for t, _, _ in first_party_imports(module_file(module)) if t != module}
        for module in package_modules()
    }
    for module, targets in graph.items():
        if module.startswith("keras_fusion.utils"):
            assert not [t for t in targets if t.startswith("keras_fusion.models")], module
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
