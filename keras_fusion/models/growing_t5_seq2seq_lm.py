"""GrowingT5Seq2SeqLM: the model object that grows in place during fit."""

import keras
import tensorflow as tf

from keras_fusion import _keras_internals as internals
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
    model.compile(
        optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
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

    def replace_lm(self, grown, optimizer=None):
        """Swap in a grown inner model (and its optimizer): the one place
        where a growth writes into the model being fit.

        The old model is untracked (the tracker is locked after build;
        without untracking, the old variables would stay in
        `trainable_variables`), and the train, test and predict functions
        are reset so that the next step traces the new model: without that
        `fit` silently trains the old variables.

        Nothing may keep the old model (its variables, and through them the
        old optimizer's slots) alive: after five growths the replaced models
        held ~300 MiB, more than the final model with its optimizer state
        (`benchmarks/growth_memory.py`). Besides the tracker, `compile`
        records the layers it saw; that record is refreshed here.

        Args:
            grown: the grown `FusionT5Seq2SeqLM`; or a `GrowingT5Seq2SeqLM`
                around it, compiled with its optimizer and traced ahead of
                time (`keras_fusion.growth_ahead`), whose inner model,
                optimizer and train function (with the loss tracker,
                compiled loss and metrics it updates) become this model's;
                those take this model's current values first, so the
                epoch's running metrics go on.
            optimizer: the grown inner model's optimizer (built on its
                variables), or None to keep the current one; must be None
                with a prepared `GrowingT5Seq2SeqLM`, which brings its own.

        Raises:
            ValueError: an optimizer given with a prepared model.
        """
        prepared = grown if isinstance(grown, GrowingT5Seq2SeqLM) else None
        if prepared is not None:
            if optimizer is not None:
                raise ValueError(
                    "replace_lm: a prepared GrowingT5Seq2SeqLM brings its own optimizer; "
                    f"got optimizer={optimizer!r} as well."
                )
            grown, optimizer = prepared.lm, prepared.optimizer
        with internals.untracking(self, self.lm):
            self.lm = grown
            internals.refresh_compiled_trainable_state(self)
            if optimizer is not None:
                self.optimizer = optimizer
                # Saved models recompile from the compile config: keep its
                # optimizer the grown one (a re-warm-up schedule included).
                internals.set_compiled_optimizer(self, optimizer)
        if prepared is None:
            self.make_train_function(force=True)
        else:
            for source, target in zip(self.metrics_variables, prepared.metrics_variables):
                target.assign(source)
            internals.adopt_compiled_trainer(self, prepared)
            self.train_function = self._recording(prepared.train_function)
        self.test_function = None
        self.predict_function = None

    def get_config(self):
        config = super().get_config()
        # (The inner task saves no compile config, FusionT5Seq2SeqLM.
        # get_compile_config: what trains is the wrapper, whose compile
        # config Keras restores.)
        config.update(
            {
                "lm": keras.saving.serialize_keras_object(self.lm),
                "growth_history": self.growth_history,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["lm"] = keras.saving.deserialize_keras_object(config["lm"])
        return cls(**config)
