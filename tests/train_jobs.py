"""`tools.train` runs as real processes (tests/tools/train_worker.py), the
logits a run's final model gives, for the tests that compare runs, and a
trained run shared by the pytest-xdist workers (`worker_shared_folder`)."""

import fcntl
import os
import shutil
import subprocess
import sys

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "tools", "train_worker.py")


def worker_job(model_dir, tokenizer_path, *args, flags=(), env=None):
    """train_worker.py (`tools.train`'s run, with --kill/--sigterm hooks) in
    the background; `flags` are `(name, value)` pairs of `RunConfig` fields."""
    flag_args = [f"--flag={name}={value}" for name, value in flags]
    return subprocess.Popen(
        [sys.executable, WORKER, str(model_dir), tokenizer_path, *flag_args, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def finished(process, returncode=0):
    """Wait for a `worker_job`, check its exit status, return its output."""
    out, _ = process.communicate(timeout=600)
    assert process.returncode == returncode, out[-4000:]
    return out


def final_logits(path):
    """The logits of the `.keras` model at `path` on fixed ids, one row padded."""
    model = keras.saving.load_model(str(path), compile=False)
    ids = (
        np.random.default_rng(0)
        .integers(3, model.backbone.vocabulary_size, (2, 16))
        .astype("int32")
    )
    mask = np.ones_like(ids)
    mask[0, 10:] = 0
    return model.lm(
        {
            "encoder_token_ids": ids * mask,
            "encoder_padding_mask": mask,
            "decoder_token_ids": ids,
            "decoder_padding_mask": np.ones_like(ids),
        }
    )


def worker_shared_folder(tmp_path_factory, worker_id, name, build):
    """A folder that `build(folder)` fills once per test run, shared by the
    pytest-xdist workers.

    A module fixture runs once in every worker that runs one of its tests
    (`make test` has two), so an expensive one (a whole training run) would
    be built twice. The first worker to ask builds it under a file lock; the
    others wait for the lock and reuse it. Without xdist (`worker_id` is
    "master") it is a plain temporary folder.
    """
    if worker_id == "master":
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # this run's, the same for every worker
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released at close, or if the process dies
        if not (root / f"{name}.built").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way
            folder.mkdir()
            build(folder)
            (root / f"{name}.built").touch()
    return folder
