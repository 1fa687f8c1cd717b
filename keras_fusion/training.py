"""The run behind `tools/train`: one recipe end to end, resumable, pre-emption safe.

`run(RunConfig(...))` trains a recipe (`keras_fusion.recipes`), growing
inside `fit` through `GrowthCallback`, checkpoints to `model_dir`, resumes
from it, and writes metrics, a plot, the final model and a SavedModel.
Every recipe counts training FLOPs (`keras_fusion.flops`), the partner's
included, so runs compare at equal compute.

```python
from keras_fusion import training

print(training.run(training.RunConfig(recipe="self_fusion", steps=200, model_dir="runs/try")))
```
"""

import dataclasses
import signal
import sys
import time

import keras

from keras_fusion import checkpointing, storage
from keras_fusion.diagnostics import encoder_use
from keras_fusion.distribution import check_tpu_reachable, make_strategy
from keras_fusion.growth import DEFAULT_GROWTH_FRACTION
from keras_fusion.metrics import MetricsRecorder, MetricsRow, plot_metrics
from keras_fusion.models import FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables
from keras_fusion.optimizers import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_OPTIMIZER,
    default_warmup_steps,
    make_optimizer,
)
from keras_fusion.recipes import (
    PRESETS,
    RECIPES,
    build_model,
    compile_model,
    grown_config,
    growth_schedule,
    init_from,
    start_config,
    target_config,
)


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
    optimizer: str = DEFAULT_OPTIMIZER
    learning_rate: float = DEFAULT_LEARNING_RATE
    lr_schedule: str = DEFAULT_LR_SCHEDULE
    warmup_steps: int = None  # None: optimizers.default_warmup_steps(steps)
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
        for name in (
            "steps",
            "batch_size",
            "eval_every",
            "eval_batches",
            "input_length",
            "target_length",
            "checkpoint_every",
            "steps_per_execution",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        # The default growth time: `growth.DEFAULT_GROWTH_FRACTION` of the
        # run (benchmarks/growth_vs_scratch_v2.py; benchmarks/README.md, "Growth against scratch").
        step = self.growth_step or max(round(DEFAULT_GROWTH_FRACTION * self.steps), 1)
        if self.recipe != "scratch" and not 1 <= step < self.steps:
            raise ValueError(f"growth_step must be in [1, steps={self.steps}), got {step}.")
        warmup = self.warmup_steps
        if warmup is None:
            warmup = default_warmup_steps(self.steps)
        elif not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup_steps must be None or an int >= 0, got {warmup!r}.")
        if self.jit_compile not in JIT_COMPILE:
            raise ValueError(
                f"jit_compile must be one of {tuple(JIT_COMPILE)}, got {self.jit_compile!r}."
            )
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}."
            )
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
            raise ValueError(
                "--strategy=tpu needs --tpu (a TPU name, 'local' on a TPU VM, or grpc://HOST:PORT)."
            )
        return dataclasses.replace(self, growth_step=step, warmup_steps=warmup)

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
                    "learning_rate_scale must be 'auto', 'width' or a number > 0, "
                    f"got {self.learning_rate_scale!r}."
                )
        if self.rewarmup_steps < 0:
            raise ValueError(f"rewarmup_steps must be >= 0, got {self.rewarmup_steps}.")
        if self.growth_optimizer_state not in ("carry", "reset"):
            raise ValueError(
                "growth_optimizer_state must be one of ('carry', 'reset'), "
                f"got {self.growth_optimizer_state!r}."
            )
        return dict(
            learning_rate_scale=scale,
            rewarmup_steps=self.rewarmup_steps,
            optimizer_slots=self.growth_optimizer_state,
        )

    def run_flags(self):
        """The flags that define what a run computes (compared on resume)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FLAGS}


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
PRECISIONS = ("float32", "mixed_bfloat16")
# Flags that may change when a run is resumed: they do not change what it
# computes (a pre-empted TPU VM may come back under another TPU name).
RESUMABLE_FLAGS = ("fresh", "tpu", "export_dir", "checkpoint_every")
# What `run` writes in model_dir, deleted by `fresh=True`.
RUN_FILES = (
    "run.json",
    "metrics.json",
    "metrics_partner.json",
    "metrics_main.json",
    "partner.keras",
    "final.keras",
    "loss_vs_flops.png",
)
RUN_FOLDERS = ("checkpoints", "logs", "export")


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
        print(
            "SIGTERM received: saving a checkpoint at the next step boundary, then stopping.",
            flush=True,
        )
        self.requested = True

    def on_train_batch_end(self, batch, logs=None):
        if self.requested and self.saved_step is None:
            self.checkpoint.save()
            self.saved_step = int(self.model.optimizer.iterations.numpy())
            self.model.stop_training = True

    def stop_if_requested(self, where):
        if self.requested:
            saved = (
                f"a checkpoint at step {self.saved_step} was saved"
                if self.saved_step is not None
                else "the last checkpoint stands"
            )
            raise Preempted(
                f"pre-empted (SIGTERM) {where}: {saved}; run the same command to resume."
            )


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
            listed = "; ".join(
                f"--{k}: {saved.get(k)!r} there, {flags.get(k)!r} now" for k in differ
            )
            raise ValueError(
                f"--model_dir={model_dir} holds a run with other flags ({listed}). "
                "Give the same flags to "
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
        return _run(
            config, watch, callbacks if callable(callbacks) else lambda stage: list(callbacks)
        )


def _run(config, watch, extra_callbacks):
    from keras_fusion import data
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.export import export_saved_model
    from keras_fusion.models import variable_trees

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
                tokenizer_path = data.train_tokenizer(
                    train_texts, config.vocabulary_size, storage.join(model_dir, "tokenizer")
                )
        target = target_config(
            config.preset,
            data.vocabulary_size(tokenizer_path),
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim,
            key_value_dim=config.key_value_dim,
        )
        start = start_config(config.recipe, target)
    vocabulary_size = data.vocabulary_size(tokenizer_path)
    if vocabulary_size != start["vocabulary_size"]:
        raise ValueError(
            f"the tokenizer {tokenizer_path} has {vocabulary_size} pieces but the model's "
            f"vocabulary_size is {start['vocabulary_size']}."
        )
    strategy = make_strategy(config.strategy, config.tpu)
    shape = (config.batch_size, config.input_length, config.target_length)
    watch.stop_if_requested("before training")

    def compiled(model):
        optimizer = make_optimizer(
            config.optimizer,
            config.learning_rate,
            config.lr_schedule,
            config.warmup_steps,
            config.steps,
        )
        return compile_model(
            model, optimizer, JIT_COMPILE[config.jit_compile], config.steps_per_execution
        )

    # Models first: keras.utils.set_random_seed (in build_model) resets
    # TensorFlow's random state and clears its kernel cache, which also
    # deletes the SentencePiece resource of an eager tensorflow-text
    # tokenizer (tensorflow/text#570); seed everything before data exists.
    # A resumed run builds them too, so that its random state is the same.
    def built(seed):
        if initial is None:
            return build_model(start, seed)
        keras.utils.set_random_seed(seed)  # the data order and any noise
        return GrowingT5Seq2SeqLM(
            FusionT5Seq2SeqLM.from_parameters(
                start,
                variable_trees.read(backbone_variables(initial.backbone)),
                preprocessor=initial.preprocessor,
            )
        )

    with strategy.scope():
        model = compiled(built(config.seed))
        partner = compiled(built(config.seed + 1)) if config.recipe == "deep_fusion" else None
        restored, entry = checkpointing.latest_checkpoint(checkpoints)
    tokenizer = data.load_tokenizer(tokenizer_path)
    state = entry["state"] if entry else {"stage": "partner" if partner else "main"}
    step = entry["step"] if entry else 0
    if entry:
        print(
            f"Resumed from checkpoint {entry['file'] or '(partner done)'} in {checkpoints}: "
            f"stage {state['stage']}, step {step}",
            flush=True,
        )

    def dataset(texts, seed, training_data=True):
        ds = data.make_dataset(
            texts,
            tokenizer,
            vocabulary_size,
            config.batch_size,
            input_length=config.input_length,
            target_length=config.target_length,
            seed=seed,
            shuffle=training_data,
            repeat=training_data,
        )
        return ds if training_data else ds.take(config.eval_batches).cache()

    eval_data = dataset(valid_texts, 0, training_data=False)

    def train(model, stage, seed, start_step, steps, recorder, growth=None, run_state=None):
        checkpoint = checkpointing.GrowthCheckpoint(
            checkpoints,
            every_steps=config.checkpoint_every,
            state=lambda: dict(
                run_state or {},
                stage=stage,
                recorder=recorder.state(),
                growth_events=list(growth.events) if growth else [],
            ),
        )
        watch.checkpoint, watch.saved_step = checkpoint, None
        if start_step < steps:
            # Growth first (the step's rows and checkpoint see the grown
            # model), then the rows, then the checkpoint that keeps them.
            fit_callbacks = (
                ([growth] if growth else [])
                + [
                    recorder,
                    checkpoint,
                    StopAtStep(steps),
                    watch,
                    keras.callbacks.TensorBoard(storage.join(model_dir, "logs", stage)),
                ]
                + list(extra_callbacks(stage))
            )
            epoch_steps = (
                -(-config.eval_every // config.steps_per_execution) * config.steps_per_execution
            )
            initial_epoch = start_step // epoch_steps
            with timed(
                f"Training {stage}: steps {start_step}-{steps}, {model.backbone.count_params():,} "
                "parameters"
            ):
                model.fit(
                    dataset(train_texts, seed).skip(start_step),
                    steps_per_epoch=epoch_steps,
                    initial_epoch=initial_epoch,
                    epochs=initial_epoch + -(-(steps - start_step) // epoch_steps),
                    verbose=fit_verbosity(),
                    callbacks=fit_callbacks,
                    shuffle=False,  # the dataset is shuffled by seed (Keras warns otherwise)
                )
            watch.stop_if_requested(f"in stage {stage}")
        if checkpoint.last_saved_step != steps:  # a finished stage is recorded
            checkpoint.set_model(model)
            checkpoint.save()

    def recorder_for(stage, steps, flops_offset=0.0, growth=None):
        recorder = MetricsRecorder(
            eval_data,
            *shape,
            every=config.eval_every,
            stage=stage,
            final_step=steps,
            flops_offset=flops_offset,
            growth_callback=growth,
            path=storage.join(model_dir, f"metrics_{stage}.json"),
        )
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
            checkpointing.write_entry(
                checkpoints,
                {"file": None, "step": 0, "epoch": 0, "state": dict(run_state, stage="main")},
            )
            state, step, restored = {"stage": "main"}, 0, None
        else:
            run_state = {k: state[k] for k in ("partner_rows", "partner_flops")}
        curves["partner (fused in at growth)"] = [
            MetricsRow(**r) for r in run_state["partner_rows"]
        ]
    model = restored or model
    schedule = config.growth_schedule or growth_schedule(
        config.recipe, target, config.growth_step, partner_path
    )
    growth = GrowthCallback(
        schedule, log_dir=storage.join(model_dir, "logs", "growth"), **config.growth_options()
    )
    growth.events = list(state.get("growth_events", []))
    recorder = recorder_for("main", config.steps, run_state.get("partner_flops", 0.0), growth)
    train(model, "main", config.seed, step, config.steps, recorder, growth, run_state)
    curves[config.recipe] = recorder.rows

    # Whether the model reads its encoder: the held-out loss with every
    # example paired with another's input (diagnostics.encoder_use).
    use = None
    if config.batch_size >= 2:
        use = encoder_use(model.lm, eval_data)
        print(
            f"Encoder check: held-out loss {use['loss']:.4f}, with another example's encoder "
            f"input {use['mismatched_encoder_loss']:.4f}; on content tokens "
            f"{use['content_loss']:.4f} and {use['mismatched_encoder_content_loss']:.4f}",
            flush=True,
        )
    metrics_path = storage.join(model_dir, "metrics.json")
    storage.write_json(
        metrics_path,
        {
            "config": dataclasses.asdict(config),
            "tokenizer": tokenizer_path,
            "encoder_use": use,
            "growth_events": growth.events,
            "curves": {
                label: [dataclasses.asdict(r) for r in rows] for label, rows in curves.items()
            },
        },
    )
    plot_path = plot_metrics(curves, storage.join(model_dir, "loss_vs_flops.png"))
    final_path = storage.save_model(model, storage.join(model_dir, "final.keras"))
    export_dir = config.export_dir or storage.join(model_dir, "export")
    with timed(f"Exporting SavedModel to {export_dir}"):
        export_saved_model(
            model, export_dir, tokenizer_path=tokenizer_path, max_input_length=config.input_length
        )
    last = recorder.rows[-1]
    return (
        f"Artefacts: metrics {metrics_path}, plot {plot_path}, "
        f"model {final_path}, SavedModel {export_dir}, "
        f"TensorBoard {storage.join(model_dir, 'logs')}\n"
        f"Final eval loss {last.eval_loss:.4f} (accuracy {last.eval_accuracy:.3f}) after "
        f"{last.flops:.3e} training FLOPs ({config.recipe}, "
        f"{model.backbone.count_params():,} parameters)"
    )
