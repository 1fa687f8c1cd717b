"""The run behind `tools/train`: one recipe end to end, resumable, pre-emption safe.

`run(RunConfig(...))` trains a recipe (`keras_fusion.recipes`), growing
inside `fit` through `GrowthCallback`, checkpoints to `model_dir`, resumes
from it, and writes metrics, a plot, the final model and a SavedModel
(unless `export=False`).
Every recipe counts training FLOPs (`keras_fusion.flops`), a fusion's
partners' included, so runs compare at equal compute. `deep_fusion` and
`fusion_tree` train a fusion tree (depth 1 and `tree_depth`), one node
after another or one node a job (`RunConfig.node`).

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

from keras_fusion import checkpointing, data, storage
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.diagnostics import encoder_use
from keras_fusion.distribution import check_tpu_reachable, make_strategy
from keras_fusion.export import export_saved_model
from keras_fusion.growth import default_growth_step
from keras_fusion.metrics import MetricsRecorder, MetricsRow, plot_metrics
from keras_fusion.models import FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM, variable_trees
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
    default_growth_fraction,
    fusion_depth,
    fusion_tree_stages,
    grown_config,
    growth_entries,
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
    export: bool = True
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
    tree_depth: int = 2
    node: str = None

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
        # The default growth time: `recipes.default_growth_fraction` of the
        # run (benchmarks/growth_vs_scratch_v2.py; benchmarks/README.md, "Growth against scratch").
        step = self.growth_step or default_growth_step(
            self.steps, default_growth_fraction(self.recipe)
        )
        if self.recipe != "scratch" and not 1 <= step < self.steps:
            raise ValueError(f"growth_step must be in [1, steps={self.steps}), got {step}.")
        if self.fusion_depth is not None:
            self._check_tree(step)
        elif self.node is not None:
            raise ValueError(
                "--node runs one node of a fusion tree (--recipe=deep_fusion or fusion_tree); "
                f"the recipe is {self.recipe!r}."
            )
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
        if self.fusion_depth is not None:
            stage_lengths["growth_step (each node's steps)"] = step
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
        if self.export_dir and not self.export:
            raise ValueError(
                f"--export_dir={self.export_dir} names where the SavedModel goes, but --noexport "
                "writes none: drop one of them."
            )
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError(
                "--strategy=tpu needs --tpu (a TPU name, 'local' on a TPU VM, or grpc://HOST:PORT)."
            )
        return dataclasses.replace(self, growth_step=step, warmup_steps=warmup)

    @property
    def fusion_depth(self):
        """The depth of the fusion tree the recipe trains (1 for deep_fusion,
        `tree_depth` for fusion_tree), or None for a recipe of one model."""
        return fusion_depth(self.recipe, self.tree_depth)

    def _check_tree(self, step):
        if self.recipe == "fusion_tree" and (
            not isinstance(self.tree_depth, int) or not 1 <= self.tree_depth <= 4
        ):
            raise ValueError(f"tree_depth must be an int in [1, 4], got {self.tree_depth!r}.")
        depth = self.fusion_depth
        if not depth * step < self.steps:
            raise ValueError(
                f"a fusion tree of depth {depth} fuses its last pair at step "
                f"{'tree_depth * ' if depth > 1 else ''}growth_step = {depth * step}, which "
                f"must be below steps ({self.steps}): lower --growth_step or raise --steps."
            )
        if self.growth_schedule:
            raise ValueError(
                f"--growth_schedule does not apply to --recipe={self.recipe}: its growths are "
                "the fusions of its tree (--growth_step); give another recipe a schedule."
            )
        if self.node is not None and self.fresh:
            raise ValueError(
                "--fresh deletes the whole tree in --model_dir, which other nodes' jobs may be "
                "training: run it once without --node, then start the nodes."
            )

    def target(self, vocabulary_size):
        """The final model's backbone config: the preset and the size flags."""
        return target_config(
            self.preset,
            vocabulary_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            intermediate_dim=self.intermediate_dim,
            key_value_dim=self.key_value_dim,
        )

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
        if self.growth_optimizer_state not in GrowthCallback.OPTIMIZER_SLOTS:
            raise ValueError(
                f"growth_optimizer_state must be one of {GrowthCallback.OPTIMIZER_SLOTS}, "
                f"got {self.growth_optimizer_state!r}."
            )
        return dict(
            learning_rate_scale=scale,
            rewarmup_steps=self.rewarmup_steps,
            optimizer_slots=self.growth_optimizer_state,
        )

    def run_flags(self):
        """The flags that define what a run computes (compared on resume)."""
        flags = {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FLAGS}
        if self.recipe != "fusion_tree":  # as runs before the fusion tree recorded them
            del flags["tree_depth"]
        return flags


JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
PRECISIONS = ("float32", "mixed_bfloat16")
# Flags that may change when a run is resumed: they do not change what it
# computes (a pre-empted TPU VM may come back under another TPU name).
# `node` picks which part of the run a job trains, not what the run computes.
RESUMABLE_FLAGS = ("fresh", "tpu", "export_dir", "export", "checkpoint_every", "node")
# What `run` writes in model_dir, deleted by `fresh=True`.
RUN_FILES = (
    "run.json",
    "metrics.json",
    "metrics_main.json",
    # What deep_fusion wrote before it ran as a fusion tree of depth 1.
    "metrics_partner.json",
    "partner.keras",
    "final.keras",
    "loss_vs_flops.png",
)
RUN_FOLDERS = ("checkpoints", "logs", "export", "nodes")


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


def prepare_model_dir(config, write=True):
    """Check that `model_dir` holds this run or none, then record the run's flags.

    With `write=False` it only checks (and `fresh` is not applied).

    With `config.fresh`, what an earlier run wrote there is deleted first.
    A model_dir that holds a run with other flags is refused (nothing is
    written): resuming it would mix two runs.
    """
    model_dir = config.model_dir
    run_path = storage.join(model_dir, "run.json")
    flags = config.run_flags()
    if config.fresh and write:
        for name in RUN_FOLDERS:
            storage.rmtree(storage.join(model_dir, name))
        for name in RUN_FILES:
            storage.remove(storage.join(model_dir, name))
    elif storage.exists(run_path) and not config.fresh:
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
    if write:
        storage.write_json(run_path, {"flags": flags})


def run(config, callbacks=()):
    """Run one recipe end to end, resuming from model_dir's checkpoints; returns a summary.

    Every `checkpoint_every` steps the model being trained, its optimizer,
    growth history and the metrics so far are checkpointed in
    `model_dir/checkpoints` (a fusion tree's node: in
    `model_dir/nodes/NAME/checkpoints`; `deep_fusion` is the tree of depth
    1, nodes `leaf0`, `leaf1` and `root`). Started
    again with the same config, `run` resumes from the newest good
    checkpoint: same stage, same step, the growths already applied kept and
    those not yet saved applied, and the data at the same batch (the
    pipeline is deterministic for a seed; the batches already trained on are
    skipped). SIGTERM saves a checkpoint and raises `Preempted`.

    Args:
        config: a `RunConfig`.
        callbacks: extra Keras callbacks for every `fit` of the run, or a
            function of the stage (`"main"`, or a tree's node name) returning
            them.
    """
    config = config.check()
    with PreemptionWatch() as watch:
        return _run(
            config, watch, callbacks if callable(callbacks) else lambda stage: list(callbacks)
        )


class _Run:
    """What every stage of one run shares, and the steps of a stage.

    `_run` below, and the fusion tree's nodes (`_run_tree`), are made of its
    parts: `prepare` (the corpus, tokenizer and model shapes), `load_data`
    (after the stage's models are built), `train` (one stage, checkpointed
    and resumable), `recorder` and `finish` (metrics, plot, final model,
    SavedModel).
    """

    def __init__(self, config, watch, extra_callbacks):
        self.config = config
        self.watch = watch
        self.extra_callbacks = extra_callbacks
        self.model_dir = config.model_dir
        self.checkpoints = storage.join(self.model_dir, "checkpoints")
        self.shape = (config.batch_size, config.input_length, config.target_length)

    def prepare(self):
        """Read the corpus, find or train the tokenizer, fix the model shapes."""
        config = self.config
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        with timed(f"Loading corpus {config.data!r}"):
            self.train_texts = data.load_corpus(config.data, "train", config.data_dir)
            self.valid_texts = data.load_corpus(config.data, "validation", config.data_dir)
        self.initial = None
        if config.init_from:
            with timed(f"Loading the starting model from {config.init_from}"):
                self.initial, tokenizer_path = init_from(
                    config.init_from, config.tokenizer, self.model_dir
                )
            self.start = backbone_config(self.initial.backbone)
            self.target = grown_config(config.recipe, self.start, config.tree_depth)
        else:
            if config.tokenizer:
                tokenizer_path = config.tokenizer
            else:
                with timed("Tokenizer (SentencePiece, cached by content)"):
                    tokenizer_path = data.train_tokenizer(
                        self.train_texts,
                        config.vocabulary_size,
                        storage.join(self.model_dir, "tokenizer"),
                    )
            self.target = config.target(data.vocabulary_size(tokenizer_path))
            self.start = start_config(config.recipe, self.target, config.tree_depth)
        self.tokenizer_path = tokenizer_path
        self.vocabulary_size = data.vocabulary_size(tokenizer_path)
        if self.vocabulary_size != self.start["vocabulary_size"]:
            raise ValueError(
                f"the tokenizer {tokenizer_path} has {self.vocabulary_size} pieces but the "
                f"model's vocabulary_size is {self.start['vocabulary_size']}."
            )
        self.strategy = make_strategy(config.strategy, config.tpu)
        return self

    def compiled(self, model):
        config = self.config
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

    def built(self, start, seed):
        """A new compiled model of `start` (or the `--init_from` model), seeded.

        Models first: keras.utils.set_random_seed (in build_model) resets
        TensorFlow's random state and clears its kernel cache, which also
        deletes the SentencePiece resource of an eager tensorflow-text
        tokenizer (tensorflow/text#570); seed everything before data exists
        (`load_data` after). A resumed run builds them too, so that its
        random state is the same.
        """
        if self.initial is None:
            return self.compiled(build_model(start, seed))
        keras.utils.set_random_seed(seed)  # the data order and any noise
        return self.compiled(
            GrowingT5Seq2SeqLM(
                FusionT5Seq2SeqLM.from_parameters(
                    start,
                    variable_trees.read(backbone_variables(self.initial.backbone)),
                    preprocessor=self.initial.preprocessor,
                )
            )
        )

    def load_data(self):
        """The tokenizer and the held-out batches (after the models are built)."""
        self.tokenizer = data.load_tokenizer(self.tokenizer_path)
        self.eval_data = self.dataset(self.valid_texts, 0, training_data=False)

    def dataset(self, texts, seed, training_data=True):
        config = self.config
        ds = data.make_dataset(
            texts,
            self.tokenizer,
            self.vocabulary_size,
            config.batch_size,
            input_length=config.input_length,
            target_length=config.target_length,
            seed=seed,
            shuffle=training_data,
            repeat=training_data,
        )
        return ds if training_data else ds.take(config.eval_batches).cache()

    def train(
        self,
        model,
        stage,
        seed,
        start_step,
        steps,
        recorder,
        growth=None,
        checkpoints=None,
    ):
        """Train `model` (one stage) from `start_step` to `steps`, checkpointed."""
        config, watch = self.config, self.watch
        checkpoint = checkpointing.GrowthCheckpoint(
            checkpoints or self.checkpoints,
            every_steps=config.checkpoint_every,
            state=lambda: dict(
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
                    keras.callbacks.TensorBoard(storage.join(self.model_dir, "logs", stage)),
                ]
                + list(self.extra_callbacks(stage))
            )
            epoch_steps = (
                -(-config.eval_every // config.steps_per_execution) * config.steps_per_execution
            )
            initial_epoch = start_step // epoch_steps
            growths = [  # still to come in this stage: the count printed is before them
                e.describe() for e in (growth.pending(model) if growth else []) if e.at_step < steps
            ]
            with timed(
                f"Training {stage}: steps {start_step}-{steps}, "
                f"{model.backbone.count_params():,} parameters"
                + (f" before its growths ({', '.join(growths)})" if growths else "")
            ):
                model.fit(
                    self.dataset(self.train_texts, seed).skip(start_step),
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

    def recorder(self, stage, steps, state, flops_offset=0.0, growth=None, path=None):
        """The stage's `MetricsRecorder`, its rows restored from `state` when
        the checkpoint was saved in that stage."""
        recorder = MetricsRecorder(
            self.eval_data,
            *self.shape,
            every=self.config.eval_every,
            stage=stage,
            final_step=steps,
            flops_offset=flops_offset,
            growth_callback=growth,
            path=path or storage.join(self.model_dir, f"metrics_{stage}.json"),
        )
        if state.get("stage") == stage and "recorder" in state:
            recorder.restore(state["recorder"])
        return recorder

    def growth_callback(self, schedule):
        return GrowthCallback(
            schedule,
            log_dir=storage.join(self.model_dir, "logs", "growth"),
            **self.config.growth_options(),
        )

    def finish(self, model, curves, growth_events):
        """Metrics, plot, final model and (`config.export`) SavedModel of the trained `model`;
        returns the run's summary."""
        config = self.config
        # Whether the model reads its encoder: the held-out loss with every
        # example paired with another's input (diagnostics.encoder_use).
        use = None
        if config.batch_size >= 2:
            use = encoder_use(model.lm, self.eval_data)
            print(
                f"Encoder check: held-out loss {use['loss']:.4f}, with another example's "
                f"encoder input {use['mismatched_encoder_loss']:.4f}; on content tokens "
                f"{use['content_loss']:.4f} and {use['mismatched_encoder_content_loss']:.4f}",
                flush=True,
            )
        metrics_path = storage.join(self.model_dir, "metrics.json")
        storage.write_json(
            metrics_path,
            {
                "config": dataclasses.asdict(config),
                "tokenizer": self.tokenizer_path,
                "encoder_use": use,
                "growth_events": growth_events,
                "curves": {
                    label: [dataclasses.asdict(r) for r in rows] for label, rows in curves.items()
                },
            },
        )
        plot_path = plot_metrics(curves, storage.join(self.model_dir, "loss_vs_flops.png"))
        final_path = storage.save_model(model, storage.join(self.model_dir, "final.keras"))
        saved_model = "not written (--noexport)"
        if config.export:
            saved_model = config.export_dir or storage.join(self.model_dir, "export")
            with timed(f"Exporting SavedModel to {saved_model}"):
                export_saved_model(
                    model,
                    saved_model,
                    tokenizer_path=self.tokenizer_path,
                    max_input_length=config.input_length,
                )
        last = list(curves.values())[-1][-1]
        return (
            f"Artefacts: metrics {metrics_path}, plot {plot_path}, "
            f"model {final_path}, SavedModel {saved_model}, "
            f"TensorBoard {storage.join(self.model_dir, 'logs')}\n"
            f"Final eval loss {last.eval_loss:.4f} (accuracy {last.eval_accuracy:.3f}) after "
            f"{last.flops:.3e} training FLOPs ({config.recipe}, "
            f"{model.backbone.count_params():,} parameters)"
        )


def _run(config, watch, extra_callbacks):
    if config.strategy == "tpu":
        check_tpu_reachable(config.tpu)  # fail in seconds, before anything is read or written
    if config.fusion_depth is not None:  # deep_fusion and fusion_tree: one job a node
        return _run_tree(config, watch, extra_callbacks)
    prepare_model_dir(config)
    run = _Run(config, watch, extra_callbacks).prepare()
    watch.stop_if_requested("before training")
    with run.strategy.scope():
        model = run.built(run.start, config.seed)
        restored, entry = checkpointing.latest_checkpoint(run.checkpoints)
    run.load_data()
    state = entry["state"] if entry else {"stage": "main"}
    step = entry["step"] if entry else 0
    if entry:
        print(
            f"Resumed from checkpoint {entry['file']} in {run.checkpoints}: "
            f"stage {state['stage']}, step {step}",
            flush=True,
        )
    model = restored or model
    schedule = config.growth_schedule or growth_entries(
        config.recipe, run.target, config.growth_step
    )
    growth = run.growth_callback(schedule)
    growth.events = list(state.get("growth_events", []))
    recorder = run.recorder("main", config.steps, state, 0.0, growth)
    run.train(model, "main", config.seed, step, config.steps, recorder, growth)
    return run.finish(model, {config.recipe: recorder.rows}, growth.events)


class NodeNotReady(ValueError):
    """A fusion-tree node was asked for before its inputs finished (the
    scripts exit 2: a `ValueError`)."""


def tree_stages(config):
    """The nodes of `config`'s fusion tree (`recipes.fusion_tree_stages`), in
    an order that runs inputs before their users; only the node names and
    steps are needed before the tokenizer exists, so widths come from the
    preset and flags (`vocabulary_size` as given)."""
    config = config.check()
    return fusion_tree_stages(
        config.target(config.vocabulary_size),
        config.fusion_depth,
        config.growth_step,
        config.steps,
        config.seed,
    )


def node_dir(model_dir, name):
    """Where a fusion-tree node keeps its checkpoints, lease, final model and `done.json`."""
    return storage.join(model_dir, "nodes", name)


def node_final_path(model_dir, name):
    return storage.join(node_dir(model_dir, name), "final.keras")


def tree_node(config):
    """The `Stage` of `config.node` (a clear error for a name not in the tree)."""
    stages = {stage.name: stage for stage in tree_stages(config)}
    if config.node not in stages:
        raise ValueError(f"node must be one of {list(stages)}, got {config.node!r}.")
    return stages[config.node]


def missing_inputs(config):
    """The inputs of `config.node` that are not finished yet (`[]`: it can run)."""
    return [name for name in tree_node(config).inputs if node_done(config.model_dir, name) is None]


def node_done(model_dir, name):
    """The `done.json` record of a finished node, or None."""
    path = storage.join(node_dir(model_dir, name), "done.json")
    return storage.read_json(path) if storage.exists(path) else None


def _run_tree(config, watch, extra_callbacks):
    """Every node of the fusion tree not yet finished, in order (or only
    `config.node`): the one-machine path, and the job of one node."""
    if config.node is not None:
        stage = tree_node(config)
        done = node_done(config.model_dir, stage.name)
        if done is not None:
            message = (
                f"Node {stage.name} is already finished "
                f"({node_dir(config.model_dir, stage.name)}/done.json): nothing to do."
            )
            print(message, flush=True)
            return message
        prepare_model_dir(config, write=False)  # other flags there: refused, nothing written
        missing = missing_inputs(config)
        if missing:
            raise NodeNotReady(
                f"node {stage.name} needs {', '.join(missing)} finished first (in "
                f"{storage.join(config.model_dir, 'nodes')}); nothing was written. Run "
                f"{' and '.join('--node=' + name for name in missing)} first, or wait for "
                "them (--wait_for_inputs in tools.train)."
            )
    old = storage.join(config.model_dir, "checkpoints", "checkpoint.json")
    if not config.fresh and storage.exists(old):
        raise ValueError(
            f"--model_dir={config.model_dir} holds a {config.recipe} run in the layout of "
            f"keras_fusion before deep_fusion trained as a fusion tree ({old}; a tree keeps "
            "each node in nodes/NAME/): it cannot be resumed here. Give --fresh to start "
            "over there, or another --model_dir."
        )
    prepare_model_dir(config)  # with --fresh, the nodes go too
    run = _Run(config, watch, extra_callbacks).prepare()
    # The same nodes, now with the tokenizer's vocabulary size.
    stages = fusion_tree_stages(
        run.target, config.fusion_depth, config.growth_step, config.steps, config.seed
    )
    if config.node is not None:
        todo = [s for s in stages if s.name == config.node]
    else:
        todo = [s for s in stages if node_done(config.model_dir, s.name) is None]
        for stage in stages:
            if stage not in todo:
                print(f"Node {stage.name} is already finished: skipped.", flush=True)
    watch.stop_if_requested("before training")
    summary = None
    for stage in todo:
        summary = _train_node(run, stage, stages)
    return summary or f"Every node of the tree in {config.model_dir} is finished."


def _train_node(run, stage, stages):
    """Train one node into `model_dir/nodes/NAME`, resumable; the root also
    writes the run's artefacts (`_Run.finish`)."""
    model_dir = run.model_dir
    folder = node_dir(model_dir, stage.name)
    checkpoints = storage.join(folder, "checkpoints")
    final_path = node_final_path(model_dir, stage.name)
    inputs = {name: node_done(model_dir, name) for name in stage.inputs}
    with checkpointing.Lease(folder):
        # The node's result depends only on the flags and its inputs, not
        # on what ran in this process before: the global seed (which
        # tf.data's seeded shuffles combine with their own) is the node's.
        keras.utils.set_random_seed(stage.seed)
        with run.strategy.scope():
            restored, entry = checkpointing.latest_checkpoint(checkpoints)
            if restored is not None:
                model = restored
            elif stage.continues:
                model = storage.load_model(node_final_path(model_dir, stage.continues))
            else:
                model = run.built(stage.config, stage.seed)
        run.load_data()
        state = entry["state"] if entry else {}
        step = entry["step"] if entry else stage.start_step
        if entry:
            print(
                f"Resumed node {stage.name} from {entry['file']} in {checkpoints}: step {step}",
                flush=True,
            )
        schedule = stage.growths(lambda name: node_final_path(model_dir, name))
        growth = run.growth_callback(schedule) if schedule else None
        if growth is not None:
            growth.events = list(state.get("growth_events", []))
        # FLOPs over every node: the node's own, after all its inputs' (the
        # whole subtree below it).
        offset = sum(done["flops"] for done in inputs.values())
        recorder = run.recorder(
            stage.name,
            stage.end_step,
            dict(state, stage=stage.name),
            offset,
            growth,
            path=storage.join(folder, "metrics.json"),
        )
        run.train(
            model,
            stage.name,
            stage.seed,
            step,
            stage.end_step,
            recorder,
            growth,
            checkpoints=checkpoints,
        )
        storage.save_model(model, final_path)
        done = {
            "node": stage.name,
            "step": stage.end_step,
            "flops": recorder.flops,
            "rows": [dataclasses.asdict(r) for r in recorder.rows],
            "growth_events": growth.events if growth else [],
            "inputs": list(stage.inputs),
        }
        summary = None
        if stage.name == stages[-1].name:  # the root: the run's artefacts, every node's curve
            records = [node_done(model_dir, s.name) for s in stages[:-1]] + [done]
            curves = {r["node"]: [MetricsRow(**row) for row in r["rows"]] for r in records}
            events = [event for r in records for event in r["growth_events"]]
            summary = run.finish(model, curves, events)
        storage.write_json(storage.join(folder, "done.json"), done)  # last: the node is finished
        print(f"Node {stage.name} finished: {final_path}", flush=True)
    if summary is None:
        last = recorder.rows[-1]
        summary = (
            f"Node {stage.name}: eval loss {last.eval_loss:.4f} at step {last.step}, "
            f"{last.flops:.3e} training FLOPs with its inputs'; model {final_path}"
        )
    return summary
