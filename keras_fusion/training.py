"""The training recipes behind `tools/train`: models, optimizers, metrics.

Recipes (the growth happens inside `fit`, through `GrowthCallback`):

- `scratch`: the target model trained from random initialisation.
- `deep_fusion` (the paper's): two models of half the target width trained
  from different seeds and data orders; at `growth_step` the first is fused
  with the second and the fused model, of the target size, trains on.
- `self_fusion`: one half-width model, fused with itself at `growth_step`.
- `deepen`: a model with half the target depth, given identity layers at
  `growth_step`.

Every recipe counts training FLOPs (`keras_fusion.flops`), the partner's
included, so runs compare at equal compute.
"""

import dataclasses
import io
import os
import signal
import socket
import sys
import time

import keras
import numpy as np

from keras_fusion import checkpointing, flops, growth_maps, storage
from keras_fusion.growth import DEFAULT_GROWTH_FRACTION
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables

PRESETS = {
    # T5 shapes; vocabulary_size comes from the tokenizer.
    "tiny": dict(num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128, key_value_dim=16),
    "small": dict(num_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048, key_value_dim=64),
    "base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072, key_value_dim=64),
}
RECIPES = ("deep_fusion", "self_fusion", "deepen", "scratch")
OPTIMIZERS = ("adafactor", "adamw")
LR_SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def target_config(preset, vocabulary_size, **overrides):
    """The config of the model a recipe ends with."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
    config = dict(PRESETS[preset], vocabulary_size=vocabulary_size, dropout=0.0,
                  activation="gelu", use_gated_activation=True, tie_embedding_weights=True)
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def start_config(recipe, config):
    """The config a recipe starts from (before growth)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in ("deep_fusion", "self_fusion"):
        for key in ("hidden_dim", "num_heads", "intermediate_dim"):
            if config[key] % 2:
                raise ValueError(f"{recipe} halves {key}, which must be even; got {config[key]}.")
        return dict(config, hidden_dim=config["hidden_dim"] // 2, num_heads=config["num_heads"] // 2,
                    intermediate_dim=config["intermediate_dim"] // 2)
    if recipe == "deepen":
        if config["num_layers"] < 2:
            raise ValueError(f"deepen halves num_layers, which must be >= 2; got {config['num_layers']}.")
        return dict(config, num_layers=config["num_layers"] // 2)
    return dict(config)


def growth_schedule(recipe, config, growth_step, partner_path=None):
    """The schedule string of a recipe."""
    if recipe == "scratch":
        return ""
    if recipe == "deep_fusion":
        return f"fuse@{growth_step}:partner={partner_path}"
    if recipe == "self_fusion":
        return f"self_fuse@{growth_step}"
    return f"deepen@{growth_step}:layers={config['num_layers'] - config['num_layers'] // 2}"


def build_model(config, seed):
    """A compiled-ready `GrowingT5Seq2SeqLM` of `config`, seeded."""
    keras.utils.set_random_seed(seed)
    return GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(FusionT5Backbone(**config)))


def make_optimizer(name, learning_rate, schedule="constant", warmup_steps=0, total_steps=1):
    """Adafactor (T5's) or AdamW, with a learning-rate schedule."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    rate = learning_rate
    if schedule == "inverse_sqrt":
        rate = InverseSqrt(learning_rate, max(warmup_steps, 1))
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate, max(total_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=0.0)
    return keras.optimizers.Adafactor(rate)


@keras.saving.register_keras_serializable(package="keras_fusion")
class InverseSqrt(keras.optimizers.schedules.LearningRateSchedule):
    """T5's schedule: linear warm-up, then `rate * sqrt(warmup / step)`."""

    def __init__(self, learning_rate, warmup_steps):
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") + 1.0
        warmup = float(self.warmup_steps)
        return self.learning_rate * keras.ops.minimum(step / warmup, keras.ops.sqrt(warmup / step))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def compile_model(model, optimizer, jit_compile="auto", steps_per_execution=1):
    """Compile for span-corruption training (loss on logits, token accuracy).

    `jit_compile` and `steps_per_execution` are Keras' own (XLA; optimizer
    steps per call of the compiled train function, which TPUs need): growth
    keeps both (`GrowthCallback` retraces the grown step with them).
    """
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model


@dataclasses.dataclass
class MetricsRow:
    step: int
    flops: float
    train_loss: float
    eval_loss: float
    eval_accuracy: float
    num_parameters: int
    growth: str = ""


class MetricsRecorder(keras.callbacks.Callback):
    """Counts training FLOPs and evaluates held-out loss every `every` steps.

    Rows (step, FLOPs so far, train loss, eval loss and accuracy, parameters,
    growth event) go to `rows` and, rewritten after each one, to `path` as
    JSON (any TF filesystem). A row is recorded whenever the optimizer step
    reaches a multiple of `every` (with `steps_per_execution > 1`, at the
    first execution boundary at or after it, where callbacks run) and at
    `final_step`. FLOPs of the current architecture are counted per step,
    so they follow each growth; `flops_offset` adds compute spent before this
    fit (a partner's training).

    A row's `train_loss` is the mean training loss of the steps since the
    previous row (not Keras' running mean of the epoch), so that a run
    resumed from a checkpoint (`state` / `restore`) records the same rows as
    one that never stopped.

    Args:
        eval_data: a finite dataset of `(x, y, sample_weight)` batches.
        batch_size, encoder_length, decoder_length: the training shapes.
        every: evaluation period in optimizer steps.
        path: optional JSON path.
        flops_offset: FLOPs already spent.
        growth_callback: the run's `GrowthCallback`, to mark its events.
        stage: a label saved with the rows.
        final_step: optional step at which a last row is always recorded.
    """

    def __init__(self, eval_data, batch_size, encoder_length, decoder_length, every,
                 path=None, flops_offset=0.0, growth_callback=None, stage="", final_step=None):
        super().__init__()
        self.eval_data = eval_data
        self.shape = (batch_size, encoder_length, decoder_length)
        self.every = every
        self.path = path
        self.flops = float(flops_offset)
        self.growth_callback = growth_callback
        self.stage = stage
        self.final_step = final_step
        self.rows = []
        self._marked = 0
        self._window = [0.0, 0]  # training-loss sum and steps since the last row
        self._last_step = None

    def state(self):
        """What a checkpoint must keep to resume recording exactly."""
        return {"rows": [dataclasses.asdict(r) for r in self.rows], "flops": self.flops,
                "marked": self._marked, "window": list(self._window)}

    def restore(self, state):
        self.rows = [MetricsRow(**row) for row in state["rows"]]
        self.flops = state["flops"]
        self._marked = state["marked"]
        self._window = list(state["window"])

    def on_train_begin(self, logs=None):
        self._last_step = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._epoch_sum = self._last_step, 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._release_stale_eval()
        step = int(self.model.optimizer.iterations.numpy())
        done = step - self._last_step
        self.flops += done * flops.training_flops(backbone_config(self.model.backbone), *self.shape)
        # Keras logs the epoch's running mean: recover this call's steps' sum.
        epoch_sum = float((logs or {}).get("loss", np.nan)) * (step - self._epoch_start)
        self._window[0] += epoch_sum - self._epoch_sum
        self._window[1] += done
        self._epoch_sum = epoch_sum
        last, self._last_step = self._last_step, step
        if step // self.every > last // self.every or step == self.final_step:
            self.record(step, self._window[0] / max(self._window[1], 1))
            self._window = [0.0, 0]

    def on_train_end(self, logs=None):
        self._release_stale_eval()

    def _release_stale_eval(self):
        """Drop the evaluation function of a model a growth has replaced.

        `_batch_sums` closes over the inner model it was traced for (and its
        concrete function captures that model's variables): kept until the
        next evaluation, or past the end of `fit` when no evaluation follows
        the last growth, it would keep the replaced model alive.
        """
        if getattr(self, "_eval_lm", None) is not None and self._eval_lm is not self.model.lm:
            self._eval_lm = self._batch_sums = None

    def record(self, step, train_loss):
        eval_loss, eval_accuracy = self.evaluate()
        events = self.growth_callback.events[self._marked:] if self.growth_callback else []
        self._marked += len(events)
        row = MetricsRow(step=step, flops=self.flops, train_loss=train_loss,
                         eval_loss=eval_loss, eval_accuracy=eval_accuracy,
                         num_parameters=self.model.backbone.count_params(),
                         growth=";".join(e["entry"] for e in events))
        self.rows.append(row)
        if self.path:
            storage.write_json(self.path, {"stage": self.stage, "rows": [dataclasses.asdict(r) for r in self.rows]})

    def evaluate(self):
        """Token-weighted held-out loss and accuracy.

        Not `model.evaluate`: inside `fit` it would reset the compiled
        metrics that `fit` is accumulating, and the epoch logs would report
        the evaluation instead of training.
        """
        import tensorflow as tf

        lm = self.model.lm
        if getattr(self, "_eval_lm", None) is not lm:  # retrace after a growth only
            self._eval_lm = lm

            @tf.function
            def batch_sums(x, y, weight):
                logits = lm(x, training=False)
                losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32)
                return tf.reduce_sum(losses * weight), tf.reduce_sum(correct * weight), tf.reduce_sum(weight)

            self._batch_sums = batch_sums
        totals = np.zeros(3)
        for x, y, weight in self.eval_data:
            totals += [float(v) for v in self._batch_sums(x, y, weight)]
        return totals[0] / totals[2], totals[1] / totals[2]


def write_json_atomic(path, value):
    """`storage.write_json` (kept for the benchmarks that call it)."""
    return storage.write_json(path, value)


def plot_metrics(curves, path, title="Held-out loss against training compute"):
    """PNG of eval loss against training FLOPs, growth events marked.

    Args:
        curves: `{label: [MetricsRow or dict, ...]}`.
        path: the PNG to write (any TF filesystem; atomically on local disk).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, rows in curves.items():
        rows = [dataclasses.asdict(r) if isinstance(r, MetricsRow) else r for r in rows]
        line, = axis.plot([r["flops"] for r in rows], [r["eval_loss"] for r in rows], marker=".", label=label)
        for r in rows:
            if r["growth"]:
                axis.axvline(r["flops"], color=line.get_color(), linestyle=":", alpha=0.7)
    axis.set_xlabel("training FLOPs (all models of the run)")
    axis.set_ylabel("held-out loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    return storage.write_bytes(path, image.getvalue())


def fit_verbosity():
    """Progress bars on a terminal, one line per epoch in logs (CI)."""
    return 1 if sys.stdout.isatty() else 2


def timed(label):
    """Context manager printing how long a step took."""

    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            print(f"{label}...", flush=True)
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                print(f"{label}: done in {time.perf_counter() - self.start:.1f} s", flush=True)

    return _Timer()


@dataclasses.dataclass
class RunConfig:
    """Everything `run` needs (what `tools/train` flags set)."""

    recipe: str = "deep_fusion"
    growth_schedule: str = None
    growth_step: int = None
    preset: str = "tiny"
    num_layers: int = None
    num_heads: int = None
    hidden_dim: int = None
    intermediate_dim: int = None
    key_value_dim: int = None
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    steps: int = 1200
    batch_size: int = 16
    input_length: int = 64
    target_length: int = 16
    vocabulary_size: int = 1000
    seed: int = 0
    data: str = "embedded"
    data_dir: str = None
    tokenizer: str = None
    model_dir: str = "runs/latest"
    export_dir: str = None
    strategy: str = "default"
    tpu: str = None
    eval_every: int = 100
    eval_batches: int = 8
    learning_rate_scale: str = "auto"
    rewarmup_steps: int = 0
    growth_optimizer_state: str = "carry"
    checkpoint_every: int = 100
    fresh: bool = False
    jit_compile: str = "auto"
    steps_per_execution: int = 1
    mixed_precision: str = "float32"
    init_from: str = None

    @classmethod
    def from_flags(cls, flag_values):
        return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})

    def check(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}.")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}.")
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "input_length", "target_length",
                     "checkpoint_every", "steps_per_execution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        # The default growth time: `growth.DEFAULT_GROWTH_FRACTION` of the
        # run (benchmarks/growth_vs_scratch_v2.py; README "Growth against scratch").
        step = self.growth_step or max(round(DEFAULT_GROWTH_FRACTION * self.steps), 1)
        if self.recipe != "scratch" and not 1 <= step < self.steps:
            raise ValueError(f"growth_step must be in [1, steps={self.steps}), got {step}.")
        if self.jit_compile not in JIT_COMPILE:
            raise ValueError(f"jit_compile must be one of {tuple(JIT_COMPILE)}, got {self.jit_compile!r}.")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}.")
        # Keras runs whole executions: a stage must end on an execution boundary.
        stage_lengths = {"steps": self.steps}
        if self.recipe == "deep_fusion":
            stage_lengths["growth_step (the partner's steps)"] = step
        for name, length in stage_lengths.items():
            if length % self.steps_per_execution:
                raise ValueError(
                    f"{name} ({length}) must be a multiple of steps_per_execution "
                    f"({self.steps_per_execution}): Keras runs whole executions of "
                    f"{self.steps_per_execution} steps."
                )
        if self.steps_per_execution > 1 and self.strategy in ("mirrored", "multi_worker"):
            raise ValueError(
                f"steps_per_execution > 1 fails under --strategy={self.strategy} in Keras 3.15 "
                "(a Keras bug, with or without growth); use steps_per_execution=1 there."
            )
        self.growth_options()  # raises on a bad value
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError("--strategy=tpu needs --tpu (a TPU name, 'local' on a TPU VM, or grpc://HOST:PORT).")
        return dataclasses.replace(self, growth_step=step)

    def growth_options(self):
        """`GrowthCallback` keyword arguments from the flags."""
        scale = self.learning_rate_scale
        if scale not in ("auto", "width"):
            try:
                scale = float(scale)
            except (TypeError, ValueError):
                scale = None
            if scale is None or not scale > 0:
                raise ValueError(
                    f"learning_rate_scale must be 'auto', 'width' or a number > 0, got {self.learning_rate_scale!r}."
                )
        if self.rewarmup_steps < 0:
            raise ValueError(f"rewarmup_steps must be >= 0, got {self.rewarmup_steps}.")
        if self.growth_optimizer_state not in ("carry", "reset"):
            raise ValueError(
                f"growth_optimizer_state must be one of ('carry', 'reset'), got {self.growth_optimizer_state!r}."
            )
        return dict(learning_rate_scale=scale, rewarmup_steps=self.rewarmup_steps,
                    optimizer_state=self.growth_optimizer_state)

    def run_flags(self):
        """The flags that define what a run computes (compared on resume)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FLAGS}


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
PRECISIONS = ("float32", "mixed_bfloat16")
# Flags that may change when a run is resumed: they do not change what it
# computes (a pre-empted TPU VM may come back under another TPU name).
RESUMABLE_FLAGS = ("fresh", "tpu", "export_dir", "checkpoint_every")
# What `run` writes in model_dir, deleted by `fresh=True`.
RUN_FILES = ("run.json", "metrics.json", "metrics_partner.json", "metrics_main.json", "partner.keras",
             "final.keras", "loss_vs_flops.png")
RUN_FOLDERS = ("checkpoints", "logs", "export")


def make_strategy(name, tpu=None):
    """The tf.distribute strategy for `--strategy`."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return multi_worker_strategy()
    if name == "tpu":
        check_tpu_reachable(tpu)
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of default, mirrored, multi_worker, tpu; got {name!r}.")


def check_tpu_reachable(tpu, timeout=5.0):
    """Raise a ValueError at once when `tpu` cannot be reached.

    TensorFlow's resolver would otherwise wait on an address or a metadata
    server that never answers. `tpu` is a `grpc://HOST:PORT` address, `local`
    (a Cloud TPU VM's own chips) or a TPU name (resolved through the GCE
    metadata server, which only Google Cloud VMs reach).
    """
    if not tpu:
        raise ValueError("--strategy=tpu needs --tpu (a TPU name, 'local' on a TPU VM, or grpc://HOST:PORT).")
    if tpu == "local":
        if not (storage.glob("/dev/accel*") or storage.glob("/dev/vfio/[0-9]*")):
            raise ValueError(
                "--tpu=local: this machine has no TPU device (no /dev/accel* or /dev/vfio/*); run on a "
                "Cloud TPU VM, or give a TPU name or grpc://HOST:PORT."
            )
        return
    if tpu.startswith("grpc://"):
        host, _, port = tpu[len("grpc://"):].rpartition(":")
        where, what = (host, int(port)) if port.isdigit() else (tpu[len("grpc://"):], 8470), f"--tpu={tpu}"
    else:
        host = os.environ.get("GCE_METADATA_IP") or os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
        where = (host.split(":")[0], int(host.split(":")[1]) if ":" in host else 80)
        what = f"--tpu={tpu} (a TPU name, resolved through the GCE metadata server {where[0]})"
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as error:
        raise ValueError(
            f"no TPU reachable: {what} does not answer ({error}). Check the name or address, that this VM is "
            "in the TPU's network, or run without --strategy=tpu."
        ) from None


def multi_worker_strategy(timeout_seconds=None):
    """`MultiWorkerMirroredStrategy` from TF_CONFIG, patched for Keras 3.15.

    Create it at program start, before any other TensorFlow op. With
    `timeout_seconds`, a collective that waits longer (a worker died or
    hangs) fails instead of blocking forever.

    Two Keras 3.15 bugs break `fit` with dict inputs under this strategy,
    with or without growth, and are worked around by wrapping
    `strategy.reduce`:
    1. `TensorFlowTrainer._maybe_symbolic_build` reduces the whole first
       batch at once; the strategy reduces single tensors only ("Attempt to
       convert a value ({'encoder_token_ids': PerReplica...}) ... to a
       Tensor"). Reduce leaf by leaf.
    2. `reduce_per_replica(..., reduction="mean")` reduces scalar losses
       along axis 0 ("Invalid reduction dimension 0 for input with 0
       dimensions"). Use `axis=None` for scalars.
    """
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=timeout_seconds,
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    reduce = strategy.reduce

    def reduce_leaf(reduce_op, value, axis):
        if axis is not None and strategy.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return reduce(reduce_op, value, axis=axis)

    def nested_reduce(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_leaf(reduce_op, v, axis), value)

    strategy.reduce = nested_reduce
    return strategy


class Preempted(Exception):
    """SIGTERM arrived (a pre-emption notice): the run saved a checkpoint and stopped."""


class PreemptionWatch(keras.callbacks.Callback):
    """Turns SIGTERM into "save a checkpoint, then stop" between two steps.

    Cloud TPU VMs and spot VMs send SIGTERM shortly before they are
    pre-empted. While the watch is installed (`with watch:`), SIGTERM only
    sets a flag: at the next step boundary the callback saves `checkpoint`
    and stops `fit`; the caller then raises `Preempted`.
    """

    def __init__(self):
        super().__init__()
        self.requested = False
        self.checkpoint = None
        self.saved_step = None
        self._previous = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame):
        print("SIGTERM received: saving a checkpoint at the next step boundary, then stopping.", flush=True)
        self.requested = True

    def on_train_batch_end(self, batch, logs=None):
        if self.requested and self.saved_step is None:
            self.checkpoint.save()
            self.saved_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True

    def stop_if_requested(self, where):
        if self.requested:
            saved = (f"a checkpoint at step {self.saved_step} was saved" if self.saved_step is not None
                     else "the last checkpoint stands")
            raise Preempted(f"pre-empted (SIGTERM) {where}: {saved}; run the same command to resume.")


class StopAtStep(keras.callbacks.Callback):
    """Stops `fit` once the optimizer reaches `step`."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            self.model.stop_training = True


def prepare_model_dir(config):
    """Check that `model_dir` holds this run or none, then record the run's flags.

    With `config.fresh`, what an earlier run wrote there is deleted first.
    A model_dir that holds a run with other flags is refused (nothing is
    written): resuming it would mix two runs.
    """
    model_dir = config.model_dir
    run_path = storage.join(model_dir, "run.json")
    flags = config.run_flags()
    if config.fresh:
        for name in RUN_FOLDERS:
            storage.rmtree(storage.join(model_dir, name))
        for name in RUN_FILES:
            storage.remove(storage.join(model_dir, name))
    elif storage.exists(run_path):
        saved = storage.read_json(run_path)["flags"]
        differ = [k for k in sorted(set(saved) | set(flags)) if saved.get(k) != flags.get(k)]
        if differ:
            listed = "; ".join(f"--{k}: {saved.get(k)!r} there, {flags.get(k)!r} now" for k in differ)
            raise ValueError(
                f"--model_dir={model_dir} holds a run with other flags ({listed}). Give the same flags to "
                "resume it, --fresh to start over there, or another --model_dir."
            )
    storage.write_json(run_path, {"flags": flags})


def run(config, callbacks=()):
    """Run one recipe end to end, resuming from model_dir's checkpoints; returns a summary.

    Every `checkpoint_every` steps the model being trained (the partner in
    deep_fusion's first stage), its optimizer, growth history and the
    metrics so far are checkpointed in `model_dir/checkpoints`. Started
    again with the same config, `run` resumes from the newest good
    checkpoint: same stage, same step, the growths already applied kept and
    those not yet saved applied, and the data at the same batch (the
    pipeline is deterministic for a seed; the batches already trained on are
    skipped). SIGTERM saves a checkpoint and raises `Preempted`.

    Args:
        config: a `RunConfig`.
        callbacks: extra Keras callbacks for every `fit` of the run, or a
            function of the stage (`"partner"`, `"main"`) returning them.
    """
    config = config.check()
    with PreemptionWatch() as watch:
        return _run(config, watch, callbacks if callable(callbacks) else lambda stage: list(callbacks))


def _run(config, watch, extra_callbacks):
    from keras_fusion import data
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.export import export_saved_model

    model_dir = config.model_dir
    checkpoints = storage.join(model_dir, "checkpoints")
    if config.strategy == "tpu":
        check_tpu_reachable(config.tpu)  # fail in seconds, before anything is read or written
    prepare_model_dir(config)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    with timed(f"Loading corpus {config.data!r}"):
        train_texts = data.load_corpus(config.data, "train", config.data_dir)
        valid_texts = data.load_corpus(config.data, "validation", config.data_dir)
    initial = None
    if config.init_from:
        with timed(f"Loading the starting model from {config.init_from}"):
            initial, tokenizer_path = init_from(config.init_from, config.tokenizer, model_dir)
        start = backbone_config(initial.backbone)
        target = grown_config(config.recipe, start)
    else:
        if config.tokenizer:
            tokenizer_path = config.tokenizer
        else:
            with timed("Tokenizer (SentencePiece, cached by content)"):
                tokenizer_path = data.train_tokenizer(train_texts, config.vocabulary_size,
                                                      storage.join(model_dir, "tokenizer"))
        target = target_config(config.preset, data.vocabulary_size(tokenizer_path), num_layers=config.num_layers,
                               num_heads=config.num_heads, hidden_dim=config.hidden_dim,
                               intermediate_dim=config.intermediate_dim, key_value_dim=config.key_value_dim)
        start = start_config(config.recipe, target)
    vocabulary_size = data.vocabulary_size(tokenizer_path)
    if vocabulary_size != start["vocabulary_size"]:
        raise ValueError(f"the tokenizer {tokenizer_path} has {vocabulary_size} pieces but the model's "
                         f"vocabulary_size is {start['vocabulary_size']}.")
    strategy = make_strategy(config.strategy, config.tpu)
    shape = (config.batch_size, config.input_length, config.target_length)
    watch.stop_if_requested("before training")

    def compiled(model):
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.lr_schedule,
                                   config.warmup_steps, config.steps)
        return compile_model(model, optimizer, JIT_COMPILE[config.jit_compile], config.steps_per_execution)

    # Models first: keras.utils.set_random_seed (in build_model) resets
    # TensorFlow's random state and clears its kernel cache, which also
    # deletes the SentencePiece resource of an eager tensorflow-text
    # tokenizer (tensorflow/text#570); seed everything before data exists.
    # A resumed run builds them too, so that its random state is the same.
    def built(seed):
        if initial is None:
            return build_model(start, seed)
        keras.utils.set_random_seed(seed)  # the data order and any noise
        return GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM.from_parameters(
            start, growth_maps.read(backbone_variables(initial.backbone)), preprocessor=initial.preprocessor))

    with strategy.scope():
        model = compiled(built(config.seed))
        partner = compiled(built(config.seed + 1)) if config.recipe == "deep_fusion" else None
        restored, entry = checkpointing.latest_checkpoint(checkpoints)
    tokenizer = data.load_tokenizer(tokenizer_path)
    state = entry["state"] if entry else {"stage": "partner" if partner else "main"}
    step = entry["step"] if entry else 0
    if entry:
        print(f"Resumed from checkpoint {entry['file'] or '(partner done)'} in {checkpoints}: "
              f"stage {state['stage']}, step {step}", flush=True)

    def dataset(texts, seed, training_data=True):
        ds = data.make_dataset(texts, tokenizer, vocabulary_size, config.batch_size,
                               input_length=config.input_length, target_length=config.target_length,
                               seed=seed, shuffle=training_data, repeat=training_data)
        return ds if training_data else ds.take(config.eval_batches).cache()

    eval_data = dataset(valid_texts, 0, training_data=False)

    def train(model, stage, seed, start_step, steps, recorder, growth=None, run_state=None):
        checkpoint = checkpointing.GrowthCheckpoint(
            checkpoints, every_steps=config.checkpoint_every,
            state=lambda: dict(run_state or {}, stage=stage, recorder=recorder.state(),
                               growth_events=list(growth.events) if growth else []))
        watch.checkpoint, watch.saved_step = checkpoint, None
        if start_step < steps:
            # Growth first (the step's rows and checkpoint see the grown
            # model), then the rows, then the checkpoint that keeps them.
            fit_callbacks = ([growth] if growth else []) + [
                recorder, checkpoint, StopAtStep(steps), watch,
                keras.callbacks.TensorBoard(storage.join(model_dir, "logs", stage)),
            ] + list(extra_callbacks(stage))
            epoch_steps = -(-config.eval_every // config.steps_per_execution) * config.steps_per_execution
            initial_epoch = start_step // epoch_steps
            with timed(f"Training {stage}: steps {start_step}-{steps}, {model.backbone.count_params():,} "
                       "parameters"):
                model.fit(dataset(train_texts, seed).skip(start_step), steps_per_epoch=epoch_steps,
                          initial_epoch=initial_epoch, epochs=initial_epoch + -(-(steps - start_step) // epoch_steps),
                          verbose=fit_verbosity(), callbacks=fit_callbacks)
            watch.stop_if_requested(f"in stage {stage}")
        if checkpoint._last_saved != steps:  # a finished stage is recorded
            checkpoint.set_model(model)
            checkpoint.save()

    def recorder_for(stage, steps, flops_offset=0.0, growth=None):
        recorder = MetricsRecorder(eval_data, *shape, every=config.eval_every, stage=stage, final_step=steps,
                                   flops_offset=flops_offset, growth_callback=growth,
                                   path=storage.join(model_dir, f"metrics_{stage}.json"))
        if state["stage"] == stage and "recorder" in state:
            recorder.restore(state["recorder"])
        return recorder

    curves, run_state, partner_path = {}, {}, None
    if partner is not None:
        partner_path = storage.join(model_dir, "partner.keras")
        if state["stage"] == "partner":
            partner = restored or partner
            recorder = recorder_for("partner", config.growth_step)
            train(partner, "partner", config.seed + 1, step, config.growth_step, recorder)
            storage.save_model(partner, partner_path)
            # The partner stage is done: a state-only entry says so (the
            # main model is still the one built above).
            run_state = {"partner_rows": recorder.state()["rows"], "partner_flops": recorder.flops}
            checkpointing.write_entry(checkpoints, {"file": None, "step": 0, "epoch": 0,
                                                    "state": dict(run_state, stage="main")})
            state, step, restored = {"stage": "main"}, 0, None
        else:
            run_state = {k: state[k] for k in ("partner_rows", "partner_flops")}
        curves["partner (fused in at growth)"] = [MetricsRow(**r) for r in run_state["partner_rows"]]
    model = restored or model
    schedule = config.growth_schedule or growth_schedule(config.recipe, target, config.growth_step, partner_path)
    growth = GrowthCallback(schedule, log_dir=storage.join(model_dir, "logs", "growth"), **config.growth_options())
    growth.events = list(state.get("growth_events", []))
    recorder = recorder_for("main", config.steps, run_state.get("partner_flops", 0.0), growth)
    train(model, "main", config.seed, step, config.steps, recorder, growth, run_state)
    curves[config.recipe] = recorder.rows

    metrics_path = storage.join(model_dir, "metrics.json")
    storage.write_json(metrics_path, {
        "config": dataclasses.asdict(config),
        "tokenizer": tokenizer_path,
        "growth_events": growth.events,
        "curves": {label: [dataclasses.asdict(r) for r in rows] for label, rows in curves.items()},
    })
    plot_path = plot_metrics(curves, storage.join(model_dir, "loss_vs_flops.png"))
    final_path = storage.save_model(model, storage.join(model_dir, "final.keras"))
    export_dir = config.export_dir or storage.join(model_dir, "export")
    with timed(f"Exporting SavedModel to {export_dir}"):
        export_saved_model(model, export_dir, tokenizer_path=tokenizer_path,
                           max_input_length=config.input_length)
    last = recorder.rows[-1]
    return (
        f"Artefacts: metrics {metrics_path}, plot {plot_path}, model {final_path}, SavedModel {export_dir}, "
        f"TensorBoard {storage.join(model_dir, 'logs')}\n"
        f"Final eval loss {last.eval_loss:.4f} (accuracy {last.eval_accuracy:.3f}) after "
        f"{last.flops:.3e} training FLOPs ({config.recipe}, {model.backbone.count_params():,} parameters)"
    )


def grown_config(recipe, start):
    """The config a recipe grows `start` to (the inverse of `start_config`)."""
    if recipe in ("deep_fusion", "self_fusion"):
        return dict(start, hidden_dim=2 * start["hidden_dim"], num_heads=2 * start["num_heads"],
                    intermediate_dim=2 * start["intermediate_dim"])
    if recipe == "deepen":
        return dict(start, num_layers=2 * start["num_layers"])
    return dict(start)


def init_from(path, tokenizer=None, model_dir=None):
    """The starting LM of `--init_from` and the path of its SentencePiece model.

    `path` is a Hugging Face T5 folder, a keras-hub preset directory or a
    `.keras` file (`keras_fusion.utils.preset_loader.load_lm`). The tokenizer
    is the checkpoint's own (written to `model_dir/tokenizer/`), or
    `tokenizer` when the checkpoint has none.
    """
    from keras_fusion.utils.preset_loader import load_lm

    lm, proto = load_lm(path)
    if proto is None:
        if not tokenizer:
            raise ValueError(f"--init_from={path} holds no tokenizer: give its SentencePiece model as --tokenizer.")
        return lm, tokenizer
    return lm, storage.write_bytes(storage.join(model_dir, "tokenizer", "init_from.model"), proto)


def load_model_file(path, flag="--model"):
    """Load a `.keras` model for a script (any TF filesystem), or raise one clear ValueError."""
    return storage.load_model(path, compile=False, argument=flag)


def save_atomic(model, path):
    """`storage.save_model`: never a half-written model under `path`'s name."""
    return storage.save_model(model, path)
