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


def main(args):
    # The library's strategy, with its Keras 3.15 workarounds (see
    # keras_fusion.training.multi_worker_strategy), created before any op.
    from keras_fusion.training import multi_worker_strategy

    strategy = multi_worker_strategy(timeout_seconds=args.timeout_seconds or None)

    import keras
    if os.environ.get("MW_DEBUG"):
        keras.config.disable_traceback_filtering()
    import numpy as np

    from keras_fusion.callbacks import GrowthCallback
    from t5_test_utils import growing_lm, random_inputs, random_labels

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    global_batch = 4
    x = random_inputs(batch_size=global_batch * 2, seed=11)
    y = random_labels(batch_size=global_batch * 2, seed=12)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch, drop_remainder=True)
    dataset_options = tf.data.Options()
    dataset_options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(dataset_options)

    with strategy.scope():
        model = growing_lm(keras.optimizers.Adam(1e-2), seed=0)
    initial = {"num_layers": model.backbone.num_layers, "hidden_dim": model.backbone.hidden_dim}

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            print(f"worker {task} step {step}", flush=True)
            if step == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)

    growth = GrowthCallback(args.schedule, verbose=1)
    start = time.time()
    history = model.fit(dataset, epochs=1, steps_per_epoch=args.steps, verbose=0,
                        callbacks=[growth, KillAt()])
    weights = {f"{i:03d}:{v.path}": np.array(v.numpy()) for i, v in enumerate(model.trainable_variables)}
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    np.savez(args.weights, **weights)
    result = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "initial": initial,
        "num_layers": model.backbone.num_layers,
        "hidden_dim": model.backbone.hidden_dim,
        "iterations": int(model.optimizer.iterations.numpy()),
        "growth_history": list(model.growth_history),
        "events": [e["entry"] for e in growth.events],
        "event_steps": [e["step"] for e in growth.events],
        "loss": [float(v) for v in history.history["loss"]],
        "weights_sha256": digest.hexdigest(),
        "num_trainable": len(weights),
        "mirrored": all(isinstance(v.value, tf.distribute.DistributedValues) for v in model.trainable_variables),
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
    parser.add_argument("--kill_at_step", type=int, default=-1)
    parser.add_argument("--timeout_seconds", type=float, default=0)
    main(parser.parse_args())
