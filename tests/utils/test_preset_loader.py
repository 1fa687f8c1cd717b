"""from_preset on keras_fusion classes: keras-hub T5 presets, grown presets, load_lm."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_fusion.diagnostics import relative_error
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, load_lm
from t5_test_utils import TOLERANCE, random_backbone, random_inputs

VOCABULARY = 200


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    from keras_fusion import data

    return data.train_tokenizer(
        data.load_corpus("embedded", "train")[:200],
        VOCABULARY,
        str(tmp_path_factory.mktemp("spm")),
        num_sentinels=10,
    )


@pytest.fixture(scope="module")
def plain_lm(spm_path):
    """A keras-hub T5Seq2SeqLM (not keras_fusion) with a tokenizer."""
    backbone = random_backbone(vocabulary_size=VOCABULARY, activation="gelu", seed=3)
    tokenizer = keras_hub.models.T5Tokenizer(proto=spm_path)
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=16, decoder_sequence_length=8
    )
    return keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=preprocessor)


def logits(lm, inputs):
    return np.asarray(lm(inputs, training=False))  # no preprocessing


def test_keras_hub_t5_presets_load_as_keras_fusion_classes(plain_lm, tmp_path):
    plain_lm.save_to_preset(str(tmp_path / "lm"))
    plain_lm.backbone.save_to_preset(str(tmp_path / "backbone"))
    inputs = random_inputs()
    expected = logits(plain_lm, inputs)
    lm = FusionT5Seq2SeqLM.from_preset(str(tmp_path / "lm"))
    assert type(lm) is FusionT5Seq2SeqLM and type(lm.backbone) is FusionT5Backbone
    assert relative_error(logits(lm, inputs), expected) <= TOLERANCE
    assert lm.preprocessor.tokenizer.proto == plain_lm.preprocessor.tokenizer.proto
    for preset in ("lm", "backbone"):
        backbone = FusionT5Backbone.from_preset(str(tmp_path / preset))
        assert type(backbone) is FusionT5Backbone
        assert relative_error(logits(FusionT5Seq2SeqLM(backbone), inputs), expected) <= TOLERANCE


def test_grown_model_round_trips_through_keras_hub_generic_loader(plain_lm, tmp_path):
    grown = FusionT5Seq2SeqLM.fuse(
        FusionT5Seq2SeqLM(
            FusionT5Backbone.from_parameters(*_config_and_tree(plain_lm.backbone)),
            preprocessor=plain_lm.preprocessor,
        ),
        FusionT5Seq2SeqLM(
            random_backbone(
                vocabulary_size=VOCABULARY,
                activation="gelu",
                hidden_dim=8,
                num_heads=1,
                seed=4,
                cls=FusionT5Backbone,
            )
        ),
    )
    grown.save_to_preset(str(tmp_path / "grown"))
    loaded = keras_hub.models.Seq2SeqLM.from_preset(str(tmp_path / "grown"))
    assert type(loaded) is FusionT5Seq2SeqLM and loaded.backbone.norm_groups == [16, 8]
    inputs = random_inputs(seed=1)
    assert relative_error(logits(loaded, inputs), logits(grown, inputs)) <= TOLERANCE
    again = FusionT5Seq2SeqLM.from_preset(str(tmp_path / "grown"))
    assert relative_error(logits(again, inputs), logits(grown, inputs)) <= TOLERANCE


def _config_and_tree(backbone):
    from keras_fusion.models import variable_trees
    from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables

    return backbone_config(backbone), variable_trees.read(backbone_variables(backbone))


def test_load_lm_reads_keras_files_presets_and_returns_the_sentencepiece_model(
    plain_lm, spm_path, tmp_path
):
    with open(spm_path, "rb") as f:
        proto = f.read()
    inputs = random_inputs(seed=2)
    expected = logits(plain_lm, inputs)
    plain_lm.save(str(tmp_path / "plain.keras"))
    plain_lm.save_to_preset(str(tmp_path / "preset"))
    for path in (str(tmp_path / "plain.keras"), str(tmp_path / "preset")):
        lm, loaded_proto = load_lm(path)
        assert isinstance(lm, FusionT5Seq2SeqLM) and loaded_proto == proto
        assert relative_error(logits(lm, inputs), expected) <= TOLERANCE
    no_tokenizer = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone))
    no_tokenizer.save(str(tmp_path / "bare.keras"))
    lm, loaded_proto = load_lm(str(tmp_path / "bare.keras"))
    assert loaded_proto is None and lm.preprocessor is None
    for bad in (str(tmp_path / "missing.keras"), str(tmp_path / "nothing_here")):
        with pytest.raises(ValueError, match="nothing_here|missing.keras"):
            load_lm(bad)
    keras.utils.clear_session()
