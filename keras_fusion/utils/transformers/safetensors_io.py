"""Reading and writing safetensors files one tensor at a time, through `keras_fusion.storage`.

The format (https://github.com/huggingface/safetensors): an 8-byte
little-endian header size, a JSON header `{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}`, then the raw
little-endian tensor bytes. Reading a tensor is a seek and a read, so an
import holds one tensor besides the model (no memory map, no whole-file
read) and works on any `tf.io.gfile` file system (`gs://`); writing streams
each tensor after the header (`storage.write_chunks`: atomic locally, a
rewrite on `ram://` replaces the file). bfloat16 tensors are widened to float32
exactly.

Example:

```python
with SafetensorsCheckpoint("/path/to/t5-small") as checkpoint:
    embedding = checkpoint.get("shared.weight")
write_safetensors("out/model.safetensors", {"shared.weight": embedding})
```
"""

import itertools
import json

import numpy as np

from keras_fusion import storage

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}
_ALIGNMENT = 8  # the data starts on an 8-byte boundary (the header is space-padded)


def read_header(path):
    """`(header dict without __metadata__, offset of the data)` of a safetensors file."""
    size = int.from_bytes(storage.read_range(path, 0, 8), "little")
    header = json.loads(storage.read_range(path, 8, size))
    header.pop("__metadata__", None)
    return header, 8 + size


class SafetensorsCheckpoint:
    """The tensors of a folder's safetensors files, one file or sharded.

    Only headers are read on construction; `get` reads one tensor.

    Args:
        folder: a local or `tf.io.gfile` folder with `model.safetensors` or
            `model.safetensors.index.json` and its shards.

    Raises:
        ValueError: when the folder holds neither (e.g. only
            `pytorch_model.bin`, which is not read).

    Example:

    ```python
    with SafetensorsCheckpoint(folder) as checkpoint:
        shapes = {name: checkpoint.shape(name) for name in checkpoint.names()}
    ```
    """

    def __init__(self, folder):
        self.folder = folder
        if storage.exists(storage.join(folder, WEIGHTS_INDEX_FILE)):
            index = storage.read_json(storage.join(folder, WEIGHTS_INDEX_FILE))
            files = sorted(set(index["weight_map"].values()))
        elif storage.exists(storage.join(folder, WEIGHTS_FILE)):
            files = [WEIGHTS_FILE]
        else:
            raise ValueError(
                f"{folder} holds neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}: only "
                "safetensors checkpoints are read (re-save the model with "
                "`save_pretrained(..., safe_serialization=True)`)."
            )
        self._entries = {}  # name -> (path, data offset, header entry)
        for file in files:
            path = storage.join(folder, file)
            header, offset = read_header(path)
            for name, entry in header.items():
                self._entries[name] = (path, offset, entry)

    def names(self):
        """All tensor names."""
        return set(self._entries)

    def shape(self, name):
        """The shape of tensor `name` (from the header); KeyError when absent."""
        return tuple(self._entries[name][2]["shape"])

    def get(self, name):
        """Tensor `name` as a NumPy array (bfloat16 widened to float32).

        Raises:
            KeyError: when absent; ValueError for a dtype not read here.
        """
        path, offset, entry = self._entries[name]
        dtype = entry["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"Tensor {name} has dtype {dtype}; readable: {sorted(_DTYPES)}.")
        begin, end = entry["data_offsets"]
        data = storage.read_range(path, offset + begin, end - begin)
        array = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(entry["shape"])
        if dtype == "BF16":  # the top half of a float32
            array = (array.astype("<u4") << 16).view("<f4")
        return array

    def close(self):
        self._entries = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LazyArray:
    """An array computed only when NumPy asks for it (`np.asarray`), with its
    shape known before: lets an import or export hold one tensor at a time.

    Args:
        shape: the array's shape.
        compute: `() -> np.ndarray` of that shape.

    Example:

    ```python
    kernel = LazyArray((512, 2048), lambda: checkpoint.get("wi.weight").T)
    ```
    """

    def __init__(self, shape, compute):
        self.shape = tuple(shape)
        self._compute = compute

    def __array__(self, dtype=None, copy=None):
        array = np.asarray(self._compute())
        return array if dtype is None else array.astype(dtype)

    @property
    def T(self):
        return LazyArray(self.shape[::-1], lambda: np.asarray(self).T)

    def __mul__(self, factor):
        return LazyArray(self.shape, lambda: np.asarray(self) * factor)


def write_safetensors(path, tensors, metadata=None):
    """Write `{name: array-like}` as a float32 safetensors file, one tensor at a time.

    Args:
        path: the file (local or `tf.io.gfile`).
        tensors: a dict of arrays or `LazyArray`s (anything with `.shape` that
            `np.asarray` converts); each is converted only when written.
        metadata: optional `{str: str}` (transformers wants `{"format": "pt"}`).

    Example:

    ```python
    write_safetensors("model.safetensors", {"w": np.ones((2, 3), "float32")}, {"format": "pt"})
    ```
    """
    header, position = {}, 0
    for name, array in tensors.items():
        size = int(np.prod(array.shape, dtype=np.int64)) * 4
        header[name] = {
            "dtype": "F32",
            "shape": [int(n) for n in array.shape],
            "data_offsets": [position, position + size],
        }
        position += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % _ALIGNMENT)
    # A generator: each tensor is converted only when it is written.
    data = (
        np.ascontiguousarray(np.asarray(array), dtype="<f4").tobytes() for array in tensors.values()
    )
    storage.write_chunks(path, itertools.chain([len(encoded).to_bytes(8, "little"), encoded], data))
