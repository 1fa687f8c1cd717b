"""One `tools.train`-style run of the tiny self_fusion recipe, killed on request.

    python tests/tools/train_worker.py MODEL_DIR TOKENIZER [--kill STAGE:STEP]
        [--kill_in_checkpoint STAGE:STEP] [--sigterm STAGE:STEP] [--flag NAME=VALUE ...]

`--kill` sends SIGKILL to this process at the end of that optimizer step of
that stage (after the step's growth, rows and checkpoint); `--kill_in_checkpoint`
kills it while the checkpoint of that step is being written (its model file
written and cut in half, the index not yet); `--sigterm` sends the real
pre-emption notice (SIGTERM) at that step. The run is `keras_fusion.training.run`,
as `tools.train` calls it; the exit code is `tools.train`'s.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The tiny run of the resume tests: one fit with a growth inside it (self
# fusion at step 12 of 24); checkpoints every 4 steps, rows every 6. (A
# fusion tree's nodes, deep_fusion's, are killed and resumed in
# test_train_tree.py.)
CONFIG = dict(
    recipe="self_fusion",
    preset="tiny",
    hidden_dim=32,
    num_heads=2,
    key_value_dim=16,
    intermediate_dim=64,
    steps=24,
    growth_step=12,
    eval_every=6,
    eval_batches=1,
    checkpoint_every=4,
    batch_size=8,
    input_length=32,
    target_length=8,
    export=False,  # what --flag export=true turns back on
)


def stage_step(value):
    stage, step = value.split(":")
    return stage, int(step)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("tokenizer")
    parser.add_argument("--kill", type=stage_step)
    parser.add_argument("--kill_in_checkpoint", type=stage_step)
    parser.add_argument("--sigterm", type=stage_step)
    parser.add_argument("--flag", action="append", default=[])
    args = parser.parse_args()

    import keras

    from keras_fusion import checkpointing, storage, training

    config = dict(CONFIG, model_dir=args.model_dir, tokenizer=args.tokenizer)
    for flag in args.flag:
        name, value = flag.split("=", 1)
        kind = training.RunConfig.__dataclass_fields__[name].type
        config[name] = value == "true" if kind is bool else kind(value)
    current = {"stage": None}

    class Signals(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            at = (current["stage"], int(self.model.optimizer.iterations.numpy()))
            if at == args.kill:
                print(f"KILLED at {at[0]}:{at[1]}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if at == args.sigterm:
                os.kill(os.getpid(), signal.SIGTERM)

    def callbacks(stage):
        current["stage"] = stage
        return [Signals()]

    if args.kill_in_checkpoint:
        write_entry = checkpointing.write_entry

        def die_mid_write(directory, entry, keep=2):
            if (
                entry.get("state", {}).get("stage"),
                entry["step"],
            ) == args.kill_in_checkpoint and entry["file"]:
                path = storage.join(directory, entry["file"])
                data = storage.read_bytes(path)
                with open(path, "wb") as f:  # the model file half written
                    f.write(data[: len(data) // 2])
                print(
                    f"KILLED at {entry['state']['stage']}:{entry['step']} (in checkpoint)",
                    flush=True,
                )
                os.kill(os.getpid(), signal.SIGKILL)
            return write_entry(directory, entry, keep)

        checkpointing.write_entry = die_mid_write
    from tools.train import run_or_exit

    run_or_exit(training.RunConfig(**config), callbacks=callbacks)


if __name__ == "__main__":
    main()
