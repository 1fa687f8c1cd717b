"""Optimizers and learning-rate schedules for the recipes (AdamW, Adafactor).

```python
from keras_fusion import optimizers

optimizer = optimizers.make_optimizer("adamw", 3e-3, "cosine", warmup_steps=50, total_steps=1000)
```
"""

import keras

OPTIMIZERS = ("adafactor", "adamw")
LR_SCHEDULES = ("constant", "inverse_sqrt", "cosine")


def make_optimizer(
    name, learning_rate, schedule="constant", warmup_steps=0, total_steps=1, global_clipnorm=None
):
    """Adafactor (T5's) or AdamW, with a learning-rate schedule.

    `global_clipnorm`: None, or a number > 0: the gradients of a step are
    scaled down together when their global norm exceeds it (Keras' own
    option; a grown optimizer keeps it).
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
    if schedule == "inverse_sqrt":
        rate = InverseSqrt(learning_rate, max(warmup_steps, 1))
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else learning_rate,
            max(total_steps - warmup_steps, 1),
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=0.0, global_clipnorm=global_clipnorm)
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
