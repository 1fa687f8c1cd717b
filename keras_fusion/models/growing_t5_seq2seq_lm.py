"""GrowingT5Seq2SeqLM: the model object that grows in place during fit."""

import keras
import tensorflow as tf
from keras.src.utils import tracking

from keras_fusion.models.fusion_t5_seq2seq_lm import FusionT5Seq2SeqLM


@keras.saving.register_keras_serializable(package="keras_fusion")
class GrowingT5Seq2SeqLM(keras.Model):
    """A T5 language model whose architecture can change during `fit`.

    Keras compiles `fit`'s step around one model object; a functional model
    cannot change its layers in place. This wrapper delegates `call` to an
    inner `FusionT5Seq2SeqLM` (`.lm`), which `GrowthCallback` swaps for a
    grown one between two training steps, so the object passed to `fit` is
    the object that grows: after `fit`, `model.backbone` reports the grown
    dimensions.

    Args:
        lm: a `FusionT5Seq2SeqLM` (a plain `keras_hub` `T5Seq2SeqLM` is
            converted, weights shared).
        growth_history: descriptions of the growth entries already applied
            (set by `GrowthCallback`; saved with the model so that a resumed
            run does not apply them again).

    Example:

    ```python
    model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(backbone))
    model.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data, epochs=3, callbacks=[GrowthCallback("self_fuse@1000")])
    model.backbone.hidden_dim  # twice what it was
    ```
    """

    def __init__(self, lm, growth_history=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(lm, FusionT5Seq2SeqLM):
            if not hasattr(lm, "backbone"):
                raise ValueError(f"lm must be a T5Seq2SeqLM, got {type(lm).__name__}.")
            lm = FusionT5Seq2SeqLM(backbone=lm.backbone, preprocessor=lm.preprocessor)
        self.lm = lm
        self.growth_history = list(growth_history or [])
        # The element spec of the data `fit` trains on (recorded by the
        # train function; `keras_fusion.growth_ahead` traces a grown model's
        # train step on it before the growth).
        self.train_element_spec = None

    def call(self, inputs, training=False):
        return self.lm(inputs, training=training)

    def build(self, input_shape=None):
        self.built = True

    @property
    def backbone(self):
        return self.lm.backbone

    @property
    def preprocessor(self):
        return self.lm.preprocessor

    def generate(self, *args, **kwargs):
        return self.lm.generate(*args, **kwargs)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        self.train_function = self._recording(self.train_function)
        return self.train_function

    def _recording(self, function):
        """`function`, recording the element spec of the data it is given."""

        def train_function(iterator):
            if isinstance(iterator, tf.data.Iterator):
                self.train_element_spec = iterator.element_spec
            return function(iterator)

        return train_function

    def replace_lm(self, lm, optimizer=None, train_function=None):
        """Swap in a grown inner model (and its optimizer), untracking the old.

        The tracker is locked after build; without untracking, the old
        variables would stay in `trainable_variables`. The train, test and
        predict functions are reset so that the next step traces the new
        model: without that `fit` silently trains the old variables.
        `train_function`, when given, is a train function already traced on
        `lm` and `optimizer` (`keras_fusion.growth_ahead`) and becomes the
        model's.

        Nothing may keep the old model (its variables, and through them the
        old optimizer's slots) alive: after five growths the replaced models
        held ~300 MiB, more than the final model with its optimizer state
        (`benchmarks/growth_memory.py`). Besides the tracker, `compile`
        records `_compiled_trainable_state`, a dict keyed by every layer, the
        old model's included; it is refreshed here (see below).
        """
        old = self.lm
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self._tracker.untrack(old)
            self.lm = lm
            if getattr(self, "_compiled_trainable_state", None) is not None:
                # `compile` sets this dict (layer -> trainable) with Keras
                # tracking off, so TensorFlow wraps it in a `_DictWrapper`
                # and registers it as a checkpoint dependency named
                # `_compiled_trainable_state` (in the model's
                # `_self_unconditional_checkpoint_dependencies` and
                # `_self_unconditional_dependency_names`), and the wrapper
                # keeps a snapshot copy: its keys hold every old layer. The
                # trap: a plain `self._compiled_trainable_state = {}` is
                # wrapped by Keras' tracker into a `TrackedDict`, which is
                # not a TF `Trackable`, so TF's dependency is not overwritten
                # and the old dict (with the old model) stays referenced.
                # Reassigning as `compile` does (tracking off, a plain dict)
                # makes TF overwrite the dependency by name. It also records
                # the new layers, so Keras does not later report the grown
                # layers as "trainable state changed since compile".
                with tracking.DotNotTrackScope():
                    self._compiled_trainable_state = {
                        layer: layer.trainable for layer in self._flatten_layers()
                    }
            if optimizer is not None:
                self.optimizer = optimizer
                # Saved models recompile from the compile config: keep its
                # optimizer the grown one (a re-warm-up schedule included).
                compile_config = getattr(self, "_compile_config", None)
                if compile_config is not None:
                    compile_config.config["optimizer"] = optimizer
        finally:
            if locked:
                self._tracker.lock()
        if train_function is None:
            self.make_train_function(force=True)
        else:
            self.train_function = self._recording(train_function)
        self.test_function = None
        self.predict_function = None

    def get_config(self):
        config = super().get_config()
        lm = keras.saving.serialize_keras_object(self.lm)
        # The inner task's compile config would be restored by its own
        # custom compile(), which Keras refuses with a warning at every load;
        # what trains is the wrapper, whose compile config Keras restores.
        lm.pop("compile_config", None)
        config.update({"lm": lm, "growth_history": self.growth_history})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["lm"] = keras.saving.deserialize_keras_object(config["lm"])
        return cls(**config)
