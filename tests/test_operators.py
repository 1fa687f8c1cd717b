"""keras_fusion.operators: one object per growth operator.

Each operator's validation names the argument; the output-norm rescale is
one rule for weights and moments; and the control operator added to show
what a new operator takes (`RandomWidenFFN`) keeps the existing units,
draws the new ones by its seed, maps optimizer slots by role, and is, as
documented, not function preserving where `WidenFFN` is.
"""

import keras
import numpy as np
import pytest

from keras_fusion import growth_maps, operators
from keras_fusion.callbacks import GrowthCallback
from keras_fusion.diagnostics import relative_error
from keras_fusion.growth import Deepen, Fuse, RandomWidenFFN, SelfFuse, WidenFFN, parse_schedule
from keras_fusion.growth_maps import FIRST_MOMENT, SECOND_MOMENT, WEIGHT
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, variable_trees
from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables
from t5_test_utils import (
    TOLERANCE,
    fit_steps,
    growing_lm,
    random_backbone,
    random_inputs,
    random_labels,
)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: operators.Fuse(norm="layer"), r"norm must be one of \('grouped', 'global'\)"),
        (lambda: operators.Fuse(weights=[0.5, float("inf")]), "weights must be finite numbers"),
        (lambda: operators.SelfFuse(noise=-0.1), "noise must be a finite number >= 0, got -0.1"),
        (lambda: operators.Deepen(num_new_layers=0), "num_new_layers must be an int >= 1, got 0"),
        (
            lambda: operators.Deepen(mode="interleave"),
            r"mode must be one of \('identity', 'stack'\)",
        ),
        (lambda: operators.WidenFFN(factor=1), "factor must be an int >= 2, got 1"),
        (lambda: operators.WidenFFN(noise=float("nan")), "noise must be a finite number >= 0"),
        (lambda: operators.RandomWidenFFN(factor=True), "factor must be an int >= 2, got True"),
    ],
)
def test_each_operator_validates_its_options(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_operators_check_how_many_models_they_read():
    config = backbone_config(random_backbone())
    with pytest.raises(ValueError, match="fuse needs at least two models, got 1"):
        operators.Fuse().grown_config([config])
    with pytest.raises(ValueError, match=r"self_fuse reads 1 model\(s\), got 2"):
        operators.SelfFuse().grown_config([config, config])
    with pytest.raises(ValueError, match="weights has 3 entries but 2 models were given"):
        operators.Fuse(weights=[0.2, 0.3, 0.5]).grown_config([config, config])


def test_output_rescale_is_one_rule_for_weights_and_moments():
    # Two fused models of widths 2 and 6, weights 0.25 and 0.75, tied
    # embeddings: the norm's blocks scale by w_i * sqrt(D / d_i) =
    # 0.25 * 2 = 0.5 and 0.75 * sqrt(8 / 6) (growth_maps.output_scale).
    s = np.array([0.5] * 2 + [0.75 * np.sqrt(8 / 6)] * 6, np.float32)
    norm = np.arange(1.0, 9.0, dtype=np.float32)
    tree = {"decoder_norm": norm, "encoder_norm": norm}
    for role, expected in (
        (WEIGHT, norm * s),
        (FIRST_MOMENT, norm / s),  # the gradient of s * w is G / s
        (SECOND_MOMENT, norm / s**2),
    ):
        out = operators.rescale_output(tree, role, [2, 6], [0.25, 0.75], tied=True)
        np.testing.assert_allclose(out["decoder_norm"], expected, rtol=1e-6)
        np.testing.assert_array_equal(out["encoder_norm"], norm)  # only the final norm
    untied = operators.rescale_output(tree, WEIGHT, [2, 6], [0.25, 0.75], tied=False)
    np.testing.assert_allclose(untied["decoder_norm"], norm * ([0.25] * 2 + [0.75] * 6))


def ffn_of(tree):
    return tree["encoder_layers"][0]


def test_random_widening_keeps_the_existing_units_and_draws_new_ones_by_seed():
    backbone = random_backbone(cls=FusionT5Backbone, seed=3)
    config = backbone_config(backbone)
    tree = variable_trees.read(backbone_variables(backbone))
    op = operators.RandomWidenFFN(factor=3, seed=5)
    assert op.grown_config([config])["intermediate_dim"] == 3 * config["intermediate_dim"]
    grown = op.map([tree], [config])
    f = config["intermediate_dim"]
    old, new = ffn_of(tree), ffn_of(grown)
    assert new["ffn_input"].shape == (config["hidden_dim"], 3 * f)
    assert new["ffn_output"].shape == (3 * f, config["hidden_dim"])
    np.testing.assert_array_equal(new["ffn_input"][:, :f], old["ffn_input"])
    np.testing.assert_array_equal(new["ffn_output"][:f], old["ffn_output"])
    np.testing.assert_array_equal(new["self_attention"]["query"], old["self_attention"]["query"])
    # The new units are random: none zero, none a copy, and drawn with the
    # kernel's spread (2 * 16 * 32 = 1024 draws: the std within 10%).
    drawn = new["ffn_output"][f:]
    assert np.count_nonzero(drawn) == drawn.size
    assert abs(np.std(drawn) / np.std(old["ffn_output"]) - 1) < 0.1
    assert abs(np.mean(drawn)) < 0.2 * np.std(old["ffn_output"])
    again = op.map([tree], [config])
    np.testing.assert_array_equal(ffn_of(again)["ffn_output"], new["ffn_output"])
    other = operators.RandomWidenFFN(factor=3, seed=6).map([tree], [config])
    assert not np.array_equal(ffn_of(other)["ffn_output"], new["ffn_output"])


def test_random_widening_maps_moments_by_role():
    backbone = random_backbone(cls=FusionT5Backbone, seed=4)
    config = backbone_config(backbone)
    rng = np.random.default_rng(0)
    tree = growth_maps.map_leaves(
        lambda name, leaves: rng.uniform(0.1, 1.0, np.shape(leaves[0])).astype("float32"),
        [variable_trees.read(backbone_variables(backbone))],
    )
    op = operators.RandomWidenFFN(factor=2, seed=0)
    f = config["intermediate_dim"]
    first = ffn_of(op.map([tree], [config], role=FIRST_MOMENT))
    second = ffn_of(op.map([tree], [config], role=SECOND_MOMENT))
    old = ffn_of(tree)
    for name, new_part, old_part in (
        ("ffn_input", lambda x: x[:, f:], lambda x: x[:, :f]),
        ("ffn_output", lambda x: x[f:], lambda x: x[:f]),
    ):
        np.testing.assert_array_equal(old_part(first[name]), old[name])
        np.testing.assert_array_equal(old_part(second[name]), old[name])
        assert np.all(new_part(first[name]) == 0)
        np.testing.assert_allclose(new_part(second[name]), np.mean(old[name]), rtol=1e-6)


def test_random_widening_changes_the_function_where_widen_ffn_keeps_it():
    lm = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, seed=7))
    x = random_inputs(seed=8)
    reference = np.array(lm(x))
    exact = FusionT5Seq2SeqLM.from_parameters(*WidenFFN(at_step=1).grown_parameters(lm)[:2])
    control = FusionT5Seq2SeqLM.from_parameters(*RandomWidenFFN(at_step=1).grown_parameters(lm)[:2])
    assert relative_error(exact(x), reference) <= TOLERANCE
    assert relative_error(control(x), reference) > 100 * TOLERANCE


def test_random_widening_from_a_schedule_string_grows_inside_fit():
    (entry,) = parse_schedule("random_widen_ffn@2:factor=3:seed=1")
    assert entry == RandomWidenFFN(at_step=2, factor=3, seed=1)
    assert entry.describe() == "random_widen_ffn@2:factor=3:seed=1"
    with pytest.raises(ValueError, match="random_widen_ffn@2:factor=1:seed=0: factor must be"):
        RandomWidenFFN(at_step=2, factor=1)
    model = growing_lm()
    x, y = random_inputs(batch_size=4, seed=9), random_labels(batch_size=4, seed=10)
    f = model.backbone.intermediate_dim
    fit_steps(model, x, y, 4, callbacks=[GrowthCallback([entry], verbose=0)])
    assert model.growth_history == [entry.describe()]
    assert model.backbone.intermediate_dim == 3 * f
    assert int(model.optimizer.iterations.numpy()) == 4


def kernel_rms(lm):
    """The RMS of every kernel of the backbone (the leaves that operators
    place block-diagonally or duplicate), as one number."""
    tree = variable_trees.read(backbone_variables(lm.backbone))
    squares, count = 0.0, 0

    def add(name, leaves):
        nonlocal squares, count
        if name in growth_maps.KERNELS:
            squares += float(np.sum(np.square(leaves[0])))
            count += np.size(leaves[0])
        return leaves[0]

    growth_maps.map_leaves(add, [tree])
    return np.sqrt(squares / count)


@pytest.mark.parametrize(
    "entry, tolerance",
    [
        # Two random models of one config: their kernels' RMS agree to a
        # few percent, so the fused kernels' is theirs over ~sqrt(2).
        ("fuse", 0.05),
        ("self_fuse", 1e-6),  # no noise: every entry is exactly W/2
        ("deepen", 0.0),  # no measurement: the new layers copy the last one
    ],
)
def test_kernel_rms_scale_is_how_much_the_kernels_rms_falls(entry, tolerance):
    lm = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, seed=11))
    if entry == "fuse":
        partner = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, seed=12))
        made = Fuse(at_step=1, partner=partner)
        before = np.sqrt((kernel_rms(lm) ** 2 + kernel_rms(partner) ** 2) / 2)
    else:
        made = SelfFuse(at_step=1, noise=0.0) if entry == "self_fuse" else Deepen(at_step=1)
        before = kernel_rms(lm)
    if entry == "deepen":
        assert made.kernel_rms_scale == 1.0
        return
    grown = FusionT5Seq2SeqLM.from_parameters(*made.grown_parameters(lm)[:2])
    ratio = before / kernel_rms(grown)
    assert made.kernel_rms_scale == {"fuse": np.sqrt(2), "self_fuse": 2.0}[entry]
    assert abs(ratio / made.kernel_rms_scale - 1) <= tolerance, ratio


def test_auto_learning_rate_scale_under_adafactor_restores_the_kernels_steps():
    schedule = keras.optimizers.schedules.CosineDecay(3e-2, decay_steps=20)
    x, y = random_inputs(batch_size=4, seed=13), random_labels(batch_size=4, seed=14)
    for schedule_text, factor in (("self_fuse@2", 2.0), ("deepen@2", 1.0)):
        model = growing_lm(optimizer=keras.optimizers.Adafactor(learning_rate=schedule))
        fit_steps(model, x, y, 4, callbacks=[GrowthCallback(schedule_text, verbose=0)])
        assert int(model.optimizer.iterations.numpy()) == 4
        np.testing.assert_allclose(
            float(model.optimizer.learning_rate), factor * float(schedule(4)), rtol=1e-6
        )


def test_a_fuse_entry_names_its_bad_weight():
    partner = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, seed=15))
    for weight in (float("nan"), "0.5"):
        with pytest.raises(ValueError, match=f"weight must be a finite number, got {weight!r}"):
            Fuse(at_step=3, partner=partner, weight=weight)
