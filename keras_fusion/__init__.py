"""keras_fusion: grow T5 models during training (Deep Fusion, arXiv 2306.11903).

```python
import keras_fusion as kf
from keras_fusion.models import FusionT5Seq2SeqLM

fused = FusionT5Seq2SeqLM.fuse(lm_a, lm_b)  # logits = (logits_a + logits_b) / 2
callback = kf.callbacks.GrowthCallback()   # grow inside model.fit
```

Where the paper lives: the growth maths in `weight_maps` and `growth_maps`
(pure NumPy), the growing models in `models` and `layers`, growth inside
`fit` in `callbacks` (schedules: `growth`; prepared ahead: `growth_ahead`;
optimizer state: `optimizer_state`), and the recipes and run behind
`tools/train` in `recipes`, `optimizers`, `metrics`, `distribution` and
`training`. Every submodule is an attribute (`kf.growth`, `kf.callbacks`),
imported on first use.

Importing the package changes two pieces of process-wide state, both needed:
it sets `KERAS_BACKEND=tensorflow` unless the variable is already set (the
library is built on TensorFlow: tf.data, tf.distribute, SavedModel), and it
adds one warnings filter for a harmless warning that keras-hub's own T5
raises at every model build ("Layer 'self_attention' ... was passed an input
with a mask"), which would otherwise bury ours.
"""

import importlib
import os
import warnings

# keras-hub's T5 warns at every model build that its attention layers drop
# a mask (they take the mask as an argument instead): harmless.
KERAS_HUB_MASK_WARNING = (
    r"Layer '(self|cross)_attention' \(of type T5MultiHeadAttention\) "
    r"was passed an input with a mask"
)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
warnings.filterwarnings("ignore", message=KERAS_HUB_MASK_WARNING, category=UserWarning)

from keras_fusion.diagnostics import function_error  # noqa: E402
from keras_fusion.layers import FusionT5Block, GroupedRMSNorm  # noqa: E402
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM  # noqa: E402

__version__ = "0.1.0"

SUBMODULES = (
    "callbacks",
    "checkpointing",
    "data",
    "diagnostics",
    "distribution",
    "dynamics",
    "export",
    "flops",
    "growing",
    "growth",
    "growth_ahead",
    "growth_maps",
    "layers",
    "memory",
    "metrics",
    "models",
    "operators",
    "optimizer_state",
    "optimizers",
    "recipes",
    "storage",
    "token_ids",
    "training",
    "utils",
    "weight_maps",
)

__all__ = [
    "FusionT5Backbone",
    "FusionT5Block",
    "FusionT5Seq2SeqLM",
    "GroupedRMSNorm",
    "function_error",
    *SUBMODULES,
]


def __getattr__(name):
    """`keras_fusion.<submodule>`, imported on first use."""
    if name in SUBMODULES:
        return importlib.import_module(f"keras_fusion.{name}")
    raise AttributeError(f"module 'keras_fusion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
