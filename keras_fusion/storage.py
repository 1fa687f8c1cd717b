"""Every file keras_fusion reads or writes, through `tf.io.gfile`.

Paths may be local (`runs/demo`) or on any TensorFlow filesystem: `gs://`
(Cloud Storage), `ram://` (in-process memory, what the tests use as a
non-local stand-in), `s3://` or `hdfs://` with their plugins. Python's
`open`, `os` and `glob` see only the local disk: a `gs://bucket/run` given to
them becomes a local folder named `gs:`.

Writes never leave a half-written file that a reader would trust:

- on the local disk, `write_bytes` writes a temporary file in the same folder,
  flushes it to disk and renames it into place (a rename there is atomic);
- on an object store a rename is a copy, not atomic. There a file is written
  straight to its final name: an object becomes visible only once its upload
  completes, and files that must never be read half-written (checkpoints) get
  a unique final name (`unique_name`), with an index written last that names
  them. A reader trusts only what the index names.

Example:

```python
from keras_fusion import storage
storage.write_json("gs://bucket/run/metrics.json", {"rows": []})
storage.read_json("gs://bucket/run/metrics.json")
```
"""

import glob as _glob
import json
import os
import re
import tempfile
import uuid

import tensorflow as tf

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_remote(path):
    """True for a `scheme://` path (not the local disk)."""
    return bool(_SCHEME.match(str(path)))


def join(*parts):
    """`os.path.join` that keeps `scheme://` prefixes intact."""
    return os.path.join(*[str(p) for p in parts])


def dirname(path):
    return os.path.dirname(str(path).rstrip("/"))


def exists(path):
    return bool(path) and tf.io.gfile.exists(path)


def isdir(path):
    return bool(path) and tf.io.gfile.isdir(path)


def makedirs(path):
    tf.io.gfile.makedirs(path)
    return path


def listdir(path):
    """Names in a folder, sorted (`[]` when it does not exist)."""
    if not isdir(path):
        return []
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def glob(pattern):
    """Sorted files matching `pattern`; `~` expanded and `**` recursive locally.

    `tf.io.gfile.glob` has no `**`: on remote filesystems `**` is matched by
    walking the folder above the first wildcard.
    """
    if not is_remote(pattern):
        pattern = os.path.expanduser(pattern)
        return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if "**" not in pattern:
        return sorted(p for p in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(p))
    root = pattern.split("*", 1)[0].rsplit("/", 1)[0]
    regex = re.compile(_glob_regex(pattern))
    found = []
    for folder, _, files in tf.io.gfile.walk(root):
        found.extend(join(folder, f) for f in files if regex.match(join(folder, f)))
    return sorted(found)


def _glob_regex(pattern):
    """A regex for a glob whose `**/` spans folders and `*`, `?` do not."""
    parts = re.split(r"(\*\*/|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    return "".join(wildcards.get(p, re.escape(p)) for p in parts) + r"\Z"


def remove(path):
    """Delete a file; a missing file is not an error."""
    try:
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass


def rmtree(path):
    """Delete a folder and everything under it; a missing folder is not an error."""
    if isdir(path):
        tf.io.gfile.rmtree(path)


def read_bytes(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_range(path, offset, size):
    """`size` bytes of a file from byte `offset`: a seek and one read, the
    rest of the file is not read (on `gs://` a ranged download)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def read_text(path):
    return read_bytes(path).decode("utf-8", errors="replace")


def read_json(path):
    return json.loads(read_bytes(path))


def write_bytes(path, data):
    """Write `data` to `path`, never leaving a half-written file under its name locally.

    Local: a temporary file in the same folder, fsync, atomic rename.
    Remote: written to its final name directly (see the module docstring).
    """
    return write_chunks(path, [data])


def write_chunks(path, chunks):
    """`write_bytes` of the concatenated byte strings of the iterable
    `chunks`, each written as it comes, so the whole file is never in memory
    (a large checkpoint written tensor by tensor)."""
    folder = dirname(path)
    if folder:
        makedirs(folder)
    if is_remote(path):
        _clear_for_rewrite(path)
        with tf.io.gfile.GFile(path, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        return path
    handle, temporary = tempfile.mkstemp(dir=folder or ".", prefix=".partial-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def _clear_for_rewrite(path):
    """TF's `ram://` filesystem appends when an existing file is opened for
    writing (measured with TF 2.21: writing b"a" then b"b" reads b"ab"), so
    there a rewrite deletes first. Object stores replace the object whole."""
    if str(path).startswith("ram://"):
        remove(path)


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=1))


def append_text(path, text):
    """Append to a text file (object stores cannot append: the file is rewritten)."""
    if not is_remote(path):
        folder = dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
        return path
    return write_text(path, (read_text(path) if exists(path) else "") + text)


def unique_name(stem, suffix=""):
    """`stem-<8 hex digits><suffix>`: a name no earlier write used."""
    return f"{stem}-{uuid.uuid4().hex[:8]}{suffix}"


def save_model(model, path):
    """`model.save(path)` so that no half-written model ever has `path`'s name.

    Local: saved under a temporary name in the same folder and renamed.
    Remote: Keras saves to a local temporary file and uploads it in one
    write (its own remote-path handling).
    """
    folder = dirname(path)
    if folder:
        makedirs(folder)
    if is_remote(path):
        _clear_for_rewrite(path)
        model.save(path)
        return path
    temporary = join(folder or ".", ".partial-" + os.path.basename(path))
    model.save(temporary)
    os.replace(temporary, path)
    return path


def load_model(path, compile=True, argument="path"):
    """`keras.saving.load_model` for any filesystem, or one clear ValueError."""
    import keras

    if not exists(path):
        raise ValueError(f"{argument} not found: {path}")
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # truncated, corrupt or foreign files
        raise ValueError(f"cannot load {path}: {error}") from error
