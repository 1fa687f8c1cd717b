"""Every private Keras, keras-hub and TensorFlow API keras_fusion uses.

The rest of the package reaches these only through the small named functions
here, so a Keras or keras-hub upgrade breaks in one module. The versions they
were written against are pinned in setup.py (Keras 3.15, keras-hub 0.32,
TensorFlow 2.21); the canary tests in tests/test_keras_internals.py fail
first when an upgrade changes one of them.

Public forms are used wherever one exists (`keras_hub.models.Backbone`,
`variable.dtype`, `get_compile_config`, `tf.distribute.has_strategy`).
"""

import contextlib

import keras
from keras.src.backend.common import global_state
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.utils import tracking
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention
from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.keras_utils import gelu_approximate

__all__ = [
    "T5LayerNorm",
    "T5MultiHeadAttention",
    "T5TransformerLayer",
    "adam_slots",
    "adafactor_slots",
    "adopt_compiled_trainer",
    "build_uninitialized",
    "gelu_approximate",
    "hand_back_uninitialized",
    "in_stateless_scope",
    "initialize_with",
    "is_uninitialized",
    "patch_strategy_reduce",
    "preset_utils",
    "refresh_compiled_trainable_state",
    "seed_this_thread",
    "set_compiled_optimizer",
    "set_uninitialized_initializer",
    "untracked",
    "untracking",
    "variable_index",
]

# --- Deferred variable initialisation -----------------------------------
#
# `FusionT5Backbone.from_parameters` builds a model whose variables are
# created holding given values. Keras 3.15 (keras/src/backend/common/
# variables.py and stateless_scope.py, keras/src/backend/tensorflow/core.py):
# - a Variable created inside `keras.StatelessScope` with a callable
#   initializer gets `_value = None`, keeps the callable in `_initializer`
#   and is appended to the thread-local list "uninitialized_variables" of
#   `global_state`; `StatelessScope(initialize_variables=False)` leaves them
#   there on exit;
# - `Variable._deferred_initialize()` (what `initialize_all_variables()`
#   calls for each) creates the backend variable from
#   `_initializer(shape, dtype)` and then drops `_initializer`. With
#   TensorFlow it creates the `tf.Variable` (under `tf.init_scope()`, a
#   no-op in eager mode) in the caller's context, so inside a `tf.distribute`
#   `strategy.scope()` the variables come out distributed (MirroredVariable)
#   exactly as in a normal construction; the callable may then be called
#   once per replica, so it must not consume its array.

_UNINITIALIZED = "uninitialized_variables"  # keras' global_state key


def build_uninitialized(build):
    """`build()` with variable initialisation deferred.

    Returns `(result, variables)`: what `build` returned, and the variables
    it created, none of them initialised yet. They are taken out of Keras'
    list of variables to initialise (whatever happens), so initialising them
    is the caller's job (`initialize_with`); variables that someone else left
    uninitialised stay theirs.
    """
    earlier = list(global_state.get_global_attribute(_UNINITIALIZED) or [])
    earlier_ids = {id(v) for v in earlier}
    try:
        with keras.StatelessScope(initialize_variables=False):
            result = build()
    finally:
        registered = global_state.get_global_attribute(_UNINITIALIZED) or []
        ours = [v for v in registered if id(v) not in earlier_ids]
        global_state.set_global_attribute(_UNINITIALIZED, earlier)
    return result, ours


def is_uninitialized(variable):
    """True while a deferred variable holds no value."""
    return variable._value is None


def set_uninitialized_initializer(variable, initializer):
    """Give a deferred variable the initializer it will be created from."""
    variable._initializer = initializer


def initialize_with(variable, initializer=None):
    """Create a deferred variable now, from `initializer` (or its own).

    Keras drops the initializer once it has been called.
    """
    if initializer is not None:
        variable._initializer = initializer
    variable._deferred_initialize()


def hand_back_uninitialized(variables):
    """Return deferred variables to Keras, which initialises them when the
    enclosing `keras.StatelessScope` ends."""
    registered = global_state.get_global_attribute(_UNINITIALIZED) or []
    global_state.set_global_attribute(_UNINITIALIZED, registered + list(variables))


def seed_this_thread(seed):
    """Seed this thread's Keras global seed generator.

    Keras' global state is per thread: a model built in another thread
    would otherwise draw its seed from Python's `random`.
    """
    global_state.set_global_attribute("global_seed_generator", keras.random.SeedGenerator(seed))


# --- Tracking and the trainer's compiled state ---------------------------


def untracked():
    """A scope in which attribute assignments are not tracked by Keras."""
    return tracking.DotNotTrackScope()


@contextlib.contextmanager
def untracking(model, old):
    """Unlock `model`'s tracker and forget `old` (a layer it tracks).

    The tracker is locked after build; without untracking, the old layer's
    variables would stay in `model.trainable_variables`.
    """
    locked = model._tracker.locked
    model._tracker.unlock()
    try:
        model._tracker.untrack(old)
        yield
    finally:
        if locked:
            model._tracker.lock()


def refresh_compiled_trainable_state(model):
    """Record the model's current layers in `_compiled_trainable_state`.

    `compile` sets this dict (layer -> trainable) with Keras tracking off, so
    TensorFlow wraps it in a `_DictWrapper` and registers it as a checkpoint
    dependency named `_compiled_trainable_state` (in the model's
    `_self_unconditional_checkpoint_dependencies`), and the wrapper keeps a
    snapshot copy: its keys hold every layer, a replaced model's included.
    A plain `model._compiled_trainable_state = {}` would be wrapped by Keras'
    tracker into a `TrackedDict`, which is not a TF `Trackable`, so TF's
    dependency would not be overwritten and the old dict (with the replaced
    model) would stay referenced. Reassigning as `compile` does (tracking
    off, a plain dict) makes TF overwrite the dependency by name. It also
    records the new layers, so Keras does not later report them as
    "trainable state changed since compile".
    """
    if getattr(model, "_compiled_trainable_state", None) is not None:
        with untracked():
            model._compiled_trainable_state = {
                layer: layer.trainable for layer in model._flatten_layers()
            }


def set_compiled_optimizer(model, optimizer):
    """Make `optimizer` the one `model`'s saved compile config recompiles with."""
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:
        compile_config.config["optimizer"] = optimizer


def adopt_compiled_trainer(model, source):
    """Give `model` the loss tracker, compiled loss and metrics of `source`.

    A train function traced on `source` updates these objects: a model that
    adopts the function must report them.
    """
    with untracked():
        model._loss_tracker = source._loss_tracker
        model._compile_loss = source._compile_loss
        model._compile_metrics = source._compile_metrics


# --- Optimizer slots ---------------------------------------------------


def variable_index(optimizer, variable):
    """The index of `variable`'s slots in the optimizer's slot lists."""
    return optimizer._get_variable_index(variable)


def adam_slots(optimizer):
    """`{name: slot variable list}` of an Adam or AdamW (`velocity_hat`
    only with AMSGrad)."""
    slots = {"momentum": optimizer._momentums, "velocity": optimizer._velocities}
    if optimizer.amsgrad:
        slots["velocity_hat"] = optimizer._velocity_hats
    return slots


def adafactor_slots(optimizer):
    """`(v, r, c)`: an Adafactor's full second moments (of vectors) and its
    factored row and column statistics (of matrices)."""
    return optimizer._v, optimizer._r, optimizer._c


# --- tf.distribute -----------------------------------------------------


def patch_strategy_reduce(strategy):
    """Work around two Keras 3.15 bugs that break `fit` with dict inputs
    under `MultiWorkerMirroredStrategy`, by wrapping `strategy.reduce`:

    1. `TensorFlowTrainer._maybe_symbolic_build` reduces the whole first
       batch at once; the strategy reduces single tensors only ("Attempt to
       convert a value ({'encoder_token_ids': PerReplica...}) ... to a
       Tensor"). Reduce leaf by leaf.
    2. `reduce_per_replica(..., reduction="mean")` reduces scalar losses
       along axis 0 ("Invalid reduction dimension 0 for input with 0
       dimensions"). Use `axis=None` for scalars.
    """
    import tensorflow as tf

    reduce = strategy.reduce

    def reduce_leaf(reduce_op, value, axis):
        if axis is not None and strategy.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return reduce(reduce_op, value, axis=axis)

    def nested_reduce(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_leaf(reduce_op, v, axis), value)

    strategy.reduce = nested_reduce
    return strategy
