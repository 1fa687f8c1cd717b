"""Span corruption: lossless, at the requested density and span length, graph-safe."""

import numpy as np
import pytest
import tensorflow as tf

from data_test_utils import EOS, reassemble
from keras_fusion.data import random_spans_helper, random_spans_noise_mask, span_corruption

VOCABULARY = 1000


def random_tokens(rng, length):
    """Ids below the sentinel range (and above the specials), like real text."""
    return tf.constant(rng.integers(3, VOCABULARY - 100, length), tf.int32)


def noise_masks(lengths, density, mean_span):
    """One mask per length, seeded by its index, computed in a tf.data graph (fast)."""
    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(lengths, "int32")).enumerate()
    masks = dataset.map(
        lambda i, n: random_spans_noise_mask(n, density, mean_span, seed=tf.stack([i, 7]))
    )
    return list(masks.as_numpy_iterator())


def spans_of(mask):
    """Lengths of the runs of True in a boolean vector."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    starts = np.flatnonzero(np.diff(padded) == 1)
    ends = np.flatnonzero(np.diff(padded) == -1)
    return ends - starts


@pytest.mark.parametrize("length", [0, 1, 2, 3, 7, 70, 513])
def test_inputs_and_targets_reassemble_the_tokens(length):
    rng = np.random.default_rng(length)
    for s in range(20):
        tokens = random_tokens(rng, length)
        inputs, targets = span_corruption(tokens, VOCABULARY, seed=[s, length])
        assert inputs.dtype == tf.int32 and targets.dtype == tf.int32
        assert reassemble(inputs.numpy(), targets.numpy(), VOCABULARY) == list(tokens.numpy())


def test_noise_density_and_span_length_match_settings_on_average():
    # Placement is random; the counts follow from the length. Averaged over
    # 400 masks of random lengths, measured from the masks themselves (so
    # merged or empty spans would show): density within 0.01 of 0.15 and
    # mean span length within 0.2 of 3 (rounding per length biases both).
    lengths = np.random.default_rng(0).integers(50, 500, 400)
    for density, mean_span in [(0.15, 3.0), (0.3, 5.0)]:
        masks = noise_masks(lengths, density, mean_span)
        assert [len(m) for m in masks] == list(lengths)
        noise = sum(m.sum() for m in masks)
        assert abs(noise / lengths.sum() - density) < 0.01
        assert abs(np.mean(np.concatenate([spans_of(m) for m in masks])) - mean_span) < 0.2


def test_noise_falls_evenly_across_positions():
    # Per-position noise rate over 2000 masks of length 100: 0.15 everywhere
    # away from the ends (standard error 0.008; tolerance 0.045).
    masks = np.stack(noise_masks([100] * 2000, 0.15, 3.0))
    rate = masks.mean(axis=0)
    assert not masks[:, 0].any()  # T5 starts with a non-noise span
    assert np.all(np.abs(rate[10:90] - 0.15) < 0.045), rate


def test_noise_count_is_the_rounded_density():
    # T5: round(length * density) in Python (half to even), kept in [1, length - 1].
    # float32 arithmetic would differ first at length 190 for 0.15, 95 for 0.3.
    lengths = np.arange(2, 800)
    for density in (0.15, 0.3):
        counts = [m.sum() for m in noise_masks(lengths, density, 3.0)]
        assert counts == [min(max(round(n * density), 1), n - 1) for n in lengths]


def test_same_seed_same_corruption_other_seed_differs():
    tokens = tf.range(3, 203)
    first = span_corruption(tokens, VOCABULARY, seed=[4, 2])
    again = span_corruption(tokens, VOCABULARY, seed=[4, 2])
    other = span_corruption(tokens, VOCABULARY, seed=[5, 2])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_without_seed_it_still_corrupts_losslessly():
    tokens = tf.range(3, 103)
    inputs, targets = span_corruption(tokens, VOCABULARY)
    assert reassemble(inputs.numpy(), targets.numpy(), VOCABULARY) == list(range(3, 103))


def test_runs_inside_tf_data_in_graph_mode():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 120, 16)
    documents = [rng.integers(3, 800, n).astype("int32") for n in lengths]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(documents), output_signature=tf.TensorSpec([None], tf.int32)
    )
    eager_while_tracing = []

    def corrupt(i, tokens):
        eager_while_tracing.append(tf.executing_eagerly())
        return span_corruption(tokens, VOCABULARY, seed=tf.stack([i, i]))

    outputs = list(dataset.enumerate().map(corrupt).as_numpy_iterator())
    assert eager_while_tracing == [False]  # traced once, as a graph
    assert len(outputs) == len(documents)
    for document, (inputs, targets) in zip(documents, outputs):
        assert reassemble(inputs, targets, VOCABULARY) == list(document)


def test_random_spans_helper_reproduces_t5_c4_lengths():
    # T5 pre-trains on C4 with 568 raw tokens -> 512 inputs and 114 targets.
    assert random_spans_helper(512, 0.15, 3.0) == (568, 114)
    # By hand for 64 inputs: 70 tokens -> 10 noise in 3 spans -> 60+3+1, 10+3+1;
    # 71 tokens -> 11 noise in 4 spans -> 65 inputs, too many.
    assert random_spans_helper(64, 0.15, 3.0) == (70, 14)


@pytest.mark.parametrize(
    "inputs_length, targets_length, density, mean_span",
    [(64, None, 0.15, 3.0), (64, 12, 0.15, 3.0), (128, 40, 0.5, 3.0), (200, None, 0.3, 8.0)],
)
def test_planned_raw_length_fits_and_is_the_longest(
    inputs_length, targets_length, density, mean_span
):
    tokens_length, planned_targets = random_spans_helper(
        inputs_length, density, mean_span, targets_length
    )
    rng = np.random.default_rng(0)

    def corrupted_lengths(n):
        inputs, targets = span_corruption(
            random_tokens(rng, n), VOCABULARY, density, mean_span, [n, 0]
        )
        return len(inputs), len(targets)

    inputs, targets = corrupted_lengths(tokens_length)
    assert inputs <= inputs_length and targets == planned_targets
    assert targets <= (targets_length or np.inf)
    longer_inputs, longer_targets = corrupted_lengths(tokens_length + 1)
    assert longer_inputs > inputs_length or longer_targets > (targets_length or np.inf)


def test_random_spans_helper_rejects_impossible_settings():
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_helper(64, noise_density=1.0)
    with pytest.raises(ValueError, match="too short"):
        random_spans_helper(64, targets_length=2)


def test_eos_ends_both_sequences_even_when_empty():
    inputs, targets = span_corruption(tf.zeros([0], tf.int32), VOCABULARY, seed=[0, 0])
    assert list(inputs.numpy()) == [EOS] and list(targets.numpy()) == [EOS]
