"""The documentation holds together: links resolve, the README's commands are
the ones CI and the Makefile know, the README's examples run, and every result
in benchmarks/results/ is cited."""

import glob
import itertools
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", "benchmarks/README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)

# A fence opens at the start of a line; fences indented inside list items are
# not used in these files.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title".
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
SHELL = ("", "sh", "shell", "bash", "console")


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def fenced_blocks(text):
    """(language, body) of every fenced code block, in order."""
    return [(language.strip(), body) for language, body in FENCE.findall(text)]


def links(text):
    """Link and image targets outside code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(prose)


def shell_commands(text):
    """Commands of the shell blocks, in order, comments dropped."""
    for language, body in fenced_blocks(text):
        if language in SHELL:
            for line in body.splitlines():
                command = line.split("#", 1)[0].strip()
                if command:
                    yield command


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_point_at_files(document):
    base = os.path.dirname(os.path.join(ROOT, document))
    broken = []
    for target in links(read(document)):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = target.split("#", 1)[0]
        if not os.path.exists(os.path.normpath(os.path.join(base, path))):
            broken.append(target)
    assert not broken, f"{document}: links to missing files: {broken}"


def test_documents_are_found_and_linked_from_the_readme():
    assert len(DOCUMENTS) > 2
    readme_links = {target.split("#", 1)[0] for target in links(read("README.md"))}
    assert set(DOCUMENTS) - {"README.md"} <= readme_links


def test_readme_starts_with_make_demo_and_make_test():
    assert list(itertools.islice(shell_commands(read("README.md")), 2)) == [
        "make demo",
        "make test",
    ]
    makefile = read("Makefile")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    # CI runs the README's test command.
    ci = [line.split("#", 1)[0].strip() for line in read(".ci/run").splitlines()]
    assert any(line.startswith("make test") for line in ci)


def readme_python_blocks():
    return [body for language, body in fenced_blocks(read("README.md")) if language == "python"]


def test_readme_example_runs():
    namespace = {}
    exec(compile(readme_python_blocks()[0], "README.md example", "exec"), namespace)
    assert namespace["fused"].backbone.hidden_dim == 32


@pytest.mark.slow
def test_readme_growth_example_runs():
    first, second = readme_python_blocks()[:2]
    namespace = {}
    exec(compile(first, "README.md example", "exec"), namespace)
    exec(compile(second, "README.md growth example", "exec"), namespace)
    assert namespace["model"].backbone.num_layers == 4


def result_stems(folder):
    """The results in `folder`: file names without their extension, and a
    parts folder `NAME.parts` as `NAME`."""
    stems = set()
    for entry in os.listdir(os.path.join(ROOT, folder)):
        is_folder = os.path.isdir(os.path.join(ROOT, folder, entry))
        if entry == "README.md" or (is_folder and not entry.endswith(".parts")):
            continue  # the README itself, and old_initialisation/
        stems.add(entry.rsplit(".", 1)[0])
    return stems


def test_every_result_is_cited():
    # Issue 21: benchmarks/results/ holds only results the documents cite; a
    # stem counts as named where no letter, digit or underscore adjoins it, so
    # `growth_vs_scratch_v2` is not named by `growth_vs_scratch_v2_32k`.
    text = "\n".join(read(document) for document in DOCUMENTS)
    uncited = [
        stem
        for stem in sorted(result_stems("benchmarks/results"))
        if not re.search(rf"(?<!\w){re.escape(stem)}(?!\w)", text)
    ]
    assert not uncited, f"results no document names: {uncited}"


def test_old_results_have_a_readme():
    # The runs measured before the initialisation fix live in one folder
    # whose README says what they were and why they no longer count.
    old = "benchmarks/results/old_initialisation"
    assert "no longer counted" in read(f"{old}/README.md")
    assert result_stems(old)
