"""benchmarks/growth_overhead.py: its analysis of recorded steps, on a timeline built by hand.

No training here: `record` clocks real fits (the benchmark's own run); these
tests give `analyse` step records whose every figure is known, so each
expected value below is worked out from the timeline, not read off the code.
"""

import pytest

from benchmark_test_utils import load_benchmark

bench = load_benchmark("growth_overhead")

GROW_AT, POST, SKIP, CHUNK = 20, 15, 1, 5
TINY, GROWN, DIRECT, RETRACE = 0.1, 0.2, 0.19, 1.0  # step seconds
GAP, GROWTH_GAP = 0.01, 2.0  # seconds between steps; the one holding the growth
SLOWED = (3, 4, 5)  # tiny steps (0-based) that overlap the preparation's thread
SLOWDOWN = 0.05  # what the thread adds to each of them


def timeline(durations, gaps, start=100.0, function=1, traces=1):
    """Step records as `instruments.step_timer` writes them."""
    steps, t = [], start
    for i, d in enumerate(durations):
        t += gaps[i] if i else 0.0
        steps.append(
            dict(
                begin=t,
                end=t + d,
                cpu=2 * d,
                gc=0.001,
                trace=0.5 if i == 0 else 0.0,
                function=function,
                traces=traces,
                inner_traces=traces,
            )
        )
        t += d
    return steps


def growth_fit():
    durations = [TINY + (SLOWDOWN if i in SLOWED else 0.0) for i in range(GROW_AT)]
    durations += [RETRACE] + [GROWN] * (POST - 1)
    gaps = [GAP] * (GROW_AT + POST)
    gaps[GROW_AT] = GROWTH_GAP  # before step GROW_AT + 1 (index GROW_AT)
    steps = timeline(durations, gaps)
    for s in steps[GROW_AT:]:
        s["function"], s["traces"], s["inner_traces"] = 2, 1, 1
    return steps


def recorded(rounds=4, prepared=True):
    fit = growth_fit()
    window = (fit[SLOWED[0]]["begin"] - 0.001, fit[SLOWED[-1]]["end"] + 0.001)
    chunks = {
        "grown": [timeline([GROWN] * CHUNK, [GAP] * CHUNK, function=2) for _ in range(rounds)],
        "direct": [timeline([DIRECT] * CHUNK, [GAP] * CHUNK, function=3) for _ in range(rounds)],
    }
    return dict(
        operator="self_fuse",
        prepare_ahead=prepared,
        settings=dict(grow_at=GROW_AT, post_steps=POST, chunk=CHUNK, rounds=rounds, skip=SKIP),
        rounds=rounds,
        event=dict(
            entry="self_fuse@20",
            step=GROW_AT,
            parameters_before=100,
            parameters_after=400,
            seconds=1.9,
            prepared_ahead=prepared,
            waited_seconds=0.0,
        ),
        breakdown_seconds={"operator": 0.5},
        preparation=dict(window=window, phase_seconds={"build": 1.0}) if prepared else None,
        growth_fit=fit,
        direct_warmup=timeline([3.0, DIRECT, DIRECT], [GAP] * 3, function=3),
        chunks=chunks,
        direct_build_seconds=0.3,
        base={},
        grown={},
        direct={},
        same_architecture=True,
    )


def test_event_cost_is_the_callback_plus_the_retraces_excess():
    r = bench.analyse(recorded())
    e = r["growth_event"]
    assert r["grown_steady"]["median_seconds"] == pytest.approx(GROWN)
    assert r["tiny_steady"]["median_seconds"] == pytest.approx(TINY)
    assert e["retrace_extra_seconds"] == pytest.approx(RETRACE - GROWN)
    assert e["cost_seconds"] == pytest.approx(1.9 + RETRACE - GROWN)
    assert e["cost_in_grown_steps"] == pytest.approx((1.9 + RETRACE - GROWN) / GROWN)
    assert e["cost_in_tiny_steps"] == pytest.approx((1.9 + RETRACE - GROWN) / TINY)
    # Wall clock: the growth's gap and the retraced step, less an ordinary step and gap.
    wall = GROWTH_GAP + RETRACE - GROWN - GAP
    assert e["wall_clock_cost_seconds"] == pytest.approx(wall)
    assert e["ordinary_gap_seconds"] == pytest.approx(GAP)
    assert e["steps_2_to_10_after_growth_excess_seconds"] == pytest.approx(0.0, abs=1e-12)
    assert e["first_steps_after_growth_seconds"] == pytest.approx([RETRACE] + [GROWN] * 4)


def test_preparation_cost_is_the_excess_of_the_steps_it_overlaps():
    e = bench.analyse(recorded())["growth_event"]
    p = e["preparation"]
    assert p["steps_overlapped"] == len(SLOWED)
    assert p["first_overlapped_step"] == SLOWED[0] + 1
    assert p["tiny_steps_slowed_by_seconds"] == pytest.approx(len(SLOWED) * SLOWDOWN)
    assert p["tiny_steps_slowed_by_grown_steps"] == pytest.approx(len(SLOWED) * SLOWDOWN / GROWN)
    wall = GROWTH_GAP + RETRACE - GROWN - GAP
    assert e["total_cost_seconds"] == pytest.approx(wall + len(SLOWED) * SLOWDOWN)


def test_speed_ratio_is_direct_over_grown_per_round():
    r = bench.analyse(recorded(rounds=4))
    assert r["speed_ratio"] == pytest.approx(DIRECT / GROWN)
    assert len(r["speed_ratio_per_round"]) == 4
    assert r["cpu_speed_ratio"] == pytest.approx(DIRECT / GROWN)
    # Steady figures leave out the first SKIP steps of every call.
    assert r["grown_steady"]["count"] == 4 * (CHUNK - SKIP)


def test_traces_are_counted_per_train_function():
    traces = bench.analyse(recorded())["traces"]
    # The grown model: the tiny model's function, then the grown one's (growth fit
    # and the chunks share it).
    assert [f["steps"] for f in traces["grown"]] == [GROW_AT, POST + 4 * CHUNK]
    assert [f["steps"] for f in traces["direct"]] == [3 + 4 * CHUNK]


def test_synchronous_growth_times_the_growth_fits_own_steps():
    r = bench.analyse(recorded(rounds=0, prepared=False))
    assert r["speed_ratio"] is None and r["cpu_speed_ratio"] is None
    assert r["growth_event"]["preparation"] is None
    # Steps GROW_AT + 11 .. GROW_AT + POST of the growth fit, less SKIP.
    assert r["grown_steady"]["count"] == POST - 10 - SKIP
    assert r["grown_steady"]["median_seconds"] == pytest.approx(GROWN)
    # Without a preparation every tiny step but the first counts, the slowed ones too.
    assert r["tiny_steady"]["count"] == GROW_AT - SKIP


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--operators=widen", "unknown operator 'widen'"),
        ("--grow-at=1", "--grow-at must exceed --skip + 1"),
        ("--rounds=0", "--rounds must be >= 1"),
    ],
)
def test_bad_flags_exit_with_a_clear_error(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([flag])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_breakdown_wraps_what_an_entry_inherits_and_restores_it():
    # SelfFuse inherits grown_parameters from GrowthEntry: the breakdown times
    # it there (it once looked only in SelfFuse's own namespace and failed).
    import instruments

    from keras_fusion import growth

    original = growth.GrowthEntry.__dict__["grown_parameters"]
    with instruments.Breakdown(growth.SelfFuse) as breakdown:
        assert growth.GrowthEntry.__dict__["grown_parameters"] is not original
        growth.SelfFuse(at_step=1).grown_parameters  # noqa: B018 (the wrapped attribute resolves)
    assert growth.GrowthEntry.__dict__["grown_parameters"] is original
    assert "grown_parameters" not in growth.SelfFuse.__dict__
    assert breakdown.seconds == {}
