"""GroupedRMSNorm against keras-hub's T5LayerNorm."""

import keras
import numpy as np
import pytest
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm

from keras_fusion.layers import GroupedRMSNorm

X = np.random.default_rng(0).normal(size=(2, 5, 12)).astype("float32") * 3.0
SCALE = np.random.default_rng(1).uniform(0.5, 1.5, 12).astype("float32")


def reference(x, scale, eps=1e-6):
    norm = T5LayerNorm(eps)
    norm.build(x.shape)
    norm.weight.assign(scale)
    return np.asarray(norm(x))


@pytest.mark.parametrize("groups", [None, [12]])
def test_one_group_is_exactly_t5_layer_norm(groups):
    norm = GroupedRMSNorm(groups=groups)
    norm.build(X.shape)
    norm.weight.assign(SCALE)
    np.testing.assert_array_equal(np.asarray(norm(X)), reference(X, SCALE))


def test_each_group_is_normalised_on_its_own():
    norm = GroupedRMSNorm(groups=[4, 3, 5])
    norm.build(X.shape)
    norm.weight.assign(SCALE)
    out = np.asarray(norm(X))
    for lo, hi in [(0, 4), (4, 7), (7, 12)]:
        np.testing.assert_allclose(out[..., lo:hi], reference(X[..., lo:hi], SCALE[lo:hi]), rtol=1e-6)
    # and that differs from one norm over all features
    assert not np.allclose(out, reference(X, SCALE), rtol=1e-3)


def test_config_round_trip():
    norm = GroupedRMSNorm(epsilon=1e-5, groups=[4, 8])
    restored = GroupedRMSNorm.from_config(norm.get_config())
    assert restored.groups == [4, 8] and restored.epsilon == 1e-5
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(norm))
    assert isinstance(restored, GroupedRMSNorm) and restored.groups == [4, 8]


def test_bad_groups():
    with pytest.raises(ValueError, match="positive ints"):
        GroupedRMSNorm(groups=[4, 0])
    with pytest.raises(ValueError, match=r"groups \[4, 4\] add up to 8, but the input has 12"):
        GroupedRMSNorm(groups=[4, 4])(X)
