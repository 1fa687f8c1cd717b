"""GrowthCheckpoint: whole grown models, an index written last, any TF filesystem."""

import os
import re

import numpy as np
import pytest

from keras_fusion import storage
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.checkpointing import (
    GrowthCheckpoint,
    checkpoint_epoch,
    latest_checkpoint,
    read_index,
    restore_latest,
)
from t5_test_utils import growing_lm, random_inputs, random_labels

X = random_inputs(batch_size=4, seed=11)
Y = random_labels(batch_size=4, seed=12)


def test_checkpoint_restores_grown_model_and_skips_applied_growth(tmp_path):
    directory = str(tmp_path / "ckpt")
    model = growing_lm()
    data = ({k: np.concatenate([v] * 2) for k, v in X.items()}, np.concatenate([Y] * 2))
    model.fit(
        *data,
        batch_size=4,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[GrowthCallback("deepen@3", verbose=0), GrowthCheckpoint(directory)],
    )
    names = sorted(os.listdir(directory))
    assert len(names) == 3 and names[0] == "checkpoint.json"
    assert re.fullmatch(r"ckpt-000000002-[0-9a-f]{8}\.keras", names[1])
    assert re.fullmatch(r"ckpt-000000004-[0-9a-f]{8}\.keras", names[2])
    assert checkpoint_epoch(directory) == 2
    restored = restore_latest(directory)
    assert restored.growth_history == ["deepen@3:layers=1:mode=identity"]
    assert restored.backbone.num_layers == 3 and int(restored.optimizer.iterations.numpy()) == 4
    np.testing.assert_array_equal(restored.predict_on_batch(X), model.predict_on_batch(X))
    callback = GrowthCallback("deepen@3", verbose=0)
    restored.fit(*data, batch_size=4, epochs=3, initial_epoch=2, verbose=0, callbacks=[callback])
    assert callback.events == [] and restored.backbone.num_layers == 3
    # A damaged newest checkpoint is skipped: the previous one loads.
    with open(os.path.join(directory, names[2]), "wb") as f:
        f.write(b"truncated")
    assert int(restore_latest(directory).optimizer.iterations.numpy()) == 2
    assert restore_latest(str(tmp_path / "empty")) is None


def test_step_checkpoints_with_state_on_a_remote_filesystem(tmp_path, monkeypatch):
    """every_steps saves by optimizer step, on ram:// (not the local disk);
    the index keeps `keep` entries with their state, and a file the index
    does not name (a killed write) is deleted by the next save."""
    monkeypatch.chdir(tmp_path)
    directory = "ram://checkpointing_test/ckpt"
    orphan = storage.join(directory, "ckpt-000000001-0123abcd.keras")
    storage.write_bytes(orphan, b"half a zip")
    model = growing_lm()
    saved_at = []
    checkpoint = GrowthCheckpoint(
        directory,
        keep=2,
        every_steps=2,
        state=lambda: {"seen": saved_at.append(1) or len(saved_at)},
    )
    data = ({k: np.concatenate([v] * 5) for k, v in X.items()}, np.concatenate([Y] * 5))
    model.fit(*data, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[checkpoint])
    index = read_index(directory)
    assert [(c["step"], c["state"]) for c in index["checkpoints"]] == [
        (2, {"seen": 1}),
        (4, {"seen": 2}),
    ]
    assert not storage.exists(orphan)
    assert sorted(storage.listdir(directory)) == sorted(
        ["checkpoint.json"] + [c["file"] for c in index["checkpoints"]]
    )
    restored, entry = latest_checkpoint(directory)
    assert entry["step"] == 4 and int(restored.optimizer.iterations.numpy()) == 4
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep=0), "keep must be an int >= 1, got 0"),
        (dict(every_steps=0), "every_steps must be None or an int >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GrowthCheckpoint("unused", **kwargs)
