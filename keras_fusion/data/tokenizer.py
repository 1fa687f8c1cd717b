"""SentencePiece vocabularies with T5's conventions, trained offline and cached.

T5's ids: pad 0, eos 1, unk 2, no bos; the span-corruption sentinels
`<extra_id_0>`, `<extra_id_1>`, ... take the top of the vocabulary, with
`<extra_id_0>` the last id (`sentinel_id(0, V) == V - 1`).

SentencePiece gives user-defined and control symbols the ids right after
pad/eos/unk (3, 4, ...), not the top. So `train_tokenizer` trains
`vocabulary_size - num_sentinels` ordinary pieces and then appends the
sentinels to the model proto, `<extra_id_{n-1}>` first and `<extra_id_0>`
last, as user-defined pieces: the saved model holds all `vocabulary_size`
pieces, `SentencepieceTokenizer.vocab_size()` reports that size, sentinel
ids detokenize to their names, and a literal `<extra_id_3>` in a prompt
tokenizes to its sentinel (as in Hugging Face's T5 tokenizer). Ordinary
text never yields a sentinel id.

Example:

```python
path = train_tokenizer(texts, vocabulary_size=1000, model_dir="/tmp/spm")
tokenizer = load_tokenizer(path)
ids = tokenizer.tokenize("Return the absolute value of x.")
```
"""

import hashlib
import io
import os
import time

import sentencepiece
import tensorflow as tf
import tensorflow_text
from absl import logging
from sentencepiece import sentencepiece_model_pb2

from keras_fusion import storage
from keras_fusion.token_ids import EOS_ID, PAD_ID, UNK_ID

DEFAULT_MODEL_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras_fusion", "tokenizers"
)
# Part of the cache key: bump it when the training options below change.
_FORMAT = "t5-unigram-v1"


def train_tokenizer(texts, vocabulary_size=1000, model_dir=None, num_sentinels=100):
    """Train (or find in the cache) a T5 SentencePiece model on some texts.

    The model is a unigram SentencePiece model with pad 0, eos 1, unk 2, no
    bos, and `num_sentinels` sentinels at the top (see the module docstring).
    Its file name holds a hash of the texts and of the settings: when that
    file exists it is returned at once, without training. It is written with
    `keras_fusion.storage.write_bytes` (any TF filesystem; locally under a
    temporary name, then renamed), so a reader never sees half a file.

    Args:
        texts: an iterable of strings. SentencePiece reads them line by line.
        vocabulary_size: the total number of ids, sentinels included.
        model_dir: the cache folder (`None`: `~/.cache/keras_fusion/tokenizers`,
            or under `$XDG_CACHE_HOME`).
        num_sentinels: the number of `<extra_id_i>` sentinels.

    Returns:
        The path of the `.model` file.

    Raises:
        ValueError: for no text, a vocabulary too small for the sentinels and
            T5's three specials, or one SentencePiece cannot fill from the texts.

    Example:

    ```python
    path = train_tokenizer(embedded_corpus("train"), vocabulary_size=1000)
    ```
    """
    texts = list(texts)  # Read twice: for the cache key and for training.
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("Cannot train a tokenizer on no text: the text list is empty or blank.")
    if vocabulary_size - num_sentinels <= 3 or num_sentinels < 0:
        raise ValueError(
            f"vocabulary_size={vocabulary_size} leaves no room for T5's 3 special ids "
            f"and num_sentinels={num_sentinels} sentinels."
        )
    model_dir = model_dir or DEFAULT_MODEL_DIR
    path = storage.join(
        model_dir,
        f"t5_spm_{vocabulary_size}_{num_sentinels}_"
        f"{_fingerprint(texts, vocabulary_size, num_sentinels)}.model",
    )
    if storage.exists(path):
        logging.info("Tokenizer found in the cache: %s", path)
        return path
    logging.info(
        "Training a %d-piece SentencePiece model on %d lines (%d characters)...",
        vocabulary_size,
        len(lines),
        sum(map(len, lines)),
    )
    start = time.time()
    proto = _with_sentinels(_train(lines, vocabulary_size - num_sentinels), num_sentinels)
    storage.write_bytes(path, proto)
    logging.info("Trained the tokenizer in %.1f s: %s", time.time() - start, path)
    return path


class T5SentencepieceTokenizer(tensorflow_text.SentencepieceTokenizer):
    """A `tensorflow_text.SentencepieceTokenizer` (int32 ids) that keeps its model proto.

    A TensorFlow Text tokenizer creates its SentencePiece resource eagerly,
    and `tf.random.set_seed`, `keras.utils.set_random_seed` and
    `keras.backend.clear_session` delete it (tensorflow/text#570): the
    tokenizer, and any dataset using it, then fails with "Resource ...
    SentencepieceOp ... does not exist". Use this object eagerly only
    after such calls. `make_dataset` avoids the problem: from `proto` it
    builds a tokenizer inside its own `tf.data` graph, which those calls
    leave alone and which travels with the dataset graph.

    Args:
        proto: the serialized SentencePiece model.

    Example:

    ```python
    tokenizer = T5SentencepieceTokenizer(open(path, "rb").read())
    ids = tokenizer.tokenize("Return the absolute value of x.")
    ```
    """

    def __init__(self, proto):
        super().__init__(model=proto, out_type=tf.int32)
        self.proto = proto


def load_tokenizer(path):
    """A TensorFlow Text tokenizer for a SentencePiece model, usable in `tf.data`.

    Args:
        path: a `.model` file, e.g. from `train_tokenizer`.

    Returns:
        A `T5SentencepieceTokenizer` (a `tensorflow_text.SentencepieceTokenizer`)
        producing int32 ids, no eos added (span corruption adds it). Load it
        after any `keras.utils.set_random_seed` (see `T5SentencepieceTokenizer`).

    Raises:
        ValueError: when the file does not exist.

    Example:

    ```python
    tokenizer = load_tokenizer(path)
    ids = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer.tokenize)
    ```
    """
    return T5SentencepieceTokenizer(_read(path))


def vocabulary_size(path):
    """The number of ids of a SentencePiece model, sentinels included.

    Args:
        path: a `.model` file.

    Returns:
        An int.

    Raises:
        ValueError: when the file does not exist.

    Example:

    ```python
    backbone = keras_hub.models.T5Backbone(vocabulary_size=vocabulary_size(path), ...)
    ```
    """
    return sentencepiece.SentencePieceProcessor(model_proto=_read(path)).get_piece_size()


def sentinel_id(i, vocabulary_size):
    """The id of `<extra_id_i>`: T5 counts sentinels down from the last id.

    Args:
        i: the sentinel's index, an int or an integer tensor.
        vocabulary_size: the total number of ids.

    Returns:
        `vocabulary_size - 1 - i`, of the type of `i`.

    Example:

    ```python
    assert sentinel_id(0, 1000) == 999
    ```
    """
    return vocabulary_size - 1 - i


def _fingerprint(texts, vocabulary_size, num_sentinels):
    digest = hashlib.sha1(f"{_FORMAT} {vocabulary_size} {num_sentinels}".encode("utf-8"))
    for text in texts:
        # A length prefix keeps ["ab", "c"] and ["a", "bc"] apart.
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.hexdigest()[:16]


def _train(lines, num_pieces):
    """The serialized unigram model of `num_pieces` pieces (T5's specials first)."""
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            model_type="unigram",
            vocab_size=num_pieces,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            minloglevel=2,  # SentencePiece logs every EM step otherwise.
        )
    except RuntimeError as error:
        message = str(error).replace("\n", " ")
        raise ValueError(
            f"SentencePiece cannot train {num_pieces} pieces (the vocabulary less its "
            f"sentinels) on these texts: {message}"
        ) from None
    return model.getvalue()


def _with_sentinels(proto, num_sentinels):
    """Append `<extra_id_{n-1}>` ... `<extra_id_0>` so that extra_id_0 is last."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    for i in reversed(range(num_sentinels)):
        model.pieces.add(
            piece=f"<extra_id_{i}>",
            score=0.0,
            type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED,
        )
    return model.SerializeToString()


def _read(path):
    if not storage.exists(path) or storage.isdir(path):
        raise ValueError(f"Tokenizer file {path!r} does not exist: train one with train_tokenizer.")
    return storage.read_bytes(path)
