"""The T5 SentencePiece tokenizer: special ids, sentinels at the top, cache, errors."""

import os
import time

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from data_test_utils import (
    NUM_SENTINELS,
    SMALL_VOCABULARY,
    small_texts,
    train_small_tokenizer,
)
from keras_fusion import token_ids
from keras_fusion.data import (
    embedded_corpus,
    load_tokenizer,
    sentinel_id,
    train_tokenizer,
    vocabulary_size,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return train_small_tokenizer(str(tmp_path_factory.mktemp("spm")))


@pytest.fixture(scope="module")
def processor(model_path):
    return sentencepiece.SentencePieceProcessor(model_file=model_path)


def test_t5_special_ids(processor):
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2)
    # The ids the rest of the library reads (export, pipeline, diagnostics) are the model's.
    ids = (token_ids.PAD_ID, token_ids.EOS_ID, token_ids.UNK_ID)
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id()) == ids
    assert processor.bos_id() == -1
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]


def test_sentinels_fill_the_top_of_the_vocabulary(model_path, processor):
    assert processor.get_piece_size() == SMALL_VOCABULARY == vocabulary_size(model_path)
    # T5: <extra_id_0> is the last id, the others count down from it.
    assert processor.id_to_piece(SMALL_VOCABULARY - 1) == "<extra_id_0>"
    for i in range(NUM_SENTINELS):
        assert processor.piece_to_id(f"<extra_id_{i}>") == SMALL_VOCABULARY - 1 - i
        assert sentinel_id(i, SMALL_VOCABULARY) == SMALL_VOCABULARY - 1 - i
    below = processor.id_to_piece(SMALL_VOCABULARY - NUM_SENTINELS - 1)
    assert not below.startswith("<extra_id_")


def test_text_never_yields_a_sentinel_id(model_path):
    # The whole embedded corpus, though the tokenizer saw 300 documents.
    tokenizer = load_tokenizer(model_path)
    documents = embedded_corpus("train") + embedded_corpus("validation")
    ids = tokenizer.tokenize(tf.constant(documents)).flat_values.numpy()
    assert ids.size > 100_000
    assert ids.max() < SMALL_VOCABULARY - NUM_SENTINELS
    assert ids.min() >= 2  # no pad or eos; unk (2) for unseen characters


def test_a_literal_sentinel_in_a_prompt_is_the_sentinel(model_path):
    tokenizer = load_tokenizer(model_path)
    ids = list(tokenizer.tokenize("The <extra_id_0> sat on the <extra_id_1>.").numpy())
    assert sentinel_id(0, SMALL_VOCABULARY) in ids and sentinel_id(1, SMALL_VOCABULARY) in ids
    assert tokenizer.id_to_string(sentinel_id(7, SMALL_VOCABULARY)).numpy() == b"<extra_id_7>"


def test_tensorflow_text_tokenizer_round_trips_inside_tf_data(model_path):
    tokenizer = load_tokenizer(model_path)
    sentences = ["Return the absolute value of the argument.", "The list is sorted in place."]
    dataset = tf.data.Dataset.from_tensor_slices(sentences).map(tokenizer.tokenize)
    ids = list(dataset.as_numpy_iterator())
    assert all(i.dtype == np.int32 and i.ndim == 1 and len(i) > 3 for i in ids)
    assert [tokenizer.detokenize(i).numpy().decode() for i in ids] == sentences


def test_cache_returns_the_same_file_without_training(tmp_path):
    directory = str(tmp_path)
    start = time.perf_counter()
    path = train_small_tokenizer(directory)
    training = time.perf_counter() - start
    modified = os.stat(path).st_mtime_ns
    start = time.perf_counter()
    assert train_small_tokenizer(directory) == path
    cached = time.perf_counter() - start
    assert os.stat(path).st_mtime_ns == modified  # not rewritten
    assert cached < training / 5, (cached, training)
    assert os.listdir(directory) == [os.path.basename(path)]  # no temporary left


def test_cache_key_covers_texts_and_settings(tmp_path, model_path):
    directory = os.path.dirname(model_path)
    assert train_small_tokenizer(directory) == model_path
    texts = small_texts()
    other = [
        train_tokenizer(texts[1:], SMALL_VOCABULARY, directory),
        train_tokenizer(texts, SMALL_VOCABULARY - 1, directory),
        train_tokenizer(texts, SMALL_VOCABULARY, directory, num_sentinels=50),
    ]
    assert len({model_path, *other}) == 4
    assert vocabulary_size(other[1]) == SMALL_VOCABULARY - 1


def test_training_is_reproducible(tmp_path, model_path):
    again = train_small_tokenizer(str(tmp_path))
    with open(again, "rb") as a, open(model_path, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("texts", [[], ["", "  \n\t"]])
def test_no_text_raises(tmp_path, texts):
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(texts, model_dir=str(tmp_path))


def test_vocabulary_too_small_for_the_sentinels_raises(tmp_path):
    with pytest.raises(ValueError, match="no room"):
        train_tokenizer(small_texts(), vocabulary_size=100, model_dir=str(tmp_path))


def test_vocabulary_too_large_for_the_texts_raises(tmp_path):
    with pytest.raises(ValueError, match="cannot train 400 pieces .* too high"):
        train_tokenizer(["A corpus of one short line."], 500, str(tmp_path))


def test_missing_tokenizer_file_raises(tmp_path):
    missing = str(tmp_path / "missing.model")
    for load in (load_tokenizer, vocabulary_size):
        with pytest.raises(ValueError, match=r"missing\.model' does not exist"):
            load(missing)
