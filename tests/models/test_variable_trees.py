"""keras_fusion.models.variable_trees: read a model's variables, write them into another,
refuse a wrong tree."""

import numpy as np
import pytest

from keras_fusion.models import FusionT5Backbone, variable_trees
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import assert_unchanged, random_backbone, random_inputs, snapshot

INPUTS = random_inputs()


def backbone(seed):
    return random_backbone(cls=FusionT5Backbone, seed=seed)


@pytest.fixture(scope="module")
def source():
    """Read, never written (tests that write build their own)."""
    return backbone(0)


def outputs(model):
    return {k: np.asarray(v) for k, v in model(INPUTS).items()}


def test_read_then_assign_gives_a_second_backbone_the_same_function(source):
    target = backbone(1)
    assert not np.array_equal(
        outputs(source)["decoder_sequence_output"], outputs(target)["decoder_sequence_output"]
    )
    tree = variable_trees.read(backbone_variables(source))
    variable_trees.assign(backbone_variables(target), tree)
    for key, value in outputs(source).items():
        np.testing.assert_array_equal(outputs(target)[key], value, err_msg=key)
    # Every variable, by position (norm names come from global counters).
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_read_copies():
    model = backbone(2)
    tree = variable_trees.read(backbone_variables(model))
    before = tree["encoder_norm"].copy()
    model.encoder_layer_norm.weight.assign(np.zeros_like(before))
    np.testing.assert_array_equal(tree["encoder_norm"], before)


def test_checked_pairs_names_the_location_of_a_shape_mismatch(source):
    tree = variable_trees.read(backbone_variables(source))
    kernel = tree["decoder_layers"][1]["ffn_input"]
    tree["decoder_layers"][1]["ffn_input"] = np.zeros(
        (kernel.shape[0], kernel.shape[1] + 1), "float32"
    )
    with pytest.raises(
        ValueError,
        match=(
            rf"Shape mismatch for decoder_layers\[1\]\.ffn_input \(variable .*\): model "
            rf"\({kernel.shape[0]}, {kernel.shape[1]}\), "
            rf"parameters \({kernel.shape[0]}, {kernel.shape[1] + 1}\)"
        ),
    ):
        variable_trees.checked_pairs(backbone_variables(source), tree)


@pytest.mark.parametrize(
    "where,parent,key",
    [
        ("the top level", lambda tree: tree, "decoder_norm"),
        (r"encoder_layers\[0\]", lambda tree: tree["encoder_layers"][0], "ffn_gate"),
    ],
)
def test_checked_pairs_names_the_location_of_a_missing_key(where, parent, key, source):
    tree = variable_trees.read(backbone_variables(source))
    del parent(tree)[key]
    with pytest.raises(
        ValueError,
        match=rf"Parameter trees do not match at {where}: the parameters lack "
        rf"\['{key}'\]",
    ):
        variable_trees.checked_pairs(backbone_variables(source), tree)


def test_a_wrong_tree_writes_nothing(source):
    target = backbone(1)
    tree = variable_trees.read(backbone_variables(source))
    # The last leaf is wrong: a writer that checked as it went would have
    # written every other leaf first.
    assert list(backbone_variables(target))[-1] == "decoder_norm"
    tree["decoder_norm"] = np.ones(tree["decoder_norm"].shape[0] + 2, "float32")
    before = snapshot(target)
    with pytest.raises(ValueError, match="Shape mismatch for decoder_norm"):
        variable_trees.assign(backbone_variables(target), tree)
    assert_unchanged(target, before)
    del tree["decoder_norm"]
    with pytest.raises(ValueError, match="the parameters lack \\['decoder_norm'\\]"):
        variable_trees.assign(backbone_variables(target), tree)
    assert_unchanged(target, before)
