"""Pure weight maps: the growth math on arrays, with no Keras in sight.

Every growth operator in keras_fusion is a composition of the functions
below. They take and return NumPy arrays, never modify their inputs, and are
reused unchanged to map optimizer state, so a map is written once.

Notation: a Dense kernel has shape `(in_features, out_features)` and computes
`y = x @ W`; an embedding table has shape `(vocabulary_size, features)`.

Example:

```python
import numpy as np
from keras_fusion import weight_maps

a, b = np.ones((2, 3)), np.ones((4, 5))
w = weight_maps.block_diagonal([a, b])  # (6, 8), zeros off the diagonal.
```
"""

import numpy as np


def block_diagonal(kernels, fill=0.0):
    """Place Dense kernels on the diagonal of one larger kernel.

    With input `[x_1; ...; x_n]` the result computes `[x_1 W_1; ...; x_n W_n]`:
    each source model reads and writes only its own block of features.

    Args:
        kernels: list of 2D arrays `(in_i, out_i)`.
        fill: value off the diagonal blocks: 0 for weights (exactness) and
            first moments; a typical magnitude for second moments.

    Returns:
        An array `(sum(in_i), sum(out_i))`, `fill` off the diagonal blocks.
    """
    kernels = [np.asarray(k) for k in kernels]
    for k in kernels:
        if k.ndim != 2:
            raise ValueError(f"block_diagonal expects 2D kernels, got shape {k.shape}.")
    rows = sum(k.shape[0] for k in kernels)
    cols = sum(k.shape[1] for k in kernels)
    dtype = np.result_type(*kernels)
    out = np.zeros((rows, cols), dtype) if fill == 0 else np.full((rows, cols), fill, dtype)
    r = c = 0
    for k in kernels:
        out[r : r + k.shape[0], c : c + k.shape[1]] = k
        r += k.shape[0]
        c += k.shape[1]
    return out


def concat_features(arrays):
    """Concatenate along the last axis.

    Used for embedding tables (`(V, d_i)` -> `(V, sum d_i)`), norm scales
    (`(d_i,)`) and relative-attention biases (`(buckets, heads_i)`, where the
    last axis is heads).
    """
    return np.concatenate([np.asarray(a) for a in arrays], axis=-1)


def concat_rows(arrays):
    """Concatenate along the first axis (untied output projections `(d_i, V)`)."""
    return np.concatenate([np.asarray(a) for a in arrays], axis=0)


def cancelling_noise(shape, copies, scale, rng):
    """`copies` noise arrays of `shape` that sum to exactly zero.

    Each is drawn from a normal of standard deviation `scale`, then the mean
    is subtracted, so the copies cancel to rounding. With `scale == 0` all are
    zero.
    """
    if scale == 0 or rng is None:
        return [np.zeros(shape, dtype=np.float32) for _ in range(copies)]
    noise = rng.normal(0.0, scale, size=(copies,) + tuple(shape))
    noise -= noise.mean(axis=0, keepdims=True)
    return [n.astype(np.float32) for n in noise]


def _noise_scale(kernel, noise):
    """Noise standard deviation relative to the kernel's own spread."""
    if noise == 0:
        return 0.0
    std = float(np.std(kernel))
    return noise * (std if std > 0 else 1.0)


def duplicate_kernel(kernel, noise=0.0, rng=None):
    """Self-fusion map of a Dense kernel, with symmetry-breaking noise.

    `(d_in, d_out)` -> `(2 d_in, 2 d_out)`. Output block `j` reads both input
    halves with weights `W/2 + N_j` and `W/2 - N_j`. On a duplicated input
    `[x; x]` the noise cancels and the output is exactly `[x W; x W]`, yet the
    two halves receive different gradients, so they do not stay identical
    under training (the HyperCloning construction).

    Args:
        kernel: 2D array `(d_in, d_out)`.
        noise: float. Noise standard deviation as a fraction of `std(kernel)`.
        rng: `numpy.random.Generator`, required when `noise > 0`.
    """
    kernel = np.asarray(kernel)
    half = kernel / 2.0
    scale = _noise_scale(kernel, noise)
    columns = []
    for _ in range(2):
        plus, minus = cancelling_noise(kernel.shape, 2, scale, rng)
        columns.append(np.concatenate([half + plus, half + minus], axis=0))
    return np.concatenate(columns, axis=1).astype(kernel.dtype)


def duplicate_features(array, copies=2):
    """Repeat an array `copies` times along its last axis (`[a, a]`)."""
    return np.concatenate([np.asarray(array)] * copies, axis=-1)


def duplicate_rows(array, copies=2):
    """Repeat an array `copies` times along its first axis."""
    return np.concatenate([np.asarray(array)] * copies, axis=0)


def zeros_like(array):
    """The identity-layer map: an output projection of zeros."""
    return np.zeros_like(np.asarray(array))


def tile_columns(kernel, factor):
    """`(d, f)` -> `(d, factor * f)`: every hidden unit copied `factor` times."""
    return np.concatenate([np.asarray(kernel)] * factor, axis=1)


def split_rows(kernel, factor, noise=0.0, rng=None):
    """`(f, d)` -> `(factor * f, d)`: the copies share each row's weight.

    Copy `j` of row `r` gets `W[r] / factor + N_j[r]` where the noise copies
    sum to zero, so on a tiled input (see `tile_columns`) the output is
    exactly `x W`, while the copies see different gradients.
    """
    kernel = np.asarray(kernel)
    scale = _noise_scale(kernel, noise)
    parts = cancelling_noise(kernel.shape, factor, scale, rng)
    return np.concatenate([kernel / factor + n for n in parts], axis=0).astype(kernel.dtype)
