"""`from_preset` for keras_fusion classes: HF T5 folders and keras-hub T5 presets.

keras-hub's `from_preset` routes a folder whose `config.json` has
`model_type` to its transformers loader, which has no T5 converter, and
refuses a preset saved from `T5Backbone` on a subclass. The keras_fusion
classes' `from_preset` come here first:

- a Hugging Face T5 folder (`config.json` with `model_type` "t5"), local,
  `gs://` or `hf://` (through `huggingface_hub`: downloaded when a hub is
  reachable, else read from its local cache with `HF_HUB_OFFLINE=1`), is
  converted by `keras_fusion.utils.transformers.convert_t5`;
- a keras-hub preset saved from a plain `T5Backbone` / `T5Seq2SeqLM` is
  loaded with keras-hub and its weights moved into the keras_fusion class;
- anything else (a preset saved from a keras_fusion model, a Kaggle handle)
  goes to keras-hub unchanged.

`load_lm(path)` adds `.keras` files and returns the SentencePiece model too.

Example:

```python
from keras_fusion.utils.preset_loader import load_lm
lm, spm_proto = load_lm("/path/to/flan-t5-small")   # or a preset dir, or a .keras
```
"""

import keras_hub

from keras_fusion import storage
from keras_fusion._keras_internals import preset_utils
from keras_fusion.utils.transformers import convert_t5

HF_SCHEME = "hf://"
# What an HF T5 import reads from a hub repository.
_HF_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "spiece.model"]


def _local_hf(preset):
    """A local folder for an `hf://` handle (downloaded), else `preset`."""
    if isinstance(preset, str) and preset.startswith(HF_SCHEME):
        from huggingface_hub import snapshot_download

        return snapshot_download(preset[len(HF_SCHEME) :], allow_patterns=_HF_FILES)
    return preset


def _config(preset):
    """The preset's config.json as a dict, or None when there is none to read
    (keras-hub then reports the problem). Local and `tf.io.gfile` folders
    are read through `keras_fusion.storage`; `hf://`, `kaggle://` handles
    and keras-hub's built-in preset names go through keras-hub's downloader."""
    if not isinstance(preset, str):
        return None
    if storage.isdir(preset):
        path = storage.join(preset, convert_t5.CONFIG_FILE)
        return storage.read_json(path) if storage.exists(path) else None
    if "://" in preset or preset in preset_utils.BUILTIN_PRESETS:
        return preset_utils.load_json(preset, convert_t5.CONFIG_FILE)
    return None


def _is_hf_t5(config):
    return (
        config is not None and "registered_name" not in config and config.get("model_type") == "t5"
    )


def _is_plain_t5_preset(cls, config):
    """A keras-hub preset of a T5Backbone that is not (a subclass of) `cls`."""
    if config is None or "registered_name" not in config:
        return False
    found = preset_utils.check_config_class(config)
    return issubclass(found, keras_hub.models.T5Backbone) and not issubclass(found, cls)


def as_fusion_backbone(cls, backbone):
    """A `cls` holding a plain `T5Backbone`'s weights (one norm group)."""
    from keras_fusion.models import variable_trees
    from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables

    return cls.from_parameters(
        backbone_config(backbone), variable_trees.read(backbone_variables(backbone))
    )


def backbone_from_preset(cls, preset, load_weights=True, **kwargs):
    """`cls.from_preset` for a `FusionT5Backbone` class (see the module docstring).

    Args:
        cls: the calling class.
        preset: an HF T5 folder or `hf://` handle, or a keras-hub preset.
        load_weights: as for keras-hub's `from_preset`.
        **kwargs: `dtype` for the model; other keyword arguments go to
            keras-hub's loader for keras-hub presets.

    Returns:
        A `cls` instance.
    """
    config = _config(preset)
    if _is_hf_t5(config):
        return convert_t5.load_backbone(
            cls, _local_hf(preset), load_weights, kwargs.pop("dtype", None)
        )
    if _is_plain_t5_preset(cls, config):
        plain = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights, **kwargs)
        return as_fusion_backbone(cls, plain)
    return None


def lm_from_preset(cls, preset, load_weights=True, **kwargs):
    """`cls.from_preset` for a `FusionT5Seq2SeqLM` class, or None to let
    keras-hub load the preset.

    An HF folder's `spiece.model`, when present, becomes a
    `T5Seq2SeqLMPreprocessor` (keras-hub's default sequence lengths, 1024);
    a keras-hub preset keeps its own preprocessor.

    Args:
        cls: the calling class.
        preset: an HF T5 folder or `hf://` handle, or a keras-hub preset.
        load_weights: as for keras-hub's `from_preset`.
        **kwargs: `dtype` for the backbone; the rest go to the LM's constructor
            (e.g. `preprocessor=None`).

    Returns:
        A `cls` instance, or None.
    """
    from keras_fusion.models.fusion_t5_backbone import FusionT5Backbone

    dtype = kwargs.pop("dtype", None)
    config = _config(preset)
    if _is_hf_t5(config):
        folder = _local_hf(preset)
        backbone = convert_t5.load_backbone(FusionT5Backbone, folder, load_weights, dtype)
        if "preprocessor" not in kwargs:
            tokenizer = convert_t5.load_tokenizer(folder)
            kwargs["preprocessor"] = tokenizer and keras_hub.models.T5Seq2SeqLMPreprocessor(
                tokenizer=tokenizer
            )
        return cls(backbone=backbone, **kwargs)
    if _is_plain_t5_preset(FusionT5Backbone, config):
        backbone = FusionT5Backbone.from_preset(preset, load_weights=load_weights, dtype=dtype)
        if "preprocessor" not in kwargs:
            has_tokenizer = storage.exists(storage.join(preset, preset_utils.TOKENIZER_CONFIG_FILE))
            kwargs["preprocessor"] = (
                keras_hub.models.T5Seq2SeqLMPreprocessor.from_preset(preset)
                if has_tokenizer
                else None
            )
        return cls(backbone=backbone, **kwargs)
    return None


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
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM

    if isinstance(path, str) and path.endswith(".keras"):
        model = storage.load_model(path, compile=False)
        lm = getattr(model, "lm", model)
        if not isinstance(lm, keras_hub.models.T5Seq2SeqLM):
            raise ValueError(f"{path} holds a {type(lm).__name__}, not a T5 language model.")
        if not isinstance(lm, FusionT5Seq2SeqLM):
            lm = FusionT5Seq2SeqLM(
                as_fusion_backbone(FusionT5Backbone, lm.backbone), preprocessor=lm.preprocessor
            )
    elif isinstance(path, str) and (path.startswith(HF_SCHEME) or storage.isdir(path)):
        lm = FusionT5Seq2SeqLM.from_preset(path)
    else:
        raise ValueError(
            f"Cannot load {path!r}: expected a Hugging Face T5 folder, a keras-hub preset "
            "directory or a .keras file."
        )
    tokenizer = getattr(lm.preprocessor, "tokenizer", None)
    return lm, getattr(tokenizer, "proto", None)
