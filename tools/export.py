"""Export a saved T5 language model: SavedModel for TF Serving, Hugging Face, or keras-hub.

    python -m tools.export --model=runs/demo/final.keras --tokenizer=runs/demo/tokenizer/X.model \
        --export_dir=exported
    python -m tools.export --model=runs/demo/final.keras --format=huggingface --export_dir=hf_t5
    python -m tools.export --model=/hf/t5-small --format=keras_hub --export_dir=preset

`--model` is a `.keras` file, a keras-hub preset directory or a Hugging Face
T5 folder. Formats:
- `saved_model` (default): see `keras_fusion.export.export_saved_model`; the
  token-ids SavedModel `export_dir` runs without TensorFlow Text, and with
  a tokenizer `export_dir/text` answers raw strings. Try it with
  TensorFlow's own client:

      saved_model_cli run --dir exported/text --tag_set serve --signature_def generate_text \
          --input_exprs 'text=["def main():"]'

- `huggingface`: a folder `transformers.T5ForConditionalGeneration`
  loads (one norm group only: fuse with norm="global" to get one);
- `keras_hub`: a keras-hub preset (`save_to_preset`), which
  `keras_hub.models.Seq2SeqLM.from_preset` loads once keras_fusion is
  imported.

The tokenizer (`--tokenizer`, or the model's own) travels with the huggingface
and keras_hub exports.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tools import or_exit  # noqa: E402

FORMATS = ("saved_model", "huggingface", "keras_hub")
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", None, "A T5 language model: .keras file, keras-hub preset or Hugging Face T5 folder."
)
flags.DEFINE_enum("format", "saved_model", list(FORMATS), "What to write.")
flags.DEFINE_string(
    "tokenizer", None, "The SentencePiece .model it was trained with (adds generate_text)."
)
flags.DEFINE_string(
    "export_dir", None, "The directory to write (a SavedModel is replaced atomically)."
)
flags.DEFINE_integer("max_input_length", 128, "Encoder tokens kept from a text request.")
flags.DEFINE_integer("max_new_tokens", 32, "Greedy decoding steps of generate_text.")


def export_model(
    model_path,
    export_dir,
    format="saved_model",
    tokenizer=None,
    max_input_length=128,
    max_new_tokens=32,
):
    """Load `model_path` and write it to `export_dir` in `format`; returns `export_dir`."""
    from keras_fusion.export import export_saved_model
    from keras_fusion.models import load_lm

    if format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}.")
    if not export_dir:
        raise ValueError("--export_dir is required.")
    if not model_path:
        raise ValueError("--model is required.")
    lm, proto = load_lm(model_path)
    if format == "saved_model":
        if tokenizer is None and proto is not None:
            tokenizer = proto
        return export_saved_model(lm, export_dir, tokenizer, max_input_length, max_new_tokens)
    if tokenizer is not None:
        import keras_hub

        from keras_fusion.export import read_tokenizer

        lm.preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
            keras_hub.models.T5Tokenizer(proto=read_tokenizer(tokenizer))
        )
    if format == "huggingface":
        return lm.export_to_transformers(export_dir)
    lm.save_to_preset(export_dir)
    return export_dir


def main(argv):
    del argv
    or_exit(
        export_model,
        FLAGS.model,
        FLAGS.export_dir,
        FLAGS.format,
        FLAGS.tokenizer,
        FLAGS.max_input_length,
        FLAGS.max_new_tokens,
    )
    print(f"{FLAGS.format} export written to {FLAGS.export_dir}")


if __name__ == "__main__":
    app.run(main)
