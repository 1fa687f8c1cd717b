"""`tools.train` killed and restarted: resumes to the same end, nothing replayed or skipped.

Each run is a real process (`train_worker.py`, the run `tools.train` makes),
killed with SIGKILL at the points a pre-emption can hit, or sent SIGTERM, the
pre-emption notice, and restarted with the same command.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_fusion import data
from keras_fusion.diagnostics import relative_error
from t5_test_utils import TOLERANCE
from train_jobs import final_logits

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
CHECKPOINT_EVERY = 4  # train_worker.CONFIG


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    texts = data.load_corpus("embedded", "train")[:300]
    return data.train_tokenizer(texts, 500, str(tmp_path_factory.mktemp("tokenizer")))


def worker(model_dir, tokenizer_path, *args, background=False):
    command = [sys.executable, WORKER, str(model_dir), tokenizer_path, *args]
    if background:
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


def resumed_from(process):
    found = re.findall(
        r"Resumed from checkpoint \S+ in \S+: stage (\w+), step (\d+)", process.stdout
    )
    return (found[0][0], int(found[0][1])) if found else None


def logits(model_dir):
    return final_logits(os.path.join(model_dir, "final.keras"))


def rows(model_dir):
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return metrics["curves"]


@pytest.mark.slow
def test_killed_at_every_point_resumes_to_the_uninterrupted_end(tmp_path, tokenizer_path):
    """self_fusion, the growth at step 12 of 24, checkpoints every 4:
    SIGKILL before the growth (step 6), just before it (11), just after it
    (12), while the step-16 checkpoint is written, then SIGTERM at 18; each
    restart uses the same command."""
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = worker(reference_dir, tokenizer_path, background=True)  # runs alongside
    kills = [  # (worker arguments, where it dies, where the restart must resume)
        (["--kill", "main:6"], ("main", 6), None),
        (["--kill", "main:11"], ("main", 11), ("main", 4)),
        (["--kill", "main:12"], ("main", 12), ("main", 8)),
        (["--kill_in_checkpoint", "main:16"], ("main", 16), ("main", 12)),
        (["--sigterm", "main:18"], ("main", 19), ("main", 12)),
    ]
    repeated = []
    for args, died_at, resumes_at in kills:
        process = worker(killed_dir, tokenizer_path, *args)
        assert resumed_from(process) == resumes_at, process.stdout[-3000:]
        if args[0] == "--sigterm":
            # Saved at the next step boundary after the notice, then exit 143.
            assert process.returncode == 143, process.stdout[-3000:] + process.stderr[-3000:]
            assert "a checkpoint at step 19 was saved" in process.stderr
        else:
            assert process.returncode == -9, process.stdout[-3000:] + process.stderr[-3000:]
            assert f"KILLED at {died_at[0]}:{died_at[1]}" in process.stdout
        repeated.append(died_at)
        if args[0] == "--kill_in_checkpoint":
            # The step-16 file exists, cut in half, but the index never named it.
            with open(killed_dir / "checkpoints" / "checkpoint.json") as f:
                assert [c["step"] for c in json.load(f)["checkpoints"]] == [8, 12]
            assert [
                n for n in os.listdir(killed_dir / "checkpoints") if n.startswith("ckpt-000000016-")
            ]
    # Flags that do not change what is computed may differ on resume: the
    # runs so far wrote no SavedModel (train_worker's export=False), the last writes one.
    served = tmp_path / "served"
    final = worker(
        killed_dir, tokenizer_path, "--flag", "export=true", "--flag", f"export_dir={served}"
    )
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert resumed_from(final) == ("main", 19)
    assert (served / "saved_model.pb").exists()
    # The file of the killed write was deleted by the next save.
    assert not [
        n for n in os.listdir(killed_dir / "checkpoints") if n.startswith("ckpt-000000016-")
    ]
    # Repeated training per kill: from the step a restart resumed at to the
    # step where the previous run died, at most one checkpoint interval.
    resumes = [at for _, _, at in kills[1:]] + [resumed_from(final)]
    for (stage, died), (resume_stage, resumed) in zip(repeated, resumes):
        assert stage == resume_stage and 0 <= died - resumed <= CHECKPOINT_EVERY
    output, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, output[-3000:]
    assert relative_error(logits(killed_dir), logits(reference_dir)) <= TOLERANCE
    expected, got = rows(reference_dir), rows(killed_dir)
    assert list(got) == list(expected)
    for label in expected:
        assert [(r["step"], r["flops"], r["growth"], r["num_parameters"]) for r in got[label]] == [
            (r["step"], r["flops"], r["growth"], r["num_parameters"]) for r in expected[label]
        ]
        for key in ("train_loss", "eval_loss", "eval_accuracy"):
            np.testing.assert_allclose(
                [r[key] for r in got[label]], [r[key] for r in expected[label]], rtol=TOLERANCE
            )


@pytest.mark.slow
def test_a_model_dir_of_other_flags_is_refused_and_fresh_starts_over(tmp_path, tokenizer_path):
    model_dir = tmp_path / "run"
    first = worker(model_dir, tokenizer_path, "--kill", "main:4")
    assert first.returncode == -9
    listing = sorted(os.listdir(model_dir)), sorted(os.listdir(model_dir / "checkpoints"))
    with open(model_dir / "run.json") as f:
        saved = f.read()
    other = worker(model_dir, tokenizer_path, "--flag", "learning_rate=0.01", "--flag", "steps=36")
    assert other.returncode == 2
    assert (
        "holds a run with other flags (--learning_rate: 0.03 there, 0.01 now; "
        "--steps: 24 there, 36 now; --warmup_steps: 1 there, 2 now)"
    ) in other.stderr
    assert "--fresh" in other.stderr
    assert (sorted(os.listdir(model_dir)), sorted(os.listdir(model_dir / "checkpoints"))) == listing
    with open(model_dir / "run.json") as f:
        assert f.read() == saved
    fresh = worker(
        model_dir,
        tokenizer_path,
        "--flag",
        "fresh=true",
        "--flag",
        "steps=36",
        "--kill",
        "main:1",
    )
    assert resumed_from(fresh) is None and "KILLED at main:1" in fresh.stdout
    with open(model_dir / "run.json") as f:
        assert json.load(f)["flags"]["steps"] == 36
    # The earlier run's step-4 checkpoint went with --fresh; none was saved since.
    assert not list(model_dir.glob("checkpoints/ckpt-*"))
