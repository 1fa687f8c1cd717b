"""GrowthCheckpoint: whole grown models, an index written last, any TF filesystem."""

import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_fusion import storage
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.checkpointing import (
    LEASE_TTL_SECONDS,
    GrowthCheckpoint,
    Lease,
    LeaseHeld,
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


def lease_record(host, pid, renewed):
    return {"host": host, "pid": pid, "taken": renewed, "renewed": renewed}


@pytest.mark.parametrize("root", ["local", "ram://lease_test"])
def test_a_lease_refuses_a_second_job_while_the_first_holds_it(tmp_path, root):
    directory = str(tmp_path / "node") if root == "local" else f"{root}/{tmp_path.name}/node"
    first = Lease(directory).acquire()
    try:
        (own,) = [n for n in storage.listdir(directory) if n.startswith("lease-")]
        record = storage.read_json(storage.join(directory, own))
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(LeaseHeld, match=f"{re.escape(directory)} is in use by another job"):
            Lease(directory).acquire()
        # The refused job removed its own file; the holder's is intact.
        assert [n for n in storage.listdir(directory) if n.startswith("lease-")] == [own]
    finally:
        first.release()
    assert not [n for n in storage.listdir(directory) if n.startswith("lease-")]
    with Lease(directory):  # free again
        pass


def test_a_dead_jobs_lease_is_taken_over_and_a_live_one_on_another_host_is_not(tmp_path):
    directory = str(tmp_path / "node")
    storage.makedirs(directory)
    now = time.time()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    storage.write_json(  # this host, a process that has exited: dead at once
        storage.join(directory, "lease-1-0000000a.json"),
        lease_record(socket.gethostname(), int(dead), now),
    )
    storage.write_json(  # another host, not renewed for longer than the TTL
        storage.join(directory, "lease-2-0000000b.json"),
        lease_record("elsewhere", 1, now - LEASE_TTL_SECONDS - 1),
    )
    with Lease(directory):
        names = [n for n in storage.listdir(directory) if n.startswith("lease-")]
        assert len(names) == 1 and names[0] not in (
            "lease-1-0000000a.json",
            "lease-2-0000000b.json",
        )
    storage.write_json(  # another host, renewed a second ago: live
        storage.join(directory, "lease-3-0000000c.json"), lease_record("elsewhere", 1, now - 1)
    )
    with pytest.raises(LeaseHeld, match=r"host elsewhere, pid 1, renewed \d+ s ago"):
        Lease(directory).acquire()


def test_a_held_lease_is_renewed():
    directory = "ram://lease_renew_test/node"
    with Lease(directory, ttl=1.0, renew_every=0.1) as lease:
        first = storage.read_json(lease.path)["renewed"]
        time.sleep(0.5)
        assert storage.read_json(lease.path)["renewed"] > first
        # Another job sees it live after its TTL from the start has passed.
        time.sleep(0.6)
        with pytest.raises(LeaseHeld):
            Lease(directory, ttl=1.0, renew_every=0.1).acquire()
    with pytest.raises(ValueError, match=r"need ttl > renew_every > 0, got ttl=1, renew_every=2"):
        Lease(directory, ttl=1, renew_every=2)
