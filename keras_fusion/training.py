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
import json
import os
import sys
import time

import keras
import numpy as np

from keras_fusion import flops
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_config

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


def compile_model(model, optimizer):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
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
    growth event) go to `rows` and, rewritten atomically after each one, to
    `path` as JSON. FLOPs of the current architecture are counted per step,
    so they follow each growth; `flops_offset` adds compute spent before this
    fit (a partner's training).

    Args:
        eval_data: a finite dataset of `(x, y, sample_weight)` batches.
        batch_size, encoder_length, decoder_length: the training shapes.
        every: evaluation period in optimizer steps.
        path: optional JSON path.
        flops_offset: FLOPs already spent.
        growth_callback: the run's `GrowthCallback`, to mark its events.
    """

    def __init__(self, eval_data, batch_size, encoder_length, decoder_length, every,
                 path=None, flops_offset=0.0, growth_callback=None, stage=""):
        super().__init__()
        self.eval_data = eval_data
        self.shape = (batch_size, encoder_length, decoder_length)
        self.every = every
        self.path = path
        self.flops = float(flops_offset)
        self.growth_callback = growth_callback
        self.stage = stage
        self.rows = []
        self._marked = 0

    def on_train_batch_end(self, batch, logs=None):
        self._release_stale_eval()
        step = int(self.model.optimizer.iterations.numpy())
        self.flops += flops.training_flops(backbone_config(self.model.backbone), *self.shape)
        if step % self.every == 0:
            self.record(step, float((logs or {}).get("loss", np.nan)))

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
            write_json_atomic(self.path, {"stage": self.stage, "rows": [dataclasses.asdict(r) for r in self.rows]})

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
    temporary = path + ".partial"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(temporary, path)


def plot_metrics(curves, path, title="Held-out loss against training compute"):
    """PNG of eval loss against training FLOPs, growth events marked.

    Args:
        curves: `{label: [MetricsRow or dict, ...]}`.
        path: the PNG to write (atomically).
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
    temporary = path + ".partial.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path


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

    @classmethod
    def from_flags(cls, flag_values):
        return cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(cls)})

    def check(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}.")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}.")
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "input_length", "target_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every}).")
        step = self.growth_step or max(self.steps // 3 // self.eval_every, 1) * self.eval_every
        if self.recipe != "scratch" and not 1 <= step < self.steps:
            raise ValueError(f"growth_step must be in [1, steps={self.steps}), got {step}.")
        if self.recipe == "deep_fusion" and step % self.eval_every:
            raise ValueError(
                f"deep_fusion trains its partner growth_step={step} steps, which must be a "
                f"multiple of eval_every ({self.eval_every})."
            )
        self.growth_options()  # raises on a bad value
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError("--strategy=tpu needs --tpu (a TPU name or grpc:// address).")
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
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of default, mirrored, multi_worker, tpu; got {name!r}.")


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


def run(config):
    """Run one recipe end to end; returns a two-line summary."""
    from keras_fusion import data
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.export import export_saved_model

    config = config.check()
    os.makedirs(config.model_dir, exist_ok=True)
    with timed(f"Loading corpus {config.data!r}"):
        train_texts = data.load_corpus(config.data, "train", config.data_dir)
        valid_texts = data.load_corpus(config.data, "validation", config.data_dir)
    if config.tokenizer:
        tokenizer_path = config.tokenizer
    else:
        with timed("Tokenizer (SentencePiece, cached by content)"):
            tokenizer_path = data.train_tokenizer(train_texts, config.vocabulary_size,
                                                  os.path.join(config.model_dir, "tokenizer"))
    vocabulary_size = data.vocabulary_size(tokenizer_path)
    target = target_config(config.preset, vocabulary_size, num_layers=config.num_layers,
                           num_heads=config.num_heads, hidden_dim=config.hidden_dim,
                           intermediate_dim=config.intermediate_dim, key_value_dim=config.key_value_dim)
    start = start_config(config.recipe, target)
    strategy = make_strategy(config.strategy, config.tpu)
    shape = (config.batch_size, config.input_length, config.target_length)

    def optimizer():
        return make_optimizer(config.optimizer, config.learning_rate, config.lr_schedule,
                              config.warmup_steps, config.steps)

    # Models first: keras.utils.set_random_seed (in build_model) resets
    # TensorFlow's random state and clears its kernel cache, which also
    # deletes the SentencePiece resource of an eager tensorflow-text
    # tokenizer (tensorflow/text#570); seed everything before data exists.
    with strategy.scope():
        model = compile_model(build_model(start, config.seed), optimizer())
        if config.recipe == "deep_fusion":
            partner = compile_model(build_model(start, config.seed + 1), optimizer())
    tokenizer = data.load_tokenizer(tokenizer_path)

    def dataset(texts, seed, training_data=True):
        ds = data.make_dataset(texts, tokenizer, vocabulary_size, config.batch_size,
                               input_length=config.input_length, target_length=config.target_length,
                               seed=seed, shuffle=training_data, repeat=training_data)
        return ds if training_data else ds.take(config.eval_batches).cache()

    eval_data = dataset(valid_texts, 0, training_data=False)

    def train(model, seed, steps, stage, growth=None, flops_offset=0.0):
        recorder = MetricsRecorder(eval_data, *shape, every=config.eval_every, stage=stage,
                                   flops_offset=flops_offset, growth_callback=growth,
                                   path=os.path.join(config.model_dir, f"metrics_{stage}.json"))
        callbacks = [growth] if growth else []
        callbacks += [recorder, keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs", stage))]
        with timed(f"Training {stage}: {steps} steps, {model.backbone.count_params():,} parameters"):
            model.fit(dataset(train_texts, seed), epochs=-(-steps // config.eval_every),
                      steps_per_epoch=config.eval_every, verbose=fit_verbosity(), callbacks=callbacks)
        return recorder

    curves, flops_offset, partner_path = {}, 0.0, None
    if config.recipe == "deep_fusion":
        recorder = train(partner, config.seed + 1, config.growth_step, "partner")
        curves["partner (fused in at growth)"] = recorder.rows
        flops_offset = recorder.flops
        partner_path = os.path.join(config.model_dir, "partner.keras")
        save_atomic(partner, partner_path)
    schedule = config.growth_schedule or growth_schedule(config.recipe, target, config.growth_step, partner_path)
    growth = GrowthCallback(schedule, log_dir=os.path.join(config.model_dir, "logs", "growth"),
                            **config.growth_options())
    recorder = train(model, config.seed, config.steps, "main", growth, flops_offset)
    curves[config.recipe] = recorder.rows

    metrics_path = os.path.join(config.model_dir, "metrics.json")
    write_json_atomic(metrics_path, {
        "config": dataclasses.asdict(config),
        "tokenizer": tokenizer_path,
        "growth_events": growth.events,
        "curves": {label: [dataclasses.asdict(r) for r in rows] for label, rows in curves.items()},
    })
    plot_path = plot_metrics(curves, os.path.join(config.model_dir, "loss_vs_flops.png"))
    final_path = os.path.join(config.model_dir, "final.keras")
    save_atomic(model, final_path)
    export_dir = config.export_dir or os.path.join(config.model_dir, "export")
    with timed(f"Exporting SavedModel to {export_dir}"):
        export_saved_model(model, export_dir, tokenizer_path=tokenizer_path,
                           max_input_length=config.input_length)
    last = recorder.rows[-1]
    return (
        f"Artefacts: metrics {metrics_path}, plot {plot_path}, model {final_path}, SavedModel {export_dir}, "
        f"TensorBoard {os.path.join(config.model_dir, 'logs')}\n"
        f"Final eval loss {last.eval_loss:.4f} (accuracy {last.eval_accuracy:.3f}) after "
        f"{last.flops:.3e} training FLOPs ({config.recipe}, {model.backbone.count_params():,} parameters)"
    )


def load_model_file(path, flag="--model"):
    """Load a `.keras` model for a script, or raise one clear ValueError."""
    if not path or not os.path.exists(path):
        raise ValueError(f"{flag} not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # truncated, corrupt or foreign files
        raise ValueError(f"cannot load {path}: {error}") from error


def save_atomic(model, path):
    """`model.save(path)` through a temporary file: never a half-written model."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), ".partial-" + os.path.basename(path))
    model.save(temporary)
    os.replace(temporary, path)
    return path
