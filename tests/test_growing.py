"""keras_fusion.growing.apply_growth: the one function that grows a model
being fit, outside any callback."""

import keras
import numpy as np
import pytest

from keras_fusion import growing, optimizer_state
from keras_fusion.diagnostics import relative_error
from keras_fusion.growth import SelfFuse
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import (
    TOLERANCE,
    assert_unchanged,
    fit_steps,
    growing_lm,
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


def test_a_bad_optimizer_slots_is_refused_before_the_model_is_touched():
    model = trained()
    before, lm = snapshot(model), model.lm
    with pytest.raises(
        ValueError,
        match=r"optimizer_slots must be one of \('carry', 'reset'\), "
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
