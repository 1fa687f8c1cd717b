"""GroupedRMSNorm: T5's RMSNorm with statistics per feature group."""

import keras
import numpy as np
from keras import ops

from keras_fusion._keras_internals import T5LayerNorm


@keras.saving.register_keras_serializable(package="keras_fusion")
class GroupedRMSNorm(T5LayerNorm):
    """T5's RMSNorm computed separately on contiguous groups of features.

    A fused model's residual stream is `[r_1; ...; r_n]`, one block per source
    model. A single RMSNorm over the whole stream mixes the blocks'
    statistics and changes the function; normalising each block with its own
    statistics computes exactly what each source model's norm computed. With
    one group this layer is exactly keras-hub's `T5LayerNorm`.

    Args:
        epsilon: float. Added to the mean square before the square root.
        groups: list of ints, the sizes of the contiguous feature groups.
            They must add up to the input's last dimension. `None` means one
            group spanning all features.

    Call arguments:
        hidden_states: a float tensor `(..., features)`.

    Returns:
        A tensor of the same shape: each group divided by its own root mean
        square, then multiplied by the learned per-feature `weight`.

    Example:

    ```python
    norm = GroupedRMSNorm(groups=[64, 32])
    y = norm(keras.random.normal((2, 5, 96)))
    ```
    """

    def __init__(self, epsilon=1e-6, groups=None, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        if groups is not None:
            groups = [int(g) for g in groups]
            if not groups or any(g <= 0 for g in groups):
                raise ValueError(f"groups must be a non-empty list of positive ints, got {groups}.")
        self.groups = groups

    def build(self, input_shape):
        features = input_shape[-1]
        if self.groups is not None and sum(self.groups) != features:
            raise ValueError(
                f"groups {self.groups} add up to {sum(self.groups)}, but the "
                f"input has {features} features."
            )
        super().build(input_shape)

    def _normalize(self, x):
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        return x * ops.rsqrt(variance + self.epsilon)

    def call(self, hidden_states):
        if self.groups is None or len(self.groups) == 1:
            return self.weight * self._normalize(hidden_states)
        boundaries = [int(b) for b in np.cumsum(self.groups)[:-1]]
        parts = ops.split(hidden_states, boundaries, axis=-1)
        normalized = ops.concatenate([self._normalize(p) for p in parts], axis=-1)
        return self.weight * normalized

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "groups": self.groups})
        return config
