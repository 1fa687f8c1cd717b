"""Optimizer state across growth: read slots as trees, rebuild, write back.

Keras optimizers refuse variables they were not built with, so a grown model
gets a new optimizer of the same class and config, built on its variables.
Its `iterations` continue (learning-rate schedules and Adam's bias
correction go on), and every slot is mapped by the growth operator that
mapped its variable (see `growth_maps`: first moments scale like the
gradient, second moments like its square, new entries start with a zero
first moment and a typical second moment).

What each optimizer gets:

| optimizer | slots carried | role |
|---|---|---|
| Adam, AdamW | `momentum` (m), `velocity` (v), `velocity_hat` (AMSGrad) | first, second, second |
| Adafactor | factored row/column statistics `r`, `c` of kernels; full `v` of vectors | second |

Adafactor's factored statistics are mapped through the full second moment
they stand for, `V = (r / mean(r)) c^T`: V is mapped as any second moment,
then factored again (`r = mean(V, -1)`, `c = mean(V, -2)`, which gives back
V exactly when it is rank one).
"""

import keras
import numpy as np

from keras_fusion import _keras_internals as internals
from keras_fusion.growth_maps import FIRST_MOMENT, SECOND_MOMENT

SUPPORTED = (keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.Adafactor)


def check_supported(optimizer):
    """Raise ValueError unless the optimizer's state can be carried."""
    if not isinstance(optimizer, SUPPORTED):
        raise ValueError(
            f"optimizer {type(optimizer).__name__} is not supported for growth; "
            f"supported: {', '.join(c.__name__ for c in SUPPORTED)}."
        )


_index = internals.variable_index
ADAM_ROLES = {"momentum": FIRST_MOMENT, "velocity": SECOND_MOMENT, "velocity_hat": SECOND_MOMENT}


def _adam_slots(optimizer):
    return {
        name: (ADAM_ROLES[name], slots) for name, slots in internals.adam_slots(optimizer).items()
    }


def read_slots(optimizer, variables):
    """The optimizer's state for a tree of variables.

    Args:
        optimizer: a built Adam, AdamW or Adafactor.
        variables: a parameter tree of the model's variables.

    Returns:
        `{slot_name: (role, tree of arrays)}`. An unbuilt optimizer has no
        state yet and gives `{}`.
    """
    check_supported(optimizer)
    if not optimizer.built:
        return {}
    if isinstance(optimizer, keras.optimizers.Adafactor):
        return {
            "second_moment": (
                SECOND_MOMENT,
                keras.tree.map_structure(lambda v: _adafactor_full(optimizer, v), variables),
            )
        }
    return {
        name: (
            role,
            keras.tree.map_structure(
                lambda v, s=slots: np.array(s[_index(optimizer, v)].numpy()), variables
            ),
        )
        for name, (role, slots) in _adam_slots(optimizer).items()
    }


def _adafactor_full(optimizer, variable):
    i = _index(optimizer, variable)
    v, r, c = internals.adafactor_slots(optimizer)
    if len(variable.shape) < 2:
        return np.array(v[i].numpy())
    r = np.array(r[i].numpy())
    c = np.array(c[i].numpy())
    mean = r.mean(axis=-1, keepdims=True)
    if not np.all(mean > 0):  # no update yet: no statistics
        return np.zeros(variable.shape, np.float32)
    return (r / mean)[..., :, None] * c[..., None, :]


def rebuild(
    optimizer, trainable_variables, variables, slots, rewarmup_steps=0, learning_rate_scale=1.0
):
    """A new optimizer like `optimizer`, built on the grown model, with state.

    Call inside the distribution strategy's scope.

    Args:
        optimizer: the optimizer of the model before growth.
        trainable_variables: all trainable variables of the grown model.
        variables: the grown model's parameter tree (same variables).
        slots: `{slot_name: (role, tree of arrays)}` already mapped to the
            grown shapes (as `read_slots` returns them, mapped); `{}` leaves
            every slot at zero (a fresh optimizer state).
        rewarmup_steps: int >= 0; when positive, the learning rate is
            ramped again from the growth step (`Rewarmup`).
        learning_rate_scale: float > 0; the learning rate from the growth
            on is multiplied by it (on top of earlier growths' scales).

    Returns:
        The built optimizer, `iterations` carried over.
    """
    check_variables(trainable_variables, variables)
    config = grown_config(
        optimizer, int(optimizer.iterations.numpy()), rewarmup_steps, learning_rate_scale
    )
    new = optimizer.__class__.from_config(config)
    new.build(trainable_variables)
    write_state(new, variables, slots, optimizer.iterations)
    return new


def check_variables(trainable_variables, variables):
    """Raise ValueError unless the trainable variables are the tree's leaves."""
    leaves = keras.tree.flatten(variables)
    if {id(v) for v in leaves} != {id(v) for v in trainable_variables}:
        raise ValueError(
            "The model's trainable variables are not exactly its T5 parameters "
            f"({len(trainable_variables)} trainable, {len(leaves)} in the tree): "
            "growth cannot carry the optimizer state of other variables."
        )


def grown_config(optimizer, step, rewarmup_steps=0, learning_rate_scale=1.0):
    """The config of the optimizer a growth at `step` gives (see `rebuild`)."""
    config = optimizer.get_config()
    if rewarmup_steps or learning_rate_scale != 1.0:
        base, scale = _base_rate(config["learning_rate"])
        config["learning_rate"] = keras.saving.serialize_keras_object(
            Rewarmup(base, int(step), rewarmup_steps, scale * learning_rate_scale)
        )
    return config


def write_state(optimizer, variables, slots, iterations):
    """Write `iterations` and mapped `slots` into a freshly built optimizer.

    Slots not in `slots` keep their fresh (zero) values.
    """
    optimizer.iterations.assign(iterations)
    if isinstance(optimizer, keras.optimizers.Adafactor):
        _write_adafactor(optimizer, variables, slots)
    elif slots:
        targets = _adam_slots(optimizer)
        for name, (_, tree) in slots.items():
            slot_list = targets[name][1]
            keras.tree.map_structure(
                lambda v, a: slot_list[_index(optimizer, v)].assign(a), variables, tree
            )


def _write_adafactor(optimizer, variables, slots):
    if not slots:
        return
    _, tree = slots["second_moment"]

    def write(variable, full):
        i = _index(optimizer, variable)
        v, r, c = internals.adafactor_slots(optimizer)
        if len(variable.shape) < 2:
            v[i].assign(full)
        else:
            r[i].assign(full.mean(axis=-1))
            c[i].assign(full.mean(axis=-2))

    keras.tree.map_structure(write, variables, tree)


def map_slots(slots, map_tree):
    """Apply `map_tree(tree, role, slot_name)` to every slot tree."""
    return {name: (role, map_tree(tree, role, name)) for name, (role, tree) in slots.items()}


def zero_entries(slots, mask):
    """`slots` (`{slot_name: (role, tree)}`) with every entry where the
    boolean tree `mask` is True set to zero."""
    return {
        name: (
            role,
            keras.tree.map_structure(
                lambda a, m: np.where(m, 0.0, a).astype(np.float32), tree, mask
            ),
        )
        for name, (role, tree) in slots.items()
    }


def moments_for_new_model(slots, partner):
    """Slot trees for a partner model that brings no optimizer state.

    First moments are zero; second moments take, leaf by leaf, the mean of
    the growing model's own second moment (a typical size), so that the
    partner's first updates are not outsized.

    Args:
        slots: the growing model's `{slot_name: (role, tree)}`.
        partner: the partner's parameter tree of arrays (same structure).
    """
    result = {}
    for name, (role, own) in slots.items():

        def fill(own_leaf, target, role=role):
            value = 0.0 if role == FIRST_MOMENT else float(np.mean(own_leaf))
            return np.full(np.shape(target), value, np.float32)

        result[name] = (role, keras.tree.map_structure(fill, own, partner))
    return result


def _base_rate(learning_rate):
    """The rate under any earlier re-warm-up, and its scale (they do not nest)."""
    if isinstance(learning_rate, dict) and learning_rate.get("class_name", "").endswith("Rewarmup"):
        return learning_rate["config"]["learning_rate"], learning_rate["config"].get("scale", 1.0)
    return learning_rate, 1.0


@keras.saving.register_keras_serializable(package="keras_fusion")
class Rewarmup(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate scaled and ramped linearly again after a growth.

    `rate(step) = base(step) * scale * min(1, (step - start_step + 1) / warmup_steps)`
    for `step >= start_step` (and `base(step)` before), where `base` is a
    float or another schedule, which keeps running on the global step. With
    `warmup_steps=0` there is no ramp.

    Args:
        learning_rate: float, or a `LearningRateSchedule` (or its
            serialized config).
        start_step: the optimizer step of the growth.
        warmup_steps: int >= 0, the length of the ramp.
        scale: float > 0, the factor from `start_step` on.

    Example:

    ```python
    rate = Rewarmup(1e-3, start_step=1000, warmup_steps=100)
    float(rate(1049))  # 5e-4
    ```
    """

    def __init__(self, learning_rate, start_step, warmup_steps, scale=1.0):
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}.")
        if not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a number > 0, got {scale!r}.")
        self.scale = float(scale)
        if isinstance(learning_rate, dict):
            learning_rate = keras.saving.deserialize_keras_object(learning_rate)
        self.learning_rate = learning_rate
        self.start_step = int(start_step)
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        base = self.learning_rate
        if callable(base):
            base = base(step)
        ramp = (step - float(self.start_step) + 1.0) / float(max(self.warmup_steps, 1))
        ramp = keras.ops.clip(ramp, 0.0, 1.0) * self.scale
        return base * keras.ops.where(step < float(self.start_step), 1.0, ramp)

    def get_config(self):
        rate = self.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.saving.serialize_keras_object(rate)
        return {
            "learning_rate": rate,
            "start_step": self.start_step,
            "warmup_steps": self.warmup_steps,
            "scale": self.scale,
        }
