"""The arithmetic of benchmarks/growth_vs_scratch.py: budgets, crossings, summaries.

The training itself runs through GrowthCallback and MetricsRecorder, which
their own tests cover; here the numbers the report is built from are checked
against hand-computed values.
"""

import os
import subprocess
import sys

import pytest

from benchmark_test_utils import BENCHMARKS, load_benchmark
from keras_fusion import flops, recipes

SCRIPT = os.path.join(BENCHMARKS, "growth_vs_scratch.py")
bench = load_benchmark("growth_vs_scratch")
ROWS = [
    {"flops": 0.0, "eval_loss": 10.0},
    {"flops": 100.0, "eval_loss": 6.0},
    {"flops": 200.0, "eval_loss": 4.0},
]


def test_interpolate_between_and_beyond_evaluations():
    assert bench.interpolate(ROWS, 150.0) == pytest.approx(5.0)
    assert bench.interpolate(ROWS, 50.0) == pytest.approx(8.0)
    assert bench.interpolate(ROWS, 250.0) == 4.0


def test_flops_to_reach_is_the_first_crossing_within_the_budget():
    assert bench.flops_to_reach(ROWS, 5.0, budget=200.0) == pytest.approx(150.0)
    assert bench.flops_to_reach(ROWS, 6.0, budget=200.0) == pytest.approx(100.0)
    assert bench.flops_to_reach(ROWS, 3.0, budget=200.0) is None
    assert bench.flops_to_reach(ROWS, 5.0, budget=120.0) is None  # reached only past the budget
    bumpy = [
        {"flops": 0.0, "eval_loss": 9.0},
        {"flops": 10.0, "eval_loss": 4.0},
        {"flops": 20.0, "eval_loss": 7.0},
        {"flops": 30.0, "eval_loss": 3.0},
    ]
    assert bench.flops_to_reach(bumpy, 5.0, budget=30.0) == pytest.approx(8.0)  # first, not last


def test_summary_needs_every_seed_to_reach_for_a_mean():
    def record(seed, rows):
        return {
            "seed": seed,
            "learning_rate": 1e-3,
            "rows": rows,
            "start_parameters": 10,
            "final_parameters": 20,
            "loss_at_budget": rows[-1]["eval_loss"],
        }

    worse = [dict(r, eval_loss=r["eval_loss"] + 2) for r in ROWS]
    both = bench.summarise([record(0, ROWS), record(1, ROWS)], "arm", 200.0, 5.0)
    assert both["fraction_to_reach_mean"] == pytest.approx(0.75) and both["reached"] == "2/2"
    one = bench.summarise([record(0, ROWS), record(1, worse)], "arm", 200.0, 5.0)
    assert one["fraction_to_reach_mean"] is None and one["reached"] == "1/2"
    assert one["loss_mean"] == pytest.approx(5.0) and (one["loss_min"], one["loss_max"]) == (
        4.0,
        6.0,
    )


@pytest.mark.parametrize("arm", bench.ARMS)
def test_every_arm_spends_the_common_budget(arm):
    setup = bench.Setup(
        target=recipes.target_config("tiny", 1000, num_layers=4),
        steps=400,
        eval_every=20,
        batch_size=16,
        input_length=64,
        target_length=16,
        growth_fraction=0.25,
        rewarmup_steps=20,
        eval_batches=8,
    )
    start, growth_step, total = bench.growth_plan(arm, setup)
    cost = lambda config: flops.training_flops(config, 16, 64, 16)  # noqa: E731
    models = 2 if arm == "deep_fusion" else 1
    spent = growth_step * models * cost(start) + (total - growth_step) * cost(setup.target)
    assert total % setup.eval_every == 0
    assert setup.budget <= spent < setup.budget + setup.eval_every * cost(setup.target)
    if arm == "scratch":
        assert (growth_step, total) == (0, 400)
    else:
        assert growth_step * models * cost(start) == pytest.approx(0.25 * setup.budget, rel=0.01)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--arms=scratch,grow"], "unknown arm 'grow'"),
        (["--arms=self_fusion"], "must include scratch"),
        (["--growth_fraction=1.5"], "--growth_fraction"),
    ],
)
def test_bad_flags_exit_with_a_clear_error(flags, message):
    result = subprocess.run(
        [sys.executable, SCRIPT, *flags], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and message in result.stderr
