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
    process = subprocess.run([sys.executable, WORKER, "--out", out, *args],
                             capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
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
    assert result["mirrored"]
    assert abs(result["loss_after"] - result["loss_before"]) <= TOLERANCE * result["loss_before"]
    assert abs(result["self_fuse_loss_after"] - result["self_fuse_loss_before"]) <= TOLERANCE * result["self_fuse_loss_before"]
    assert result["self_fuse_hidden_dim"] == 32
    assert result["update_error"] <= TOLERANCE
    assert result["num_layers"] == 3 and result["iterations"] == 3
    assert result["old_variables_in_model"] == 0 and result["trainable_equals_lm"]
    assert result["new_output_projection_max"] > 0


@pytest.mark.slow
def test_killed_after_growth_resumes_without_reapplying(tmp_path):
    directory = str(tmp_path / "ckpt")
    common = ["--scenario", "resume", "--checkpoint_dir", directory]
    # Killed at step 5, after deepen@3 was applied and checkpointed (end of
    # epoch 2, step 4) and right after widen_ffn@5 was applied (not saved).
    run_worker(tmp_path, *common, "--kill_at_step", "5", expect_killed=True)
    result = run_worker(tmp_path, *common)
    assert result["restored"]
    assert result["start"] == {"step": 4, "epoch": 2, "history": ["deepen@3:layers=1:mode=identity"]}
    assert result["applied_in_this_run"] == ["widen_ffn@5:factor=2:noise=0.001:seed=0"]
    assert result["history"] == ["deepen@3:layers=1:mode=identity", "widen_ffn@5:factor=2:noise=0.001:seed=0"]
    assert result["iterations"] == 8
    assert result["num_layers"] == 3 and result["intermediate_dim"] == 64
    assert result["finite_loss"]
