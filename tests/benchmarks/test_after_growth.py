"""benchmarks/after_growth.py: what it reads off a curve, how it averages
seeds and picks a setting, how parts merge, and its flags (the runs
themselves are tools.train's)."""

import json
import os

import pytest

from benchmark_test_utils import load_benchmark
from keras_fusion import growth

bench = load_benchmark("after_growth")


def rows(losses, every=100):
    return [{"step": every * i, "eval_loss": loss} for i, loss in enumerate(losses)]


def test_curve_summary_reads_the_jump_after_the_growth():
    # Growth at step 400: the loss there is 4.3, it jumps to 4.45 within
    # the 200 steps after, and ends at 4.0.
    curve = rows([6.0, 5.0, 4.6, 4.4, 4.3, 4.45, 4.35, 4.2, 4.1, 4.05, 4.0])
    summary = bench.summarise_curve(curve, growth_step=400, window=200)
    assert summary == dict(at_growth=4.3, highest_after=4.45, final=4.0)


def test_curve_summary_of_a_node_that_starts_at_the_growth():
    # Deep Fusion's root: its first row is the fused model at step 600.
    curve = [{"step": 600 + 100 * i, "eval_loss": x} for i, x in enumerate([3.9, 3.95, 3.8])]
    assert bench.summarise_curve(curve, 600, 200) == dict(
        at_growth=3.9, highest_after=3.95, final=3.8
    )


def run(recipe, setting, growth_step, seed, final):
    return dict(
        recipe=recipe,
        setting=setting,
        growth_step=growth_step,
        seed=seed,
        at_growth=4.3,
        highest_after=4.4,
        final=final,
        config={"optimizer": "adafactor"},
    )


RUNS = [
    run("deep_fusion", "carry", 600, 0, 4.0),
    run("deep_fusion", "carry", 600, 1, 4.2),  # mean 4.1, sample std 0.1414
    run("deep_fusion", "reset", 600, 0, 3.9),
    run("deep_fusion", "reset", 600, 1, 4.25),  # mean 4.075: the lower mean
    run("self_fusion", "carry", 600, 0, 4.1),
    run("self_fusion", "rewarm", 600, 0, 4.3),
]


def test_table_averages_seeds_and_marks_the_lowest_final_mean_per_recipe():
    text, best = bench.table(RUNS)
    assert best == {"deep_fusion": ["reset", 600], "self_fusion": ["carry", 600]}
    assert (
        "| deep_fusion | carry | 600 | 2 | 4.3000 ± 0.0000 | 4.4000 ± 0.0000 | 4.1000 ± 0.1414 |"
        in text
    )
    assert (
        "| deep_fusion | reset | 600 | 2 | 4.3000 ± 0.0000 | 4.4000 ± 0.0000 | "
        "**4.0750 ± 0.2475** |" in text
    )
    assert (
        "| self_fusion | carry | 600 | 1 | 4.3000 ± 0.0000 | 4.4000 ± 0.0000 | "
        "**4.1000 ± 0.0000** |" in text
    )


def part(name, runs, setup=None):
    return dict(
        name=name,
        date="2026-12-04",
        machine={"cpu_model": "CPU", "cpu_count": 2},
        versions={},
        setup=setup or {"steps": 2400},
        threads=1,
        seconds=60.0,
        runs=runs,
    )


def test_parts_merge_into_one_table(tmp_path):
    output = str(tmp_path / "after")
    os.makedirs(output + ".parts")
    for name, runs in (("a", RUNS[:2]), ("b", RUNS[2:])):
        with open(os.path.join(output + ".parts", name + ".json"), "w") as f:
            json.dump(part(name, runs), f)
    markdown = bench.merge(output)
    merged = json.load(open(output + ".json"))
    assert len(merged["runs"]) == 6
    assert merged["best"]["deep_fusion"] == ["reset", 600]
    assert "Parts: a (1.0 min), b (1.0 min)" in markdown


def test_parts_of_different_setups_are_not_merged(tmp_path):
    output = str(tmp_path / "after")
    os.makedirs(output + ".parts")
    for name, steps in (("a", 2400), ("b", 1200)):
        with open(os.path.join(output + ".parts", name + ".json"), "w") as f:
            json.dump(part(name, RUNS[:1], {"steps": steps}), f)
    with pytest.raises(SystemExit, match="different setups"):
        bench.merge(output)
    assert not os.path.exists(output + ".json")


def test_rewarm_takes_its_steps_from_the_flag():
    class Args:
        rewarmup_steps = 40

    assert bench.overrides("rewarm", Args) == {"rewarmup_steps": 40, "learning_rate_scale": "1"}
    assert bench.overrides("reset", Args) == {
        "growth_optimizer_state": "reset",
        "learning_rate_scale": "1",
    }
    # Every setting pins its rate scale: "auto" is whatever the library's
    # default is now, not what was measured.
    for setting in bench.SETTINGS:
        assert bench.overrides(setting, Args, 600)["learning_rate_scale"] not in (None, "auto")


def test_noise_settings_give_self_fusion_its_noise_at_the_growth_step():
    changes = bench.overrides("noise_0.01", None, growth_step=600)
    assert changes == {"learning_rate_scale": "2", "growth_schedule": "self_fuse@600:noise=0.01"}
    # The schedule text is what tools.train parses: the entry has the noise.
    (entry,) = growth.parse_schedule(changes["growth_schedule"])
    assert entry == growth.SelfFuse(at_step=600, noise=0.01)
    (entry,) = growth.parse_schedule(bench.overrides("noise_0", None, 300)["growth_schedule"])
    assert entry == growth.SelfFuse(at_step=300, noise=0.0)
    # In a grid, Deep Fusion runs every setting but the noise ones.
    grid = bench.make_grid(["deep_fusion", "self_fusion"], ["carry", "noise_0"], [600], ["0"])
    assert [(r["recipe"], r["setting"]) for r in grid] == [
        ("deep_fusion", "carry"),
        ("self_fusion", "carry"),
        ("self_fusion", "noise_0"),
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps=100", "--growth_steps=100"], "--growth_step=100 must be in (0, --steps=100)"),
        (["--growth_steps=610"], "610 is not a multiple of --steps_per_execution=25"),
        (["--settings=carry,halve"], "--settings: unknown 'halve'; allowed: carry, reset"),
        (
            ["--recipes=deep_fusion", "--settings=noise_0"],
            "'noise_0' sets self fusion's noise; --recipes='deep_fusion' has no recipe that",
        ),
    ],
)
def test_bad_flags_are_refused(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(flags + [f"--output={tmp_path}/x", f"--workdir={tmp_path}/w"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)
