"""FusionT5Seq2SeqLM: keras-hub's T5 language model, growable."""

import keras
import keras_hub
from keras_hub.models import T5Seq2SeqLM

from keras_fusion import operators, storage
from keras_fusion.models.fusion_t5_backbone import (
    FusionT5Backbone,
    as_fusion_backbone,
    backbone_config,
    backbone_variables,
    grown,
)
from keras_fusion.utils import preset_loader
from keras_fusion.utils.transformers import convert_t5, export_t5


def _check_lms(lms):
    for i, lm in enumerate(lms):
        if not isinstance(lm, T5Seq2SeqLM):
            raise ValueError(
                f"Expected keras_hub.models.T5Seq2SeqLM models; argument {i} is a "
                f"{type(lm).__name__}."
            )


@keras.saving.register_keras_serializable(package="keras_fusion")
class FusionT5Seq2SeqLM(T5Seq2SeqLM):
    """A T5 sequence-to-sequence LM on a `FusionT5Backbone`, growable.

    Behaves as keras-hub's `T5Seq2SeqLM` (`fit`, `generate`, saving). Its
    class methods grow a trained LM into a bigger one whose logits are known
    exactly; the inputs are left untouched:
        - `fuse(*lms, weights=None)`: logits = sum_i weights[i] * logits_i
          (uniform weights by default: the ensemble average).
        - `self_fuse(lm)`, `deepen(lm, n)`, `widen_ffn(lm, factor)`: logits
          unchanged.

    Args:
        backbone: a `FusionT5Backbone` (or `T5Backbone`).
        preprocessor: optional `keras_hub.models.T5Seq2SeqLMPreprocessor`.

    Example:

    ```python
    def tiny(seed):
        keras.utils.set_random_seed(seed)
        return FusionT5Seq2SeqLM(FusionT5Backbone(
            vocabulary_size=100, num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, dropout=0.0))

    fused = FusionT5Seq2SeqLM.fuse(tiny(0), tiny(1))  # averages the logits
    ```
    """

    backbone_cls = FusionT5Backbone

    def get_compile_config(self):
        """None: no compile config is saved with the model.

        A keras-hub task compiles itself in its constructor, so a loaded LM
        is compiled again with the task's defaults whatever was saved; Keras
        would not restore a saved config through the task's custom
        `compile()` anyway, and would warn about it at every load. To train
        a loaded LM with your own settings, `compile()` it after loading (or
        wrap it in a `GrowingT5Seq2SeqLM`, whose compile config is saved and
        restored).
        """
        return None

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """An LM from a preset, a keras-hub T5 or a Hugging Face T5.

        A local (or `gs://`, `hf://`) Hugging Face T5 folder is converted
        exactly, its `spiece.model` (when present) becoming the
        preprocessor's tokenizer; a keras-hub preset saved from a plain
        `T5Seq2SeqLM` or `T5Backbone` is loaded with its preprocessor; other
        presets go to keras-hub's `Seq2SeqLM.from_preset`.

        Args:
            preset: the preset directory, HF folder or handle.
            load_weights: False gives the architecture with random weights.
            **kwargs: `dtype` for the backbone; other arguments go to the
                constructor (e.g. `preprocessor=None`).

        Returns:
            A `FusionT5Seq2SeqLM`.

        Raises:
            ValueError: for an HF config keras-hub's T5 cannot represent,
                naming the field, before any weight is read.

        Example:

        ```python
        lm = FusionT5Seq2SeqLM.from_preset("/path/to/flan-t5-small")
        lm.generate(["translate English to German: Thank you."])
        ```
        """
        options = dict(kwargs)  # keras-hub's loader gets the caller's kwargs
        dtype = options.pop("dtype", None)
        config = preset_loader.preset_config(preset)
        if preset_loader.is_hf_t5(config):
            folder = preset_loader.hf_folder(preset)
            backbone = convert_t5.load_backbone(FusionT5Backbone, folder, load_weights, dtype)
            if "preprocessor" not in options:
                tokenizer = convert_t5.load_tokenizer(folder)
                options["preprocessor"] = tokenizer and keras_hub.models.T5Seq2SeqLMPreprocessor(
                    tokenizer=tokenizer
                )
            return cls(backbone=backbone, **options)
        if preset_loader.is_plain_t5_preset(FusionT5Backbone, config):
            backbone = FusionT5Backbone.from_preset(preset, load_weights=load_weights, dtype=dtype)
            if "preprocessor" not in options:
                options["preprocessor"] = (
                    keras_hub.models.T5Seq2SeqLMPreprocessor.from_preset(preset)
                    if preset_loader.has_tokenizer(preset)
                    else None
                )
            return cls(backbone=backbone, **options)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def export_to_transformers(self, path):
        """Write a Hugging Face T5 folder that `T5ForConditionalGeneration`
        loads with the same logits, and the tokenizer's `spiece.model`.

        Only models with one norm group: plain and imported models, their
        `deepen` and `widen_ffn`, `self_fuse(norm="global")` and
        `fuse(norm="global")`. Several norm groups are refused before
        anything is written (HF's T5 has no grouped RMSNorm).

        Args:
            path: the folder (local or `tf.io.gfile`, e.g. `gs://`).

        Returns:
            `path`.

        Raises:
            ValueError: for several norm groups or an activation HF's T5
                cannot name.

        Example:

        ```python
        FusionT5Seq2SeqLM.self_fuse(lm, norm="global").export_to_transformers("wide")
        ```
        """
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        return export_t5.write_transformers_folder(
            path,
            backbone_config(self.backbone),
            backbone_variables(self.backbone),
            getattr(tokenizer, "proto", None),
        )

    @classmethod
    def from_parameters(cls, config, parameters, preprocessor=None):
        """An LM on `FusionT5Backbone.from_parameters(config, parameters)`."""
        backbone = FusionT5Backbone.from_parameters(config, parameters)
        return cls(backbone=backbone, preprocessor=preprocessor)

    @classmethod
    def fuse(cls, *lms, weights=None, norm="grouped"):
        """Deep Fusion of language models with an exact logit ensemble.

        Args:
            *lms: two or more `T5Seq2SeqLM`s with fusable backbones (see
                `FusionT5Backbone.fuse`).
            weights: list of finite floats, one per model; default uniform.
            norm: `"grouped"` (exact) or `"global"` (plain T5, approximate).

        Returns:
            A `FusionT5Seq2SeqLM` whose logits are
            `sum_i weights[i] * logits_i`, with the first model's
            preprocessor.
        """
        return cls.from_parameters(
            *grown_lm(operators.Fuse(weights, norm), lms), preprocessor=lms[0].preprocessor
        )

    @classmethod
    def self_fuse(cls, lm, noise=1e-3, seed=None, norm="grouped"):
        """Self fusion (see `FusionT5Backbone.self_fuse`), logits unchanged."""
        return cls.from_parameters(
            *grown_lm(operators.SelfFuse(noise, seed, norm), [lm]), preprocessor=lm.preprocessor
        )

    @classmethod
    def deepen(cls, lm, num_new_layers, mode="identity"):
        """More layers (see `FusionT5Backbone.deepen`), logits unchanged."""
        return cls.from_parameters(
            *grown_lm(operators.Deepen(num_new_layers, mode), [lm]), preprocessor=lm.preprocessor
        )

    @classmethod
    def widen_ffn(cls, lm, factor, noise=1e-3, seed=None):
        """Wider feed-forward blocks (see `FusionT5Backbone.widen_ffn`)."""
        return cls.from_parameters(
            *grown_lm(operators.WidenFFN(factor, noise, seed), [lm]), preprocessor=lm.preprocessor
        )


# (config, parameters) of a grown LM, nothing built. The class methods above
# build from them; `GrowthCallback` also writes them into a grown model
# prepared ahead of time (`keras_fusion.growth_ahead`).


def grown_lm(operator, lms):
    """Config and parameters of `operator` (a `keras_fusion.operators`
    object) applied to the language models `lms`, their logits kept (a
    fusion's are the weighted sum), nothing built."""
    _check_lms(lms)
    return grown(operator, [lm.backbone for lm in lms], lm=True)


def inner_lm(model):
    """The language model a `GrowingT5Seq2SeqLM` wraps (`model.lm`), or
    `model` itself when it is a language model already.

    ```python
    lm = inner_lm(keras.saving.load_model("run/final.keras"))
    ```
    """
    return getattr(model, "lm", model)


def load_lm(path):
    """A `FusionT5Seq2SeqLM`, preprocessor attached, from any T5 checkpoint.

    Args:
        path: a Hugging Face T5 folder (or `hf://` handle), a keras-hub preset
            directory (saved from `T5Seq2SeqLM`, `T5Backbone` or a keras_fusion
            model), or a `.keras` file of a T5 LM (a `GrowingT5Seq2SeqLM` gives
            its inner LM).

    Returns:
        `(lm, sentencepiece_proto)`: the `FusionT5Seq2SeqLM` (a plain
        keras-hub T5 is converted, one norm group) and the serialized
        SentencePiece model (bytes) of its tokenizer, or None when the
        checkpoint has no tokenizer (then `lm.preprocessor` is None too).

    Raises:
        ValueError: for a path that is none of these, or a checkpoint that
            cannot be imported (the error names the field).

    Example:

    ```python
    lm, proto = load_lm("/path/to/t5-small")
    lm.generate(["translate English to German: Thank you."])
    ```
    """
    if isinstance(path, str) and path.endswith(".keras"):
        model = storage.load_model(path, compile=False)
        lm = inner_lm(model)
        if not isinstance(lm, keras_hub.models.T5Seq2SeqLM):
            raise ValueError(f"{path} holds a {type(lm).__name__}, not a T5 language model.")
        if not isinstance(lm, FusionT5Seq2SeqLM):
            lm = FusionT5Seq2SeqLM(
                as_fusion_backbone(FusionT5Backbone, lm.backbone), preprocessor=lm.preprocessor
            )
    elif isinstance(path, str) and (
        path.startswith(preset_loader.HF_SCHEME) or storage.isdir(path)
    ):
        lm = FusionT5Seq2SeqLM.from_preset(path)
    else:
        raise ValueError(
            f"Cannot load {path!r}: expected a Hugging Face T5 folder, a keras-hub preset "
            "directory or a .keras file."
        )
    tokenizer = getattr(lm.preprocessor, "tokenizer", None)
    return lm, getattr(tokenizer, "proto", None)
