"""The T5 parameter-tree operators, on hand-made trees (no Keras model)."""

import numpy as np
import pytest

from keras_fusion import growth_maps

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def attention(d, heads, k=4, bias=False):
    tree = {
        "query": rand(d, heads * k),
        "key": rand(d, heads * k),
        "value": rand(d, heads * k),
        "output": rand(heads * k, d),
    }
    if bias:
        tree["relative_bias"] = rand(32, heads)
    return tree


def block(d, heads, f, decoder=False, bias=False):
    tree = {
        "self_attention": attention(d, heads, bias=bias),
        "self_attention_norm": rand(d),
        "ffn_input": rand(d, f),
        "ffn_gate": rand(d, f),
        "ffn_output": rand(f, d),
        "ffn_norm": rand(d),
    }
    if decoder:
        tree["cross_attention"] = attention(d, heads)
        tree["cross_attention_norm"] = rand(d)
    return tree


def backbone(d, heads, f, vocab=11, layers=2, tied=True):
    tree = {
        "token_embedding": rand(vocab, d),
        "encoder_layers": [block(d, heads, f, bias=i == 0) for i in range(layers)],
        "decoder_layers": [block(d, heads, f, True, bias=i == 0) for i in range(layers)],
        "encoder_norm": rand(d),
        "decoder_norm": rand(d),
    }
    if not tied:
        tree["reverse_embedding"] = rand(d, vocab)
    return tree


def test_fuse_parameters_places_each_leaf():
    a, b = backbone(8, 2, 12, tied=False), backbone(4, 1, 6, tied=False)
    fused = growth_maps.fuse_parameters([a, b])
    layer = fused["decoder_layers"][0]
    assert layer["self_attention"]["query"].shape == (12, 12)
    np.testing.assert_array_equal(
        layer["self_attention"]["query"][8:, 8:], b["decoder_layers"][0]["self_attention"]["query"]
    )
    assert not layer["self_attention"]["query"][:8, 8:].any()
    np.testing.assert_array_equal(
        layer["self_attention"]["relative_bias"][:, 2:],
        b["decoder_layers"][0]["self_attention"]["relative_bias"],
    )
    assert "relative_bias" not in fused["decoder_layers"][1]["self_attention"]
    assert fused["token_embedding"].shape == (11, 12)
    assert fused["reverse_embedding"].shape == (12, 11)
    np.testing.assert_array_equal(fused["encoder_norm"][8:], b["encoder_norm"])


def test_fuse_parameters_rejects_different_structures():
    # One structure check for every tree pairing (`zip_leaves`): it names
    # the place and what each tree has there.
    with pytest.raises(
        ValueError,
        match=r"do not match at encoder_layers: tree 0 has a list of 2, tree 1 has a "
        r"list of 3",
    ):
        growth_maps.fuse_parameters([backbone(4, 1, 4, layers=2), backbone(4, 1, 4, layers=3)])
    with pytest.raises(
        ValueError, match=r"do not match at the top level: tree 1 lacks \['reverse_embedding'\]"
    ):
        growth_maps.fuse_parameters([backbone(4, 1, 4, tied=False), backbone(4, 1, 4)])


@pytest.mark.parametrize("tied", [True, False])
def test_output_scale_turns_fused_logits_into_the_weighted_sum(tied):
    dims, weights, vocab = [8, 4, 12], [0.2, 0.5, 0.3], 9
    ys = [rand(5, d) for d in dims]
    tables = [rand(vocab, d) for d in dims]

    def logits(y, table, d):  # keras-hub T5Seq2SeqLM._logits
        return (y * d**-0.5) @ table.T if tied else y @ table.T

    expected = sum(w * logits(y, t, d) for w, y, t, d in zip(weights, ys, tables, dims))
    scale = growth_maps.output_scale(dims, weights, tied)
    fused = logits(np.concatenate(ys, 1) * scale, np.concatenate(tables, 1), sum(dims))
    np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-5)


def test_identity_block_zeroes_outputs_and_leaves_input_alone():
    b = block(8, 2, 12, decoder=True, bias=True)
    before = growth_maps.deep_copy(b)
    new = growth_maps.identity_block(b)
    for name in ("self_attention", "cross_attention"):
        assert not new[name]["output"].any()
        np.testing.assert_array_equal(new[name]["query"], b[name]["query"])
    assert not new["ffn_output"].any()
    assert "relative_bias" not in new["self_attention"]
    growth_maps.map_leaves(lambda n, l: np.testing.assert_array_equal(l[0], l[1]), [b, before])


@pytest.mark.parametrize("mode", ["identity", "stack"])
def test_deepen_parameters_appends_layers(mode):
    tree = backbone(8, 2, 12, layers=2)
    deep = growth_maps.deepen_parameters(tree, 3, mode)
    assert len(deep["encoder_layers"]) == 5 and len(deep["decoder_layers"]) == 5
    assert len(tree["encoder_layers"]) == 2
    new = deep["decoder_layers"][2]
    assert "relative_bias" not in new["self_attention"]
    if mode == "identity":
        assert not new["ffn_output"].any()
    else:  # copies of layers 0, 1, 0
        np.testing.assert_array_equal(new["ffn_output"], tree["decoder_layers"][0]["ffn_output"])
        np.testing.assert_array_equal(
            deep["decoder_layers"][4]["ffn_output"], tree["decoder_layers"][0]["ffn_output"]
        )


def test_deepen_parameters_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of .*'interleave'"):
        growth_maps.deepen_parameters(backbone(4, 1, 4), 1, "interleave")


def test_check_same_names_field_and_values():
    with pytest.raises(ValueError, match="vocabulary_size differs: 1000 vs 2000"):
        growth_maps.check_same(
            [{"vocabulary_size": 1000}, {"vocabulary_size": 2000}], ["vocabulary_size"]
        )


# Optimizer moments follow the gradient of the mapped weights.


def test_fuse_moments_zero_first_and_typical_second_off_the_diagonal():
    a, b = backbone(8, 2, 12), backbone(4, 1, 6)
    v_a, v_b = (growth_maps.map_leaves(lambda n, l: np.abs(l[0]), [t]) for t in (a, b))
    m = growth_maps.fuse_parameters([a, b], role=growth_maps.FIRST_MOMENT)
    v = growth_maps.fuse_parameters([v_a, v_b], role=growth_maps.SECOND_MOMENT)
    kernel_m, kernel_v = m["encoder_layers"][0]["ffn_input"], v["encoder_layers"][0]["ffn_input"]
    assert not kernel_m[:8, 12:].any()
    np.testing.assert_array_equal(kernel_v[:8, :12], v_a["encoder_layers"][0]["ffn_input"])
    sources = [v_a["encoder_layers"][0]["ffn_input"], v_b["encoder_layers"][0]["ffn_input"]]
    typical = np.mean(np.concatenate([s.ravel() for s in sources]))
    np.testing.assert_allclose(kernel_v[:8, 12:], typical, rtol=1e-6)
    assert typical > 0


def test_self_fuse_moments_halve_like_the_gradient():
    tree = backbone(8, 2, 12)
    m = growth_maps.self_fuse_parameters(tree, role=growth_maps.FIRST_MOMENT)
    v = growth_maps.self_fuse_parameters(tree, role=growth_maps.SECOND_MOMENT)
    q = tree["decoder_layers"][0]["cross_attention"]["query"]
    for block in (np.s_[:8, :8], np.s_[8:, 8:], np.s_[:8, 8:]):
        np.testing.assert_allclose(m["decoder_layers"][0]["cross_attention"]["query"][block], q / 2)
        np.testing.assert_allclose(v["decoder_layers"][0]["cross_attention"]["query"][block], q / 4)
    np.testing.assert_allclose(
        m["token_embedding"], np.concatenate([tree["token_embedding"]] * 2, 1) / 2
    )


def test_widen_and_deepen_moments():
    tree = backbone(8, 2, 12)
    m = growth_maps.widen_ffn_parameters(tree, 3, role=growth_maps.FIRST_MOMENT)
    v = growth_maps.widen_ffn_parameters(tree, 3, role=growth_maps.SECOND_MOMENT)
    layer = tree["encoder_layers"][1]
    np.testing.assert_allclose(
        m["encoder_layers"][1]["ffn_input"][:, 12:24], layer["ffn_input"] / 3, rtol=1e-6
    )
    np.testing.assert_allclose(
        v["encoder_layers"][1]["ffn_input"][:, 24:], layer["ffn_input"] / 9, rtol=1e-6
    )
    np.testing.assert_array_equal(m["encoder_layers"][1]["ffn_output"][12:24], layer["ffn_output"])
    deep_m = growth_maps.deepen_parameters(tree, 1, role=growth_maps.FIRST_MOMENT)
    deep_v = growth_maps.deepen_parameters(tree, 1, role=growth_maps.SECOND_MOMENT)
    assert not deep_m["decoder_layers"][2]["ffn_input"].any()
    np.testing.assert_array_equal(
        deep_v["decoder_layers"][2]["ffn_output"], tree["decoder_layers"][1]["ffn_output"]
    )
    with pytest.raises(ValueError, match="role must be one of"):
        growth_maps.fuse_parameters([tree, tree], role="gradient")
