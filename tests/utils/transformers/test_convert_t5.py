"""Hugging Face T5 import against transformers' PyTorch T5 as the oracle."""

import json
import os

import numpy as np
import pytest

from hf_test_utils import T5_10, T5_11, hf_logits, save_hf_t5
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, relative_error
from keras_fusion.utils.transformers import convert_t5
from t5_test_utils import TOLERANCE, random_inputs


def keras_logits(lm, inputs):
    return np.asarray(lm.predict_on_batch(inputs))


@pytest.mark.parametrize("variant", [T5_10, T5_11], ids=["t5_1.0_relu_tied", "t5_1.1_gated_gelu_untied"])
def test_imported_logits_equal_transformers(variant, tmp_path):
    model, folder = save_hf_t5(tmp_path / "hf", **variant)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    assert isinstance(lm.backbone, FusionT5Backbone)
    assert lm.backbone.tie_embedding_weights == variant["tie_word_embeddings"]
    assert lm.backbone.key_value_dim == 8 and lm.backbone.num_heads == 3
    assert lm.backbone.layer_norm_epsilon == 1e-5
    inputs = random_inputs()
    assert relative_error(keras_logits(lm, inputs), hf_logits(model, inputs)) <= TOLERANCE
