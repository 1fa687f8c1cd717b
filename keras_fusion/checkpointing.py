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

import re

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
