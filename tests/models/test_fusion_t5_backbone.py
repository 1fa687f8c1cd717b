"""FusionT5Backbone: keras-hub's contract, and exactness of every operator."""

import os

import keras
import numpy as np
import pytest
from keras_hub.src.tests.test_case import TestCase

from keras_fusion.diagnostics import function_error
from keras_fusion.models import FusionT5Backbone, variable_trees
from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables
from t5_test_utils import TOLERANCE, assert_unchanged, random_backbone, random_inputs, snapshot

INPUTS = random_inputs()


def assert_exact(grown, sources):
    errors = function_error(grown, sources, INPUTS)
    assert max(errors.values()) <= TOLERANCE, errors


class FusionT5BackboneKerasHubTest(TestCase):
    """The checks keras-hub runs on its own T5Backbone, on ours."""

    def setUp(self):
        self.init_kwargs = {
            "vocabulary_size": 10,
            "num_layers": 2,
            "num_heads": 2,
            "hidden_dim": 4,
            "intermediate_dim": 4,
            "norm_groups": [2, 2],
        }
        self.input_data = {
            "encoder_token_ids": np.ones((2, 3), dtype="int32"),
            "encoder_padding_mask": np.zeros((2, 3), dtype="int32"),
            "decoder_token_ids": np.ones((2, 3), dtype="int32"),
            "decoder_padding_mask": np.zeros((2, 3), dtype="int32"),
        }

    def test_backbone_basics(self):
        self.run_backbone_test(
            cls=FusionT5Backbone,
            init_kwargs=self.init_kwargs,
            input_data=self.input_data,
            expected_output_shape={
                "encoder_sequence_output": (2, 3, 4),
                "decoder_sequence_output": (2, 3, 4),
            },
        )

    @pytest.mark.slow
    def test_saved_model(self):
        self.run_model_saving_test(
            cls=FusionT5Backbone, init_kwargs=self.init_kwargs, input_data=self.input_data
        )


def test_one_group_equals_keras_hub_t5_backbone():
    plain = random_backbone(seed=3)
    ours = random_backbone(seed=4, cls=FusionT5Backbone)
    assert [i.name for i in ours.inputs] == [i.name for i in plain.inputs]
    variable_trees.assign(backbone_variables(ours), variable_trees.read(backbone_variables(plain)))
    a, b = plain.predict_on_batch(INPUTS), ours.predict_on_batch(INPUTS)
    assert set(a) == set(b) == {"encoder_sequence_output", "decoder_sequence_output"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# (config of model a, config of model b): gated and plain FFN, relu and gelu,
# different widths and head counts, tied and untied embeddings.
PAIRS = {
    "gated_relu_tied": (
        dict(hidden_dim=16, num_heads=2, intermediate_dim=32),
        dict(hidden_dim=24, num_heads=3, intermediate_dim=40),
    ),
    "plain_gelu_untied": (
        dict(
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=24,
            use_gated_activation=False,
            activation="gelu",
            tie_embedding_weights=False,
        ),
        dict(
            hidden_dim=8,
            num_heads=1,
            intermediate_dim=16,
            use_gated_activation=False,
            activation="gelu",
            tie_embedding_weights=False,
        ),
    ),
}


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request):
    a_config, b_config = PAIRS[request.param]
    return random_backbone(seed=0, **a_config), random_backbone(seed=1, **b_config)


def test_fuse_is_exact_and_leaves_inputs_alone(pair):
    a, b = pair
    before_a, before_b = snapshot(a), snapshot(b)
    fused = FusionT5Backbone.fuse(a, b)
    assert fused.hidden_dim == a.hidden_dim + b.hidden_dim
    assert fused.num_heads == a.num_heads + b.num_heads
    assert fused.norm_groups == [a.hidden_dim, b.hidden_dim]
    assert_exact(fused, [a, b])
    assert_unchanged(a, before_a)
    assert_unchanged(b, before_b)


def test_global_norm_is_a_plain_t5_and_its_error_is_measured(pair):
    a, b = pair
    fused = FusionT5Backbone.fuse(a, b, norm="global")
    assert fused.norm_groups == [fused.hidden_dim]
    errors = function_error(fused, [a, b], INPUTS)
    # One RMSNorm over two different models' features is not exact: the
    # helper must see it (the grouped fusion of the same pair is within 1e-5).
    assert min(errors.values()) > 1e-3, errors


def test_self_fuse_is_exact(pair):
    a, _ = pair
    fused = FusionT5Backbone.self_fuse(a, noise=0.01, seed=0)
    assert fused.hidden_dim == 2 * a.hidden_dim and fused.num_heads == 2 * a.num_heads
    assert_exact(fused, [a, a])


def test_self_fuse_global_norm_is_exact_for_one_group(pair):
    a, _ = pair
    fused = FusionT5Backbone.self_fuse(a, noise=0.01, seed=0, norm="global")
    assert fused.norm_groups == [2 * a.hidden_dim]
    assert_exact(fused, [a, a])


def test_deepen_and_widen_are_exact(pair):
    a, b = pair
    fused = FusionT5Backbone.fuse(a, b)
    deeper = FusionT5Backbone.deepen(fused, 2)
    assert deeper.num_layers == 4 and len(deeper.decoder_transformer_layers) == 4
    assert_exact(deeper, [a, b])
    wider = FusionT5Backbone.widen_ffn(fused, 2, noise=0.01, seed=1)
    assert wider.intermediate_dim == 2 * fused.intermediate_dim
    assert_exact(wider, [a, b])


def test_fuse_of_fused_models():
    a = random_backbone(seed=0)
    b = random_backbone(hidden_dim=8, num_heads=1, intermediate_dim=16, seed=1)
    c = random_backbone(hidden_dim=24, num_heads=3, intermediate_dim=48, seed=2)
    ab = FusionT5Backbone.fuse(a, b)
    abc = FusionT5Backbone.fuse(ab, c)
    assert abc.norm_groups == [16, 8, 24]
    assert_exact(abc, [a, b, c])
    three = FusionT5Backbone.fuse(a, b, c)
    assert_exact(three, [a, b, c])
    self_of_fused = FusionT5Backbone.self_fuse(ab, noise=0.01, seed=0)
    assert self_of_fused.norm_groups == [16, 8, 16, 8]
    assert_exact(self_of_fused, [a, b, a, b])


def test_stack_mode_is_documented_as_not_exact():
    a = random_backbone(seed=0)
    stacked = FusionT5Backbone.deepen(a, 2, mode="stack")
    assert stacked.num_layers == 4
    assert min(function_error(stacked, [a], INPUTS).values()) > 1e-3


def test_self_fuse_noise_makes_the_halves_train_apart():
    """Block-diagonal self fusion (noise=0) keeps the halves identical forever;
    cancelling noise lets them diverge (docs/growth.md, "Self fusion that trains")."""
    a = random_backbone(seed=0)
    labels = np.random.default_rng(0).integers(0, 16, (3, 9)).astype("int32")

    def halves_gap_after_training(noise):
        fused = FusionT5Backbone.self_fuse(a, noise=noise, seed=0)
        output = fused(fused.input)["decoder_sequence_output"]
        model = keras.Model(fused.input, keras.layers.Dense(16, kernel_initializer="ones")(output))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(INPUTS, labels, epochs=5, batch_size=3, verbose=0)
        table = fused.token_embedding.embeddings.numpy()
        d = a.hidden_dim
        return np.linalg.norm(table[:, :d] - table[:, d:]) / np.linalg.norm(table)

    assert halves_gap_after_training(0.0) < 1e-6
    assert halves_gap_after_training(0.05) > 1e-3


@pytest.mark.slow
def test_grown_model_round_trips_through_keras_file(tmp_path):
    a = random_backbone(seed=0)
    b = random_backbone(hidden_dim=8, num_heads=1, intermediate_dim=16, seed=1)
    grown = FusionT5Backbone.deepen(FusionT5Backbone.fuse(a, b), 1)
    path = os.path.join(tmp_path, "grown.keras")
    grown.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, FusionT5Backbone)
    assert restored.norm_groups == [16, 8] and restored.num_layers == 3
    assert restored.get_config() == grown.get_config()
    ref, out = grown.predict_on_batch(INPUTS), restored.predict_on_batch(INPUTS)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key])
    restored_config = FusionT5Backbone.from_config(grown.get_config())
    assert restored_config.count_params() == grown.count_params()


MISMATCHES = [
    ("vocabulary_size", dict(vocabulary_size=70), "61 vs 70"),
    ("num_layers", dict(num_layers=3), "2 vs 3"),
    ("key_value_dim", dict(key_value_dim=4), "8 vs 4"),
    ("activation", dict(activation="gelu"), "relu vs gelu"),
    ("use_gated_activation", dict(use_gated_activation=False), "True vs False"),
    ("tie_embedding_weights", dict(tie_embedding_weights=False), "True vs False"),
    ("layer_norm_epsilon", dict(layer_norm_epsilon=1e-5), "1e-06 vs 1e-05"),
]


@pytest.mark.parametrize("field,change,values", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_fuse_rejects_mismatched_models_naming_field_and_values(field, change, values, monkeypatch):
    a = random_backbone(seed=0)
    b = random_backbone(seed=1, **change)
    built = []
    monkeypatch.setattr(
        FusionT5Backbone, "from_parameters", classmethod(lambda *args: built.append(1))
    )
    with pytest.raises(ValueError, match=f"^{field} differs: {values}"):
        FusionT5Backbone.fuse(a, b)
    assert not built  # raised before any model was built


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda a: FusionT5Backbone.fuse(a), "fuse needs at least two models, got 1"),
        (
            lambda a: FusionT5Backbone.fuse(a, a, norm="layer"),
            r"norm must be one of \('grouped', 'global'\), got 'layer'",
        ),
        (
            lambda a: FusionT5Backbone.fuse(a, "model.keras"),
            "Expected a keras_hub.models.T5Backbone",
        ),
        (
            lambda a: FusionT5Backbone.self_fuse(a, noise=-1.0),
            "noise must be a finite number >= 0, got -1.0",
        ),
        (
            lambda a: FusionT5Backbone.self_fuse(a, noise=float("nan")),
            "noise must be a finite number",
        ),
        (lambda a: FusionT5Backbone.deepen(a, 0), "num_new_layers must be an int >= 1, got 0"),
        (
            lambda a: FusionT5Backbone.deepen(a, 1, mode="interleave"),
            r"mode must be one of \('identity', 'stack'\), got 'interleave'",
        ),
        (lambda a: FusionT5Backbone.widen_ffn(a, 1.5), "factor must be an int >= 2, got 1.5"),
        (
            lambda a: FusionT5Backbone.self_fuse(FusionT5Backbone.fuse(a, a), norm="global"),
            "one norm group",
        ),
    ],
)
def test_bad_arguments(call, message):
    a = random_backbone(seed=0)
    before = snapshot(a)
    with pytest.raises(ValueError, match=message):
        call(a)
    assert_unchanged(a, before)


def test_norm_groups_must_add_up():
    with pytest.raises(ValueError, match=r"add up to hidden_dim=16, got \[8, 4\]"):
        FusionT5Backbone(
            vocabulary_size=10,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=8,
            norm_groups=[8, 4],
        )


# from_parameters builds the model with deferred variable initialisation and
# creates each variable from its array (Keras internals: Variable._initializer,
# Variable._deferred_initialize, global_state "uninitialized_variables"). These
# tests fail if a Keras upgrade changes those.

TREE_CONFIG = dict(
    vocabulary_size=61,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    key_value_dim=8,
    dropout=0.1,
    norm_groups=[8, 8],
)


def _random_tree(config, seed=0):
    model = FusionT5Backbone(**config)
    rng = np.random.default_rng(seed)
    return keras.tree.map_structure(
        lambda v: rng.standard_normal(tuple(v.shape)).astype("float32"), backbone_variables(model)
    )


def _assert_holds(model, tree):
    leaves = keras.tree.flatten(backbone_variables(model))
    arrays = keras.tree.flatten(tree)
    assert len(leaves) == len(arrays) == len(model.weights)
    for variable, array in zip(leaves, arrays):
        np.testing.assert_array_equal(variable.numpy(), array, err_msg=variable.path)


def _uninitialized_registry():
    from keras.src.backend.common import global_state

    return list(global_state.get_global_attribute("uninitialized_variables") or [])


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_from_parameters_creates_the_variables_with_the_tree(untied, monkeypatch):
    config = dict(TREE_CONFIG, tie_embedding_weights=not untied, use_gated_activation=not untied)
    tree = _random_tree(config)
    copy = keras.tree.map_structure(np.copy, tree)

    def no_assign(variable, value):
        raise AssertionError(f"{variable.path} was assigned: deferred initialisation was not used")

    # The values must come from the variables' creation, not from an assign.
    monkeypatch.setattr(keras.src.backend.common.variables.Variable, "assign", no_assign)
    model = FusionT5Backbone.from_parameters(config, tree)
    monkeypatch.undo()
    _assert_holds(model, tree)
    keras.tree.map_structure(np.testing.assert_array_equal, tree, copy)  # tree untouched
    # Every variable is initialised (seed generator states too) and none is
    # left in Keras' list of variables to initialise.
    for variable in model.variables:
        assert variable._value is not None, variable.path
    assert not _uninitialized_registry()
    # Same variables as a normal construction.
    normal = FusionT5Backbone(**config)
    assert len(model.trainable_variables) == len(normal.trainable_variables)
    assert len(model.non_trainable_variables) == len(normal.non_trainable_variables)
    assert [tuple(v.shape) for v in model.weights] == [tuple(v.shape) for v in normal.weights]


def test_from_parameters_model_trains():
    tree = _random_tree(TREE_CONFIG)
    model = FusionT5Backbone.from_parameters(TREE_CONFIG, tree)
    output = model(model.input)["decoder_sequence_output"]
    lm = keras.Model(model.input, keras.layers.Dense(16)(output))
    lm.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    labels = np.random.default_rng(0).integers(0, 16, (3, 9)).astype("int32")
    lm.fit(INPUTS, labels, epochs=1, batch_size=3, verbose=0)
    changed = [
        not np.array_equal(v.numpy(), a)
        for v, a in zip(keras.tree.flatten(backbone_variables(model)), keras.tree.flatten(tree))
    ]
    assert changed[0] and sum(changed) > len(changed) // 2


def test_from_parameters_rejects_a_wrong_tree_naming_the_place():
    tree = _random_tree(TREE_CONFIG)
    before = _uninitialized_registry()

    def broken(edit):
        bad = keras.tree.map_structure(lambda a: a, tree)
        edit(bad)
        return bad

    def wrong_shape(t):
        t["encoder_layers"][1]["ffn_input"] = np.zeros((16, 33), "float32")

    with pytest.raises(
        ValueError,
        match=r"Shape mismatch for encoder_layers\[1\]\.ffn_input "
        r"\(variable transformer_encoder_layer_1/.*kernel\): "
        r"model \(16, 32\), parameters \(16, 33\)",
    ):
        FusionT5Backbone.from_parameters(TREE_CONFIG, broken(wrong_shape))
    with pytest.raises(
        ValueError, match=r"at decoder_layers\[0\]: the parameters lack \['ffn_gate'\]"
    ):
        FusionT5Backbone.from_parameters(
            TREE_CONFIG, broken(lambda t: t["decoder_layers"][0].pop("ffn_gate"))
        )
    with pytest.raises(
        ValueError,
        match=r"at decoder_layers: the model has a list of 2, the parameters have a list of 1",
    ):
        FusionT5Backbone.from_parameters(TREE_CONFIG, broken(lambda t: t["decoder_layers"].pop()))
    assert _uninitialized_registry() == before  # the rejected model left nothing behind


def test_from_parameters_leaves_other_uninitialized_variables_alone():
    tree = _random_tree(TREE_CONFIG)
    with keras.StatelessScope(initialize_variables=False):
        pending = keras.Variable(initializer="ones", shape=(2,), name="pending")
    try:
        model = FusionT5Backbone.from_parameters(TREE_CONFIG, tree)
        assert pending._value is None
        assert [id(v) for v in _uninitialized_registry()] == [id(pending)]
        keras.src.backend.common.variables.initialize_all_variables()
        np.testing.assert_array_equal(pending.numpy(), [1.0, 1.0])
        assert model.token_embedding.embeddings._value is not None
    finally:
        keras.src.backend.common.global_state.set_global_attribute("uninitialized_variables", [])


def test_from_parameters_in_a_stateless_scope():
    tree = _random_tree(TREE_CONFIG)
    with keras.StatelessScope():
        model = FusionT5Backbone.from_parameters(TREE_CONFIG, tree)
    _assert_holds(model, tree)
    assert not _uninitialized_registry()


def test_from_parameters_under_a_distribution_strategy():
    import tensorflow as tf

    tree = _random_tree(TREE_CONFIG)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = FusionT5Backbone.from_parameters(TREE_CONFIG, tree)
    for variable in model.variables:
        assert isinstance(variable.value, tf.distribute.DistributedValues), variable.path
    _assert_holds(model, tree)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_place(value):
    a = random_backbone(seed=0)
    b = random_backbone(seed=1)
    kernel = b.decoder_transformer_layers[1].output_projector.kernel
    poisoned = kernel.numpy()
    poisoned[0, 0] = value
    kernel.assign(poisoned)
    before_a, before_b = snapshot(a), snapshot(b)
    with pytest.raises(
        ValueError,
        match=(
            r"model 1 has 1 non-finite value\(s\) \(NaN or Inf\) "
            r"in decoder_layers\[1\]\.ffn_output"
        ),
    ):
        FusionT5Backbone.fuse(a, b)
    with pytest.raises(ValueError, match=r"the model has 1 non-finite value"):
        FusionT5Backbone.self_fuse(b)
    assert_unchanged(a, before_a)
    assert_unchanged(b, before_b)


def test_zeros_builds_the_config_with_every_parameter_zero():
    source = random_backbone(seed=4, cls=FusionT5Backbone)
    config = backbone_config(source)
    zeros = FusionT5Backbone.zeros(config)
    assert backbone_config(zeros) == config
    leaves = keras.tree.flatten(variable_trees.read(backbone_variables(zeros)))
    assert len(leaves) == len(keras.tree.flatten(backbone_variables(source)))
    assert all(not np.any(leaf) for leaf in leaves)
