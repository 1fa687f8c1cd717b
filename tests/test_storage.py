"""keras_fusion.storage on the local disk and on a TF filesystem that is not it (ram://)."""

import os

import keras
import numpy as np
import pytest

from keras_fusion import storage


@pytest.mark.parametrize("root", ["local", "ram://storage_test"])
def test_files_round_trip_and_rewrites_replace(root, tmp_path):
    root = str(tmp_path) if root == "local" else root
    path = storage.join(root, "a", "b.json")
    storage.write_json(path, {"x": [1, 2]})
    storage.write_json(path, {"x": 3})  # a rewrite replaces, never appends
    assert storage.read_json(path) == {"x": 3}
    storage.write_bytes(storage.join(root, "a", "c.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(root, "a", "c.bin")) == b"\x00\x01"
    storage.append_text(storage.join(root, "log.txt"), "one\n")
    storage.append_text(storage.join(root, "log.txt"), "two\n")
    assert storage.read_text(storage.join(root, "log.txt")) == "one\ntwo\n"
    assert storage.listdir(storage.join(root, "a")) == ["b.json", "c.bin"]
    assert storage.glob(storage.join(root, "**", "*.json")) == [path]
    storage.remove(storage.join(root, "a", "missing"))  # no error
    storage.rmtree(storage.join(root, "a"))
    assert not storage.exists(path) and storage.listdir(storage.join(root, "a")) == []


@pytest.mark.parametrize("root", ["local", "ram://storage_test_chunks"])
def test_chunked_writes_and_ranged_reads(root, tmp_path):
    root = str(tmp_path) if root == "local" else root
    path = storage.join(root, "weights.bin")
    written = []

    def chunks(data):  # a generator: the file is never whole in memory
        for chunk in data:
            written.append(chunk)
            yield chunk

    storage.write_chunks(path, chunks([b"header", b"0123456789"]))
    storage.write_chunks(path, chunks([b"HEAD", b"abcdefgh"]))  # a rewrite replaces, never appends
    assert written == [b"header", b"0123456789", b"HEAD", b"abcdefgh"]
    assert storage.read_bytes(path) == b"HEADabcdefgh"
    assert storage.read_range(path, 4, 3) == b"abc"
    assert storage.read_range(path, 0, 4) == b"HEAD"
    assert storage.read_range(path, 10, 100) == b"gh"  # a read past the end stops there
    if root == str(tmp_path):
        assert os.listdir(tmp_path) == ["weights.bin"]  # no temporary left


def test_a_failing_chunk_leaves_the_old_local_file(tmp_path):
    path = str(tmp_path / "w.bin")
    storage.write_bytes(path, b"old")

    def chunks():
        yield b"new"
        raise OSError("tensor unreadable")

    with pytest.raises(OSError, match="tensor unreadable"):
        storage.write_chunks(path, chunks())
    assert storage.read_bytes(path) == b"old"
    assert os.listdir(tmp_path) == ["w.bin"]


def test_a_local_write_leaves_no_temporary_and_never_half_a_file(tmp_path, monkeypatch):
    path = str(tmp_path / "x.json")
    storage.write_json(path, {"old": True})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.write_json(path, {"new": True})
    assert storage.read_json(path) == {"old": True}
    assert os.listdir(tmp_path) == ["x.json"]


def test_models_save_and_load_on_a_remote_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for _ in range(2):  # the second save replaces the first
        storage.save_model(model, "ram://storage_test/models/m.keras")
    loaded = storage.load_model("ram://storage_test/models/m.keras", compile=False)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))
    with pytest.raises(ValueError, match="--model not found: ram://storage_test/none.keras"):
        storage.load_model("ram://storage_test/none.keras", argument="--model")
    assert os.listdir(tmp_path) == []  # nothing local, no folder named "ram:"


def test_unique_names_differ():
    names = {storage.unique_name("ckpt-000000004", ".keras") for _ in range(100)}
    assert len(names) == 100 and all(
        n.startswith("ckpt-000000004-") and n.endswith(".keras") for n in names
    )


@pytest.mark.slow
def test_loading_what_the_library_writes_warns_nothing(tmp_path):
    """A grown, trained `GrowingT5Seq2SeqLM` (what tools.train writes as
    final.keras and in checkpoints) and its inner LM (what tools.fuse writes)
    load without a single Python warning: no "compile() was not called", no
    "skipping variables" (only keras-hub's own mask warning, which the package
    filters by design, is ignored)."""
    import warnings

    from keras_fusion import KERAS_HUB_MASK_WARNING
    from keras_fusion.callbacks import GrowthCallback
    from t5_test_utils import growing_lm, random_inputs, random_labels

    model = growing_lm()
    x, y = random_inputs(batch_size=4, seed=1), random_labels(batch_size=4, seed=2)
    model.fit(
        x, y, batch_size=2, epochs=2, verbose=0, callbacks=[GrowthCallback("deepen@2", verbose=0)]
    )
    assert model.growth_history  # it grew: the saved config is the grown one
    paths = {
        "wrapper": storage.save_model(model, str(tmp_path / "final.keras")),
        "lm": storage.save_model(model.lm, str(tmp_path / "fused.keras")),
    }
    for name, path in paths.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", message=KERAS_HUB_MASK_WARNING, category=UserWarning)
            loaded = storage.load_model(path)
        assert [str(w.message) for w in caught] == [], name
        np.testing.assert_allclose(
            loaded.predict_on_batch(x),
            model.lm.predict_on_batch(x) if name == "lm" else model.predict_on_batch(x),
            rtol=1e-6,
            atol=1e-6,
        )
