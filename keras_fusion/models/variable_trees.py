"""Keras variables as parameter trees: read them into NumPy, write arrays in.

The model-side half of the growth maps: `growth_maps` and `weight_maps`
compute on trees of NumPy arrays only; the models read their variables
through `read` and are written through `assign` or built holding a tree
(`FusionT5Backbone.from_parameters`).

```python
from keras_fusion.models import variable_trees
from keras_fusion.models.fusion_t5_backbone import backbone_variables

tree = variable_trees.read(backbone_variables(backbone))
variable_trees.assign(backbone_variables(other), tree)
```
"""

import keras
import numpy as np

from keras_fusion.growth_maps import zip_leaves


def read(tree):
    """Copy a tree of Keras variables into a tree of NumPy arrays."""
    return keras.tree.map_structure(lambda v: np.array(v.numpy()), tree)


def checked_pairs(variables, arrays):
    """`[(location, variable, array)]` for a variable tree and an array tree.

    Raises ValueError naming the first place where the structures differ or
    a leaf's shape does not match its variable, before anything is written.
    """
    pairs = [
        (where, variable, array)
        for where, (variable, array) in zip_leaves(
            [variables, arrays], ("the model", "the parameters")
        )
    ]
    for where, variable, array in pairs:
        if tuple(variable.shape) != tuple(np.shape(array)):
            raise ValueError(
                f"Shape mismatch for {where} (variable {variable.path}): model "
                f"{tuple(variable.shape)}, parameters {tuple(np.shape(array))}."
            )
    return pairs


def assign(variables, arrays):
    """Write a tree of arrays into a tree of variables of the same structure
    (everything checked before any variable is written)."""
    for _, variable, array in checked_pairs(variables, arrays):
        variable.assign(as_tensor(array, variable.dtype))


def as_tensor(array, dtype):
    return keras.ops.cast(keras.ops.convert_to_tensor(np.asarray(array)), dtype)


def constant_initializer(array):
    """An initializer giving `array`; it may be called more than once (once
    per replica under a distribution strategy), so it keeps the array."""

    def initializer(shape, dtype=None):
        return as_tensor(array, dtype)

    return initializer
