"""keras_fusion.distribution: strategies by name, and a TPU that is not there fails fast."""

import pytest
import tensorflow as tf

from keras_fusion import distribution


def test_an_unknown_strategy_is_refused_naming_the_allowed_ones():
    with pytest.raises(
        ValueError,
        match="strategy must be one of default, mirrored, multi_worker, tpu; got 'bogus'",
    ):
        distribution.make_strategy("bogus")


def test_only_a_strategy_other_than_the_default_is_distributed():
    assert not distribution.is_distributed(distribution.make_strategy("default"))
    assert not distribution.is_distributed(tf.distribute.get_strategy())
    assert distribution.is_distributed(tf.distribute.MirroredStrategy(["/cpu:0"]))


@pytest.mark.parametrize("tpu", [None, ""])
def test_the_tpu_strategy_needs_a_tpu(tpu):
    with pytest.raises(ValueError, match="--strategy=tpu needs --tpu"):
        distribution.check_tpu_reachable(tpu)


def test_tpu_reachability_errors_name_the_address():
    with pytest.raises(
        ValueError, match="no TPU reachable: --tpu=grpc://127.0.0.1:1 does not answer"
    ):
        distribution.check_tpu_reachable("grpc://127.0.0.1:1", timeout=1)
    with pytest.raises(ValueError, match="--tpu=local: this machine has no TPU device"):
        distribution.check_tpu_reachable("local")
