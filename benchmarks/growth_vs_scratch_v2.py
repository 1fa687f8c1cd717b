"""Does growth pay once the comparison is fair? Growth against scratch, v2.

The protocol (issue 15), the same for every arm:

- one target architecture (a 4-layer T5, hidden 64, 4 heads, feed-forward
  128, 458,880 parameters with the 1,000-id tokenizer) and one training-FLOPs
  budget (`keras_fusion.flops`, every model of an arm counted);
- the `installed` corpus (`keras_fusion.data.installed_corpus`: the
  docstrings of every installed package, ~20M characters), one tokenizer,
  one held-out set of `--eval_batches` (64) batches, cut from the
  validation documents in a fixed shuffled order (`Data`); the run reports
  how many times the longest arm sees each training token;
- the library's default optimizer (Adafactor, `--optimizer` picks another;
  issue 15's runs used AdamW) with a warm-up-cosine learning rate
  (linear warm-up over 5% of the
  arm's steps, cosine decay to 0 at the arm's last step); a growing arm
  keeps one schedule across its growths (`GrowthCallback` carries
  `optimizer.iterations`), its partners train on the same schedule;
- the same learning-rate search for every arm: seed 0 at every rate of
  `--learning_rates`, then the rate with the lowest loss at the budget on
  the other seeds (`--learning_rates best` reads that choice from the part
  files already written). Where other seeds have run at a searched rate
  too, the merge compares two rates by their mean over the seeds both
  ran, and chooses the rate that wins every comparison (`chosen_rates`).
  A growth-time variant (`deep_fusion@0.1`) uses its own seed-0 search
  when there is one, else its mode's (stated in the summary).

Arms (`--arms`, comma-separated):

- `scratch`: the target from random initialisation;
- `small_alone`: the half-width model (the one Deep Fusion and self fusion
  start from) trained alone for the whole budget: the width control. The
  regime check asks that scratch's final loss beat it by more than twice
  the larger seed standard deviation; if not, the budget is too small for
  the target to be the compute-optimal model and growth cannot show a
  saving;
- `half_depth_alone`: the half-depth model (the one `deepen` and `stack`
  start from) trained alone for the whole budget: the depth control. A
  half-depth model costs about half the target's FLOPs a step, a
  half-width one about a third, so each growth mode is checked against its
  own starting model (`CONTROLS`): a mode's saving counts only where its
  own check passes (the arm's `regime_check` in the summary);
- `deep_fusion`: two half-width models (other seeds and data orders),
  fused, the fused model trained on; both models' FLOPs counted;
- `fusion_tree`: the paper's tree in miniature, 4 quarter-width models ->
  2 half-width -> 1 target, each node trained the same number of steps
  (the root until the budget);
- `self_fusion`, `deepen` (identity layers, half depth), `stack` (G_stack
  copy, half depth);
- `MODE@F` (e.g. `deep_fusion@0.1`): a growth-time variant, the growth after
  the fraction F of the budget (plain names grow at `--growth_fraction`,
  0.25).
- `ARM/reset`, `ARM/reset_new` (e.g. `deep_fusion@0.1/reset`): the growth
  with the optimizer's slots restarted from zero, or zero on the entries the
  growth creates (`GrowthCallback(optimizer_slots=...)`); plain arms carry
  the slots, the callback's default.
- `ARM/no_rate_scale` (e.g. `deep_fusion@0.05/no_rate_scale`): the growth
  keeps the learning rate as it was (`GrowthCallback(learning_rate_scale=1.0)`);
  plain arms use the callback's default, `"auto"` (x sqrt(2) after Deep
  Fusion, x 2 after self fusion, under Adafactor; keras_fusion.operators).

FLOPs are counted in lockstep: at each step of the arm's main lineage every
model of that level is counted (a Deep Fusion partner trains alongside the
main model), so the point where an arm reaches scratch's final loss is a
true compute figure before and after growth. Per arm the summary gives the
eval loss at the budget (mean, sample std over seeds), the FLOPs at which
the eval loss first reaches scratch's mean final loss as a fraction of the
budget (linear interpolation between evaluations), whether that point lies
after the arm's last growth (a saving counts only then), and the wall-clock
time the arm would take with its partners on separate devices (the main
lineage's measured time: partners have the same shape and step count).

Runs go in parts: each invocation trains its `--arms` x `--seeds` x rates,
appending each finished run to `<output>.parts/<part>.json` (a run already
in any part file is skipped, so a killed part resumes), then merges every
part file into `<output>.json` (every curve and a `summary`), `<output>.png`
and `<output>.md`. `--merge_only` merges without training.

Run: `python benchmarks/growth_vs_scratch_v2.py --quick` (300-step budget,
seeds 0 and 1, one rate, no search, no fusion tree, an evaluation every 30
steps, XLA with 15 steps a call, two worker processes; the goal is under 10
minutes on 2 CPU cores: 14.6 min on an idle machine with one process and
six arms, not yet re-measured with `--jobs=2` and the seventh arm), or the
full run in parts (benchmarks/README.md, "Growth against scratch"; `make
bench-vs-scratch`: 8,000 target steps). `--jit_compile
--steps_per_execution=25` compiles the train step with XLA and runs 25
steps a call, faster on 2 cores in most measurements of
`benchmarks/step_time.py` (benchmarks/README.md, "Speed"); the part files
record both settings, and parts must agree on them. `--jobs=N` trains N
runs at once in worker processes of one TensorFlow thread each, each
writing its own part file (`<part>_worker<K>.json`), and merges when all are
done; each row's `seconds` (the main lineage's clock) then includes the
sharing of the cores.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

from benchmark_utils import machine_info, mean_std, part_files, script_setup, versions

ROOT = script_setup(__file__)

import protocol  # noqa: E402
from protocol import divide_width, flops_to_reach, halve_depth, interpolate, plot  # noqa: E402

MODES = (
    "scratch",
    "small_alone",
    "half_depth_alone",
    "deep_fusion",
    "fusion_tree",
    "self_fusion",
    "deepen",
    "stack",
)
GROWING = ("deep_fusion", "self_fusion", "deepen", "stack")  # the modes with a growth time
GROWS = GROWING + ("fusion_tree",)  # every mode that grows (the tree at fixed node steps)
# What an arm's `/SLOTS` suffix may ask of `GrowthCallback(optimizer_slots=...)`
# (`keras_fusion.growing.OPTIMIZER_SLOTS` but the default, "carry").
SLOT_VARIANTS = ("reset", "reset_new")
# What an arm's `/no_rate_scale` suffix asks of `GrowthCallback(learning_rate_scale=...)`.
RATE_VARIANTS = {"no_rate_scale": 1.0}
VARIANTS = SLOT_VARIANTS + tuple(RATE_VARIANTS)  # one suffix an arm
# Each growth mode's regime check is against the model it starts from,
# trained alone for the whole budget (the tree's leaves are a quarter
# wide, its middle nodes half: it is held to the width control).
CONTROLS = {
    "deep_fusion": "small_alone",
    "fusion_tree": "small_alone",
    "self_fusion": "small_alone",
    "deepen": "half_depth_alone",
    "stack": "half_depth_alone",
}
REGIME_RULE = (
    "scratch's mean final loss below the control's by more than twice the larger seed std "
    "(sample std), with at least 2 seeds of each"
)
WARMUP_FRACTION = 0.05
# Seed 0's rate search per optimizer, the likeliest first
# (benchmarks/README.md, "Training defaults").
# Uncapped Adafactor steps at its rate all run long, where Keras' capped one
# stepped at most 1/sqrt(t) (1e-2 at t = 10,000). Its search starts at 2e-2,
# the lowest at 16,000 steps (scratch, seed 0: 2e-2 2.30, 1e-2 2.57,
# 3e-2 2.63, 3e-3 3.38; benchmarks/README.md, "Adafactor without its cap").
RATE_SEARCH = {
    "adafactor": [3e-2, 1e-2, 1e-1],
    "adafactor_uncapped": [2e-2, 1e-2, 3e-2],
    "adamw": [3e-3, 1e-3, 1e-2],
}
# How the held-out batches are drawn from the validation documents (`Data`).
EVAL_SAMPLE = "validation documents shuffled by random.Random(0), first eval_batches batches"
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "growth_vs_scratch_v2")


def arm_mode(arm):
    """`"deep_fusion@0.1/reset"` -> `"deep_fusion"`: the mode an arm runs."""
    return arm.partition("/")[0].partition("@")[0]


def arm_slots(arm):
    """`"deep_fusion@0.1/reset"` -> `"reset"`: what the growth does with the
    optimizer's slots (`"carry"` without a slots suffix)."""
    suffix = arm.partition("/")[2]
    return suffix if suffix in SLOT_VARIANTS else "carry"


def arm_rate_scale(arm):
    """`"deep_fusion@0.05/no_rate_scale"` -> `1.0`: the growth's
    `learning_rate_scale` (`"auto"`, the callback's default, without that suffix)."""
    return RATE_VARIANTS.get(arm.partition("/")[2], "auto")


def parse_arm(arm, default_fraction):
    """`"deep_fusion@0.1"` -> `("deep_fusion", 0.1)`; plain names get the default.

    A `/VARIANT` suffix (`"stack@0.05/reset"`, `"deep_fusion/no_rate_scale"`)
    is checked here and read by `arm_slots` and `arm_rate_scale`.
    """
    name, slash, slots = arm.partition("/")
    mode, at, fraction = name.partition("@")
    if mode not in MODES:
        raise ValueError(
            f"unknown arm {arm!r}; modes: {', '.join(MODES)} "
            f"(optionally MODE@FRACTION, and one of /{', /'.join(VARIANTS)})"
        )
    if slash and (mode not in GROWS or slots not in VARIANTS):
        raise ValueError(
            f"arm {arm!r}: a /VARIANT suffix is one of {', '.join(VARIANTS)}, "
            f"on a mode that grows ({', '.join(GROWS)})"
        )
    if at and mode not in GROWING:
        raise ValueError(f"arm {arm!r}: only {', '.join(GROWING)} take a growth fraction")
    try:
        fraction = float(fraction) if at else default_fraction
    except ValueError:
        raise ValueError(f"arm {arm!r}: {fraction!r} is not a number") from None
    if mode in GROWING and not 0 < fraction < 1:
        raise ValueError(f"arm {arm!r}: the growth fraction must be in (0, 1)")
    return mode, fraction


def arm_budget(arm, setup):
    """How an arm spends the budget.

    Returns a dict: `mode`, `fraction` (the requested growth fraction, or
    None), `start` (the main lineage's first config), `levels`, a list of
    `(end_step, flops_per_step)` of the main lineage (every model trained
    alongside it counted), `growth_steps` and `total` (its last step, a
    multiple of `setup.eval_every`, at or past the budget).
    """
    mode, fraction = parse_arm(arm, setup.growth_fraction)
    cost, every, budget = setup.step_flops, setup.eval_every, setup.budget
    target = setup.target

    def steps(flops, rate, rounding=math.ceil):
        return max(every, rounding(flops / rate / every) * every)

    if mode == "scratch":
        levels, start = [(setup.steps, cost(target))], target
    elif mode in ("small_alone", "half_depth_alone"):
        start = divide_width(target, 2) if mode == "small_alone" else halve_depth(target)
        levels = [(steps(budget, cost(start)), cost(start))]
    elif mode == "fusion_tree":
        start, half = divide_width(target, 4), divide_width(target, 2)
        rates = [4 * cost(start), 2 * cost(half), cost(target)]
        node = steps(budget, sum(rates), round)
        root = steps(budget - node * (rates[0] + rates[1]), rates[2])
        levels = [(node, rates[0]), (2 * node, rates[1]), (2 * node + root, rates[2])]
    else:
        if mode in ("deep_fusion", "self_fusion"):
            start = divide_width(target, 2)
        else:
            start = halve_depth(target)
        rate = cost(start) * (2 if mode == "deep_fusion" else 1)
        growth = steps(fraction * budget, rate, round)
        rest = steps(budget - growth * rate, cost(target))
        levels = [(growth, rate), (growth + rest, cost(target))]
    return {
        "mode": mode,
        "fraction": fraction if mode in GROWING else None,
        "start": start,
        "levels": levels,
        "growth_steps": [end for end, _ in levels[:-1]],
        "total": levels[-1][0],
    }


def flops_at(levels, step):
    """The arm's FLOPs after `step` steps of its main lineage."""
    spent, begin = 0.0, 0
    for end, rate in levels:
        spent += rate * max(0, min(step, end) - begin)
        begin = end
    return spent


class Setup(protocol.Setup):
    """The settings every arm shares (and every part file must agree on):
    v1's, without its re-warm-up ablation."""

    def __init__(
        self,
        target,
        steps,
        eval_every,
        eval_batches,
        growth_fraction,
        batch_size=16,
        input_length=64,
        target_length=16,
        global_clipnorm=None,
        jit_compile="auto",
        steps_per_execution=1,
        optimizer="adamw",
    ):
        self.optimizer = optimizer
        self.global_clipnorm = global_clipnorm
        self.jit_compile = jit_compile
        self.steps_per_execution = steps_per_execution
        super().__init__(
            target=target,
            steps=steps,
            eval_every=eval_every,
            batch_size=batch_size,
            input_length=input_length,
            target_length=target_length,
            growth_fraction=growth_fraction,
            rewarmup_steps=0,
            eval_batches=eval_batches,
        )

    def as_dict(self):
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "rewarmup_steps"}
        # Settings added since the first parts are recorded only where they are
        # not the first parts' (absent means the default), so those still merge.
        if self.global_clipnorm is not None:
            fields["global_clipnorm"] = self.global_clipnorm
        if self.optimizer != "adamw":
            fields["optimizer"] = self.optimizer
        if self.jit_compile != "auto" or self.steps_per_execution != 1:
            fields.update(
                jit_compile=self.jit_compile, steps_per_execution=self.steps_per_execution
            )
        fields["eval_sample"] = EVAL_SAMPLE
        return dict(fields, budget=self.budget)


class Data(protocol.Data):
    """v1's shared data, with a held-out set that samples the whole validation split.

    The validation documents are sorted (the corpus is), so v1's held-out
    set, the first `eval_batches` batches of them in order, is the
    alphabetically first few (about a tenth of the installed corpus's
    validation split at batch 16). Here they are shuffled first, by Python's
    `random.Random(0)`, so that the held-out batches draw on every part of
    the split and are the same on every run and for every arm.
    """

    def eval_texts(self):
        texts = list(self.valid_texts)
        random.Random(0).shuffle(texts)
        return texts


def seconds_at(rows, flops):
    """The main lineage's training seconds at `flops`, by linear interpolation
    between evaluations (None if the rows carry no `seconds`)."""
    if any("seconds" not in r for r in rows):
        return None
    points = [(r["flops"], r["seconds"]) for r in rows]
    for (f0, t0), (f1, t1) in zip(points, points[1:]):
        if f0 <= flops <= f1:
            return t0 + (t1 - t0) * (flops - f0) / (f1 - f0) if f1 > f0 else t1
    return points[-1][1]


def train_arm(arm, seed, learning_rate, setup, shared):
    """Train one arm for one seed and rate; returns its record (every curve)."""
    import keras

    from keras_fusion import metrics, optimizers, recipes
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.growth import DEFAULT_MODES, Fuse, doubling_entry

    started = time.perf_counter()
    keras.backend.clear_session()
    budget_split = arm_budget(arm, setup)
    mode, total, growth_steps = (
        budget_split["mode"],
        budget_split["total"],
        budget_split["growth_steps"],
    )
    warmup = max(1, round(WARMUP_FRACTION * total))
    slots, rate_scale = arm_slots(arm), arm_rate_scale(arm)

    def model(config, model_seed):
        optimizer = optimizers.make_optimizer(
            setup.optimizer,
            learning_rate,
            "cosine",
            warmup,
            total,
            global_clipnorm=setup.global_clipnorm,
        )
        return recipes.compile_model(
            recipes.build_model(config, model_seed),
            optimizer,
            jit_compile=setup.jit_compile,
            steps_per_execution=setup.steps_per_execution,
        )

    partner_seconds = []

    def fit(network, data_seed, steps, callbacks=()):
        begin = time.perf_counter()
        network.fit(
            shared.dataset(data_seed),
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            callbacks=list(callbacks),
            shuffle=False,  # a dataset, shuffled by its seed
        )
        return time.perf_counter() - begin

    def partner(config, model_seed, steps, schedule=()):
        network = model(config, model_seed)
        callbacks = []
        if schedule:
            callbacks.append(
                GrowthCallback(
                    list(schedule),
                    verbose=0,
                    optimizer_slots=slots,
                    learning_rate_scale=rate_scale,
                )
            )
        partner_seconds.append(fit(network, model_seed, steps, callbacks))
        print(
            f"  {arm} seed {seed}: partner (hidden {config['hidden_dim']}, seed {model_seed}) "
            f"trained {steps} steps in {partner_seconds[-1]:.0f} s",
            flush=True,
        )
        return network

    start = budget_split["start"]
    schedule = []
    if mode == "deep_fusion":
        schedule = [
            Fuse(at_step=growth_steps[0], partner=partner(start, seed + 1000, growth_steps[0]))
        ]
    elif mode == "fusion_tree":
        node = growth_steps[0]
        leaf3 = partner(start, seed + 3000, node)
        middle2 = partner(start, seed + 2000, 2 * node, [Fuse(at_step=node, partner=leaf3)])
        leaf1 = partner(start, seed + 1000, node)
        schedule = [Fuse(at_step=node, partner=leaf1), Fuse(at_step=2 * node, partner=middle2)]
    elif mode in DEFAULT_MODES:  # self_fusion, deepen, stack: the library's own rule
        new_layers = setup.target["num_layers"] - start["num_layers"]
        schedule = [doubling_entry(mode, growth_steps[0], num_new_layers=new_layers)]
    main = model(start, seed)
    growth = None
    if schedule:
        growth = GrowthCallback(
            schedule, verbose=0, optimizer_slots=slots, learning_rate_scale=rate_scale
        )
    recorder = metrics.MetricsRecorder(
        shared.eval_data, *setup.shape, every=setup.eval_every, growth_callback=growth
    )
    recorder.set_model(main)
    recorder.record(0, math.nan)
    clock = row_clock(recorder, f"{arm} seed {seed} lr {learning_rate:g}", total)
    main_seconds = fit(main, seed, total, ([growth] if growth else []) + [recorder, clock])
    rows = []
    for row, seconds in zip(recorder.rows, clock.seconds):
        row = dict(vars(row))
        row["flops"] = flops_at(budget_split["levels"], row["step"])  # lockstep: partners counted
        row["seconds"] = seconds  # the main lineage's: partners train alongside it
        rows.append(row)
    return {
        "arm": arm,
        "mode": mode,
        "seed": seed,
        "learning_rate": learning_rate,
        "growth_fraction": budget_split["fraction"],
        "optimizer_slots": slots,
        "learning_rate_scale": rate_scale,
        "growth_steps": growth_steps,
        "steps": total,
        "warmup_steps": warmup,
        "levels": budget_split["levels"],
        "growth_flops": [flops_at(budget_split["levels"], s) for s in growth_steps],
        "growth_events": growth.events if growth else [],
        "start_parameters": rows[0]["num_parameters"],
        "final_parameters": rows[-1]["num_parameters"],
        "rows": rows,
        "loss_at_budget": interpolate(rows, setup.budget),
        "parallel_seconds": round(main_seconds, 1),
        "sequential_seconds": round(main_seconds + sum(partner_seconds), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def row_clock(recorder, label=None, total_steps=None):
    """A Keras callback, placed after `recorder`, that stamps each of its rows
    with the main lineage's training seconds.

    When a batch end has added a row, it records the seconds since the fit
    began (evaluations included, as in every arm) in `.seconds`; row 0,
    recorded before the fit, is at 0. With a `label` it prints a progress
    line per row: `label`, the step of `total_steps`, the held-out loss and
    the seconds.
    """
    import keras

    class RowClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = [0.0] * len(recorder.rows)

        def on_train_begin(self, logs=None):
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            while len(self.seconds) < len(recorder.rows):
                self.seconds.append(round(time.perf_counter() - self.began, 2))
                row = recorder.rows[len(self.seconds) - 1]
                if label:
                    print(
                        f"  {label}: step {row.step}/{total_steps}, held-out loss "
                        f"{row.eval_loss:.4f}, {self.seconds[-1]:.0f} s",
                        flush=True,
                    )

    return RowClock()


def run_key(record):
    return (record["arm"], record["seed"], float(record["learning_rate"]))


# The fields every part of one result must share.
SHARED_FIELDS = ("setup", "corpus", "tokenizer_vocabulary")
# What a part records of its own invocation, not of the shared setting: the
# corpus's `seconds` is how long that invocation took to load it, and
# `build_seconds` how long this environment took to build the installed
# corpus once, and `environment_key` names the environment it was read in (a
# new environment with the same docstrings rebuilds the same corpus: the same
# `installed_sha256`, which every part must share).
PER_INVOCATION = {"corpus": ("seconds", "build_seconds", "environment_key")}


def shared_value(part, field):
    value = part[field]
    if field in PER_INVOCATION:
        value = {k: v for k, v in value.items() if k not in PER_INVOCATION[field]}
    return value


def check_compatible(parts):
    """Raise if two part files were run with different settings."""
    for path, part in parts[1:]:
        for field in SHARED_FIELDS:
            if shared_value(part, field) != shared_value(parts[0][1], field):
                raise ValueError(
                    f"{path}: {field} differs from {parts[0][0]}'s; parts of one "
                    f"result must share the setup, corpus and tokenizer"
                )


def _mean_over(searched, rate, seeds):
    return statistics.fmean(searched[rate][s] for s in seeds)


def _beats(searched, a, b):
    """Whether rate `a` ends lower than rate `b` over the seeds both ran."""
    shared = set(searched[a]) & set(searched[b])
    return _mean_over(searched, a, shared) < _mean_over(searched, b, shared)


def chosen_rates(records):
    """Per arm, the rate of its lowest loss at the budget among the rates
    searched on seed 0. Two rates are compared by their mean over the
    seeds both have run (seed 0 at least), and the rate that wins every
    such comparison is chosen: a seed-0 winner that loses where other seeds
    ran at both rates does not handicap a control, even when a third rate
    ran on seed 0 alone. Where no rate wins them all, the mean over the
    seeds that every searched rate has run decides (seed 0 alone until
    another seed has run at each of them). A growth-time variant without a
    seed-0 search of its own takes its mode's (the plain arm's)."""
    losses = {}  # arm -> rate -> seed -> loss at the budget
    for record in records:
        by_seed = losses.setdefault(record["arm"], {}).setdefault(record["learning_rate"], {})
        by_seed[record["seed"]] = record["loss_at_budget"]
    rates = {}
    for arm, by_rate in losses.items():
        searched = {rate: seeds for rate, seeds in by_rate.items() if 0 in seeds}
        if not searched:
            continue
        winners = [a for a in searched if all(_beats(searched, a, b) for b in searched if b != a)]
        if winners:
            rates[arm] = winners[0]
            continue
        shared = set.intersection(*(set(seeds) for seeds in searched.values()))
        rates[arm] = min(searched, key=lambda rate: _mean_over(searched, rate, shared))
    for record in records:
        arm, mode = record["arm"], arm_mode(record["arm"])
        if arm not in rates and mode in rates:
            rates[arm] = rates[mode]
    return rates


def summarise(records, budget, rates, quick, eval_batches):
    """The machine-readable summary of the merged runs (see the module doc)."""
    arms = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        if arm in rates:
            arms[arm] = sorted(
                (r for r in records if r["arm"] == arm and r["learning_rate"] == rates[arm]),
                key=lambda r: r["seed"],
            )
    scratch = arms.get("scratch")
    scratch_loss = mean_std([r["loss_at_budget"] for r in scratch])[0] if scratch else None
    summary = {
        "quick": quick,
        "eval_batches": eval_batches,
        "budget_flops": budget,
        "learning_rates": rates,
        "arms": {},
    }
    for arm, runs in arms.items():
        mean, std = mean_std([r["loss_at_budget"] for r in runs])
        entry = {
            "seeds": [r["seed"] for r in runs],
            "learning_rate": rates[arm],
            "final_loss_mean": mean,
            "final_loss_std": std,
            "fraction_to_scratch_loss": None,
            "reached_after_growth": None,
            "fraction_after_growth": None,
            "per_seed": [],
            "growth_fraction": [f / budget for f in runs[0]["growth_flops"]],
            "parallel_minutes": statistics.fmean(r["parallel_seconds"] for r in runs) / 60,
            "sequential_minutes": statistics.fmean(r["sequential_seconds"] for r in runs) / 60,
            "parameters": [runs[0]["start_parameters"], runs[0]["final_parameters"]],
        }
        if scratch_loss is not None:
            entry.update(crossings(runs, scratch_loss, budget))
        summary["arms"][arm] = entry
    summary["regime_check"] = regime_check(summary["arms"], "small_alone")
    for arm, entry in summary["arms"].items():
        control = CONTROLS.get(arm_mode(arm))
        if control:
            entry["regime_check"] = regime_check(summary["arms"], control)
    return summary


def regime_check(arms, control):
    """Does scratch beat `control` (an arm trained alone) by more than twice the seed spread?

    `arms` are the summary's arm entries. The result names the control and
    gives both losses, the margin and `passed` (a bool: False without
    both arms or with fewer than 2 seeds of either).
    """
    scratch, alone = arms.get("scratch"), arms.get(control)
    check = {
        "control": control,
        "scratch_loss": scratch["final_loss_mean"] if scratch else None,
        "control_loss": alone["final_loss_mean"] if alone else None,
        "rule": REGIME_RULE,
    }
    if control == "small_alone":  # issue 15's field name, kept
        check["small_loss"] = check["control_loss"]
    if not (scratch and alone):
        return dict(check, margin=None, passed=False, rule=f"needs the scratch and {control} arms")
    margin = 2 * max(scratch["final_loss_std"], alone["final_loss_std"])
    enough_seeds = min(len(scratch["seeds"]), len(alone["seeds"])) >= 2
    passed = enough_seeds and check["scratch_loss"] < check["control_loss"] - margin
    return dict(check, margin=margin, passed=bool(passed))


def crossings(runs, scratch_loss, budget):
    """Where each seed first reaches `scratch_loss`, and whether after its last growth."""
    per_seed, fractions, after, after_growth = [], [], [], []
    for r in runs:
        grown_at = r["growth_flops"][-1] if r["growth_flops"] else None
        first = flops_to_reach(r["rows"], scratch_loss, budget)
        if grown_at is not None:
            later = flops_to_reach(
                [row for row in r["rows"] if row["flops"] >= grown_at], scratch_loss, budget
            )
        else:
            later = first
        reach_seconds = None if first is None else seconds_at(r["rows"], first)
        per_seed.append(
            {
                "seed": r["seed"],
                "loss_at_budget": r["loss_at_budget"],
                "parallel_minutes_to_scratch_loss": (
                    None if reach_seconds is None else reach_seconds / 60
                ),
                "fraction": None if first is None else first / budget,
                "after_growth": None if grown_at is None or first is None else first > grown_at,
                "fraction_after_growth": None if later is None else later / budget,
            }
        )
        fractions.append(first)
        after.append(later)
        after_growth.append(None if grown_at is None or first is None else first > grown_at)
    complete = all(f is not None for f in fractions)
    minutes = [p["parallel_minutes_to_scratch_loss"] for p in per_seed]
    return {
        "per_seed": per_seed,
        "parallel_minutes_to_scratch_loss": (
            statistics.fmean(minutes) if minutes and all(m is not None for m in minutes) else None
        ),
        "fraction_to_scratch_loss": statistics.fmean(f / budget for f in fractions)
        if complete
        else None,
        "reached_after_growth": (
            all(after_growth) if complete and runs[0]["growth_flops"] else None
        ),
        "fraction_after_growth": (
            statistics.fmean(f / budget for f in after)
            if runs[0]["growth_flops"] and all(f is not None for f in after)
            else None
        ),
    }


def table(summary):
    """The markdown table of a summary."""
    scratch = summary["regime_check"]["scratch_loss"]
    target = "-" if scratch is None else f"{scratch:.4f}"
    lines = [
        "| arm | LR | seeds | eval loss at budget, mean ± std "
        f"| FLOPs to scratch's {target}, fraction of budget "
        "(mean; per seed) | reached after growth "
        "| growth at (fraction) | minutes, partners in parallel "
        "(sequential) | minutes to scratch's loss, partners in parallel | parameters |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fraction(value):
        return "not reached" if value is None else f"{value:.2f}"

    def minutes(value):  # None: not reached, or rows without times (parts before issue 21)
        return "-" if value is None else f"{value:.1f}"

    for arm, s in summary["arms"].items():
        per_seed = ", ".join(fraction(p["fraction"]) for p in s["per_seed"])
        mean = (
            "-"
            if s["fraction_to_scratch_loss"] is None
            else f"**{s['fraction_to_scratch_loss']:.2f}**"
        )
        after = {None: "-", True: "yes", False: "**no**"}[s["reached_after_growth"]]
        if s["reached_after_growth"] is False and s["fraction_after_growth"] is not None:
            after += f" (after growth: {s['fraction_after_growth']:.2f})"
        grown = ", ".join(f"{g:.2f}" for g in s["growth_fraction"]) or "-"
        lines.append(
            f"| {arm} | {s['learning_rate']:g} | {len(s['seeds'])} | {s['final_loss_mean']:.4f} ± "
            f"{s['final_loss_std']:.4f} | {mean} ({per_seed}) | {after} | {grown} | "
            f"{s['parallel_minutes']:.1f} ({s['sequential_minutes']:.1f}) | "
            f"{minutes(s.get('parallel_minutes_to_scratch_loss'))} | "
            f"{s['parameters'][0]:,} -> {s['parameters'][1]:,} |"
        )
    return "\n".join(lines)


def verdict(summary):
    """The goal of issue 21, judged on the summary: a list of sentences.

    A growth arm's saving counts only where it reaches scratch's loss after
    its growth and its own regime check (`CONTROLS`) passes.
    """
    checks = {"small_alone": summary["regime_check"]}
    checks.update(
        (s["regime_check"]["control"], s["regime_check"])
        for s in summary["arms"].values()
        if "regime_check" in s
    )
    lines = [
        f"Regime check ({REGIME_RULE}), scratch {fmt(summary['regime_check']['scratch_loss'])}: "
        + "; ".join(
            f"{control} {fmt(check['control_loss'])} "
            f"{'PASSED' if check['passed'] else 'NOT passed'}"
            for control, check in checks.items()
        )
        + "."
    ]
    growing = {a: s for a, s in summary["arms"].items() if s["growth_fraction"]}

    def passed(arm):
        return growing[arm].get("regime_check", {}).get("passed", False)

    reached = {a: s for a, s in growing.items() if s["reached_after_growth"]}
    counted = {a: s for a, s in reached.items() if passed(a)}
    if counted:
        arm, best = min(counted.items(), key=lambda kv: kv[1]["fraction_to_scratch_loss"])
        lines.append(
            f"Best growth arm reaching scratch's loss after its growth, its regime check "
            f"passed: {arm} at {best['fraction_to_scratch_loss']:.2f} of the budget (goal <= 0.5: "
            f"{'met' if best['fraction_to_scratch_loss'] <= 0.5 else 'NOT met'})."
        )
    else:
        lines.append(
            "No growth arm whose regime check passed reached scratch's loss after its growth "
            "on every seed (goal NOT met)."
        )
    unchecked = {a: s for a, s in reached.items() if a not in counted}
    if unchecked:
        lines.append(
            "Reached after growth, but the regime check did not pass (no saving counts): "
            + ", ".join(f"{a} at {s['fraction_to_scratch_loss']:.2f}" for a, s in unchecked.items())
            + "."
        )
    for arm in ("deep_fusion", "fusion_tree"):
        s = growing.get(arm)
        if s:
            value = s["fraction_to_scratch_loss"] if s["reached_after_growth"] else None
            met = value is not None and value <= 0.7 and passed(arm)
            lines.append(
                f"{arm}: {fmt(value, 'no saving attributable to growth')} (goal <= 0.7: "
                f"{'met' if met else 'NOT met'})."
            )
    return lines


def fmt(value, missing="-"):
    return missing if value is None else f"{value:.4f}" if value > 1 else f"{value:.2f}"


def merge(prefix, quick):
    """Merge every part file of `prefix` into `<prefix>.json`, `.png`, `.md`; returns the result."""
    from keras_fusion import storage

    parts = part_files(prefix)
    if not parts:
        raise ValueError(f"no part files under {prefix}.parts/")
    check_compatible(parts)
    first = parts[0][1]
    records = list({run_key(r): r for _, part in parts for r in part["runs"]}.values())
    budget = first["setup"]["budget"]
    rates = chosen_rates(records)
    summary = summarise(records, budget, rates, quick, first["setup"]["eval_batches"])
    longest = max(r["steps"] for r in records)
    passes = (
        longest
        * first["setup"]["batch_size"]
        * first["chunk_length"]
        / first["corpus"]["train_tokens"]
    )
    summary["token_passes_longest_arm"] = passes
    setup = first["setup"]
    notes = [
        f"Parts: {', '.join(os.path.basename(p) for p, _ in parts)}; commands: "
        + "; ".join(
            f"`{part['command']}` ({part['minutes']:.1f} min, {part['machine']['cpu_model']}, "
            f"{part['machine']['cpu_count']} CPUs)"
            for _, part in parts
        ),
        f"Budget {budget:.3e} training FLOPs = {setup['steps']} steps of the target "
        f"({first['target_parameters']:,} parameters) at batch {setup['batch_size']} x "
        f"({setup['input_length']}+{setup['target_length']}) tokens; "
        f"corpus `{first['corpus']['spec']}`, "
        f"{first['corpus']['characters']:,} characters, sha256 {first['corpus']['sha256'][:16]}, "
        f"{first['corpus']['train_tokens']:,} training tokens; "
        f"the longest arm ({longest} steps) sees each "
        f"token {passes:.2f} times; held-out set {setup['eval_batches']} batches; "
        f"{setup.get('optimizer', 'adamw')}, warm-up "
        f"({WARMUP_FRACTION:.0%}) then cosine to 0 over each arm's run; "
        "learning rate chosen on seed 0 (where other seeds ran at two rates, on their mean "
        "over the seeds both ran: chosen_rates) among "
        f"{sorted({r['learning_rate'] for r in records})}: {rates}.",
    ]
    markdown = "\n\n".join(notes + [table(summary), " ".join(verdict(summary))])
    result = {
        "benchmark": "growth_vs_scratch_v2",
        "summary": summary,
        "setup": setup,
        "corpus": first["corpus"],
        "parts": [{k: v for k, v in part.items() if k != "runs"} for _, part in parts],
        "merged": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "runs": records,
    }
    storage.write_json(prefix + ".json", result)
    groups = {}
    for record in records:
        if rates.get(record["arm"]) == record["learning_rate"]:
            groups.setdefault(record["arm"], []).append(record)
    if summary["regime_check"]["scratch_loss"] is not None:
        plot(
            groups,
            budget,
            summary["regime_check"]["scratch_loss"],
            prefix + ".png",
            f"{setup['target']['num_layers']}-layer T5, "
            f"d={setup['target']['hidden_dim']}: eval loss "
            f"against FLOPs (dotted: growth)",
            marks=((0.5, "0.5 x budget"), (0.7, "0.7 x budget")),
        )
    with open(prefix + ".md", "w") as f:
        f.write(markdown + "\n")
    return result, markdown


def plan_jobs(arms, seeds, rates_flag, search, existing, prefix, parser):
    """The `(arm, seed, rate)` runs of an invocation (see `--learning_rates`)."""
    if rates_flag == "best" or rates_flag is None:
        chosen = chosen_rates(list(existing.values()))
    jobs = []
    for arm in arms:
        for seed in seeds:
            if rates_flag not in (None, "best"):
                rates = [float(r) for r in rates_flag.split(",")]
            elif rates_flag is None and seed == 0:
                rates = search
            elif arm in chosen or arm_mode(arm) in chosen:
                rates = [chosen.get(arm, chosen.get(arm_mode(arm)))]
            else:
                parser.error(f"no seed-0 search for {arm} in {prefix}.parts/: run --seeds=0 first")
            jobs += [(arm, seed, rate) for rate in rates]
    return jobs


def job_cost(job, setup):
    """A rough wall-clock weight of a run on a CPU: every model's steps (a
    tiny model's step is bound by overhead, not FLOPs), plus 300 steps'
    worth of building and compiling per model."""
    plan = arm_budget(job[0], setup)
    models = {"deep_fusion": 2, "fusion_tree": 4}.get(plan["mode"], 1)
    partner_steps = plan["growth_steps"][0] * (models - 1) if plan["growth_steps"] else 0
    return plan["total"] + partner_steps + 300 * (models + len(plan["growth_steps"]))


def split_jobs(jobs, workers, setup):
    """Longest first onto the least loaded of `workers` lists (greedy)."""
    lanes = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for job in sorted(jobs, key=lambda job: -job_cost(job, setup)):
        lane = loads.index(min(loads))
        lanes[lane].append(job)
        loads[lane] += job_cost(job, setup)
    return [lane for lane in lanes if lane]


def run_workers(jobs, workers, argv, setup):
    """Train `jobs` in `workers` processes of this script (one TensorFlow
    thread each, each its own part file); raise if one fails."""
    keep = [a for a in argv if not a.startswith(("--jobs", "--threads", "--run_jobs"))]
    processes = []
    for number, lane in enumerate(split_jobs(jobs, workers, setup)):
        command = [sys.executable, os.path.abspath(__file__), *keep, "--jobs=1", "--threads=1"]
        command += [f"--worker={number}", "--run_jobs=" + json.dumps(lane)]
        print(f"Worker {number}: {', '.join(f'{a} seed {s} lr {r:g}' for a, s, r in lane)}")
        processes.append(subprocess.Popen(command))
    failed = [number for number, p in enumerate(processes) if p.wait() != 0]
    if failed:
        raise SystemExit(f"worker(s) {failed} failed: their runs are missing; rerun to resume")


def part_name(arms, seeds, rates):
    label = lambda values: "+".join(str(v) for v in values)  # noqa: E731
    return f"{label(arms)}_s{label(seeds)}_lr{label(rates)}".replace("@", "at").replace("/", "-")


def check_flags(args, parser):
    """Check the flags and fill in the quick mode's and the optimizer's
    defaults (in `args`); returns `(arms, seeds, steps, eval_every,
    rate_search, learning_rates_flag)`. Exits through `parser.error`."""
    arms = [
        a
        for a in (
            args.arms or ",".join(m for m in MODES if not (args.quick and m == "fusion_tree"))
        ).split(",")
        if a
    ]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    for arm in arms:
        try:
            parse_arm(arm, args.growth_fraction)
        except ValueError as error:
            parser.error(f"--arms: {error}")
    if not 0 < args.growth_fraction < 1:
        parser.error("--growth_fraction must be in (0, 1)")
    if args.eval_batches < 1 or args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--steps, --eval_batches and --batch_size must be >= 1")
    steps = args.steps or (300 if args.quick else 7000)
    every = args.eval_every or max(steps // (10 if args.quick else 40), 1)
    if args.quick and args.steps_per_execution is None:
        args.steps_per_execution, args.jit_compile = math.gcd(every, 15), True
    if args.steps_per_execution is None:
        args.steps_per_execution = 1
    if args.steps_per_execution < 1 or every % args.steps_per_execution:
        parser.error(
            f"--steps_per_execution={args.steps_per_execution} must be >= 1 and divide the "
            f"evaluation interval ({every} steps): growth and evaluation happen between calls"
        )
    from keras_fusion import optimizers

    args.optimizer = args.optimizer or optimizers.DEFAULT_OPTIMIZER
    if args.optimizer not in optimizers.OPTIMIZERS:
        parser.error(
            f"--optimizer: unknown {args.optimizer!r}; allowed: {', '.join(optimizers.OPTIMIZERS)}"
        )
    search = RATE_SEARCH.get(args.optimizer, RATE_SEARCH["adafactor"])
    rates_flag = args.learning_rates or (f"{search[0]:g}" if args.quick else None)

    if args.threads < 0:
        parser.error(f"--threads={args.threads}: must be >= 0 (0: all)")
    if args.jobs is None:
        args.jobs = 2 if args.quick else 1
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs}: must be >= 1")
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    return arms, seeds, steps, every, search, rates_flag


def load_corpus(args, setup, earlier_parts):
    """The shared tokenizer, corpus and held-out documents (`Data`), and the
    corpus record of the part file. The installed corpus of the parts
    already run is kept, should a package have been installed since (the
    installed corpus follows the environment); on a fresh machine, where
    their environment's cache is gone, this environment's serves when it
    holds the same documents (`data.installed_corpus_environment`)."""
    from keras_fusion import data

    corpus_started = time.perf_counter()
    earlier = next(
        (part["corpus"] for _, part in earlier_parts if part["corpus"]["spec"] == args.corpus),
        {},
    )
    key = earlier.get("environment_key")
    if args.corpus == "installed" and earlier.get("installed_sha256"):
        # On a fresh machine the earlier environment's cache is gone; this
        # environment's corpus serves when it holds the same documents.
        key = data.installed_corpus_environment(
            earlier["installed_sha256"], earlier.get("environment_key")
        )
        if key != earlier.get("environment_key"):
            print(
                f"corpus: environment {earlier.get('environment_key')!r} is not cached here; "
                f"this environment ({key!r}) holds the same documents"
            )
    spec = args.corpus
    if args.corpus == "installed":
        spec = lambda split: data.installed_corpus(split, environment_key=key)  # noqa: E731
    shared = Data(args.vocabulary_size, args.workdir, setup, corpus=spec)
    corpus = {
        "spec": args.corpus,
        "documents": len(shared.train_texts) + len(shared.valid_texts),
        "characters": sum(map(len, shared.train_texts)) + sum(map(len, shared.valid_texts)),
        "sha256": data.corpus_fingerprint(
            shared.train_texts + shared.valid_texts
        ),  # train, then validation
        "train_tokens": shared.train_tokens(),
        "seconds": round(time.perf_counter() - corpus_started, 1),
    }
    if args.corpus == "installed":
        info = data.installed_corpus_info(environment_key=key)
        corpus.update(
            environment_key=info["environment_key"],
            build_seconds=info["build_seconds"],
            installed_sha256=info["sha256"],
        )
    return shared, corpus


def new_part(args, argv, setup, shared, corpus, machine, path):
    """The part file's record for this invocation, with the runs and minutes
    of the part file at `path` when it exists (a killed part resumes);
    returns `(part, minutes_before)`."""
    from keras_fusion.data.span_corruption import random_spans_helper
    from keras_fusion.growth import parameter_count

    command = "python benchmarks/growth_vs_scratch_v2.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    part = {
        "command": command.strip(),
        "setup": setup.as_dict(),
        "corpus": corpus,
        "tokenizer_vocabulary": shared.vocabulary_size,
        "chunk_length": random_spans_helper(setup.input_length, 0.15, 3.0, setup.target_length)[0],
        "target_parameters": parameter_count(setup.target),
        "machine": machine,
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "minutes": 0.0,
        "runs": [],
    }
    earlier = 0.0
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        part["runs"], earlier = previous["runs"], previous["minutes"]
    return part, earlier


def build_parser():
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300-step budget, seeds 0,1, one rate (the optimizer's first), no fusion tree, "
        "an evaluation every 30 "
        "steps, XLA with 15 steps a call; output <output>_quick",
    )
    parser.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms (MODE or MODE@FRACTION, either with /reset, "
        "/reset_new or /no_rate_scale); default every mode (quick: all but fusion_tree, "
        "whose seven models cost ~2 min of building and tracing a seed)",
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0,1)"
    )
    parser.add_argument(
        "--learning_rates",
        default=None,
        help="comma-separated rates, or 'best' (each arm's seed-0 choice in the part files); "
        "default for seed 0 (the likeliest first, for a part cut short) 3e-2,1e-2,1e-1 "
        "(Adafactor) or 3e-3,1e-3,1e-2 (AdamW), and best otherwise; quick the first of those",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="scratch steps: the budget (default 7000, quick 300)",
    )
    parser.add_argument(
        "--eval_every", type=int, default=None, help="default steps // 40 (quick steps // 10)"
    )
    parser.add_argument("--eval_batches", type=int, default=64)
    parser.add_argument(
        "--batch_size",
        type=int,
        default=16,
        help="sequences per step; a larger batch raises the budget at little wall-clock cost, "
        "since a step of these tiny models is bound by per-step overhead",
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        help="every arm's optimizer (keras_fusion.optimizers.OPTIMIZERS; default the library's "
        "measured default, adafactor); recorded in the setup when not adamw",
    )
    parser.add_argument(
        "--global_clipnorm",
        type=float,
        default=None,
        help="clip every arm's gradients to this global norm (default: no clipping)",
    )
    parser.add_argument(
        "--jit_compile",
        action="store_true",
        help="compile every arm's train step with XLA (default: Keras' 'auto'); faster in "
        "most measurements of benchmarks/step_time.py, at a few seconds of compiling a model",
    )
    parser.add_argument(
        "--steps_per_execution",
        type=int,
        default=None,
        help="optimizer steps per call of the train function; must divide --eval_every "
        "(default 1; quick: 15 and --jit_compile)",
    )
    parser.add_argument("--growth_fraction", type=float, default=0.25)
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="train the runs in this many worker processes at once, one TensorFlow thread each, "
        "each writing its own part file (default 1; quick 2: the runs are bound by building and "
        "compiling, which two processes overlap on 2 cores)",
    )
    parser.add_argument("--run_jobs", default=None, help=argparse.SUPPRESS)  # a worker's runs
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow threads (0: all); 1 lets two parts run side by side on 2 cores",
    )
    parser.add_argument(
        "--retain_freed_memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory in the process between steps (glibc's mallopt; "
        "memory.retain_freed_memory): steps stop page-faulting their buffers in again",
    )
    parser.add_argument(
        "--corpus", default="installed", help="'installed' (the benchmark's) or 'embedded' (tests)"
    )
    parser.add_argument("--vocabulary_size", type=int, default=1000)
    parser.add_argument(
        "--hidden_dim", type=int, default=64, help="the target's width (tests shrink it)"
    )
    parser.add_argument("--num_layers", type=int, default=4, help="the target's depth")
    parser.add_argument(
        "--output", default=None, help=f"result prefix (default {DEFAULT_OUTPUT}[_quick])"
    )
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "growth_vs_scratch_v2"))
    parser.add_argument(
        "--merge_only", action="store_true", help="merge the part files, train nothing"
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    prefix = args.output or DEFAULT_OUTPUT + ("_quick" if args.quick else "")
    if args.merge_only:
        _, markdown = merge(prefix, args.quick)
        print(markdown)
        print(f"Wrote {prefix}.json, .png, .md")
        return
    arms, seeds, steps, every, search, rates_flag = check_flags(args, parser)
    from keras_fusion import memory, recipes, storage

    retained = args.retain_freed_memory and memory.retain_freed_memory()

    setup = Setup(
        target={},
        steps=steps,
        eval_every=every,
        eval_batches=args.eval_batches,
        growth_fraction=args.growth_fraction,
        batch_size=args.batch_size,
        global_clipnorm=args.global_clipnorm,
        jit_compile=True if args.jit_compile else "auto",
        steps_per_execution=args.steps_per_execution,
        optimizer=args.optimizer,
    )
    os.makedirs(args.workdir, exist_ok=True)
    earlier_parts = part_files(prefix)
    shared, corpus = load_corpus(args, setup, earlier_parts)
    setup.target = recipes.target_config(
        "tiny",
        shared.vocabulary_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        intermediate_dim=2 * args.hidden_dim,
    )
    shared.eval_data = shared.dataset(0, training=False)
    machine = machine_info()
    machine["malloc"] = "freed memory retained" if retained else "default"
    from keras_fusion.growth import parameter_count

    print(
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, "
        f"malloc {machine['malloc']}; {versions()}"
    )
    print(
        f"Target {setup.target} ({parameter_count(setup.target):,} parameters); "
        f"batch {setup.batch_size} x "
        f"({setup.input_length}, {setup.target_length}); "
        f"budget {setup.budget:.3e} FLOPs = {steps} steps; "
        f"eval every {every} steps on {args.eval_batches} batches"
    )
    print(f"Corpus {corpus}", flush=True)

    existing = {run_key(r): r for _, part in earlier_parts for r in part["runs"]}
    if args.run_jobs is not None:  # a worker of --jobs: exactly these runs
        jobs = [(arm, int(seed), float(rate)) for arm, seed, rate in json.loads(args.run_jobs)]
    else:
        jobs = plan_jobs(arms, seeds, rates_flag, search, existing, prefix, parser)
    todo = [job for job in jobs if job not in existing]
    if args.jobs > 1 and args.run_jobs is None and len(todo) > 1:
        run_workers(todo, args.jobs, argv if argv is not None else sys.argv[1:], setup)
        _, markdown = merge(prefix, args.quick)
        print(markdown)
        print(f"Merged every part into {prefix}.json, .png, .md")
        return
    name = part_name(
        list(dict.fromkeys(arm for arm, _, _ in jobs)),
        sorted({seed for _, seed, _ in jobs}),
        sorted({rate for _, _, rate in jobs}),
    )
    if args.run_jobs is not None:
        name += f"_worker{args.worker}"
    path = os.path.join(prefix + ".parts", name + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part, earlier = new_part(args, argv, setup, shared, corpus, machine, path)
    started = time.perf_counter()
    for arm, seed, rate in jobs:
        if (arm, seed, rate) in existing:
            print(f"  {arm} seed {seed} lr {rate:g}: already in a part file, skipped")
            continue
        record = train_arm(arm, seed, rate, setup, shared)
        part["runs"].append(record)
        part["minutes"] = earlier + (time.perf_counter() - started) / 60
        storage.write_json(path, part)
        print(
            f"  {arm:<18} seed {seed} lr {rate:g}: loss at budget {record['loss_at_budget']:.4f} "
            f"({record['steps']} steps, "
            f"growth at {record['growth_steps']}, {record['seconds']:.0f} s; "
            f"{part['minutes']:.1f} min so far)",
            flush=True,
        )
    if args.run_jobs is not None:
        print(f"Wrote {path}")
        return  # the parent merges once every worker is done
    _, markdown = merge(prefix, args.quick)
    print(markdown)
    print(f"Wrote {path}; merged into {prefix}.json, .png, .md")


if __name__ == "__main__":
    main()
