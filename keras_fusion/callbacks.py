"""Callbacks: grow the model inside `model.fit` (checkpoints: `keras_fusion.checkpointing`)."""

import keras
import tensorflow as tf

from keras_fusion import growing, growth, growth_ahead, optimizer_state, optimizers
from keras_fusion.checkpointing import GrowthCheckpoint, checkpoint_epoch, restore_latest
from keras_fusion.dynamics import DynamicsMonitor
from keras_fusion.models.fusion_t5_backbone import (
    backbone_config,
)
from keras_fusion.models.growing_t5_seq2seq_lm import GrowingT5Seq2SeqLM

__all__ = [
    "DynamicsMonitor",
    "GrowthCallback",
    "GrowthCheckpoint",
    "checkpoint_epoch",
    "restore_latest",
]


def first_boundary(at_step, step, steps_per_execution):
    """The first optimizer step at or after `at_step` that ends a call of the
    train function, counting calls of `steps_per_execution` steps from
    `step` (a boundary).

    >>> first_boundary(3, 0, 2), first_boundary(4, 0, 2), first_boundary(5, 1, 4)
    (4, 4, 5)
    """
    calls = max(0, -(-(at_step - step) // steps_per_execution))
    return step + calls * steps_per_execution


class GrowthCallback(keras.callbacks.Callback):
    """Grows a `GrowingT5Seq2SeqLM` at scheduled optimizer steps during fit.

    At each entry's step (global `optimizer.iterations`, so a schedule means
    the same after a resume) the callback, between two training steps and
    inside the model's distribution strategy scope: grows the inner model,
    builds a new optimizer of the same class and config on the grown
    variables with `iterations` and every slot carried across
    (`keras_fusion.optimizer_state`), swaps both into the model, and resets
    the compiled train/test/predict functions. Training goes on with no
    restart; metrics and the step counter are not reset.

    The whole schedule is checked when training begins, before any step:
    partners must be fusable, the optimizer supported, and the parameter
    count within `max_parameters`. An entry due at the step `fit` starts
    from (the model was trained to it elsewhere) grows then, before the
    first step; one whose step has passed unapplied is refused.

    With no schedule (`GrowthCallback()`), the callback grows once, by
    `growth.DEFAULT_GROWTH_MODE` after `growth.DEFAULT_GROWTH_FRACTION` of
    the steps `fit` will run (`growth.default_entry`). Keras tells the
    callback those steps when training begins (`self.params`: `epochs` x
    `steps` per epoch, counted from step 0, so a run resumed with
    `initial_epoch` keeps the same growth step); `fit` must then know its
    steps per epoch (`steps_per_epoch`, or data of known length). The
    entry is fixed at the first `fit` and kept for later calls. The model's
    learning-rate schedule runs on across the growth (the step counter is
    carried; see `learning_rate_scale`).

    When growth is worth it: only when the grown size is the right model
    for the compute you will spend, i.e. when the model you start from,
    trained alone for the same compute, would end worse than the target
    trained from scratch. Below that budget the small model alone is the
    better buy, and growing it gains nothing attributable to the growth.
    `benchmarks/growth_vs_scratch_v2.py` measures this "regime check" per
    mode. On this project's 2-core benchmark (a 4-layer hidden-64 T5) the
    depth check passed only at 64,000 steps (180 tokens per parameter);
    there stack, the default (grown after 0.05 of the steps), ended level
    with training from scratch: it reached scratch's mean final loss at
    0.91 of the compute on each of 3 seeds, a margin smaller than
    scratch's seed spread. Expect growth to match training from scratch for the same
    compute, not to save half of it. Two modes ended worse than their
    starting model trained alone for the same compute, at 32,000 steps
    and at 64,000 (3 seeds each, worse on every seed at both):
    `deepen` (identity layers; stack, which copies the trained layers, is
    the depth growth to use) and `self_fuse` (two near-copies of the same
    units; fuse different models instead). benchmarks/README.md ("Growth
    against scratch") has the figures for every mode and budget. Grow
    when the target is the model you need at the end (for its quality at
    a budget where it beats its half-size model alone, or for its size in
    deployment) and a trained smaller model is already at hand: then the
    growth reuses what that model learned.

    Args:
        schedule: a list of `keras_fusion.growth` entries, a schedule
            string (`"self_fuse@1000,deepen@3000:layers=2"`), or `None` (the
            default growth, above).
        max_parameters: optional int; a schedule that would grow the model
            past it is rejected before training.
        log_dir: optional directory for TensorBoard summaries of growth
            events (`growth/num_parameters`, a text summary per event).
        verbose: 0 silent, 1 one line per growth event.
        rewarmup_steps: int >= 0. When positive, the learning rate ramps
            linearly from zero again over this many steps after each growth
            (`optimizer_state.Rewarmup`, saved with the optimizer).
        optimizer_slots: `"carry"` (the default: every slot mapped with its
            variable), `"reset"` (slots start from zero, as when a grown
            model gets a fresh optimizer; `iterations` still continues) or
            `"reset_new"` (carried, but zero on the entries the growth
            creates: a fusion's off-diagonal blocks, new layers).
            `benchmarks/after_growth.py` measures them. At 64,000 steps of
            the 4-layer hidden-64 benchmark a reset ended level with
            carrying, after stack and after Deep Fusion (3 seeds each;
            benchmarks/README.md, "Restarting the optimizer's slots").
        learning_rate_scale: `"auto"` (the default), `"width"` or a number
            > 0. The learning rate from each growth on is multiplied by it
            (scales of successive growths compound). `"auto"` follows the
            size of the weights the operator writes. Under Adafactor or
            `AdamWScale`, whose steps are relative to each parameter's RMS,
            a fusion shrinks the grown kernels' steps with their RMS: Deep
            Fusion's zero off-diagonal blocks divide it by sqrt(2), self
            fusion's `W/2` entries by 2. "auto" multiplies the rate by that
            factor (`entry.kernel_rms_scale`; 1 after deepen and
            widen_ffn), which restores the kernels' steps. Measured on the
            tiny preset with the default Adafactor, 2,400 steps, growth at
            600 (benchmarks/README.md, "After a growth"): sqrt(2) ended
            Deep Fusion 0.022 lower than 1 on two seeds, and 2 ended self
            fusion lower than 1 as well. Keras' Adafactor caps its step at
            1/sqrt(t) whatever the rate, so a scaled rate above the cap
            changes nothing: the cap never binds on the tiny preset, but
            over most of a long run it does, and there "auto" only raises
            the schedule's decayed tail (where, in
            `optimizers.make_optimizer`); each event's
            `relative_step_scale` says what the scale did to the step, and
            `optimizers.UncappedAdafactor` has no cap. Adam's steps have a fixed size
            whatever the weight's size, so there "auto" is the operator's
            `weight_scale` instead: 0.5 after self fusion (its entries are
            halved), 1 after the others. `"width"` uses `hidden_dim`
            before/after (muP's 1/width rule for Adam).
        prepare_ahead: bool (default True). Build the grown model and trace
            its train step in a background thread while the current model
            trains (`keras_fusion.growth_ahead`), starting after the first
            step of `fit` once the previous growth is done, so that the
            growth itself only writes values: the event then costs a few
            steps instead of a model build and a retrace (numbers in the
            benchmarks/README.md, "Growth inside fit"). Same result as growing
            synchronously. Used only under the default strategy; a
            prepared model that does not match the growth (another
            optimizer config, a recompiled model, ...) is dropped and the
            growth is done synchronously (logged).

    Each event is logged, appended to `events` (a list of dicts: step,
    entry, parameters before/after, seconds, what was done with the
    optimizer's slots (`optimizer_slots`), the factor the learning rate was
    scaled by (`learning_rate_scale`, "auto" resolved), how much that changed
    the next step's size (`relative_step_scale`: the same factor, except
    under Keras' capped Adafactor; `optimizers.relative_step_scale`; a
    difference is printed), whether it was prepared ahead
    and if not why, the preparation's seconds in its thread and the seconds
    waited for it), written to TensorBoard when
    `log_dir` is set, and reported in the epoch logs as `num_parameters`
    (so `History` records the size per epoch).

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[GrowthCallback("deepen@500:layers=2")])
    ```
    """

    OPTIMIZER_SLOTS = growing.OPTIMIZER_SLOTS

    def __init__(
        self,
        schedule=None,
        max_parameters=None,
        log_dir=None,
        verbose=1,
        rewarmup_steps=0,
        optimizer_slots="carry",
        learning_rate_scale="auto",
        prepare_ahead=True,
    ):
        super().__init__()
        if not isinstance(prepare_ahead, bool):
            raise ValueError(f"prepare_ahead must be True or False, got {prepare_ahead!r}.")
        self.prepare_ahead = prepare_ahead
        if not (
            learning_rate_scale in ("auto", "width")
            or (isinstance(learning_rate_scale, (int, float)) and learning_rate_scale > 0)
        ):
            raise ValueError(
                'learning_rate_scale must be "auto", "width" or a number > 0, '
                f"got {learning_rate_scale!r}."
            )
        self.learning_rate_scale = learning_rate_scale
        if not isinstance(rewarmup_steps, int) or rewarmup_steps < 0:
            raise ValueError(f"rewarmup_steps must be an int >= 0, got {rewarmup_steps!r}.")
        if optimizer_slots not in self.OPTIMIZER_SLOTS:
            raise ValueError(
                f"optimizer_slots must be one of {self.OPTIMIZER_SLOTS}, got {optimizer_slots!r}."
            )
        self.rewarmup_steps = rewarmup_steps
        self.optimizer_slots = optimizer_slots
        self.schedule = None if schedule is None else growth.validate_schedule(schedule)
        self.max_parameters = max_parameters
        self.log_dir = log_dir
        self.verbose = verbose
        self.events = []
        self._pending = []
        self._writer = None
        self._preparation = None
        self._not_prepared = None

    def on_train_begin(self, logs=None):
        model = self.model
        if not isinstance(model, GrowingT5Seq2SeqLM):
            raise ValueError(
                "GrowthCallback grows a keras_fusion.models.GrowingT5Seq2SeqLM; "
                f"the model being fit is a {type(model).__name__}. Wrap it: "
                "GrowingT5Seq2SeqLM(lm)."
            )
        optimizer_state.check_supported(model.optimizer)
        if self.schedule is None:
            self.schedule = [self._default_entry(model)]
        step = int(model.optimizer.iterations.numpy())
        self._pending = self.pending(model)
        for entry in self._pending:
            if entry.at_step < step:
                raise ValueError(
                    f"{entry.describe()}: step {entry.at_step} has passed (the optimizer "
                    f"is at step {step}) and the entry was never applied."
                )
        growth.grown_configs(self._pending, backbone_config(model.backbone), self.max_parameters)
        if self._preparation is not None and not any(
            e is self._preparation.entry for e in self._pending
        ):
            self._preparation.wait()
            self._preparation = None
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # An entry due at the step fit starts from (a model trained to that
        # step in another fit or process, such as a fusion tree's node that
        # starts by fusing its inputs) grows now, before the first step.
        while self._pending and self._pending[0].at_step == step:
            self.grow(self._pending.pop(0), step)

    def pending(self, model):
        """The schedule's entries that `model` has not applied yet (not in
        its `growth_history`), in order; [] while the schedule is the
        default one that `fit` has not made yet."""
        applied = set(model.growth_history)
        return [e for e in (self.schedule or []) if e.describe() not in applied]

    def _default_entry(self, model):
        steps, epochs = (self.params or {}).get("steps"), (self.params or {}).get("epochs")
        if not steps or not epochs:
            raise ValueError(
                "GrowthCallback() without a schedule grows after a fraction of the steps fit will "
                "run, but fit does not know them (a dataset of unknown length): pass "
                "steps_per_epoch to fit, or give GrowthCallback a schedule."
            )
        return growth.default_entry(backbone_config(model.backbone), int(steps) * int(epochs))

    def on_train_batch_end(self, batch, logs=None):
        if not self._pending:
            return
        step = int(self.model.optimizer.iterations.numpy())
        while self._pending and self._pending[0].at_step <= step:
            self.grow(self._pending.pop(0), step)
        if self.prepare_ahead and self._pending and self._preparation is None:
            self._prepare(self._pending[0], step)

    def _prepare(self, entry, step):
        """Start building and tracing `entry`'s grown model in the background."""
        if (self._not_prepared and self._not_prepared[0] is entry) or entry.at_step <= step:
            return
        reason = growth_ahead.unsupported_reason(self.model)
        if reason is not None:
            self._not_prepared = (entry, reason)
            growth_ahead.log_refusal(entry, reason)
            return
        model = self.model
        scale = self._learning_rate_scale(entry, model)
        # The growth happens at the first execution boundary at or after its
        # step (the callback runs between calls of the train function), so
        # the grown optimizer's config (a re-warm-up's start) is that step's.
        config = optimizer_state.grown_config(
            model.optimizer,
            first_boundary(entry.at_step, step, getattr(model, "steps_per_execution", 1) or 1),
            self.rewarmup_steps,
            scale,
        )
        self._preparation = growth_ahead.Preparation(model, entry, config).start()

    def on_train_end(self, logs=None):
        # No thread outlives fit (a daemon thread running TensorFlow at
        # interpreter exit can crash it); a finished preparation is kept for
        # the next fit call.
        if self._preparation is not None:
            self._preparation.wait()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["num_parameters"] = self.model.backbone.count_params()

    def _learning_rate_scale(self, entry, model):
        """The factor on the rate from `entry`'s growth of `model` on."""
        optimizer = model.optimizer
        if self.learning_rate_scale == "auto":
            # Steps relative to each parameter's RMS shrink with the grown
            # kernels' RMS: restore them. Fixed-size (Adam) steps must
            # instead shrink with the entries.
            if optimizers.steps_follow_parameter_scale(optimizer):
                return entry.kernel_rms_scale
            return entry.weight_scale
        if self.learning_rate_scale == "width":
            config = backbone_config(model.backbone)
            return config["hidden_dim"] / entry.grown_config(config)["hidden_dim"]
        return float(self.learning_rate_scale)

    def grow(self, entry, step):
        """Apply one entry now (called by the callback at its step), through
        `keras_fusion.growing.apply_growth`; record, print and log it."""
        model = self.model
        preparation, self._preparation = self._preparation, None
        if preparation is not None and preparation.entry is not entry:
            preparation.wait()
            preparation.discard()
            preparation = None
        if not self.prepare_ahead:
            reason = "prepare_ahead=False"
        elif self._not_prepared and self._not_prepared[0] is entry:
            reason = self._not_prepared[1]
        else:
            reason = "due before a preparation could start"
        scale = self._learning_rate_scale(entry, model)
        step_scale = optimizers.relative_step_scale(model.optimizer, scale)
        outcome = growing.apply_growth(
            model,
            entry,
            step,
            learning_rate_scale=scale,
            rewarmup_steps=self.rewarmup_steps,
            optimizer_slots=self.optimizer_slots,
            preparation=preparation,
            not_prepared_reason=reason,
        )
        del preparation
        model.growth_history.append(entry.describe())
        event = {
            "step": step,
            "entry": entry.describe(),
            "parameters_before": outcome.parameters_before,
            "parameters_after": outcome.parameters_after,
            "seconds": outcome.seconds,
            "optimizer_slots": self.optimizer_slots,
            "learning_rate_scale": float(scale),
            "relative_step_scale": step_scale,
            "prepared_ahead": outcome.prepared_ahead,
            "not_prepared_reason": outcome.not_prepared_reason,
            "prepare_seconds": outcome.prepare_seconds,
            "waited_seconds": outcome.waited_seconds,
        }
        self.events.append(event)
        if self.verbose:
            message = (
                f"Growth at step {step}: {event['entry']}, parameters "
                f"{outcome.parameters_before:,} -> {outcome.parameters_after:,} "
                f"({outcome.seconds:.2f} s"
                + (
                    ", prepared ahead)"
                    if outcome.prepared_ahead
                    else f"; not prepared ahead: {outcome.not_prepared_reason})"
                )
            )
            print(message, flush=True)  # once: not also to the log
            if abs(step_scale - scale) > 1e-6 * scale:
                print(
                    f"  learning_rate_scale {scale:.4g} changes the step by {step_scale:.4g} "
                    "here: Keras' Adafactor caps its relative step at 1/sqrt(step); "
                    "optimizers.UncappedAdafactor steps at the rate given.",
                    flush=True,
                )
        if self._writer is not None:
            with self._writer.as_default(step=step):
                tf.summary.scalar("growth/num_parameters", event["parameters_after"])
                tf.summary.text("growth/event", event["entry"])
            self._writer.flush()
