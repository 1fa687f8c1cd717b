"""Checkpoints of a growing model that survive pre-emption, on any filesystem.

Keras' `BackupAndRestore` and `ModelCheckpoint(save_weights_only=True)`
restore weights into the model the script builds, which after a growth has
the wrong shapes. `GrowthCheckpoint` saves the whole `GrowingT5Seq2SeqLM` as
`.keras` (architecture, weights, optimizer state with `iterations`, and the
growth history, so applied growths are not applied again).

Never a half-written checkpoint, on object stores too (where a rename is a
copy): each checkpoint is written under its own final, unique name
(`ckpt-<step>-<8 hex>.keras`), and the index `checkpoint.json`, written
last, names it. A reader trusts only the files the index names: a file left
by a write that was killed is ignored, and deleted by the next save.

Example:

```python
model = restore_latest(ckpt_dir) or build_model()
model.fit(data, epochs=10, steps_per_epoch=100,
          initial_epoch=checkpoint_epoch(ckpt_dir),
          callbacks=[GrowthCallback(schedule), GrowthCheckpoint(ckpt_dir)])
```
"""

import os
import re
import socket
import threading
import time

import keras
from absl import logging

from keras_fusion import storage

CHECKPOINT_INDEX = "checkpoint.json"
_CHECKPOINT_FILE = re.compile(r"^ckpt-\d{9}-[0-9a-f]{8}\.keras$")


class GrowthCheckpoint(keras.callbacks.Callback):
    """Saves the growing model whole, so that a killed run resumes exactly.

    Saves at the end of every epoch, or with `every_steps` whenever the
    optimizer step reaches a multiple of it (with `steps_per_execution > 1`,
    at the first execution boundary at or after it, where callbacks run).

    Args:
        directory: where checkpoints go, any TF filesystem (created if
            missing).
        keep: how many recent checkpoints to keep (>= 1).
        every_steps: optional int >= 1: save by optimizer step instead of
            by epoch.
        state: optional callable returning a JSON-serialisable dict saved
            in the index with each checkpoint (a training script's own
            progress: its stage, metrics rows, ...), read back by
            `latest_checkpoint`.
    """

    def __init__(self, directory, keep=2, every_steps=None, state=None):
        super().__init__()
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}.")
        if every_steps is not None and (not isinstance(every_steps, int) or every_steps < 1):
            raise ValueError(f"every_steps must be None or an int >= 1, got {every_steps!r}.")
        self.directory = directory
        self.keep = keep
        self.every_steps = every_steps
        self.state = state
        self._epoch = 0
        self._last_saved = None

    def on_train_begin(self, logs=None):
        self._last_saved = self._step()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is None:
            return
        step = self._step()
        if step // self.every_steps > self._last_saved // self.every_steps:
            self.save(epoch=self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_steps is None:
            self.save(epoch=epoch + 1)

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    @property
    def last_saved_step(self):
        """The optimizer step of the last checkpoint this callback saved (or
        found at the start of `fit`), None before `fit`."""
        return self._last_saved

    def save(self, epoch=None, model=None):
        """Save a checkpoint now; returns its path.

        Args:
            epoch: the epoch count recorded with it (default: the current
                epoch, not finished).
            model: the model to save (default: the model being fit).
        """
        model = model or self.model
        step = int(model.optimizer.iterations.numpy())
        name = storage.unique_name(f"ckpt-{step:09d}", ".keras")
        path = storage.join(self.directory, name)
        storage.makedirs(self.directory)
        model.save(path)  # a unique name: nothing to replace, nothing to rename
        entry = {"file": name, "step": step, "epoch": self._epoch if epoch is None else epoch}
        if self.state is not None:
            entry["state"] = self.state()
        write_entry(self.directory, entry, self.keep)
        self._last_saved = step
        return path


def write_entry(directory, entry, keep=2):
    """Append `entry` to the index (written last), then delete what it no longer names.

    `entry["file"]` may be None for a checkpoint that holds only state.
    """
    index = read_index(directory)
    kept = index.get("checkpoints", []) + [entry]
    kept = kept[-keep:]
    storage.write_json(storage.join(directory, CHECKPOINT_INDEX), dict(index, checkpoints=kept))
    named = {c["file"] for c in kept}
    for name in storage.listdir(directory):
        if _CHECKPOINT_FILE.match(name) and name not in named:
            storage.remove(storage.join(directory, name))


def read_index(directory):
    """The index of `directory` (`{}` when there is none)."""
    path = storage.join(directory, CHECKPOINT_INDEX)
    if not storage.exists(path):
        return {}
    return storage.read_json(path)


def latest_checkpoint(directory, compile=True):
    """`(model, entry)` of the newest loadable checkpoint, or `(None, None)`.

    A checkpoint that fails to load (truncated, corrupt) is skipped with a
    warning and the previous one is tried. An entry whose `file` is None
    (state only) is returned with model None.
    """
    for entry in reversed(read_index(directory).get("checkpoints", [])):
        if entry["file"] is None:
            return None, entry
        path = storage.join(directory, entry["file"])
        try:
            return keras.saving.load_model(path, compile=compile), entry
        except Exception as error:  # a damaged file: fall back to an older one
            logging.warning("Skipping checkpoint %s: %s", path, error)
    return None, None


def restore_latest(directory):
    """The newest loadable checkpointed model in `directory`, or None."""
    return latest_checkpoint(directory)[0]


def checkpoint_epoch(directory):
    """The epoch count of the newest checkpoint (0 when there is none)."""
    checkpoints = read_index(directory).get("checkpoints", [])
    return checkpoints[-1]["epoch"] if checkpoints else 0


# A lease is renewed every LEASE_RENEW_SECONDS and is dead after
# LEASE_TTL_SECONDS without a renewal (its job was killed or lost its VM).
LEASE_TTL_SECONDS = 120.0
LEASE_RENEW_SECONDS = 20.0
_LEASE_FILE = re.compile(r"^lease-\d+-[0-9a-f]{8}\.json$")


class LeaseHeld(ValueError):
    """Another live job holds the lease (a `ValueError`: the scripts exit 2)."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class Lease:
    """One job at a time in `directory`, on any TF filesystem, object stores included.

    Object stores have no atomic create-if-absent or rename, so a lease is
    not one shared lock file: each job writes its own file
    (`lease-<time>-<8 hex>.json`: host, pid, when taken and last renewed),
    then lists the folder. If any other *live* lease is there, it deletes
    its own and raises `LeaseHeld`. Two jobs that start together may both
    see each other and both refuse (rerun one); they can never both go on,
    since each writes before it looks. A lease is dead when it has not been
    renewed for `ttl` seconds, or at once when it names this host and a
    process that no longer runs (a job killed with SIGKILL and rerun on the
    same machine resumes at once; on another machine, after `ttl`). A
    daemon thread renews the lease while the job holds it.

    Example:

    ```python
    with Lease("gs://bucket/run/nodes/leaf0"):
        train_the_node()
    ```
    """

    def __init__(self, directory, ttl=LEASE_TTL_SECONDS, renew_every=LEASE_RENEW_SECONDS):
        if not ttl > renew_every > 0:
            raise ValueError(
                f"need ttl > renew_every > 0, got ttl={ttl}, renew_every={renew_every}."
            )
        self.directory = directory
        self.ttl = ttl
        self.renew_every = renew_every
        self.path = None
        self._stop = threading.Event()
        self._thread = None

    def _record(self, taken):
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "taken": taken,
            "renewed": time.time(),
        }

    def is_live(self, record, now=None):
        """Whether another job's lease `record` still holds."""
        now = time.time() if now is None else now
        if record.get("host") == socket.gethostname() and not _pid_alive(record.get("pid", -1)):
            return False
        return now - record.get("renewed", 0.0) < self.ttl

    def others(self):
        """`{file name: record}` of the leases in the folder other than this job's."""
        found = {}
        own = None if self.path is None else os.path.basename(self.path)
        for name in storage.listdir(self.directory):
            if not _LEASE_FILE.match(name) or name == own:
                continue
            try:
                found[name] = storage.read_json(storage.join(self.directory, name))
            except Exception:  # deleted between the listing and the read
                continue
        return found

    def acquire(self):
        storage.makedirs(self.directory)
        taken = time.time()
        name = storage.unique_name(f"lease-{int(taken * 1e6)}", ".json")
        self.path = storage.join(self.directory, name)
        storage.write_json(self.path, self._record(taken))
        live = {}
        for other, record in self.others().items():
            if self.is_live(record):
                live[other] = record
            else:  # a dead job's lease: clear it (best effort)
                try:
                    storage.remove(storage.join(self.directory, other))
                except Exception:
                    pass
        if live:
            storage.remove(self.path)
            self.path = None
            record = next(iter(live.values()))
            raise LeaseHeld(
                f"{self.directory} is in use by another job (host {record.get('host')}, pid "
                f"{record.get('pid')}, renewed {time.time() - record.get('renewed', 0):.0f} s "
                f"ago). Two jobs must not train it at once. If that job is dead, its lease "
                f"expires {self.ttl:.0f} s after its last renewal (at once on its own host); "
                "then run this command again."
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, args=(taken,), daemon=True)
        self._thread.start()
        return self

    def _renew(self, taken):
        while not self._stop.wait(self.renew_every):
            try:
                storage.write_json(self.path, self._record(taken))
            except Exception as error:  # keep training; the next renewal may succeed
                logging.warning("Could not renew the lease %s: %s", self.path, error)

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.path is not None:
            storage.remove(self.path)
            self.path = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
