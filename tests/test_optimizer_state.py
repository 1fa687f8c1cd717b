"""Optimizer-state maps against measured gradients (Staged Training's
`test_double_gradients` idea).

Growth maps Adam's moments with the map of their variable: a first moment
(m) as the gradient of the grown weights, a second moment (v) as its square.
Here that is checked where it is defined: the training loss's gradient of a
tiny random model, mapped with the library's slot map (`map_slots` with the
`map_tree` of a growth entry), must equal the gradient of the grown model on
the same batch, and the mapped squared gradient its square.

Why the maps hold (docs/growth.md, "Optimizer state across a growth"), for noise 0:
- `self_fuse`: the fused model's residual stream is `[x; x]` and every kernel
  `W` becomes the 2x2 tiling of `W/2`. Going backwards from the logits, the
  upstream gradient of each half is half the small model's (each half reaches
  the next layer through `W/2`), so a kernel block's gradient is
  `x^T (g/2) = G/2`, and every duplicated vector (norm scales, relative
  biases, embedding halves) also gets `G/2`: m rule `* 1/2`, v rule `* 1/4`.
- `widen_ffn(factor=2)`: `ffn_input`/`ffn_gate` columns are copied and
  `ffn_output` rows halved. A copied column reaches the output through
  `Wo/2`: gradient `G/2`; a halved row sees the full hidden activation and
  the full upstream gradient: `G`. Everything else is unchanged.
- Exception, self fusion's final decoder norm: `FusionT5Seq2SeqLM` also
  rescales it so that the logits are unchanged (`growth_maps.output_scale`):
  by `0.5 * sqrt(2)` with tied embeddings (the logits are multiplied by
  `hidden_dim ** -0.5`, and the hidden dim doubled), by `0.5` untied.
  Scaling a weight by `s` divides its gradient by `s` on top of the
  duplication's `1/2`, so its gradient is `G / sqrt(2)` (tied) or `G`
  (untied), not `G/2`. `test_self_fuse_decoder_norm_gradient` checks that
  from the math, `test_self_fuse_map_of_decoder_norm_moments` the library's
  map (`operators.rescale_output`; the map before it gave `G/2`
  before this test found it).

Tolerance (float32): every entry within `ATOL_SHARE` of the largest gradient
entry of the grown model, `G` (for squared gradients: of `G**2`). Measured on
these models: at most 1.4e-6 G for gradients, 6.7e-7 G**2 for their squares;
the same comparison in float64 gives 5e-16 (the maps are exact, the rest is
float32 round-off). The decoder-norm discrepancy is 0.07 G (tied) to 0.13 G
(untied), far outside it.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusion import growth, optimizer_state
from keras_fusion.growth_maps import FIRST_MOMENT, SECOND_MOMENT
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from keras_fusion.models.fusion_t5_backbone import backbone_variables
from t5_test_utils import random_backbone, random_inputs, random_labels

ATOL_SHARE = 1e-5
INPUTS = random_inputs(seed=3)
LABELS = random_labels(seed=4)

# The growth entries under test, noise 0, with the LM class method that
# builds the same grown model.
GROWTHS = {
    "self_fuse": (
        growth.SelfFuse(at_step=1, noise=0.0),
        lambda lm: FusionT5Seq2SeqLM.self_fuse(lm, noise=0.0),
    ),
    "widen_ffn": (
        growth.WidenFFN(at_step=1, factor=2, noise=0.0),
        lambda lm: FusionT5Seq2SeqLM.widen_ffn(lm, 2, noise=0.0),
    ),
}


def gradients(lm):
    """The training loss's gradient tree over the backbone's parameters.

    The loss `compile_model` trains with: sparse categorical cross-entropy
    from logits on the decoder targets, padding weighted out.
    """
    tree = backbone_variables(lm.backbone)
    leaves = keras.tree.flatten(tree)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = lm(INPUTS, training=True)
        loss = loss_fn(LABELS, logits, sample_weight=INPUTS["decoder_padding_mask"])
    grads = tape.gradient(loss, leaves)
    assert all(g is not None for g in grads)
    # The embedding's gradient comes as IndexedSlices: densify it.
    return keras.tree.pack_sequence_as(tree, [np.asarray(tf.convert_to_tensor(g)) for g in grads])


def leaves_by_path(tree, where=""):
    """`{path: array}` of a parameter tree ("decoder_layers[1].ffn_input")."""
    if isinstance(tree, dict):
        return {
            p: a
            for k in tree
            for p, a in leaves_by_path(tree[k], f"{where}.{k}" if where else k).items()
        }
    if isinstance(tree, list):
        return {
            p: a for i, t in enumerate(tree) for p, a in leaves_by_path(t, f"{where}[{i}]").items()
        }
    return {where: tree}


def largest(tree):
    return max(float(np.max(np.abs(a))) for a in keras.tree.flatten(tree))


@pytest.fixture(scope="module", params=["tied", "untied"])
def measured(request):
    """Per growth: (small model, its gradients, grown gradients, mapped slots)."""
    small = FusionT5Seq2SeqLM(
        random_backbone(seed=0, cls=FusionT5Backbone, tie_embedding_weights=request.param == "tied")
    )
    small_grads = gradients(small)
    slots = {
        "momentum": (FIRST_MOMENT, small_grads),
        "velocity": (SECOND_MOMENT, keras.tree.map_structure(np.square, small_grads)),
    }
    result = {"tied": request.param == "tied"}
    for name, (entry, grow) in GROWTHS.items():
        _, _, map_tree = entry.grown_parameters(small)
        result[name] = (
            small_grads,
            gradients(grow(small)),
            optimizer_state.map_slots(slots, map_tree),
        )
    return result


def assert_mapped_equal_measured(mapped, grown, skip=()):
    m = leaves_by_path(mapped["momentum"][1])
    v = leaves_by_path(mapped["velocity"][1])
    g = leaves_by_path(grown)
    assert set(m) == set(g) == set(v)
    scale = largest(grown)
    compared = 0
    for path in sorted(set(g) - set(skip)):
        np.testing.assert_allclose(
            m[path], g[path], rtol=0, atol=ATOL_SHARE * scale, err_msg=f"m of {path}"
        )
        np.testing.assert_allclose(
            v[path], g[path] ** 2, rtol=0, atol=ATOL_SHARE * scale**2, err_msg=f"v of {path}"
        )
        compared += 1
    # Two gated layers per stack: 9 leaves per encoder block (q, k, v, o,
    # norm, ffn input, gate, output, norm), 14 per decoder block (cross
    # attention and its norm added), one relative bias per stack; then the
    # embedding and the two final norms, and the untied output projection.
    assert compared == 2 * 9 + 2 * 14 + 2 + 3 + ("reverse_embedding" in g) - len(skip)


@pytest.mark.slow
def test_widen_ffn_gradients_are_the_mapped_gradients(measured):
    small_grads, grown, mapped = measured["widen_ffn"]
    assert_mapped_equal_measured(mapped, grown)
    # The check has teeth: a copied `ffn_input` column gets half the gradient
    # and a split `ffn_output` row all of it, so neither is a plain copy.
    block = grown["encoder_layers"][0]
    small_block = small_grads["encoder_layers"][0]
    f = small_block["ffn_input"].shape[1]
    np.testing.assert_allclose(
        block["ffn_input"][:, f:],
        small_block["ffn_input"] / 2,
        rtol=0,
        atol=ATOL_SHARE * largest(grown),
    )
    np.testing.assert_allclose(
        block["ffn_output"][f:], small_block["ffn_output"], rtol=0, atol=ATOL_SHARE * largest(grown)
    )
    assert np.max(np.abs(small_block["ffn_input"])) > 100 * ATOL_SHARE * largest(grown)


@pytest.mark.slow
def test_self_fuse_gradients_are_the_mapped_gradients(measured):
    """Every leaf, the rescaled final decoder norm included."""
    _, grown, mapped = measured["self_fuse"]
    assert_mapped_equal_measured(mapped, grown)


@pytest.mark.slow
def test_self_fuse_decoder_norm_gradient(measured):
    """From the math, not the library: G / sqrt(2) tied, G untied, per half."""
    small_grads, grown, _ = measured["self_fuse"]
    factor = 2**-0.5 if measured["tied"] else 1.0
    expected = np.concatenate([small_grads["decoder_norm"] * factor] * 2)
    np.testing.assert_allclose(
        grown["decoder_norm"], expected, rtol=0, atol=ATOL_SHARE * largest(grown)
    )


@pytest.mark.slow
def test_self_fuse_map_of_decoder_norm_moments(measured):
    """Found by this file: the map once ignored the output norm's rescaling
    (m/2 where the gradient is G/sqrt(2) tied, G untied)."""
    _, grown, mapped = measured["self_fuse"]
    scale = ATOL_SHARE * largest(grown)
    np.testing.assert_allclose(
        mapped["momentum"][1]["decoder_norm"], grown["decoder_norm"], rtol=0, atol=scale
    )


@pytest.mark.slow
def test_read_slots_of_one_adam_step_map_to_the_grown_gradients(measured):
    """`read_slots` after one Adam step from zero holds m = (1 - b1) g and
    v = (1 - b2) g^2; mapped, they are the grown model's (1 - b1) G and
    (1 - b2) G^2. Widening, where every leaf's map is right."""
    small = FusionT5Seq2SeqLM(
        random_backbone(seed=0, cls=FusionT5Backbone, tie_embedding_weights=measured["tied"])
    )
    _, grown, _ = measured["widen_ffn"]
    entry, _ = GROWTHS["widen_ffn"]
    _, _, map_tree = entry.grown_parameters(small)  # before the step changes the weights
    tree = backbone_variables(small.backbone)
    grads = gradients(small)
    optimizer = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.8, beta_2=0.9)
    optimizer.build(keras.tree.flatten(tree))
    optimizer.apply_gradients(zip(keras.tree.flatten(grads), keras.tree.flatten(tree)))
    mapped = optimizer_state.map_slots(optimizer_state.read_slots(optimizer, tree), map_tree)
    assert set(mapped) == {"momentum", "velocity"}
    scale = largest(grown)
    for path, g in leaves_by_path(grown).items():
        np.testing.assert_allclose(
            leaves_by_path(mapped["momentum"][1])[path],
            0.2 * g,
            rtol=0,
            atol=0.2 * ATOL_SHARE * scale,
            err_msg=path,
        )
        np.testing.assert_allclose(
            leaves_by_path(mapped["velocity"][1])[path],
            0.1 * g**2,
            rtol=0,
            atol=0.1 * ATOL_SHARE * scale**2,
            err_msg=path,
        )
