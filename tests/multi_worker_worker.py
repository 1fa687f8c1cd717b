"""One worker of a two-process MultiWorkerMirroredStrategy run (run, not imported).

The test starts two of these with TF_CONFIG set (workers on 127.0.0.1). Each
creates the strategy first (before any other TensorFlow op), builds and
compiles a tiny `GrowingT5Seq2SeqLM` in its scope, and fits it on an
identical `tf.data.Dataset` through a growth event. It writes what it
measured as JSON (`--out`) and every trainable weight to `--weights` (.npz)
so the test can compare the two workers.

With `--kill_at_step N` the worker kills itself (SIGKILL) at the end of
optimizer step N; its peer must then fail a collective within the
communication timeout instead of hanging.

With `--checkpoint_dir D` the worker saves a `GrowthCheckpoint` at the end of
every epoch (`--steps_per_epoch` steps) into its own `D/worker<task>` (every
worker runs the save; separate directories avoid two writers on one file),
and at start restores the newest one with `restore_latest` inside
`strategy.scope()` (so the restored variables are distributed) and fits from
`initial_epoch=checkpoint_epoch(...)`: a restarted pair resumes where the
killed pair last checkpointed, growth history included.
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402


def weights_digest(model):
    """Every trainable weight by index and path, and a sha256 over all of them."""
    import numpy as np

    weights = {
        f"{i:03d}:{v.path}": np.array(v.numpy()) for i, v in enumerate(model.trainable_variables)
    }
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return weights, digest.hexdigest()


def optimizer_digest(model):
    """A sha256 over the optimizer's variables (`iterations` and every slot), in order."""
    import numpy as np

    digest = hashlib.sha256()
    for v in model.optimizer.variables:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()


def main(args):
    # The library's strategy, with its Keras 3.15 workarounds (see
    # keras_fusion.distribution.multi_worker_strategy), created before any op.
    from keras_fusion.distribution import multi_worker_strategy

    strategy = multi_worker_strategy(timeout_seconds=args.timeout_seconds or None)

    import keras

    if os.environ.get("MW_DEBUG"):
        keras.config.disable_traceback_filtering()
    import numpy as np

    from keras_fusion.callbacks import (
        GrowthCallback,
        GrowthCheckpoint,
        checkpoint_epoch,
        restore_latest,
    )
    from t5_test_utils import growing_lm, random_inputs, random_labels

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    global_batch = 4
    x = random_inputs(batch_size=global_batch * 2, seed=11)
    y = random_labels(batch_size=global_batch * 2, seed=12)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch, drop_remainder=True)
    )
    dataset_options = tf.data.Options()
    dataset_options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(dataset_options)

    steps_per_epoch = args.steps_per_epoch or args.steps
    if args.steps % steps_per_epoch:
        raise ValueError(
            f"--steps {args.steps} is not a multiple of --steps_per_epoch {steps_per_epoch}."
        )
    checkpoint_dir = (
        os.path.join(args.checkpoint_dir, f"worker{task}") if args.checkpoint_dir else None
    )
    restored = None
    with strategy.scope():
        if checkpoint_dir:
            restored = restore_latest(checkpoint_dir)
        model = restored or growing_lm(keras.optimizers.Adam(1e-2), seed=0)
    initial_epoch = checkpoint_epoch(checkpoint_dir) if checkpoint_dir else 0
    initial = {"num_layers": model.backbone.num_layers, "hidden_dim": model.backbone.hidden_dim}
    start_state = {
        "step": int(model.optimizer.iterations.numpy()),
        "epoch": initial_epoch,
        "history": list(model.growth_history),
        "weights_sha256": weights_digest(model)[1],
        "optimizer_sha256": optimizer_digest(model),
    }

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            print(f"worker {task} step {step}", flush=True)
            if step == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_epoch_end(self, epoch, logs=None):
            # The state a checkpoint at this epoch end holds, for the test to
            # compare with what a restarted worker restores.
            step = int(self.model.optimizer.iterations.numpy())
            print(
                f"worker {task} epoch {epoch + 1} step {step} "
                f"weights {weights_digest(self.model)[1]} "
                f"optimizer {optimizer_digest(self.model)}",
                flush=True,
            )

    growth = GrowthCallback(args.schedule, verbose=1)
    callbacks = [growth, KillAt()]
    if checkpoint_dir:
        callbacks.append(GrowthCheckpoint(checkpoint_dir))
    start = time.time()
    history = model.fit(
        dataset,
        epochs=args.steps // steps_per_epoch,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps_per_epoch,
        verbose=0,
        callbacks=callbacks,
    )
    weights, digest = weights_digest(model)
    np.savez(args.weights, **weights)
    result = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "restored": restored is not None,
        "start": start_state,
        "initial": initial,
        "num_layers": model.backbone.num_layers,
        "hidden_dim": model.backbone.hidden_dim,
        "iterations": int(model.optimizer.iterations.numpy()),
        "growth_history": list(model.growth_history),
        "events": [e["entry"] for e in growth.events],
        "event_steps": [e["step"] for e in growth.events],
        "loss": [float(v) for v in history.history["loss"]],
        "weights_sha256": digest,
        "num_trainable": len(weights),
        # A count, not all(...): all() of no variables would be True.
        "num_mirrored": sum(
            isinstance(v.value, tf.distribute.DistributedValues) for v in model.trainable_variables
        ),
        "seconds": round(time.time() - start, 2),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--schedule", default="deepen@2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--steps_per_epoch",
        type=int,
        default=0,
        help="steps per epoch (default: all --steps in one epoch)",
    )
    parser.add_argument(
        "--checkpoint_dir", help="checkpoint into (and resume from) <dir>/worker<task>"
    )
    parser.add_argument("--kill_at_step", type=int, default=-1)
    parser.add_argument("--timeout_seconds", type=float, default=0)
    main(parser.parse_args())
