"""Export a saved T5 language model as a SavedModel for TF Serving.

    python -m tools.export --model=runs/demo/final.keras --tokenizer=runs/demo/tokenizer/X.model \
        --export_dir=exported

Endpoints: `serve` (token ids -> logits) and, with a tokenizer,
`generate_text` (raw strings in, generated strings out; the tokenizer runs
inside the graph). Try it with TensorFlow's own client:

    saved_model_cli run --dir exported --tag_set serve --signature_def generate_text \
        --input_exprs 'text=["def main():"]'
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras T5 language model (or a GrowingT5Seq2SeqLM).")
flags.DEFINE_string("tokenizer", None, "The SentencePiece .model it was trained with (adds generate_text).")
flags.DEFINE_string("export_dir", None, "The SavedModel directory to write (replaced atomically).")
flags.DEFINE_integer("max_input_length", 128, "Encoder tokens kept from a text request.")
flags.DEFINE_integer("max_new_tokens", 32, "Greedy decoding steps of generate_text.")


def main(argv):
    del argv
    from keras_fusion.export import export_saved_model
    from keras_fusion.training import load_model_file

    try:
        if not FLAGS.export_dir:
            raise ValueError("--export_dir is required.")
        model = load_model_file(FLAGS.model)
        export_saved_model(model, FLAGS.export_dir, FLAGS.tokenizer, FLAGS.max_input_length, FLAGS.max_new_tokens)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"SavedModel written to {FLAGS.export_dir}")


if __name__ == "__main__":
    app.run(main)
