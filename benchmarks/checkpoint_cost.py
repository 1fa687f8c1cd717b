"""What pre-emption safety costs: checkpoint writes against training steps, and resuming.

For each size (the tiny preset, and T5-small: vocabulary 32128, 6 layers,
hidden 512, 8 heads, feed-forward 2048, key/value 64), with batch 16 x (64
encoder + 16 decoder) tokens and AdamW, in one fresh process per size:

1. the median time of one training step (`fit` on a cached batch, after
   warm-up), and the median time of one `GrowthCheckpoint.save()` (the whole
   `GrowingT5Seq2SeqLM`, optimizer state included, plus the index), to the
   local disk and to TF's in-process `ram://` filesystem (a non-local
   filesystem; a real object store adds its upload time). The overhead of
   checkpointing every N steps is `save / (N x step)`, reported for N = 100.
   Goal (reported, not asserted): at most 5% at T5-small size, N = 100.
2. the time from process start to the end of the first training step of
   `keras_fusion.training.run` (the tiny self_fusion run of the resume
   tests, `tools.train`'s path; deep_fusion's until 2026-12-04), started
   fresh and resumed from a checkpoint after the growth, each in a fresh
   process. The
   resume reads the checkpoint and skips the batches already trained on.

Writes benchmarks/results/checkpoint_cost.json (or --output); prints the
machine, the configs and the figures.

    python benchmarks/checkpoint_cost.py [--sizes tiny,small] [--repeats 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmark_utils import in_fresh_process, machine_info, script_setup, versions

ROOT = script_setup(__file__)

# The presets of `keras_fusion.recipes` ("small": T5-small's shape) and
# their vocabularies.
SIZES = {"tiny": 1000, "small": 32128}
BATCH, ENCODER, DECODER = 16, 64, 16
EVERY = 100
GOAL = 0.05


def measure_size(size, repeats, warmup):
    """Step and checkpoint times of one size (in a fresh process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fusion import recipes, storage
    from keras_fusion.checkpointing import GrowthCheckpoint

    config = recipes.target_config(size, SIZES[size])
    model = recipes.compile_model(recipes.build_model(config, 0), keras.optimizers.AdamW(1e-3))
    rng = np.random.default_rng(0)
    vocab = config["vocabulary_size"]
    x = {
        "encoder_token_ids": rng.integers(3, vocab, (BATCH, ENCODER)).astype("int32"),
        "encoder_padding_mask": np.ones((BATCH, ENCODER), "int32"),
        "decoder_token_ids": rng.integers(3, vocab, (BATCH, DECODER)).astype("int32"),
        "decoder_padding_mask": np.ones((BATCH, DECODER), "int32"),
    }
    y = rng.integers(3, vocab, (BATCH, DECODER)).astype("int32")
    data = tf.data.Dataset.from_tensors((x, y, np.ones((BATCH, DECODER), "float32"))).repeat()

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    timer.times = []
    model.fit(data, steps_per_epoch=warmup + repeats * 2, epochs=1, verbose=0, callbacks=[timer])
    step = statistics.median(timer.times[warmup:])
    results = {
        "size": size,
        "config": config,
        "parameters": model.backbone.count_params(),
        "step_seconds": step,
        "steps_timed": len(timer.times) - warmup,
    }
    with tempfile.TemporaryDirectory() as local:
        for where, directory in (
            ("local", os.path.join(local, "ckpt")),
            ("ram", f"ram://bench_{size}/ckpt"),
        ):
            checkpoint = GrowthCheckpoint(directory, keep=2)
            checkpoint.set_model(model)
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                path = checkpoint.save()
                times.append(time.perf_counter() - start)
            save = statistics.median(times[1:])
            results[where] = {
                "save_seconds": save,
                "save_over_step": save / step,
                f"overhead_every_{EVERY}": save / (EVERY * step),
                "file_bytes": len(storage.read_bytes(path)),
            }
    return results


RESUME_SCRIPT = r"""
import os, sys, time
START = time.time()
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests", "tools"))
import keras
from keras_fusion import data, recipes, storage, training
from train_worker import CONFIG

class FirstStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("FIRST_STEP_AFTER", time.time() - START, flush=True)
        os._exit(0)

stage = sys.argv[3]
config = dict(CONFIG, model_dir=sys.argv[1], tokenizer=sys.argv[2])
training.run(training.RunConfig(**config), callbacks=lambda s: [FirstStep()] if s == stage else [])
"""


def resume_times(tokenizer, repeats):
    """Seconds from process start to the end of the first step: fresh vs resumed."""
    script = RESUME_SCRIPT.format(root=ROOT)
    worker = os.path.join(ROOT, "tests", "tools", "train_worker.py")
    out = {"fresh": [], "resumed": []}
    with tempfile.TemporaryDirectory() as tmp:
        resumed_dir = os.path.join(tmp, "resumed")
        # A run killed after the growth (step 12) and its step-16 checkpoint.
        subprocess.run(
            [sys.executable, worker, resumed_dir, tokenizer, "--kill", "main:17"],
            capture_output=True,
            text=True,
            check=False,
        )
        for i in range(repeats):
            for kind in ("fresh", "resumed"):  # interleaved, under the same load
                model_dir = os.path.join(tmp, f"fresh{i}") if kind == "fresh" else resumed_dir
                process = subprocess.run(
                    [sys.executable, "-c", script, model_dir, tokenizer, "main"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                line = [l for l in process.stdout.splitlines() if l.startswith("FIRST_STEP_AFTER")][
                    0
                ]
                out[kind].append(float(line.split()[1]))
    return {
        kind: {"median_seconds": statistics.median(v), "seconds": v} for kind, v in out.items()
    } | {"resumed_over_fresh": statistics.median(out["resumed"]) / statistics.median(out["fresh"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--resume-repeats", type=int, default=3)
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "checkpoint_cost.json")
    )
    args = parser.parse_args(argv)
    machine, vers = machine_info(), versions()
    print("Machine:", machine, "\nVersions:", vers, flush=True)
    result = {
        "machine": machine,
        "versions": vers,
        "batch": [BATCH, ENCODER, DECODER],
        "every": EVERY,
        "goal": GOAL,
        "sizes": {},
    }
    for size in args.sizes.split(","):
        r = in_fresh_process(measure_size, size, args.repeats, args.warmup)
        result["sizes"][size] = r
        print(
            f"{size}: {r['parameters']:,} parameters, "
            f"step {r['step_seconds'] * 1e3:.1f} ms; checkpoint "
            + "; ".join(
                f"{w} {r[w]['save_seconds']:.3f} s = {r[w]['save_over_step']:.1f} steps "
                f"({r[w][f'overhead_every_{EVERY}']:.1%} every {EVERY} steps, "
                f"{r[w]['file_bytes'] / 2**20:.1f} MiB)"
                for w in ("local", "ram")
            ),
            flush=True,
        )
    from keras_fusion import data

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = data.train_tokenizer(data.load_corpus("embedded", "train")[:300], 500, tmp)
        resume = resume_times(tokenizer, args.resume_repeats)
    result["resume"] = resume
    print(
        "First training step after process start: "
        f"fresh {resume['fresh']['median_seconds']:.1f} s, "
        f"resumed {resume['resumed']['median_seconds']:.1f} s "
        f"(ratio {resume['resumed_over_fresh']:.2f})"
    )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print("Written", args.output)


if __name__ == "__main__":
    main()
