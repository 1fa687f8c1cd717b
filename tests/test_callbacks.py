"""GrowthCallback inside model.fit: function, optimizer state, the silent traps."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusion import growth, growth_maps, optimizer_state, optimizers
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.diagnostics import relative_error
from keras_fusion.growth import Deepen, Fuse, SelfFuse, WidenFFN
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, variable_trees
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import (
    TOLERANCE,
    AtStep,
    fit_steps,
    growing_lm,
    random_backbone,
    random_inputs,
    random_labels,
)

X = random_inputs(batch_size=4, seed=11)
Y = random_labels(batch_size=4, seed=12)
WEIGHTS = X["decoder_padding_mask"].astype("float32")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fixed_batch_loss(model):
    return float(LOSS(Y, model.predict_on_batch(X), sample_weight=WEIGHTS))


def fit(model, steps, callbacks=(), **kwargs):
    return fit_steps(model, X, Y, steps, WEIGHTS, callbacks, **kwargs)


@pytest.mark.parametrize(
    "entry",
    [
        SelfFuse(at_step=2, noise=0.01),
        Deepen(at_step=2, num_new_layers=1),
        WidenFFN(at_step=2, factor=2, noise=0.01),
    ],
    ids=lambda e: e.operator,
)
def test_loss_is_continuous_across_growth_inside_fit(entry):
    model = growing_lm()
    before, after = AtStep(2, fixed_batch_loss), AtStep(2, fixed_batch_loss)
    fit(model, 3, [before, GrowthCallback([entry], verbose=0), after])
    assert model.growth_history == [entry.describe()]
    assert abs(after.value - before.value) / before.value <= TOLERANCE
    assert model.backbone.count_params() > random_backbone().count_params()


def old_layers(model_or_lm, num_layers=2):
    tree = variable_trees.read(backbone_variables(model_or_lm.backbone))
    tree["encoder_layers"] = tree["encoder_layers"][:num_layers]
    tree["decoder_layers"] = tree["decoder_layers"][:num_layers]
    return tree


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_update_after_deepen_equals_the_small_models_update(optimizer):
    """Staged-Training style: identity layers leave the old layers' gradients
    unchanged, so with the optimizer state carried, the grown model's first
    update of the old entries equals the small model's update from the same
    state and batch. (Later updates differ: the new layers start to act.)"""
    make = {
        "adam": lambda: keras.optimizers.Adam(1e-2),
        "adamw": lambda: keras.optimizers.AdamW(1e-2),
    }[optimizer]
    small, grown = growing_lm(make()), growing_lm(make())
    at_growth = AtStep(2, old_layers)
    fit(small, 3, [at_growth])
    fit(grown, 3, [GrowthCallback([Deepen(at_step=2, num_new_layers=1)], verbose=0)])
    assert grown.backbone.num_layers == 3 and int(grown.optimizer.iterations.numpy()) == 3
    errors = growth_maps.map_leaves(
        lambda name, leaves: relative_error(leaves[2] - leaves[0], leaves[1] - leaves[0]),
        [at_growth.value, old_layers(small), old_layers(grown)],
    )
    assert max(keras.tree.flatten(errors)) <= TOLERANCE


def test_update_after_fuse_follows_adam_from_the_carried_state():
    """After Deep Fusion the first update of the entries that came from the
    model equals Adam's update from the model's own (m, v, t), on the fused
    model's gradient: the state was carried, not reset."""
    lr, beta_1, beta_2, eps = 1e-2, 0.9, 0.999, 1e-7
    model = growing_lm(keras.optimizers.Adam(lr, beta_1=beta_1, beta_2=beta_2, epsilon=eps))
    partner = FusionT5Seq2SeqLM(
        random_backbone(
            hidden_dim=8, num_heads=1, intermediate_dim=16, seed=5, cls=FusionT5Backbone
        )
    )
    fit(model, 2)
    tree = backbone_variables(model.backbone)
    slots = optimizer_state.read_slots(model.optimizer, tree)
    m, v = slots["momentum"][1], slots["velocity"][1]
    w = variable_trees.read(tree)
    callback = GrowthCallback([Fuse(at_step=3, partner=partner)], verbose=0)
    callback.set_model(model)
    callback.grow(callback.schedule[0], 2)

    fused_tree = backbone_variables(model.backbone)
    leaves = keras.tree.flatten(fused_tree)
    with tf.GradientTape() as tape:
        y_pred = model(X, training=True)
        loss = model.compute_loss(x=X, y=Y, y_pred=y_pred, sample_weight=WEIGHTS, training=True)
    gradients = dict(zip([id(v) for v in leaves], tape.gradient(loss, leaves)))
    model.train_on_batch(X, Y, sample_weight=WEIGHTS)
    assert int(model.optimizer.iterations.numpy()) == 3

    t = 3
    alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    d = w["token_embedding"].shape[1]
    cases = [
        (lambda tr: tr["token_embedding"], np.s_[:, :d]),
        (lambda tr: tr["decoder_layers"][1]["cross_attention"]["query"], np.s_[:d, :16]),
        (lambda tr: tr["encoder_layers"][0]["ffn_output"], np.s_[:32, :d]),
        (lambda tr: tr["encoder_layers"][1]["ffn_norm"], np.s_[:d]),
    ]
    # Not the relative-position bias: its gradient is a sum of softmax
    # gradients that cancel to ~1e-6, so a gradient taken outside the
    # compiled train step differs from the step's own by ~1% (measured on
    # the unfused model too), which says nothing about the carried state.
    for get, block in cases:
        g = tf.convert_to_tensor(gradients[id(get(fused_tree))]).numpy()[block]
        m_new = beta_1 * get(m) + (1 - beta_1) * g
        v_new = beta_2 * get(v) + (1 - beta_2) * g**2
        expected = get(w) - alpha * m_new / (np.sqrt(v_new) + eps)
        actual = get(fused_tree).numpy()[block]
        assert relative_error(actual - get(w), expected - get(w)) <= 1e-4


def test_new_entries_do_not_get_outsized_first_updates():
    model = growing_lm(keras.optimizers.Adam(1e-2))
    fit(model, 2)
    before = variable_trees.read(backbone_variables(model.backbone))
    callback = GrowthCallback(
        [Fuse(at_step=3, partner=FusionT5Seq2SeqLM(random_backbone(seed=7, cls=FusionT5Backbone)))],
        verbose=0,
    )
    callback.set_model(model)
    callback.grow(callback.schedule[0], 2)
    start = variable_trees.read(backbone_variables(model.backbone))
    model.train_on_batch(X, Y, sample_weight=WEIGHTS)
    end = variable_trees.read(backbone_variables(model.backbone))
    kernel = lambda tr: tr["encoder_layers"][1]["ffn_input"]  # noqa: E731
    step = np.abs(kernel(end) - kernel(start))
    old_block, cross_block = step[:16, :32], step[:16, 32:]
    # Zero second moments would give the off-diagonal (new) entries a first
    # Adam step of ~(1 - beta_1) / sqrt(1 - beta_2) = 3.2 learning rates.
    assert cross_block.max() < 1.5 * 1e-2
    assert np.median(cross_block) <= 3 * np.median(old_block)
    # The blocks are what the names say: the growing model's own kernel sits
    # unchanged on the diagonal (fusion copies it), and the cross block is new,
    # zero when the step starts, so its change is its first update alone.
    np.testing.assert_array_equal(kernel(start)[:16, :32], kernel(before))
    np.testing.assert_array_equal(kernel(start)[:16, 32:], np.zeros((16, 32), np.float32))


def test_traps_old_variables_untracked_new_weights_train_predict_and_evaluate_use_grown_model():
    model = growing_lm()
    old_lm = model.lm
    at_growth = AtStep(2, lambda m: [v.numpy().copy() for v in old_lm.trainable_variables])
    fit(
        model,
        4,
        [GrowthCallback([Deepen(at_step=2)], verbose=0), at_growth],
        validation_data=(X, Y, WEIGHTS),
    )
    grown_ids = {id(v) for v in model.lm.trainable_variables}
    assert {id(v) for v in model.trainable_variables} == grown_ids
    assert not grown_ids & {id(v) for v in old_lm.trainable_variables}
    # The old model stopped training at the growth (fit trains the new one).
    for v, value in zip(old_lm.trainable_variables, at_growth.value):
        np.testing.assert_array_equal(v.numpy(), value)
    new_layer = model.backbone.decoder_transformer_layers[-1]
    assert np.abs(new_layer.output_projector.kernel.numpy()).max() > 0  # was zero
    # predict and evaluate trace the grown model, not the old one.
    logits = np.asarray(model.lm(X))
    np.testing.assert_allclose(model.predict(X, verbose=0), logits, rtol=1e-5, atol=1e-5)
    evaluated = model.evaluate(X, Y, sample_weight=WEIGHTS, verbose=0)
    assert abs(evaluated - float(LOSS(Y, logits, sample_weight=WEIGHTS))) <= 1e-5 * evaluated
    assert abs(evaluated - float(LOSS(Y, old_lm.predict_on_batch(X), sample_weight=WEIGHTS))) > 1e-3


def test_iterations_schedule_and_history_continue():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5)
    model = growing_lm(keras.optimizers.AdamW(schedule))
    callback = GrowthCallback("self_fuse@2", verbose=0)
    history = model.fit(
        {k: np.concatenate([v] * 3) for k, v in X.items()},
        np.concatenate([Y] * 3),
        batch_size=4,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )
    assert int(model.optimizer.iterations.numpy()) == 6
    # The schedule runs on from step 6, at half the rate: self fusion halves
    # every kernel entry, and GrowthCallback's default learning_rate_scale
    # ("auto") halves the rate with it.
    np.testing.assert_allclose(
        float(model.optimizer.learning_rate), 0.5 * float(schedule(6)), rtol=1e-6
    )
    assert history.history["num_parameters"][1] == model.backbone.count_params()
    assert (
        callback.events[0]["step"] == 2
        and callback.events[0]["parameters_after"] == model.backbone.count_params()
        and callback.events[0]["optimizer_slots"] == "carry"  # the default
    )


@pytest.mark.parametrize(
    "make_optimizer, scale",
    [
        (lambda rate: keras.optimizers.AdamW(rate), 0.5),
        (lambda rate: keras.optimizers.Adafactor(rate), 2.0),
        (lambda rate: optimizers.AdamWScale(rate), 2.0),
        (lambda rate: optimizers.UncappedAdafactor(rate), 2.0),
    ],
    ids=["adamw", "adafactor", "adamw_scale", "adafactor_uncapped"],
)
def test_auto_rate_after_self_fusion_follows_how_the_optimizer_steps(make_optimizer, scale):
    # Self fusion halves every kernel entry. Adam's fixed-size steps would
    # move them twice as far relative to their size, so "auto" halves the
    # rate. Adafactor's and AdamWScale's steps are relative to each
    # parameter's RMS, which halves with the entries, so the kernels' steps
    # halve: "auto" doubles the rate to restore them (measured better than
    # keeping it: benchmarks/README.md, "After a growth";
    # test_operators.py checks the RMS ratio itself).
    model = growing_lm(make_optimizer(1e-2))
    kind = type(model.optimizer)
    growth = GrowthCallback("self_fuse@2", verbose=0)
    fit(model, 4, [growth])
    assert type(model.optimizer) is kind  # the grown optimizer is rebuilt from its config
    assert float(model.optimizer.learning_rate) == pytest.approx(scale * 1e-2, rel=1e-6)
    (event,) = growth.events  # the factor "auto" came to, recorded
    assert event["learning_rate_scale"] == scale
    # Rate 1e-2 at step 2 is far below Adafactor's cap (1/sqrt(3)): the
    # step changes by the whole factor.
    assert event["relative_step_scale"] == pytest.approx(scale)


def test_adafactor_state_is_carried():
    model = growing_lm(keras.optimizers.Adafactor(1e-2))
    fit(model, 2)
    optimizer = model.optimizer
    kernel = model.backbone.encoder_transformer_layers[1].input_projector.kernel
    r_before = optimizer._r[optimizer._get_variable_index(kernel)].numpy()
    callback = GrowthCallback([Deepen(at_step=3)], verbose=0)
    callback.set_model(model)
    callback.grow(callback.schedule[0], 2)
    new = model.optimizer
    assert new is not optimizer and int(new.iterations.numpy()) == 2
    kernel = model.backbone.encoder_transformer_layers[1].input_projector.kernel
    r_after = new._r[new._get_variable_index(kernel)].numpy()
    assert np.abs(r_before).max() > 0
    assert relative_error(r_after, r_before) <= TOLERANCE
    fit(model, 1)


def test_tensorboard_event_is_written(tmp_path):
    model = growing_lm()
    fit(model, 3, [GrowthCallback("deepen@2", log_dir=str(tmp_path), verbose=0)])
    tags = []
    for path in glob.glob(os.path.join(tmp_path, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags += [(event.step, value.tag) for value in event.summary.value]
    assert (2, "growth/num_parameters") in tags and (2, "growth/event") in tags


@pytest.mark.parametrize(
    "make_callback,message",
    [
        (
            lambda: GrowthCallback(
                [
                    Fuse(
                        at_step=2,
                        partner=FusionT5Seq2SeqLM(
                            random_backbone(cls=FusionT5Backbone, vocabulary_size=70)
                        ),
                    )
                ]
            ),
            r"fuse@2.*vocabulary_size differs: 61 vs 70",
        ),
        (
            lambda: GrowthCallback("self_fuse@2", max_parameters=20_000),
            r"self_fuse@2.*over max_parameters=20,000",
        ),
    ],
)
def test_bad_schedule_fails_before_any_step_and_leaves_the_model_alone(make_callback, message):
    model = growing_lm()
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=message):
        fit(model, 2, [make_callback()])
    assert int(model.optimizer.iterations.numpy()) == 0
    for v, value in zip(model.weights, before):
        np.testing.assert_array_equal(v.numpy(), value)


def test_wrong_model_or_optimizer_is_refused():
    lm = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone))
    lm.compile(optimizer="adam", loss=LOSS)
    with pytest.raises(ValueError, match="grows a keras_fusion.models.GrowingT5Seq2SeqLM"):
        lm.fit(X, Y, epochs=1, verbose=0, callbacks=[GrowthCallback("deepen@2")])
    model = growing_lm(keras.optimizers.SGD(0.1))
    with pytest.raises(
        ValueError,
        match="optimizer SGD is not supported for growth; supported: Adam, AdamW, Adafactor",
    ):
        fit(model, 1, [GrowthCallback("deepen@2")])


def test_fuse_partner_saved_with_its_optimizer_brings_its_state(tmp_path):
    partner = growing_lm(keras.optimizers.Adam(1e-2), seed=3)
    fit(partner, 2)
    path = str(tmp_path / "partner.keras")
    partner.save(path)
    kernel = lambda m: m.backbone.decoder_transformer_layers[0].input_projector.kernel  # noqa: E731
    partner_m = partner.optimizer._momentums[
        partner.optimizer._get_variable_index(kernel(partner))
    ].numpy()
    model = growing_lm(keras.optimizers.Adam(1e-2))
    fit(model, 3, [GrowthCallback([Fuse(at_step=2, partner=path)], verbose=0)])
    assert model.backbone.norm_groups == [16, 16]
    # One step after the fusion, the partner's block of m is beta_1 * (its
    # own m) + (1 - beta_1) * gradient; with a fresh (zero) m it would be
    # (1 - beta_1) * gradient alone, 10x smaller than what is seen here.
    m = model.optimizer._momentums[model.optimizer._get_variable_index(kernel(model))].numpy()
    block = m[16:, 32:]
    assert np.abs(partner_m).max() > 0
    assert relative_error(block, 0.9 * partner_m) < 0.5


def test_rewarmup_schedule_ramps_from_the_growth_step_and_round_trips():
    rate = optimizer_state.Rewarmup(1e-3, start_step=1000, warmup_steps=100)
    # rate(step) = 1e-3 * min(1, (step - 1000 + 1) / 100) from step 1000 on.
    for step, expected in [
        (0, 1e-3),
        (999, 1e-3),
        (1000, 1e-5),
        (1049, 5e-4),
        (1099, 1e-3),
        (5000, 1e-3),
    ]:
        np.testing.assert_allclose(float(rate(step)), expected, rtol=1e-6)
    decay = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)
    wrapped = optimizer_state.Rewarmup(decay, start_step=20, warmup_steps=4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    for step in (5, 20, 21, 30):
        expected = float(decay(step)) * (min(1.0, (step - 19) / 4) if step >= 20 else 1.0)
        np.testing.assert_allclose(float(restored(step)), expected, rtol=1e-6)
    scaled = optimizer_state.Rewarmup(1e-3, start_step=10, warmup_steps=0, scale=0.5)  # no ramp
    np.testing.assert_allclose(
        [float(scaled(9)), float(scaled(10)), float(scaled(99))], [1e-3, 5e-4, 5e-4], rtol=1e-6
    )
    with pytest.raises(ValueError, match="warmup_steps"):
        optimizer_state.Rewarmup(1e-3, 0, -1)
    with pytest.raises(ValueError, match="scale"):
        optimizer_state.Rewarmup(1e-3, 0, 1, scale=0.0)


def test_rewarmup_after_growth_does_not_nest_and_survives_saving(tmp_path):
    model = growing_lm(keras.optimizers.AdamW(1e-2))
    # Widths 16 -> 32 (self_fuse: scale 1/2) -> 32 (deepen: scale 1).
    fit(
        model,
        5,
        [
            GrowthCallback(
                "self_fuse@2,deepen@4", rewarmup_steps=4, learning_rate_scale="width", verbose=0
            )
        ],
    )
    rate = model.optimizer._learning_rate
    assert isinstance(rate, optimizer_state.Rewarmup)
    assert rate.start_step == 4 and rate.scale == 0.5  # the scales compound
    np.testing.assert_allclose(rate.learning_rate, 1e-2, rtol=1e-6)  # the base, not the first ramp
    expected = 1e-2 * 0.5 * 2 / 4  # step 5: base x scale x ramp
    np.testing.assert_allclose(float(model.optimizer.learning_rate), expected, rtol=1e-6)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.optimizer._learning_rate  # iterations load lazily; evaluate at step 5
    assert isinstance(restored, optimizer_state.Rewarmup) and restored.start_step == 4
    np.testing.assert_allclose(float(restored(5)), expected, rtol=1e-6)


@pytest.mark.parametrize("state", ["carry", "reset"])
def test_optimizer_state_carry_or_reset(state):
    model = growing_lm(keras.optimizers.AdamW(1e-2))
    fit(model, 2)
    callback = GrowthCallback("deepen@3", optimizer_slots=state, verbose=0)
    callback.set_model(model)
    callback.grow(callback.schedule[0], 2)
    optimizer = model.optimizer
    largest = max(
        float(np.abs(m.numpy()).max()) for m in optimizer._momentums + optimizer._velocities
    )
    assert int(optimizer.iterations.numpy()) == 2
    assert (largest > 0) if state == "carry" else (largest == 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rewarmup_steps=-1), "rewarmup_steps"),
        (dict(rewarmup_steps=1.5), "rewarmup_steps"),
        (dict(optimizer_slots="fresh"), "optimizer_slots must be one of"),
        (dict(learning_rate_scale=0), "learning_rate_scale"),
        (dict(learning_rate_scale="depth"), "learning_rate_scale"),
    ],
)
def test_bad_growth_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GrowthCallback("deepen@3", **kwargs)


def test_no_schedule_grows_by_the_default_mode_at_the_default_fraction_of_fits_steps():
    """GrowthCallback() reads the steps fit will run from Keras (epochs x
    steps per epoch) and grows once, by the default mode, after the default
    fraction of them; the learning-rate schedule runs on across the growth."""
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=12, alpha=0.1)
    model = growing_lm(keras.optimizers.AdamW(schedule))
    before = {"layers": model.backbone.num_layers, "width": model.backbone.hidden_dim}
    callback = GrowthCallback(verbose=0)
    model.fit(
        {k: np.concatenate([v] * 4) for k, v in X.items()},
        np.concatenate([Y] * 4),
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[callback],
    )
    (event,) = callback.events
    expected_step = max(1, round(growth.DEFAULT_GROWTH_FRACTION * 12))  # 3 epochs x 4 steps
    assert event["step"] == expected_step and model.growth_history == [event["entry"]]
    assert event["entry"].startswith(
        {"self_fusion": "self_fuse@", "deepen": "deepen@", "stack": "deepen@"}[
            growth.DEFAULT_GROWTH_MODE
        ]
    )
    if growth.DEFAULT_GROWTH_MODE == "self_fusion":
        assert model.backbone.hidden_dim == 2 * before["width"]
    else:
        assert model.backbone.num_layers == 2 * before["layers"]
    assert int(model.optimizer.iterations.numpy()) == 12
    entry = growth.parse_schedule(event["entry"])[0]
    np.testing.assert_allclose(
        float(model.optimizer.learning_rate), entry.weight_scale * float(schedule(12)), rtol=1e-6
    )
    # A second fit keeps the entry (already applied): no second growth.
    fit(model, 2, [callback])
    assert len(callback.events) == 1


@pytest.mark.parametrize(
    "mode, fraction, total, expected",
    [
        ("self_fusion", 0.25, 400, "self_fuse@100:noise=0.001:seed=0"),
        ("deepen", 0.1, 1000, "deepen@100:layers=2:mode=identity"),
        ("stack", 0.5, 3, "deepen@2:layers=2:mode=stack"),
    ],
)
def test_default_entry_grows_at_the_fraction_of_the_run(mode, fraction, total, expected):
    config = {"num_layers": 2}
    assert growth.default_entry(config, total, mode, fraction).describe() == expected


@pytest.mark.parametrize(
    "total, fraction, expected",
    # Rounded to the nearest step, never before step 1.
    [(400, 0.25, 100), (1000, 0.1, 100), (3, 0.5, 2), (7, 0.1, 1), (1, 0.1, 1)],
)
def test_default_growth_step_rounds_and_never_precedes_step_one(total, fraction, expected):
    assert growth.default_growth_step(total, fraction) == expected


def test_no_schedule_needs_fit_to_know_its_steps():
    model = growing_lm()
    data = tf.data.Dataset.from_tensors((X, Y)).repeat()  # unknown length
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(data, epochs=1, verbose=0, callbacks=[GrowthCallback(verbose=0)])
    for bad in [dict(mode="deep_fusion"), dict(fraction=1.0), dict(fraction=0.0)]:
        with pytest.raises(ValueError):
            growth.default_entry({"num_layers": 2}, 100, **bad)


@pytest.mark.parametrize("verbose", [0, 1])
def test_a_growth_event_is_reported_once(verbose, capsys, caplog):
    """One line on stdout with verbose=1 (none with 0), and nothing in the
    log: not the same event twice. At rate 0.9 Keras' Adafactor's cap
    (1/sqrt(3) at step 2) cancels "auto"'s doubling after self fusion: a
    second line says so."""
    import logging

    model = growing_lm(keras.optimizers.Adafactor(0.9))
    x, y = random_inputs(batch_size=4, seed=1), random_labels(batch_size=4, seed=2)
    with caplog.at_level(logging.DEBUG):
        model.fit(
            x,
            y,
            batch_size=2,
            epochs=2,
            verbose=0,
            callbacks=[GrowthCallback("self_fuse@2", verbose=verbose)],
        )
    assert len(model.growth_history) == 1 and model.growth_history[0].startswith("self_fuse@2")
    out = capsys.readouterr().out.splitlines()
    printed = [line for line in out if "Growth at step 2" in line]
    assert len(printed) == verbose
    capped = [line for line in out if "learning_rate_scale 2 changes the step by 1 here" in line]
    assert len(capped) == verbose
    assert not [r for r in caplog.records if "Growth at step" in r.getMessage()]


def test_first_boundary_is_the_step_a_growth_happens_under_steps_per_execution():
    from keras_fusion.callbacks import first_boundary

    # Calls of 2 steps from step 0 end at 2, 4, 6: an entry at step 3 grows at 4.
    assert [first_boundary(at, 0, 2) for at in (1, 2, 3, 4)] == [2, 2, 4, 4]
    # Counted from the current boundary (a resume at step 1, calls of 4: 5, 9).
    assert [first_boundary(at, 1, 4) for at in (2, 5, 6)] == [5, 5, 9]
    assert first_boundary(7, 7, 3) == 7 and first_boundary(10, 0, 1) == 10


@pytest.mark.parametrize(
    "make_entry",
    [
        lambda: Deepen(at_step=2, num_new_layers=1),
        lambda: Fuse(
            at_step=2, partner=FusionT5Seq2SeqLM(random_backbone(seed=7, cls=FusionT5Backbone))
        ),
    ],
    ids=["deepen", "fuse"],
)
def test_an_entry_due_when_fit_starts_grows_before_the_first_step_as_it_would_mid_fit(
    make_entry,
):
    """A model trained to step 2 in one fit and grown when the next fit
    starts (a fusion tree's node continuing its input) ends where the same
    growth inside one fit ends: same weights after the next step."""
    inside = growing_lm(keras.optimizers.Adam(1e-2))
    fit(inside, 3, [GrowthCallback([make_entry()], verbose=0)])
    split = growing_lm(keras.optimizers.Adam(1e-2))
    fit(split, 2)
    callback = GrowthCallback([make_entry()], verbose=0)
    fit(split, 1, [callback])
    assert [e["step"] for e in callback.events] == [2]
    assert split.growth_history == inside.growth_history
    assert int(split.optimizer.iterations.numpy()) == 3
    for a, b in zip(inside.lm.trainable_variables, split.lm.trainable_variables):
        assert relative_error(a.numpy(), b.numpy()) < 1e-6, a.path
    # One whose step has passed unapplied is still refused.
    late = growing_lm(keras.optimizers.Adam(1e-2))
    fit(late, 3)
    with pytest.raises(ValueError, match=r"step 2 has passed \(the optimizer is at step 3\)"):
        fit(late, 1, [GrowthCallback([make_entry()], verbose=0)])
