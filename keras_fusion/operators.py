"""Growth operators: one object per operator.

An operator owns everything that defines its growth:
- the validation of its options (`__post_init__`, errors naming the
  argument);
- `grown_config(configs)`: the grown backbone's config from the configs of
  the models it reads, with nothing built;
- `map(trees, configs, role, lm)`: one parameter map, applied with a role
  (`growth_maps.WEIGHT`, `FIRST_MOMENT`, `SECOND_MOMENT`; Adafactor's
  factored statistics are mapped as second moments) to the parameter trees
  of the models it reads, the final decoder norm's rescale of a fused
  language model included (`lm=True`).

The math is in `growth_maps` (pure functions on arrays). The models' class
methods (`FusionT5Backbone.fuse`, `FusionT5Seq2SeqLM.self_fuse`, ...) and the
schedule entries of `keras_fusion.growth` are short wrappers around these
objects, after staged-training's `double_param(..., is_grad, is_avg_sq)`,
which maps weights and Adam's moments with one function.

Adding an operator means one class here and one row in
`keras_fusion.growth.OPERATORS` (docs/development.md shows the diff).

Example:

```python
from keras_fusion import operators
from keras_fusion.growth_maps import SECOND_MOMENT

op = operators.SelfFuse(noise=1e-3, seed=0)
config = op.grown_config([config])
weights = op.map([tree], [config], lm=True)
second_moments = op.map([v_tree], [config], role=SECOND_MOMENT, lm=True)
```
"""

import dataclasses
import math
from typing import ClassVar, Optional, Sequence

import numpy as np

from keras_fusion import growth_maps
from keras_fusion.growth_maps import FIRST_MOMENT, WEIGHT

NORM_MODES = ("grouped", "global")

# Fields two backbones must share to be fused.
FUSE_FIELDS = (
    "vocabulary_size",
    "num_layers",
    "key_value_dim",
    "activation",
    "use_gated_activation",
    "tie_embedding_weights",
    "layer_norm_epsilon",
)


def check_number(name, value, minimum=None):
    """Raise ValueError unless `value` is a finite number (>= `minimum`)."""
    bound = "" if minimum is None else f" >= {minimum}"
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (minimum is not None and value < minimum)
    ):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")


def check_int(name, value, minimum):
    """Raise ValueError unless `value` is an int >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def check_choice(name, value, allowed):
    """Raise ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def rescale_output(tree, role, hidden_dims, weights, tied):
    """`tree` with the final decoder norm of a fused language model rescaled.

    The fused norm holds `s * w` (`s = growth_maps.output_scale(...)`), which
    makes the fused logits `sum_i weights[i] * logits_i`. A weight scaled by
    `s` gets its gradient divided by `s`, so a first moment is divided by
    `s` and a second moment by `s ** 2`: one rule for every role.
    """
    scale = growth_maps.output_scale(hidden_dims, weights, tied)
    factor = scale if role == WEIGHT else growth_maps.gradient_scale(role, 1.0 / scale)
    tree = dict(tree)
    tree["decoder_norm"] = tree["decoder_norm"] * factor
    return tree


class Operator:
    """Base class of the growth operators (see the module docstring)."""

    # The operator's name in schedules (`keras_fusion.growth.OPERATORS`).
    name: ClassVar[str] = None
    # How the operator scales kernel entries; GrowthCallback's default
    # learning_rate_scale="auto" multiplies an Adam learning rate by it.
    weight_scale: ClassVar[float] = 1.0
    # How many times smaller the operator makes a kernel's RMS. Adafactor's
    # (and AdamWScale's) steps are relative to a variable's RMS, so the
    # grown kernels' steps shrink by this factor; GrowthCallback's default
    # learning_rate_scale="auto" multiplies such a rate by it, which
    # restores them (benchmarks/README.md, "After a growth").
    kernel_rms_scale: ClassVar[float] = 1.0
    # How many models the operator reads (None: two or more).
    num_inputs: ClassVar[Optional[int]] = 1

    def grown_config(self, configs):
        """The grown backbone's config from the input models' configs."""
        raise NotImplementedError

    def map(self, trees, configs, role=WEIGHT, lm=False):
        """The grown parameter tree from the input models' trees.

        Args:
            trees: one parameter tree per input model (`growth_maps`'
                layout): weights, or optimizer slots of the role.
            configs: the input models' backbone configs.
            role: what the trees hold (`growth_maps.ROLES`).
            lm: the trees are a language model's, whose logits a fusion
                keeps (the final decoder norm is rescaled).
        """
        raise NotImplementedError

    def _check_inputs(self, configs):
        count = len(configs)
        if self.num_inputs is None and count < 2:
            raise ValueError(f"{self.name} needs at least two models, got {count}.")
        if self.num_inputs is not None and count != self.num_inputs:
            raise ValueError(f"{self.name} reads {self.num_inputs} model(s), got {count}.")


def _fuse_weights(weights, count):
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"weights has {len(weights)} entries but {count} models were given.")
    return [float(w) for w in weights]


@dataclasses.dataclass(frozen=True)
class Fuse(Operator):
    """Deep Fusion of two or more models: block-diagonal kernels,
    concatenated features; a language model's logits become
    `sum_i weights[i] * logits_i`.

    Args:
        weights: one finite number per model (default uniform).
        norm: `"grouped"` (each input keeps its norm groups: exact) or
            `"global"` (one norm over the whole width: a plain T5, not
            exact for different models).
    """

    weights: Optional[Sequence[float]] = None
    norm: str = "grouped"
    name: ClassVar[str] = "fuse"
    num_inputs: ClassVar[Optional[int]] = None
    # Two of a fused kernel's four blocks are zero: for two inputs of one
    # size and RMS (Deep Fusion's) its RMS is the inputs' over sqrt(2).
    kernel_rms_scale: ClassVar[float] = math.sqrt(2)

    def __post_init__(self):
        check_choice("norm", self.norm, NORM_MODES)
        if self.weights is not None:
            weights = list(self.weights)
            if not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                for w in weights
            ):
                raise ValueError(f"weights must be finite numbers, got {weights}.")
            object.__setattr__(self, "weights", tuple(weights))

    def grown_config(self, configs):
        self._check_inputs(configs)
        _fuse_weights(self.weights, len(configs))
        growth_maps.check_same(configs, FUSE_FIELDS)
        return growth_maps.fused_config(configs, grouped=self.norm == "grouped")

    def map(self, trees, configs, role=WEIGHT, lm=False):
        fused = growth_maps.fuse_parameters(trees, role=role)
        if not lm:
            return fused
        return rescale_output(
            fused,
            role,
            [c["hidden_dim"] for c in configs],
            _fuse_weights(self.weights, len(configs)),
            configs[0]["tie_embedding_weights"],
        )


@dataclasses.dataclass(frozen=True)
class SelfFuse(Operator):
    """Self fusion: twice the width, heads and feed-forward width, the same
    function; every output block reads both input halves with `W/2 + N`
    and `W/2 - N`, so the noise cancels but the halves train apart.

    Args:
        noise: float >= 0, the noise's standard deviation as a fraction of
            each kernel's (0: the symmetric construction, whose halves never
            diverge).
        seed: int or None, for the noise.
        norm: `"grouped"` (groups duplicated) or `"global"` (one group; exact
            only for a model with one group).
    """

    noise: float = 1e-3
    seed: Optional[int] = None
    norm: str = "grouped"
    name: ClassVar[str] = "self_fuse"
    weight_scale: ClassVar[float] = 0.5  # every kernel entry becomes W/2 (plus cancelling noise)
    kernel_rms_scale: ClassVar[float] = 2.0  # so the kernels' RMS halves

    def __post_init__(self):
        check_choice("norm", self.norm, NORM_MODES)
        check_number("noise", self.noise, minimum=0)

    def grown_config(self, configs):
        self._check_inputs(configs)
        (config,) = configs
        groups = config["norm_groups"]
        if self.norm == "global" and len(groups) > 1:
            raise ValueError(
                "norm='global' is exact for self fusion only when the model has one "
                f"norm group; this one has norm_groups={groups}. Use norm='grouped'."
            )
        return growth_maps.fused_config([config, config], grouped=self.norm == "grouped")

    def map(self, trees, configs, role=WEIGHT, lm=False):
        (tree,), (config,) = trees, configs
        noise = self.noise if role == WEIGHT else 0.0
        fused = growth_maps.self_fuse_parameters(tree, noise, self.seed, role=role)
        if not lm:
            return fused
        d = config["hidden_dim"]
        return rescale_output(fused, role, [d, d], [0.5, 0.5], config["tie_embedding_weights"])


@dataclasses.dataclass(frozen=True)
class Deepen(Operator):
    """More layers in both stacks.

    Args:
        num_new_layers: int >= 1, layers appended to the encoder and to the
            decoder each.
        mode: `"identity"` (each new layer copies the last one with its
            output projections zeroed: exact) or `"stack"` (copies of layers
            0, 1, ... appended, G_stack style; NOT function preserving).
    """

    num_new_layers: int = 1
    mode: str = "identity"
    name: ClassVar[str] = "deepen"

    def __post_init__(self):
        check_choice("mode", self.mode, growth_maps.DEEPEN_MODES)
        check_int("num_new_layers", self.num_new_layers, 1)

    def grown_config(self, configs):
        self._check_inputs(configs)
        (config,) = configs
        return dict(config, num_layers=config["num_layers"] + self.num_new_layers)

    def map(self, trees, configs, role=WEIGHT, lm=False):
        (tree,) = trees
        return growth_maps.deepen_parameters(tree, self.num_new_layers, self.mode, role=role)


@dataclasses.dataclass(frozen=True)
class WidenFFN(Operator):
    """Feed-forward blocks `factor` times wider, the same function.

    Args:
        factor: int >= 2.
        noise: float >= 0, cancelling noise on the split output rows (as a
            fraction of their standard deviation), so that the copies of a
            hidden unit train apart.
        seed: int or None, for the noise.
    """

    factor: int = 2
    noise: float = 1e-3
    seed: Optional[int] = None
    name: ClassVar[str] = "widen_ffn"

    def __post_init__(self):
        check_int("factor", self.factor, 2)
        check_number("noise", self.noise, minimum=0)

    def grown_config(self, configs):
        self._check_inputs(configs)
        (config,) = configs
        return dict(config, intermediate_dim=config["intermediate_dim"] * self.factor)

    def map(self, trees, configs, role=WEIGHT, lm=False):
        (tree,) = trees
        noise = self.noise if role == WEIGHT else 0.0
        return growth_maps.widen_ffn_parameters(tree, self.factor, noise, self.seed, role=role)


@dataclasses.dataclass(frozen=True)
class RandomWidenFFN(Operator):
    """A control, NOT function preserving: feed-forward blocks `factor`
    times wider whose new hidden units are drawn at random.

    The existing units keep their weights; each new unit's input (and gate)
    column and output row are drawn from a normal distribution with the
    standard deviation of the kernel they extend, as a model trained from
    scratch would be. The function changes (the new units add to the
    output), which is what makes it the baseline that the exact `WidenFFN`
    is measured against. Optimizer slots: new entries start with a zero
    first moment and the mean of the kernel's second moment.

    Args:
        factor: int >= 2.
        seed: int or None, for the new units.
    """

    factor: int = 2
    seed: Optional[int] = None
    name: ClassVar[str] = "random_widen_ffn"

    def __post_init__(self):
        check_int("factor", self.factor, 2)

    grown_config = WidenFFN.grown_config  # the same shapes as the exact widening

    def map(self, trees, configs, role=WEIGHT, lm=False):
        (tree,) = trees
        rng = np.random.default_rng(self.seed)

        def new_entries(kernel, shape):
            if role == WEIGHT:
                return rng.normal(0.0, float(np.std(kernel)), shape).astype(kernel.dtype)
            value = 0.0 if role == FIRST_MOMENT else float(np.mean(kernel))
            return np.full(shape, value, kernel.dtype)

        def widen_leaf(name, leaves):
            (leaf,) = leaves
            leaf = np.asarray(leaf)
            if name in growth_maps.FFN_IN:  # (d, f): new columns
                shape = (leaf.shape[0], leaf.shape[1] * (self.factor - 1))
                return np.concatenate([leaf, new_entries(leaf, shape)], axis=1)
            if name == "ffn_output":  # (f, d): new rows
                shape = (leaf.shape[0] * (self.factor - 1), leaf.shape[1])
                return np.concatenate([leaf, new_entries(leaf, shape)], axis=0)
            return np.array(leaf)

        return growth_maps.map_leaves(widen_leaf, [tree])
