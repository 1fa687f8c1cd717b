"""Tiny random T5 models and inputs for the tests.

Weights are random everywhere (norm scales too: a norm left at ones would
hide a wrong grouping), dropout is off, computation is float32. The
tolerance for every exact operator is stated once, here.
"""

import keras
import keras_hub
import numpy as np

# Relative error ||out - ref|| / ||ref|| allowed for an exact operator.
TOLERANCE = 1e-5
VOCABULARY_SIZE = 61


def random_backbone(
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    seed=0,
    cls=keras_hub.models.T5Backbone,
    **kwargs,
):
    """A T5 backbone with random weights, random norm scales, no dropout."""
    keras.utils.set_random_seed(seed)
    config = dict(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=2,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        key_value_dim=8,
        dropout=0.0,
    )
    config.update(kwargs)
    backbone = cls(**config)
    rng = np.random.default_rng(seed + 1000)
    for variable in backbone.weights:
        if variable.path.endswith("weight"):  # RMSNorm scales
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return backbone


def random_inputs(batch_size=3, length=9, seed=0):
    """Random token ids with some padding in both the encoder and decoder."""
    rng = np.random.default_rng(seed)
    encoder_mask = np.ones((batch_size, length), "int32")
    decoder_mask = np.ones((batch_size, length), "int32")
    encoder_mask[0, length - 3 :] = 0
    decoder_mask[1, length - 4 :] = 0
    return {
        "encoder_token_ids": rng.integers(1, VOCABULARY_SIZE, (batch_size, length)).astype("int32")
        * encoder_mask,
        "encoder_padding_mask": encoder_mask,
        "decoder_token_ids": rng.integers(1, VOCABULARY_SIZE, (batch_size, length)).astype("int32")
        * decoder_mask,
        "decoder_padding_mask": decoder_mask,
    }


def snapshot(model):
    """Copies of all of a model's weights, keyed by variable path."""
    return [(v.path, np.array(v.numpy())) for v in model.weights]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert [p for p, _ in after] == [p for p, _ in before]
    for (path, a), (_, b) in zip(after, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{path} was modified")


def random_labels(batch_size=3, length=9, seed=0):
    return (
        np.random.default_rng(seed)
        .integers(0, VOCABULARY_SIZE, (batch_size, length))
        .astype("int32")
    )


def fit_steps(model, x, y, steps, sample_weight=None, callbacks=(), **kwargs):
    """`fit` one epoch of `steps` batches of 4: the batch `(x, y)` repeated,
    in order (`x` holds 4 examples)."""
    repeat = lambda a: None if a is None else np.concatenate([a] * steps)  # noqa: E731
    return model.fit(
        {k: repeat(v) for k, v in x.items()},
        repeat(y),
        sample_weight=repeat(sample_weight),
        batch_size=4,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
        **kwargs,
    )


def growing_lm(optimizer=None, seed=0, **backbone_kwargs):
    """A compiled GrowingT5Seq2SeqLM on a tiny random T5 (dropout off)."""
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM

    lm = FusionT5Seq2SeqLM(random_backbone(seed=seed, cls=FusionT5Backbone, **backbone_kwargs))
    model = GrowingT5Seq2SeqLM(lm)
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class AtStep(keras.callbacks.Callback):
    """Stores `fn(model)` in `value` at the end of optimizer step `step`."""

    def __init__(self, step, fn):
        super().__init__()
        self.step, self.fn, self.value = step, fn, None

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            self.value = self.fn(self.model)
