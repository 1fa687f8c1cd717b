"""keras_fusion.growing.apply_growth: the one function that grows a model
being fit, outside any callback."""

import keras
import numpy as np
import pytest

from keras_fusion import growing, optimizer_state
from keras_fusion.diagnostics import relative_error
from keras_fusion.growth import Deepen, Fuse, SelfFuse
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import (
    TOLERANCE,
    assert_unchanged,
    fit_steps,
    growing_lm,
    random_backbone,
    random_inputs,
    random_labels,
    snapshot,
)

X = random_inputs(batch_size=4, seed=21)
Y = random_labels(batch_size=4, seed=22)


def trained(steps=2):
    """A growing model after `steps` Adam steps (its slots are non-zero)."""
    model = growing_lm()
    fit_steps(model, X, Y, steps)
    return model


def slot_mass(model):
    """The sum of |value| over every optimizer slot of the model's variables."""
    slots = optimizer_state.read_slots(model.optimizer, backbone_variables(model.lm.backbone))
    return sum(
        float(np.abs(np.asarray(a)).sum())
        for _, tree in slots.values()
        for a in keras.tree.flatten(tree)
    )


@pytest.mark.parametrize("optimizer_slots", ["carry", "reset"])
def test_self_fusion_keeps_the_function_and_reports_what_it_did(optimizer_slots):
    model = trained()
    logits = np.array(model.predict_on_batch(X))
    before = model.backbone.count_params()
    old_lm = model.lm
    outcome = growing.apply_growth(
        model,
        SelfFuse(at_step=2),
        step=2,
        optimizer_slots=optimizer_slots,
        not_prepared_reason="a test grows synchronously",
    )
    assert model.lm is not old_lm
    assert model.backbone.hidden_dim == 32  # twice random_backbone's 16
    assert relative_error(model.predict_on_batch(X), logits) <= TOLERANCE
    assert outcome.parameters_before == before
    assert outcome.parameters_after == model.backbone.count_params() > before
    assert outcome.not_prepared_reason == "a test grows synchronously"
    assert not outcome.prepared_ahead
    assert outcome.prepare_seconds is None and outcome.seconds > 0
    # The optimizer continues from step 2 and is built on the grown variables.
    assert int(model.optimizer.iterations.numpy()) == 2
    assert {id(v) for v in model.optimizer._trainable_variables} == {
        id(v) for v in model.trainable_variables
    }
    assert slot_mass(model) > 0 if optimizer_slots == "carry" else slot_mass(model) == 0
    # Training goes on with the grown variables.
    kernel = model.trainable_variables[0]
    start = kernel.numpy().copy()
    fit_steps(model, X, Y, 1)
    assert not np.array_equal(kernel.numpy(), start)


def grown_slots(entry, optimizer_slots):
    """The slots `{name: tree}` of `trained()` grown by `entry`, and the
    grown model's logits."""
    model = trained()
    growing.apply_growth(
        model, entry, step=2, optimizer_slots=optimizer_slots, not_prepared_reason="a test"
    )
    read = optimizer_state.read_slots(model.optimizer, backbone_variables(model.lm.backbone))
    return {k: tree for k, (_, tree) in read.items()}, np.array(model.predict_on_batch(X))


def assert_equal_where(mask, a, b):
    for m, x, y in zip(keras.tree.flatten(mask), keras.tree.flatten(a), keras.tree.flatten(b)):
        np.testing.assert_array_equal(np.asarray(x)[~m], np.asarray(y)[~m])


def partner():
    return FusionT5Seq2SeqLM(random_backbone(seed=7, cls=FusionT5Backbone))


def test_reset_new_zeroes_a_fusions_off_diagonal_blocks_and_carries_the_rest():
    entry = Fuse(at_step=2, partner=partner())
    carried, carried_logits = grown_slots(entry, "carry")
    slots, logits = grown_slots(entry, "reset_new")
    np.testing.assert_array_equal(logits, carried_logits)  # the same weights
    mask = entry.new_entries(trained().lm)
    # The new entries of a fused 16 + 16 kernel are its two off-diagonal blocks.
    query = mask["encoder_layers"][0]["self_attention"]["query"]
    expected = np.ones((32, 32), bool)
    expected[:16, :16] = expected[16:, 16:] = False
    np.testing.assert_array_equal(query, expected)
    assert not mask["token_embedding"].any()  # concatenated, nothing new
    for name in ("momentum", "velocity"):
        for m, a in zip(keras.tree.flatten(mask), keras.tree.flatten(slots[name])):
            assert not np.asarray(a)[m].any()
        assert_equal_where(mask, slots[name], carried[name])
    # Under "carry" a new second-moment entry gets its source blocks' mean.
    velocity = carried["velocity"]["encoder_layers"][0]["self_attention"]["query"]
    assert np.all(np.asarray(velocity)[expected] > 0)


def test_reset_new_zeroes_a_deepened_models_new_layers_only():
    entry = Deepen(at_step=2, num_new_layers=1)
    carried, _ = grown_slots(entry, "carry")
    slots, logits = grown_slots(entry, "reset_new")
    assert relative_error(logits, trained().predict_on_batch(X)) <= TOLERANCE
    mask = entry.new_entries(trained().lm)
    for stack in ("encoder_layers", "decoder_layers"):
        assert not any(m.any() for m in keras.tree.flatten(mask[stack][:2]))
        assert all(m.all() for m in keras.tree.flatten(mask[stack][2]))
        new_velocity = keras.tree.flatten(slots["velocity"][stack][2])
        assert not any(np.asarray(a).any() for a in new_velocity)
        # "carry" gives a new layer the copied layer's second moment.
        assert all(np.asarray(a).all() for a in keras.tree.flatten(carried["velocity"][stack][2]))
    for name in ("momentum", "velocity"):
        assert_equal_where(mask, slots[name], carried[name])


def test_reset_new_is_carry_after_self_fusion_which_creates_no_entry():
    entry = SelfFuse(at_step=2)
    assert not any(m.any() for m in keras.tree.flatten(entry.new_entries(trained().lm)))
    carried, _ = grown_slots(entry, "carry")
    slots, _ = grown_slots(entry, "reset_new")
    for name in ("momentum", "velocity"):
        for a, b in zip(keras.tree.flatten(slots[name]), keras.tree.flatten(carried[name])):
            np.testing.assert_array_equal(a, b)


def test_a_bad_optimizer_slots_is_refused_before_the_model_is_touched():
    model = trained()
    before, lm = snapshot(model), model.lm
    with pytest.raises(
        ValueError,
        match=r"optimizer_slots must be one of \('carry', 'reset', 'reset_new'\), "
        r"got 'keep'",
    ):
        growing.apply_growth(model, SelfFuse(at_step=2), step=2, optimizer_slots="keep")
    assert model.lm is lm
    assert_unchanged(model, before)


def test_replace_lm_refuses_a_second_optimizer_beside_a_prepared_model():
    model = growing_lm()
    other = growing_lm(seed=1)
    lm = model.lm
    with pytest.raises(ValueError, match="brings its own optimizer"):
        model.replace_lm(other, keras.optimizers.Adam())
    assert model.lm is lm
