"""FusionT5Block against keras-hub's T5TransformerLayer, and the growth maps
(`growth_maps`) on block parameter trees: a block built from a fused or
identity tree computes what the maps promise."""

import functools

import keras
import numpy as np
import pytest
from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer
from keras_hub.src.tests.test_case import TestCase

from keras_fusion import growth_maps
from keras_fusion.diagnostics import relative_error
from keras_fusion.layers import FusionT5Block
from keras_fusion.layers.fusion_t5_block import block_variables
from keras_fusion.models import variable_trees
from t5_test_utils import TOLERANCE

RNG = np.random.default_rng(0)
# A small T5 layer's arguments (is_decoder apart).
LAYER = dict(
    hidden_dim=8,
    intermediate_dim=12,
    key_value_dim=4,
    dropout=0.0,
    activation="relu",
    layer_norm_epsilon=1e-6,
    num_heads=2,
    use_gated_activation=True,
    use_relative_attention_bias=True,
)
BLOCK_FIELDS = (
    "is_decoder",
    "key_value_dim",
    "activation",
    "use_gated_activation",
    "layer_norm_epsilon",
    "use_relative_attention_bias",
)


def block_config(block):
    """Constructor arguments of a built or unbuilt T5 layer (the library
    reads whole backbones' configs; the block tests need a block's).

    Works for keras-hub's `T5TransformerLayer` (which has no `get_config`)
    by reading the sub-layers, and for `FusionT5Block`.
    """
    if isinstance(block, FusionT5Block):
        return block.get_config()
    attention = block.self_attention
    return {
        "is_decoder": block.is_decoder,
        "hidden_dim": attention.hidden_dim,
        "intermediate_dim": block.input_projector.units,
        "key_value_dim": attention.key_value_dim,
        "dropout": block.dropout_layer.rate,
        "activation": keras.activations.serialize(block.input_projector.activation),
        "layer_norm_epsilon": block.layer_norm.epsilon,
        "num_heads": attention.num_heads,
        "use_gated_activation": block.use_gated_activation,
        "use_relative_attention_bias": attention.use_relative_attention_bias,
        "norm_groups": [attention.hidden_dim],
    }


def block_from(config, parameters):
    """A built FusionT5Block of `config` holding the tree `parameters`."""
    config = {k: v for k, v in config.items() if k != "name"}
    block = FusionT5Block(**config)
    x = keras.ops.zeros((1, 2, block.hidden_dim))
    block(x, encoder_hidden_states=x, use_causal_mask=True) if block.is_decoder else block(x)
    variable_trees.assign(block_variables(block), parameters)
    return block


def fuse(*blocks):
    """The fusion of blocks through the pure maps."""
    configs = [block_config(b) for b in blocks]
    growth_maps.check_same(configs, BLOCK_FIELDS)
    trees = [variable_trees.read(block_variables(b)) for b in blocks]
    return block_from(growth_maps.fused_config(configs), growth_maps.fuse_parameters(trees))


def identity_of(block):
    """A new block of `block`'s configuration computing the identity."""
    config = dict(block_config(block), use_relative_attention_bias=False)
    return block_from(
        config, growth_maps.identity_block(variable_trees.read(block_variables(block)))
    )


def t5_layer(
    hidden_dim,
    num_heads,
    ff,
    is_decoder,
    gated=True,
    bias=True,
    activation="relu",
    cls=T5TransformerLayer,
):
    layer = cls(
        is_decoder=is_decoder,
        hidden_dim=hidden_dim,
        intermediate_dim=ff,
        key_value_dim=4,
        dropout=0.0,
        activation=activation,
        layer_norm_epsilon=1e-6,
        num_heads=num_heads,
        use_gated_activation=gated,
        use_relative_attention_bias=bias,
    )
    run(layer, hidden_dim)
    for v in layer.weights:  # random norm scales, not ones
        if v.path.endswith("weight"):
            v.assign(RNG.uniform(0.5, 1.5, v.shape).astype("float32"))
    return layer


def features(width, seed, length=6):
    return np.random.default_rng(seed).normal(size=(2, length, width)).astype("float32")


def run(layer, width, x=None, encoder=None):
    x = features(width, 1) if x is None else x
    mask = np.ones((2, 1, x.shape[1]), "int32")
    mask[0, :, -2:] = 0
    if layer.is_decoder:
        encoder = features(width, 2) if encoder is None else encoder
        out, _ = layer(
            x,
            attention_mask=mask,
            encoder_hidden_states=encoder,
            encoder_attention_mask=mask,
            use_causal_mask=True,
        )
    else:
        out, _ = layer(x, attention_mask=mask)
    return np.asarray(out)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_one_group_block_equals_t5_layer(is_decoder):
    plain = t5_layer(8, 2, 16, is_decoder)
    ours = t5_layer(8, 2, 16, is_decoder, cls=FusionT5Block)
    variable_trees.assign(block_variables(ours), variable_trees.read(block_variables(plain)))
    np.testing.assert_array_equal(run(ours, 8), run(plain, 8))


@pytest.mark.parametrize(
    "is_decoder,gated,activation",
    [(False, True, "relu"), (True, True, "gelu"), (True, False, "relu"), (False, False, "gelu")],
)
def test_fuse_is_the_concatenation_of_the_blocks(is_decoder, gated, activation):
    a = t5_layer(8, 2, 16, is_decoder, gated, activation=activation)
    b = t5_layer(12, 3, 20, is_decoder, gated, activation=activation)
    fused = fuse(a, b)
    assert fused.norm_groups == [8, 12] and fused.num_heads == 5
    xa, xb, ea, eb = features(8, 3), features(12, 4), features(8, 5), features(12, 6)
    out = run(fused, 20, np.concatenate([xa, xb], -1), np.concatenate([ea, eb], -1))
    ref = np.concatenate([run(a, 8, xa, ea), run(b, 12, xb, eb)], -1)
    assert relative_error(out, ref) <= TOLERANCE


def test_fuse_of_fused_blocks_accumulates_groups():
    a, b, c = (t5_layer(d, h, 2 * d, True) for d, h in [(8, 2), (4, 1), (12, 3)])
    ab = fuse(a, b)
    abc = fuse(ab, c)
    assert abc.norm_groups == [8, 4, 12]
    xs = [features(d, 10 + d) for d in (8, 4, 12)]
    es = [features(d, 20 + d) for d in (8, 4, 12)]
    out = run(abc, 24, np.concatenate(xs, -1), np.concatenate(es, -1))
    ref = np.concatenate([run(m, d, x, e) for m, d, x, e in zip((a, b, c), (8, 4, 12), xs, es)], -1)
    assert relative_error(out, ref) <= TOLERANCE


@pytest.mark.parametrize("is_decoder", [False, True])
def test_deepen_is_an_exact_identity(is_decoder):
    block = t5_layer(8, 2, 16, is_decoder)
    new = identity_of(block)
    x = features(8, 7)
    mask = np.ones((2, 1, 6), "int32")
    bias = np.random.default_rng(3).normal(size=(1, 2, 6, 6)).astype("float32")
    kwargs = dict(position_bias=bias)
    if is_decoder:
        kwargs.update(
            encoder_hidden_states=features(8, 8), encoder_attention_mask=mask, use_causal_mask=True
        )
    out, _ = new(x, **kwargs)
    np.testing.assert_array_equal(np.asarray(out), x)
    assert not new.use_relative_attention_bias


def test_inputs_are_not_modified():
    a, b = t5_layer(8, 2, 16, True), t5_layer(4, 1, 8, True)
    before = [np.array(v.numpy()) for v in a.weights + b.weights]
    identity_of(fuse(a, b))
    for v, w in zip(a.weights + b.weights, before):
        np.testing.assert_array_equal(v.numpy(), w)


def test_config_round_trip():
    fused = fuse(t5_layer(8, 2, 16, True), t5_layer(4, 1, 8, True))
    restored = FusionT5Block.from_config(fused.get_config())
    assert restored.get_config() == fused.get_config()
    assert restored.norm_groups == [8, 4]


@pytest.mark.parametrize(
    "other,field",
    [
        (dict(is_decoder=True), "is_decoder"),
        (dict(gated=False), "use_gated_activation"),
        (dict(activation="gelu"), "activation"),
        (dict(bias=False), "use_relative_attention_bias"),
    ],
)
def test_fuse_rejects_incompatible_blocks(other, field):
    base = dict(is_decoder=False, gated=True, activation="relu", bias=True)
    a = t5_layer(8, 2, 16, **base)
    b = t5_layer(8, 2, 16, **{**base, **other})
    with pytest.raises(ValueError, match=f"{field} differs: .* vs "):
        fuse(a, b)


def test_block_variables_need_a_built_block():
    a = t5_layer(8, 2, 16, False)
    unbuilt = T5TransformerLayer(is_decoder=False, **dict(LAYER, intermediate_dim=16))
    with pytest.raises(ValueError, match="not built"):
        fuse(a, unbuilt)


BLOCK = dict(LAYER, intermediate_dim=16, norm_groups=[4, 4])


class FusionT5BlockHelperTest(TestCase):
    """keras-hub's layer checks on a T5 block.

    `run_layer_test` runs on the encoder block (build, symbolic and eager
    calls, output shapes, serialization, precision) but without its training
    check: the block's second output, the position bias, has batch 1 while
    the hidden states have the batch's size, and a Keras `fit` on both
    refuses the mixed cardinality. The decoder's call takes a dict with a
    Python-bool `use_causal_mask`, which the helper cannot pass through its
    input data; its serialization and precision checks are run directly.
    """

    def test_run_layer_test(self):
        self.run_layer_test(
            cls=FusionT5Block,
            init_kwargs=dict(BLOCK, is_decoder=False),
            input_data=features(8, 1),
            expected_output_shape=((2, 6, 8), (1, 2, 6, 6)),
            expected_num_trainable_weights=10,
            run_training_check=False,
        )

    def test_run_serialization_test(self):
        fused = fuse(t5_layer(8, 2, 16, True), t5_layer(4, 1, 8, True))
        self.run_serialization_test(fused)

    def test_run_precision_test_encoder(self):
        self.run_precision_test(FusionT5Block, dict(BLOCK, is_decoder=False), features(8, 1))

    def test_run_precision_test_decoder(self):
        inputs = {
            "hidden_states": features(8, 1),
            "encoder_hidden_states": features(8, 2, length=4),
            "use_causal_mask": True,
        }
        self.run_precision_test(FusionT5Block, dict(BLOCK, is_decoder=True), inputs)


@pytest.mark.parametrize("is_decoder", [False, True])
def test_build_creates_the_variables_keras_tracing_creates(is_decoder, monkeypatch):
    """FusionT5Block.build builds the sub-layers from the widths; the
    variables (paths, shapes, order) are those Keras creates when it builds
    a layer without `build` by tracing its call."""
    kwargs = dict(LAYER, is_decoder=is_decoder, name="block")
    ours = FusionT5Block(**kwargs)
    ours.build((None, None, 8))
    with monkeypatch.context() as patch:
        patch.setattr(
            FusionT5Block, "build", keras.layers.Layer.build
        )  # Keras' default: build by tracing
        traced = FusionT5Block(**kwargs)
        run(traced, 8)
    assert ours.built and all(layer.built for layer in ours._flatten_layers(include_self=False))
    assert [(v.path, tuple(v.shape)) for v in ours.weights] == [
        (v.path, tuple(v.shape)) for v in traced.weights
    ]


def _symbolic_calls(block, batch, length, dtype):
    """(description, args, kwargs) of the symbolic calls a functional T5 makes, and more."""
    x = keras.KerasTensor((batch, length, block.hidden_dim), dtype=dtype)
    mask = keras.KerasTensor((batch, 1, length), dtype="int32")
    bias = keras.KerasTensor((batch, block.num_heads, length, length), dtype=dtype)
    calls = [
        ("no mask", {}),
        ("mask", {"attention_mask": mask}),
        ("given bias", {"attention_mask": mask, "position_bias": bias}),
    ]
    if block.is_decoder:
        calls = [
            (
                name,
                dict(
                    kw, encoder_hidden_states=x, encoder_attention_mask=mask, use_causal_mask=causal
                ),
            )
            for name, kw in calls
            for causal in (False, True)
        ]
    return x, calls


@pytest.mark.parametrize("dtype_policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("batch,length", [(None, None), (3, 5)])
def test_output_spec_without_tracing_equals_the_traced_spec(
    is_decoder, batch, length, dtype_policy
):
    block = FusionT5Block(
        **dict(LAYER, use_gated_activation=False), is_decoder=is_decoder, dtype=dtype_policy
    )
    x, calls = _symbolic_calls(block, batch, length, block.compute_dtype)
    block(x, **calls[0][1])  # builds it
    for name, kwargs in calls:
        fast = block.compute_output_spec(x, **kwargs)
        traced = T5TransformerLayer.compute_output_spec(block, x, **kwargs)  # Keras' trace of call
        assert [(tuple(t.shape), t.dtype) for t in fast] == [
            (tuple(t.shape), t.dtype) for t in traced
        ], name


def test_a_functional_backbone_is_built_without_tracing_its_blocks(monkeypatch):
    from keras_fusion.models import FusionT5Backbone

    traced = []
    call = T5TransformerLayer.call

    @functools.wraps(call)  # Keras reads call's signature
    def counting_call(self, *args, **kwargs):
        traced.append(self.name)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(T5TransformerLayer, "call", counting_call)
    backbone = FusionT5Backbone(
        vocabulary_size=20,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=12,
        key_value_dim=4,
        dropout=0.0,
    )
    assert traced == []  # no block call was traced to construct the model
    assert backbone.built and all(layer.built for layer in backbone.encoder_transformer_layers)
    ids = np.array([[1, 2, 3]], "int32")
    backbone(
        {
            "encoder_token_ids": ids,
            "encoder_padding_mask": np.ones_like(ids),
            "decoder_token_ids": ids,
            "decoder_padding_mask": np.ones_like(ids),
        }
    )
    assert len(traced) == 4  # the real call runs every block once
