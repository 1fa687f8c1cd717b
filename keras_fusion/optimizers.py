"""Optimizers and learning-rate schedules for the recipes (AdamW, Adafactor,
Adafactor without Keras' cap on its rate, AdamW scaled by each parameter's RMS).

```python
from keras_fusion import optimizers

optimizer = optimizers.make_optimizer("adamw", 3e-3, "cosine", warmup_steps=50, total_steps=1000)
```
"""

import keras

from keras_fusion import _keras_internals

OPTIMIZERS = ("adafactor", "adafactor_uncapped", "adamw", "adamw_scale")
LR_SCHEDULES = ("constant", "inverse_sqrt", "cosine", "wsd")

# The defaults of the recipes and of tools.train, measured by
# benchmarks/training_defaults.py (benchmarks/README.md, "Training
# defaults"): the setting with the lowest held-out loss after the same steps
# for the hidden-64 target and its hidden-32 partner.
DEFAULT_OPTIMIZER = "adafactor"
DEFAULT_LEARNING_RATE = 3e-2
DEFAULT_LR_SCHEDULE = "cosine"
WARMUP_FRACTION = 0.05  # of the run's steps, when no warm-up is given


def steps_follow_parameter_scale(optimizer):
    """Whether `optimizer`'s steps are relative to each parameter's RMS
    (Keras' Adafactor, `AdamWScale`), so that a growth that rescales the
    parameters rescales the steps with them."""
    return isinstance(optimizer, (keras.optimizers.Adafactor, AdamWScale))


def relative_step_scale(optimizer, learning_rate_scale):
    """How much multiplying `optimizer`'s rate by `learning_rate_scale` now
    changes the size of its next step.

    `learning_rate_scale` itself, except under Keras' Adafactor, whose
    relative step is min(rate, 1/sqrt(t)) at optimizer step t (`t` is
    `iterations + 1`; `make_optimizer`'s docstring says where that binds):
    there it is min(scale * rate, cap) / min(rate, cap), 1.0 where the cap
    binds at both rates. `GrowthCallback` records it with each growth
    (`relative_step_scale`), so that a scale the cap cancels is seen.

    Args:
        optimizer: a Keras optimizer, at the step of the change (its
            rate is read from its schedule at `iterations`).
        learning_rate_scale: the factor, a number > 0.

    Returns:
        A float.

    Example:

    ```python
    optimizer = keras.optimizers.Adafactor(0.03)
    optimizer.iterations.assign(4800)  # 1/sqrt(4801) = 0.0144 < 0.03
    relative_step_scale(optimizer, 2 ** 0.5)  # 1.0: the cap binds
    ```
    """
    scale = float(learning_rate_scale)
    if not isinstance(optimizer, keras.optimizers.Adafactor) or isinstance(
        optimizer, UncappedAdafactor
    ):
        return scale
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    cap = 1.0 / float(int(optimizer.iterations.numpy()) + 1) ** 0.5
    if not rate > 0:
        return scale
    return min(scale * rate, cap) / min(rate, cap)


def default_warmup_steps(total_steps):
    """`WARMUP_FRACTION` of `total_steps`, rounded: the warm-up when none is given."""
    return round(WARMUP_FRACTION * total_steps)


def default_optimizer(total_steps, warmup_steps=None):
    """The measured default: `DEFAULT_OPTIMIZER` at `DEFAULT_LEARNING_RATE`
    on `DEFAULT_LR_SCHEDULE` over `total_steps`, warming up over
    `warmup_steps` (default: `WARMUP_FRACTION` of them).

    Example:

    ```python
    model.compile(optimizer=default_optimizer(total_steps=2000), ...)
    ```
    """
    if warmup_steps is None:
        warmup_steps = default_warmup_steps(total_steps)
    return make_optimizer(
        DEFAULT_OPTIMIZER,
        DEFAULT_LEARNING_RATE,
        DEFAULT_LR_SCHEDULE,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )


def make_optimizer(
    name, learning_rate, schedule="constant", warmup_steps=0, total_steps=1, global_clipnorm=None
):
    """Adafactor (T5's), `UncappedAdafactor`, AdamW or `AdamWScale`, with a
    learning-rate schedule.

    Schedules: `constant` (after `warmup_steps` of linear warm-up when
    given), `inverse_sqrt` (T5's), `cosine` (linear warm-up, then cosine
    decay to 0 at `total_steps`) and `wsd` (`WarmupStableDecay`: linear
    warm-up, constant, then linear decay to 0 over the last fifth).

    `global_clipnorm`: None, or a number > 0: the gradients of a step are
    scaled down together when their global norm exceeds it (Keras' own
    option; a grown optimizer keeps it).

    Keras' Adafactor takes min(rate, 1/sqrt(t)) as its relative step at
    optimizer step t, for a constant rate and a schedule alike, and with
    `relative_step=False` too (T5's and Hugging Face's Adafactor cap only
    their default rate). At 3e-2 the cap is below the rate from step 1,111
    on, so a warm-up-cosine schedule acts as warm-up, then T5's inverse
    square root, then the cosine's tail once it falls below the cap: over
    64,000 steps the cap binds from about 0.035 to 0.76 of the run, over
    32,000 from 0.044 to 0.70, and never over the tiny preset's 2,400.
    `"adafactor_uncapped"` (`UncappedAdafactor`) steps at the rate given.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
    if global_clipnorm is not None and not global_clipnorm > 0:
        raise ValueError(f"global_clipnorm must be None or > 0, got {global_clipnorm!r}.")
    rate = learning_rate
    if schedule == "constant" and warmup_steps:
        rate = WarmupStableDecay(learning_rate, warmup_steps, total_steps, decay_fraction=0.0)
    elif schedule == "inverse_sqrt":
        rate = InverseSqrt(learning_rate, max(warmup_steps, 1))
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            max(total_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    elif schedule == "wsd":
        rate = WarmupStableDecay(learning_rate, warmup_steps, total_steps)
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=0.0, global_clipnorm=global_clipnorm)
    if name == "adamw_scale":
        return AdamWScale(rate, weight_decay=0.0, global_clipnorm=global_clipnorm)
    if name == "adafactor_uncapped":
        return UncappedAdafactor(rate, global_clipnorm=global_clipnorm)
    return keras.optimizers.Adafactor(rate, global_clipnorm=global_clipnorm)


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


@keras.saving.register_keras_serializable(package="keras_fusion")
class WarmupStableDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up, stable, decay: linear warm-up over `warmup_steps`, the peak
    rate, then a linear decay to 0 over the last `decay_fraction` of
    `total_steps` (0: no decay, a constant rate after the warm-up).

    Example:

    ```python
    rate = WarmupStableDecay(1e-2, warmup_steps=100, total_steps=2000)
    rate(0), rate(1000), rate(1999)  # ~1e-4, 1e-2, ~2.5e-5
    ```
    """

    def __init__(self, learning_rate, warmup_steps, total_steps, decay_fraction=0.2):
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction!r}.")
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.decay_fraction = decay_fraction

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") + 1.0
        warmup = keras.ops.minimum(step / float(max(self.warmup_steps, 1)), 1.0)
        decay_steps = self.decay_fraction * self.total_steps
        if decay_steps <= 0:
            return self.learning_rate * warmup
        remaining = (float(self.total_steps) + 1.0 - step) / decay_steps
        return self.learning_rate * keras.ops.minimum(warmup, keras.ops.clip(remaining, 0.0, 1.0))

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay_fraction": self.decay_fraction,
        }


@keras.saving.register_keras_serializable(package="keras_fusion")
class AdamWScale(keras.optimizers.AdamW):
    """AdamW whose step on each variable is scaled by that variable's RMS.

    nanoT5's "adamwscale" (PiotrNawrot/nanoT5, `nanoT5/utils/copied_utils.py`):
    plain AdamW was unstable for T5 pre-training, and multiplying each
    update by `max(1e-3, rms(variable))`, as Adafactor does, fixed it. The
    RMS is the variable's before the step; weight decay keeps AdamW's own
    rate. Its slots are AdamW's, so growth carries them as it does AdamW's.

    Args:
        As `keras.optimizers.AdamW`.

    Example:

    ```python
    optimizer = AdamWScale(learning_rate=1e-2, weight_decay=0.0)
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        scale = keras.ops.maximum(keras.ops.cast(1e-3, variable.dtype), _rms(variable))
        rate = keras.ops.cast(learning_rate, variable.dtype) * scale
        super().update_step(gradient, variable, rate)


@keras.saving.register_keras_serializable(package="keras_fusion")
class UncappedAdafactor(keras.optimizers.Adafactor):
    """Keras' Adafactor, stepping at the rate it is given.

    Keras' Adafactor moves each parameter by min(rate, 1/sqrt(t)) times its
    RMS (at least `epsilon_2`) at optimizer step t, whatever the rate and
    `relative_step` (`make_optimizer`'s docstring says where that binds).
    This one moves it by the rate times its RMS, as Hugging Face's
    `Adafactor(relative_step=False)` and T5's Adafactor with an explicit
    rate do: a schedule then shapes the whole run, and a growth's
    `learning_rate_scale` acts at once. Everything else is Keras' update
    (factored second moments, the decay 1 - t^beta_2_decay, update
    clipping), and its slots are Keras' Adafactor's, so growth carries them
    the same way. `tests/test_optimizers.py` checks its steps against
    Hugging Face's. Measured over 2,000 steps (benchmarks/README.md,
    "Training defaults"): at 3e-2 it ends where Keras' does (the cap never
    binds there); at 1e-1 it ends 0.07 to 0.12 higher, so uncapped rates
    want to be lower. Not the default: at 16,000 steps (scratch;
    benchmarks/README.md, "Adafactor without its cap") its best rate, 2e-2,
    ended 0.033 below Keras' Adafactor at 3e-2 over 3 seeds, but 0.012
    above it on one, inside both optimizers' seed spreads (0.12 and 0.13).

    Args:
        As `keras.optimizers.Adafactor` (`relative_step` has no effect).

    Example:

    ```python
    optimizer = UncappedAdafactor(learning_rate=1e-2)
    # or: make_optimizer("adafactor_uncapped", 1e-2, "cosine", 100, 2000)
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        # keras.src.optimizers.adafactor.Adafactor.update_step (Keras 3.15),
        # with the relative step rho_t the rate itself.
        ops = keras.ops
        rho_t = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        epsilon_2 = ops.cast(self.epsilon_2, variable.dtype)
        one = ops.cast(1.0, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        v_list, r_list, c_list = _keras_internals.adafactor_slots(self)
        index = _keras_internals.variable_index(self, variable)
        r, c, v = r_list[index], c_list[index], v_list[index]

        alpha_t = ops.maximum(epsilon_2, _rms(variable)) * rho_t
        regulated_grad_square = ops.add(ops.square(gradient), self.epsilon_1)
        beta_2_t = ops.subtract(1, ops.power(local_step, self.beta_2_decay))
        if len(variable.shape) >= 2:
            # r drops the gradient's last axis, c its second last.
            self.assign(
                r,
                beta_2_t * r + (1 - beta_2_t) * ops.mean(regulated_grad_square, axis=-1),
            )
            self.assign(
                c,
                beta_2_t * c + (1 - beta_2_t) * ops.mean(regulated_grad_square, axis=-2),
            )
            self.assign(
                v,
                ops.expand_dims(r / ops.mean(r, axis=-1, keepdims=True), axis=-1)
                * ops.expand_dims(c, -2),
            )
        else:
            self.assign(v, beta_2_t * v + (1 - beta_2_t) * regulated_grad_square)
        u_t = gradient / ops.sqrt(v)
        u_t_hat = u_t / ops.maximum(one, _rms(u_t) / self.clip_threshold)
        self.assign_sub(variable, alpha_t * u_t_hat)


def _rms(x):
    """Root mean square over every entry (what Adafactor and AdamWScale scale by)."""
    return keras.ops.sqrt(keras.ops.mean(keras.ops.square(x)))
