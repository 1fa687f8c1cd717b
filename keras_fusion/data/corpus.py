"""Text corpora that need no network: Python's own documentation, local files, TFDS.

Four sources, one entry point (`load_corpus`):

- `"embedded"`: English text that ships with every Python installation, the
  language reference topics (`pydoc_data.topics`) and the docstrings of the
  standard library. See `embedded_corpus` for its size.
- `"installed"`: the same topics and the docstrings of the standard library
  and of every installed package, read from the source files without
  importing anything; about twelve times the embedded text. See
  `installed_corpus`.
- a path or glob of plain-text files: one document per blank-line-separated
  block (see `read_text_files`).
- `"tfds:NAME"` (e.g. `"tfds:c4/en"`): a TensorFlow Datasets dataset that is
  already prepared in `data_dir`. Nothing is ever downloaded.

Local files can also be turned into a TFDS dataset with `local_text_builder`,
so that code written for `tfds:` datasets (TFDS C4 on Cloud TPU) runs on them
unchanged.

Every source splits the same way: a document goes to "validation" when a
SHA-1 hash of its text falls below `validation_fraction`, so a split never
changes between runs, machines or import orders.

Example:

```python
from keras_fusion import data
train = data.load_corpus("embedded", split="train")
validation = data.load_corpus("embedded", split="validation")
```
"""

import ast
import functools
import gc
import gzip
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import pkgutil
import re
import sys
import sysconfig
import time
import warnings

import tensorflow_datasets as tfds

from keras_fusion import storage

SPLITS = ("train", "validation")
VALIDATION_FRACTION = 0.05
MIN_DOCSTRING_CHARS = 200

# Standard-library modules never imported: they act on import (open a
# browser, print, set the readline completer, may write grammar caches), need
# a display, are tests or toy fixtures, or (distutils) resolve to setuptools'
# copy in a virtualenv, which would make the corpus depend on the environment.
SKIPPED_MODULES = frozenset(
    (
        "__hello__",
        "__phello__",
        "antigravity",
        "distutils",
        "idlelib",
        "lib2to3",
        "pydoc_data",  # its topics are read directly
        "readline",
        "rlcompleter",
        "this",
        "tkinter",
        "turtle",
        "turtledemo",
    )
)

# A spec such as "hf:..." names a source this module cannot read; "gs://..." (any
# `scheme://` TF filesystem path) is a text-file glob there.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SPEC_FORMS = "use 'embedded', 'installed', a path or glob of text files, or 'tfds:NAME'"
# Source files larger than this are generated tables, not documentation.
MAX_SOURCE_BYTES = 2_000_000
_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)
INSTALLED_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "keras_fusion",
    "corpora",
)


def embedded_corpus(split="train", validation_fraction=VALIDATION_FRACTION):
    """English documents shipped with Python: reference manual and stdlib docstrings.

    The documents are the 79 reference-manual topics of `pydoc_data.topics`
    and every docstring of at least 200 characters (`inspect.getdoc` of the
    modules, classes, functions and methods) of the standard library, deduplicated
    and sorted. Measured on CPython 3.11.7 (Linux): 2,244 documents, 1.66M
    characters; with the default fraction, "train" has 2,153 documents
    (1.61M characters, 547k tokens with a 1,000-id tokenizer trained on it)
    and "validation" 91 (57k characters, 21k tokens). Collecting them takes
    about 1 s the first time (2 CPU cores), nothing afterwards (cached in
    memory).

    Args:
        split: `"train"` or `"validation"`.
        validation_fraction: the share of documents held out for validation,
            chosen by a hash of each document's text.

    Returns:
        A new list of strings, sorted, the same on every run.

    Example:

    ```python
    documents = embedded_corpus("validation")
    ```
    """
    return split_documents(_embedded_documents(), split, validation_fraction)


def installed_corpus(
    split="train", validation_fraction=VALIDATION_FRACTION, cache_dir=None, environment_key=None
):
    """English documents of this environment: every docstring of every installed package.

    The documents are the reference-manual topics of `pydoc_data.topics` and
    every docstring of at least 200 characters (module, class, function and
    method docstrings, cleaned like `inspect.getdoc`) found by parsing, with
    `ast`, the `.py` files of the standard library and of the environment's
    `site-packages`. Nothing is imported, so no package's import side effects
    run; files of test folders and files over 2 MB (generated tables) are
    skipped; objects written in C (builtins, extension modules) have no
    source here, so their docstrings are not included. Measured on this
    project's pinned environment (CPython 3.11.7): 23,664 documents, 20.8M
    characters. The documents are de-duplicated and sorted, then split by a hash
    of each text (`split_documents`), so the corpus is the same on every run
    of a pinned environment; `corpus_fingerprint` names its content.

    Parsing every file took 39.5 s on 2 CPU cores, so the documents
    are cached on disk under a key of the Python version, the interpreter's
    paths and the name and version of every distribution installed in them
    (installing or upgrading a package gives a new cache file; the working
    directory and `sys.path` do not); `installed_corpus_info`
    reports the size, fingerprint, cache file and build time.

    Args:
        split: `"train"` or `"validation"`.
        validation_fraction: the share of documents held out for validation.
        cache_dir: the cache folder (`None`: `~/.cache/keras_fusion/corpora`,
            or under `$XDG_CACHE_HOME`).
        environment_key: `None` (this environment's), or the
            `environment_key` of an earlier `installed_corpus_info`: the
            corpus cached then, so that runs keep one corpus when a package
            is installed in between.

    Returns:
        A new list of strings, sorted, the same on every run.

    Raises:
        ValueError: for an `environment_key` whose corpus is not cached.

    Example:

    ```python
    documents = installed_corpus("train")
    ```
    """
    documents = _installed_documents(cache_dir or INSTALLED_CACHE_DIR, environment_key)["documents"]
    return split_documents(documents, split, validation_fraction)


def installed_corpus_info(cache_dir=None, environment_key=None):
    """Size, content hash, cache file and build time of `installed_corpus`.

    Returns:
        A dict: `num_documents`, `characters`, `sha256` (`corpus_fingerprint` of
        all documents), `environment_key`, `cache_path`, `build_seconds` (the
        time parsing took when the cache was built) and `from_cache`.
    """
    entry = _installed_documents(cache_dir or INSTALLED_CACHE_DIR, environment_key)
    return {k: v for k, v in entry.items() if k != "documents"}


def installed_corpus_environment(sha256, environment_key=None, cache_dir=None):
    """The environment to read an earlier run's installed corpus from.

    A run records the `environment_key` and `sha256` of
    `installed_corpus_info`. On a fresh machine that environment's cache is
    gone, but an environment with the same docstrings rebuilds the same
    documents: this returns `environment_key` when its corpus is cached,
    else this environment's key when its corpus has the same `sha256`.

    Args:
        sha256: the `sha256` the earlier run recorded.
        environment_key: the `environment_key` it recorded (`None`: look
            only at this environment).
        cache_dir: the cache folder, as for `installed_corpus`.

    Returns:
        An `environment_key` for `installed_corpus(environment_key=...)`.

    Raises:
        ValueError: when neither holds those documents; it names both
            corpora (this environment's is built and cached on the way).

    Example:

    ```python
    info = installed_corpus_info()
    key = installed_corpus_environment(info["sha256"], info["environment_key"])
    documents = installed_corpus("train", environment_key=key)
    ```
    """
    cache_dir = cache_dir or INSTALLED_CACHE_DIR
    if environment_key:
        try:
            entry = _installed_documents(cache_dir, environment_key)
        except ValueError:
            pass
        else:
            if entry["sha256"] == sha256:
                return environment_key
    here = _installed_documents(cache_dir)
    if here["sha256"] != sha256:
        raise ValueError(
            f"No installed corpus with sha256 {sha256} here: environment "
            f"{environment_key!r} is not cached in {cache_dir!r} (or holds other documents), "
            f"and this environment ({here['environment_key']!r}) holds other documents "
            f"(sha256 {here['sha256']}, {here['num_documents']} documents). Install the "
            "package versions of the earlier run (the repository's constraints.txt pins them)."
        )
    return here["environment_key"]


def corpus_fingerprint(documents):
    """SHA-256 of the documents, in order, each followed by a NUL byte."""
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.encode("utf-8") + b"\0")
    return digest.hexdigest()


def source_docstrings(source):
    """The docstrings of a Python source's module, classes and functions.

    Args:
        source: the text (or bytes) of a Python file.

    Returns:
        A list of the cleaned docstrings (`inspect.cleandoc`), in file order;
        empty when the source does not parse.

    Example:

    ```python
    import inspect, json

    with open(inspect.getsourcefile(json), "rb") as f:
        documents = source_docstrings(f.read())  # json's module docstring first
    ```
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found = []
    # Definitions are statements, and statements sit only in the statement
    # lists of other statements (bodies, branches, handlers, cases): walking
    # those alone finds every definition that `ast.walk` finds, without
    # visiting the expressions, which are most of a tree's nodes.
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, _DEFINITIONS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        children = [
            child
            for field in node._fields
            if isinstance(value := getattr(node, field, None), list)
            for child in value
            if isinstance(child, _STATEMENTS)
        ]
        pending.extend(reversed(children))
    return found


def _environment_key():
    """A name for this interpreter and the distributions installed where the
    corpus is read from (`_source_roots`).

    Only there: `importlib.metadata.distributions()` alone searches
    `sys.path`, which holds the working directory in some processes (`python
    -m`, pytest's rootdir) and with it a source checkout's `*.egg-info`. That
    gave one environment a key per working directory, and each key its own
    build of the corpus.
    """
    roots = sorted(set(_source_roots()))
    distributions = sorted(
        {
            f"{d.metadata['Name']}=={d.version}"
            for d in importlib.metadata.distributions(path=roots)
            if d.metadata["Name"]
        }
    )
    identity = [sys.version, *roots, *distributions]
    return hashlib.sha256("\n".join(identity).encode("utf-8")).hexdigest()[:16]


def _source_roots():
    paths = sysconfig.get_paths()
    return [os.path.realpath(paths[name]) for name in ("stdlib", "purelib", "platlib")]


def _source_files():
    """Every `.py` file of the standard library and site-packages, sorted, tests skipped."""
    files = set()
    for root in sorted(set(_source_roots())):
        for folder, subfolders, names in os.walk(root):
            relative = os.path.relpath(folder, root)
            parts = [] if relative == "." else relative.split(os.sep)
            # site-packages inside the standard library is scanned as its own root.
            subfolders[:] = sorted(
                d
                for d in subfolders
                if d != "site-packages"
                and not _test_part(d)
                and not (not parts and d in SKIPPED_MODULES)
            )
            files.update(
                os.path.join(folder, n)
                for n in names
                if n.endswith(".py") and not _test_part(n[:-3])
            )
    return sorted(files)


def _test_part(name):
    return name in ("tests", "test", "testing", "idle_test", "__main__") or name.startswith("test_")


@functools.lru_cache(maxsize=4)
def _installed_documents(cache_dir, environment_key=None):
    key = environment_key or _environment_key()
    cache_path = os.path.join(cache_dir, f"installed-{key}.json.gz")
    if environment_key and not os.path.exists(cache_path):
        raise ValueError(
            f"The installed corpus of environment {environment_key!r} "
            f"is not cached in {cache_dir!r}: "
            "it can only be rebuilt in that environment."
        )
    if os.path.exists(cache_path):
        with gzip.open(cache_path, "rt", encoding="utf-8") as f:
            entry = json.load(f)
        entry["from_cache"] = True
        entry["documents"] = tuple(entry["documents"])
        return entry
    start = time.perf_counter()
    import pydoc_data.topics

    documents = set(pydoc_data.topics.topics.values())
    # Parsing makes millions of short-lived AST nodes, which reference
    # counting frees (they hold no cycles); the cyclic collector's passes
    # over them took half of the parsing's time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for path in _source_files():
            try:
                if os.path.getsize(path) > MAX_SOURCE_BYTES:
                    continue
                with open(path, "rb") as f:
                    source = f.read()
            except OSError:
                continue
            documents.update(source_docstrings(source))
    finally:
        if collecting:
            gc.enable()
    documents = sorted(d for d in documents if len(d) >= MIN_DOCSTRING_CHARS)
    entry = {
        "documents": documents,
        "num_documents": len(documents),
        "characters": sum(map(len, documents)),
        "sha256": corpus_fingerprint(documents),
        "environment_key": key,
        "cache_path": cache_path,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    os.makedirs(cache_dir, exist_ok=True)
    temporary = f"{cache_path}.{os.getpid()}.partial"
    with gzip.open(temporary, "wt", encoding="utf-8") as f:
        json.dump(entry, f)
    os.replace(temporary, cache_path)
    entry.update(from_cache=False, documents=tuple(documents))
    return entry


def load_corpus(spec="embedded", split="train", data_dir=None, max_documents=None):
    """Load the documents of one split of a corpus, never downloading.

    Args:
        spec: `"embedded"` (see `embedded_corpus`); `"installed"` (see
            `installed_corpus`); a path or glob of plain-text
            files (see `read_text_files`; `**` matches folders recursively);
            or `"tfds:NAME"`, a TFDS dataset with a string feature `"text"`
            and "train"/"validation" splits, already prepared in `data_dir`.
        split: `"train"` or `"validation"`.
        data_dir: the TFDS data folder, for `tfds:` specs only (`None`: the
            TFDS default, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        max_documents: keep only the first this many documents (`None`: all);
            a TFDS split such as C4's is far larger than memory.

    Returns:
        A list of strings.

    Raises:
        ValueError: for an unknown spec form or split, a path matching no
            file, files without text, or a TFDS dataset not prepared in
            `data_dir`.

    Example:

    ```python
    texts = load_corpus("/data/books/*.txt", split="validation")
    c4 = load_corpus("tfds:c4/en", data_dir="gs://my-bucket/tfds", max_documents=10**5)
    ```
    """
    _check_split(split)
    if not isinstance(spec, str):
        raise ValueError(f"Unknown corpus spec {spec!r}: {_SPEC_FORMS}.")
    if spec == "embedded":
        documents = embedded_corpus(split)
    elif spec == "installed":
        documents = installed_corpus(split)
    elif spec.startswith("tfds:"):
        documents = _tfds_documents(spec[len("tfds:") :], split, data_dir, max_documents)
    elif _SCHEME.match(spec) and not storage.is_remote(spec) and not os.path.exists(spec):
        raise ValueError(f"Unknown corpus spec {spec!r}: {_SPEC_FORMS}.")
    else:
        documents = _nonempty_split(read_text_files(spec), split, VALIDATION_FRACTION, spec)
    return documents[:max_documents]


def read_text_files(files_glob):
    """Read every document of the plain-text files matching a path or glob.

    A document is a block of lines between blank lines (a paragraph), not a
    whole file, so that a single large file still splits between train and
    validation. Files are read in sorted path order as UTF-8 (undecodable
    bytes become U+FFFD), blocks are stripped and empty blocks dropped.

    Args:
        files_glob: a file path or a glob (`~` expanded, `**` recursive), on
            any TF filesystem (`gs://bucket/texts/*.txt`).

    Returns:
        A list of non-empty strings, in file then paragraph order.

    Raises:
        ValueError: when no file matches or the files hold no text.

    Example:

    ```python
    documents = read_text_files("corpus/*.txt")
    ```
    """
    paths = _matching_files(files_glob)
    documents = []
    for path in paths:
        text = storage.read_text(path)
        blocks = re.split(r"\n[ \t\r\f\v]*\n", text.replace("\r\n", "\n"))
        documents.extend(block.strip() for block in blocks if block.strip())
    if not documents:
        raise ValueError(f"The {len(paths)} file(s) matching {files_glob!r} hold no text.")
    return documents


def split_documents(documents, split, validation_fraction=VALIDATION_FRACTION):
    """Keep the documents of one split, chosen by a stable hash of each text.

    Args:
        documents: an iterable of strings.
        split: `"train"` or `"validation"`.
        validation_fraction: the expected share of documents in "validation".

    Returns:
        A list of the documents of `split`, in their input order.

    Example:

    ```python
    held_out = split_documents(["a", "b", "c"], "validation", 0.5)
    ```
    """
    _check_split(split)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    held_out = split == "validation"
    return [d for d in documents if (_hash_fraction(d) < validation_fraction) == held_out]


def _nonempty_split(documents, split, validation_fraction, files_glob):
    documents = split_documents(documents, split, validation_fraction)
    if not documents:
        raise ValueError(f"The {split!r} split of {files_glob!r} holds no document.")
    return documents


def _hash_fraction(document):
    """A number in [0, 1) fixed by the text alone (Python's hash() is salted)."""
    digest = hashlib.sha1(document.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: use one of {SPLITS}.")


def _matching_files(files_glob):
    paths = storage.glob(files_glob)
    if not paths:
        raise ValueError(f"No file matches {files_glob!r}.")
    return paths


@functools.lru_cache(maxsize=1)
def _embedded_documents():
    """All embedded documents, deduplicated and sorted (a tuple: the cache is shared)."""
    import pydoc_data.topics

    documents = set(pydoc_data.topics.topics.values())
    with warnings.catch_warnings():
        # Deprecated modules (PEP 594, typing.io) warn when imported or read;
        # their text is still good.
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            for module in _import_tree(name):
                documents.update(_docstrings(module))
    return tuple(sorted(d for d in documents if len(d) >= MIN_DOCSTRING_CHARS))


def _import_tree(name):
    """A module and, for a package, its submodules, depth first in name order."""
    if _skipped(name):
        return []
    try:
        module = importlib.import_module(name)
    except Exception:  # Platform-specific or optional modules (winreg, _gdbm).
        return []
    modules = [module]
    if hasattr(module, "__path__"):
        # iter_modules, unlike walk_packages, imports nothing before we filter.
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda i: i.name):
            modules.extend(_import_tree(f"{name}.{info.name}"))
    return modules


def _skipped(name):
    parts = name.split(".")
    return parts[0] in SKIPPED_MODULES or any(
        part == "__main__"
        or part.lstrip("_").startswith(("test", "xx"))  # tests, _testcapi, xxlimited
        or part == "idle_test"
        for part in parts
    )


def _docstrings(module):
    """Docstrings of a module and of the classes, functions and methods it defines."""
    objects = [module]
    for value in vars(module).values():
        if (inspect.isclass(value) or inspect.isroutine(value)) and getattr(
            value, "__module__", None
        ) == module.__name__:
            objects.append(value)
            if inspect.isclass(value):
                objects.extend(
                    member
                    for member in vars(value).values()
                    if (
                        inspect.isroutine(member)
                        or isinstance(member, (property, staticmethod, classmethod))
                    )
                    and _defined_in(member, module.__name__)
                )
    return {doc for doc in map(inspect.getdoc, objects) if doc}


def _defined_in(member, module_name):
    """False for a method another package attached to a standard-library class
    (transformers adds `logging.Logger.warning_once`): the corpus must not
    depend on what else the process imported."""
    function = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
    return getattr(function, "__module__", module_name) in (module_name, None)


def _tfds_documents(name, split, data_dir, max_documents):
    """The "text" feature of a prepared TFDS split, decoded to strings."""
    builder = _prepared_builder(name, data_dir)
    dataset = builder.as_dataset(split=split).take(-1 if max_documents is None else max_documents)
    return [example["text"].decode("utf-8") for example in tfds.as_numpy(dataset)]


def _prepared_builder(name, data_dir):
    where = data_dir or tfds.core.constants.DATA_DIR
    not_prepared = (
        f"TFDS dataset {name!r} is not prepared in data_dir {where!r}, and no network is "
        "available to download it: prepare it there first (e.g. `tfds build`)."
    )
    if not name:
        raise ValueError(f"Unknown corpus spec 'tfds:': {_SPEC_FORMS}.")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError:  # Unregistered name or config, and no prepared files.
        raise ValueError(not_prepared) from None
    if not builder.is_prepared():
        raise ValueError(not_prepared)
    return builder


class LocalText(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset of local plain-text files: feature "text", train/validation.

    Documents and split are exactly those of `load_corpus(files_glob, split)`
    (`read_text_files`, then `split_documents`), so the same text reaches a
    model through files or through TFDS. The builder reads local files only:
    `download_and_prepare` works offline. Use `local_text_builder`, which
    names the builder config after a hash of the documents, so that several
    corpora can share one `data_dir` and an edited file is prepared anew.

    Args:
        files_glob: the files to read, a path or glob; needed to prepare the
            dataset, not to read a prepared one.
        validation_fraction: the share of documents held out for validation.
        **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`,
            `config`).

    Example:

    ```python
    builder = LocalText(files_glob="corpus/*.txt", data_dir="/tmp/tfds")
    builder.download_and_prepare()
    dataset = builder.as_dataset(split="train")
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, files_glob=None, validation_fraction=VALIDATION_FRACTION, **kwargs):
        self._files_glob = files_glob
        self._validation_fraction = validation_fraction
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Plain-text files, one document per blank-line-separated block.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        if self._files_glob is None:
            raise ValueError("LocalText needs files_glob to prepare the dataset.")
        documents = read_text_files(self._files_glob)
        # TFDS cannot write an empty split: fail here, with load_corpus's message.
        return {
            split: self._generate_examples(
                _nonempty_split(documents, split, self._validation_fraction, self._files_glob)
            )
            for split in SPLITS
        }

    def _generate_examples(self, documents):
        # Keys by position: TFDS rejects duplicate keys, and paragraphs repeat.
        for index, document in enumerate(documents):
            yield index, {"text": document}


def local_text_builder(files_glob, data_dir, validation_fraction=VALIDATION_FRACTION):
    """Prepare (once) and return the `LocalText` dataset of some text files.

    The builder config is named `h<hash>` after the documents and the
    fraction, so `load_corpus(f"tfds:local_text/{builder.builder_config.name}",
    data_dir=data_dir)` reads it back, and changed files get a new dataset.
    Preparing reads the files and writes TFRecords under `data_dir`; it
    downloads nothing.

    Args:
        files_glob: a path or glob of plain-text files.
        data_dir: the TFDS data folder to write to.
        validation_fraction: the share of documents held out for validation.

    Returns:
        A prepared `LocalText` builder.

    Example:

    ```python
    builder = local_text_builder("corpus/*.txt", "/tmp/tfds")
    train = builder.as_dataset(split="train")
    ```
    """
    fingerprint = hashlib.sha1(repr(validation_fraction).encode("utf-8"))
    for document in read_text_files(files_glob):
        fingerprint.update(document.encode("utf-8") + b"\0")
    config = tfds.core.BuilderConfig(
        name="h" + fingerprint.hexdigest()[:16], description=f"Text files {files_glob}"
    )
    builder = LocalText(
        files_glob=files_glob,
        validation_fraction=validation_fraction,
        config=config,
        data_dir=data_dir,
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
