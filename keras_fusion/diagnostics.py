"""Diagnostics: how far a grown model is from the models it came from.

```python
from keras_fusion.diagnostics import function_error

error = function_error(fused, [lm_a, lm_b], inputs)  # 0 for an exact fusion
```
"""

import numpy as np
from keras_hub.models import T5Backbone, T5Seq2SeqLM


def relative_error(output, reference):
    """`||output - reference|| / ||reference||` over all entries."""
    output = np.asarray(output, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if output.shape != reference.shape:
        raise ValueError(f"Shapes differ: output {output.shape} vs reference {reference.shape}.")
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


def function_error(grown, sources, inputs, weights=None):
    """Relative error of a grown model against what it should compute.

    For backbones, the reference is the sources' outputs concatenated along
    features (one source: its outputs; `[a, a]`: a self-fused `a`). For
    language models, the reference is `sum_i weights[i] * logits_i`
    (uniform weights by default). Padding positions are included: the
    padding mask is part of the input and the outputs there must match too.

    Args:
        grown: a `T5Backbone` or `T5Seq2SeqLM`.
        sources: list of models of the same kind.
        inputs: dict of the four T5 inputs (token ids and padding masks).
        weights: optional list of floats, for language models.

    Returns:
        A dict: `{"encoder_sequence_output": e, "decoder_sequence_output": e}`
        for backbones, `{"logits": e}` for language models.

    Example:

    ```python
    fused = FusionT5Backbone.fuse(a, b, norm="global")
    print(function_error(fused, [a, b], batch))  # what "global" costs
    ```
    """
    if isinstance(grown, T5Seq2SeqLM):
        weights = weights or [1.0 / len(sources)] * len(sources)
        reference = sum(
            w * np.asarray(s.predict_on_batch(inputs)) for w, s in zip(weights, sources)
        )
        return {"logits": relative_error(grown.predict_on_batch(inputs), reference)}
    if isinstance(grown, T5Backbone):
        outputs = grown.predict_on_batch(inputs)
        references = [s.predict_on_batch(inputs) for s in sources]
        return {
            key: relative_error(outputs[key], np.concatenate([r[key] for r in references], axis=-1))
            for key in ("encoder_sequence_output", "decoder_sequence_output")
        }
    raise ValueError(f"grown must be a T5Backbone or T5Seq2SeqLM, got {type(grown).__name__}.")
