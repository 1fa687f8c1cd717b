"""Growth prepared ahead: the grown model built and traced while training.

Most of a growth event's time is not the growth: it is building the grown
Keras model (~1.3-2.7 s for the tiny benchmark config) and tracing and
instantiating its train function on the first step after the growth
(~2.5-5 s), against ~20-60 ms for a training step
(`benchmarks/growth_overhead.py`). None of it depends on the weights: the
grown architecture is known from the schedule (`GrowthEntry.grown_config`) and the
data's element spec from the steps already run. So `GrowthCallback` does it
ahead, in a background thread, while the current model trains:

1. build the grown model (zero weights, `FusionT5Backbone.zeros`) in a
   `GrowingT5Seq2SeqLM` of its own, compiled like the model being fit, with a new optimizer of the
   config the growth will give (`optimizer_state.grown_config`), built;
2. record the values every variable has now (the fresh optimizer's zeros,
   the dropout seeds);
3. run one train step on a batch of ones of the recorded element spec: the
   train function is traced and instantiated (and the values changed).

At the growth step (`Preparation.adopt`) only values are written: the
grown parameters (`GrowthEntry.grown_parameters`, the same arrays the
synchronous path builds from), the recorded values back, the optimizer's
`iterations` and mapped slots (`optimizer_state.write_state`), and the
model's metric states. The model being fit then takes the prepared inner
model, optimizer, metric trackers and train function. The result is the
state the synchronous path gives (tested to equality in
`tests/test_growth_ahead.py`); anything that does not match what was
prepared (another config, optimizer config, compile config, a growth at a
different step with a step-dependent learning rate) makes `adopt` refuse
before writing anything, and the callback grows synchronously.

Only under the default (single-device, no `tf.distribute` scope) strategy:
building and tracing distributed variables off the main thread is not
attempted, and the one train step would run the strategy's cross-device
reductions concurrently with training's own (which collective
implementations such as NCCL do not allow); distributed runs grow
synchronously.

The thread's work is not free where the host has no idle core: it slows
the steps it overlaps (`benchmarks/growth_overhead.py`). With a core free
it still costs a few milliseconds per step, much of it in stalls of up to
~100 ms (most likely TensorFlow calls that hold the GIL), and sometimes one
full garbage collection set off by its allocations
(`benchmarks/preparation_interference.py`). Python's switch interval does
not shorten those stalls, so it is left alone.
"""

import collections.abc
import copy
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras_fusion import _keras_internals as internals
from keras_fusion import optimizer_state
from keras_fusion.distribution import is_distributed
from keras_fusion.models import variable_trees
from keras_fusion.models.fusion_t5_backbone import (
    FusionT5Backbone,
    backbone_config,
    backbone_variables,
)
from keras_fusion.models.fusion_t5_seq2seq_lm import FusionT5Seq2SeqLM
from keras_fusion.models.growing_t5_seq2seq_lm import GrowingT5Seq2SeqLM

__all__ = ["Preparation", "unsupported_reason"]


def unsupported_reason(model):
    """Why growth cannot be prepared ahead for `model` (None when it can)."""
    strategy = model.distribute_strategy
    if is_distributed(strategy):
        return f"the model trains under {type(strategy).__name__}"
    if model.run_eagerly:
        return "the model runs eagerly (nothing to trace)"
    spec = model.train_element_spec
    if spec is None:
        return "no training data seen yet"
    if not all(
        isinstance(s, tf.TensorSpec) and s.dtype != tf.string for s in tf.nest.flatten(spec)
    ):
        return f"the training data is not all numeric dense tensors ({spec})"
    return None


def plain_structure(structure):
    """`structure` with every mapping a `dict`, list a `list`, tuple a `tuple`.

    A Keras layer wraps a dict set as its attribute in a `TrackedDict`
    (`GrowingT5Seq2SeqLM.train_element_spec` is one). A dataset built from
    that spec yields `TrackedDict`s, which Keras' functional models take
    for another structure than the dict they were built on ("The structure
    of `inputs` doesn't match the expected structure", a `UserWarning` on
    every grown model's trace).
    """
    if isinstance(structure, collections.abc.Mapping):
        return {key: plain_structure(value) for key, value in structure.items()}
    if isinstance(structure, tuple) and not hasattr(structure, "_fields"):
        return tuple(plain_structure(value) for value in structure)
    if isinstance(structure, list):
        return [plain_structure(value) for value in structure]
    return structure


def _initial_value(variable):
    """A copy of the variable's value, or None when it is all zeros (the
    fresh optimizer's slots: no copy of the grown model's size is kept)."""
    value = np.asarray(variable.numpy())
    return np.array(value) if value.any() else None


def _dummy_dataset(spec):
    """A repeated dataset of ones whose element spec is exactly `spec`."""
    ones = tf.nest.map_structure(
        lambda s: tf.ones([1 if d is None else d for d in s.shape], s.dtype), spec
    )
    dataset = tf.data.Dataset.from_tensors(ones)
    if any(None in s.shape for s in tf.nest.flatten(spec)):
        # Relax the static shapes to the spec's (a batch dimension of None).
        def relax(*element):
            element = element if len(element) > 1 else element[0]
            return tf.nest.map_structure(
                lambda t, s: tf.raw_ops.PlaceholderWithDefault(input=t, shape=s.shape),
                element,
                spec,
            )

        dataset = dataset.map(relax)
    return dataset.repeat()


def _compile_config(model):
    """The model's compile config without the optimizer (compared apart)."""
    config = dict(model.get_compile_config() or {})
    config.pop("optimizer", None)
    return config


class Preparation:
    """A grown model for one schedule entry, built and traced in a thread.

    Created by `GrowthCallback` (`prepare_ahead=True`); `start()` begins the
    work; at the growth step the main thread calls `wait()`, then
    `mismatch(...)` (None when the prepared model fits the growth), then
    `adopt(...)`, which writes the values and hands the prepared model over.
    `seconds` and `phase_seconds` time the thread's work.

    Args:
        model: the `GrowingT5Seq2SeqLM` being fit (read here, in the
            calling thread; the thread touches only what it builds).
        entry: the `GrowthEntry` to prepare.
        optimizer_config: the grown optimizer's config
            (`optimizer_state.grown_config` at the entry's step).
    """

    def __init__(self, model, entry, optimizer_config):
        self.entry = entry
        self.grown_config = entry.grown_config(backbone_config(model.backbone))
        self.optimizer_class = model.optimizer.__class__
        self.optimizer_config = optimizer_config
        self.compile_config = _compile_config(model)
        self.element_spec = plain_structure(model.train_element_spec)
        self.preprocessor = model.lm.preprocessor
        # Keras keeps its global dtype policy per thread: the thread takes
        # the caller's (a mixed-precision policy set by the user included).
        self.dtype_policy = keras.config.dtype_policy()
        self.seconds = None
        self.started_at = self.finished_at = None  # time.perf_counter()
        self.phase_seconds = {}
        self.error = None
        self._wrapper = None
        self._initial = None
        self._thread = threading.Thread(
            target=self._run, name=f"keras_fusion-prepare-{entry.operator}", daemon=True
        )

    def start(self):
        self._thread.start()
        return self

    def wait(self):
        """Block until the thread is done; the seconds waited."""
        start = time.perf_counter()
        self._thread.join()
        return time.perf_counter() - start

    @property
    def done(self):
        return not self._thread.is_alive()

    def _run(self):
        self.started_at = time.perf_counter()
        try:
            self._build()
        except Exception as error:  # reported at adoption; the growth goes on synchronously
            self.error = error
            self._wrapper = None
        self.finished_at = time.perf_counter()
        self.seconds = self.finished_at - self.started_at

    def _build(self):
        # Keras' global state is per thread: seed this thread's generator so
        # that building draws nothing from Python's `random` (the weights are
        # overwritten anyway).
        internals.seed_this_thread(0)
        keras.config.set_dtype_policy(self.dtype_policy)
        clock = time.perf_counter()

        def phase(name):
            nonlocal clock
            now = time.perf_counter()
            self.phase_seconds[name] = now - clock
            clock = now

        lm = FusionT5Seq2SeqLM(
            backbone=FusionT5Backbone.zeros(self.grown_config), preprocessor=self.preprocessor
        )
        wrapper = GrowingT5Seq2SeqLM(lm)
        phase("build the grown model")
        compile_args = keras.saving.deserialize_keras_object(self.compile_config)
        compile_args.pop("optimizer", None)
        # (from_config deserializes the learning-rate schedule in place)
        compile_args["optimizer"] = self.optimizer_class.from_config(
            copy.deepcopy(self.optimizer_config)
        )
        wrapper.compile(**compile_args)
        optimizer = wrapper.optimizer
        optimizer.build(wrapper.trainable_variables)
        tree = backbone_variables(lm.backbone)
        optimizer_state.check_variables(wrapper.trainable_variables, tree)
        in_tree = {id(v) for v in keras.tree.flatten(tree)}
        self._initial = {
            "model": [(v, _initial_value(v)) for v in lm.weights if id(v) not in in_tree],
            "optimizer": [(v, _initial_value(v)) for v in optimizer.variables],
        }
        phase("compile, build the optimizer")
        wrapper.make_train_function()
        wrapper.train_function(iter(_dummy_dataset(self.element_spec)))
        phase("trace and run one train step")
        self._wrapper = wrapper

    def mismatch(self, model, step, optimizer_config):
        """Why the prepared model cannot serve this growth (None if it can).

        Call after `wait()`. Compares what was prepared with what the growth
        at `step` needs; touches nothing.
        """
        if self.error is not None:
            return f"preparing failed: {type(self.error).__name__}: {self.error}"
        if self.entry.grown_config(backbone_config(model.backbone)) != self.grown_config:
            return "the model's config changed since preparing"
        if (
            model.optimizer.__class__ is not self.optimizer_class
            or optimizer_config != self.optimizer_config
        ):
            keys = sorted(
                k
                for k in set(optimizer_config) | set(self.optimizer_config)
                if optimizer_config.get(k) != self.optimizer_config.get(k)
            )
            return (
                "the grown optimizer's config differs from the prepared one "
                f"(growth at step {step}; differing keys: {keys}; prepared "
                f"{ {k: self.optimizer_config.get(k) for k in keys} }, needed "
                f"{ {k: optimizer_config.get(k) for k in keys} })"
            )
        if _compile_config(model) != self.compile_config:
            return "the model was compiled again since preparing"
        ours, theirs = model.metrics_variables, self._wrapper.metrics_variables
        if [m.name for m in model.metrics] != [m.name for m in self._wrapper.metrics] or [
            tuple(v.shape) for v in ours
        ] != [tuple(v.shape) for v in theirs]:
            return "the model's metrics differ from the prepared model's"
        return None

    def adopt(self, parameters, slots, iterations):
        """Write the growth's values into the prepared model; hand it over.

        Args:
            parameters: the grown parameter tree (`entry.grown_parameters`).
            slots: the mapped optimizer slots (`{}`: fresh).
            iterations: the optimizer step to continue from.

        Returns:
            The prepared `GrowingT5Seq2SeqLM`, for `model.replace_lm(prepared)`,
            which writes everything into the model being fit.

        Raises:
            ValueError: the parameter tree does not fit the prepared model,
                before any value is written.
        """
        wrapper = self._wrapper
        tree = backbone_variables(wrapper.lm.backbone)
        variable_trees.assign(tree, parameters)
        for variable, value in self._initial["model"] + self._initial["optimizer"]:
            variable.assign(
                keras.ops.zeros(variable.shape, variable.dtype) if value is None else value
            )
        optimizer_state.write_state(wrapper.optimizer, tree, slots, iterations)
        self._wrapper = self._initial = None
        return wrapper

    def discard(self):
        """Drop the prepared model (its memory is freed at the next
        collection): for a preparation that did not match its growth."""
        self._wrapper = self._initial = None


def log_refusal(entry, reason):
    logging.info(
        "Growth %s not prepared ahead: %s; growing synchronously.", entry.describe(), reason
    )
