"""HF T5 folders and keras-hub presets on a TF filesystem that is not the local disk (ram://).

`ram://` stands in for `gs://`: Python's `open` and `os` cannot see it, and a
rewrite of an existing file there appends unless the writer deletes first
(`keras_fusion.storage`). Nothing may land on the local disk instead.
"""

import os

import keras_hub
import numpy as np
import pytest

from hf_test_utils import T5_10, T5_11, hf_logits, save_hf_t5
from keras_fusion import storage
from keras_fusion.diagnostics import relative_error
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from t5_test_utils import TOLERANCE, random_backbone, random_inputs

SAME = 1e-6  # float32: the same weights through the same computation


def logits(lm, inputs):
    return np.asarray(lm(inputs, training=False))


def copy_tree(source, target):
    """Copy a local folder to any `tf.io.gfile` folder, through storage."""
    for folder, _, files in os.walk(source):
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), source)
            with open(os.path.join(folder, name), "rb") as f:
                storage.write_bytes(storage.join(target, relative), f.read())


@pytest.mark.slow
def test_transformers_export_to_ram_loads_back_and_a_second_export_replaces_the_first(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would land here
    first_hf, first_folder = save_hf_t5(tmp_path / "first", **T5_11)
    # Another shape and layout, so that anything left of the first export
    # (an appended file, a stale tensor) breaks the load or the logits.
    second_hf, second_folder = save_hf_t5(
        tmp_path / "second", seed=1, d_model=12, num_heads=2, d_ff=20, **T5_10
    )
    inputs = random_inputs(seed=5)
    target = "ram://remote_presets_test/hf"
    for hf_model, folder in ((first_hf, first_folder), (second_hf, second_folder)):
        lm = FusionT5Seq2SeqLM.from_preset(folder)
        lm.export_to_transformers(target)
        loaded = FusionT5Seq2SeqLM.from_preset(target)
        assert loaded.backbone.hidden_dim == hf_model.config.d_model
        assert loaded.backbone.tie_embedding_weights == hf_model.config.tie_word_embeddings
        assert relative_error(logits(loaded, inputs), logits(lm, inputs)) <= SAME
        assert relative_error(logits(loaded, inputs), hf_logits(hf_model, inputs)) <= TOLERANCE
        backbone = FusionT5Backbone.from_preset(target)
        assert (
            relative_error(logits(FusionT5Seq2SeqLM(backbone), inputs), logits(lm, inputs)) <= SAME
        )
    assert sorted(os.listdir(tmp_path)) == ["first", "second"]  # no local "ram:" folder


def test_keras_hub_save_to_preset_cannot_write_to_ram(tmp_path, monkeypatch):
    """keras-hub 0.32's `save_to_preset` writes with `os.makedirs` and `open`,
    so a `ram://` (or `gs://`) preset becomes a local folder named `ram:`.
    When keras-hub fixes this, this test fails: then test the direct save."""
    monkeypatch.chdir(tmp_path)
    FusionT5Backbone(**_tiny()).save_to_preset("ram://remote_presets_test/direct")
    assert not storage.exists("ram://remote_presets_test/direct/config.json")
    assert os.path.exists(
        os.path.join(tmp_path, "ram:", "remote_presets_test", "direct", "config.json")
    )


@pytest.mark.slow
def test_keras_hub_presets_copied_to_ram_load_with_the_same_logits(tmp_path, monkeypatch):
    # keras-hub copies remote preset files into KERAS_HOME/models to read them.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    plain = keras_hub.models.T5Seq2SeqLM(backbone=random_backbone(seed=6), preprocessor=None)
    fused = FusionT5Seq2SeqLM.self_fuse(
        FusionT5Seq2SeqLM(random_backbone(seed=7, cls=FusionT5Backbone)), seed=0
    )
    inputs = random_inputs(seed=8)
    for name, model in (("plain", plain), ("fused", fused)):
        model.save_to_preset(str(tmp_path / name))
        copy_tree(str(tmp_path / name), f"ram://remote_presets_test/{name}")
        loaded = FusionT5Seq2SeqLM.from_preset(f"ram://remote_presets_test/{name}")
        assert type(loaded) is FusionT5Seq2SeqLM
        assert loaded.backbone.norm_groups == getattr(
            model.backbone, "norm_groups", [model.backbone.hidden_dim]
        )
        assert relative_error(logits(loaded, inputs), logits(model, inputs)) <= SAME
        backbone = FusionT5Backbone.from_preset(f"ram://remote_presets_test/{name}")
        assert (
            relative_error(logits(FusionT5Seq2SeqLM(backbone), inputs), logits(model, inputs))
            <= SAME
        )


def _tiny():
    return dict(
        vocabulary_size=61,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=12,
        dropout=0.0,
    )
