"""Where a preset comes from: a Hugging Face T5 folder, a plain keras-hub T5
preset, or anything else keras-hub loads itself.

keras-hub's `from_preset` routes a folder whose `config.json` has
`model_type` to its transformers loader, which has no T5 converter, and
refuses a preset saved from `T5Backbone` on a subclass. The keras_fusion
classes' `from_preset` (in `keras_fusion.models`) ask this module first:

- a Hugging Face T5 folder (`config.json` with `model_type` "t5"), local,
  `gs://` or `hf://` (through `huggingface_hub`: downloaded when a hub is
  reachable, else read from its local cache with `HF_HUB_OFFLINE=1`), is
  converted by `keras_fusion.utils.transformers.convert_t5`;
- a keras-hub preset saved from a plain `T5Backbone` / `T5Seq2SeqLM` is
  loaded with keras-hub and its weights moved into the keras_fusion class;
- anything else (a preset saved from a keras_fusion model, a Kaggle handle)
  goes to keras-hub unchanged.

This module knows nothing of the keras_fusion models (they import it; see
`keras_fusion.models.load_lm` for `.keras` files too).

Example:

```python
config = preset_config("/path/to/flan-t5-small")
is_hf_t5(config)  # True: a Hugging Face T5 folder
```
"""

import keras_hub

from keras_fusion import storage
from keras_fusion._keras_internals import preset_utils
from keras_fusion.utils.transformers import convert_t5

HF_SCHEME = "hf://"
# What an HF T5 import reads from a hub repository.
_HF_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "spiece.model"]


def hf_folder(preset):
    """A local folder for an `hf://` handle (downloaded), else `preset`."""
    if isinstance(preset, str) and preset.startswith(HF_SCHEME):
        # Optional: only hf:// handles need huggingface_hub.
        from huggingface_hub import snapshot_download

        return snapshot_download(preset[len(HF_SCHEME) :], allow_patterns=_HF_FILES)
    return preset


def preset_config(preset):
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


def is_hf_t5(config):
    """Whether a preset's config is a Hugging Face T5 `config.json`."""
    return (
        config is not None and "registered_name" not in config and config.get("model_type") == "t5"
    )


def is_plain_t5_preset(cls, config):
    """A keras-hub preset of a T5Backbone that is not (a subclass of) `cls`."""
    if config is None or "registered_name" not in config:
        return False
    found = preset_utils.check_config_class(config)
    return issubclass(found, keras_hub.models.T5Backbone) and not issubclass(found, cls)


def has_tokenizer(preset):
    """Whether a keras-hub preset folder holds a tokenizer."""
    return storage.exists(storage.join(preset, preset_utils.TOKENIZER_CONFIG_FILE))
