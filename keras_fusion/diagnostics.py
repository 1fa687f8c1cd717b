"""Diagnostics: how far a grown model is from the models it came from.

```python
from keras_fusion.diagnostics import function_error

error = function_error(fused, [lm_a, lm_b], inputs)  # 0 for an exact fusion
```
"""

import keras
import numpy as np
from keras_hub.models import T5Backbone, T5Seq2SeqLM

from keras_fusion.token_ids import EOS_ID, PAD_ID


def relative_error(output, reference):
    """`||output - reference|| / ||reference||` over all entries."""
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if output.shape != reference.shape:
        raise ValueError(f"Shapes differ: output {output.shape} vs reference {reference.shape}.")
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


def function_error(grown, sources, inputs, weights=None):
    """Relative error of a grown model against what it should compute.

    For backbones, the reference is the sources' outputs concatenated along
    features (one source: its outputs; `[a, a]`: a self-fused `a`). For
    language models, the reference is `sum_i weights[i] * logits_i`
    (uniform weights by default). Padding positions are included: the
    padding mask is part of the input and the outputs there must match too.

    Args:
        grown: a `T5Backbone` or `T5Seq2SeqLM`.
        sources: list of models of the same kind.
        inputs: dict of the four T5 inputs (token ids and padding masks).
        weights: optional list of floats, for language models.

    Returns:
        A dict: `{"encoder_sequence_output": e, "decoder_sequence_output": e}`
        for backbones, `{"logits": e}` for language models.

    Example:

    ```python
    fused = FusionT5Backbone.fuse(a, b, norm="global")
    print(function_error(fused, [a, b], batch))  # what "global" costs
    ```
    """
    if isinstance(grown, T5Seq2SeqLM):
        weights = weights or [1.0 / len(sources)] * len(sources)
        reference = sum(
            w * np.asarray(s.predict_on_batch(inputs)) for w, s in zip(weights, sources)
        )
        return {"logits": relative_error(grown.predict_on_batch(inputs), reference)}
    if isinstance(grown, T5Backbone):
        outputs = grown.predict_on_batch(inputs)
        references = [s.predict_on_batch(inputs) for s in sources]
        return {
            key: relative_error(outputs[key], np.concatenate([r[key] for r in references], axis=-1))
            for key in ("encoder_sequence_output", "decoder_sequence_output")
        }
    raise ValueError(f"grown must be a T5Backbone or T5Seq2SeqLM, got {type(grown).__name__}.")


def content_mask(targets, weights, vocabulary_size, num_sentinels=100):
    """Which target positions hold text: weighted, not EOS, not a sentinel.

    Span-corruption targets are sentinels (`<extra_id_i>`, the last
    `num_sentinels` ids) and EOS, which a model predicts from position alone,
    and the text of the dropped spans, which it can predict only from the
    encoder's input.
    """
    targets = np.asarray(targets)
    return (
        (np.asarray(weights) > 0)
        & (targets != EOS_ID)
        & (targets != PAD_ID)
        & (targets < vocabulary_size - num_sentinels)
    )


def unigram_counts(dataset, vocabulary_size, num_batches):
    """Target-token counts over `num_batches` `(x, y, weight)` batches of a
    training dataset: the unigram model `encoder_use` compares against."""
    counts = np.zeros(vocabulary_size, np.float64)
    for _, y, weight in dataset.take(num_batches):
        y, weight = np.asarray(y), np.asarray(weight)
        np.add.at(counts, y[weight > 0], 1.0)
    return counts


def encoder_use(lm, eval_data, unigram=None, num_sentinels=100):
    """Whether a T5 LM reads its encoder, on held-out span-corruption batches.

    Each batch is scored twice: as it is, and with the encoder inputs
    rolled by one example (every target paired with another example's
    input). A model that reads its encoder loses clearly more with the wrong
    input; one that has learned only the targets' marginal distribution
    loses the same. The loss on content tokens (`content_mask`) is also
    compared with a unigram model's, which knows nothing of the input.

    Args:
        lm: a `T5Seq2SeqLM` (or `FusionT5Seq2SeqLM`).
        eval_data: finite `(x, y, weight)` batches, batch size >= 2.
        unigram: optional target-token counts (`unigram_counts`), add-one
            smoothed into the unigram model.
        num_sentinels: the tokenizer's sentinel count.

    Returns:
        A dict of token-weighted mean losses (nats): `loss`,
        `mismatched_encoder_loss`, `content_loss`,
        `mismatched_encoder_content_loss` (content tokens with the other
        input: the gap to `content_loss` is what the encoder is worth), and
        with `unigram`, `content_unigram_loss`.

    Example:

    ```python
    use = encoder_use(lm, eval_batches, unigram_counts(train_batches, 1000, 200))
    assert use["mismatched_encoder_loss"] > use["loss"] + 0.1
    ```
    """
    import tensorflow as tf

    vocabulary_size = lm.backbone.vocabulary_size
    log_unigram = None
    if unigram is not None:
        smoothed = np.asarray(unigram, np.float64) + 1.0
        log_unigram = np.log(smoothed / smoothed.sum())

    @tf.function
    def token_losses(x, y):
        logits = lm(x, training=False)
        return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

    keys = ("loss", "mismatched", "content", "mismatched_content", "unigram", "weight", "count")
    sums = dict.fromkeys(keys, 0.0)
    for x, y, weight in eval_data:
        if int(tf.shape(y)[0]) < 2:
            raise ValueError("encoder_use needs batches of at least 2 examples to pair them.")
        rolled = dict(x)
        for name in ("encoder_token_ids", "encoder_padding_mask"):
            rolled[name] = tf.roll(x[name], shift=1, axis=0)
        weight = np.asarray(weight)
        losses = np.asarray(token_losses(x, y))
        mismatched = np.asarray(token_losses(rolled, y))
        content = content_mask(y, weight, vocabulary_size, num_sentinels)
        sums["loss"] += float((losses * weight).sum())
        sums["mismatched"] += float((mismatched * weight).sum())
        sums["weight"] += float(weight.sum())
        sums["content"] += float(losses[content].sum())
        sums["mismatched_content"] += float(mismatched[content].sum())
        sums["count"] += float(content.sum())
        if log_unigram is not None:
            sums["unigram"] -= float(log_unigram[np.asarray(y)[content]].sum())
    count = max(sums["count"], 1.0)
    result = {
        "loss": sums["loss"] / sums["weight"],
        "mismatched_encoder_loss": sums["mismatched"] / sums["weight"],
        "content_loss": sums["content"] / count,
        "mismatched_encoder_content_loss": sums["mismatched_content"] / count,
    }
    if log_unigram is not None:
        result["content_unigram_loss"] = sums["unigram"] / count
    return result
