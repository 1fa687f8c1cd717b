"""Fuse two small trained T5 models into one wider model, and check it.

Two tiny T5 language models learn to continue Python's reference manual
(`pydoc_data.topics`, which ships with Python) byte by byte, from different
seeds and data orders. `FusionT5Seq2SeqLM.fuse` turns them into one model of
twice the width whose logits are exactly their average; the script prints
that check, the held-out losses, and what a little more training of the
fused model gives.

Run: `make demo` (or `python examples/fuse_two_models.py --steps 600`).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pydoc_data.topics  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_fusion.models import (  # noqa: E402
    FusionT5Backbone,
    FusionT5Seq2SeqLM,
    function_error,
)

LENGTH = 32  # bytes of context, and bytes to predict
VOCABULARY_SIZE = 259  # 0 pad (also the decoder start token), 1 eos, 2 unk, bytes + 3


def byte_pairs(text):
    """(encoder ids, target ids): a chunk of text and the chunk that follows."""
    ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype("int32") + 3
    count = len(ids) // (2 * LENGTH)
    chunks = ids[: count * 2 * LENGTH].reshape(count, 2, LENGTH)
    return chunks[:, 0], chunks[:, 1]


def as_inputs(encoder_ids, targets):
    ones = np.ones_like(targets)
    decoder_ids = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    return {
        "encoder_token_ids": encoder_ids,
        "encoder_padding_mask": ones,
        "decoder_token_ids": decoder_ids,
        "decoder_padding_mask": ones,
    }


def small_lm(seed, hidden_dim):
    keras.utils.set_random_seed(seed)
    backbone = FusionT5Backbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=2,
        num_heads=hidden_dim // 16,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        dropout=0.0,
    )
    return FusionT5Seq2SeqLM(backbone=backbone)


def train(lm, x, y, steps, batch_size, seed, learning_rate):
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Each model sees the data in its own order (its seed), as in the paper.
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // len(y))
    order = np.concatenate([rng.permutation(len(y)) for _ in range(epochs)])
    order = order[: steps * batch_size]
    lm.fit(
        {k: v[order] for k, v in x.items()},
        y[order],
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=2,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per small model")
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden_dim", type=int, default=32, help="width of each small model")
    args = parser.parse_args()

    encoder_ids, targets = byte_pairs("".join(pydoc_data.topics.topics.values()))
    split = len(targets) * 9 // 10
    x_train, y_train = as_inputs(encoder_ids[:split], targets[:split]), targets[:split]
    x_valid = as_inputs(encoder_ids[split:][:512], targets[split:][:512])
    y_valid = targets[split:][:512]
    print(
        f"Corpus: pydoc_data.topics, {len(targets)} pairs of {LENGTH}-byte chunks "
        f"({split} train, {len(y_valid)} validation)."
    )

    lms = []
    for seed in (0, 1):
        print(
            f"\nTraining small model {seed} (hidden_dim={args.hidden_dim}, seed {seed}), "
            f"{args.steps} steps:"
        )
        lm = small_lm(seed, args.hidden_dim)
        train(lm, x_train, y_train, args.steps, args.batch_size, seed, args.learning_rate)
        lms.append(lm)

    fused = FusionT5Seq2SeqLM.fuse(*lms)
    error = function_error(fused, lms, {k: v[:64] for k, v in x_valid.items()})["logits"]
    print(
        f"\nFused: hidden_dim {fused.backbone.hidden_dim}, {fused.backbone.num_heads} heads, "
        f"norm groups {fused.backbone.norm_groups}, {fused.count_params():,} parameters."
    )
    print(
        f"Check: ||fused logits - mean of the two models' logits|| / ||mean|| = {error:.2e} "
        f"({'OK' if error <= 1e-5 else 'FAILED'}, tolerance 1e-5)"
    )

    def valid_loss(lm):
        lm.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return lm.evaluate(x_valid, y_valid, batch_size=64, verbose=0, return_dict=True)

    losses = {f"small model {i}": valid_loss(lm) for i, lm in enumerate(lms)}
    losses["fused, before training"] = valid_loss(fused)
    print(f"\nTraining the fused model {args.steps // 2} more steps:")
    train(fused, x_train, y_train, args.steps // 2, args.batch_size, 2, args.learning_rate / 2)
    losses["fused, after training"] = valid_loss(fused)
    print("\nHeld-out loss / accuracy:")
    for name, metrics in losses.items():
        print(f"  {name:24s} {metrics['loss']:.4f} / {metrics['sparse_categorical_accuracy']:.3f}")
    if error > 1e-5:
        raise SystemExit("The fused model does not compute the ensemble of its sources.")


if __name__ == "__main__":
    main()
