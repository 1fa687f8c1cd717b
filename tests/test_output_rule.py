"""Where keras_fusion writes: a run's progress is printed, everything else
is logged.

The rule (docs/development.md, "Output"): `print` is for the lines a user
watches while a run trains, as Keras' own `fit` progress is printed: the
steps `training` times and the growth lines of `GrowthCallback`. Decisions
taken inside the library (a cached tokenizer, a refused preparation, a
skipped checkpoint, a lease not renewed) go to absl logging, where a
program chooses their level. This test keeps new code to it.
"""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRINTING = {"keras_fusion/training.py", "keras_fusion/callbacks.py"}


def calls(path, name):
    tree = ast.parse(open(path).read())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


def test_only_the_run_and_the_growth_callback_print():
    printing = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "keras_fusion", "**", "*.py"), recursive=True)):
        relative = os.path.relpath(path, ROOT)
        lines = calls(path, "print")
        if lines:
            printing[relative] = lines
    assert set(printing) == PRINTING, printing


def test_the_printing_modules_do_not_also_log():
    for relative in PRINTING:
        source = open(os.path.join(ROOT, relative)).read()
        assert "from absl import logging" not in source, relative
