"""Export a trained model as a SavedModel and call it, as a server would.

After `make demo`:

    python examples/export_and_call.py --model=runs/demo/final.keras \
        --tokenizer="$(ls runs/demo/tokenizer/*.model)"
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402, F401  (registers the SentencePiece ops)

from keras_fusion.export import export_saved_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", required=True)
parser.add_argument("--tokenizer", required=True)
args = parser.parse_args()

model = keras.saving.load_model(args.model, compile=False)
export_dir = os.path.join(tempfile.mkdtemp(), "saved_model")
export_saved_model(model, export_dir, tokenizer_path=args.tokenizer, max_new_tokens=16)
served = tf.saved_model.load(export_dir)
print("Endpoints:", sorted(served.signatures))

ids = np.random.default_rng(0).integers(3, model.backbone.vocabulary_size, (2, 12)).astype("int32")
batch = {
    "encoder_token_ids": ids,
    "encoder_padding_mask": np.ones_like(ids),
    "decoder_token_ids": ids,
    "decoder_padding_mask": np.ones_like(ids),
}
logits = served.signatures["serve"](**{k: tf.constant(v) for k, v in batch.items()})[
    "logits"
].numpy()
print(
    "Largest difference from the Keras model:", np.abs(logits - model.predict_on_batch(batch)).max()
)

# The text endpoint is a second SavedModel: its graph holds TF Text's ops.
text_model = tf.saved_model.load(os.path.join(export_dir, "text"))
requests = tf.constant(["The import statement", "def main():"])
for request, reply in zip(
    requests.numpy(), text_model.signatures["generate_text"](text=requests)["text"].numpy()
):
    print(f"{request.decode()!r} -> {reply.decode()!r}")
