"""T5's initialisation: fresh token embeddings are centred and distinct, tied
and untied, at several widths; the attention kernels have T5's fan-ins; and a
canary records what keras-hub's own T5Backbone draws today."""

import keras
import numpy as np
import pytest
from keras_hub.models import T5Backbone

from keras_fusion.layers import T5TokenEmbedding
from keras_fusion.models import FusionT5Backbone

VOCABULARY = 1000


def backbone(hidden_dim, tie, seed=0, cls=FusionT5Backbone, **kwargs):
    keras.utils.set_random_seed(seed)
    return cls(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        key_value_dim=8,
        dropout=0.0,
        tie_embedding_weights=tie,
        **kwargs,
    )


def mean_pairwise_cosine(vectors):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit.T
    n = len(vectors)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("hidden_dim", [16, 64, 128])
def test_fresh_embedding_is_centred_and_distinct(hidden_dim, tie):
    embeddings = backbone(hidden_dim, tie).token_embedding.embeddings.numpy()
    n = embeddings.size
    # Normal(0, 1) draws: the sample mean is within 5 standard errors of 0,
    # the sample std within 5% of 1 (n >= 16,000).
    assert abs(embeddings.mean()) < 5 / np.sqrt(n)
    assert abs(embeddings.std() - 1.0) < 0.05
    # Independent directions: pairwise cosines average to 0 (each has std
    # 1/sqrt(hidden_dim); keras-hub's mean-1 draw gives 0.998).
    assert abs(mean_pairwise_cosine(embeddings)) < 0.01


@pytest.mark.parametrize("hidden_dim", [16, 64, 128])
def test_untied_output_embedding_has_unit_scale_logits(hidden_dim):
    # Mesh TF's untied output layer: std hidden_dim ** -0.5, so that
    # unscaled untied logits of an RMS-normalised state have std ~1.
    layer = backbone(hidden_dim, tie=False).token_embedding
    reverse = layer.reverse_embeddings.numpy()
    assert reverse.shape == (hidden_dim, VOCABULARY)
    assert abs(reverse.std() * np.sqrt(hidden_dim) - 1.0) < 0.05
    assert abs(reverse.mean()) < 5 / np.sqrt(reverse.size) / np.sqrt(hidden_dim)
    assert abs(mean_pairwise_cosine(reverse.T)) < 0.01


def test_attention_and_ffn_kernels_have_t5_fan_ins():
    # hidden 64 with 2 heads of 8: inner_dim 16 differs from hidden_dim,
    # where keras-hub's query, key and value fan-ins (inner_dim) are not T5's.
    block = backbone(64, tie=True, seed=3).encoder_transformer_layers[0]
    attention = block.self_attention
    expected = {
        attention.query_projector: (64 * 8) ** -0.5,
        attention.key_projector: 64**-0.5,
        attention.value_projector: 64**-0.5,
        attention.output_projector: 16**-0.5,
        block.input_projector: 64**-0.5,
        block.gate_projector: 64**-0.5,
        block.output_projector: 128**-0.5,
    }
    for layer, std in expected.items():
        kernel = layer.kernel.numpy()
        assert abs(kernel.std() / std - 1.0) < 0.1, (layer.name, kernel.std(), std)
        assert abs(kernel.mean()) < 5 * std / np.sqrt(kernel.size), layer.name


def test_embeddings_initializer_argument_is_kept_in_config():
    legacy = keras.initializers.TruncatedNormal(1.0)
    model = backbone(16, tie=True, embeddings_initializer=legacy)
    assert abs(model.token_embedding.embeddings.numpy().mean() - 1.0) < 0.01
    config = model.get_config()
    assert config["embeddings_initializer"]["class_name"] == "TruncatedNormal"
    restored = FusionT5Backbone.from_config(config)
    assert abs(restored.token_embedding.embeddings.numpy().mean() - 1.0) < 0.01
    assert backbone(16, tie=True).get_config()["embeddings_initializer"] is None


def test_token_embedding_layer_round_trips_its_config():
    layer = T5TokenEmbedding(
        VOCABULARY, 32, tie_weights=False, reverse_embeddings_initializer="zeros"
    )
    layer.build()
    assert np.all(layer.reverse_embeddings.numpy() == 0)
    restored = T5TokenEmbedding.from_config(layer.get_config())
    restored.build()
    assert np.all(restored.reverse_embeddings.numpy() == 0)
    assert abs(restored.embeddings.numpy().std() - 1.0) < 0.05


def test_keras_hub_t5_backbone_still_draws_mean_one_embeddings():
    """Canary: keras-hub 0.32's T5Backbone passes TruncatedNormal(1.0), whose
    first argument is the mean. If this fails, keras-hub has changed its
    initialisation: compare it with T5's and update
    keras_fusion/layers/t5_token_embedding.py and docs/growth.md."""
    embeddings = backbone(64, tie=True, cls=T5Backbone).token_embedding.embeddings.numpy()
    assert abs(embeddings.mean() - 1.0) < 0.01
    assert embeddings.std() < 0.06
    assert mean_pairwise_cosine(embeddings) > 0.99
