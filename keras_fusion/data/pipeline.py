"""The `tf.data` pipeline that feeds span-corruption batches to a T5 `model.fit`.

documents -> shuffle -> tokenize -> concatenate -> chunks of the raw length
`random_spans_helper` plans -> shuffle -> span corruption -> pad -> batch.
Everything after the Python list of documents runs in TensorFlow graphs.

Example:

```python
texts = load_corpus("embedded")
path = train_tokenizer(texts, vocabulary_size=1000)
dataset = make_dataset(texts, load_tokenizer(path), vocabulary_size(path), batch_size=16)
seq2seq_lm.fit(dataset, steps_per_epoch=100)
```
"""

import sentencepiece
import tensorflow as tf
import tensorflow_text

from keras_fusion.data.span_corruption import random_spans_helper, span_corruption
from keras_fusion.data.tokenizer import sentinel_id
from keras_fusion.token_ids import PAD_ID

# Chunks of one document come out together; mixing 1,000 (documents of
# ~4 chunks) breaks that up, and fills in a fraction of a second.
CHUNK_SHUFFLE_BUFFER = 1_000


def make_dataset(
    texts,
    tokenizer,
    vocabulary_size,
    batch_size,
    input_length=64,
    target_length=16,
    noise_density=0.15,
    mean_noise_span_length=3.0,
    seed=0,
    shuffle=True,
    repeat=True,
):
    """Span-corruption batches `(x, y, sample_weight)` for a keras-hub `T5Seq2SeqLM`.

    Documents are tokenized and concatenated (as in T5, without separators),
    then cut into chunks of the raw length whose corruption fits both
    `input_length` and `target_length` (`random_spans_helper`): with the
    defaults, 70 tokens become 64 inputs and 14 targets, so nothing is ever
    truncated. Each chunk is corrupted with the seed `[seed, chunk number]`,
    and both shuffles are seeded: the same arguments give the same batches
    (the shuffles, like any `tf.data` shuffle, also depend on TensorFlow's
    global seed, which `keras.utils.set_random_seed` sets; and each new
    iteration of one dataset reshuffles).

    The layout is keras-hub's `Seq2SeqLMPreprocessor`'s: `decoder_token_ids`
    are the targets shifted right behind T5's decoder start id 0 (pad), and
    `decoder_padding_mask` marks that start and every decoder input before
    the targets' end.

    Args:
        texts: a list of strings.
        tokenizer: a `T5SentencepieceTokenizer` from `load_tokenizer`, with
            T5's sentinels. Only its model proto is used: the dataset builds
            its own tokenizer in its graph, so it keeps working across
            `keras.utils.set_random_seed` and `keras.backend.clear_session`.
        vocabulary_size: the tokenizer's number of ids.
        batch_size: examples per batch; the last partial batch is dropped.
        input_length: the encoder length.
        target_length: the decoder length.
        noise_density: the share of tokens masked.
        mean_noise_span_length: the mean length of a masked span.
        seed: an int seeding the shuffles and the corruption.
        shuffle: shuffle documents and chunks.
        repeat: repeat the documents forever (reshuffled each pass).

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)`: `x` a dict of int32
        `encoder_token_ids`, `encoder_padding_mask` of shape
        `(batch_size, input_length)` and `decoder_token_ids`,
        `decoder_padding_mask` of shape `(batch_size, target_length)`; `y`
        the int32 targets, shape `(batch_size, target_length)`;
        `sample_weight` their float32 padding mask.

    Raises:
        ValueError: for no text, a tokenizer without a model proto, a
            `vocabulary_size` that is not the tokenizer's, or fewer sentinels
            than the spans one chunk can hold ((targets - 1) // 2: each span
            takes a sentinel and a token).

    Example:

    ```python
    x, y, sample_weight = next(iter(make_dataset(texts, tokenizer, 1000, batch_size=8)))
    ```
    """
    if not any(text.strip() for text in texts):
        raise ValueError("make_dataset needs text: the text list is empty or blank.")
    chunk_length, needed_target_length = random_spans_helper(
        input_length, noise_density, mean_noise_span_length, target_length
    )
    proto = _model_proto(tokenizer)
    # Targets hold a sentinel and at least one token per span, then eos.
    _check_sentinels(proto, vocabulary_size, num_sentinels=(needed_target_length - 1) // 2)
    documents = tf.data.Dataset.from_tensor_slices(list(texts))
    if shuffle:
        documents = documents.shuffle(len(texts), seed=seed)
    if repeat:
        documents = documents.repeat()

    def tokenize(text):
        # Built here, its resource belongs to the dataset's graph, out of
        # reach of the eager kernel-cache resets (see T5SentencepieceTokenizer).
        return tensorflow_text.SentencepieceTokenizer(model=proto, out_type=tf.int32).tokenize(text)

    chunks = (
        documents.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .batch(chunk_length, drop_remainder=True)
    )
    if shuffle:
        chunks = chunks.shuffle(CHUNK_SHUFFLE_BUFFER, seed=seed + 1)

    # Plain TensorFlow ops, no Python control flow on tensors: nothing for
    # AutoGraph to convert (it fails on this closure and warns at every run).
    @tf.autograph.experimental.do_not_convert
    def corrupt(index, tokens):
        inputs, targets = span_corruption(
            tokens,
            vocabulary_size,
            noise_density,
            mean_noise_span_length,
            seed=tf.stack([tf.constant(seed, tf.int64), index]),
        )
        return _features(inputs, targets, input_length, target_length)

    return (
        chunks.enumerate()
        .map(corrupt, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _model_proto(tokenizer):
    proto = getattr(tokenizer, "proto", None)
    if not isinstance(proto, bytes):
        raise ValueError(
            f"make_dataset needs a tokenizer from load_tokenizer (it rebuilds it from its "
            f"model proto), got a {type(tokenizer).__name__}."
        )
    return proto


def _check_sentinels(proto, vocabulary_size, num_sentinels):
    """Fail early when sentinel ids would fall on ordinary pieces."""
    model = sentencepiece.SentencePieceProcessor(model_proto=proto)
    if model.get_piece_size() != vocabulary_size:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} but the tokenizer has {model.get_piece_size()} ids."
        )
    last = num_sentinels - 1
    piece = model.id_to_piece(sentinel_id(last, vocabulary_size))
    if piece != f"<extra_id_{last}>":
        raise ValueError(
            f"A chunk can need {num_sentinels} sentinels, but id "
            f"{sentinel_id(last, vocabulary_size)} is {piece!r}, not '<extra_id_{last}>': "
            "train the tokenizer with more sentinels or use shorter inputs."
        )


def _features(inputs, targets, input_length, target_length):
    """Pad one corrupted example into the `(x, y, sample_weight)` the model takes."""
    encoder_token_ids, encoder_mask = _pad(inputs, input_length)
    target_ids, target_mask = _pad(targets, target_length)
    x = {
        "encoder_token_ids": encoder_token_ids,
        "encoder_padding_mask": tf.cast(encoder_mask, tf.int32),
        "decoder_token_ids": _shift_right(target_ids, PAD_ID),
        "decoder_padding_mask": tf.cast(_shift_right(target_mask, True), tf.int32),
    }
    return x, target_ids, tf.cast(target_mask, tf.float32)


def _pad(ids, length):
    """Truncate or pad with 0 to `length`; also return the mask of real ids."""
    ids = tf.cast(ids[:length], tf.int32)
    padded = tf.pad(ids, [[0, length - tf.size(ids)]], constant_values=PAD_ID)
    return tf.ensure_shape(padded, [length]), tf.range(length) < tf.size(ids)


def _shift_right(values, first):
    return tf.concat([tf.constant([first], values.dtype), values[:-1]], 0)
