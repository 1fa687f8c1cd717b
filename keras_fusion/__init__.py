"""keras_fusion: grow T5 models during training (Deep Fusion, arXiv 2306.11903).

```python
from keras_fusion.models import FusionT5Seq2SeqLM
fused = FusionT5Seq2SeqLM.fuse(lm_a, lm_b)  # logits = (logits_a + logits_b) / 2
```
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# keras-hub's own T5 wiring triggers this on every model build (T5Backbone
# too); it is harmless there, and would bury ours.
warnings.filterwarnings(
    "ignore",
    message=r"Layer '(self|cross)_attention' \(of type T5MultiHeadAttention\) was "
    "passed an input with a mask",
    category=UserWarning,
)

from keras_fusion import growth_maps, weight_maps  # noqa: E402
from keras_fusion.layers import FusionT5Block, GroupedRMSNorm  # noqa: E402
from keras_fusion.models import (  # noqa: E402
    FusionT5Backbone,
    FusionT5Seq2SeqLM,
    function_error,
)

__version__ = "0.1.0"

__all__ = [
    "FusionT5Backbone",
    "FusionT5Block",
    "FusionT5Seq2SeqLM",
    "GroupedRMSNorm",
    "function_error",
    "growth_maps",
    "weight_maps",
]
