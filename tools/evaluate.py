"""Held-out loss and token accuracy of a saved T5 language model.

python -m tools.evaluate --model=runs/demo/final.keras --tokenizer=runs/demo/tokenizer/X.model
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tools import or_exit  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras T5 language model.")
flags.DEFINE_string("tokenizer", None, "The SentencePiece .model it was trained with.")
flags.DEFINE_string("data", "embedded", "'embedded', a text file glob, or 'tfds:NAME'.")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("batches", 16, "Held-out batches to evaluate.")
flags.DEFINE_integer("input_length", 64, "Encoder tokens per example.")
flags.DEFINE_integer("target_length", 16, "Decoder tokens per example.")


def evaluate(
    model_path,
    tokenizer_path,
    data_spec="embedded",
    data_dir=None,
    batch_size=16,
    batches=16,
    input_length=64,
    target_length=16,
):
    """Returns `{"loss": ..., "accuracy": ...}` on the validation split."""
    from keras_fusion import data, storage
    from keras_fusion.optimizers import make_optimizer
    from keras_fusion.recipes import compile_model

    if not tokenizer_path or not storage.exists(tokenizer_path):
        raise ValueError(f"--tokenizer not found: {tokenizer_path}")
    model = storage.load_model(model_path, compile=False, argument="--model")
    vocabulary_size = data.vocabulary_size(tokenizer_path)
    if vocabulary_size != model.backbone.vocabulary_size:
        raise ValueError(
            f"the tokenizer has {vocabulary_size} pieces but the model's vocabulary_size is "
            f"{model.backbone.vocabulary_size}: {tokenizer_path} does not belong to {model_path}."
        )
    texts = data.load_corpus(data_spec, "validation", data_dir)
    dataset = data.make_dataset(
        texts,
        data.load_tokenizer(tokenizer_path),
        vocabulary_size,
        batch_size,
        input_length=input_length,
        target_length=target_length,
        shuffle=False,
        repeat=False,
    ).take(batches)
    compile_model(model, make_optimizer("adamw", 1e-3))
    return model.evaluate(dataset, verbose=0, return_dict=True)


def main(argv):
    del argv
    result = or_exit(
        evaluate,
        FLAGS.model,
        FLAGS.tokenizer,
        FLAGS.data,
        FLAGS.data_dir,
        FLAGS.batch_size,
        FLAGS.batches,
        FLAGS.input_length,
        FLAGS.target_length,
    )
    print(f"held-out loss {result['loss']:.4f}, token accuracy {result['accuracy']:.4f}")


if __name__ == "__main__":
    app.run(main)
