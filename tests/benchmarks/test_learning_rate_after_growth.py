"""benchmarks/learning_rate_after_growth.py: what it reads off a curve, the
rule it picks, and its flags (the runs themselves are tools.train's)."""

import pytest

from benchmark_test_utils import load_benchmark

bench = load_benchmark("learning_rate_after_growth")


def rows(losses, every=100):
    return [{"step": every * i, "eval_loss": loss} for i, loss in enumerate(losses)]


def test_curve_summary_reads_the_jump_after_the_growth():
    # Growth at step 400: the loss there is 4.3, it jumps to 4.45 within
    # the 200 steps after, and ends at 4.0.
    curve = rows([6.0, 5.0, 4.6, 4.4, 4.3, 4.45, 4.35, 4.2, 4.1, 4.05, 4.0])
    summary = bench.summarise_curve(curve, growth_step=400, window=200)
    assert summary == dict(at_growth=4.3, highest_after=4.45, final=4.0)


def test_table_marks_the_lowest_final_loss_per_recipe():
    def run(recipe, scale, final):
        return dict(
            recipe=recipe, learning_rate_scale=scale, at_growth=4.3, highest_after=4.4, final=final
        )

    runs = [
        run("deep_fusion", "1", 4.0),
        run("deep_fusion", "0.5", 3.9),
        run("self_fusion", "1", 4.1),
        run("self_fusion", "0.5", 4.2),
    ]
    text, best = bench.table(runs)
    assert best == {"deep_fusion": "0.5", "self_fusion": "1"}
    assert "| deep_fusion | 0.5 | 4.3000 | 4.4000 | **3.9000** |" in text


def test_growth_step_outside_the_run_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--steps=100", "--growth_step=100"])
    assert exit_info.value.code == 2
    assert "--growth_step=100 must be in (0, --steps=100)" in capsys.readouterr().err
