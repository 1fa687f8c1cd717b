r"""Train a T5 with growth: data -> tokenizer -> model -> strategy -> fit -> export.

On a laptop, the embedded corpus and the tiny preset (what `make demo` runs):

    python -m tools.train --recipe=deep_fusion --preset=tiny --steps=1200 \
        --model_dir=runs/demo

Deep Fusion is the fusion tree of depth 1 (nodes leaf0 and leaf1, the two
half-width partners, then root, their fusion); the paper's tree is 4 -> 2 ->
1. Each node is runnable as its own job (`--list_nodes` prints them, inputs
first; `--node=NAME` trains one into the shared --model_dir; without --node
every unfinished node runs in order):

    python -m tools.train --recipe=fusion_tree --steps=1200 --growth_step=300 \
        --model_dir=runs/tree --list_nodes
    python -m tools.train --recipe=fusion_tree --steps=1200 --growth_step=300 \
        --model_dir=runs/tree --node=leaf0

On Cloud TPU, C4 from a prepared TFDS directory, everything on Cloud Storage,
XLA, 100 steps per execution, bfloat16 compute:

    python -m tools.train --recipe=deep_fusion --preset=base --steps=100000 \
        --data=tfds:c4/en --data_dir=gs://BUCKET/tfds --strategy=tpu --tpu=NAME \
        --model_dir=gs://BUCKET/run --optimizer=adafactor --lr_schedule=inverse_sqrt \
        --warmup_steps=10000 --jit_compile --steps_per_execution=100 \
        --mixed_precision=mixed_bfloat16 --checkpoint_every=1000

Pre-emption safe: every --checkpoint_every steps the model, its optimizer,
its growth history and the metrics are checkpointed in MODEL_DIR/checkpoints
(a tree's node: MODEL_DIR/nodes/NAME/checkpoints);
SIGTERM (the pre-emption notice) saves one more. Run the same command again
and it resumes from the newest good checkpoint, at the same stage, step and
data batch. --fresh starts over; a MODEL_DIR of a run with other flags is
refused.

Writes to --model_dir (any TF filesystem: a local path, gs://, ram://):
run.json (the flags), checkpoints/ or nodes/, tokenizer/, logs/ (TensorBoard),
metrics.json (step, training FLOPs so far, train and eval loss, growth
events), loss_vs_flops.png, final.keras, and a SavedModel in --export_dir
(none with --noexport).
"""

import dataclasses
import os
import signal
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_fusion import growth, memory, optimizers, recipes, training  # noqa: E402
from tools import define_auto_bool, or_exit  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("recipe", "deep_fusion", list(recipes.RECIPES), "How the final model is reached.")
flags.DEFINE_string(
    "growth_schedule",
    None,
    "Overrides the schedule of self_fusion, deepen, stack or scratch, e.g. "
    "'self_fuse@1000,deepen@3000:layers=2'.",
)
flags.DEFINE_integer(
    "growth_step",
    None,
    "Optimizer step of the recipe's growth; deep_fusion and fusion_tree: each node's steps "
    f"(default: {growth.DEFAULT_GROWTH_FRACTION} of --steps, growth.DEFAULT_GROWTH_FRACTION; "
    f"deep_fusion and fusion_tree: {growth.FUSION_GROWTH_FRACTION}, "
    "growth.FUSION_GROWTH_FRACTION).",
)
flags.DEFINE_integer(
    "tree_depth",
    2,
    "fusion_tree's depth: 2 is the paper's 4 -> 2 -> 1, 1 is Deep Fusion's 2 -> 1.",
)
flags.DEFINE_string(
    "node",
    None,
    "deep_fusion, fusion_tree: train only this node (see --list_nodes) into the shared "
    "--model_dir; "
    "a node whose inputs are not finished exits 2 and writes nothing.",
)
flags.DEFINE_bool(
    "list_nodes",
    False,
    "deep_fusion, fusion_tree: print the node names, one a line, inputs before their users; "
    "train nothing.",
)
flags.DEFINE_integer(
    "wait_for_inputs",
    0,
    "With --node: wait up to this many seconds for the node's inputs to finish "
    "(checking every 30 s) instead of exiting 2 at once.",
)
flags.DEFINE_string("preset", "tiny", f"Size of the final model: {', '.join(recipes.PRESETS)}.")
flags.DEFINE_integer("num_layers", None, "Overrides the preset.")
flags.DEFINE_integer("num_heads", None, "Overrides the preset.")
flags.DEFINE_integer("hidden_dim", None, "Overrides the preset.")
flags.DEFINE_integer("intermediate_dim", None, "Overrides the preset.")
flags.DEFINE_integer("key_value_dim", None, "Overrides the preset.")
# The optimizer defaults are RunConfig's, measured by
# benchmarks/training_defaults.py (README, "Training defaults").
DEFAULTS = training.RunConfig
flags.DEFINE_enum(
    "optimizer",
    DEFAULTS.optimizer,
    list(optimizers.OPTIMIZERS),
    "Optimizer: adafactor (T5's; Keras caps its rate at 1/sqrt(step)), adafactor_uncapped "
    "(steps at the rate given), adamw, or adamw_scale (AdamW scaled by each parameter's RMS, "
    "nanoT5's).",
)
flags.DEFINE_float("learning_rate", DEFAULTS.learning_rate, "Peak learning rate.")
flags.DEFINE_enum(
    "lr_schedule",
    DEFAULTS.lr_schedule,
    list(optimizers.LR_SCHEDULES),
    "Learning-rate schedule (wsd: warm-up, stable, decay over the last fifth).",
)
flags.DEFINE_integer(
    "warmup_steps",
    DEFAULTS.warmup_steps,
    "Linear warm-up steps of the schedule (default: 5% of --steps).",
)
flags.DEFINE_integer(
    "steps",
    1200,
    "Optimizer steps of the final model (a fusion tree's root: its leaves and middle nodes "
    "train growth_step steps each besides).",
)
flags.DEFINE_integer("batch_size", 16, "Global batch size.")
flags.DEFINE_integer("input_length", 64, "Encoder tokens per example.")
flags.DEFINE_integer("target_length", 16, "Decoder tokens per example.")
flags.DEFINE_integer("vocabulary_size", 1000, "SentencePiece vocabulary, sentinels included.")
flags.DEFINE_integer(
    "seed",
    0,
    "Random seed (a fusion tree's leaf i uses seed + i, and its own data order).",
)
flags.DEFINE_string(
    "data", "embedded", "'embedded', a text file glob, or 'tfds:NAME' (e.g. tfds:c4/en)."
)
flags.DEFINE_string("data_dir", None, "TFDS data directory (for tfds: data).")
flags.DEFINE_string(
    "tokenizer", None, "An existing SentencePiece .model (default: train one, cached)."
)
flags.DEFINE_string(
    "init_from",
    None,
    "Start from a trained T5: a Hugging Face T5 folder, a keras-hub preset or a .keras file. "
    "Its architecture is the starting model (the recipe grows it; --preset and dimensions are "
    "then unused) and its tokenizer is the run's.",
)
flags.DEFINE_string("model_dir", "runs/latest", "Where models, logs, metrics and plots go.")
flags.DEFINE_string("export_dir", None, "SavedModel directory (default: MODEL_DIR/export).")
flags.DEFINE_bool(
    "export",
    True,
    "Write the SavedModel at the end (about 10 s for the tiny preset, tracing two graphs). "
    "--noexport skips it: for sweeps, or runs whose final.keras only feeds another run.",
)
flags.DEFINE_enum(
    "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy."
)
flags.DEFINE_string("tpu", None, "TPU name or address, for --strategy=tpu.")
flags.DEFINE_string(
    "learning_rate_scale",
    "auto",
    "Learning-rate factor after each growth: 'auto' (under Adafactor and adamw_scale the "
    "factor the operator divides a kernel's RMS by: sqrt(2) after fuse, 2 after self fusion, "
    "else 1; under AdamW 0.5 after self fusion, else 1), 'width', or a number.",
)
flags.DEFINE_integer(
    "rewarmup_steps", 0, "Ramp the learning rate again over N steps after each growth (0: off)."
)
flags.DEFINE_enum(
    "growth_optimizer_state",
    "carry",
    list(training.GrowthCallback.OPTIMIZER_SLOTS),
    "Optimizer slots across a growth: mapped with the weights (carry), zeroed (reset), or "
    "mapped but zero on the entries the growth creates (reset_new).",
)
flags.DEFINE_integer("eval_every", 100, "Evaluate every N steps (and at the last step).")
flags.DEFINE_integer("eval_batches", 8, "Held-out batches per evaluation.")
flags.DEFINE_integer(
    "checkpoint_every",
    100,
    "Checkpoint into MODEL_DIR/checkpoints every N steps; "
    "the same command resumes from the newest.",
)
flags.DEFINE_bool("fresh", False, "Start over: delete what an earlier run wrote in --model_dir.")
define_auto_bool(
    "jit_compile",
    "auto",
    "XLA for the train step (Keras' jit_compile): --jit_compile, --nojit_compile, or auto "
    "(Keras chooses).",
)
flags.DEFINE_integer(
    "steps_per_execution",
    1,
    "Optimizer steps per call of the compiled step (TPU: 100s); stages must be multiples of it.",
)
flags.DEFINE_bool(
    "retain_freed_memory",
    True,
    "Keep freed memory in the process between steps (glibc's mallopt, "
    "keras_fusion.memory.retain_freed_memory): on CPU, steps stop page-faulting "
    "their buffers in again; the process keeps its peak resident memory.",
)
flags.DEFINE_enum(
    "mixed_precision",
    "float32",
    list(training.PRECISIONS),
    "Keras dtype policy: mixed_bfloat16 computes in bfloat16 with float32 variables (TPU).",
)


def run_or_exit(config, callbacks=()):
    """`training.run(config)`, printing its summary; a bad input exits 2 with
    one line, a pre-emption 143 (128 + SIGTERM) once its checkpoint is saved."""
    try:
        summary = or_exit(training.run, config, callbacks=callbacks)
    except training.Preempted as preempted:
        print(preempted, file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    print(summary)


# How often --wait_for_inputs looks at the inputs' done.json files.
WAIT_POLL_SECONDS = 30.0


def wait_for_inputs(config, seconds, poll=None):
    """Wait until `config.node`'s inputs are finished, at most `seconds`."""
    poll = WAIT_POLL_SECONDS if poll is None else poll
    deadline = time.monotonic() + seconds
    while True:
        missing = or_exit(training.missing_inputs, config)
        if not missing or time.monotonic() >= deadline:
            return
        print(f"Node {config.node} waits for {', '.join(missing)}...", flush=True)
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


def main(argv):
    del argv
    config = training.RunConfig.from_flags(FLAGS)
    if FLAGS.list_nodes:
        if config.fusion_depth is None:
            print(
                "error: --list_nodes lists the nodes of --recipe=deep_fusion or fusion_tree.",
                file=sys.stderr,
            )
            sys.exit(2)
        for stage in or_exit(training.tree_stages, dataclasses.replace(config, node=None)):
            print(stage.name)
        return
    if FLAGS.wait_for_inputs:
        if config.node is None:
            print("error: --wait_for_inputs needs --node.", file=sys.stderr)
            sys.exit(2)
        wait_for_inputs(config, FLAGS.wait_for_inputs)
    if FLAGS.retain_freed_memory:
        memory.retain_freed_memory()
    run_or_exit(config)


if __name__ == "__main__":
    app.run(main)
