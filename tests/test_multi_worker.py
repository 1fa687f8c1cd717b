"""Growth under MultiWorkerMirroredStrategy: two worker processes on localhost.

Each worker (`multi_worker_worker.py`) gets its TF_CONFIG, creates the
strategy first, and fits a tiny GrowingT5Seq2SeqLM through a growth event.
When one worker is killed its peer exits within a bound, and restarting both
resumes from each worker's last `GrowthCheckpoint`, growth state included.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multi_worker_worker.py")
# Collective timeout given to the strategy (CommunicationOptions.timeout_seconds).
COLLECTIVE_TIMEOUT = 30
# How long after a worker dies its peer may take to exit.
SURVIVOR_LIMIT = 120
# How much of a worker log a failure message shows.
FAILURE_TAIL = 4000


def free_ports(n):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Workers:
    """Two worker processes; `close` kills whatever still runs."""

    def __init__(self, tmp_path, *args, per_worker_args=None):
        ports = free_ports(2)
        self.tmp_path = tmp_path
        self.processes, self.logs = [], []
        for i in range(2):
            tf_config = {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": i},
            }
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps(tf_config),
                KERAS_BACKEND="tensorflow",
                TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="",
            )
            log = open(tmp_path / f"worker{i}.log", "w")
            self.logs.append(log)
            command = [
                sys.executable,
                WORKER,
                "--out",
                str(self.out(i)),
                "--weights",
                str(self.weights(i)),
                *args,
                *(per_worker_args[i] if per_worker_args else []),
            ]
            self.processes.append(
                subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            )

    def out(self, i):
        return self.tmp_path / f"result{i}.json"

    def weights(self, i):
        return self.tmp_path / f"weights{i}.npz"

    def log(self, i, tail=None):
        """Worker i's whole log, or its last `tail` characters (for failure
        messages: assertions read the whole log, since an error's traceback
        can push earlier lines out of any tail)."""
        self.logs[i].flush()
        text = (self.tmp_path / f"worker{i}.log").read_text()
        return text[-tail:] if tail else text

    def result(self, i):
        with open(self.out(i)) as f:
            return json.load(f)

    def finish(self, name="worker", timeout=240):
        """Wait for both to exit 0; returns their results and log tails."""
        try:
            for i, process in enumerate(self.processes):
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pytest.fail(
                        f"{name} {i} did not finish in {timeout} s:\n{self.log(i, FAILURE_TAIL)}"
                    )
            for i, process in enumerate(self.processes):
                assert process.returncode == 0, f"{name} {i}:\n{self.log(i, FAILURE_TAIL)}"
            return [self.result(i) for i in range(2)], [self.log(i) for i in range(2)]
        finally:
            self.close()

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for log in self.logs:
            log.close()


def assert_same_model(workers, results):
    """Both workers end with bit-identical weights and the same losses."""
    assert results[0]["num_trainable"] == results[1]["num_trainable"]
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert results[0]["loss"] == results[1]["loss"]
    with np.load(workers.weights(0)) as w0, np.load(workers.weights(1)) as w1:
        assert sorted(w0.files) == sorted(w1.files)
        assert max(float(np.abs(w0[k] - w1[k]).max()) for k in w0.files) == 0.0


@pytest.mark.slow
def test_growth_under_multi_worker_mirrored_strategy(tmp_path):
    workers = Workers(
        tmp_path,
        "--schedule",
        "deepen@2",
        "--steps",
        "4",
        "--timeout_seconds",
        str(COLLECTIVE_TIMEOUT),
    )
    results, _ = workers.finish()

    for i, result in enumerate(results):
        assert result["task"] == i
        assert result["replicas"] == 2
        # Every trainable variable of the deepened model (3 gated layers, tied:
        # 3 * 9 + 1 encoder, 3 * 14 + 1 decoder, the embedding, 2 final norms).
        assert result["num_mirrored"] == result["num_trainable"] == 74
        assert result["initial"] == {"num_layers": 2, "hidden_dim": 16}
        assert result["num_layers"] == 3 and result["hidden_dim"] == 16
        assert result["iterations"] == 4
        assert result["events"] == result["growth_history"] == ["deepen@2:layers=1:mode=identity"]
        assert result["event_steps"] == [2]
        assert all(np.isfinite(result["loss"]))
    # Both workers hold the same (grown) model after training.
    assert_same_model(workers, results)


@pytest.mark.slow
def test_surviving_worker_exits_when_its_peer_is_killed_and_both_resume(tmp_path):
    # Both workers checkpoint every 2 steps (each into its own directory) and
    # grow at step 2. Worker 1 kills itself (SIGKILL) at the end of step 5,
    # after the growth and the checkpoint at step 4; worker 0 must then fail
    # its next collective and exit instead of waiting forever.
    checkpoints = tmp_path / "checkpoints"
    common = [
        "--schedule",
        "deepen@2",
        "--steps",
        "8",
        "--steps_per_epoch",
        "2",
        "--checkpoint_dir",
        str(checkpoints),
        "--timeout_seconds",
        str(COLLECTIVE_TIMEOUT),
    ]
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    workers = Workers(killed_dir, *common, per_worker_args=[[], ["--kill_at_step", "5"]])
    survivor, victim = workers.processes
    try:
        try:
            victim.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker 1 did not reach step 5 in 240 s:\n{workers.log(1, FAILURE_TAIL)}")
        died = time.monotonic()
        assert victim.returncode == -signal.SIGKILL, workers.log(1, FAILURE_TAIL)
        assert "Growth at step 2" in workers.log(1)
        try:
            survivor.wait(timeout=SURVIVOR_LIMIT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"worker 0 still running {SURVIVOR_LIMIT} s after worker 1 was killed:\n"
                f"{workers.log(0, FAILURE_TAIL)}"
            )
        waited = time.monotonic() - died
        print(
            f"worker 0 exited {waited:.1f} s after worker 1 was killed (rc {survivor.returncode})"
        )
        log = workers.log(0)
    finally:
        workers.close()

    assert survivor.returncode not in (0, None), log
    assert not workers.out(0).exists()
    assert "Growth at step 2" in log
    # The error names the failed collective (connection reset / unavailable /
    # deadline exceeded, depending on how the loss is noticed).
    assert "Collective" in log or "DeadlineExceeded" in log or "Unavailable" in log, log
    assert waited < SURVIVOR_LIMIT
    killed_logs = [(killed_dir / f"worker{i}.log").read_text() for i in range(2)]
    for i in range(2):
        index = json.loads((checkpoints / f"worker{i}" / "checkpoint.json").read_text())
        assert [c["step"] for c in index["checkpoints"]] == [2, 4], index

    # Restart both on the same checkpoint directories, no kill: each resumes
    # from its step-4 checkpoint with the growth already applied, and the
    # pair finishes the run in lockstep.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    workers = Workers(resumed_dir, *common)
    results, logs = workers.finish("resumed worker")

    history = ["deepen@2:layers=1:mode=identity"]
    for i, (result, log) in enumerate(zip(results, logs)):
        assert result["task"] == i
        assert result["replicas"] == 2
        assert result["restored"], log
        # Every trainable variable of the deepened model (3 gated layers, tied:
        # 3 * 9 + 1 encoder, 3 * 14 + 1 decoder, the embedding, 2 final norms).
        assert result["num_mirrored"] == result["num_trainable"] == 74
        # The restored model is the grown one, at the last checkpoint.
        assert result["start"]["step"] == 4
        assert result["start"]["epoch"] == 2
        assert result["start"]["history"] == history
        # ... holding exactly the weights and optimizer state (iterations,
        # every slot) this worker had at the end of step 4 before the kill.
        assert (
            f"worker {i} epoch 2 step 4 weights {result['start']['weights_sha256']} "
            f"optimizer {result['start']['optimizer_sha256']}"
        ) in killed_logs[i], killed_logs[i][-FAILURE_TAIL:]
        assert result["initial"] == {"num_layers": 3, "hidden_dim": 16}
        # No growth is applied again, and training runs to the end.
        assert result["events"] == [] and "Growth at step" not in log
        assert result["iterations"] == 8
        assert result["num_layers"] == 3 and result["hidden_dim"] == 16
        assert result["growth_history"] == history
        assert len(result["loss"]) == 2 and all(np.isfinite(result["loss"]))
        assert result["weights_sha256"] != result["start"]["weights_sha256"]
    # Both restored the same state and end with the same weights.
    assert results[0]["start"]["weights_sha256"] == results[1]["start"]["weights_sha256"]
    assert results[0]["start"]["optimizer_sha256"] == results[1]["start"]["optimizer_sha256"]
    assert_same_model(workers, results)
    for i in range(2):
        index = json.loads((checkpoints / f"worker{i}" / "checkpoint.json").read_text())
        assert [c["step"] for c in index["checkpoints"]] == [6, 8], index
