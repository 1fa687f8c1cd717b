"""The growth operators on T5 parameter trees: pure functions on arrays.

A parameter tree is a nested dict (lists for layer stacks) of NumPy arrays,
with the leaf names below. `FusionT5Block` and `FusionT5Backbone` read their
variables into such a tree, call an operator here, and write the result into
a new model: all the math lives in this module and in `weight_maps`, and can
be tested without building a model.

Backbone tree::

    {"token_embedding": (V, d), "reverse_embedding": (d, V) if untied,
     "encoder_layers": [block, ...], "decoder_layers": [block, ...],
     "encoder_norm": (d,), "decoder_norm": (d,)}

Block tree::

    {"self_attention": {"query", "key", "value": (d, h*k), "output": (h*k, d),
                        "relative_bias": (32, h) in layer 0 only},
     "self_attention_norm": (d,),
     "cross_attention": {...}, "cross_attention_norm": (d,)   # decoder only
     "ffn_input": (d, f), "ffn_gate": (d, f) if gated, "ffn_output": (f, d),
     "ffn_norm": (d,)}

Example:

```python
from keras_fusion import growth_maps
fused = growth_maps.fuse_parameters([tree_a, tree_b])
```
"""

import numpy as np

from keras_fusion import weight_maps

KERNELS = frozenset(("query", "key", "value", "output", "ffn_input", "ffn_gate", "ffn_output"))
OUTPUT_PROJECTIONS = frozenset(("output", "ffn_output"))
ROW_LEAVES = frozenset(("reverse_embedding",))
FFN_IN = frozenset(("ffn_input", "ffn_gate"))


def zip_leaves(trees, names=None, where=""):
    """`[(location, leaves)]` for trees of one structure, leaf by leaf.

    The one structure check of keras_fusion: every operator, and the model
    layer that writes a tree into variables, pairs trees through it.

    Args:
        trees: parameter trees (dicts, lists of layers, leaves: arrays or
            variables).
        names: what to call each tree in errors (default "tree 0", ...;
            a plural name such as "the parameters" takes plural verbs).
        where: the location of `trees` (for the recursion).

    Raises:
        ValueError: naming the first location where the trees differ.
    """
    names = names or [f"tree {i}" for i in range(len(trees))]
    here, first = where or "the top level", trees[0]

    def verb(name, plural):  # "the parameters have", "tree 1 has"
        return plural if name.endswith("s") else {"have": "has", "lack": "lacks"}[plural]

    def describe(node):
        if isinstance(node, dict):
            return f"a dict {sorted(node, key=str)}"
        if isinstance(node, (list, tuple)):
            return f"a list of {len(node)}"
        return f"one leaf ({node.path})" if hasattr(node, "path") else "one leaf"

    def mismatch(detail):
        return ValueError(f"Parameter trees do not match at {here}: {detail}.")

    for name, tree in zip(names[1:], trees[1:]):
        differ = f"{names[0]} has {describe(first)}, {name} {verb(name, 'have')}"
        if isinstance(first, dict):
            if not isinstance(tree, dict):
                raise mismatch(f"{differ} a {type(tree).__name__}")
            if set(tree) != set(first):
                missing = sorted(set(first) - set(tree))
                extra = sorted(set(tree) - set(first), key=str)
                raise mismatch(
                    f"{name} {verb(name, 'lack')} {missing} and {verb(name, 'have')} unexpected "
                    f"{extra} ({names[0]} has {sorted(first)})"
                )
        elif isinstance(first, (list, tuple)):
            if not isinstance(tree, (list, tuple)):
                raise mismatch(f"{differ} a {type(tree).__name__}")
            if len(tree) != len(first):
                raise mismatch(f"{differ} {describe(tree)}")
        elif isinstance(tree, (dict, list, tuple)):
            raise mismatch(f"{differ} a {type(tree).__name__}")
    if isinstance(first, dict):
        return [
            pair
            for key in first
            for pair in zip_leaves(
                [t[key] for t in trees], names, f"{where}.{key}" if where else key
            )
        ]
    if isinstance(first, (list, tuple)):
        return [
            pair
            for i, items in enumerate(zip(*trees))
            for pair in zip_leaves(list(items), names, f"{where}[{i}]")
        ]
    return [(where, trees)]


def map_leaves(fn, trees):
    """Apply `fn(leaf_name, leaves)` across trees of identical structure.

    Returns a tree of `fn`'s results, of the same structure; `leaf_name` is
    the leaf's last key ("query", "ffn_input", ...). The structures are
    checked first (`zip_leaves`).
    """
    zip_leaves(trees)
    return _map_checked(fn, trees, None)


def _map_checked(fn, trees, key):
    first = trees[0]
    if isinstance(first, dict):
        return {k: _map_checked(fn, [t[k] for t in trees], k) for k in first}
    if isinstance(first, list):
        return [_map_checked(fn, list(items), key) for items in zip(*trees)]
    return fn(key, trees)


def check_finite(tree, what="the model"):
    """Raise ValueError naming the first leaf that holds NaN or Inf.

    Growing a model with non-finite weights would spread them through every
    block that reads them; better to refuse before anything is built.
    """

    def walk(node, where):
        if isinstance(node, dict):
            for key in sorted(node):
                walk(node[key], f"{where}.{key}" if where else key)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")
        elif not np.all(np.isfinite(node)):
            bad = int(np.size(node) - np.count_nonzero(np.isfinite(node)))
            raise ValueError(f"{what} has {bad} non-finite value(s) (NaN or Inf) in {where}.")

    walk(tree, "")


def check_same(configs, fields):
    """Raise ValueError naming the first field on which configs disagree."""
    for field in fields:
        values = [c.get(field) for c in configs]
        for i, v in enumerate(values[1:], start=1):
            if v != values[0]:
                raise ValueError(f"{field} differs: {values[0]} vs {v} (model 0 vs model {i}).")


# What a tree holds. Weights are mapped so that the function is preserved.
# Optimizer moments are mapped like the gradient of the mapped weights at the
# moment of growth: a first moment (Adam's m) scales like the gradient, a
# second moment (Adam's v, Adafactor's factored statistics) like its square;
# entries that are new get a zero first moment and a second moment of the
# typical size of their source, so that their first update is not outsized.
WEIGHT = "weight"
FIRST_MOMENT = "first_moment"
SECOND_MOMENT = "second_moment"
ROLES = (WEIGHT, FIRST_MOMENT, SECOND_MOMENT)


def _check_role(role):
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}.")


def gradient_scale(role, scale):
    """How a moment scales when the gradient scales by `scale`."""
    return {WEIGHT: 1.0, FIRST_MOMENT: scale, SECOND_MOMENT: scale**2}[role]


def fused_config(configs, grouped=True):
    """The config of the fusion of models (or blocks) with these configs.

    Widths, heads and feed-forward sizes add up; each source keeps its norm
    groups (`grouped`), or one group spans the fused width.
    """
    config = dict(configs[0])
    hidden_dim = sum(c["hidden_dim"] for c in configs)
    config.update(
        hidden_dim=hidden_dim,
        num_heads=sum(c["num_heads"] for c in configs),
        intermediate_dim=sum(c["intermediate_dim"] for c in configs),
        norm_groups=[g for c in configs for g in c["norm_groups"]] if grouped else [hidden_dim],
    )
    return config


def fuse_parameters(trees, role=WEIGHT):
    """Deep Fusion of n trees: block-diagonal kernels, concatenated features.

    The result computes, on `[x_1; ...; x_n]`, the concatenation of what
    each tree computes on its own `x_i` (given per-source norm groups).
    Off-diagonal blocks are zero, except for second moments, which get the
    mean of the source blocks there.
    """
    _check_role(role)

    def fuse_leaf(name, leaves):
        if name in KERNELS:
            fill = 0.0
            if role == SECOND_MOMENT:
                fill = float(np.mean(np.concatenate([np.ravel(x) for x in leaves])))
            return weight_maps.block_diagonal(leaves, fill)
        if name in ROW_LEAVES:
            return weight_maps.concat_rows(leaves)
        return weight_maps.concat_features(leaves)

    return map_leaves(fuse_leaf, trees)


def self_fuse_parameters(tree, noise=0.0, seed=None, role=WEIGHT):
    """Self fusion: twice the width and heads, duplicated function.

    Kernels use `weight_maps.duplicate_kernel`, whose cancelling noise breaks
    the symmetry between the halves without changing the function. Every
    duplicated entry feeds the next layer through half the weight, so its
    gradient is half the original one: moments are duplicated and scaled
    accordingly (m / 2, v / 4).
    """
    _check_role(role)
    rng = np.random.default_rng(seed)
    scale = gradient_scale(role, 0.5)

    def self_fuse_leaf(name, leaves):
        (leaf,) = leaves
        if role == WEIGHT and name in KERNELS:
            return weight_maps.duplicate_kernel(leaf, noise, rng)
        if name in KERNELS:
            return np.tile(leaf, (2, 2)) * scale
        if name in ROW_LEAVES:
            return weight_maps.duplicate_rows(leaf) * scale
        return weight_maps.duplicate_features(leaf) * scale

    return map_leaves(self_fuse_leaf, [tree])


def identity_block(block, role=WEIGHT):
    """A copy of `block` whose residual branches all output zero.

    The relative-attention bias is dropped: a new layer follows layer 0,
    which owns it. For optimizer state the new block starts with a zero
    first moment and the copied block's second moment.
    """
    _check_role(role)

    def identity_leaf(name, leaves):
        (leaf,) = leaves
        if role == FIRST_MOMENT or (role == WEIGHT and name in OUTPUT_PROJECTIONS):
            return weight_maps.zeros_like(leaf)
        return np.array(leaf)

    block = map_leaves(identity_leaf, [block])
    return _without_relative_bias(block)


def _without_relative_bias(block):
    block = dict(block)
    block["self_attention"] = {
        k: v for k, v in block["self_attention"].items() if k != "relative_bias"
    }
    return block


DEEPEN_MODES = ("identity", "stack")


def deepen_parameters(tree, num_new_layers, mode="identity", role=WEIGHT):
    """Append `num_new_layers` layers to both the encoder and the decoder.

    Modes:
        "identity": each new layer is `identity_block` of the last layer:
            function preserved exactly.
        "stack": copies of existing layers `0, 1, ...` (cyclically) are
            appended, G_stack-style. NOT function-preserving: a strong
            starting point, but the output changes.
    """
    if mode not in DEEPEN_MODES:
        raise ValueError(f"mode must be one of {DEEPEN_MODES}, got {mode!r}.")
    _check_role(role)
    tree = deep_copy(tree)
    for stack in ("encoder_layers", "decoder_layers"):
        layers = tree[stack]
        if mode == "identity":
            new = [identity_block(layers[-1], role) for _ in range(num_new_layers)]
        else:
            new = [
                _without_relative_bias(
                    identity_block(layers[i % len(layers)], FIRST_MOMENT)
                    if role == FIRST_MOMENT
                    else deep_copy(layers[i % len(layers)])
                )
                for i in range(num_new_layers)
            ]
        tree[stack] = layers + new
    return tree


def widen_ffn_parameters(tree, factor, noise=0.0, seed=None, role=WEIGHT):
    """Every feed-forward hidden unit copied `factor` times, same function.

    `ffn_input`/`ffn_gate` columns are tiled; `ffn_output` rows are split
    `1/factor` each, plus noise that cancels across the copies so that they
    do not stay identical under training. Moments: a tiled column feeds the
    output through `1/factor` of the weight, so its gradient is `1/factor`
    of the original; a split row sees the original gradient.
    """
    _check_role(role)
    rng = np.random.default_rng(seed)

    def widen_leaf(name, leaves):
        (leaf,) = leaves
        if name in FFN_IN:
            return weight_maps.tile_columns(leaf, factor) * gradient_scale(role, 1 / factor)
        if name == "ffn_output":
            if role == WEIGHT:
                return weight_maps.split_rows(leaf, factor, noise, rng)
            return weight_maps.duplicate_rows(leaf, factor)
        return np.array(leaf)

    return map_leaves(widen_leaf, [tree])


def deep_copy(tree):
    """A copy of a tree whose arrays share no memory with it (the inputs to
    an operator are never modified)."""
    return map_leaves(lambda name, leaves: np.array(leaves[0]), [tree])


def output_scale(hidden_dims, weights, tied):
    """Per-feature scale of the final decoder norm of a fused language model.

    With tied embeddings, keras-hub's T5 multiplies the decoder output by
    `hidden_dim ** -0.5` before the output projection, so the fused logits
    come out as `sum_i sqrt(d_i / D) * logits_i`; scaling model i's block of
    the final norm by `w_i * sqrt(D / d_i)` makes them `sum_i w_i logits_i`.
    Untied output projections add the blocks' logits with no rescale, so the
    scale is `w_i`.
    """
    total = sum(hidden_dims)
    parts = []
    for d, w in zip(hidden_dims, weights):
        factor = w * np.sqrt(total / d) if tied else w
        parts.append(np.full((d,), factor, dtype=np.float32))
    return np.concatenate(parts)
