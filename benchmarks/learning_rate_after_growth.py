"""The learning rate after a width growth: which `--learning_rate_scale` rule?

Under Adam a wider model often wants a smaller rate (standard
parametrisation), so the rate after Deep Fusion or self fusion might have to
fall with the width. Each run is `tools.train` (`keras_fusion.training.run`)
with its default optimizer, rate and schedule, the `--recipes` growth from
half the width of `--preset` at `--growth_step`, and one
`--learning_rate_scale` value of `--scales` (the factor applied to the rate
from the growth on; `width` is old/new hidden width, 0.5 here; `auto` is 1
after fuse and 0.5 after self fusion). Per run the result gives the held-out
loss at the growth, its highest value in the `--jump_window` steps after it
(the jump a growth costs), and the final held-out loss; the rule with the
lowest final loss per recipe is the measured choice.

Run: `python benchmarks/learning_rate_after_growth.py` (4 runs of the demo's
shape on the embedded corpus; about 3 min each on 2 CPU cores). Finished
runs are kept in the output JSON and skipped, so a killed run resumes.
"""

import argparse
import json
import os
import sys
import time

from benchmark_utils import machine_info, save_json, script_setup, versions

ROOT = script_setup(__file__)
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "learning_rate_after_growth.json")


def summarise_curve(rows, growth_step, window):
    """Loss at the growth, the highest loss within `window` steps after it,
    and the final loss, from the main model's rows."""
    at = [r for r in rows if r["step"] <= growth_step]
    after = [r for r in rows if growth_step < r["step"] <= growth_step + window]
    return dict(
        at_growth=at[-1]["eval_loss"] if at else None,
        highest_after=max(r["eval_loss"] for r in after) if after else None,
        final=rows[-1]["eval_loss"],
    )


def one_run(recipe, scale, args):
    from keras_fusion import storage, training

    model_dir = os.path.join(args.workdir, f"{recipe}_{scale}")
    config = training.RunConfig(
        recipe=recipe,
        preset=args.preset,
        steps=args.steps,
        growth_step=args.growth_step,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        data=args.data,
        learning_rate_scale=scale,
        checkpoint_every=args.steps,
        model_dir=model_dir,
        fresh=True,
    )
    started = time.perf_counter()
    training.run(config)
    metrics = storage.read_json(storage.join(model_dir, "metrics.json"))
    rows = metrics["curves"][recipe]
    return dict(
        recipe=recipe,
        learning_rate_scale=scale,
        config={k: metrics["config"][k] for k in ("optimizer", "learning_rate", "lr_schedule")},
        rows=rows,
        seconds=round(time.perf_counter() - started, 1),
        **summarise_curve(rows, args.growth_step, args.jump_window),
    )


def table(runs):
    lines = [
        "| recipe | learning_rate_scale | at the growth | highest after | final |",
        "|---|---|---|---|---|",
    ]
    best = {}
    for run in runs:
        if run["recipe"] not in best or run["final"] < best[run["recipe"]]["final"]:
            best[run["recipe"]] = run
    for run in runs:
        final = f"{run['final']:.4f}"
        if best[run["recipe"]] is run:
            final = f"**{final}**"
        lines.append(
            f"| {run['recipe']} | {run['learning_rate_scale']} | {run['at_growth']:.4f} "
            f"| {run['highest_after']:.4f} | {final} |"
        )
    return "\n".join(lines), {k: v["learning_rate_scale"] for k, v in best.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="deep_fusion,self_fusion")
    parser.add_argument("--scales", default="1,0.5", help="learning_rate_scale values")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--growth_step", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--eval_batches", type=int, default=64)
    parser.add_argument("--jump_window", type=int, default=200)
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--workdir", default=os.path.join(ROOT, "runs", "learning_rate_after_growth")
    )
    args = parser.parse_args(argv)
    if not 0 < args.growth_step < args.steps:
        parser.error(f"--growth_step={args.growth_step} must be in (0, --steps={args.steps}).")
    setup = {
        k: getattr(args, k)
        for k in ("preset", "steps", "growth_step", "eval_every", "eval_batches", "data")
    }
    result = dict(
        benchmark="learning_rate_after_growth",
        machine=machine_info(),
        versions=versions(),
        setup=setup,
        runs=[],
    )
    if os.path.exists(args.output):
        with open(args.output) as f:
            previous = json.load(f)
        if previous["setup"] == setup:
            result["runs"] = previous["runs"]
    done = {(r["recipe"], r["learning_rate_scale"]) for r in result["runs"]}
    for recipe in args.recipes.split(","):
        for scale in args.scales.split(","):
            if (recipe, scale) in done:
                continue
            print(f"== {recipe}, learning_rate_scale={scale}", flush=True)
            result["runs"].append(one_run(recipe, scale, args))
            text, best = table(result["runs"])
            result["best_scale"] = best
            save_json(result, args.output)
            print(text, flush=True)
    text, best = table(result["runs"])
    with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
        f.write(
            "# Learning rate after a width growth\n\n"
            f"Machine: {result['machine']['cpu_model']}, {result['machine']['cpu_count']} CPUs. "
            f"Setup: {json.dumps(setup)}; optimizer {json.dumps(result['runs'][0]['config'])}.\n\n"
            + text
            + "\n"
        )
    print(f"Best learning_rate_scale per recipe: {best}")


if __name__ == "__main__":
    sys.exit(main())
