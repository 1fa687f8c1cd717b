"""Growth under MirroredStrategy, and kill-and-resume, each in its own process."""

import json
import os
import signal
import subprocess
import sys

import pytest

from t5_test_utils import TOLERANCE

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "growth_worker.py")


def run_worker(tmp_path, *args, expect_killed=False):
    out = str(tmp_path / "result.json")
    if os.path.exists(out):
        os.remove(out)
    process = subprocess.run(
        [sys.executable, WORKER, "--out", out, *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if expect_killed:
        assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
        assert not os.path.exists(out)
        return None
    assert process.returncode == 0, process.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_growth_under_mirrored_strategy_on_two_devices(tmp_path):
    result = run_worker(tmp_path, "--scenario", "mirrored")
    assert result["replicas"] == 2
    # Every trainable variable of the deepened model (3 gated layers, tied:
    # 3 * 9 + 1 encoder, 3 * 14 + 1 decoder, the embedding, 2 final norms).
    assert result["num_mirrored"] == result["num_trainable"] == 74
    # Growth is not prepared ahead in a thread under a distribution strategy.
    assert "MirroredStrategy" in result["not_prepared_reason"]
    assert abs(result["loss_after"] - result["loss_before"]) <= TOLERANCE * result["loss_before"]
    assert (
        abs(result["self_fuse_loss_after"] - result["self_fuse_loss_before"])
        <= TOLERANCE * result["self_fuse_loss_before"]
    )
    assert result["self_fuse_hidden_dim"] == 32
    assert result["update_error"] <= TOLERANCE
    assert result["num_layers"] == 3 and result["iterations"] == 3
    assert result["old_variables_in_model"] == 0 and result["trainable_equals_lm"]
    assert result["new_output_projection_max"] > 0


def started(tmp_path):
    """Where the last worker run started (step, epoch, growth history)."""
    with open(tmp_path / "result.json.start.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_killed_at_every_point_resumes_to_the_same_end(tmp_path):
    """kill -9 before a growth, during a checkpoint write, during the step
    that grows and right after it; every restart resumes from the last good
    checkpoint and the run ends as an uninterrupted one would.

    Schedule deepen@3, widen_ffn@5; 4 epochs of 2 steps, a checkpoint at the
    end of each epoch (steps 2, 4, 6, 8)."""
    directory = str(tmp_path / "ckpt")
    common = ["--scenario", "resume", "--checkpoint_dir", directory]
    deepen, widen = "deepen@3:layers=1:mode=identity", "widen_ffn@5:factor=2:noise=0.001:seed=0"

    # 1. Killed at step 2, before the first checkpoint and before any growth.
    run_worker(tmp_path, *common, "--kill_at", "step:2", expect_killed=True)
    assert not os.path.exists(os.path.join(directory, "checkpoint.json"))
    # 2. Starts afresh; killed while writing the step-4 checkpoint (which
    # holds the deepened model): the step-2 one must survive, the half-written
    # file must never be listed.
    run_worker(tmp_path, *common, "--kill_at", "save:4", expect_killed=True)
    assert started(tmp_path) == {"step": 0, "epoch": 0, "history": []}
    with open(os.path.join(directory, "checkpoint.json")) as f:
        assert [c["step"] for c in json.load(f)["checkpoints"]] == [2]
    # Written under its final name, never named by the index.
    assert [n for n in os.listdir(directory) if n.startswith("ckpt-000000004-")]
    # 3. Resumes at step 2 (deepen@3 was never saved, so it is applied
    # again); killed inside the widen_ffn growth at step 5.
    run_worker(tmp_path, *common, "--kill_at", "growth:5", expect_killed=True)
    assert started(tmp_path) == {"step": 2, "epoch": 1, "history": []}
    # 4. Resumes at step 4 with deepen applied; killed right after widen_ffn.
    run_worker(tmp_path, *common, "--kill_at", "step:5", expect_killed=True)
    assert started(tmp_path) == {"step": 4, "epoch": 2, "history": [deepen]}
    # 5. Resumes at step 4 again and finishes.
    result = run_worker(tmp_path, *common)
    assert result["restored"]
    assert result["start"] == {"step": 4, "epoch": 2, "history": [deepen]}
    assert result["applied_in_this_run"] == [widen]
    assert result["history"] == [deepen, widen]
    assert result["iterations"] == 8
    assert result["num_layers"] == 3 and result["intermediate_dim"] == 64
    assert result["finite_loss"]
