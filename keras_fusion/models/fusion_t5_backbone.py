"""FusionT5Backbone: a keras-hub T5 backbone that can be grown."""

import keras
import numpy as np
from keras_hub.models import Backbone, T5Backbone

from keras_fusion import _keras_internals as internals
from keras_fusion import growth_maps, operators
from keras_fusion.flops import head_dim
from keras_fusion.layers.fusion_t5_block import FusionT5Block, block_variables
from keras_fusion.layers.grouped_rms_norm import GroupedRMSNorm
from keras_fusion.layers.t5_token_embedding import T5TokenEmbedding
from keras_fusion.models import variable_trees
from keras_fusion.operators import FUSE_FIELDS, NORM_MODES  # noqa: F401 (re-exported)
from keras_fusion.utils import preset_loader
from keras_fusion.utils.transformers import convert_t5, export_t5

_CONSTRUCTOR_ARGS = (
    "vocabulary_size",
    "num_layers",
    "num_heads",
    "hidden_dim",
    "intermediate_dim",
    "key_value_dim",
    "dropout",
    "activation",
    "use_gated_activation",
    "layer_norm_epsilon",
    "tie_embedding_weights",
    "norm_groups",
    "embeddings_initializer",
    "dtype",
)


def backbone_config(backbone):
    """Constructor arguments of a T5 backbone, plain or fused.

    `key_value_dim` is made explicit (keras-hub's default is
    `hidden_dim // num_heads`, which a fused width would change) and a plain
    `T5Backbone` reports one norm group.
    """
    if not isinstance(backbone, T5Backbone):
        raise ValueError(
            "Expected a keras_hub.models.T5Backbone (or FusionT5Backbone), got "
            f"{type(backbone).__name__}."
        )
    config = backbone.get_config()
    config["key_value_dim"] = head_dim(config)
    config["activation"] = keras.activations.serialize(keras.activations.get(config["activation"]))
    config.setdefault("norm_groups", [backbone.hidden_dim])
    config.setdefault("embeddings_initializer", None)
    return {k: v for k, v in config.items() if k in _CONSTRUCTOR_ARGS}


def backbone_variables(backbone):
    """The backbone's variables as a parameter tree (see `growth_maps`)."""
    tree = {
        "token_embedding": backbone.token_embedding.embeddings,
        "encoder_layers": [block_variables(b) for b in backbone.encoder_transformer_layers],
        "decoder_layers": [block_variables(b) for b in backbone.decoder_transformer_layers],
        "encoder_norm": backbone.encoder_layer_norm.weight,
        "decoder_norm": backbone.decoder_layer_norm.weight,
    }
    if not backbone.tie_embedding_weights:
        tree["reverse_embedding"] = backbone.token_embedding.reverse_embeddings
    return tree


def as_fusion_backbone(cls, backbone):
    """A `cls` (a `FusionT5Backbone` class) holding a plain `T5Backbone`'s
    weights (one norm group)."""
    return cls.from_parameters(
        backbone_config(backbone), variable_trees.read(backbone_variables(backbone))
    )


def check_fusable(backbones):
    """Raise ValueError naming the first field on which backbones disagree."""
    configs = [backbone_config(b) for b in backbones]
    growth_maps.check_same(configs, FUSE_FIELDS)
    return configs


@keras.saving.register_keras_serializable(package="keras_fusion")
class FusionT5Backbone(T5Backbone):
    """A T5 backbone built from `FusionT5Block`s, with growth class methods.

    Takes `keras_hub.models.T5Backbone`'s arguments and has its inputs and
    outputs. Every RMSNorm is a `GroupedRMSNorm` whose groups are
    `norm_groups`; with the default single group the model computes exactly
    what a `T5Backbone` with the same weights computes.

    Growth (each a class method returning a new model; the inputs are left
    untouched):
        - `fuse(*backbones)`: Deep Fusion, one wider model whose outputs are
          the inputs' outputs concatenated along features.
        - `self_fuse(backbone)`: twice the width, duplicated outputs, with
          symmetry-breaking noise that cancels.
        - `deepen(backbone, n)`: n more layers in each stack, exact identity.
        - `widen_ffn(backbone, factor)`: wider feed-forward blocks, exact.

    Args:
        vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
        key_value_dim, dropout, activation, use_gated_activation,
        layer_norm_epsilon, tie_embedding_weights, dtype: as for
            `keras_hub.models.T5Backbone`.
        norm_groups: list of ints adding up to `hidden_dim`: the feature
            groups every RMSNorm normalises separately. `None` means one
            group (plain T5).
        embeddings_initializer: the token embedding's initializer (a Keras
            initializer or its name). `None`, the default, is T5's: normal
            with mean 0 and standard deviation 1.

    Initialisation: T5's (Mesh TensorFlow's, which transformers'
    `T5PreTrainedModel._init_weights` restates), not keras-hub's. keras-hub
    0.32's `T5Backbone` draws its token embedding with
    `TruncatedNormal(1.0)`, mean 1, so every token starts as nearly the same
    vector and a model trained from it ignores its encoder. The table of
    every variable, and where keras-hub and transformers differ, is in
    `keras_fusion.layers.t5_token_embedding` and docs/growth.md. Weights
    loaded from a preset or a Hugging Face checkpoint replace the draws.

    Example:

    ```python
    a = FusionT5Backbone(vocabulary_size=100, num_layers=2, num_heads=2,
                         hidden_dim=16, intermediate_dim=32, dropout=0.0)
    b = FusionT5Backbone(vocabulary_size=100, num_layers=2, num_heads=1,
                         hidden_dim=8, intermediate_dim=16, key_value_dim=8,
                         dropout=0.0)
    fused = FusionT5Backbone.fuse(a, b)   # hidden 24, 3 heads, groups [16, 8]
    deeper = FusionT5Backbone.deepen(fused, num_new_layers=1)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        key_value_dim=None,
        dropout=0.1,
        activation="relu",
        use_gated_activation=True,
        layer_norm_epsilon=1e-06,
        tie_embedding_weights=True,
        norm_groups=None,
        embeddings_initializer=None,
        dtype=None,
        **kwargs,
    ):
        if embeddings_initializer is not None:
            embeddings_initializer = keras.initializers.get(embeddings_initializer)
        norm_groups = [int(g) for g in norm_groups] if norm_groups else [hidden_dim]
        if sum(norm_groups) != hidden_dim or min(norm_groups) <= 0:
            raise ValueError(
                f"norm_groups must be positive and add up to hidden_dim="
                f"{hidden_dim}, got {norm_groups}."
            )
        block_head_dim = head_dim(
            dict(hidden_dim=hidden_dim, num_heads=num_heads, key_value_dim=key_value_dim)
        )

        # T5Backbone.__init__ instantiates T5TransformerLayer and T5LayerNorm
        # by name, so the functional wiring is restated with our layers.
        self.token_embedding = T5TokenEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=tie_embedding_weights,
            embeddings_initializer=embeddings_initializer,
            dtype=dtype,
            name="token_embedding",
        )

        def stack(is_decoder, prefix):
            return [
                FusionT5Block(
                    is_decoder=is_decoder,
                    hidden_dim=hidden_dim,
                    intermediate_dim=intermediate_dim,
                    key_value_dim=block_head_dim,
                    dropout=dropout,
                    activation=activation,
                    layer_norm_epsilon=layer_norm_epsilon,
                    num_heads=num_heads,
                    use_gated_activation=use_gated_activation,
                    use_relative_attention_bias=(i == 0),
                    norm_groups=norm_groups,
                    dtype=dtype,
                    name=f"transformer_{prefix}_layer_{i}",
                )
                for i in range(num_layers)
            ]

        def norm(name):
            return GroupedRMSNorm(
                epsilon=layer_norm_epsilon, groups=norm_groups, dtype=dtype, name=name
            )

        def dropout_layer(name):
            return keras.layers.Dropout(dropout, dtype=dtype, name=name)

        self.encoder_embedding_dropout = dropout_layer("encoder_embedding_dropout")
        self.encoder_transformer_layers = stack(False, "encoder")
        self.encoder_layer_norm = norm("encoder_output_layer_norm")
        self.encoder_dropout = dropout_layer("encoder_output_dropout")
        self.decoder_embedding_dropout = dropout_layer("decoder_embedding_dropout")
        self.decoder_transformer_layers = stack(True, "decoder")
        self.decoder_layer_norm = norm("decoder_output_layer_norm")
        self.decoder_dropout = dropout_layer("decoder_output_dropout")

        inputs = {
            name: keras.Input(shape=(None,), dtype="int32", name=name)
            for name in (
                "encoder_token_ids",
                "encoder_padding_mask",
                "decoder_token_ids",
                "decoder_padding_mask",
            )
        }
        encoder_attention_mask = inputs["encoder_padding_mask"][:, None, :]
        x = self.token_embedding(inputs["encoder_token_ids"])
        x = self.encoder_embedding_dropout(x)
        position_bias = None
        for layer in self.encoder_transformer_layers:
            x, position_bias = layer(
                x,
                attention_mask=encoder_attention_mask,
                position_bias=position_bias,
                use_causal_mask=False,
            )
        encoder_output = self.encoder_dropout(self.encoder_layer_norm(x))

        x = self.token_embedding(inputs["decoder_token_ids"])
        x = self.decoder_embedding_dropout(x)
        decoder_attention_mask = inputs["decoder_padding_mask"][:, None, :]
        position_bias = None
        for layer in self.decoder_transformer_layers:
            x, position_bias = layer(
                x,
                attention_mask=decoder_attention_mask,
                position_bias=position_bias,
                encoder_hidden_states=encoder_output,
                encoder_attention_mask=encoder_attention_mask,
                use_causal_mask=True,
            )
        decoder_output = self.decoder_dropout(self.decoder_layer_norm(x))

        Backbone.__init__(
            self,
            inputs,
            outputs={
                "encoder_sequence_output": encoder_output,
                "decoder_sequence_output": decoder_output,
            },
            dtype=dtype,
            **kwargs,
        )

        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.activation = keras.activations.get(activation)
        self.key_value_dim = key_value_dim
        self.dropout = dropout
        self.use_gated_activation = use_gated_activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.tie_embedding_weights = tie_embedding_weights
        self.norm_groups = norm_groups
        self.embeddings_initializer = embeddings_initializer

    def get_config(self):
        config = super().get_config()
        config["norm_groups"] = self.norm_groups
        config["embeddings_initializer"] = (
            None
            if self.embeddings_initializer is None
            else keras.initializers.serialize(self.embeddings_initializer)
        )
        return config

    # --- Checkpoints in and out ---------------------------------------------

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A backbone from a preset, a keras-hub T5 or a Hugging Face T5.

        Besides what keras-hub's `Backbone.from_preset` loads (presets saved
        from keras_fusion models), this reads a local (or `gs://`, `hf://`)
        Hugging Face T5 folder, converted exactly (see
        `keras_fusion.utils.transformers.convert_t5`), and a keras-hub preset
        saved from a plain `T5Backbone`.

        Args:
            preset: the preset directory, HF folder or handle.
            load_weights: False gives the architecture with random weights.
            **kwargs: `dtype`, or keras-hub's loader arguments.

        Returns:
            A `FusionT5Backbone` (one norm group for imports).

        Raises:
            ValueError: for an HF config keras-hub's T5 cannot represent,
                naming the field, before any weight is read.

        Example:

        ```python
        backbone = FusionT5Backbone.from_preset("/path/to/t5-v1_1-small")
        ```
        """
        config = preset_loader.preset_config(preset)
        if preset_loader.is_hf_t5(config):
            return convert_t5.load_backbone(
                cls, preset_loader.hf_folder(preset), load_weights, kwargs.pop("dtype", None)
            )
        if preset_loader.is_plain_t5_preset(cls, config):
            plain = Backbone.from_preset(preset, load_weights=load_weights, **kwargs)
            return as_fusion_backbone(cls, plain)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def export_to_transformers(self, path):
        """Write a Hugging Face T5 folder of this backbone (see
        `keras_fusion.utils.transformers.export_t5.write_transformers_folder`;
        no tokenizer). Refused, writing nothing, for several norm groups.

        Args:
            path: the folder (local or `tf.io.gfile`).

        Returns:
            `path`.

        Example:

        ```python
        backbone.export_to_transformers("hf_t5")
        ```
        """
        return export_t5.write_transformers_folder(
            path, backbone_config(self), backbone_variables(self)
        )

    # --- Growth -----------------------------------------------------------

    @classmethod
    def from_parameters(cls, config, parameters):
        """Build a backbone from a config and a parameter tree (no training).

        The variables are created directly with their final values: the
        model is built with deferred variable initialisation and each
        variable is then initialised from its array, which saves filling
        every variable with random values only to overwrite them, the
        larger part of the cost of `fuse` at T5-small size (see
        benchmarks/growth_cost.py). Variables that are not in the tree (the
        dropout layers' seed generator states) are initialised as usual.
        Inside a `tf.distribute` strategy scope the variables are
        distributed as in a normal construction. Inside a
        `keras.StatelessScope` they are left for Keras to initialise when
        the scope ends, as for any model built there, but with `parameters`
        as their values.

        Args:
            config: constructor arguments (other keys are ignored).
            parameters: a parameter tree (see `growth_maps`) matching the
                model `config` describes. It is not modified.

        Returns:
            A `FusionT5Backbone` whose variables hold exactly `parameters`
            (cast to the variables' dtype).

        Raises:
            ValueError: naming the first place where the tree's structure or
                a leaf's shape does not match the model, before any variable
                is given a value.
        """
        config = {k: v for k, v in config.items() if k in _CONSTRUCTOR_ARGS}
        return _build_with_values(cls, config, parameters)

    @classmethod
    def zeros(cls, config):
        """A backbone of `config` with every parameter zero, built without
        filling its variables with random values first (a model that is
        about to be given its values, as `keras_fusion.growth_ahead` does)."""
        config = {k: v for k, v in config.items() if k in _CONSTRUCTOR_ARGS}
        return _build_with_values(cls, config, None)

    @classmethod
    def fuse(cls, *backbones, norm="grouped"):
        """Deep Fusion: one wider backbone computing all inputs side by side.

        The fused encoder and decoder outputs are exactly the inputs' outputs
        concatenated along features, in the order given. Embeddings are
        concatenated, attention and feed-forward kernels placed
        block-diagonally, heads and relative biases concatenated.

        Args:
            *backbones: two or more `T5Backbone`s (plain or fused). They may
                differ in `hidden_dim`, `num_heads` and `intermediate_dim`,
                and must agree on every field in `FUSE_FIELDS`.
            norm: `"grouped"` (default): each input keeps its own norm
                group(s), exact. `"global"`: one RMSNorm over the whole
                width, a plain T5; NOT exact for different models (measure
                it with `keras_fusion.diagnostics`).

        Returns:
            A `FusionT5Backbone`.
        """
        return cls.from_parameters(*grown(operators.Fuse(norm=norm), backbones))

    @classmethod
    def self_fuse(cls, backbone, noise=1e-3, seed=None, norm="grouped"):
        """Self fusion: the model fused with itself, made to train apart.

        Twice the width, heads and feed-forward width; the outputs are the
        input's outputs duplicated, `[y; y]`. Plain block-diagonal self
        fusion would keep the two halves identical under gradient descent
        forever (identical halves get identical gradients). Here every
        output block reads both input halves with `W/2 + N` and `W/2 - N`:
        the noise cancels on the duplicated input, so the function is
        unchanged, but the halves receive different gradients.

        Args:
            backbone: a `T5Backbone`.
            noise: float >= 0. Noise standard deviation as a fraction of each
                kernel's standard deviation. 0 gives the symmetric (never
                diverging) construction.
            seed: int or None, for the noise.
            norm: `"grouped"` (groups duplicated) or `"global"` (one group;
                also exact, since `[x; x]` has the RMS of `x`, but only for
                a model with one group).
        """
        return cls.from_parameters(*grown(operators.SelfFuse(noise, seed, norm), [backbone]))

    @classmethod
    def deepen(cls, backbone, num_new_layers, mode="identity"):
        """More layers in both stacks.

        Args:
            backbone: a `T5Backbone`.
            num_new_layers: int >= 1, layers appended to the encoder and to
                the decoder each.
            mode: `"identity"` (default): each new layer copies the last one
                with its output projections zeroed, an exact identity.
                `"stack"`: copies of layers 0, 1, ... appended (G_stack
                style); NOT function-preserving.
        """
        return cls.from_parameters(*grown(operators.Deepen(num_new_layers, mode), [backbone]))

    @classmethod
    def widen_ffn(cls, backbone, factor, noise=1e-3, seed=None):
        """Feed-forward blocks `factor` times wider, same function.

        Args:
            backbone: a `T5Backbone`.
            factor: int >= 2.
            noise: float >= 0, cancelling noise on the split output rows (as
                a fraction of their standard deviation) so that the copies
                of a hidden unit train apart.
            seed: int or None.
        """
        return cls.from_parameters(*grown(operators.WidenFFN(factor, noise, seed), [backbone]))


# Building a model directly with given values (FusionT5Backbone.from_parameters),
# through Keras' deferred variable initialisation (`_keras_internals`, whose
# canary tests pin it). Each of our variables is initialised on its own, so
# variables that someone else left uninitialised are left to them.


def _build_with_values(cls, config, parameters):
    """`cls(**config)` whose tree variables are created holding `parameters`."""
    backbone, ours = internals.build_uninitialized(lambda: cls(**config))
    if parameters is None:  # every tree variable zero
        parameters = keras.tree.map_structure(
            lambda v: np.zeros(v.shape, "float32"), backbone_variables(backbone)
        )
    # Everything is checked before any variable gets a value.
    pairs = variable_trees.checked_pairs(backbone_variables(backbone), parameters)

    deferred = {id(v) for v in ours}
    nested = internals.in_stateless_scope()
    for _, variable, array in pairs:
        if id(variable) in deferred and internals.is_uninitialized(variable):
            if nested:
                internals.set_uninitialized_initializer(
                    variable, variable_trees.constant_initializer(array)
                )
            else:
                internals.initialize_with(variable, variable_trees.constant_initializer(array))
        else:
            # Not deferred (not expected with Keras 3.15): the usual way.
            variable.assign(variable_trees.as_tensor(array, variable.dtype))
    if nested:
        # Inside an enclosing stateless scope nothing can be initialised:
        # hand the variables back to Keras, which initialises them (now
        # from `parameters`) when that scope ends.
        internals.hand_back_uninitialized(ours)
        return backbone
    for variable in ours:
        if internals.is_uninitialized(variable):  # not in the tree: seed generator states
            internals.initialize_with(variable)
    return backbone


# Plans: compute (config, parameters) of a grown model, building nothing.
# The class methods above and FusionT5Seq2SeqLM's build from them.


def _read(backbone, what="the model"):
    tree = variable_trees.read(backbone_variables(backbone))
    growth_maps.check_finite(tree, what)
    return tree


def grown(operator, backbones, lm=False):
    """Config and parameters of `operator` (a `keras_fusion.operators`
    object) applied to `backbones`, nothing built; `lm`: the backbones are
    language models' (a fusion rescales the final decoder norm so that the
    logits are kept).

    Raises:
        ValueError: the backbones cannot be grown so (the first field on
            which fused models disagree, a non-finite weight, ...).
    """
    configs = [backbone_config(b) for b in backbones]
    config = operator.grown_config(configs)
    names = ["the model"] if len(backbones) == 1 else [f"model {i}" for i in range(len(backbones))]
    trees = [_read(b, name) for b, name in zip(backbones, names)]
    return config, operator.map(trees, configs, lm=lm)
