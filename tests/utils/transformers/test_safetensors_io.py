"""Our streaming safetensors reader and writer against the safetensors package."""

import numpy as np
import pytest
import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402

from hf_test_utils import torch  # noqa: F401  (skips without the test extra)
from keras_fusion.utils.transformers.safetensors_io import (
    LazyArray,
    SafetensorsCheckpoint,
    write_safetensors,
)


def test_reader_matches_the_safetensors_package_and_widens_bfloat16_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.normal(size=(3, 5)).astype("float32"),
        "b": rng.normal(size=(7,)).astype("float16"),
        "c": rng.normal(size=(2, 2, 2)).astype("float64"),
    }
    safetensors.numpy.save_file(
        arrays, str(tmp_path / "model.safetensors"), metadata={"format": "pt"}
    )
    with SafetensorsCheckpoint(str(tmp_path)) as checkpoint:
        assert checkpoint.names() == set(arrays)
        for name, array in arrays.items():
            assert checkpoint.shape(name) == array.shape
            np.testing.assert_array_equal(checkpoint.get(name), array)
        with pytest.raises(KeyError):
            checkpoint.get("missing")
    # bfloat16 (numpy has none): written by torch's safetensors API.

    values = torch.tensor([[1.5, -2.25], [3.0e-3, 65280.0]], dtype=torch.bfloat16)
    (tmp_path / "bf16").mkdir()
    safetensors.torch.save_file({"w": values}, str(tmp_path / "bf16" / "model.safetensors"))
    read = SafetensorsCheckpoint(str(tmp_path / "bf16")).get("w")
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values.float().numpy())


def test_writer_is_read_back_by_the_safetensors_package(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {
        "x": rng.normal(size=(4, 3)).astype("float32"),
        "odd": rng.normal(size=(5,)).astype("float32"),
    }
    kernel = rng.normal(size=(2, 6)).astype("float32")
    tensors = dict(arrays, lazy_transposed=LazyArray(kernel.shape, lambda: kernel).T)
    write_safetensors(str(tmp_path / "model.safetensors"), tensors, metadata={"format": "pt"})
    loaded = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
    np.testing.assert_array_equal(loaded["lazy_transposed"], kernel.T)


def test_a_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="only safetensors checkpoints are read"):
        SafetensorsCheckpoint(str(tmp_path))
