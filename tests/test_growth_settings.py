"""Growth inside fit in TPU settings: XLA, steps_per_execution > 1, mixed_bfloat16.

bfloat16 keeps 8 bits of mantissa (relative rounding 2**-8 = 3.9e-3 per
value); through a 2-layer T5 the measured logit error of an exact operator
under mixed_bfloat16 is about 1e-2 relative. BF16_TOLERANCE (3e-2) states the
bound these tests hold the operators to; a wrong map (a misplaced block, a
missing norm group) gives errors of order 1.
"""

import keras
import numpy as np
import pytest

from keras_fusion import optimizer_state, optimizers
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.diagnostics import relative_error
from keras_fusion.growth import Deepen
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import TOLERANCE, fit_steps, random_backbone, random_inputs, random_labels

BF16_TOLERANCE = 3e-2
X = random_inputs(batch_size=4, seed=11)
Y = random_labels(batch_size=4, seed=12)


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def growing(seed=0, learning_rate=1e-2, **compile_kwargs):
    lm = FusionT5Seq2SeqLM(random_backbone(seed=seed, cls=FusionT5Backbone))
    model = GrowingT5Seq2SeqLM(lm)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_kwargs,
    )
    return model


def fit(model, steps, callbacks=()):
    return fit_steps(model, X, Y, steps, None, callbacks)


def logits(model):
    return np.asarray(model.lm(X), "float32")


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_growth_with_xla_steps_per_execution_and_bfloat16_keeps_the_function(policy):
    """jit_compile=True, 2 steps per execution and mixed_bfloat16 together,
    three operators in one schedule: with a zero learning rate nothing
    moves, so the grown model after fit computes what the small model
    computed before it. Each entry grows at the first execution boundary
    at or after its step, and the event records that step."""
    check_growth_keeps_the_function(
        "self_fuse@3:noise=0.01,deepen@5:layers=1,widen_ffn@7:factor=2:noise=0.01",
        [4, 6, 8],
        BF16_TOLERANCE,
    )


@pytest.mark.parametrize("policy", ["float32"], indirect=True)
def test_growth_with_xla_and_steps_per_execution_is_exact_in_float32(policy):
    check_growth_keeps_the_function("self_fuse@3:noise=0.01", [4], TOLERANCE)


def check_growth_keeps_the_function(schedule, grown_at, tolerance):
    model = growing(learning_rate=0.0, jit_compile=True, steps_per_execution=2)
    before = logits(model)
    growth = GrowthCallback(schedule, verbose=0)
    fit(model, 10, [growth])
    assert model.jit_compile is True and model.steps_per_execution == 2
    assert [e["step"] for e in growth.events] == grown_at
    # Each grown model was built and traced ahead (the growth only writes values).
    assert [e["prepared_ahead"] for e in growth.events] == [True] * len(grown_at), [
        e["not_prepared_reason"] for e in growth.events
    ]
    assert model.growth_history == [e.describe() for e in growth.schedule]
    assert model.backbone.count_params() > random_backbone().count_params()
    assert relative_error(logits(model), before) <= tolerance
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model.lm.backbone.dtype_policy.name == keras.mixed_precision.global_policy().name


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_tpu_settings_with_the_default_optimizer_use_the_growth_prepared_ahead(policy):
    """`tools.train --recipe=self_fusion --jit_compile --steps_per_execution=4
    --mixed_precision=mixed_bfloat16` grew synchronously once ("the grown
    optimizer's config differs from the prepared one"): the stall of a
    whole pod on a TPU. With the default Adafactor, its warm-up and cosine
    schedule, the prepared model is the one adopted."""
    model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(random_backbone(seed=0, cls=FusionT5Backbone)))
    model.compile(
        optimizer=optimizers.default_optimizer(total_steps=12),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
        steps_per_execution=4,
    )
    # Calls of 4 steps end at 4, 8, 12: the preparation starts after the
    # first, and an entry at step 6 grows at step 8.
    growth = GrowthCallback("self_fuse@6:noise=0.01", verbose=0)
    fit(model, 12, [growth])
    (event,) = growth.events
    assert event["prepared_ahead"] is True, event["not_prepared_reason"]
    assert event["step"] == 8 and model.backbone.hidden_dim == 2 * random_backbone().hidden_dim


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_fuse_of_bfloat16_models_is_exact_to_bfloat16(policy):
    a = FusionT5Seq2SeqLM(random_backbone(seed=0, cls=FusionT5Backbone))
    b = FusionT5Seq2SeqLM(random_backbone(seed=1, cls=FusionT5Backbone, hidden_dim=24, num_heads=3))
    fused = FusionT5Seq2SeqLM.fuse(a, b, weights=[0.3, 0.7])
    expected = 0.3 * np.asarray(a(X), "float32") + 0.7 * np.asarray(b(X), "float32")
    assert relative_error(np.asarray(fused(X), "float32"), expected) <= BF16_TOLERANCE
    assert fused.backbone.dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in fused.weights)


class SlotsAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step, self.slots = step, None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.slots = optimizer_state.read_slots(
                self.model.optimizer, backbone_variables(self.model.backbone)
            )


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_bfloat16_optimizer_slots_are_float32_and_carried(policy):
    """Under mixed_bfloat16 the variables and Adam's moments are float32. A
    deepen at an execution boundary carries every moment of the old layers
    bit for bit (read just before and just after the growth, in the same
    step)."""
    model = growing(steps_per_execution=2)
    before, after = SlotsAt(4), SlotsAt(4)
    fit(model, 6, [before, GrowthCallback([Deepen(at_step=3, num_new_layers=1)], verbose=0), after])
    assert model.backbone.num_layers == 3
    optimizer = model.optimizer
    assert all(v.dtype == "float32" for v in optimizer.variables if v is not optimizer.iterations)
    assert set(after.slots) == set(before.slots) == {"momentum", "velocity"}
    for name, (_, old_tree) in before.slots.items():
        new_tree = after.slots[name][1]
        for stack in ("encoder_layers", "decoder_layers"):
            assert len(new_tree[stack]) == 3
            keras.tree.map_structure(
                np.testing.assert_array_equal, new_tree[stack][:2], old_tree[stack]
            )
            assert all(np.all(np.isfinite(a)) for a in keras.tree.flatten(new_tree[stack][2]))
        assert np.any(keras.tree.flatten(old_tree["encoder_layers"])[0])  # real, non-zero moments
        assert all(np.asarray(a).dtype == np.float32 for a in keras.tree.flatten(new_tree))
