"""Analytic FLOPs of T5 training steps, from the configuration alone.

Counts the matrix multiplications that dominate a T5 step: attention
projections, attention scores and weighted sums, feed-forward layers and the
output logits; one multiply-add is 2 FLOPs. Norms, softmax, activations and
embedding lookups are left out (linear in width, small next to the matmuls).
A training step costs 3 forward passes (forward, and a backward pass of about
twice the forward), the usual estimate (Kaplan et al. 2020).

Example:

```python
from keras_fusion import flops
per_step = flops.training_flops(backbone_config, batch_size=16,
                                encoder_length=64, decoder_length=16)
```
"""


def head_dim(config):
    """The size of one attention head of a T5 config: `key_value_dim`, or
    T5's default `hidden_dim // num_heads` when it is None or 0 (keras-hub's
    `T5Backbone` and transformers' `d_kv`).

    ```python
    head_dim({"hidden_dim": 64, "num_heads": 4, "key_value_dim": None})  # 16
    ```
    """
    return config.get("key_value_dim") or config["hidden_dim"] // config["num_heads"]


def forward_flops(config, batch_size, encoder_length, decoder_length):
    """FLOPs of one forward pass of a T5 seq2seq LM.

    Args:
        config: a T5 backbone config (dict with `vocabulary_size`,
            `num_layers`, `num_heads`, `hidden_dim`, `intermediate_dim`,
            `key_value_dim`, `use_gated_activation`), e.g. from
            `keras_fusion.models.fusion_t5_backbone.backbone_config`.
        batch_size: sequences per step.
        encoder_length: encoder tokens per sequence.
        decoder_length: decoder tokens per sequence.

    Returns:
        An int.
    """
    d, f = config["hidden_dim"], config["intermediate_dim"]
    heads = config["num_heads"]
    inner = heads * head_dim(config)
    le, ld = encoder_length, decoder_length
    ffn = 2 * d * f * (3 if config["use_gated_activation"] else 2)
    projections = 2 * 4 * d * inner  # q, k, v and output projections
    encoder_layer = le * (projections + 2 * 2 * le * inner + ffn)
    decoder_layer = (
        ld * (projections + 2 * 2 * ld * inner)  # self-attention
        + ld * 2 * 2 * d * inner  # cross-attention q and output, per decoder token
        + le * 2 * 2 * d * inner  # cross-attention k and v, on the encoder output
        + ld * 2 * 2 * le * inner  # cross-attention scores and weighted sum
        + ld * ffn
    )
    logits = ld * 2 * d * config["vocabulary_size"]
    return batch_size * (config["num_layers"] * (encoder_layer + decoder_layer) + logits)


def training_flops(config, batch_size, encoder_length, decoder_length):
    """FLOPs of one training step: 3 forward passes (see the module doc)."""
    return 3 * forward_flops(config, batch_size, encoder_length, decoder_length)
