"""Fuse saved T5 language models into one, checking compatibility first.

    python -m tools.fuse --models=a.keras,b.keras --output=fused.keras [--weights=0.5,0.5]
    python -m tools.fuse --models=/hf/t5-a,/hf/t5-b --output=fused.keras   # Hugging Face T5 folders

Each model is a `.keras` file, a keras-hub preset directory or a Hugging
Face T5 folder (see `keras_fusion.models.load_lm`).

The fused model's logits are the weighted sum of the inputs' (exact); the
script prints the measured error on random tokens. The output is written to
a temporary file and renamed: an existing file is replaced only by a good
model, and the inputs are never modified.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tools import or_exit  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "models",
    None,
    "Comma-separated T5 language models (two or more): .keras files, "
    "keras-hub preset directories or Hugging Face T5 folders.",
)
flags.DEFINE_string("output", None, "Where to write the fused model (.keras).")
flags.DEFINE_list(
    "weights", None, "Weights of the logit ensemble, one per model (default: uniform)."
)
flags.DEFINE_enum(
    "norm", "grouped", ["grouped", "global"], "grouped: exact; global: a plain T5, approximate."
)


def fuse_files(paths, output, weights=None, norm="grouped"):
    """Load, check, fuse, verify and save; returns the measured logit error."""
    import numpy as np

    from keras_fusion import storage
    from keras_fusion.diagnostics import function_error
    from keras_fusion.models import FusionT5Seq2SeqLM, load_lm
    from keras_fusion.models.fusion_t5_backbone import check_fusable

    if not paths or len(paths) < 2:
        raise ValueError(f"--models needs two or more files, got {paths}.")
    if not output or not output.endswith(".keras"):
        raise ValueError(f"--output must be a .keras path, got {output!r}.")
    lms = [load_lm(path)[0] for path in paths]
    check_fusable([lm.backbone for lm in lms])
    weights = [float(w) for w in weights] if weights else None
    fused = FusionT5Seq2SeqLM.fuse(*lms, weights=weights, norm=norm)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, lms[0].backbone.vocabulary_size, (2, 16)).astype("int32")
    batch = {
        "encoder_token_ids": ids,
        "encoder_padding_mask": np.ones_like(ids),
        "decoder_token_ids": ids,
        "decoder_padding_mask": np.ones_like(ids),
    }
    error = function_error(fused, lms, batch, weights=weights)["logits"]
    storage.save_model(fused, output)
    return error


def main(argv):
    del argv
    error = or_exit(fuse_files, FLAGS.models, FLAGS.output, FLAGS.weights, FLAGS.norm)
    print(
        f"Fused {len(FLAGS.models)} models into {FLAGS.output}; logit error against the "
        f"weighted ensemble on random tokens: {error:.2e}"
    )


if __name__ == "__main__":
    app.run(main)
