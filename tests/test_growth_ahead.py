"""Growth prepared ahead (GrowthCallback(prepare_ahead=True)): same result, no retrace.

The prepared path writes the same arrays into a model built and traced in a
background thread; the synchronous path builds the grown model from them.
Both must end in the same state after training on: the comparison below is
to 1e-6 relative (float32; the two paths run the same graph on the same
values, so any larger difference is a wrong or missing value).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusion.callbacks import GrowthCallback
from keras_fusion.growth import Deepen, Fuse, SelfFuse, WidenFFN
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from t5_test_utils import growing_lm, random_backbone, random_inputs, random_labels

X = random_inputs(batch_size=4, seed=21)
Y = random_labels(batch_size=4, seed=22)
RTOL = 1e-6


def dataset():
    return tf.data.Dataset.from_tensors((X, Y)).repeat()


def state(model):
    return {
        "weights": [v.numpy() for v in model.trainable_variables],
        "optimizer": [v.numpy() for v in model.optimizer.variables],
    }


def tracing_count(function, seen=None):
    """Traces of every `tf.function` reachable from `function`'s closure."""
    seen = set() if seen is None else seen
    if id(function) in seen:
        return 0
    seen.add(id(function))
    count = 0
    if hasattr(function, "experimental_get_tracing_count"):
        count += function.experimental_get_tracing_count()
        function = getattr(function, "_python_function", None)
    for cell in getattr(function, "__closure__", None) or ():
        value = cell.cell_contents
        if callable(value):
            count += tracing_count(value, seen)
    return count


class Record(keras.callbacks.Callback):
    """Per step: loss, and the traces of the train function in use."""

    def __init__(self):
        super().__init__()
        self.losses, self.traces = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        self.traces.append(tracing_count(self.model.train_function))


def grow(entry, prepare_ahead, steps=6, epochs=1, callbacks=(), model=None):
    model = model or growing_lm(keras.optimizers.AdamW(1e-2), seed=3)
    growth = GrowthCallback([entry], prepare_ahead=prepare_ahead, verbose=0)
    record = Record()
    model.fit(
        dataset(),
        steps_per_epoch=steps,
        epochs=epochs,
        verbose=0,
        callbacks=[growth, record, *callbacks],
    )
    return model, growth, record


# Deepen is prepared ahead in the tests below (and in test_callbacks).
ENTRIES = [
    SelfFuse(at_step=3, noise=0.01),
    WidenFFN(at_step=3, factor=2, noise=0.01),
    Fuse(
        at_step=3,
        partner=FusionT5Seq2SeqLM(random_backbone(seed=8, cls=FusionT5Backbone)),
        weight=0.7,
    ),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.operator)
def test_prepared_growth_ends_where_synchronous_growth_ends_without_a_trace(entry):
    ahead, ahead_growth, ahead_record = grow(entry, True)
    sync, sync_growth, sync_record = grow(entry, False)
    assert ahead_growth.events[0]["prepared_ahead"] is True
    assert sync_growth.events[0]["prepared_ahead"] is False
    unnamed = lambda config: {k: v for k, v in config.items() if k != "name"}  # noqa: E731
    assert unnamed(ahead.backbone.get_config()) == unnamed(sync.backbone.get_config())
    np.testing.assert_allclose(ahead_record.losses, sync_record.losses, rtol=RTOL)
    a, s = state(ahead), state(sync)
    for key in a:
        assert len(a[key]) == len(s[key])
        for x, y in zip(a[key], s[key]):
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * np.abs(y).max())
    assert int(ahead.optimizer.iterations.numpy()) == 6
    # The epoch's running loss spans the growth (the losses above are
    # running means): the prepared trackers took over the totals. The loss
    # tracker counts samples: 6 steps of 4.
    np.testing.assert_allclose(float(ahead.metrics[0].count.numpy()), 24.0)
    # Step 3 ends with the growth; steps 4-6 run the prepared function,
    # traced (once) in the background before the growth. The synchronous
    # path traces on the first step after the growth.
    assert ahead_record.traces[3] == ahead_record.traces[5] >= 1
    assert sync_record.traces[2] == 0 and sync_record.traces[3] >= 1


class SetLearningRate(keras.callbacks.Callback):
    def __init__(self, step, rate):
        super().__init__()
        self.step, self.rate = step, rate

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.model.optimizer.learning_rate = self.rate


def test_a_prepared_model_that_no_longer_matches_is_dropped_for_synchronous_growth():
    # The learning rate changes after the preparation began (step 1): the
    # prepared optimizer would run at the old rate.
    entry = Deepen(at_step=4, num_new_layers=1)
    model, growth, _ = grow(entry, True, callbacks=[SetLearningRate(2, 3e-3)])
    event = growth.events[0]
    assert event["prepared_ahead"] is False
    assert "optimizer" in event["not_prepared_reason"]
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 3e-3, rtol=1e-6)
    assert model.backbone.num_layers == 3


def test_preparation_carries_over_to_the_next_fit_and_a_recompile_drops_it():
    entry = Deepen(at_step=5, num_new_layers=1)
    model = growing_lm(keras.optimizers.AdamW(1e-2), seed=3)
    growth = GrowthCallback([entry], verbose=0)
    model.fit(dataset(), steps_per_epoch=3, verbose=0, callbacks=[growth])
    assert growth.events == [] and growth._preparation is not None and growth._preparation.done
    model.fit(dataset(), steps_per_epoch=3, verbose=0, callbacks=[growth])
    assert growth.events[0]["prepared_ahead"] is True and growth.events[0]["waited_seconds"] < 0.5

    model = growing_lm(keras.optimizers.AdamW(1e-2), seed=3)
    growth = GrowthCallback([entry], verbose=0)
    model.fit(dataset(), steps_per_epoch=3, verbose=0, callbacks=[growth])
    model.compile(
        optimizer=model.optimizer,
        metrics=["accuracy"],  # iterations go on
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(dataset(), steps_per_epoch=3, verbose=0, callbacks=[growth])
    assert growth.events[0]["prepared_ahead"] is False
    assert "compiled again" in growth.events[0]["not_prepared_reason"]
    assert "accuracy" in history.history


def test_prepare_ahead_must_be_a_bool():
    with pytest.raises(ValueError, match="prepare_ahead must be True or False"):
        GrowthCallback("deepen@3", prepare_ahead="yes")
