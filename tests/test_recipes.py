"""keras_fusion.recipes: what each recipe starts from and grows to, its schedule, its loss."""

import numpy as np
import pytest

from keras_fusion import growth, recipes
from t5_test_utils import VOCABULARY_SIZE, random_inputs, random_labels

WIDTH = ("hidden_dim", "num_heads", "intermediate_dim")


@pytest.mark.parametrize("preset", sorted(recipes.PRESETS))
@pytest.mark.parametrize("recipe", recipes.RECIPES)
def test_start_config_halves_what_the_recipe_grows_and_grown_config_inverts_it(recipe, preset):
    target = recipes.target_config(preset, vocabulary_size=100)
    start = recipes.start_config(recipe, target)
    halved = {
        "deep_fusion": WIDTH,
        "self_fusion": WIDTH,
        "deepen": ("num_layers",),
        "stack": ("num_layers",),
        "scratch": (),
        "fusion_tree": WIDTH,  # divided by 4 at the default depth 2
    }[recipe]
    factor = 4 if recipe == "fusion_tree" else 2
    for key, value in target.items():
        assert start[key] == (value // factor if key in halved else value), key
    for key in halved:
        # The presets' widths are multiples of 4: nothing is rounded away.
        assert factor * start[key] == target[key], key
    assert recipes.grown_config(recipe, start) == target
    for depth in (1, 2):  # a tree's leaves are 2 ** depth times narrower than its root
        leaf = recipes.start_config("fusion_tree", target, depth)
        assert {k: leaf[k] * 2**depth for k in WIDTH} == {k: target[k] for k in WIDTH}
        assert recipes.grown_config("fusion_tree", leaf, depth) == target
    # deep_fusion is the fusion tree of depth 1.
    assert recipes.fusion_depth(recipe, tree_depth=3) == {"deep_fusion": 1, "fusion_tree": 3}.get(
        recipe
    )


@pytest.mark.parametrize(
    "recipe,key,value",
    [
        ("self_fusion", "hidden_dim", 63),
        ("deep_fusion", "num_heads", 3),
        ("deep_fusion", "intermediate_dim", 127),
        ("deepen", "num_layers", 1),
        ("stack", "num_layers", 3),
    ],
)
def test_a_size_a_recipe_cannot_halve_is_refused_naming_the_key_and_value(recipe, key, value):
    target = recipes.target_config("tiny", 100, **{key: value})
    with pytest.raises(
        ValueError, match=f"{recipe} halves {key}, which must be .*; got {value}\\."
    ):
        recipes.start_config(recipe, target)


def test_an_unknown_preset_or_recipe_is_refused_naming_the_allowed_values():
    with pytest.raises(
        ValueError, match=r"preset must be one of \('tiny', 'small', 'base'\), got 'huge'"
    ):
        recipes.target_config("huge", 100)
    target = recipes.target_config("tiny", 100)
    with pytest.raises(
        ValueError,
        match=r"recipe must be one of \('deep_fusion', 'self_fusion', 'deepen', 'stack', "
        r"'scratch', 'fusion_tree'\), got 'bogus'",
    ):
        recipes.start_config("bogus", target)


def test_fusion_tree_stages_are_the_papers_tree_inputs_first(tmp_path):
    target = recipes.target_config("tiny", 100)  # hidden 64, 4 heads, feed-forward 128
    stages = recipes.fusion_tree_stages(target, tree_depth=2, growth_step=100, steps=450, seed=5)
    names = [s.name for s in stages]
    assert names == ["leaf0", "leaf1", "leaf2", "leaf3", "fused1_0", "fused1_1", "root"]
    widths = {s.name: (s.config["hidden_dim"], s.config["num_heads"]) for s in stages}
    assert widths == dict(
        leaf0=(16, 1), leaf1=(16, 1), leaf2=(16, 1), leaf3=(16, 1),
        fused1_0=(32, 2), fused1_1=(32, 2), root=(64, 4),
    )  # fmt: skip
    assert stages[-1].config == target
    steps = {s.name: (s.start_step, s.end_step) for s in stages}
    assert steps["leaf2"] == (0, 100) and steps["fused1_1"] == (100, 200)
    assert steps["root"] == (200, 450)
    seeds = {s.name: s.seed for s in stages}
    assert [seeds[f"leaf{i}"] for i in range(4)] == [5, 6, 7, 8]
    assert (seeds["fused1_1"], seeds["root"]) == (7, 5)  # each keeps its first input's
    by_name = {s.name: s for s in stages}
    assert by_name["fused1_1"].inputs == ("leaf2", "leaf3")
    assert by_name["root"].inputs == ("fused1_0", "fused1_1")
    for stage in stages:  # inputs before their users
        assert all(names.index(i) < names.index(stage.name) for i in stage.inputs)
    (tmp_path / "fused1_1.keras").touch()  # a Fuse entry checks that its partner exists
    (fuse,) = by_name["root"].growths(lambda name: str(tmp_path / f"{name}.keras"))
    assert (fuse.at_step, fuse.partner) == (200, str(tmp_path / "fused1_1.keras"))
    assert by_name["leaf0"].growths(lambda name: name) == []
    # Depth 1 is Deep Fusion's 2 -> 1: half-width leaves fused into the target.
    depth_1 = recipes.fusion_tree_stages(target, 1, 100, 400, 0)
    assert [(s.name, s.config["hidden_dim"]) for s in depth_1] == [
        ("leaf0", 32),
        ("leaf1", 32),
        ("root", 64),
    ]
    assert depth_1[0].config == recipes.start_config("deep_fusion", target)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tree_depth=0), r"tree_depth must be an int >= 1, got 0"),
        (dict(growth_step=0), r"growth_step must be an int >= 1, got 0"),
        (dict(steps=200), r"tree_depth \* growth_step = 200, which must be below steps \(200\)"),
        (dict(tree_depth=3), r"fusion_tree divides num_heads by 8, which must be a multiple of 8"),
    ],
)
def test_a_tree_that_cannot_be_built_is_refused(kwargs, message):
    target = recipes.target_config("tiny", 100)
    arguments = {**dict(tree_depth=2, growth_step=100, steps=450, seed=0), **kwargs}
    with pytest.raises(ValueError, match=message):
        recipes.fusion_tree_stages(target, **arguments)


def test_target_config_takes_overrides_and_ignores_none():
    target = recipes.target_config("small", 300, hidden_dim=256, num_layers=None)
    assert (target["hidden_dim"], target["num_layers"], target["vocabulary_size"]) == (256, 6, 300)


def test_growth_entries_are_the_recipes_operator_at_the_growth_step():
    target = recipes.target_config("tiny", 100)

    def parsed(recipe):
        entries = recipes.growth_entries(recipe, target, 10)
        # The entries are what their schedule text parses back to.
        assert growth.parse_schedule(",".join(e.describe() for e in entries)) == entries
        return entries

    # A fusion tree's growths (deep_fusion's too) are its nodes' (`Stage.growths`).
    assert parsed("scratch") == parsed("deep_fusion") == parsed("fusion_tree") == []
    (self_fuse,) = parsed("self_fusion")
    assert (type(self_fuse), self_fuse.at_step) == (growth.SelfFuse, 10)
    start = recipes.start_config("self_fusion", target)
    grown = self_fuse.grown_config(dict(start, norm_groups=[start["hidden_dim"]]))
    assert {k: grown[k] for k in WIDTH} == {k: target[k] for k in WIDTH}
    (deepen,) = parsed("deepen")
    assert (type(deepen), deepen.at_step) == (growth.Deepen, 10)
    # The new layers take the start model (half the depth) back to the target's depth.
    assert (
        deepen.grown_config(recipes.start_config("deepen", target))["num_layers"]
        == target["num_layers"]
    )
    assert deepen.mode == "identity"
    # stack is deepen whose new layers copy the trained ones.
    (stack,) = parsed("stack")
    assert stack == growth.Deepen(at_step=10, num_new_layers=deepen.num_new_layers, mode="stack")


def test_the_growth_modes_are_recipe_names():
    # GrowthCallback()'s default modes are the recipes that need no partner.
    assert set(growth.DEFAULT_MODES) <= set(recipes.RECIPES)
    assert growth.DEFAULT_GROWTH_MODE in growth.DEFAULT_MODES


def numpy_token_losses(logits, labels):
    """Per-token cross-entropy -log softmax(logits)[label], in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


def tiny_compiled_model():
    config = recipes.target_config(
        "tiny",
        VOCABULARY_SIZE,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        key_value_dim=4,
    )
    return recipes.compile_model(recipes.build_model(config, seed=0), "adam")


def test_compiled_loss_without_padding_is_the_mean_token_cross_entropy():
    model = tiny_compiled_model()
    x = {k: v for k, v in random_inputs(seed=1).items()}
    x["decoder_padding_mask"] = np.ones_like(x["decoder_padding_mask"])
    y = random_labels(seed=2)
    weight = np.ones(y.shape, "float32")
    result = model.evaluate(
        x, y, sample_weight=weight, batch_size=len(y), verbose=0, return_dict=True
    )
    losses = numpy_token_losses(model.lm(x, training=False), y)
    np.testing.assert_allclose(result["loss"], losses.mean(), rtol=1e-5)


def test_compiled_loss_is_the_token_weighted_cross_entropy():
    """Found by this file: Keras' default reduction divided by every token,
    padding included, where the held-out loss divides by the target tokens."""
    model = tiny_compiled_model()
    x = random_inputs(seed=1)  # padding in the decoder
    y = random_labels(seed=2)
    weight = x["decoder_padding_mask"].astype("float32")
    assert weight.sum() < weight.size
    result = model.evaluate(
        x, y, sample_weight=weight, batch_size=len(y), verbose=0, return_dict=True
    )
    losses = numpy_token_losses(model.lm(x, training=False), y)
    np.testing.assert_allclose(result["loss"], (losses * weight).sum() / weight.sum(), rtol=1e-5)
