"""Analytic FLOPs against a hand count."""

from keras_fusion import flops
from keras_fusion.models import FusionT5Backbone
from keras_fusion.models.fusion_t5_backbone import backbone_config


def test_hand_count_of_one_tiny_configuration():
    config = dict(
        vocabulary_size=10,
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        key_value_dim=3,
        use_gated_activation=True,
    )
    # Hand count, batch 1, 5 encoder tokens, 2 decoder tokens; inner = 2 heads * 3 = 6.
    # Encoder, per token: q,k,v,o 4 * 4*6 = 96 MACs; QK^T and AV 2 * 5*6 = 60 MACs;
    #   gated FFN: Wi, Wg 2 * 4*8 = 64, Wo 8*4 = 32 -> 96 MACs.  (96+60+96) * 5 tokens = 1260.
    # Decoder, per token: self q,k,v,o 96; self QK^T, AV 2 * 2*6 = 24; cross q, o 2 * 24 = 48;
    #   cross QK^T, AV 2 * 5*6 = 60; FFN 96 -> 324 MACs * 2 tokens = 648;
    #   cross k, v on the 5 encoder outputs: 2 * 24 * 5 = 240.
    # Logits: 2 tokens * 4*10 = 80.  Total 1260 + 648 + 240 + 80 = 2228 MACs = 4456 FLOPs.
    assert flops.forward_flops(config, 1, 5, 2) == 4456
    assert flops.training_flops(config, 3, 5, 2) == 3 * 3 * 4456


def test_plain_ffn_and_default_head_size():
    plain = dict(
        vocabulary_size=10,
        num_layers=2,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        key_value_dim=None,
        use_gated_activation=False,
    )
    # One fewer FFN matrix (4*8 MACs) per token and layer: (5 + 2) tokens * 2 layers * 32 * 2 FLOPs.
    gated = dict(plain, use_gated_activation=True)
    assert (
        flops.forward_flops(gated, 1, 5, 2) - flops.forward_flops(plain, 1, 5, 2) == 7 * 2 * 32 * 2
    )
    backbone = FusionT5Backbone(
        vocabulary_size=10,
        num_layers=2,
        num_heads=2,
        hidden_dim=4,
        intermediate_dim=8,
        use_gated_activation=False,
    )
    assert flops.forward_flops(backbone_config(backbone), 1, 5, 2) == flops.forward_flops(
        plain, 1, 5, 2
    )
