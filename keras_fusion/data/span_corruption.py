"""T5's span corruption objective in TensorFlow ops (runs inside `tf.data` graphs).

A random ~15% of the tokens, in spans of mean length 3, is noise. The inputs
keep the other tokens and put one sentinel in place of each noise span; the
targets list each sentinel followed by the span it replaced:

    tokens:  The cat sat on the mat and purred
    inputs:  The <extra_id_0> on the <extra_id_1> purred </s>
    targets: <extra_id_0> cat sat <extra_id_1> mat and </s>

This follows T5's `random_spans_noise_mask`, `noise_span_to_unique_sentinel`
and `nonnoise_span_to_unique_sentinel` (google-research/text-to-text-transfer-
transformer, t5/data/preprocessors.py), with stateless random ops: the same
seed gives the same corruption. Two deliberate differences: the span counts
are computed in float64 so that `random_spans_helper` (Python-side lengths)
and the mask always agree, and the number of spans is capped so that every
noise and non-noise span holds at least one token.

Example:

```python
inputs, targets = span_corruption(tf.range(3, 40), vocabulary_size=1000, seed=[0, 1])
```
"""

import numpy as np
import tensorflow as tf

from keras_fusion.data.tokenizer import sentinel_id
from keras_fusion.token_ids import EOS_ID


def span_corruption(
    tokens, vocabulary_size, noise_density=0.15, mean_noise_span_length=3.0, seed=None
):
    """Corrupt a token sequence into T5's span-corruption inputs and targets.

    The k-th noise span (k = 0, 1, ...) becomes `sentinel_id(k,
    vocabulary_size)`, i.e. `<extra_id_k>`: a tokenizer with fewer sentinels
    than noise spans would see ordinary ids (see `random_spans_helper`).

    Args:
        tokens: a 1-D integer tensor of token ids, without eos.
        vocabulary_size: the total number of ids; sentinels count down from
            the last.
        noise_density: the share of tokens to mask.
        mean_noise_span_length: the mean length of a masked span.
        seed: a shape `[2]` integer tensor for the stateless random ops;
            `None` draws one from TensorFlow's global generator (not
            reproducible).

    Returns:
        `(inputs, targets)`, 1-D tensors of the dtype of `tokens`, each
        ending with eos (id 1).

    Example:

    ```python
    dataset = dataset.map(lambda t: span_corruption(t, 1000, seed=[7, 0]))
    ```
    """
    tokens = tf.convert_to_tensor(tokens)
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    noise = random_spans_noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seed)
    eos = tf.constant([EOS_ID], tokens.dtype)
    inputs = _spans_to_sentinels(tokens, noise, vocabulary_size)
    targets = _spans_to_sentinels(tokens, tf.logical_not(noise), vocabulary_size)
    return tf.concat([inputs, eos], 0), tf.concat([targets, eos], 0)


def random_spans_noise_mask(length, noise_density, mean_noise_span_length, seed):
    """A random noise mask: alternating non-noise and noise spans, noise last.

    The numbers of noise tokens and spans are fixed by the length (see
    `random_spans_helper`); only where the spans fall is random. The mask
    starts with a non-noise span and ends with a noise span.

    Args:
        length: the number of tokens, an integer scalar (tensor or int).
        noise_density: the share of noise tokens, rounded to a whole number
            (at least 1, at most length - 1).
        mean_noise_span_length: the mean span length: the number of spans is
            the noise count divided by it, rounded (at least 1).
        seed: a shape `[2]` integer tensor for the stateless random ops.

    Returns:
        A 1-D boolean tensor of `length` entries, True for noise.

    Example:

    ```python
    mask = random_spans_noise_mask(20, 0.15, 3.0, seed=[0, 0])
    ```
    """
    original_length = tf.cast(length, tf.int32)
    # Lengths 0 and 1 are computed as 2 and cut back, as T5 does.
    length = tf.maximum(original_length, 2)
    num_noise, num_spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_seed, nonnoise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    noise_lengths = _random_segmentation(num_noise, num_spans, noise_seed)
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, nonnoise_seed)
    span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    span_starts = tf.cumsum(span_lengths)[:-1]
    is_span_start = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
    # Spans alternate non-noise, noise: odd-numbered spans are noise.
    return tf.equal(tf.cumsum(is_span_start) % 2, 1)[:original_length]


def random_spans_helper(
    inputs_length, noise_density=0.15, mean_noise_span_length=3.0, targets_length=None
):
    """How many raw tokens to corrupt so that the inputs fill `inputs_length`.

    T5's `random_spans_helper`: the numbers of noise tokens and spans depend
    only on the raw length n, so the corrupted lengths are exact:
    inputs = n - noise + spans + 1, targets = noise + spans + 1 (one sentinel
    per span, one eos). The raw length grows from 2 while the next length
    still fits (T5 stops at the first that does not). With `targets_length`,
    the targets must fit too, so that nothing is ever truncated.

    Args:
        inputs_length: the encoder length to fill.
        noise_density: as in `span_corruption`.
        mean_noise_span_length: as in `span_corruption`.
        targets_length: the decoder length, or `None` for no limit.

    Returns:
        `(tokens_length, targets_length)`: the raw length, and the length of
        its targets (eos included).

    Raises:
        ValueError: for a density outside (0, 1), a mean span length below 1,
            or lengths too short for any corruption.

    Example:

    ```python
    random_spans_helper(512)  # (568, 114), as in T5's C4 pre-training.
    ```
    """
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ValueError(
            f"Need 0 < noise_density < 1 and mean_noise_span_length >= 1, got "
            f"{noise_density} and {mean_noise_span_length}."
        )
    # Inputs keep about (1 - density) of the raw tokens, so the first raw
    # length that overflows lies below this bound.
    lengths = np.arange(2, int(inputs_length / (1.0 - noise_density)) + 4)
    num_noise, num_spans = (
        t.numpy() for t in _span_counts(lengths, noise_density, mean_noise_span_length)
    )
    inputs = lengths - num_noise + num_spans + 1
    targets = num_noise + num_spans + 1
    fits = (inputs <= inputs_length) & (targets <= (targets_length or np.inf))
    if not fits[0]:
        raise ValueError(
            f"inputs_length={inputs_length}, targets_length={targets_length} are too short "
            f"for span corruption at noise_density={noise_density}."
        )
    last = np.argmin(fits) - 1
    return int(lengths[last]), int(targets[last])


def _span_counts(length, noise_density, mean_noise_span_length):
    """Noise tokens and noise spans for `length` (>= 2) tokens, elementwise.

    float64 rounding (half to even) matches Python's `round`, so that the
    lengths `random_spans_helper` plans are the lengths the mask makes.
    """
    length = tf.cast(length, tf.int32)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float64) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float64) / mean_noise_span_length), tf.int32)
    # Every span of noise and of non-noise needs at least one token.
    num_spans = tf.clip_by_value(num_spans, 1, tf.minimum(num_noise, length - num_noise))
    return num_noise, num_spans


def _random_segmentation(num_items, num_segments, seed):
    """Random positive lengths of `num_segments` segments summing to `num_items`."""
    # Choose num_segments - 1 of the num_items - 1 gaps between items as cuts.
    is_cut = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(is_cut), seed))
    first_in_segment = tf.pad(tf.gather(is_cut, order), [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def _spans_to_sentinels(tokens, mask, vocabulary_size):
    """Replace each run of masked tokens by one sentinel, numbered from 0."""
    previous = tf.pad(mask, [[1, 0]])[:-1]  # Padding first: empty stays empty.
    first = tf.logical_and(mask, tf.logical_not(previous))
    later = tf.logical_and(mask, previous)
    span_index = tf.cumsum(tf.cast(first, tokens.dtype)) - 1
    sentinels = sentinel_id(span_index, tf.cast(vocabulary_size, tokens.dtype))
    return tf.boolean_mask(tf.where(first, sentinels, tokens), tf.logical_not(later))
