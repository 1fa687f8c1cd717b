"""`from_preset("hf://org/name")` on a local stand-in for the Hugging Face Hub.

keras-hub 0.32 resolves an `hf://` preset's files with
`huggingface_hub.hf_hub_download(repo_id, filename)` (preset_utils.get_file),
and keras_fusion fetches an HF T5 repository with `snapshot_download`. Both
read the hub cache: `models--{org}--{name}/refs/main` names a commit, and
`snapshots/{commit}/{file}` links to `blobs/{hash}`. The test lays out that
cache with the files transformers' `save_pretrained` writes, and loads it
with `HF_HUB_OFFLINE=1` and an endpoint that refuses connections, so no
network is touched. huggingface_hub reads its cache location and offline
flag when it is imported, so the load runs in a fresh process.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_test_utils import T5_11, hf_logits, save_hf_t5
from keras_fusion.diagnostics import relative_error
from t5_test_utils import TOLERANCE, random_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "keras-fusion-test/tiny-t5"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import json, sys
import numpy as np
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
inputs = dict(np.load(sys.argv[1]))
lm = FusionT5Seq2SeqLM.from_preset("hf://{repo}")
backbone = FusionT5Backbone.from_preset("hf://{repo}")
np.save(sys.argv[2], np.asarray(lm(inputs, training=False)))
np.save(sys.argv[3], np.asarray(FusionT5Seq2SeqLM(backbone)(inputs, training=False)))
try:
    FusionT5Seq2SeqLM.from_preset("hf://keras-fusion-test/not-in-the-cache")
    missing = "loaded"
except Exception as error:
    missing = type(error).__name__ + ": " + str(error)
print(json.dumps({{"types": [type(lm).__name__, type(backbone).__name__], "missing": missing}}))
"""


def hub_cache(cache, repo, folder, commit):
    """The hub cache layout of `folder`'s files as revision `main` of `repo`."""
    storage_folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(storage_folder, "blobs"))
    os.makedirs(os.path.join(storage_folder, "refs"))
    snapshot = os.path.join(storage_folder, "snapshots", commit)
    os.makedirs(snapshot)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        blob = hashlib.sha256(data).hexdigest()
        with open(os.path.join(storage_folder, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    with open(os.path.join(storage_folder, "refs", "main"), "w") as f:
        f.write(commit)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.mark.slow
def test_hf_handle_loads_from_the_hub_cache_with_transformers_logits(tmp_path):
    model, folder = save_hf_t5(tmp_path / "saved", **T5_11)
    snapshot = hub_cache(str(tmp_path / "hub"), REPO, folder, COMMIT)
    assert sorted(os.listdir(snapshot)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    inputs = random_inputs(seed=9)
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # the discard port: a request would fail at once
        KERAS_HOME=str(tmp_path / "keras_home"),
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    outputs = [str(tmp_path / "lm.npy"), str(tmp_path / "backbone.npy")]
    run = subprocess.run(
        [sys.executable, "-c", LOAD.format(repo=REPO), str(tmp_path / "inputs.npz"), *outputs],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["types"] == ["FusionT5Seq2SeqLM", "FusionT5Backbone"]
    # A handle that is not in the cache fails offline; it is not fetched.
    assert "not-in-the-cache" in report["missing"] and "FileNotFoundError" in report["missing"], (
        report
    )
    expected = hf_logits(model, inputs)
    for path in outputs:
        assert relative_error(np.load(path), expected) <= TOLERANCE
    # Nothing was downloaded (keras-hub's copies of remote files go to
    # KERAS_HOME/models) or added to the cache.
    assert not os.path.exists(tmp_path / "keras_home" / "models")
    assert sorted(os.listdir(tmp_path / "hub")) == ["models--" + REPO.replace("/", "--")]
