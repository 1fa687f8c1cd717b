"""Does growth save compute? Every growth mode against training from scratch (v1, frozen).

Frozen: this script is kept, unchanged in what it computes, to reproduce
the results of benchmarks/README.md's section "v1: `python
benchmarks/growth_vs_scratch.py`" (AdamW at a constant rate on the embedded
corpus, measured with the old initialisation). The protocol is
`growth_vs_scratch_v2.py` now, and the settings after a growth that
`--ablations` varies are `after_growth.py`'s. The shared parts live in
`protocol.py`.

On the embedded corpus, with one tokenizer, one validation set, one seed list
and one training-FLOPs budget (`keras_fusion.flops`, every model of an arm
counted, a Deep Fusion partner included), five arms train a T5 of the same
final architecture:

- `scratch`: the final model from random initialisation, for the whole budget;
- `deep_fusion`: two half-width models (different seeds and data orders)
  trained, fused inside `fit` (`Fuse`), the fused model trained on;
- `self_fusion`: one half-width model fused with itself (`SelfFuse`);
- `deepen`: a half-depth model given identity layers (`Deepen`, exact);
- `stack`: a half-depth model whose layers are copied on top (`Deepen`,
  `mode="stack"`, G_stack-style; not function preserving).

The growing arms spend `--growth_fraction` of the budget before growing.
Learning-rate search, the same for every arm: each arm trains seed 0 at every
rate of `--learning_rates` (AdamW, constant rate); the rate with the lowest
eval loss at the budget is then trained on the other seeds. Per arm the
report gives, over the seeds: the eval loss at the budget (mean, min, max),
and the FLOPs at which the eval loss first reaches the scratch arm's mean
loss at the budget, as a fraction of the budget (linear interpolation between
evaluations; "not reached" when it never does within the budget).

`--ablations` then trains, at the tuned rates and on every seed, variants of
the library's defaults after a growth: the learning-rate scale after self
fusion (default halved) and after Deep Fusion (default kept), a learning-rate
re-warm-up (default off), the symmetry-breaking noise of self fusion (default
1e-3) and resetting the optimizer state instead of carrying it (default
carry). These are the evidence for the defaults of
`GrowthCallback` and `SelfFuse` (benchmarks/README.md, "Growth against scratch").

Writes `<output>.json` (every curve), `<output>.png` (eval loss against
FLOPs, growth events marked) and `<output>.md` (the table).

Run: `python benchmarks/growth_vs_scratch.py --quick` (under 10 minutes on 2
CPU cores; one rate, no search, no ablations) or without `--quick` (the
full run with search and ablations, under 60 minutes).
"""

import argparse
import dataclasses
import datetime
import math
import os
import time

from benchmark_utils import machine_info, script_setup, versions

ROOT = script_setup(__file__)

from protocol import Data, Setup, flops_to_reach, interpolate, plot  # noqa: E402

ARMS = ("scratch", "deep_fusion", "self_fusion", "deepen", "stack")
RECIPE = {
    "scratch": "scratch",
    "deep_fusion": "deep_fusion",
    "self_fusion": "self_fusion",
    "deepen": "deepen",
    "stack": "deepen",
}
# Ablations: (label, arm, GrowthCallback options, entry options).
ABLATIONS = (
    ("self_fusion, LR kept (scale 1)", "self_fusion", {"learning_rate_scale": 1.0}, {}),
    ("self_fusion, noise 0", "self_fusion", {}, {"noise": 0.0}),
    ("self_fusion, noise 1e-2", "self_fusion", {}, {"noise": 1e-2}),
    ("self_fusion, LR re-warm-up", "self_fusion", {"rewarmup": True}, {}),
    ("self_fusion, optimizer state reset", "self_fusion", {"optimizer_state": "reset"}, {}),
    ("deep_fusion, LR x 0.5", "deep_fusion", {"learning_rate_scale": 0.5}, {}),
    ("deepen, LR re-warm-up", "deepen", {"rewarmup": True}, {}),
    ("deepen, optimizer state reset", "deepen", {"optimizer_state": "reset"}, {}),
)


def growth_plan(arm, setup):
    """(start config, steps before growth, total steps) of an arm."""
    from keras_fusion import recipes

    start = recipes.start_config(RECIPE[arm], setup.target)
    if arm == "scratch":
        return start, 0, setup.steps
    small = setup.step_flops(start) * (2 if arm == "deep_fusion" else 1)
    growth_step = max(1, round(setup.growth_fraction * setup.budget / small))
    remaining = setup.budget - growth_step * small
    total = growth_step + math.ceil(remaining / setup.step_flops(setup.target))
    total = math.ceil(total / setup.eval_every) * setup.eval_every  # end at or past the budget
    return start, growth_step, total


def train_arm(arm, seed, learning_rate, setup, shared, callback_options=None, entry_options=None):
    """Train one arm for one seed and rate; returns its record."""
    import keras

    from keras_fusion import metrics, optimizers, recipes
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.growth import Deepen, Fuse, SelfFuse

    callback_options = dict(callback_options or {})
    entry_options = dict(entry_options or {})
    started = time.perf_counter()
    keras.backend.clear_session()
    start, growth_step, total = growth_plan(arm, setup)
    every = setup.eval_every
    flops_offset, partner_rows = 0.0, []

    def optimizer():
        return optimizers.make_optimizer("adamw", learning_rate)

    def fit(model, steps, seed, callbacks):
        epochs = math.ceil(steps / every)
        model.fit(
            shared.dataset(seed),
            epochs=epochs,
            steps_per_epoch=every,
            verbose=0,
            callbacks=callbacks,
        )

    eval_data = None
    schedule = []
    if arm == "deep_fusion":
        # The partner trains first, on another seed and data order, for the
        # growth step's length; its FLOPs count towards the arm's.
        partner = recipes.compile_model(recipes.build_model(start, seed + 1000), optimizer())
        eval_data = shared.dataset(0, training=False)
        recorder = metrics.MetricsRecorder(eval_data, *setup.shape, every=growth_step)
        partner.fit(
            shared.dataset(seed + 1000),
            epochs=1,
            steps_per_epoch=growth_step,
            verbose=0,
            callbacks=[recorder],
        )
        flops_offset, partner_rows = recorder.flops, [dataclasses.asdict(r) for r in recorder.rows]
        schedule = [Fuse(at_step=growth_step, partner=partner)]
    elif arm == "self_fusion":
        schedule = [SelfFuse(at_step=growth_step, **entry_options)]
    elif arm in ("deepen", "stack"):
        new_layers = setup.target["num_layers"] - start["num_layers"]
        schedule = [
            Deepen(
                at_step=growth_step,
                num_new_layers=new_layers,
                mode="stack" if arm == "stack" else "identity",
            )
        ]
    model = recipes.compile_model(recipes.build_model(start, seed), optimizer())
    if eval_data is None:
        eval_data = shared.dataset(0, training=False)
    growth = None
    if schedule:
        rewarmup = setup.rewarmup_steps if callback_options.pop("rewarmup", False) else 0
        growth = GrowthCallback(schedule, verbose=0, rewarmup_steps=rewarmup, **callback_options)
    recorder = metrics.MetricsRecorder(
        eval_data, *setup.shape, every=every, flops_offset=flops_offset, growth_callback=growth
    )
    recorder.set_model(model)
    recorder.record(0, math.nan)  # the starting point
    fit(model, total, seed, ([growth] if growth else []) + [recorder])
    rows = [dataclasses.asdict(r) for r in recorder.rows]
    return {
        "arm": arm,
        "seed": seed,
        "learning_rate": learning_rate,
        "callback_options": {k: v for k, v in (callback_options or {}).items()},
        "entry_options": entry_options,
        "growth_step": growth_step,
        "steps": total,
        "start_parameters": rows[0]["num_parameters"],
        "final_parameters": rows[-1]["num_parameters"],
        "rows": rows,
        "partner_rows": partner_rows,
        "loss_at_budget": interpolate(rows, setup.budget),
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarise(records, label, budget, target_loss):
    losses = [r["loss_at_budget"] for r in records]
    reach = [flops_to_reach(r["rows"], target_loss, budget) for r in records]
    reached = [f / budget for f in reach if f is not None]
    return {
        "label": label,
        "learning_rate": records[0]["learning_rate"],
        "seeds": [r["seed"] for r in records],
        "loss_mean": sum(losses) / len(losses),
        "loss_min": min(losses),
        "loss_max": max(losses),
        "fraction_to_reach": [None if f is None else f / budget for f in reach],
        "fraction_to_reach_mean": sum(reached) / len(reached)
        if len(reached) == len(records)
        else None,
        "reached": f"{len(reached)}/{len(records)}",
        "parameters": f"{records[0]['start_parameters']:,} -> {records[0]['final_parameters']:,}",
    }


def table(summaries, target_loss):
    lines = [
        "| arm | LR | eval loss at budget, mean (min-max) "
        f"| FLOPs to reach scratch's {target_loss:.4f}, "
        "fraction of budget (mean; per seed) | parameters |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        per_seed = ", ".join(
            "not reached" if f is None else f"{f:.2f}" for f in s["fraction_to_reach"]
        )
        mean = (
            "-" if s["fraction_to_reach_mean"] is None else f"**{s['fraction_to_reach_mean']:.2f}**"
        )
        lines.append(
            f"| {s['label']} | {s['learning_rate']:g} | {s['loss_mean']:.4f} "
            f"({s['loss_min']:.4f}-{s['loss_max']:.4f}) | {mean} ({per_seed}; {s['reached']}) "
            f"| {s['parameters']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one rate, no search, no ablations, shorter"
    )
    parser.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the ablations (default: on in the full run, off with --quick)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="scratch steps: the budget (default 1200, quick 400)",
    )
    parser.add_argument(
        "--learning_rates",
        default=None,
        help="comma-separated (default 1e-3,3e-3,1e-2; quick 3e-3)",
    )
    parser.add_argument("--growth_fraction", type=float, default=0.25)
    parser.add_argument(
        "--rewarmup_steps", type=int, default=None, help="ramp length of the re-warm-up ablation"
    )
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument(
        "--ablation_filter", default="", help="only ablations whose label contains this"
    )
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "growth_vs_scratch")
    )
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "growth_vs_scratch"))
    args = parser.parse_args()

    steps = args.steps or (400 if args.quick else 1200)
    rates = [
        float(r)
        for r in (args.learning_rates or ("3e-3" if args.quick else "1e-3,3e-3,1e-2")).split(",")
    ]
    ablations = (not args.quick) if args.ablations is None else args.ablations
    arms = args.arms.split(",")
    for arm in arms:
        if arm not in ARMS:
            parser.error(f"--arms: unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    if "scratch" not in arms:
        parser.error("--arms must include scratch (the reference)")
    if args.seeds < 1 or not 0 < args.growth_fraction < 1:
        parser.error("--seeds must be >= 1 and --growth_fraction in (0, 1)")

    from keras_fusion import recipes, storage

    setup = Setup(
        target={},
        steps=steps,
        eval_every=max(steps // 20, 1),
        batch_size=16,
        input_length=64,
        target_length=16,
        growth_fraction=args.growth_fraction,
        rewarmup_steps=args.rewarmup_steps or max(steps // 20, 1),
        eval_batches=8,
    )
    os.makedirs(args.workdir, exist_ok=True)
    shared = Data(1000, args.workdir, setup)
    setup.target = recipes.target_config("tiny", shared.vocabulary_size, num_layers=4)
    budget = setup.budget
    machine = machine_info()
    print(f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs; {versions()}")
    print(
        f"Target {setup.target}; "
        f"batch {setup.batch_size} x ({setup.input_length}, {setup.target_length})"
    )
    print(
        f"Budget {budget:.3e} FLOPs = {steps} scratch steps; "
        f"growth after {args.growth_fraction:.0%} of it; "
        f"rates {rates}; seeds {args.seeds}; ablations {'on' if ablations else 'off'}",
        flush=True,
    )
    started = time.perf_counter()
    runs = []

    def run(arm, seed, rate, callback_options=None, entry_options=None, label=None):
        record = train_arm(arm, seed, rate, setup, shared, callback_options, entry_options)
        record["label"] = label or arm
        runs.append(record)
        print(
            f"  {record['label']:<38} seed {seed} lr {rate:g}: "
            f"loss at budget {record['loss_at_budget']:.4f} "
            f"({record['steps']} steps, "
            f"growth at {record['growth_step']}, {record['seconds']:.0f} s; "
            f"{(time.perf_counter() - started) / 60:.1f} min so far)",
            flush=True,
        )
        return record

    chosen = {}
    for arm in arms:
        search = [run(arm, 0, rate) for rate in rates]
        best = min(search, key=lambda r: r["loss_at_budget"])
        chosen[arm] = best["learning_rate"]
        for seed in range(1, args.seeds):
            run(arm, seed, chosen[arm])

    def final(label, rate):
        return [r for r in runs if r["label"] == label and r["learning_rate"] == rate]

    target_loss = sum(r["loss_at_budget"] for r in final("scratch", chosen["scratch"])) / args.seeds
    summaries = [summarise(final(arm, chosen[arm]), arm, budget, target_loss) for arm in arms]
    ablation_summaries = []
    if ablations:
        for label, arm, callback_options, entry_options in ABLATIONS:
            if arm in chosen and args.ablation_filter in label:
                for seed in range(args.seeds):
                    run(arm, seed, chosen[arm], callback_options, entry_options, label)
                ablation_summaries.append(
                    summarise(final(label, chosen[arm]), label, budget, target_loss)
                )
    elapsed = time.perf_counter() - started

    growing = [
        s for s in summaries if s["label"] != "scratch" and s["fraction_to_reach_mean"] is not None
    ]
    best = min(growing, key=lambda s: s["fraction_to_reach_mean"]) if growing else None
    command = "python benchmarks/growth_vs_scratch.py" + (" --quick" if args.quick else "")
    markdown = "\n\n".join(
        filter(
            None,
            [
                f"Command: `{command}`; {machine['cpu_model']}, {machine['cpu_count']} CPUs; "
                f"{elapsed / 60:.1f} min. "
                f"Budget {budget:.3e} training FLOPs ({steps} steps of the target at batch "
                f"{setup.batch_size}); growth after {args.growth_fraction:.0%} of it; "
                "AdamW at a constant rate "
                f"searched over {rates} on seed 0 for every arm; {args.seeds} seeds.",
                table(summaries, target_loss),
                table(ablation_summaries, target_loss) if ablation_summaries else "",
                (
                    f"Best growth mode: {best['label']}, "
                    f"scratch's loss reached at {best['fraction_to_reach_mean']:.2f} "
                    "of the budget (goal <= 0.6: "
                    f"{'met' if best['fraction_to_reach_mean'] <= 0.6 else 'NOT met'})."
                    if best
                    else (
                        "No growth mode reached scratch's loss on every seed within the budget "
                        "(goal NOT met)."
                    )
                ),
            ],
        )
    )
    result = {
        "benchmark": "growth_vs_scratch",
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions(),
        "setup": dataclasses.asdict(setup),
        "budget": budget,
        "learning_rates": rates,
        "chosen_learning_rates": chosen,
        "seeds": args.seeds,
        "scratch_loss_at_budget": target_loss,
        "summaries": summaries,
        "ablations": ablation_summaries,
        "minutes": elapsed / 60,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    storage.write_json(args.output + ".json", result)
    groups = {arm: final(arm, chosen[arm]) for arm in arms}
    plot(
        groups,
        budget,
        target_loss,
        args.output + ".png",
        f"{setup.target['num_layers']}-layer T5, "
        f"d={setup.target['hidden_dim']}: eval loss against FLOPs "
        f"({args.seeds} seeds per arm)",
    )
    with open(args.output + ".md", "w") as f:
        f.write(markdown + "\n")
    print(markdown)
    print(f"Wrote {args.output}.json, .png, .md")


if __name__ == "__main__":
    main()
