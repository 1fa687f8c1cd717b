"""The one function that applies a growth to a model being fit.

`apply_growth` does everything a growth does to the model: it reads and maps
the optimizer slots, computes the grown parameters, adopts the model
prepared ahead (`keras_fusion.growth_ahead`) or builds a new one, swaps it
in and frees the replaced model's memory, and returns a `GrowthOutcome`.
`keras_fusion.callbacks.GrowthCallback` decides when to call it and records,
prints and writes to TensorBoard what it returns (after TF Model Garden's
progressive trainer, whose `train_loop_end` grows and its caller keeps the
schedule).
"""

import dataclasses
import gc
import time
from typing import Optional

from keras_fusion import growth_ahead, optimizer_state
from keras_fusion.memory import release_free_memory
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from keras_fusion.models.fusion_t5_seq2seq_lm import FusionT5Seq2SeqLM

OPTIMIZER_SLOTS = ("carry", "reset", "reset_new")


@dataclasses.dataclass(frozen=True)
class GrowthOutcome:
    """What one growth did.

    Attributes:
        parameters_before: the backbone's parameter count before it.
        parameters_after: and after it.
        seconds: how long the growth held up training.
        not_prepared_reason: why the grown model was built now instead of
            adopted from a preparation; None when it was adopted.
        prepare_seconds: how long the preparation took (None: there was
            none).
        waited_seconds: how long the growth waited for the preparation.
    """

    parameters_before: int
    parameters_after: int
    seconds: float
    not_prepared_reason: Optional[str] = None
    prepare_seconds: Optional[float] = None
    waited_seconds: float = 0.0

    @property
    def prepared_ahead(self):
        return self.not_prepared_reason is None


def apply_growth(
    model,
    entry,
    step,
    learning_rate_scale=1.0,
    rewarmup_steps=0,
    optimizer_slots="carry",
    preparation=None,
    not_prepared_reason="no preparation was given",
):
    """Grow `model` by `entry` now, between two training steps.

    Args:
        model: the `GrowingT5Seq2SeqLM` being fit (compiled, its optimizer
            built).
        entry: the growth, a `keras_fusion.growth` schedule entry.
        step: the optimizer step the growth happens at (a re-warm-up starts
            there).
        learning_rate_scale: the factor on the learning rate from this
            growth on.
        rewarmup_steps: int >= 0; the rate ramps from zero again over this
            many steps (0: off).
        optimizer_slots: `"carry"` (each slot mapped with its variable),
            `"reset"` (the grown optimizer starts from zero slots) or
            `"reset_new"` (carried, but zero on the entries the growth
            creates, `GrowthEntry.new_entries`: SPARKLING's choice, where
            `"carry"` gives a new kernel entry's second moment its source
            blocks' mean).
        preparation: `entry`'s `growth_ahead.Preparation`, started earlier,
            or None. It is adopted when it still matches the model (else
            the growth says why in its outcome and builds synchronously).
        not_prepared_reason: why there is no preparation (used when
            `preparation` is None).

    Returns:
        A `GrowthOutcome`.

    Raises:
        ValueError: for an `optimizer_slots` that is not one of
            `OPTIMIZER_SLOTS`, before the model is touched.

    Example:

    ```python
    outcome = apply_growth(model, growth.SelfFuse(at_step=1000), step=1000)
    outcome.parameters_after  # the grown backbone's parameter count
    ```
    """
    if optimizer_slots not in OPTIMIZER_SLOTS:
        raise ValueError(
            f"optimizer_slots must be one of {OPTIMIZER_SLOTS}, got {optimizer_slots!r}."
        )
    start = time.perf_counter()
    before = model.backbone.count_params()
    waited = 0.0
    with model.distribute_strategy.scope():
        old_lm, old_optimizer = model.lm, model.optimizer
        config, parameters, map_tree = entry.grown_parameters(old_lm)
        slots = {}
        if optimizer_slots != "reset":
            read = optimizer_state.read_slots(old_optimizer, backbone_variables(old_lm.backbone))
            slots = optimizer_state.map_slots(read, map_tree)
            del read
        if optimizer_slots == "reset_new":
            slots = optimizer_state.zero_entries(slots, entry.new_entries(old_lm))
        if preparation is not None:
            waited = preparation.wait()
            not_prepared_reason = preparation.mismatch(
                model,
                step,
                optimizer_state.grown_config(
                    old_optimizer, step, rewarmup_steps, learning_rate_scale
                ),
            )
            if not_prepared_reason is not None:
                growth_ahead.log_refusal(entry, not_prepared_reason)
                preparation.discard()
        if not_prepared_reason is None:
            model.replace_lm(preparation.adopt(parameters, slots, old_optimizer.iterations))
        else:
            grown = FusionT5Seq2SeqLM.from_parameters(
                config, parameters, preprocessor=old_lm.preprocessor
            )
            model.replace_lm(
                grown,
                optimizer_state.rebuild(
                    old_optimizer,
                    grown.trainable_variables,
                    backbone_variables(grown.backbone),
                    slots,
                    rewarmup_steps=rewarmup_steps,
                    learning_rate_scale=learning_rate_scale,
                ),
            )
            del grown
    prepare_seconds = None if preparation is None else preparation.seconds
    # Free the replaced model and optimizer now. They sit in reference
    # cycles (Keras layers, trackers and bound methods refer back to their
    # owners), so dropping the last outside reference does not free them:
    # only a full cyclic collection does, possibly many steps later, after
    # the grown model's training has already taken fresh memory from the
    # allocator, which then keeps both (resident memory after five growths
    # was ~13% above the final model built directly,
    # `benchmarks/growth_memory.py`). This frame's locals would keep them
    # alive through the collection: drop them first. (The preparation no
    # longer holds a model: adopted or discarded above.)
    del old_lm, old_optimizer, slots, map_tree, parameters, preparation
    gc.collect()
    release_free_memory()
    return GrowthOutcome(
        parameters_before=before,
        parameters_after=model.backbone.count_params(),
        seconds=round(time.perf_counter() - start, 3),
        not_prepared_reason=not_prepared_reason,
        prepare_seconds=None if prepare_seconds is None else round(prepare_seconds, 3),
        waited_seconds=round(waited, 3),
    )
