"""Growth schedules: what to grow, and at which optimizer step.

A schedule is a list of entries, each naming a growth operator and the
global optimizer step (`optimizer.iterations`) after which it applies, so a
schedule means the same thing after a resume:

```python
from keras_fusion.growth import Deepen, SelfFuse, parse_schedule

schedule = [SelfFuse(at_step=1000), Deepen(at_step=3000, num_new_layers=2)]
schedule = parse_schedule("self_fuse@1000,deepen@3000:layers=2")  # the same
```

String form, for command-line flags: entries separated by commas, each
`operator@step` followed by `:key=value` options:

| operator | options (default) |
|---|---|
| `fuse` | `partner=PATH` (required: a `.keras` T5 LM), `weight=W` (0.5: the partner gets 1 - W) |
| `self_fuse` | `noise=F` (1e-3), `seed=N` (0) |
| `deepen` | `layers=N` (1), `mode=identity|stack` (identity) |
| `widen_ffn` | `factor=N` (2), `noise=F` (1e-3), `seed=N` (0) |

Each entry gives its `grown_config` without building anything (used to
check a whole schedule before the first training step), compute the grown
model's `grown_parameters` (arrays, nothing built) and `grow` a language
model, returning the grown model and the map that carries optimizer state
(see `optimizer_state`).
"""

import dataclasses
import math
import re
from typing import Any, Optional

import keras
import numpy as np

from keras_fusion import growth_maps, optimizer_state, storage
from keras_fusion.models import variable_trees
from keras_fusion.models.fusion_t5_backbone import (
    FUSE_FIELDS,
    backbone_config,
    backbone_variables,
    grown_by_deepen,
    grown_by_widen_ffn,
)
from keras_fusion.models.fusion_t5_seq2seq_lm import (
    grown_lm_by_fuse,
    grown_lm_by_self_fuse,
    inner_lm,
    scaled_output_slots,
)


def _check_step(entry, at_step):
    if isinstance(at_step, bool) or not isinstance(at_step, (int, np.integer)) or at_step < 1:
        raise ValueError(f"{entry}: at_step must be an int >= 1, got {at_step!r}.")


@dataclasses.dataclass(frozen=True)
class GrowthEntry:
    """Base class: one growth event at optimizer step `at_step`."""

    at_step: int

    operator = None
    # How the operator scales kernel entries; GrowthCallback's default
    # learning_rate_scale="auto" multiplies the learning rate by it.
    weight_scale = 1.0

    def __post_init__(self):
        _check_step(self.operator, self.at_step)

    def describe(self):
        """The entry in schedule-string form (also its identity in history)."""
        options = "".join(f":{k}={v}" for k, v in self._options().items())
        return f"{self.operator}@{self.at_step}{options}"

    def _options(self):
        return {}

    def grown_config(self, config):
        """The backbone config after this growth (nothing is built)."""
        raise NotImplementedError

    def grown_parameters(self, lm):
        """Returns `(config, parameters, map_tree)` of the grown model, built
        from nothing: its backbone config, its parameter tree (arrays), and
        `map_tree(tree, role, slot_name)`, which maps a parameter-shaped tree
        of `lm` (an optimizer slot) to the grown model's shapes."""
        raise NotImplementedError


def _check_noise(entry):
    noise = entry.noise
    if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"{entry.describe()}: noise must be a finite number >= 0, got {noise!r}.")


@dataclasses.dataclass(frozen=True)
class SelfFuse(GrowthEntry):
    """Self fusion (`FusionT5Seq2SeqLM.self_fuse`): twice the width."""

    noise: float = 1e-3
    seed: int = 0
    operator = "self_fuse"
    weight_scale = 0.5  # every kernel entry becomes W/2 (plus cancelling noise)

    def __post_init__(self):
        super().__post_init__()
        _check_noise(self)

    def _options(self):
        return {"noise": self.noise, "seed": self.seed}

    def grown_config(self, config):
        return growth_maps.fused_config([config, config])

    def grown_parameters(self, lm):
        config, parameters = grown_lm_by_self_fuse(lm, noise=self.noise, seed=self.seed)
        d, tied = lm.backbone.hidden_dim, config["tie_embedding_weights"]

        def map_tree(tree, role, _):
            # The backbone's map, then the output norm's rescaling (the fused
            # logits equal the model's only with the norm scaled).
            fused = growth_maps.self_fuse_parameters(tree, role=role)
            return scaled_output_slots(fused, role, [d, d], [0.5, 0.5], tied)

        return config, parameters, map_tree


@dataclasses.dataclass(frozen=True)
class Deepen(GrowthEntry):
    """More layers (`FusionT5Seq2SeqLM.deepen`); `mode="stack"` is not exact."""

    num_new_layers: int = 1
    mode: str = "identity"
    operator = "deepen"

    def __post_init__(self):
        super().__post_init__()
        if (
            isinstance(self.num_new_layers, bool)
            or not isinstance(self.num_new_layers, int)
            or self.num_new_layers < 1
        ):
            raise ValueError(
                f"{self.describe()}: layers must be an int >= 1, got {self.num_new_layers!r}."
            )
        if self.mode not in growth_maps.DEEPEN_MODES:
            raise ValueError(
                f"{self.describe()}: mode must be one of {growth_maps.DEEPEN_MODES}, "
                f"got {self.mode!r}."
            )

    def _options(self):
        return {"layers": self.num_new_layers, "mode": self.mode}

    def grown_config(self, config):
        return dict(config, num_layers=config["num_layers"] + self.num_new_layers)

    def grown_parameters(self, lm):
        config, parameters = grown_by_deepen(lm.backbone, self.num_new_layers, mode=self.mode)
        return (
            config,
            parameters,
            lambda tree, role, _: growth_maps.deepen_parameters(
                tree, self.num_new_layers, self.mode, role=role
            ),
        )


@dataclasses.dataclass(frozen=True)
class WidenFFN(GrowthEntry):
    """Wider feed-forward blocks (`FusionT5Seq2SeqLM.widen_ffn`)."""

    factor: int = 2
    noise: float = 1e-3
    seed: int = 0
    operator = "widen_ffn"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"{self.describe()}: factor must be an int >= 2, got {self.factor!r}.")
        _check_noise(self)

    def _options(self):
        return {"factor": self.factor, "noise": self.noise, "seed": self.seed}

    def grown_config(self, config):
        return dict(config, intermediate_dim=config["intermediate_dim"] * self.factor)

    def grown_parameters(self, lm):
        config, parameters = grown_by_widen_ffn(
            lm.backbone, self.factor, noise=self.noise, seed=self.seed
        )
        return (
            config,
            parameters,
            lambda tree, role, _: growth_maps.widen_ffn_parameters(tree, self.factor, role=role),
        )


@dataclasses.dataclass(frozen=True)
class Fuse(GrowthEntry):
    """Deep Fusion with a trained partner (`FusionT5Seq2SeqLM.fuse`).

    The growing model is model 0 of the fusion, the partner model 1; the
    fused logits are `weight * logits + (1 - weight) * partner_logits`.

    Args:
        at_step: optimizer step after which to fuse.
        partner: a `T5Seq2SeqLM`, or the path of one saved as `.keras`.
            Loaded (once) when the schedule is checked. A partner saved with
            a compiled optimizer of the same class brings its optimizer
            state; otherwise its entries start with zero first moments.
        weight: the growing model's share of the fused logits.
    """

    partner: Any = None
    weight: float = 0.5
    operator = "fuse"

    def __post_init__(self):
        super().__post_init__()
        if self.partner is None:
            raise ValueError(f"{self.describe()}: partner is required (a model or a .keras path).")
        if isinstance(self.partner, str) and not storage.exists(self.partner):
            raise ValueError(f"{self.describe()}: partner file not found: {self.partner}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(
                f"{self.describe()}: weight must be a finite number, got {self.weight!r}."
            )

    def _options(self):
        partner = self.partner if isinstance(self.partner, str) else type(self.partner).__name__
        return {"partner": partner, "weight": self.weight}

    def partner_model(self):
        """The partner as given or loaded (once): an LM, or a wrapper of one
        such as `GrowingT5Seq2SeqLM`, whose optimizer then comes along."""
        cache = self.__dict__.setdefault("_loaded", {})
        if "model" not in cache:
            partner = self.partner
            if isinstance(partner, str):
                try:
                    partner = keras.saving.load_model(partner)
                except Exception as error:  # a corrupt or foreign file
                    raise ValueError(
                        f"{self.describe()}: cannot load partner {self.partner}: {error}"
                    ) from error
            lm = inner_lm(partner)
            if not isinstance(lm, keras.Model) or not hasattr(lm, "backbone"):
                raise ValueError(
                    f"{self.describe()}: partner must be a T5 language model, got "
                    f"{type(partner).__name__}."
                )
            cache["model"] = partner
        return cache["model"]

    def grown_config(self, config):
        partner = backbone_config(self.partner_model().backbone)
        for field in FUSE_FIELDS:
            if config[field] != partner[field]:
                raise ValueError(
                    f"{self.describe()}: partner cannot be fused with the model: "
                    f"{field} differs: {config[field]} vs {partner[field]}."
                )
        return growth_maps.fused_config([config, partner])

    def grown_parameters(self, lm):
        loaded = self.partner_model()
        partner = inner_lm(loaded)
        config, parameters = grown_lm_by_fuse([lm, partner], weights=[self.weight, 1 - self.weight])
        partner_tree = backbone_variables(partner.backbone)
        partner_arrays = variable_trees.read(partner_tree)
        partner_slots = {}
        optimizer = getattr(loaded, "optimizer", None)
        if isinstance(optimizer, optimizer_state.SUPPORTED) and optimizer.built:
            partner_slots = optimizer_state.read_slots(optimizer, partner_tree)

        def map_tree(tree, role, slot_name):
            if slot_name in partner_slots:
                other = partner_slots[slot_name][1]
            else:
                other = optimizer_state.moments_for_new_model(
                    {slot_name: (role, tree)}, partner_arrays
                )[slot_name][1]
            fused = growth_maps.fuse_parameters([tree, other], role=role)
            return scaled_output_slots(
                fused, role, hidden_dims, [self.weight, 1 - self.weight], tied
            )

        hidden_dims = [lm.backbone.hidden_dim, partner.backbone.hidden_dim]
        tied = config["tie_embedding_weights"]
        return config, parameters, map_tree


# The growth `GrowthCallback()` applies when given no schedule, and the
# growth time the recipes should use by default: the mode (a recipe name of
# `keras_fusion.recipes`, one that needs no partner) and the fraction of the
# run's steps after which it grows. The evidence (benchmarks/README.md,
# "Growth against scratch", issue 21): at 8,000 and 16,000 hidden-64 steps,
# 4x and 8x issue 20's budget, no regime check passes (the starting models
# trained alone end below scratch, by more at 16,000 steps than at 8,000),
# so no mode has yet shown a saving attributable to growth.
# Of the partner-free modes, deepen and stack both reach scratch's final loss
# after their growth (0.69 and 0.62 of its FLOPs, one seed each); stack is
# not function preserving. Deepen at 0.25 is kept until a run whose check
# passes chooses; 0.25 is the only growth time measured so far.
DEFAULT_GROWTH_MODE = "deepen"
DEFAULT_GROWTH_FRACTION = 0.25
DEFAULT_MODES = ("self_fusion", "deepen", "stack")


def default_entry(config, total_steps, mode=DEFAULT_GROWTH_MODE, fraction=DEFAULT_GROWTH_FRACTION):
    """The growth entry for a run of `total_steps` steps of a model of `config`.

    Args:
        config: the backbone config of the model before growth.
        total_steps: the optimizer steps of the whole run.
        mode: `"self_fusion"` (twice the width), `"deepen"` (twice the
            depth, identity layers) or `"stack"` (twice the depth, the layers
            copied on top; not function preserving).
        fraction: the share of `total_steps` after which to grow, in (0, 1).

    Returns:
        A `GrowthEntry` at step `max(1, round(fraction * total_steps))`.

    Example:

    ```python
    entry = default_entry(backbone_config(lm.backbone), total_steps=10_000)
    ```
    """
    if mode not in DEFAULT_MODES:
        raise ValueError(f"mode must be one of {DEFAULT_MODES}, got {mode!r}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}.")
    if (
        isinstance(total_steps, bool)
        or not isinstance(total_steps, (int, np.integer))
        or total_steps < 2
    ):
        raise ValueError(f"total_steps must be an int >= 2, got {total_steps!r}.")
    at_step = max(1, round(fraction * int(total_steps)))
    if mode == "self_fusion":
        return SelfFuse(at_step=at_step)
    return Deepen(
        at_step=at_step,
        num_new_layers=config["num_layers"],
        mode="stack" if mode == "stack" else "identity",
    )


OPERATORS = {
    "fuse": (Fuse, {"partner": ("partner", str), "weight": ("weight", float)}),
    "self_fuse": (SelfFuse, {"noise": ("noise", float), "seed": ("seed", int)}),
    "deepen": (Deepen, {"layers": ("num_new_layers", int), "mode": ("mode", str)}),
    "widen_ffn": (
        WidenFFN,
        {"factor": ("factor", int), "noise": ("noise", float), "seed": ("seed", int)},
    ),
}


def parse_schedule(text):
    """Parse `"self_fuse@1000,deepen@3000:layers=2"` into schedule entries.

    Raises:
        ValueError naming the entry that does not parse, with the allowed
        operators or options.
    """
    if not isinstance(text, str):
        raise ValueError(f"A schedule string is expected, got {type(text).__name__}.")
    entries = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        # A ":" that starts "://" belongs to a path (partner=gs://bucket/a.keras).
        head, *options = re.split(r":(?!//)", raw)
        operator, at, step = head.partition("@")
        operator = operator.strip()
        if not at:
            raise ValueError(f"Schedule entry {raw!r}: expected OPERATOR@STEP, e.g. 'deepen@3000'.")
        if operator not in OPERATORS:
            raise ValueError(
                f"Schedule entry {raw!r}: unknown operator {operator!r}; "
                f"allowed: {', '.join(sorted(OPERATORS))}."
            )
        cls, allowed = OPERATORS[operator]
        try:
            kwargs = {"at_step": int(step)}
        except ValueError:
            raise ValueError(f"Schedule entry {raw!r}: step {step!r} is not an integer.") from None
        for option in options:
            key, eq, value = option.partition("=")
            if not eq or key not in allowed:
                raise ValueError(
                    f"Schedule entry {raw!r}: unknown option {option!r}; "
                    f"allowed for {operator}: {', '.join(k + '=' for k in allowed)}."
                )
            field, kind = allowed[key]
            try:
                kwargs[field] = kind(value)
            except ValueError:
                raise ValueError(
                    f"Schedule entry {raw!r}: {key}={value!r} is not a valid {kind.__name__}."
                ) from None
        try:
            entries.append(cls(**kwargs))
        except ValueError as error:
            raise ValueError(f"Schedule entry {raw!r}: {error}") from None
    return validate_schedule(entries)


def validate_schedule(schedule):
    """Check entries and steps (no duplicates); return them sorted by step."""
    if isinstance(schedule, str):
        return parse_schedule(schedule)
    schedule = list(schedule)
    for entry in schedule:
        if not isinstance(entry, GrowthEntry):
            raise ValueError(f"Schedule entries must be growth entries, got {entry!r}.")
    steps = {}
    for entry in schedule:
        if entry.at_step in steps:
            raise ValueError(
                f"Two growth entries at step {entry.at_step}: "
                f"{steps[entry.at_step].describe()} and {entry.describe()}."
            )
        steps[entry.at_step] = entry
    return sorted(schedule, key=lambda e: e.at_step)


def grown_configs(schedule, config, max_parameters: Optional[int] = None):
    """Configs after each entry; checks partners and the parameter limit.

    Returns:
        A list of `(entry, config_after, parameter_count_after)`.
    """
    planned = []
    for entry in schedule:
        config = entry.grown_config(config)
        count = parameter_count(config)
        if max_parameters is not None and count > max_parameters:
            raise ValueError(
                f"{entry.describe()}: the model would grow to {count:,} parameters, "
                f"over max_parameters={max_parameters:,}."
            )
        planned.append((entry, config, count))
    return planned


def parameter_count(config):
    """Parameters of a T5 backbone with this config, computed, not built."""
    d, f, h = config["hidden_dim"], config["intermediate_dim"], config["num_heads"]
    k = config.get("key_value_dim") or d // h
    layers = config["num_layers"]
    attention = 4 * d * h * k
    ffn = (3 if config["use_gated_activation"] else 2) * d * f
    encoder = layers * (attention + ffn + 2 * d) + 32 * h
    decoder = layers * (2 * attention + ffn + 3 * d) + 32 * h
    embedding = config["vocabulary_size"] * d * (1 if config["tie_embedding_weights"] else 2)
    return encoder + decoder + embedding + 2 * d


__all__ = [
    "DEFAULT_GROWTH_FRACTION",
    "DEFAULT_GROWTH_MODE",
    "Deepen",
    "Fuse",
    "GrowthEntry",
    "SelfFuse",
    "WidenFFN",
    "default_entry",
    "parameter_count",
    "parse_schedule",
    "grown_configs",
    "validate_schedule",
]
