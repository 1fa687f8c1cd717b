"""GrowingT5Seq2SeqLM: the model object that grows in place during fit."""

import keras

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

    def replace_lm(self, lm, optimizer=None):
        """Swap in a grown inner model (and its optimizer), untracking the old.

        The tracker is locked after build; without untracking, the old
        variables would stay in `trainable_variables`. The train, test and
        predict functions are reset so that the next step traces the new
        model: without that `fit` silently trains the old variables.
        """
        old = self.lm
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self._tracker.untrack(old)
            self.lm = lm
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
        self.make_train_function(force=True)
        self.test_function = None
        self.predict_function = None

    def get_config(self):
        config = super().get_config()
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
