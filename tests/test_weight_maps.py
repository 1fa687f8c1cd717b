"""The array maps, checked against what they must compute on inputs."""

import numpy as np
import pytest

from keras_fusion import weight_maps

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def test_block_diagonal_computes_each_block_on_its_own_input():
    w1, w2, w3 = rand(3, 5), rand(4, 2), rand(2, 6)
    x1, x2, x3 = rand(7, 3), rand(7, 4), rand(7, 2)
    fused = weight_maps.block_diagonal([w1, w2, w3])
    assert fused.shape == (9, 13)
    out = np.concatenate([x1, x2, x3], axis=1) @ fused
    np.testing.assert_allclose(out, np.concatenate([x1 @ w1, x2 @ w2, x3 @ w3], 1), rtol=1e-6)


def test_block_diagonal_rejects_non_matrices():
    with pytest.raises(ValueError, match="2D"):
        weight_maps.block_diagonal([rand(3), rand(2, 2)])


def test_concat_helpers():
    a, b = rand(4, 3), rand(4, 2)
    np.testing.assert_array_equal(weight_maps.concat_features([a, b])[:, 3:], b)
    r1, r2 = rand(3, 5), rand(2, 5)
    np.testing.assert_array_equal(weight_maps.concat_rows([r1, r2])[3:], r2)


@pytest.mark.parametrize("copies", [2, 3])
def test_cancelling_noise_sums_to_zero_and_is_not_zero(copies):
    parts = weight_maps.cancelling_noise((5, 4), copies, 0.1, np.random.default_rng(1))
    np.testing.assert_allclose(sum(parts), 0.0, atol=1e-7)
    assert all(np.std(p) > 0.01 for p in parts)


def test_duplicate_kernel_is_exact_on_duplicated_input_and_breaks_symmetry():
    w, x = rand(6, 4), rand(5, 6)
    dup = weight_maps.duplicate_kernel(w, noise=0.1, rng=np.random.default_rng(0))
    assert dup.shape == (12, 8)
    out = np.concatenate([x, x], axis=1) @ dup
    np.testing.assert_allclose(out, np.concatenate([x @ w, x @ w], axis=1), rtol=1e-5, atol=1e-6)
    # The blocks differ, so the halves see different gradients...
    assert not np.allclose(dup[:6, :4], dup[:6, 4:])
    assert not np.allclose(dup[:6, :4], dup[6:, :4])
    # ...but on an input whose halves differ, the output is no longer [xW; xW].
    y = rand(5, 6)
    out = np.concatenate([x, y], axis=1) @ dup
    assert not np.allclose(out[:, :4], out[:, 4:])


def test_duplicate_kernel_without_noise_is_symmetric():
    w = rand(3, 2)
    dup = weight_maps.duplicate_kernel(w)
    for block in (dup[:3, :2], dup[:3, 2:], dup[3:, :2], dup[3:, 2:]):
        np.testing.assert_array_equal(block, w / 2)


def test_inputs_are_not_modified():
    w = rand(4, 4)
    before = w.copy()
    weight_maps.duplicate_kernel(w, noise=0.5, rng=np.random.default_rng(0))
    weight_maps.split_rows(w, 3, noise=0.5, rng=np.random.default_rng(0))
    weight_maps.block_diagonal([w, w])
    weight_maps.zeros_like(w)
    np.testing.assert_array_equal(w, before)


@pytest.mark.parametrize("factor", [2, 3])
def test_tile_columns_then_split_rows_is_exact(factor):
    w_in, w_out, x = rand(6, 5), rand(5, 6), rand(4, 6)
    hidden = np.maximum(x @ weight_maps.tile_columns(w_in, factor), 0)
    split = weight_maps.split_rows(w_out, factor, noise=0.1, rng=np.random.default_rng(2))
    assert split.shape == (5 * factor, 6)
    np.testing.assert_allclose(
        hidden @ split, np.maximum(x @ w_in, 0) @ w_out, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(split[:5], split[5:10])


def test_zeros_like_and_duplicates():
    w = rand(3, 2)
    assert not weight_maps.zeros_like(w).any()
    np.testing.assert_array_equal(weight_maps.duplicate_features(w), np.concatenate([w, w], 1))
    np.testing.assert_array_equal(weight_maps.duplicate_rows(w), np.concatenate([w, w], 0))
