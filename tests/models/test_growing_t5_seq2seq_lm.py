"""GrowingT5Seq2SeqLM: a growth inside fit frees the model it replaces."""

import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_fusion import metrics
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.growth import Deepen
from t5_test_utils import fit_steps, growing_lm, random_inputs, random_labels

X = random_inputs(batch_size=4, seed=11)
Y = random_labels(batch_size=4, seed=12)


def fit(model, steps, callbacks=()):
    return fit_steps(model, X, Y, steps, None, callbacks)


class WeakRefsAt(keras.callbacks.Callback):
    """Weak references to the inner model, one of its variables and the
    optimizer (and one of its slots) as they are at the end of step `step`."""

    def __init__(self, step):
        super().__init__()
        self.step, self.refs = step, {}

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.refs = {
                "inner model": weakref.ref(self.model.lm),
                "variable": weakref.ref(self.model.lm.backbone.weights[0]),
                "optimizer": weakref.ref(self.model.optimizer),
                "optimizer slot": weakref.ref(self.model.optimizer.variables[-1]),
            }

    def alive(self):
        gc.collect()
        return sorted(name for name, ref in self.refs.items() if ref() is not None)


def test_growth_inside_fit_frees_the_replaced_model_and_optimizer():
    """Five growths must not hold five models: `compile`'s
    `_compiled_trainable_state` (a TF-tracked dict keyed by every layer) kept
    the replaced inner model alive, and with it its variables."""
    model = growing_lm()
    old = WeakRefsAt(1)
    fit(model, 3, [old, GrowthCallback([Deepen(at_step=2, num_new_layers=1)], verbose=0)])
    assert model.backbone.num_layers == 3 and int(model.optimizer.iterations.numpy()) == 3
    assert len(old.refs) == 4
    assert old.alive() == []
    # The grown model still trains (all of it: the new layer included).
    before = [np.array(v.numpy()) for v in model.trainable_variables]
    # All of them: 3 gated layers, tied (3 * 9 + 1 encoder, 3 * 14 + 1 decoder
    # leaves, the embedding, 2 final norms); all() of none would be True.
    assert len(before) == 74
    fit(model, 1)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


def test_metrics_recorder_releases_the_replaced_model():
    """The recorder's evaluation function closes over the inner model; when
    no evaluation follows the last growth, it must not keep it past fit."""
    model = growing_lm()
    weights = X["decoder_padding_mask"].astype("float32")
    eval_data = tf.data.Dataset.from_tensors((X, Y, weights))
    old = WeakRefsAt(2)
    # The recorder comes first: at step 2 it evaluates the model about to be replaced.
    recorder = metrics.MetricsRecorder(eval_data, 4, 9, 9, every=1)
    fit(model, 2, [recorder, old, GrowthCallback([Deepen(at_step=2, num_new_layers=1)], verbose=0)])
    assert model.backbone.num_layers == 3 and len(recorder.rows) == 2
    assert old.alive() == []
