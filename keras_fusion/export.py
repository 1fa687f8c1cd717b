"""SavedModel export of a T5 language model: a token-id SavedModel and a text one.

Two SavedModels, written with Keras' `ExportArchive` to a temporary
directory and renamed into place together, so an interrupted export never
replaces a good one:

- `path` (the token-id model): `serve` (also `serving_default`): the four
  int32 T5 inputs (`encoder_token_ids`, `encoder_padding_mask`,
  `decoder_token_ids`, `decoder_padding_mask`, each `[batch, length]`) ->
  logits `[batch, length, vocabulary]`. Core TensorFlow ops only: it loads and
  runs in a process that never imports `tensorflow_text`, in a stock TF
  Serving, and under `saved_model_cli run`.
- `path/text` (when a tokenizer is given): `generate_text` (also
  `serving_default`): a `[batch]` string tensor -> a `[batch]` string
  tensor, greedy decoding of up to `max_new_tokens` tokens; the SentencePiece
  tokenizer runs inside the graph, so a client sends raw text. This graph
  uses TF Text's SentencePiece ops: a Python client imports
  `tensorflow_text` before `tf.saved_model.load`, and a TF Serving build must
  include TF Text's ops (tensorflow/serving#1490). Keeping them out of the
  token-id model is why there are two.

Example:

```python
from keras_fusion.export import export_saved_model
export_saved_model(lm, "exported", tokenizer_path="spm.model")
ids_model = tf.saved_model.load("exported")          # no tensorflow_text needed
import tensorflow_text  # the ops of generate_text
text_model = tf.saved_model.load("exported/text")
text_model.signatures["generate_text"](text=tf.constant(["def main():"]))
```
"""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_fusion import storage
from keras_fusion.models import inner_lm
from keras_fusion.token_ids import EOS_ID, PAD_ID

INPUT_NAMES = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)
TEXT_DIR = "text"  # the text SavedModel, inside the token-id one


def read_tokenizer(tokenizer):
    """The serialized SentencePiece model: `tokenizer` itself when it is bytes,
    else the file it names (read through `keras_fusion.storage`).

    Raises:
        ValueError: when the file does not exist.
    """
    if isinstance(tokenizer, bytes):
        return tokenizer
    if not storage.exists(tokenizer):
        raise ValueError(f"tokenizer_path not found: {tokenizer}")
    return storage.read_bytes(tokenizer)


def _text_tokenizer(tokenizer_path):
    import tensorflow_text

    return tensorflow_text.SentencepieceTokenizer(
        model=read_tokenizer(tokenizer_path), out_type=tf.int32
    )


def export_saved_model(lm, path, tokenizer_path=None, max_input_length=128, max_new_tokens=32):
    """Export `lm` (a T5 LM, or a `GrowingT5Seq2SeqLM`) as SavedModels.

    Args:
        lm: the language model.
        path: the token-id SavedModel directory to create (replaced
            atomically, with its `text` SavedModel, if it exists).
        tokenizer_path: optional SentencePiece `.model` path (or its bytes);
            adds the text SavedModel `path/text` with `generate_text`.
        max_input_length: encoder tokens kept from a text request.
        max_new_tokens: decoding steps of `generate_text`.

    Returns:
        `path`.

    Raises:
        ValueError: for a missing tokenizer file or one whose vocabulary is
            not the model's, before anything is written.

    Example:

    ```python
    export_saved_model(lm, "exported", tokenizer_path="spm.model")
    ```
    """
    lm = inner_lm(lm)  # a GrowingT5Seq2SeqLM exports its inner model
    vocabulary_size = lm.backbone.vocabulary_size
    spec = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUT_NAMES}

    def serve(inputs):
        return {"logits": lm(inputs, training=False)}

    # Only the backbone is tracked: the LM's preprocessor (with its
    # SentencePiece resource) must stay out of the token-id graph.
    ids_archive = keras.export.ExportArchive()
    ids_archive.track(lm.backbone)
    ids_archive.add_endpoint("serve", serve, input_signature=[spec])
    text_archive = None
    if tokenizer_path is not None:
        tokenizer = _text_tokenizer(tokenizer_path)
        tokenizer_size = int(tokenizer.vocab_size())
        if tokenizer_size != vocabulary_size:
            raise ValueError(
                f"The tokenizer has {tokenizer_size} pieces but the model's "
                f"vocabulary_size is {vocabulary_size}: "
                f"{'it' if isinstance(tokenizer_path, bytes) else tokenizer_path} does not "
                "belong to this model."
            )

        def generate_text(text):
            return {"text": _greedy_generate(lm, tokenizer, text, max_input_length, max_new_tokens)}

        text_archive = keras.export.ExportArchive()
        text_archive.track(lm.backbone)
        text_archive.track(tokenizer)
        text_archive.add_endpoint(
            "generate_text",
            generate_text,
            input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        )
    if storage.is_remote(path):
        # No atomic folder rename on object stores: the export is written in
        # place (serve a versioned folder, as TF Serving does).
        storage.rmtree(path)
        ids_archive.write_out(path, verbose=False)
        if text_archive is not None:
            text_archive.write_out(storage.join(path, TEXT_DIR), verbose=False)
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=".partial-export-", dir=parent)
    try:
        ids_archive.write_out(temporary, verbose=False)
        if text_archive is not None:
            text_archive.write_out(os.path.join(temporary, TEXT_DIR), verbose=False)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-export-", dir=parent)
            os.rename(path, os.path.join(old, "saved_model"))
            os.rename(temporary, path)
            shutil.rmtree(old)
        else:
            os.rename(temporary, path)
    finally:
        if os.path.exists(temporary):
            shutil.rmtree(temporary)
    return path


def _greedy_generate(lm, tokenizer, text, max_input_length, max_new_tokens):
    """Greedy decoding inside the graph (no cache: the export is for serving
    small models and checks; keras-hub's `generate` is the fast path)."""
    pieces = tokenizer.tokenize(text)[:, : max_input_length - 1]
    eos = tf.RaggedTensor.from_tensor(tf.fill([tf.shape(text)[0], 1], EOS_ID))
    ids = tf.concat([pieces, eos], axis=1)
    encoder_ids = ids.to_tensor(PAD_ID)
    encoder_mask = tf.sequence_mask(ids.row_lengths(), tf.shape(encoder_ids)[1], dtype=tf.int32)
    batch = tf.shape(text)[0]
    decoder_ids = tf.zeros([batch, max_new_tokens + 1], tf.int32)

    def step(i, ids):
        logits = lm(
            {
                "encoder_token_ids": encoder_ids,
                "encoder_padding_mask": encoder_mask,
                "decoder_token_ids": ids,
                "decoder_padding_mask": tf.ones_like(ids),
            },
            training=False,
        )
        next_ids = tf.argmax(logits[:, i, :], axis=-1, output_type=tf.int32)
        column = tf.one_hot(i + 1, max_new_tokens + 1, dtype=tf.int32)[None, :]
        return i + 1, ids * (1 - column) + next_ids[:, None] * column

    _, decoder_ids = tf.while_loop(
        lambda i, _: i < max_new_tokens, step, [tf.constant(0), decoder_ids]
    )
    generated = decoder_ids[:, 1:]
    # Keep the tokens before the first eos.
    before_eos = tf.cumsum(tf.cast(tf.equal(generated, EOS_ID), tf.int32), axis=1) == 0
    kept = tf.RaggedTensor.from_tensor(
        generated, lengths=tf.reduce_sum(tf.cast(before_eos, tf.int32), 1)
    )
    return tokenizer.detokenize(kept)
