"""keras_fusion.optimizers: T5's inverse-sqrt schedule, cosine with warm-up,
warm-up-stable-decay, AdamW scaled by the parameter's RMS, bad input."""

import math

import keras
import numpy as np
import pytest

from keras_fusion import optimizers
from keras_fusion.optimizer_state import Rewarmup


def rate_at(optimizer, step):
    """The optimizer's learning rate when its step counter reads `step`."""
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate.numpy())


@pytest.mark.parametrize("warmup", [1, 10, 100])
def test_inverse_sqrt_is_t5s_formula(warmup):
    schedule = optimizers.InverseSqrt(0.01, warmup)
    for step in [0, 1, warmup // 2, warmup - 1, warmup, 4 * warmup, 10_000]:
        # T5 (Raffel et al. 2020, 3.1.2): 1/sqrt(max(n, k)), here scaled to
        # reach `lr` at the end of the warm-up, with a linear warm-up before.
        expected = 0.01 * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def test_inverse_sqrt_round_trips_through_its_config():
    schedule = optimizers.InverseSqrt(0.02, 7)
    again = optimizers.InverseSqrt.from_config(schedule.get_config())
    assert [float(again(s)) for s in (0, 6, 50)] == [float(schedule(s)) for s in (0, 6, 50)]


def test_inverse_sqrt_through_make_optimizer():
    optimizer = optimizers.make_optimizer(
        "adafactor", 0.01, "inverse_sqrt", warmup_steps=16, total_steps=100
    )
    np.testing.assert_allclose(rate_at(optimizer, 63), 0.01 * math.sqrt(16 / 64), rtol=1e-6)


def test_cosine_ramps_linearly_to_the_peak_then_decays_to_zero():
    peak, warmup, total = 0.004, 20, 120
    optimizer = optimizers.make_optimizer(
        "adamw", peak, "cosine", warmup_steps=warmup, total_steps=total
    )
    np.testing.assert_allclose(rate_at(optimizer, 0), 0.0, atol=1e-12)
    np.testing.assert_allclose(rate_at(optimizer, warmup // 2), peak / 2, rtol=1e-5)
    np.testing.assert_allclose(rate_at(optimizer, warmup), peak, rtol=1e-5)
    # Half-way through the decay: peak * (1 + cos(pi / 2)) / 2.
    np.testing.assert_allclose(rate_at(optimizer, (warmup + total) // 2), peak / 2, rtol=1e-5)
    np.testing.assert_allclose(rate_at(optimizer, total), 0.0, atol=1e-9)


def test_cosine_without_warmup_starts_at_the_peak():
    optimizer = optimizers.make_optimizer("adamw", 0.004, "cosine", warmup_steps=0, total_steps=100)
    np.testing.assert_allclose(rate_at(optimizer, 0), 0.004, rtol=1e-6)
    np.testing.assert_allclose(rate_at(optimizer, 100), 0.0, atol=1e-9)


def test_constant_is_constant():
    optimizer = optimizers.make_optimizer("adamw", 0.003)
    assert {round(rate_at(optimizer, s), 9) for s in (0, 10, 10_000)} == {0.003}


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("sgd", 1e-3),
            r"optimizer must be one of \('adafactor', 'adafactor_uncapped', 'adamw', "
            r"'adamw_scale'\), got 'sgd'",
        ),
        (
            ("adamw", 1e-3, "linear"),
            r"lr_schedule must be one of \('constant', 'inverse_sqrt', 'cosine', 'wsd'\), "
            r"got 'linear'",
        ),
        (("adamw", 0.0), r"learning_rate must be > 0, got 0\.0"),
        (("adamw", -1e-3), r"learning_rate must be > 0, got -0\.001"),
        (("adamw", float("nan")), r"learning_rate must be > 0, got nan"),
    ],
)
def test_bad_input_is_refused_naming_the_argument_the_value_and_what_is_allowed(args, message):
    with pytest.raises(ValueError, match=message):
        optimizers.make_optimizer(*args)


def test_the_optimizers_by_name():
    assert type(optimizers.make_optimizer("adafactor", 1e-3)) is keras.optimizers.Adafactor
    uncapped = optimizers.make_optimizer("adafactor_uncapped", 1e-3)
    assert type(uncapped) is optimizers.UncappedAdafactor
    adamw = optimizers.make_optimizer("adamw", 1e-3)
    assert isinstance(adamw, keras.optimizers.AdamW)
    # make_optimizer's choice (its docstring and docs/ do not say why): no
    # decoupled weight decay, where Keras' AdamW would default to 0.004.
    assert adamw.weight_decay == 0.0
    assert keras.optimizers.AdamW(1e-3).weight_decay != 0.0  # so 0 is a choice, not Keras' default


@pytest.mark.parametrize("name", ["adamw", "adafactor", "adafactor_uncapped"])
def test_global_clipnorm_is_keras_own_and_survives_a_config_round_trip(name):
    """The option is Keras' (`global_clipnorm`), so a grown optimizer, rebuilt
    from the config (`optimizer_state.rebuild`), keeps it."""
    optimizer = optimizers.make_optimizer(name, 1e-3, global_clipnorm=0.5)
    assert optimizer.global_clipnorm == 0.5
    assert type(optimizer).from_config(optimizer.get_config()).global_clipnorm == 0.5
    assert optimizers.make_optimizer(name, 1e-3).global_clipnorm is None
    with pytest.raises(ValueError, match=r"global_clipnorm must be None or > 0, got -1"):
        optimizers.make_optimizer(name, 1e-3, global_clipnorm=-1)


def test_warmup_stable_decay_by_hand():
    # 10 warm-up steps, 100 in all, the last 20 decaying linearly to 0.
    optimizer = optimizers.make_optimizer("adamw", 0.01, "wsd", warmup_steps=10, total_steps=100)
    expected = {
        0: 0.01 * 1 / 10,  # step counter 0 is the first step
        4: 0.01 * 5 / 10,
        9: 0.01,
        50: 0.01,
        79: 0.01,  # 21 steps left: decay not begun
        80: 0.01 * 20 / 20,
        89: 0.01 * 11 / 20,
        99: 0.01 * 1 / 20,  # the last step
        150: 0.0,
    }
    for step, rate in expected.items():
        assert rate_at(optimizer, step) == pytest.approx(rate, rel=1e-5, abs=1e-9), step


def test_constant_with_warm_up_ramps_then_holds():
    optimizer = optimizers.make_optimizer("adamw", 0.01, "constant", warmup_steps=4, total_steps=50)
    rates = [rate_at(optimizer, s) for s in (0, 1, 3, 4, 49)]
    np.testing.assert_allclose(rates, [0.0025, 0.005, 0.01, 0.01, 0.01], rtol=1e-6)


def test_warmup_stable_decay_round_trips_and_refuses_bad_fraction():
    schedule = optimizers.WarmupStableDecay(0.02, 5, 60, decay_fraction=0.5)
    again = optimizers.WarmupStableDecay.from_config(schedule.get_config())
    for step in (0, 30, 59):
        assert float(again(step)) == pytest.approx(float(schedule(step)))
    with pytest.raises(ValueError, match=r"decay_fraction must be in \[0, 1\], got 1\.5"):
        optimizers.WarmupStableDecay(0.01, 5, 60, decay_fraction=1.5)


def test_adamw_scale_steps_by_the_parameters_rms():
    # Adam's first step moves each entry by lr * g / (|g| + eps'), i.e. by
    # lr against the gradient's sign; nanoT5's adamwscale multiplies it by
    # the parameter's RMS before the step: sqrt((3^2 + 4^2) / 2) = 3.5355.
    # A parameter of RMS below 1e-3 is moved by lr * 1e-3.
    for initial, scale in (([3.0, 4.0], math.sqrt(12.5)), ([1e-5, -1e-5], 1e-3)):
        variable = keras.Variable(np.array(initial, "float32"))
        optimizer = optimizers.make_optimizer("adamw_scale", 0.01)
        optimizer.apply_gradients([(np.array([1.0, -1.0], "float32"), variable)])
        expected = np.array(initial) - 0.01 * scale * np.array([1.0, -1.0])
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-9)
    assert isinstance(optimizer, keras.optimizers.AdamW)  # its slots are AdamW's


def test_adamw_scale_round_trips_through_keras_serialization():
    optimizer = optimizers.make_optimizer("adamw_scale", 0.02, "cosine", 5, 100)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(again) is optimizers.AdamWScale
    assert rate_at(again, 50) == pytest.approx(rate_at(optimizer, 50))


def test_default_optimizer_is_the_measured_default_with_five_percent_warm_up():
    optimizer = optimizers.default_optimizer(total_steps=1000)
    classes = {
        "adamw": keras.optimizers.AdamW,
        "adafactor": keras.optimizers.Adafactor,
        "adamw_scale": optimizers.AdamWScale,
    }
    assert type(optimizer) is classes[optimizers.DEFAULT_OPTIMIZER]
    peak = max(rate_at(optimizer, s) for s in range(0, 1000, 10))
    assert peak == pytest.approx(optimizers.DEFAULT_LEARNING_RATE, rel=1e-3)
    # Warming up linearly over 50 steps: about half the peak at step 25.
    assert rate_at(optimizer, 25) == pytest.approx(peak / 2, rel=0.05)
    assert rate_at(optimizer, 0) < peak / 40


def adafactor_step(optimizer, iterations):
    """How far one Adafactor step moves an all-ones 4x4 kernel on an
    all-ones gradient after `iterations` earlier steps.

    By hand: the factored second moment of a constant gradient is constant,
    so the update direction u is constant and at least 1, and clipping at
    RMS 1 makes it exactly 1; the kernel's RMS is 1 (above epsilon_2). The
    step is then the relative step rho_t itself.
    """
    kernel = keras.Variable(np.ones((4, 4), "float32"))
    optimizer.build([kernel])
    optimizer.iterations.assign(iterations)
    optimizer.apply_gradients([(np.ones((4, 4), "float32"), kernel)])
    moved = 1.0 - kernel.numpy()
    np.testing.assert_allclose(moved, moved[0, 0])  # the same for every entry
    return float(moved[0, 0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.make_optimizer("adafactor", 0.03),
        lambda: optimizers.make_optimizer("adafactor", 0.03, "cosine", 0, 10**9),
        lambda: keras.optimizers.Adafactor(0.03, relative_step=False),
    ],
    ids=["constant", "cosine schedule", "relative_step=False"],
)
def test_keras_adafactor_caps_every_rate_at_one_over_sqrt_of_the_step(make):
    """A Keras fact the growth benchmarks depend on: Adafactor's relative
    step is min(rate, 1 / sqrt(t)) with t = iterations + 1, for a constant
    rate, a schedule, and with relative_step=False alike (T5's and Hugging
    Face's Adafactor cap only their default rate). So at rate 3e-2 the rate
    stops mattering after step 1/0.03^2, about 1,111, until a decaying
    schedule falls below the cap."""
    assert adafactor_step(make(), 0) == pytest.approx(0.03, rel=1e-5)
    assert adafactor_step(make(), 99) == pytest.approx(0.03, rel=1e-5)  # cap 0.1
    assert adafactor_step(make(), 9999) == pytest.approx(0.01, rel=1e-5)  # cap 1/sqrt(10^4)
    assert adafactor_step(make(), 3599) == pytest.approx(1 / 60, rel=1e-5)


def test_a_growths_rate_scale_is_capped_out_under_adafactor_past_the_crossover():
    """GrowthCallback's learning_rate_scale reaches Adafactor through the
    rate (`optimizer_state.Rewarmup`); where the scaled rate is above
    1 / sqrt(t), the cap makes the scale a no-op, and it acts only where
    the rate is below the cap (early, or in a decayed tail)."""

    def scaled(scale, rate=0.03):
        return keras.optimizers.Adafactor(Rewarmup(rate, start_step=0, warmup_steps=0, scale=scale))

    # Step 9,999: the cap is 0.01; 0.03 and 2 x 0.03 both move 0.01.
    assert adafactor_step(scaled(2.0), 9999) == pytest.approx(0.01, rel=1e-5)
    assert adafactor_step(scaled(1.0), 9999) == pytest.approx(0.01, rel=1e-5)
    # A rate decayed to 0.004 is below the cap: the scale doubles the step.
    assert adafactor_step(scaled(1.0, 0.004), 9999) == pytest.approx(0.004, rel=1e-5)
    assert adafactor_step(scaled(2.0, 0.004), 9999) == pytest.approx(0.008, rel=1e-5)


@pytest.mark.parametrize(
    "name, rate, iterations, scale, expected",
    [
        ("adafactor", 0.03, 9999, 2.0, 1.0),  # cap 0.01 below both rates: no change
        ("adafactor", 0.008, 9999, 2.0, 1.25),  # 0.016 capped at 0.01
        ("adafactor", 0.004, 9999, 2.0, 2.0),  # below the cap at both: the scale
        ("adafactor", 0.03, 99, 2**0.5, 2**0.5),  # cap 0.1
        ("adafactor_uncapped", 0.03, 9999, 2.0, 2.0),
    ],
)
def test_relative_step_scale_is_the_ratio_of_the_steps_adafactor_takes(
    name, rate, iterations, scale, expected
):
    """What GrowthCallback records as `relative_step_scale`: the factor
    by which scaling the rate changes the step, measured here on Keras' own
    update (`adafactor_step`) at the scaled and the unscaled rate."""
    optimizer = optimizers.make_optimizer(name, rate)
    optimizer.iterations.assign(iterations)
    predicted = optimizers.relative_step_scale(optimizer, scale)
    measured = adafactor_step(optimizers.make_optimizer(name, rate * scale), iterations)
    measured /= adafactor_step(optimizers.make_optimizer(name, rate), iterations)
    assert predicted == pytest.approx(measured, rel=1e-5)
    assert predicted == pytest.approx(expected)


def test_relative_step_scale_under_adam_and_a_schedule():
    adamw = optimizers.make_optimizer("adamw", 3e-3)
    adamw.iterations.assign(10**6)
    assert optimizers.relative_step_scale(adamw, 0.5) == 0.5  # no cap on Adam's steps
    # Cosine from 0.03 to 0 over 20,000 steps: at 15,000 the rate is
    # 0.03 * (1 + cos(0.75 pi)) / 2 = 0.004393, the cap 1/sqrt(15,001) = 0.008165.
    cosine = optimizers.make_optimizer("adafactor", 0.03, "cosine", 0, 20_000)
    cosine.iterations.assign(15_000)
    rate = 0.03 * (1 + math.cos(0.75 * math.pi)) / 2
    expected = (1 / math.sqrt(15_001)) / rate
    assert optimizers.relative_step_scale(cosine, 2.0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda rate: optimizers.make_optimizer("adafactor_uncapped", rate),
        lambda rate: optimizers.UncappedAdafactor(Rewarmup(rate, 0, 0, scale=1.0)),
    ],
    ids=["constant", "schedule"],
)
def test_uncapped_adafactor_steps_at_the_rate_it_is_given(make):
    # By hand (adafactor_step): the step is the relative step, here the rate
    # at every t; Keras' Adafactor would move 0.01 at t = 10,000 and 1/60 at 3,600.
    for iterations in (0, 99, 3599, 9999):
        assert adafactor_step(make(0.03), iterations) == pytest.approx(0.03, rel=1e-5)
    # So a growth's rate scale acts past the crossover too.
    assert adafactor_step(make(0.06), 9999) == pytest.approx(0.06, rel=1e-5)


def test_uncapped_adafactor_matches_hugging_faces_adafactor_with_relative_step_false():
    """An independent implementation: transformers' Adafactor with an
    explicit rate (relative_step=False, scale_parameter=True), whose defaults
    (eps (1e-30, 1e-3), clip 1, decay -0.8) are Keras'. Rate 0.9 puts Keras'
    cap (1/sqrt(t) < 0.9 from t = 2) in play within the 6 steps compared,
    on a 6x5 kernel (factored moments) and a 5-vector (full moment)."""
    torch = pytest.importorskip("torch", reason="the HF oracle needs the test extra")
    transformers = pytest.importorskip("transformers", reason="the HF oracle needs the test extra")
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=(6, 5)).astype("float32"), rng.normal(size=5).astype("float32")]
    gradients = [[rng.normal(size=p.shape).astype("float32") for p in initial] for _ in range(6)]

    def keras_run(optimizer):
        variables = [keras.Variable(p) for p in initial]
        optimizer.build(variables)
        for step in gradients:
            optimizer.apply_gradients(zip(step, variables))
        return [v.numpy() for v in variables]

    parameters = [torch.nn.Parameter(torch.tensor(p)) for p in initial]
    hf = transformers.optimization.Adafactor(
        parameters, lr=0.9, relative_step=False, scale_parameter=True, warmup_init=False
    )
    for step in gradients:
        for parameter, gradient in zip(parameters, step):
            parameter.grad = torch.tensor(gradient)
        hf.step()
    expected = [p.detach().numpy() for p in parameters]

    uncapped = keras_run(optimizers.UncappedAdafactor(0.9))
    capped = keras_run(keras.optimizers.Adafactor(0.9, relative_step=False))
    for got, want, other, start in zip(uncapped, expected, capped, initial):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # Keras' own Adafactor moves less: by min(0.9, 1/sqrt(t)) from t = 2.
        assert np.abs(other - start).sum() < 0.8 * np.abs(want - start).sum()


def test_uncapped_adafactor_round_trips_and_keeps_adafactors_slots():
    optimizer = optimizers.make_optimizer("adafactor_uncapped", 1e-2, "cosine", 10, 100)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(again) is optimizers.UncappedAdafactor
    assert again.get_config() == optimizer.get_config()
    # What growth relies on: Adafactor's slots, and steps relative to the RMS.
    assert isinstance(again, keras.optimizers.Adafactor)
    assert optimizers.steps_follow_parameter_scale(again)
