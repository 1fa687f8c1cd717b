"""FusionT5Block: a keras-hub T5 layer with grouped norms, and its parameter tree.

The growth operators act on whole backbones (`FusionT5Backbone.fuse`, ...),
through the pure maps of `growth_maps`; a block contributes its variables as
a tree (`block_variables`).
"""

import inspect

import keras

from keras_fusion._keras_internals import T5MultiHeadAttention, T5TransformerLayer
from keras_fusion.layers.grouped_rms_norm import GroupedRMSNorm
from keras_fusion.layers.t5_token_embedding import attention_initializers, dense_initializer


def _attention_variables(attention):
    tree = {
        "query": attention.query_projector.kernel,
        "key": attention.key_projector.kernel,
        "value": attention.value_projector.kernel,
        "output": attention.output_projector.kernel,
    }
    if attention.use_relative_attention_bias:
        tree["relative_bias"] = attention.relative_attention_bias
    return tree


def block_variables(block):
    """The block's variables as a parameter tree (see `growth_maps`).

    Variables are found by attribute, never by path: keras-hub's norm names
    come from global counters and both relative biases share one path.
    """
    if not block.built:
        raise ValueError(
            f"Layer {block.name} is not built yet: call it once (or build the "
            "model that holds it) before growing it."
        )
    tree = {
        "self_attention": _attention_variables(block.self_attention),
        "self_attention_norm": block.self_attention_layer_norm.weight,
        "ffn_input": block.input_projector.kernel,
        "ffn_output": block.output_projector.kernel,
        "ffn_norm": block.layer_norm.weight,
    }
    if block.is_decoder:
        tree["cross_attention"] = _attention_variables(block.cross_attention)
        tree["cross_attention_norm"] = block.cross_attention_layer_norm.weight
    if block.use_gated_activation:
        tree["ffn_gate"] = block.gate_projector.kernel
    return tree


@keras.saving.register_keras_serializable(package="keras_fusion")
class FusionT5Block(T5TransformerLayer):
    """A T5 encoder or decoder layer whose norms are `GroupedRMSNorm`.

    Computes what keras-hub's `T5TransformerLayer` computes (the call is
    inherited unchanged), except that every RMSNorm normalises each feature
    group separately. A block fused from `n` blocks has `n` groups and, on
    the concatenated input `[x_1; ...; x_n]`, returns the concatenation of
    what each block returns on its own input.

    Args:
        is_decoder: bool. Decoder layers add cross-attention and a causal mask.
        hidden_dim: int. Width of the residual stream.
        intermediate_dim: int. Width of the feed-forward hidden layer.
        key_value_dim: int. Size of each attention head.
        dropout: float. Dropout rate.
        activation: string or callable. Feed-forward activation.
        layer_norm_epsilon: float. RMSNorm epsilon.
        num_heads: int. Number of attention heads.
        use_gated_activation: bool. Gated feed-forward (`act(x Wi) * (x Wg)`).
        use_relative_attention_bias: bool. Whether this layer owns the
            relative position bias (only layer 0 of a stack does).
        norm_groups: list of ints adding up to `hidden_dim`, or `None` for
            one group (plain T5).

    Call arguments:
        Those of `keras_hub`'s `T5TransformerLayer`: `hidden_states`,
        `attention_mask`, `position_bias`, `encoder_hidden_states`,
        `encoder_attention_mask`, `use_causal_mask`, caches, `training`.

    Returns:
        `(hidden_states, position_bias)`, or with caches when caches are
        passed, as `T5TransformerLayer` does.

    Example:

    ```python
    block = FusionT5Block(is_decoder=False, hidden_dim=12, intermediate_dim=24,
                          key_value_dim=4, dropout=0.0, activation="relu",
                          layer_norm_epsilon=1e-6, num_heads=3, norm_groups=[8, 4])
    outputs, position_bias = block(keras.random.normal((1, 3, 12)))
    ```
    """

    def __init__(
        self,
        is_decoder,
        hidden_dim,
        intermediate_dim,
        key_value_dim,
        dropout,
        activation,
        layer_norm_epsilon,
        num_heads,
        use_gated_activation=False,
        use_relative_attention_bias=False,
        norm_groups=None,
        **kwargs,
    ):
        # T5TransformerLayer.__init__ creates T5LayerNorm by name, so the
        # wiring is restated here with GroupedRMSNorm; call() is inherited.
        keras.layers.Layer.__init__(self, **kwargs)
        self.is_decoder = is_decoder
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.key_value_dim = key_value_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.activation = keras.activations.serialize(keras.activations.get(activation))
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_gated_activation = use_gated_activation
        self.use_relative_attention_bias = use_relative_attention_bias
        self.norm_groups = list(norm_groups) if norm_groups else [hidden_dim]
        if sum(self.norm_groups) != hidden_dim:
            raise ValueError(
                f"norm_groups {self.norm_groups} add up to "
                f"{sum(self.norm_groups)}, but hidden_dim is {hidden_dim}."
            )

        def attention(name, relative_bias):
            layer = T5MultiHeadAttention(
                is_decoder=is_decoder,
                hidden_dim=hidden_dim,
                key_value_dim=key_value_dim,
                num_heads=num_heads,
                dropout=dropout,
                use_relative_attention_bias=relative_bias,
                dtype=self.dtype_policy,
                name=name,
            )
            # T5's fan-ins (keras-hub uses num_heads * key_value_dim for the
            # query, key and value too); the kernels are created in build().
            initializers = attention_initializers(hidden_dim, num_heads, key_value_dim)
            for role, initializer in initializers.items():
                getattr(layer, f"{role}_projector").kernel_initializer = initializer
            return layer

        def norm(name):
            return GroupedRMSNorm(
                epsilon=layer_norm_epsilon,
                groups=self.norm_groups,
                dtype=self.dtype_policy,
                name=name,
            )

        def dense(units, fan_in, name, act=None):
            return keras.layers.Dense(
                units,
                use_bias=False,
                activation=act,
                kernel_initializer=dense_initializer(fan_in),
                dtype=self.dtype_policy,
                name=name,
            )

        def dropout_layer():
            return keras.layers.Dropout(dropout, dtype=self.dtype_policy)

        self.self_attention = attention("self_attention", use_relative_attention_bias)
        self.self_attention_layer_norm = norm("self_attention_layer_norm")
        self.self_attention_dropout = dropout_layer()
        if is_decoder:
            self.cross_attention = attention("cross_attention", False)
            self.cross_attention_layer_norm = norm("cross_attention_layer_norm")
            self.cross_attention_dropout = dropout_layer()
        self.input_projector = dense(
            intermediate_dim,
            hidden_dim,
            "input_projector",
            keras.activations.get(activation),
        )
        if use_gated_activation:
            self.gate_projector = dense(intermediate_dim, hidden_dim, "gate_projector")
        self.output_projector = dense(hidden_dim, intermediate_dim, "output_projector")
        self.layer_norm = norm("layer_norm")
        self.dropout_layer = dropout_layer()

    def build(self, hidden_states_shape):
        # Every sub-layer is built from the widths alone. Without a `build`
        # Keras builds a layer by tracing its `call` once more, and the
        # attention layers (which have none either) once more again: that
        # was 2/3 of the graph ops a functional T5 construction creates
        # (T5-small: 288 Dense calls traced instead of 108, see
        # benchmarks/convert.py). Variables and their paths are the same.
        width = (None, None, self.hidden_dim)
        attentions = [self.self_attention]
        if self.is_decoder:
            attentions.append(self.cross_attention)
        for attention in attentions:
            with keras.name_scope(attention.name):
                for projector in (
                    attention.query_projector,
                    attention.key_projector,
                    attention.value_projector,
                ):
                    projector.build(width)
                attention.output_projector.build((None, None, attention.inner_dim))
            attention.build(width)
        norms = [self.self_attention_layer_norm, self.layer_norm]
        if self.is_decoder:
            norms.append(self.cross_attention_layer_norm)
        for norm in norms:
            norm.build(width)
        self.input_projector.build(width)
        if self.use_gated_activation:
            self.gate_projector.build(width)
        self.output_projector.build((None, None, self.intermediate_dim))

    def compute_output_spec(self, *args, **kwargs):
        # A functional model asks each layer for its output spec. Keras
        # would trace `call` for it, the larger part of constructing a T5
        # model; without caches the spec follows from the inputs' shapes:
        # the hidden states keep theirs, and `position_bias` is the given one
        # or this layer's (1 or batch, heads, length, length), per example
        # once a mask is folded in. With caches, Keras traces as usual.
        arguments = inspect.signature(self.call).bind(*args, **kwargs).arguments
        if (
            arguments.get("self_attention_cache") is not None
            or arguments.get("cross_attention_cache") is not None
        ):
            return super().compute_output_spec(*args, **kwargs)
        hidden_shape = tuple(arguments["hidden_states"].shape)
        position_bias = arguments.get("position_bias")
        if position_bias is not None:
            bias_shape = tuple(position_bias.shape)
        else:
            mask = arguments.get("attention_mask")
            if arguments.get("use_causal_mask"):
                batch = hidden_shape[0]
            else:
                batch = 1 if mask is None else mask.shape[0]
            bias_shape = (batch, self.num_heads, hidden_shape[1], hidden_shape[1])
        return (
            keras.KerasTensor(hidden_shape, dtype=self.compute_dtype),
            keras.KerasTensor(bias_shape, dtype=self.compute_dtype),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "is_decoder": self.is_decoder,
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
                "key_value_dim": self.key_value_dim,
                "dropout": self.dropout,
                "activation": self.activation,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "num_heads": self.num_heads,
                "use_gated_activation": self.use_gated_activation,
                "use_relative_attention_bias": self.use_relative_attention_bias,
                "norm_groups": self.norm_groups,
            }
        )
        return config
