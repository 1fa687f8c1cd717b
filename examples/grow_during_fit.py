"""Grow a T5 model in the middle of `model.fit`, optimizer state carried.

A tiny T5 LM learns to continue Python's reference manual byte by byte; at
step 200 it fuses with itself (twice the width), at step 400 it gains two
identity layers. The loss goes on from where it was: print the losses around
each growth and compare.

Run: `python examples/grow_during_fit.py`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pydoc_data.topics  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_fusion.callbacks import GrowthCallback  # noqa: E402
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM  # noqa: E402

LENGTH, BATCH, STEPS = 32, 32, 600

text = "".join(pydoc_data.topics.topics.values())
ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype("int32") + 3
pairs = ids[: len(ids) // (2 * LENGTH) * 2 * LENGTH].reshape(-1, 2, LENGTH)
order = np.random.default_rng(0).permutation(len(pairs))
pairs = pairs[np.resize(order, STEPS * BATCH)]
targets = pairs[:, 1]
x = {
    "encoder_token_ids": pairs[:, 0],
    "encoder_padding_mask": np.ones_like(targets),
    "decoder_token_ids": np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1),
    "decoder_padding_mask": np.ones_like(targets),
}

keras.utils.set_random_seed(0)
backbone = FusionT5Backbone(
    vocabulary_size=259, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, dropout=0.0
)
model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(backbone))
model.compile(
    optimizer=keras.optimizers.AdamW(3e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)


held_out = {k: v[:64] for k, v in x.items()}, targets[:64]
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class LossAroundGrowth(keras.callbacks.Callback):
    """Loss on a fixed batch: just before, and right after, each growth."""

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % 100 == 0 or step in (199, 201, 399, 401):
            loss = float(loss_fn(held_out[1], self.model(held_out[0])))
            print(
                f"step {step:4d}  fixed-batch loss {loss:.4f}  hidden_dim "
                f"{self.model.backbone.hidden_dim}  layers {self.model.backbone.num_layers}"
            )


growth = GrowthCallback("self_fuse@200,deepen@400:layers=2")
model.fit(
    x,
    targets,
    batch_size=BATCH,
    epochs=1,
    shuffle=False,
    verbose=0,
    callbacks=[growth, LossAroundGrowth()],
)
print("Growth events:", growth.events)
