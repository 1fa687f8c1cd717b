"""DynamicsMonitor: the backward-error-analysis quantities, checked by hand."""

import glob
import json
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusion.callbacks import GrowthCallback
from keras_fusion.dynamics import DynamicsMonitor, source_dims
from keras_fusion.growth import SelfFuse
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import fit_steps, growing_lm, random_backbone, random_inputs, random_labels

X = random_inputs(batch_size=4, seed=11)
Y = random_labels(batch_size=4, seed=12)
WEIGHTS = X["decoder_padding_mask"].astype("float32")
PROBE = (
    random_inputs(batch_size=3, seed=21),
    random_labels(batch_size=3, seed=22),
    random_inputs(batch_size=3, seed=21)["decoder_padding_mask"].astype("float32"),
)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
KERNELS = ("query", "key", "value", "output", "ffn_input", "ffn_gate", "ffn_output")


def fit(model, steps, callbacks=(), **kwargs):
    return fit_steps(model, X, Y, steps, WEIGHTS, callbacks, **kwargs)


def compiled(lm, learning_rate=1e-2):
    model = GrowingT5Seq2SeqLM(lm)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=LOSS)
    return model


def probe_gradients(model):
    """Gradients of the probe loss, eagerly, with the loss written out here."""
    x, y, sample_weight = PROBE
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=False), sample_weight=sample_weight)
    variables = model.trainable_variables
    # The embedding's gradient is sparse (IndexedSlices): densify it.
    return {
        id(v): tf.convert_to_tensor(g).numpy()
        for v, g in zip(variables, tape.gradient(loss, variables))
    }


def named_kernels(model):
    found = []

    def walk(node, name=None):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, key)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)
        elif name in KERNELS:
            found.append((name, node))

    walk(backbone_variables(model.backbone))
    return found


def test_regularizer_is_a_quarter_of_the_learning_rate_times_the_squared_gradient():
    """(h/4)·||∇L||² with h the scheduled rate at the current step: the rate
    halves every 2 steps, so after 3 steps h = 1e-2 · 0.5^1.5."""
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=2, decay_rate=0.5)
    model = growing_lm(keras.optimizers.Adam(schedule))
    monitor = DynamicsMonitor(PROBE, every=1)
    fit(model, 3, [monitor])
    record = monitor.records[-1]
    assert [r["step"] for r in monitor.records] == [1, 2, 3]
    squared = sum(float(np.sum(g**2)) for g in probe_gradients(model).values())
    learning_rate = 1e-2 * 0.5**1.5
    assert record["learning_rate"] == pytest.approx(learning_rate, rel=1e-6)
    assert record["regularizer"] == pytest.approx(learning_rate / 4 * squared, rel=1e-5)
    assert record["grad_norm"] ** 2 == pytest.approx(squared, rel=1e-5)
    assert "cross_grad_norm" not in record  # one source: nothing to split


def test_block_norms_of_a_fused_model_match_slices_taken_by_hand():
    """Fused model of A (d 16, 2 heads, ffn 32) and B (d 8, 1 head, ffn 16),
    key_value_dim 8: each kernel is cut at the sources' sizes here, by hand.
    The cross blocks are zero at fusion but their gradient is not: training
    fills them."""
    a = FusionT5Seq2SeqLM(random_backbone(seed=0, cls=FusionT5Backbone))
    b = FusionT5Seq2SeqLM(
        random_backbone(
            hidden_dim=8, num_heads=1, intermediate_dim=16, seed=5, cls=FusionT5Backbone
        )
    )
    model = compiled(FusionT5Seq2SeqLM.fuse(a, b))
    monitor = DynamicsMonitor(PROBE, sources=[source_dims(a.backbone), source_dims(b.backbone)])
    monitor.set_model(model)
    record = monitor.measure()

    cuts = {"hidden": [16, 8], "inner": [16, 8], "ffn": [32, 16]}
    axes = {
        "query": ("hidden", "inner"),
        "key": ("hidden", "inner"),
        "value": ("hidden", "inner"),
        "output": ("inner", "hidden"),
        "ffn_input": ("hidden", "ffn"),
        "ffn_gate": ("hidden", "ffn"),
        "ffn_output": ("ffn", "hidden"),
    }
    gradients = probe_gradients(model)
    own, cross, total = [0.0, 0.0], 0.0, 0.0
    kernels = named_kernels(model)
    assert len(kernels) == 2 * 7 + 2 * 11  # encoder: q k v o + 3 ffn; decoder adds cross q k v o
    for name, variable in kernels:
        g = gradients[id(variable)]
        r, c = (cuts[axis][0] for axis in axes[name])
        assert weights_are_block_diagonal(variable.numpy(), r, c)
        own[0] += np.sum(g[:r, :c] ** 2)
        own[1] += np.sum(g[r:, c:] ** 2)
        cross += np.sum(g[:r, c:] ** 2) + np.sum(g[r:, :c] ** 2)
        total += np.sum(g**2)
    assert record["source_0_grad_norm"] ** 2 == pytest.approx(own[0], rel=1e-5)
    assert record["source_1_grad_norm"] ** 2 == pytest.approx(own[1], rel=1e-5)
    assert record["cross_grad_norm"] ** 2 == pytest.approx(cross, rel=1e-5)
    assert record["kernel_grad_norm"] ** 2 == pytest.approx(total, rel=1e-5)
    assert (
        record["source_0_grad_norm"] ** 2
        + record["source_1_grad_norm"] ** 2
        + record["cross_grad_norm"] ** 2
    ) == pytest.approx(record["kernel_grad_norm"] ** 2, rel=1e-5)
    assert record["cross_grad_fraction"] > 0.01
    assert "halves_kernel_distance" not in record  # sources of different shapes


def weights_are_block_diagonal(kernel, r, c):
    return not np.any(kernel[:r, c:]) and not np.any(kernel[r:, :c])


def test_unequal_groups_without_sources_are_refused():
    a = FusionT5Seq2SeqLM(random_backbone(seed=0, cls=FusionT5Backbone))
    b = FusionT5Seq2SeqLM(
        random_backbone(
            hidden_dim=8, num_heads=1, intermediate_dim=16, seed=5, cls=FusionT5Backbone
        )
    )
    monitor = DynamicsMonitor(PROBE)
    monitor.set_model(compiled(FusionT5Seq2SeqLM.fuse(a, b)))
    with pytest.raises(ValueError, match="sources="):
        monitor.measure()


def test_halves_stay_identical_without_noise_and_move_apart_with_noise():
    """Self fusion with noise 0 gives identical halves and identical
    gradients, so the halves never separate (docs/growth.md, "Self fusion that
    trains"); the cancelling noise breaks that symmetry."""
    distances = {}
    for noise in (0.0, 0.05):
        model = compiled(FusionT5Seq2SeqLM.self_fuse(growing_lm().lm, noise=noise, seed=3))
        monitor = DynamicsMonitor(PROBE, every=1)
        monitor.set_model(model)
        start = monitor.measure()
        fit(model, 3, [monitor])
        distances[noise] = (start, monitor.records[-1])
    start, end = distances[0.0]
    for key in ("halves_embedding_distance", "halves_kernel_distance"):
        assert start[key] == 0.0 and end[key] < 1e-6
    # The two halves get equal gradients: each source's norm is the same.
    assert end["source_0_grad_norm"] == pytest.approx(end["source_1_grad_norm"], rel=1e-4)
    start, end = distances[0.05]
    assert start["halves_embedding_distance"] == 0.0  # embedding duplicated exactly
    assert start["halves_kernel_distance"] > 1e-3  # the noise sits in the kernels
    assert end["halves_embedding_distance"] > 1e-4
    assert end["halves_kernel_distance"] > start["halves_kernel_distance"]


def test_records_every_n_steps_inside_fit_across_growth(tmp_path):
    """Self fusion at step 2 inside fit: records at steps 2, 4, 6, the one at
    step 2 already of the grown model (the monitor runs after the growth
    callback), one retrace for the new inner model, TensorBoard scalars,
    JSON lines and numeric epoch logs."""
    model = growing_lm()
    log_dir, jsonl = str(tmp_path / "tb"), str(tmp_path / "dynamics.jsonl")
    monitor = DynamicsMonitor(PROBE, every=2, log_dir=log_dir, jsonl_path=jsonl)
    history = fit(model, 7, [GrowthCallback([SelfFuse(at_step=2, noise=0.01)], verbose=0), monitor])
    assert [r["step"] for r in monitor.records] == [2, 4, 6]
    assert all("halves_kernel_distance" in r for r in monitor.records)
    assert monitor.num_traces == 1  # the small model was never measured
    assert monitor.records[0]["halves_embedding_distance"] == 0.0
    assert history.history["dynamics_regularizer"] == [monitor.records[-1]["regularizer"]]
    with open(jsonl) as f:
        assert [json.loads(line) for line in f] == monitor.records

    tags = set()
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update((v.tag, event.step) for v in event.summary.value)
    assert ("dynamics/regularizer", 6) in tags and ("dynamics/cross_grad_norm", 2) in tags


def test_retraces_once_per_inner_model():
    model = growing_lm()
    monitor = DynamicsMonitor(PROBE, every=1)
    fit(model, 5, [monitor, GrowthCallback([SelfFuse(at_step=2, noise=0.01)], verbose=0)])
    # Listed before the growth callback: step 2 is measured on the small model.
    assert [("cross_grad_norm" in r) for r in monitor.records] == [False, False, True, True, True]
    assert monitor.num_traces == 2


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def test_overhead_per_step(record_property):
    """Reports (does not assert) the median step time with the monitor off,
    and on at every step, on the tiny model; at every=n the cost is spread
    over n steps."""
    steps, medians = 30, {}
    for label, every in (("off", None), ("every=1", 1)):
        model, timer = growing_lm(), StepTimer()
        # The timer goes last: its step time includes the monitor's work.
        callbacks = ([DynamicsMonitor(PROBE, every=every)] if every else []) + [timer]
        fit(model, steps, callbacks)
        # The first steps trace the train step (and the monitor's function).
        medians[label] = float(np.median(timer.times[5:]))
        mean = float(np.mean(timer.times[5:]))
        record_property(f"step_seconds_{label}", medians[label])
        print(
            f"\nDynamicsMonitor {label}: median step {medians[label] * 1e3:.2f} ms, "
            f"mean {mean * 1e3:.2f} ms"
        )
    assert all(m > 0 for m in medians.values())
