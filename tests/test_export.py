"""The SavedModels in fresh processes: token ids without TensorFlow Text, text with it."""

import subprocess
import sys

import numpy as np
import pytest

from keras_fusion import data
from keras_fusion.diagnostics import relative_error
from keras_fusion.export import TEXT_DIR, export_saved_model
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from t5_test_utils import TOLERANCE, random_backbone, random_inputs
from train_jobs import worker_shared_folder

VOCABULARY = 200


@pytest.fixture(scope="module")
def exported(tmp_path_factory, worker_id):
    """A random LM exported once for both xdist workers, with its Keras logits."""

    def build(root):
        spm = data.train_tokenizer(
            data.load_corpus("embedded", "train")[:200],
            VOCABULARY,
            str(root / "spm"),
            num_sentinels=10,
        )
        lm = FusionT5Seq2SeqLM(random_backbone(vocabulary_size=VOCABULARY, cls=FusionT5Backbone))
        inputs = random_inputs()
        np.savez(root / "inputs.npz", **inputs)
        np.save(root / "expected.npy", np.asarray(lm(inputs, training=False)))
        export_saved_model(
            lm, str(root / "model"), tokenizer_path=spm, max_input_length=16, max_new_tokens=4
        )

    root = worker_shared_folder(tmp_path_factory, worker_id, "test_export_saved_model", build)
    return root, np.load(root / "expected.npy")


def run_python(script):
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


def test_ids_saved_model_runs_in_a_process_that_never_imports_tensorflow_text(exported):
    root, expected = exported
    out = run_python(f"""
import sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(root / "model")!r})
inputs = dict(np.load({str(root / "inputs.npz")!r}))
logits = loaded.signatures["serving_default"](\
**{{k: tf.constant(v) for k, v in inputs.items()}})["logits"]
np.save({str(root / "logits.npy")!r}, logits.numpy())
print("TEXT_IMPORTED", "tensorflow_text" in sys.modules)
""")
    assert "TEXT_IMPORTED False" in out
    assert relative_error(np.load(root / "logits.npy"), expected) <= TOLERANCE


def test_text_saved_model_answers_strings(exported):
    root, _ = exported
    out = run_python(f"""
import tensorflow as tf
import tensorflow_text  # registers the SentencePiece ops of generate_text
loaded = tf.saved_model.load({str(root / "model" / TEXT_DIR)!r})
text = loaded.signatures["generate_text"](\
text=tf.constant(["def main():", "The import statement"]))["text"]
print("GENERATED", [t.decode() for t in text.numpy()])
""")
    generated = eval(out.split("GENERATED", 1)[1].strip())
    assert len(generated) == 2 and all(isinstance(t, str) for t in generated)


def test_a_tokenizer_of_another_vocabulary_is_refused_and_nothing_is_written(exported, tmp_path):
    root, _ = exported
    lm = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone))  # vocabulary 61
    spm = next((root / "spm").glob("*.model"))
    with pytest.raises(ValueError, match="200 pieces but the model's vocabulary_size is 61"):
        export_saved_model(lm, str(tmp_path / "model"), tokenizer_path=str(spm))
    assert not list(tmp_path.iterdir())
