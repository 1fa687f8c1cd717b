"""gs:// round trips through TensorFlow's own GCS client; run by test_gcs_emulator.py.

Runs in a child process whose environment (set by the test before TensorFlow
loads) routes TensorFlow's GCS client to fake-gcs-server. Usage:
gcs_emulator_checks.py BUCKET PAYLOAD_SEED. Raises on the first failed check;
prints "CHECK <name> ok" for each passed one.
"""

import json
import os
import sys
import time

START = time.monotonic()

# After START on purpose: the "TIME imports" line counts numpy's import too.
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def payload(seed):
    """3 MiB of random bytes (more than one read and upload buffer)."""
    return np.random.default_rng(seed).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()


def ok(name):
    print("CHECK", name, "ok", flush=True)
    print(f"TIME {name} at {time.monotonic() - START:.1f}s", file=sys.stderr, flush=True)


def main(bucket, seed):
    import keras
    import tensorflow as tf

    from keras_fusion import storage

    print(f"TIME imports at {time.monotonic() - START:.1f}s", file=sys.stderr, flush=True)

    root = f"gs://{bucket}"
    data = payload(seed)

    # Raw tf.io.gfile.
    tf.io.gfile.makedirs(f"{root}/raw/sub")
    assert tf.io.gfile.isdir(f"{root}/raw/sub")
    with tf.io.gfile.GFile(f"{root}/raw/payload.bin", "wb") as f:
        f.write(data)
    with tf.io.gfile.GFile(f"{root}/raw/payload.bin", "rb") as f:
        assert f.read() == data
    with tf.io.gfile.GFile(f"{root}/raw/payload.bin", "rb") as f:
        f.seek(2**20 + 7)
        assert f.read(1000) == data[2**20 + 7 : 2**20 + 1007]
    assert tf.io.gfile.stat(f"{root}/raw/payload.bin").length == len(data)
    with tf.io.gfile.GFile(f"{root}/raw/sub/small.txt", "w") as f:
        f.write("hello")
    assert sorted(n.rstrip("/") for n in tf.io.gfile.listdir(f"{root}/raw")) == [
        "payload.bin",
        "sub",
    ]
    assert tf.io.gfile.glob(f"{root}/raw/*.bin") == [f"{root}/raw/payload.bin"]
    assert tf.io.gfile.exists(f"{root}/raw/sub/small.txt")
    assert not tf.io.gfile.exists(f"{root}/raw/missing.txt")
    tf.io.gfile.rename(f"{root}/raw/sub/small.txt", f"{root}/raw/sub/renamed.txt")
    assert not tf.io.gfile.exists(f"{root}/raw/sub/small.txt")
    with tf.io.gfile.GFile(f"{root}/raw/sub/renamed.txt") as f:
        assert f.read() == "hello"
    tf.io.gfile.remove(f"{root}/raw/sub/renamed.txt")
    assert not tf.io.gfile.exists(f"{root}/raw/sub/renamed.txt")
    ok("tf.io.gfile")

    # keras_fusion.storage.
    run = f"{root}/run"
    value = {"rows": [{"step": 1, "loss": 0.5}], "name": "demo"}
    storage.write_json(storage.join(run, "metrics.json"), value)
    assert storage.read_json(storage.join(run, "metrics.json")) == value
    storage.write_json(storage.join(run, "metrics.json"), {"rows": []})  # rewrite replaces
    assert storage.read_json(storage.join(run, "metrics.json")) == {"rows": []}
    storage.append_text(storage.join(run, "log.txt"), "one\n")
    storage.append_text(storage.join(run, "log.txt"), "two\n")
    assert storage.read_text(storage.join(run, "log.txt")) == "one\ntwo\n"
    storage.write_bytes(storage.join(run, "deep/a/b.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(run, "deep/a/b.bin")) == b"\x00\x01"
    assert storage.glob(storage.join(run, "**/*.bin")) == [storage.join(run, "deep/a/b.bin")]
    assert storage.listdir(run) == ["deep", "log.txt", "metrics.json"]
    storage.remove(storage.join(run, "log.txt"))
    storage.remove(storage.join(run, "log.txt"))  # a missing file is not an error
    storage.rmtree(storage.join(run, "deep"))
    assert not storage.exists(storage.join(run, "deep/a/b.bin"))
    ok("keras_fusion.storage")

    # A Keras model saved to and loaded from gs://.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    path = storage.join(run, "model.keras")
    storage.save_model(model, path)
    assert storage.exists(path)
    loaded = storage.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    ok("keras_fusion.storage save_model/load_model")

    # tf.summary event files on gs://.
    logdir = f"{root}/logs"
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for step in range(3):
            tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
    writer.flush()
    writer.close()
    (events,) = tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*")
    seen = {}
    for record in tf.data.TFRecordDataset(events):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for v in event.summary.value:
            seen[event.step] = (v.tag, float(tf.make_ndarray(v.tensor)))
    expected = {step: ("loss", float(np.float32(1.0 / (step + 1)))) for step in range(3)}
    assert seen == expected, seen
    ok("tf.summary")

    print(
        json.dumps(
            {"objects": sorted(tf.io.gfile.glob(f"{root}/raw/*") + tf.io.gfile.glob(f"{run}/*"))}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
