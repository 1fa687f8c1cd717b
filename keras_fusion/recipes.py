"""The training recipes: model shapes, what a recipe starts from and grows to.

Recipes (the growth happens inside `fit`, through `GrowthCallback`):

- `scratch`: the target model trained from random initialisation.
- `deep_fusion` (the paper's): two models of half the target width trained
  from different seeds and data orders; at `growth_step` the first is fused
  with the second and the fused model, of the target size, trains on. It is
  the fusion tree of depth 1 (`fusion_depth`): nodes `leaf0`, `leaf1`, `root`.
- `self_fusion`: one half-width model, fused with itself at `growth_step`.
- `deepen`: a model with half the target depth, given identity layers at
  `growth_step`.
- `stack`: as `deepen`, but the new layers are copies of the trained ones
  (G_stack style; NOT function preserving).
- `fusion_tree`: the paper's tree (its algorithm 4). With `tree_depth=2`,
  four models of a quarter of the target's width train `growth_step` steps
  each, are fused in pairs into two half-width models that train
  `growth_step` more, and those are fused into the target, which trains
  until `steps`. Every model between two fusions is a `Stage` (a node)
  that can run as its own job (`fusion_tree_stages`).

```python
from keras_fusion import recipes

target = recipes.target_config("tiny", vocabulary_size=1000)
start = recipes.start_config("deep_fusion", target)  # half the width
model = recipes.compile_model(recipes.build_model(start, seed=0), "adam")
```
"""

import dataclasses
from typing import Optional

import keras

from keras_fusion import growth, storage
from keras_fusion.growth import Fuse
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM, load_lm

PRESETS = {
    # T5 shapes; vocabulary_size comes from the tokenizer.
    "tiny": dict(num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128, key_value_dim=16),
    "small": dict(
        num_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048, key_value_dim=64
    ),
    "base": dict(
        num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072, key_value_dim=64
    ),
}
# One vocabulary for the ways to reach a target: the recipes of
# `tools/train`, `GrowthCallback()`'s default modes (`growth.DEFAULT_MODES`,
# the growing recipes that need no partner) and the growing arms of
# `benchmarks/growth_vs_scratch_v2.py` are these names; the operators
# (`keras_fusion.operators`: fuse, self_fuse, deepen, widen_ffn) are the
# steps they take.
RECIPES = ("deep_fusion", "self_fusion", "deepen", "stack", "scratch", "fusion_tree")
_DEPTH_RECIPES = ("deepen", "stack")
# The widths a recipe divides the target's by (fusion_tree: 2 ** tree_depth).
_WIDTH_KEYS = ("hidden_dim", "num_heads", "intermediate_dim")


def _scaled_width(config, factor):
    """`config` with its widths (`_WIDTH_KEYS`) times `factor` (a power of 2,
    or its inverse on widths it divides)."""
    return dict(config, **{key: round(config[key] * factor) for key in _WIDTH_KEYS})


def target_config(preset, vocabulary_size, **overrides):
    """The config of the model a recipe ends with."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}.")
    config = dict(
        PRESETS[preset],
        vocabulary_size=vocabulary_size,
        dropout=0.0,
        activation="gelu",
        use_gated_activation=True,
        tie_embedding_weights=True,
    )
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def start_config(recipe, config, tree_depth=2):
    """The config a recipe starts from (before growth); `tree_depth` is
    fusion_tree's (its leaves are `2 ** tree_depth` times narrower)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in ("deep_fusion", "self_fusion", "fusion_tree"):
        factor = 2 ** (fusion_depth(recipe, tree_depth) or 1)
        for key in _WIDTH_KEYS:
            if config[key] % factor:
                rule = (
                    "halves {key}, which must be even"
                    if factor == 2
                    else "divides {key} by {factor}, which must be a multiple of {factor}"
                )
                raise ValueError(
                    f"{recipe} {rule.format(key=key, factor=factor)}; got {config[key]}."
                )
        return _scaled_width(config, 1 / factor)
    if recipe in _DEPTH_RECIPES:
        if config["num_layers"] < 2 or config["num_layers"] % 2:
            raise ValueError(
                f"{recipe} halves num_layers, which must be even and >= 2; "
                f"got {config['num_layers']}."
            )
        return dict(config, num_layers=config["num_layers"] // 2)
    return dict(config)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One model's training between two growths: a node of a fusion tree.

    Attributes:
        name: the stage's name (`leaf0`, `fused1_0`, `root`).
        config: the backbone config it trains (after its growths).
        seed: the seed of its model's initialisation and data order (a
            stage that continues another keeps that one's).
        start_step: the optimizer step it starts at (0, or the step its
            input was trained to).
        end_step: the optimizer step it trains to.
        continues: the stage whose final model (with its optimizer) it
            starts from, or None (a model built from `config` and `seed`).
        fuses: the stage whose final model it fuses into the one it
            continues at `start_step`, or None.
    """

    name: str
    config: dict
    seed: int
    start_step: int
    end_step: int
    continues: Optional[str] = None
    fuses: Optional[str] = None

    @property
    def inputs(self):
        """The stages that must be finished before this one starts."""
        return tuple(name for name in (self.continues, self.fuses) if name)

    def growths(self, final_model_path):
        """The stage's growth entries: the fusion at its first step, its
        partner read from `final_model_path(name)` (which must exist)."""
        if self.fuses is None:
            return []
        return [Fuse(at_step=self.start_step, partner=final_model_path(self.fuses))]


def fusion_tree_stages(target, tree_depth, growth_step, steps, seed):
    """The nodes of a fusion tree, inputs before their users.

    `2 ** tree_depth` leaves of `target`'s width divided by `2 ** tree_depth`
    (seeds `seed`, `seed + 1`, ...) train steps 0 to `growth_step`. Each node
    of level `L` (1 to `tree_depth`) continues its first input, fuses the
    second into it at step `L * growth_step` (`Stage.growths`: `Fuse`),
    and trains `growth_step` steps; the root
    (the last level) trains until `steps`. `tree_depth=1` is Deep Fusion's
    2 -> 1.

    Example:

    ```python
    target = target_config("tiny", vocabulary_size=1000)
    stages = fusion_tree_stages(target, tree_depth=2, growth_step=100, steps=400, seed=0)
    [s.name for s in stages]
    # ['leaf0', 'leaf1', 'leaf2', 'leaf3', 'fused1_0', 'fused1_1', 'root']
    ```
    """
    if not isinstance(tree_depth, int) or tree_depth < 1:
        raise ValueError(f"tree_depth must be an int >= 1, got {tree_depth!r}.")
    if not isinstance(growth_step, int) or growth_step < 1:
        raise ValueError(f"growth_step must be an int >= 1, got {growth_step!r}.")
    if not tree_depth * growth_step < steps:
        raise ValueError(
            f"a fusion tree of depth {tree_depth} fuses its last pair at step "
            f"tree_depth * growth_step = {tree_depth * growth_step}, which must be below "
            f"steps ({steps})."
        )

    def name(level, index):
        if level == 0:
            return f"leaf{index}"
        return "root" if level == tree_depth else f"fused{level}_{index}"

    leaf = start_config("fusion_tree", target, tree_depth)
    stages = [Stage(name(0, i), leaf, seed + i, 0, growth_step) for i in range(2**tree_depth)]
    level_stages = stages
    for level in range(1, tree_depth + 1):
        config = _scaled_width(target, 1 / 2 ** (tree_depth - level))
        at = level * growth_step
        built = []
        for i in range(len(level_stages) // 2):
            first, second = level_stages[2 * i], level_stages[2 * i + 1]
            built.append(
                Stage(
                    name(level, i),
                    config,
                    first.seed,
                    at,
                    steps if level == tree_depth else at + growth_step,
                    continues=first.name,
                    fuses=second.name,
                )
            )
        stages += built
        level_stages = built
    return stages


def growth_entries(recipe, config, growth_step):
    """The growth entries of a recipe of one model, for the target `config`
    (a fusion tree's, `deep_fusion`'s included, are its stages':
    `Stage.growths`).

    Example:

    ```python
    target = target_config("tiny", vocabulary_size=1000)
    growth_entries("deepen", target, growth_step=300)
    # [Deepen(at_step=300, num_new_layers=1, mode='identity')]
    ```
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in growth.DEFAULT_MODES:
        layers = config["num_layers"]
        return [growth.doubling_entry(recipe, growth_step, num_new_layers=layers - layers // 2)]
    return []


def fusion_depth(recipe, tree_depth=2):
    """The depth of the fusion tree a recipe trains: 1 for `deep_fusion`
    (2 -> 1), `tree_depth` for `fusion_tree`, None for the recipes of one
    model."""
    return {"deep_fusion": 1, "fusion_tree": tree_depth}.get(recipe)


def default_growth_fraction(recipe):
    """The default growth time of a recipe, as a fraction of the run's steps:
    `growth.FUSION_GROWTH_FRACTION` (0.1) for the recipes that fuse partners
    (those with a `fusion_depth`: deep_fusion, fusion_tree; each node's
    steps), `growth.DEFAULT_GROWTH_FRACTION` (0.05) for the others.

    Example:

    ```python
    default_growth_fraction("stack")  # 0.05
    default_growth_fraction("deep_fusion")  # 0.1
    ```
    """
    if fusion_depth(recipe) is not None:
        return growth.FUSION_GROWTH_FRACTION
    return growth.DEFAULT_GROWTH_FRACTION


def grown_config(recipe, start, tree_depth=2):
    """The config a recipe grows `start` to (the inverse of `start_config`);
    a fusion tree's leaves are `2 ** tree_depth` times narrower than its root."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in ("deep_fusion", "self_fusion", "fusion_tree"):
        return _scaled_width(start, 2 ** (fusion_depth(recipe, tree_depth) or 1))
    if recipe in _DEPTH_RECIPES:
        return dict(start, num_layers=2 * start["num_layers"])
    return dict(start)


def build_model(config, seed):
    """A compiled-ready `GrowingT5Seq2SeqLM` of `config`, seeded."""
    keras.utils.set_random_seed(seed)
    return GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(FusionT5Backbone(**config)))


def compile_model(model, optimizer, jit_compile="auto", steps_per_execution=1):
    """Compile for span-corruption training (loss on logits, token accuracy).

    `jit_compile` and `steps_per_execution` are Keras' own (XLA; optimizer
    steps per call of the compiled train function, which TPUs need): growth
    keeps both (`GrowthCallback` retraces the grown step with them).

    The loss is the mean over target tokens (padding weighted out of the
    numerator and the denominator), as the held-out loss of
    `keras_fusion.metrics.MetricsRecorder` is.
    """
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    model.compile(
        optimizer=optimizer,
        loss=loss,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def init_from(path, tokenizer=None, model_dir=None):
    """The starting LM of `--init_from` and the path of its SentencePiece model.

    `path` is a Hugging Face T5 folder, a keras-hub preset directory or a
    `.keras` file (`keras_fusion.models.load_lm`). The tokenizer
    is the checkpoint's own (written to `model_dir/tokenizer/`), or
    `tokenizer` when the checkpoint has none.
    """
    lm, proto = load_lm(path)
    if proto is None:
        if not tokenizer:
            raise ValueError(
                f"--init_from={path} holds no tokenizer: "
                "give its SentencePiece model as --tokenizer."
            )
        return lm, tokenizer
    return lm, storage.write_bytes(storage.join(model_dir, "tokenizer", "init_from.model"), proto)
