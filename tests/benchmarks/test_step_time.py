"""benchmarks/step_time.py: the models it times and its flags (no timing here)."""

import pytest

from benchmark_test_utils import load_benchmark
from keras_fusion.growth import parameter_count

bench = load_benchmark("step_time")


def test_models_are_the_v2_benchmarks_targets_and_half_width_model():
    # The hidden-64 target is 458,880 parameters with the 1,000-id tokenizer
    # (growth_vs_scratch_v2's docstring), its half-width model 131,136.
    assert parameter_count(bench.config("d64_target")) == 458_880
    half = bench.config("d64_half")
    assert (half["hidden_dim"], half["num_heads"], half["intermediate_dim"]) == (32, 2, 64)
    assert parameter_count(half) == 131_136
    assert bench.config("d16_target")["hidden_dim"] == 16


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--models=d128_target", "unknown model 'd128_target'"),
        ("--settings=fast", "unknown 'fast'"),
        ("--steps=30", "multiple of 25"),
    ],
)
def test_bad_flags_exit_with_a_clear_error(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([flag])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
