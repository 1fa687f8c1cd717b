"""make_dataset: batches a T5Seq2SeqLM can fit on, lossless and reproducible."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow_text

from data_test_utils import SMALL_VOCABULARY, reassemble, small_texts, train_small_tokenizer
from keras_fusion.data import load_tokenizer, make_dataset, random_spans_helper
from t5_test_utils import random_backbone

BATCH, INPUTS, TARGETS = 8, 64, 16


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_small_tokenizer(str(tmp_path_factory.mktemp("spm")))


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return load_tokenizer(model_path)


def dataset(tokenizer, texts=None, **kwargs):
    return make_dataset(
        small_texts() if texts is None else texts,
        tokenizer,
        SMALL_VOCABULARY,
        BATCH,
        input_length=INPUTS,
        target_length=TARGETS,
        **kwargs,
    )


def batches(data, count):
    return [keras.tree.map_structure(np.asarray, b) for b in data.take(count)]


def test_batches_have_the_promised_shapes_and_dtypes(tokenizer):
    x, y, sample_weight = batches(dataset(tokenizer), 1)[0]
    assert set(x) == {
        "encoder_token_ids",
        "encoder_padding_mask",
        "decoder_token_ids",
        "decoder_padding_mask",
    }
    for key in ("encoder_token_ids", "encoder_padding_mask"):
        assert x[key].shape == (BATCH, INPUTS) and x[key].dtype == np.int32
    for key in ("decoder_token_ids", "decoder_padding_mask"):
        assert x[key].shape == (BATCH, TARGETS) and x[key].dtype == np.int32
    assert y.shape == (BATCH, TARGETS) and y.dtype == np.int32
    assert sample_weight.shape == (BATCH, TARGETS) and sample_weight.dtype == np.float32


def test_decoder_inputs_are_the_targets_shifted_right(tokenizer):
    for x, y, sample_weight in batches(dataset(tokenizer), 3):
        np.testing.assert_array_equal(x["decoder_token_ids"][:, 0], 0)  # T5 starts with pad
        np.testing.assert_array_equal(x["decoder_token_ids"][:, 1:], y[:, :-1])
        # Real targets are never pad; the masks mark exactly them.
        np.testing.assert_array_equal(sample_weight, (y != 0).astype("float32"))
        np.testing.assert_array_equal(x["decoder_padding_mask"][:, 0], 1)
        np.testing.assert_array_equal(x["decoder_padding_mask"][:, 1:], sample_weight[:, :-1])
        np.testing.assert_array_equal(
            x["encoder_padding_mask"], (x["encoder_token_ids"] != 0).astype("int32")
        )


def test_examples_reassemble_the_concatenated_documents(tokenizer):
    # Unshuffled, unrepeated: example k is chunk k of all documents' tokens.
    texts = small_texts()[:40]
    stream = np.concatenate([tokenizer.tokenize(t).numpy() for t in texts])
    chunk, _ = random_spans_helper(INPUTS, targets_length=TARGETS)
    examples = batches(dataset(tokenizer, texts, shuffle=False, repeat=False), 1000)
    assert len(examples) == len(stream) // chunk // BATCH
    for b, (x, y, sample_weight) in enumerate(examples):
        for row in range(BATCH):
            inputs = x["encoder_token_ids"][row][x["encoder_padding_mask"][row] == 1]
            targets = y[row][sample_weight[row] == 1]
            start = (b * BATCH + row) * chunk
            assert reassemble(inputs, targets, SMALL_VOCABULARY) == list(
                stream[start : start + chunk]
            )


def test_same_seed_same_batches_other_seed_differs(tokenizer):
    first = batches(dataset(tokenizer, seed=3), 2)
    again = batches(dataset(tokenizer, seed=3), 2)
    other = batches(dataset(tokenizer, seed=4), 2)
    for a, b in zip(keras.tree.flatten(first), keras.tree.flatten(again)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][1], other[0][1])


def test_survives_keras_seed_resets(tokenizer):
    # keras.utils.set_random_seed deletes eagerly created SentencePiece
    # resources (tensorflow/text#570); growth code calls it mid-training.
    # Unshuffled, so that TensorFlow's global seed does not enter.
    made_before = dataset(tokenizer, shuffle=False)
    expected = batches(made_before, 2)
    keras.utils.set_random_seed(0)
    for data in (made_before, dataset(tokenizer, shuffle=False)):
        for a, b in zip(keras.tree.flatten(batches(data, 2)), keras.tree.flatten(expected)):
            np.testing.assert_array_equal(a, b)


def test_needs_a_tokenizer_from_load_tokenizer(model_path):
    plain = tensorflow_text.SentencepieceTokenizer(model=open(model_path, "rb").read())
    with pytest.raises(ValueError, match="needs a tokenizer from load_tokenizer"):
        dataset(plain)


def test_repeat_runs_past_one_pass_over_the_texts(tokenizer):
    texts = small_texts()[:5]
    finite = sum(1 for _ in dataset(tokenizer, texts, repeat=False))
    assert len(batches(dataset(tokenizer, texts), finite + 5)) == finite + 5


def test_no_text_raises(tokenizer):
    with pytest.raises(ValueError, match="needs text"):
        dataset(tokenizer, texts=[])
    with pytest.raises(ValueError, match="needs text"):
        dataset(tokenizer, texts=["", " \n"])


def test_vocabulary_size_must_be_the_tokenizers(tokenizer):
    with pytest.raises(ValueError, match="tokenizer has 500 ids"):
        make_dataset(small_texts(), tokenizer, SMALL_VOCABULARY + 1, BATCH)


def test_too_few_sentinels_raise(tmp_path):
    # 64 inputs need up to 6 sentinels; this tokenizer has 2.
    few = load_tokenizer(train_small_tokenizer(str(tmp_path), num_sentinels=2))
    with pytest.raises(ValueError, match="sentinels"):
        dataset(few)


@pytest.mark.slow
def test_a_keras_hub_t5_fits_on_it(tokenizer):
    # About 6 s, mostly tracing the train step.
    backbone = random_backbone(vocabulary_size=SMALL_VOCABULARY, num_layers=1)
    model = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(dataset(tokenizer), steps_per_epoch=10, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[1] < losses[0] < np.log(SMALL_VOCABULARY) + 0.5
