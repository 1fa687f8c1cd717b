"""After a growth: which rate, optimizer state and growth time train best?

Issue 21's item 2 tunes the method after the growth, never the baseline.
Each run is `tools.train` (`keras_fusion.training.run`) with the library's
default optimizer, rate and schedule (Adafactor 3e-2, warm-up then cosine),
one `--recipes` growth from half the width (or depth) of `--preset` at a
growth step, and one named setting of what happens at the growth
(`SETTINGS`):

- `carry`: slots mapped with their variables, the rate kept (scale 1; the
  library's defaults until this benchmark chose `rate_x1.41` and `rate_x2`
  for `learning_rate_scale="auto"`);
- `reset`: the optimizer slots start from zero at the growth;
- `rewarm`: the rate ramps from zero again over `--rewarmup_steps` steps;
- `rate_x0.5`: the rate halves from the growth on (old/new width, the rule
  made for Adam's fixed-size steps);
- `rate_x1.41`: the rate grows by sqrt(2). Adafactor's step is relative to a
  variable's RMS, and a fused kernel's zero off-diagonal blocks lower that
  RMS by sqrt(2) (two of four blocks are zero), so its first steps after
  Deep Fusion are sqrt(2) smaller than its partners' were; this restores
  them for the kernels (norm scales and embeddings keep their RMS);
- `reset_rate_x1.41`: both of the two above;
- `reset_new`, `reset_new_rate_x1.41`: the slots carried, but zero on the
  entries the growth creates (`optimizer_slots="reset_new"`, SPARKLING's
  choice: a fusion's off-diagonal blocks), at scale 1 and sqrt(2);
- `rate_x2`: the rate doubles. Self fusion halves every kernel entry (each
  input half carries `W/2`), so a self-fused kernel's RMS, and with it
  Adafactor's step, is half the model's: this restores it.
- `noise_0`, `noise_0.01`: self fusion (only) with no symmetry-breaking
  noise, or ten times the default 1e-3, at `rate_x2`'s rate.

A run is `(recipe, setting, growth_step, seed)`, the grid the product of
`--recipes`, `--settings`, `--growth_steps` and `--seeds`. Per run the
result gives the held-out loss at the growth, its highest value in the
`--jump_window` steps after it (the jump a growth costs), and the final
held-out loss; the merged table gives the mean and sample std over seeds
per recipe, setting and growth step, and marks the lowest final mean per
recipe.

Runs go in parts: each invocation appends every finished run to
`<output>.parts/<part>.json` (a run already in any part is skipped, so a
killed part resumes), then merges every part into `<output>.json` and
`.md`. `--threads=1` lets two parts share 2 cores.

Run: `python benchmarks/after_growth.py --threads=1 --seeds=0,1` (the
defaults: Deep Fusion and self fusion, every setting, growth at 600 of
2,400 steps of the tiny preset on the installed corpus; about 3 to 5 min a
run on one core).
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import time

from benchmark_utils import machine_info, mean_std, open_part, read_parts, save_json, script_setup

ROOT = script_setup(__file__)
DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "after_growth")
# What each setting changes in RunConfig (the rest is the library's default).
# The rate scale is pinned in each (learning_rate_scale="auto" is now the
# measured choice: sqrt(2) after fuse, 2 after self fusion, under Adafactor).
SETTINGS = {
    "carry": dict(learning_rate_scale="1"),
    "reset": dict(growth_optimizer_state="reset", learning_rate_scale="1"),
    "rewarm": dict(rewarmup_steps=None, learning_rate_scale="1"),  # None: --rewarmup_steps
    "rate_x0.5": dict(learning_rate_scale="0.5"),
    "rate_x1.41": dict(learning_rate_scale="1.41"),
    "reset_rate_x1.41": dict(growth_optimizer_state="reset", learning_rate_scale="1.41"),
    "reset_new": dict(growth_optimizer_state="reset_new", learning_rate_scale="1"),
    "reset_new_rate_x1.41": dict(growth_optimizer_state="reset_new", learning_rate_scale="1.41"),
    "rate_x2": dict(learning_rate_scale="2"),
    # Self fusion's symmetry-breaking noise (the library's default 1e-3),
    # at the rate its "auto" scale gives (x2); self_fusion only.
    "noise_0": dict(learning_rate_scale="2", self_fuse_noise=0.0),
    "noise_0.01": dict(learning_rate_scale="2", self_fuse_noise=0.01),
}
NOISE_RECIPES = ("self_fusion",)
SETUP_FIELDS = (
    "preset",
    "steps",
    "eval_every",
    "eval_batches",
    "data",
    "rewarmup_steps",
    "jump_window",
    "jit_compile",
    "steps_per_execution",
)


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


def run_key(run):
    return (run["recipe"], run["setting"], run["growth_step"], run["seed"])


def overrides(setting, args, growth_step=None):
    """RunConfig keyword arguments of a named setting (a noise setting is
    self fusion's schedule at `growth_step`, as `--growth_schedule` gives it)."""
    changes = dict(SETTINGS[setting])
    if "rewarmup_steps" in changes:
        changes["rewarmup_steps"] = args.rewarmup_steps
    if "self_fuse_noise" in changes:
        noise = changes.pop("self_fuse_noise")
        changes["growth_schedule"] = f"self_fuse@{growth_step}:noise={noise:g}"
    return changes


def make_grid(recipes, settings, growth_steps, seeds):
    """The runs of the product, less a noise setting's runs of recipes that do not self-fuse."""
    return [
        dict(recipe=r, setting=s, growth_step=g, seed=int(seed))
        for r, s, g, seed in itertools.product(recipes, settings, growth_steps, seeds)
        if r in NOISE_RECIPES or "self_fuse_noise" not in SETTINGS[s]
    ]


def one_run(run, args):
    from keras_fusion import storage, training

    recipe, setting, growth_step, seed = run_key(run)
    model_dir = os.path.join(args.workdir, f"{recipe}_{setting}_g{growth_step}_s{seed}")
    config = training.RunConfig(
        recipe=recipe,
        preset=args.preset,
        steps=args.steps,
        growth_step=growth_step,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        data=args.data,
        seed=seed,
        checkpoint_every=args.steps,
        jit_compile="true" if args.jit_compile else "auto",
        steps_per_execution=args.steps_per_execution,
        model_dir=model_dir,
        fresh=True,
        **overrides(setting, args, growth_step),
    )
    started = time.perf_counter()
    training.run(config)
    metrics = storage.read_json(storage.join(model_dir, "metrics.json"))
    # The last curve is the model the run ends with (Deep Fusion's root,
    # whose first row is the fused model at the growth); the others end at
    # the growth (Deep Fusion's two partners).
    *inputs, (label, rows) = metrics["curves"].items()
    return dict(
        run,
        config={k: metrics["config"][k] for k in ("optimizer", "learning_rate", "lr_schedule")},
        curve=label,
        inputs_final={name: curve[-1]["eval_loss"] for name, curve in inputs},
        encoder_use=metrics["encoder_use"],
        rows=rows,
        seconds=round(time.perf_counter() - started, 1),
        **summarise_curve(rows, growth_step, args.jump_window),
    )


def table(runs):
    """Markdown rows of mean ± sample std over seeds per (recipe, setting,
    growth step), the lowest final mean per recipe in bold, and the best
    (setting, growth step) per recipe."""
    groups = {}
    for run in runs:
        groups.setdefault(run_key(run)[:3], []).append(run)
    best = {}
    for (recipe, setting, growth_step), group in groups.items():
        final = statistics.fmean(r["final"] for r in group)
        if recipe not in best or final < best[recipe][1]:
            best[recipe] = ((setting, growth_step), final)
    lines = [
        "| recipe | setting | growth step | seeds | at the growth | highest after | final |",
        "|---|---|---|---|---|---|---|",
    ]
    for (recipe, setting, growth_step), group in sorted(groups.items()):
        cells = []
        for field in ("at_growth", "highest_after", "final"):
            mean, std = mean_std([r[field] for r in group])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        if best[recipe][0] == (setting, growth_step):
            cells[-1] = f"**{cells[-1]}**"
        lines.append(
            f"| {recipe} | {setting} | {growth_step} | {len(group)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines), {recipe: list(choice) for recipe, (choice, _) in best.items()}


def merge(output):
    """Merge the part files into `<output>.json` and `.md`; returns the markdown."""
    parts = read_parts(output)
    if not parts:
        raise SystemExit(f"No part files under {output}.parts/.")
    setups = {json.dumps(p["setup"], sort_keys=True) for p in parts}
    if len(setups) > 1:
        raise SystemExit(f"The parts under {output}.parts/ have different setups: {setups}.")
    runs = [r for p in parts for r in p["runs"]]
    text, best = table(runs)
    result = dict(
        benchmark="after_growth",
        setup=parts[0]["setup"],
        parts=[
            dict(name=p["name"], date=p["date"], machine=p["machine"], seconds=p["seconds"])
            for p in parts
        ],
        versions=parts[0]["versions"],
        best=best,
        runs=runs,
    )
    save_json(result, output + ".json")
    machines = sorted(
        {f"{p['machine']['cpu_model']}, {p['machine']['cpu_count']} CPUs" for p in parts}
    )
    markdown = (
        "# After a growth: rate, optimizer state and growth time\n\n"
        f"Machines: {'; '.join(machines)}. Setup: {json.dumps(result['setup'])}; optimizer "
        f"{json.dumps(runs[0]['config'])}. Parts: "
        + ", ".join(f"{p['name']} ({p['seconds'] / 60:.1f} min)" for p in parts)
        + ".\n\n"
        + text
        + "\n"
    )
    with open(output + ".md", "w") as f:
        f.write(markdown)
    return markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="deep_fusion,self_fusion")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}"
    )
    parser.add_argument("--growth_steps", default="600", help="comma-separated growth steps")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--eval_batches", type=int, default=64)
    parser.add_argument("--rewarmup_steps", type=int, default=100, help="the rewarm setting's")
    parser.add_argument("--jump_window", type=int, default=200)
    parser.add_argument("--data", default="installed")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps_per_execution", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: all)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="results prefix")
    parser.add_argument("--part", default=None, help="part file name (default: from the grid)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "after_growth"))
    parser.add_argument("--merge_only", action="store_true")
    args = parser.parse_args(argv)
    if args.merge_only:
        print(merge(args.output))
        return
    settings = args.settings.split(",")
    for setting in settings:
        if setting not in SETTINGS:
            parser.error(f"--settings: unknown {setting!r}; allowed: {', '.join(SETTINGS)}.")
        if "self_fuse_noise" in SETTINGS[setting] and not any(
            recipe in NOISE_RECIPES for recipe in args.recipes.split(",")
        ):
            parser.error(
                f"--settings: {setting!r} sets self fusion's noise; --recipes={args.recipes!r} "
                f"has no recipe that self-fuses (it applies to: {', '.join(NOISE_RECIPES)})."
            )
    growth_steps = [int(s) for s in args.growth_steps.split(",")]
    for growth_step in growth_steps:
        if not 0 < growth_step < args.steps:
            parser.error(f"--growth_step={growth_step} must be in (0, --steps={args.steps}).")
        if growth_step % args.steps_per_execution:
            parser.error(
                f"--growth_steps: {growth_step} is not a multiple of --steps_per_execution="
                f"{args.steps_per_execution}."
            )
    grid = make_grid(args.recipes.split(","), settings, growth_steps, args.seeds.split(","))
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    setup = {field: getattr(args, field) for field in SETUP_FIELDS}
    done = {run_key(r) for part in read_parts(args.output) for r in part["runs"]}
    todo = [run for run in grid if run_key(run) not in done]
    print(f"Machine: {machine_info()}\nSetup: {setup}\n{len(todo)} of {len(grid)} runs to do")
    name = args.part or "_".join(
        [
            args.recipes.replace(",", "-"),
            args.settings.replace(",", "-"),
            "g" + args.growth_steps.replace(",", "-"),
            "s" + args.seeds.replace(",", "-"),
        ]
    )
    path = os.path.join(args.output + ".parts", name + ".json")
    part = open_part(path, setup=setup, threads=args.threads)
    if part["setup"] != setup:
        parser.error(f"{path} was measured with another setup: {part['setup']}.")
    for run in todo:
        print(f"== {run}", flush=True)
        record = one_run(run, args)
        part["runs"].append(record)
        part["seconds"] = round(part["seconds"] + record["seconds"], 1)
        save_json(part, path)
        print(
            f"{run}: at the growth {record['at_growth']:.4f}, highest after "
            f"{record['highest_after']:.4f}, final {record['final']:.4f} "
            f"({record['seconds']:.0f} s)",
            flush=True,
        )
    print(merge(args.output))


if __name__ == "__main__":
    sys.exit(main())
