"""Shared helpers for the data tests: a small tokenizer and a span-corruption decoder."""

from keras_fusion.data import embedded_corpus, train_tokenizer

EOS = 1
SMALL_VOCABULARY = 500
NUM_SENTINELS = 100


def small_texts():
    """300 documents of the embedded corpus: enough for a 500-id vocabulary."""
    return embedded_corpus("train")[:300]


def train_small_tokenizer(model_dir, num_sentinels=NUM_SENTINELS):
    """A 500-id tokenizer trained on `small_texts()` (about a second)."""
    return train_tokenizer(small_texts(), SMALL_VOCABULARY, model_dir, num_sentinels)


def reassemble(inputs, targets, vocabulary_size, num_sentinels=NUM_SENTINELS):
    """Undo span corruption by walking the sentinels; checks the format on the way.

    Written from the T5 format alone: inputs are text with one sentinel per
    noise span, numbered <extra_id_0>, <extra_id_1>, ... (ids counting down
    from the top); targets are each sentinel followed by its span; both end
    with eos.
    """
    inputs, targets = list(inputs), list(targets)
    assert inputs[-1] == EOS and targets[-1] == EOS, (inputs, targets)
    first_sentinel = vocabulary_size - num_sentinels

    spans, current = {}, None
    for token in targets[:-1]:
        if token >= first_sentinel:
            current = token
            spans[current] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            spans[current].append(token)

    tokens, used = [], []
    for token in inputs[:-1]:
        if token >= first_sentinel:
            used.append(token)
            tokens.extend(spans[token])
        else:
            tokens.append(token)
    assert used == [vocabulary_size - 1 - i for i in range(len(used))], used
    return tokens
