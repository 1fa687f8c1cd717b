"""The training recipes: model shapes, what a recipe starts from and grows to.

Recipes (the growth happens inside `fit`, through `GrowthCallback`):

- `scratch`: the target model trained from random initialisation.
- `deep_fusion` (the paper's): two models of half the target width trained
  from different seeds and data orders; at `growth_step` the first is fused
  with the second and the fused model, of the target size, trains on.
- `self_fusion`: one half-width model, fused with itself at `growth_step`.
- `deepen`: a model with half the target depth, given identity layers at
  `growth_step`.

```python
from keras_fusion import recipes

target = recipes.target_config("tiny", vocabulary_size=1000)
start = recipes.start_config("deep_fusion", target)  # half the width
model = recipes.compile_model(recipes.build_model(start, seed=0), "adam")
```
"""

import keras

from keras_fusion import storage
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM

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
RECIPES = ("deep_fusion", "self_fusion", "deepen", "scratch")


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


def start_config(recipe, config):
    """The config a recipe starts from (before growth)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in ("deep_fusion", "self_fusion"):
        for key in ("hidden_dim", "num_heads", "intermediate_dim"):
            if config[key] % 2:
                raise ValueError(f"{recipe} halves {key}, which must be even; got {config[key]}.")
        return dict(
            config,
            hidden_dim=config["hidden_dim"] // 2,
            num_heads=config["num_heads"] // 2,
            intermediate_dim=config["intermediate_dim"] // 2,
        )
    if recipe == "deepen":
        if config["num_layers"] < 2 or config["num_layers"] % 2:
            raise ValueError(
                "deepen halves num_layers, which must be even and >= 2; "
                f"got {config['num_layers']}."
            )
        return dict(config, num_layers=config["num_layers"] // 2)
    return dict(config)


def growth_schedule(recipe, config, growth_step, partner_path=None):
    """The schedule string of a recipe."""
    if recipe == "scratch":
        return ""
    if recipe == "deep_fusion":
        return f"fuse@{growth_step}:partner={partner_path}"
    if recipe == "self_fusion":
        return f"self_fuse@{growth_step}"
    return f"deepen@{growth_step}:layers={config['num_layers'] - config['num_layers'] // 2}"


def grown_config(recipe, start):
    """The config a recipe grows `start` to (the inverse of `start_config`)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}.")
    if recipe in ("deep_fusion", "self_fusion"):
        return dict(
            start,
            hidden_dim=2 * start["hidden_dim"],
            num_heads=2 * start["num_heads"],
            intermediate_dim=2 * start["intermediate_dim"],
        )
    if recipe == "deepen":
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
    `.keras` file (`keras_fusion.utils.preset_loader.load_lm`). The tokenizer
    is the checkpoint's own (written to `model_dir/tokenizer/`), or
    `tokenizer` when the checkpoint has none.
    """
    from keras_fusion.utils.preset_loader import load_lm

    lm, proto = load_lm(path)
    if proto is None:
        if not tokenizer:
            raise ValueError(
                f"--init_from={path} holds no tokenizer: "
                "give its SentencePiece model as --tokenizer."
            )
        return lm, tokenizer
    return lm, storage.write_bytes(storage.join(model_dir, "tokenizer", "init_from.model"), proto)
