"""Corpora: the embedded text, local files, TFDS (offline only), and their errors."""

import ast
import email
import gc
import hashlib
import inspect
import json
import os
import pydoc_data.topics
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from keras_fusion.data import (
    LocalText,
    corpus,
    embedded_corpus,
    load_corpus,
    local_text_builder,
    read_text_files,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def text_files(tmp_path):
    """Two files of 40 distinct paragraphs each, blank lines of several kinds."""
    paragraphs = [
        f"Paragraph {i} of the test corpus.\nIts second line, {i * i}." for i in range(80)
    ]
    write(tmp_path / "a.txt", "\n\n".join(paragraphs[:40]) + "\n")
    write(tmp_path / "sub" / "b.txt", "\n  \n\n".join(paragraphs[40:]))
    return tmp_path, paragraphs


def test_embedded_corpus_is_real_python_documentation():
    documents = embedded_corpus("train") + embedded_corpus("validation")
    assert len(documents) > 2000 and sum(map(len, documents)) > 1_500_000
    assert len(set(documents)) == len(documents)
    assert all(len(d) >= 200 for d in documents)
    topics = {t for t in pydoc_data.topics.topics.values() if len(t) >= 200}
    assert topics <= set(documents)  # the reference manual
    assert any("Return a new list containing all items from the iterable" in d for d in documents)
    # English prose: "the" is among the most frequent words.
    words = " ".join(documents).lower().split()
    assert words.count("the") / len(words) > 0.03


def test_embedded_split_is_deterministic_disjoint_and_five_percent():
    train, validation = embedded_corpus("train"), embedded_corpus("validation")
    assert train == embedded_corpus("train") and train == sorted(train)
    assert not set(train) & set(validation)
    # 5% of ~2.2k documents: binomial standard deviation ~0.5%; tolerance 2%.
    assert abs(len(validation) / (len(train) + len(validation)) - 0.05) < 0.02
    half = embedded_corpus("validation", validation_fraction=0.5)
    assert set(validation) <= set(half)  # a larger fraction only adds documents
    assert embedded_corpus("validation", validation_fraction=0.0) == []


def test_embedded_corpus_skips_modules_with_side_effects():
    embedded_corpus()
    for name in ("antigravity", "this", "idlelib", "tkinter", "turtle"):
        assert name not in sys.modules, name


def test_embedded_corpus_returns_a_fresh_list():
    count = len(embedded_corpus())
    embedded_corpus().clear()
    assert count > 0 and len(embedded_corpus()) == count


@pytest.mark.slow
def test_embedded_corpus_is_the_same_in_a_process_importing_in_another_order():
    # About 10 s: a fresh interpreter imports keras_fusion. It first imports
    # the standard library backwards, then compares a hash of the corpus.
    script = (
        "import hashlib, importlib, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "for name in sorted(sys.stdlib_module_names, reverse=True):\n"
        "    if name in ('antigravity', 'this', 'idlelib', 'tkinter', 'turtle', 'turtledemo'):\n"
        "        continue\n"
        "    try: importlib.import_module(name)\n"
        "    except Exception: pass\n"
        "from keras_fusion.data import embedded_corpus\n"
        "for split in ('train', 'validation'):\n"
        "    print(hashlib.sha1('\\0'.join(embedded_corpus(split)).encode()).hexdigest())\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    expected = [
        hashlib.sha1("\0".join(embedded_corpus(split)).encode()).hexdigest()
        for split in ("train", "validation")
    ]
    assert output[-2:] == expected


def test_load_corpus_embedded_is_embedded_corpus():
    assert load_corpus("embedded", "validation") == embedded_corpus("validation")
    assert load_corpus(max_documents=3) == embedded_corpus()[:3]


def test_text_files_give_one_document_per_paragraph_split_by_hash(text_files):
    directory, paragraphs = text_files
    spec = str(directory / "**" / "*.txt")
    assert read_text_files(spec) == paragraphs
    train, validation = load_corpus(spec, "train"), load_corpus(spec, "validation")
    assert sorted(train + validation) == sorted(paragraphs)
    assert not set(train) & set(validation) and validation
    # The split depends on each text only: other files do not move a paragraph.
    only_a = str(directory / "a.txt")
    assert set(load_corpus(only_a, "validation")) == set(validation) & set(paragraphs[:40])


def test_missing_files_raise_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"No file matches .*nothing-\*\.txt"):
        load_corpus(str(tmp_path / "nothing-*.txt"))
    with pytest.raises(ValueError, match="No file matches"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_empty_files_raise_a_clear_error(tmp_path):
    write(tmp_path / "empty.txt", "")
    write(tmp_path / "blank.txt", "\n\n   \n\t\n")
    with pytest.raises(ValueError, match=r"2 file\(s\) matching .* hold no text"):
        load_corpus(str(tmp_path / "*.txt"))


def test_a_split_without_documents_raises(tmp_path):
    path = write(tmp_path / "one.txt", "A single paragraph, so one split is empty.")
    train = read_text_files(str(path))
    empty_split = "validation" if load_corpus(str(path), "train") == train else "train"
    with pytest.raises(ValueError, match=f"'{empty_split}' split .* holds no document"):
        load_corpus(str(path), empty_split)


@pytest.mark.parametrize("spec", ["hf:wikitext", "tfds:", 42])
def test_unknown_spec_forms_raise(spec):
    with pytest.raises(ValueError, match="Unknown corpus spec"):
        load_corpus(spec)


def test_text_files_on_a_tf_filesystem_are_read_through_gfile():
    """A `scheme://` glob (gs:// on Cloud TPU) is read with tf.io.gfile: here
    TF's in-process ram:// filesystem, which Python's open() cannot see."""
    from keras_fusion import storage

    storage.write_text("ram://corpus_test/a/one.txt", "First paragraph.\n\nSecond paragraph.")
    storage.write_text("ram://corpus_test/b/deep/two.txt", "Third paragraph.")
    storage.write_text("ram://corpus_test/b/skip.md", "Not a text file.")
    storage.write_text("ram://corpus_test/top.txt", "Top paragraph.")
    assert read_text_files("ram://corpus_test/a/*.txt") == ["First paragraph.", "Second paragraph."]
    assert read_text_files("ram://corpus_test/**/*.txt") == [
        "First paragraph.",
        "Second paragraph.",
        "Third paragraph.",
        "Top paragraph.",
    ]
    with pytest.raises(ValueError, match="No file matches"):
        read_text_files("ram://corpus_test/none/*.txt")


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        load_corpus("embedded", "test")


@pytest.mark.parametrize("name", ["no_such_dataset_xyz", "c4/en"])
def test_tfds_dataset_not_prepared_offline_raises_one_line(tmp_path, name):
    with pytest.raises(ValueError) as error:
        load_corpus(f"tfds:{name}", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert name in message and str(tmp_path) in message
    assert "not prepared" in message and "no network" in message
    assert not any(tmp_path.iterdir())  # nothing written, nothing downloaded


def test_local_text_builder_prepares_offline_and_reads_back(text_files):
    directory, paragraphs = text_files
    spec = str(directory / "**" / "*.txt")
    data_dir = str(directory / "tfds")
    builder = local_text_builder(spec, data_dir)
    assert isinstance(builder, LocalText)
    assert isinstance(builder, tfds.core.GeneratorBasedBuilder) and builder.is_prepared()
    for split in ("train", "validation"):
        texts = [
            example["text"].decode() for example in tfds.as_numpy(builder.as_dataset(split=split))
        ]
        assert sorted(texts) == sorted(load_corpus(spec, split))
        # And through the tfds: spec, as for C4.
        name = f"tfds:local_text/{builder.builder_config.name}"
        assert sorted(load_corpus(name, split, data_dir=data_dir)) == sorted(texts)


def test_local_text_builder_gives_changed_files_a_new_dataset(text_files):
    directory, _ = text_files
    spec = str(directory / "a.txt")
    data_dir = str(directory / "tfds")
    before = local_text_builder(spec, data_dir)
    assert local_text_builder(spec, data_dir).builder_config.name == before.builder_config.name
    write(directory / "a.txt", "\n\n".join(f"New paragraph {i}." for i in range(50)))
    after = local_text_builder(spec, data_dir)
    assert after.builder_config.name != before.builder_config.name
    assert after.info.splits.total_num_examples == 50


def test_local_text_builder_rejects_an_empty_split(tmp_path):
    path = write(tmp_path / "one.txt", "A single paragraph, so one split is empty.")
    with pytest.raises(ValueError, match="split .* holds no document"):
        local_text_builder(str(path), str(tmp_path / "tfds"))


LONG = "This docstring is long enough to be kept in the corpus. " * 4  # 224 characters


def test_source_docstrings_reads_module_class_function_and_method_docstrings():
    source = (
        f'"""Module.\n\n    {LONG}"""\n'
        "class A:\n"
        '    """Class A."""\n'
        "    def method(self):\n"
        '        """Method."""\n'
        "        def inner():\n"
        '            """Inner."""\n'
        "async def coroutine():\n"
        '    """Coroutine."""\n'
        "x = 1\n"
        '"""A bare string is not a docstring."""\n'
    )
    found = corpus.source_docstrings(source)
    assert sorted(found) == sorted(
        [f"Module.\n\n{LONG}", "Class A.", "Method.", "Inner.", "Coroutine."]
    )
    assert corpus.source_docstrings("def broken(:\n") == []
    assert corpus.source_docstrings(b"# -*- coding: latin-1 -*-\n'''Caf\xe9.'''\n") == [
        "Caf\u00e9."
    ]


def test_source_docstrings_finds_definitions_under_every_statement_kind_in_file_order():
    source = (
        '"""Module."""\n'
        "if True:\n"
        "    def in_if():\n"
        '        """In if."""\n'
        "else:\n"
        "    class InElse:\n"
        '        """In else."""\n'
        "try:\n"
        "    def in_try():\n"
        '        """In try."""\n'
        "except ImportError:\n"
        "    def in_except():\n"
        '        """In except."""\n'
        "finally:\n"
        "    def in_finally():\n"
        '        """In finally."""\n'
        "for _ in ():\n"
        "    pass\n"
        "else:\n"
        "    def in_for_else():\n"
        '        """In for-else."""\n'
        "while False:\n"
        "    def in_while():\n"
        '        """In while."""\n'
        "with open(__file__) as f:\n"
        "    def in_with():\n"
        '        """In with."""\n'
        "match 1:\n"
        "    case 1:\n"
        "        def in_case():\n"
        '            """In case."""\n'
        "class Outer:\n"
        '    """Outer."""\n'
        "    if True:\n"
        "        async def method(self):\n"
        '            """Method."""\n'
        "            x = lambda: 0\n"
        "            def inner():\n"
        '                """Inner."""\n'
        "def after():\n"
        '    """After."""\n'
    )
    assert corpus.source_docstrings(source) == [
        "Module.",
        "In if.",
        "In else.",
        "In try.",
        "In except.",
        "In finally.",
        "In for-else.",
        "In while.",
        "In with.",
        "In case.",
        "Outer.",
        "Method.",
        "Inner.",
        "After.",
    ]


def test_source_docstrings_finds_what_a_walk_of_the_whole_tree_finds():
    # The oracle: ast.walk visits every node, expressions included.
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    files = [inspect.getsourcefile(m) for m in (ast, inspect, json, pytest)]
    folder = os.path.dirname(inspect.getsourcefile(email))
    files += sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py"))
    total = 0
    for path in files:
        with open(path, "rb") as f:
            source = f.read()
        expected = [
            ast.get_docstring(node, clean=True)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, kinds) and ast.get_docstring(node, clean=True)
        ]
        assert sorted(corpus.source_docstrings(source)) == sorted(expected), path
        total += len(expected)
    assert total > 300


@pytest.fixture
def fake_environment(tmp_path, monkeypatch):
    """A standard library and a site-packages of a few files, and an empty cache."""
    stdlib, site = tmp_path / "stdlib", tmp_path / "site"
    write(stdlib / "alpha.py", f'"""Alpha {LONG}"""\n')
    write(stdlib / "tests" / "test_alpha.py", f'"""Test folder {LONG}"""\n')
    write(stdlib / "site-packages" / "inner.py", f'"""Scanned as its own root only {LONG}"""\n')
    marker = tmp_path / "imported"
    write(
        site / "pkg" / "__init__.py", f'"""Package {LONG}"""\nopen({str(marker)!r}, "w").close()\n'
    )
    write(
        site / "pkg" / "module.py",
        f'def f():\n    """Function {LONG}"""\n\ndef g():\n    """Short."""\n',
    )
    write(site / "pkg" / "copy.py", f'"""Package {LONG}"""\n')  # a duplicate
    write(site / "pkg" / "test_module.py", f'"""Test file {LONG}"""\n')
    write(site / "pkg" / "broken.py", "def (:\n")
    write(site / "pkg" / "generated.py", f'"""Generated {LONG}"""\n' + "x = 1\n" * 400_000)
    monkeypatch.setattr(corpus, "_source_roots", lambda: [str(stdlib), str(site), str(site)])
    corpus._installed_documents.cache_clear()
    yield tmp_path / "cache", marker
    corpus._installed_documents.cache_clear()


def test_installed_corpus_parses_sources_without_importing_them(fake_environment):
    cache, marker = fake_environment
    documents = corpus.installed_corpus("train", 0.0, cache_dir=str(cache))
    topics = {t for t in pydoc_data.topics.topics.values() if len(t) >= 200}
    ours = set(documents) - topics
    assert ours == {f"Alpha {LONG}", f"Package {LONG}", f"Function {LONG}"}
    assert documents == sorted(documents) and len(set(documents)) == len(documents)
    assert not marker.exists()  # pkg/__init__.py was parsed, never run
    validation = corpus.installed_corpus("validation", 0.5, cache_dir=str(cache))
    train = corpus.installed_corpus("train", 0.5, cache_dir=str(cache))
    assert sorted(train + validation) == documents and not set(train) & set(validation)


def test_installed_corpus_is_cached_under_the_environment_and_fingerprinted(fake_environment):
    cache, _ = fake_environment
    built = corpus.installed_corpus_info(cache_dir=str(cache))
    documents = corpus.installed_corpus("train", 0.0, cache_dir=str(cache))
    assert built["from_cache"] is False and os.path.exists(built["cache_path"])
    assert built["num_documents"] == len(documents) and built["characters"] == sum(
        map(len, documents)
    )
    expected = hashlib.sha256(b"".join(d.encode("utf-8") + b"\0" for d in documents)).hexdigest()
    assert built["sha256"] == expected
    corpus._installed_documents.cache_clear()
    again = corpus.installed_corpus_info(cache_dir=str(cache))
    assert again["from_cache"] is True and again["sha256"] == expected
    assert corpus.installed_corpus("train", 0.0, cache_dir=str(cache)) == documents


@pytest.mark.parametrize("collecting", [True, False])
def test_installed_corpus_build_leaves_the_garbage_collector_as_it_found_it(
    fake_environment, monkeypatch, collecting
):
    # The build pauses the cyclic collector while it parses; it must hand it
    # back as it was, also when a file's parsing fails part-way.
    cache, _ = fake_environment
    seen = []
    parse = corpus.source_docstrings

    def spying(source):
        seen.append(gc.isenabled())
        return parse(source)

    monkeypatch.setattr(corpus, "source_docstrings", spying)
    was = gc.isenabled()
    try:
        (gc.enable if collecting else gc.disable)()
        corpus.installed_corpus_info(cache_dir=str(cache))
        assert seen and not any(seen)
        assert gc.isenabled() is collecting
        corpus._installed_documents.cache_clear()
        monkeypatch.setattr(corpus, "source_docstrings", lambda source: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            corpus.installed_corpus_info(cache_dir=str(cache / "again"))
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()


def distribution(folder, name, version):
    """A minimal installed distribution's metadata in `folder`."""
    return write(
        folder / f"{name}-{version}.dist-info" / "METADATA",
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    )


def test_environment_key_follows_what_is_installed_not_the_working_directory(tmp_path, monkeypatch):
    # A source checkout's metadata on sys.path (`python -m` from the
    # checkout, pytest's rootdir) once gave one environment a key per
    # working directory, each with its own 40-180 s build of the corpus.
    key = corpus._environment_key()
    checkout = tmp_path / "checkout"
    distribution(checkout, "some_checkout", "0.1")
    monkeypatch.syspath_prepend(str(checkout))
    monkeypatch.chdir(checkout)
    assert corpus._environment_key() == key
    # A distribution installed where the corpus is read from changes it.
    site = tmp_path / "site"
    site.mkdir()
    roots = corpus._source_roots()
    monkeypatch.setattr(corpus, "_source_roots", lambda: [*roots, str(site)])
    before = corpus._environment_key()
    distribution(site, "newly_installed", "1.0")
    assert corpus._environment_key() != before


@pytest.mark.slow
def test_installed_corpus_is_tens_of_millions_of_characters_of_this_environment():
    # About 40 s the first time in an environment (then cached on disk).
    info = corpus.installed_corpus_info()
    assert info["characters"] > 10_000_000 and info["num_documents"] > 10_000
    train, validation = load_corpus("installed", "train"), load_corpus("installed", "validation")
    assert train == corpus.installed_corpus("train") and not set(train) & set(validation)
    assert abs(len(validation) / (len(train) + len(validation)) - 0.05) < 0.01
    everything = train + validation
    assert any(
        d.startswith("Serialize ``obj`` to a JSON formatted ``str``") for d in everything
    )  # json.dumps
    assert any("densely-connected NN layer" in d for d in everything)  # keras.layers.Dense
    words = " ".join(validation).lower().split()
    assert words.count("the") / len(words) > 0.03


def test_installed_corpus_of_an_earlier_environment_stays_readable(fake_environment, monkeypatch):
    cache, _ = fake_environment
    before = corpus.installed_corpus_info(cache_dir=str(cache))
    documents = corpus.installed_corpus("train", 0.0, cache_dir=str(cache))
    monkeypatch.setattr(
        corpus, "_environment_key", lambda: "another-environment"
    )  # a package installed
    corpus._installed_documents.cache_clear()
    pinned = corpus.installed_corpus(
        "train", 0.0, cache_dir=str(cache), environment_key=before["environment_key"]
    )
    assert pinned == documents
    assert (
        corpus.installed_corpus_info(cache_dir=str(cache))["environment_key"]
        == "another-environment"
    )
    with pytest.raises(ValueError, match="not cached"):
        corpus.installed_corpus("train", cache_dir=str(cache), environment_key="0123456789abcdef")


def test_an_earlier_runs_corpus_is_found_in_a_fresh_environment_with_the_same_documents(
    fake_environment, monkeypatch, tmp_path
):
    cache, _ = fake_environment
    before = corpus.installed_corpus_info(cache_dir=str(cache))
    key, sha256 = before["environment_key"], before["sha256"]
    assert corpus.installed_corpus_environment(sha256, key, cache_dir=str(cache)) == key
    # A fresh machine: the earlier cache is gone, the environment has another
    # key (another pip, say) but the same docstrings.
    fresh = str(tmp_path / "fresh-cache")
    monkeypatch.setattr(corpus, "_environment_key", lambda: "fresh-environment")
    corpus._installed_documents.cache_clear()
    found = corpus.installed_corpus_environment(sha256, key, cache_dir=fresh)
    assert found == "fresh-environment"
    assert corpus.installed_corpus("train", 0.0, cache_dir=fresh, environment_key=found) == (
        corpus.installed_corpus("train", 0.0, cache_dir=str(cache), environment_key=key)
    )
    # Other docstrings: refused, naming both corpora; the earlier cache is untouched.
    site = corpus._source_roots()[1]
    with open(os.path.join(site, "extra.py"), "w") as f:
        f.write(f'"""Extra {LONG}"""\n')
    monkeypatch.setattr(corpus, "_environment_key", lambda: "changed-environment")
    corpus._installed_documents.cache_clear()
    with pytest.raises(ValueError, match=f"sha256 {sha256}.*not cached.*changed-environment"):
        corpus.installed_corpus_environment(sha256, key, cache_dir=fresh)
    assert corpus.installed_corpus_info(cache_dir=str(cache), environment_key=key)["sha256"] == (
        sha256
    )


def test_methods_other_packages_attach_to_stdlib_classes_are_not_embedded(monkeypatch):
    """transformers adds `logging.Logger.warning_once` when imported; the
    embedded corpus must not change with what else the process imported."""
    import logging

    from keras_fusion.data import corpus

    def patched(self):
        pass

    patched.__doc__ = "Attached by another package. " * 10
    patched.__module__ = "some_installed_package.logging"
    monkeypatch.setattr(logging.Logger, "kf_attached_method", patched, raising=False)
    docs = corpus._docstrings(logging)
    assert patched.__doc__.strip() not in docs
    assert inspect.getdoc(logging.Logger.warning) in docs  # the class's own methods stay
