"""Which settings train a T5 from scratch best, and does width pay per token?

The "models that learn" issue: with T5's initialisation (token embeddings
of mean 0, `keras_fusion.layers.t5_token_embedding`), which optimizer, rate
and schedule should the recipes use, and does a wider model reach a lower
held-out loss after the same tokens?

Every run trains one model from scratch, the same way:

- a 4-layer T5, `hidden` wide, `hidden // 16` heads of 16 (key_value_dim
  16), feed-forward `2 * hidden`, gated GELU, tied embeddings;
- the `installed` corpus (`keras_fusion.data.installed_corpus`), the
  1,000-id tokenizer, span corruption at batch 16, 64 input and 16 target
  tokens; each seed its own initialisation and data order;
- `--steps` optimizer steps (2,000 by default), the same for every width:
  equal tokens;
- a held-out set of `--eval_batches` (64) batches cut from the validation
  documents in a fixed shuffled order (`random.Random(0)`), scored every
  `--eval_every` steps;
- at the end, `keras_fusion.diagnostics.encoder_use`: the held-out loss
  with every example's encoder input swapped for another example's (a model
  that reads its encoder is clearly worse with it), and the loss on content
  tokens (neither sentinel nor EOS) beside a unigram model's, counted on 200
  training batches.

A run is `(hidden, optimizer, rate, schedule, seed)`; the grid is the product
of `--widths`, `--optimizers`, `--learning_rates`, `--schedules` and
`--seeds`. Optimizers: `adamw`, `adafactor` (Keras' with relative steps and
parameter scaling, T5's: its rate is capped at 1/sqrt(step)),
`adafactor_uncapped` (`keras_fusion.optimizers.UncappedAdafactor`: the same
steps at the rate given), `adamw_scale`
(`keras_fusion.optimizers.AdamWScale`, nanoT5's). Schedules: `cosine`
(linear warm-up over 5% of the steps, cosine decay to 0), `wsd` (the same
warm-up, constant, a linear decay to 0 over the last 20%), `constant` (the
same warm-up, then constant).

Runs go in parts: each invocation appends every finished run to
`<output>.parts/<part>.json` (a run already in any part is skipped, so a
killed part resumes), then merges every part into `<output>.json` and
`<output>.md`: the sweep table (every setting by width, seed 0), the width
scan (mean and sample std over seeds per width and setting) and the goal:
at equal tokens the held-out loss falls at each step of the width scan by
more than twice the larger seed std. `--merge_only` merges without training.

Run (benchmarks/README.md, "Training defaults"):

    python benchmarks/training_defaults.py --widths=32,64 \\
        --optimizers=adamw --learning_rates=1e-3,3e-3,1e-2 --seeds=0
    python benchmarks/training_defaults.py --widths=16,32,64,128 \\
        --optimizers=adafactor --learning_rates=1e-2 --seeds=0,1

`--threads=1` runs TensorFlow on one thread, so that two parts can run side
by side on two cores (losses do not depend on it; the time does).
"""

import argparse
import itertools
import json
import math
import os
import random
import statistics
import sys
import time

from benchmark_utils import (
    corpus_batches,
    machine_info,
    open_part,
    read_parts,
    save_json,
    script_setup,
)

ROOT = script_setup(__file__)

DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "training_defaults")
UNIGRAM_BATCHES = 200
EVAL_SAMPLE = "validation documents shuffled by random.Random(0), first eval_batches batches"
SETUP_FIELDS = (
    "steps",
    "batch_size",
    "input_length",
    "target_length",
    "num_layers",
    "eval_batches",
    "vocabulary_size",
    "corpus",
    "jit_compile",
    "steps_per_execution",
)


def model_config(hidden, num_layers, vocabulary_size):
    """The run's T5: `hidden // 16` heads of 16, feed-forward `2 * hidden`."""
    from keras_fusion import recipes

    return recipes.target_config(
        "tiny",
        vocabulary_size,
        num_layers=num_layers,
        hidden_dim=hidden,
        num_heads=max(1, hidden // 16),
        intermediate_dim=2 * hidden,
        key_value_dim=16,
    )


def run_key(run):
    return (run["hidden"], run["optimizer"], run["learning_rate"], run["schedule"], run["seed"])


def setting(run):
    return f"{run['optimizer']} {run['learning_rate']:g} {run['schedule']}"


class Data:
    """Corpus, tokenizer, training and held-out batches shared by every run."""

    def __init__(self, args):
        from keras_fusion import data

        started = time.perf_counter()
        self.args = args
        load = (
            (lambda split: data.installed_corpus(split))
            if args.corpus == "installed"
            else (lambda split: data.load_corpus(args.corpus, split))
        )
        self.train_texts = load("train")
        self.eval_texts = load("validation")
        random.Random(0).shuffle(self.eval_texts)
        self.tokenizer_path = data.train_tokenizer(
            self.train_texts,
            args.vocabulary_size,
            os.path.join(args.workdir, f"tokenizer_{args.corpus}"),
        )
        self.vocabulary_size = data.vocabulary_size(self.tokenizer_path)
        self.info = {
            "spec": args.corpus,
            "train_documents": len(self.train_texts),
            "validation_documents": len(self.eval_texts),
            "train_characters": sum(map(len, self.train_texts)),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def dataset(self, seed, training=True):
        args = self.args
        return corpus_batches(
            self.train_texts if training else self.eval_texts,
            self.tokenizer_path,
            self.vocabulary_size,
            (args.batch_size, args.input_length, args.target_length),
            seed,
            training,
            args.eval_batches,
        )


def train_run(run, args, shared, unigram):
    """Train one run; returns its record (curve and encoder check)."""
    import keras

    from keras_fusion import diagnostics, metrics, optimizers, recipes

    started = time.perf_counter()
    keras.backend.clear_session()
    config = model_config(run["hidden"], args.num_layers, shared.vocabulary_size)
    warmup = max(1, round(optimizers.WARMUP_FRACTION * args.steps))
    optimizer = optimizers.make_optimizer(
        run["optimizer"], run["learning_rate"], run["schedule"], warmup, args.steps
    )
    model = recipes.compile_model(
        recipes.build_model(config, run["seed"]),
        optimizer,
        jit_compile=args.jit_compile,
        steps_per_execution=args.steps_per_execution,
    )
    eval_data = shared.dataset(0, training=False)
    shape = (args.batch_size, args.input_length, args.target_length)
    recorder = metrics.MetricsRecorder(eval_data, *shape, every=args.eval_every)
    recorder.set_model(model)
    recorder.record(0, math.nan)
    model.fit(
        shared.dataset(run["seed"]),
        epochs=1,
        steps_per_epoch=args.steps,
        verbose=0,
        callbacks=[recorder],
        shuffle=False,  # a dataset, shuffled by its seed
    )
    rows = [dict(vars(row)) for row in recorder.rows]
    use = diagnostics.encoder_use(model.lm, eval_data, unigram)
    final = rows[-1]["eval_loss"]
    return dict(
        run,
        parameters=rows[-1]["num_parameters"],
        rows=rows,
        final_loss=final,
        finite=math.isfinite(final),
        encoder_use=use,
        seconds=round(time.perf_counter() - started, 1),
    )


def check_compatible(parts):
    """Every part must share the setup; name the first field that differs."""
    for part in parts[1:]:
        for field in SETUP_FIELDS:
            if part["setup"].get(field) != parts[0]["setup"].get(field):
                raise SystemExit(
                    f"Part {part['name']} has {field}={part['setup'].get(field)!r}, "
                    f"part {parts[0]['name']} has {parts[0]['setup'].get(field)!r}: "
                    "parts of one result must share the setup (use another --output)."
                )


def mean_std(values):
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def summarise(runs):
    """Best setting per width (seed 0), the width scan and the goal."""
    by_setting = {}
    for run in runs:
        by_setting.setdefault(setting(run), {}).setdefault(run["hidden"], []).append(run)
    sweep = {}
    for run in runs:
        if run["seed"] == 0:
            sweep.setdefault(str(run["hidden"]), {})[setting(run)] = run["final_loss"]
    best = {
        width: min(losses, key=lambda k: losses[k] if math.isfinite(losses[k]) else math.inf)
        for width, losses in sweep.items()
    }
    scans = {}
    for name, widths in by_setting.items():
        rows = []
        for hidden in sorted(widths):
            group = widths[hidden]
            mean, std = mean_std(r["final_loss"] for r in group)
            use = [r["encoder_use"] for r in group]
            rows.append(
                dict(
                    hidden=hidden,
                    parameters=group[0]["parameters"],
                    seeds=sorted(r["seed"] for r in group),
                    final_loss_mean=mean,
                    final_loss_std=std,
                    mismatched_encoder_loss_mean=statistics.fmean(
                        u["mismatched_encoder_loss"] for u in use
                    ),
                    content_loss_mean=statistics.fmean(u["content_loss"] for u in use),
                    content_unigram_loss=use[0].get("content_unigram_loss"),
                )
            )
        steps = []
        for small, large in zip(rows, rows[1:]):
            stds = [s for s in (small["final_loss_std"], large["final_loss_std"]) if s is not None]
            gain = small["final_loss_mean"] - large["final_loss_mean"]
            margin = 2 * max(stds) if len(stds) == 2 else None
            steps.append(
                dict(
                    widths=[small["hidden"], large["hidden"]],
                    gain=gain,
                    twice_seed_std=margin,
                    passed=None if margin is None else gain > margin,
                )
            )
        scans[name] = dict(rows=rows, steps=steps)
    scanned = {k: v for k, v in scans.items() if len(v["rows"]) >= 2 and v["steps"]}
    goal = {
        name: all(s["passed"] for s in scan["steps"])
        for name, scan in scanned.items()
        if all(s["passed"] is not None for s in scan["steps"])
    }
    return dict(sweep=sweep, best_setting=best, width_scans=scans, goal_met=goal)


def fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "diverged"
    return str(value)


def table(summary):
    lines = ["## Sweep (seed 0): held-out loss after the same steps", ""]
    widths = sorted(summary["sweep"], key=int)
    settings = sorted({s for w in widths for s in summary["sweep"][w]})
    lines.append("| setting | " + " | ".join(f"hidden {w}" for w in widths) + " |")
    lines.append("|---" * (len(widths) + 1) + "|")
    for name in settings:
        cells = []
        for w in widths:
            loss = summary["sweep"][w].get(name)
            cell = fmt(loss)
            if summary["best_setting"].get(w) == name:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Width scans (mean ± sample std over seeds)", ""]
    for name, scan in sorted(summary["width_scans"].items()):
        if len(scan["rows"]) < 2:
            continue
        lines += [
            f"### {name}",
            "",
            "| hidden | parameters | seeds | held-out loss | with another example's encoder "
            "| content tokens | unigram on content tokens |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in scan["rows"]:
            lines.append(
                f"| {row['hidden']} | {row['parameters']:,} | {len(row['seeds'])} "
                f"| {fmt(row['final_loss_mean'])} ± {fmt(row['final_loss_std'])} "
                f"| {fmt(row['mismatched_encoder_loss_mean'])} | {fmt(row['content_loss_mean'])} "
                f"| {fmt(row['content_unigram_loss'])} |"
            )
        lines.append("")
        for step in scan["steps"]:
            verdict = {True: "passed", False: "not passed", None: "one seed: not assessed"}
            lines.append(
                f"- hidden {step['widths'][0]} -> {step['widths'][1]}: gain "
                f"{fmt(step['gain'])} against twice the seed std {fmt(step['twice_seed_std'])}: "
                f"{verdict[step['passed']]}"
            )
        lines.append("")
    return "\n".join(lines)


def merge(prefix):
    parts = read_parts(prefix)
    if not parts:
        raise SystemExit(f"No part files under {prefix}.parts/")
    check_compatible(parts)
    runs = [run for part in parts for run in part["runs"]]
    summary = summarise(runs)
    result = dict(
        benchmark="training_defaults",
        machine=parts[0]["machine"],
        versions=parts[0]["versions"],
        setup=parts[0]["setup"],
        corpus=parts[0]["corpus"],
        parts=[dict(name=p["name"], date=p["date"], seconds=p["seconds"]) for p in parts],
        summary=summary,
        runs=runs,
    )
    save_json(result, prefix + ".json")
    header = (
        "# Training defaults: optimizer, rate, schedule and width, from scratch\n\n"
        f"Machine: {result['machine']['cpu_model']}, {result['machine']['cpu_count']} CPUs. "
        f"Setup: {json.dumps(result['setup'])}. Corpus: {json.dumps(result['corpus'])}. "
        f"Parts: {', '.join(p['name'] for p in result['parts'])}.\n\n"
    )
    with open(prefix + ".md", "w") as f:
        f.write(header + table(summary) + "\n")
    print(table(summary))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="32,64", help="hidden widths, comma-separated")
    parser.add_argument(
        "--optimizers", default="adamw", help="adamw, adafactor, adafactor_uncapped, adamw_scale"
    )
    parser.add_argument("--learning_rates", default="3e-3", help="peak rates, comma-separated")
    parser.add_argument("--schedules", default="cosine", help="cosine, wsd, constant")
    parser.add_argument("--seeds", default="0", help="seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--target_length", type=int, default=16)
    parser.add_argument("--vocabulary_size", type=int, default=1000)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_batches", type=int, default=64)
    parser.add_argument("--corpus", default="installed", help="'installed' or 'embedded' (tests)")
    parser.add_argument("--jit_compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps_per_execution", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: all)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="results prefix")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "training_defaults"))
    parser.add_argument("--part", default=None, help="part file name (default: from the grid)")
    parser.add_argument("--merge_only", action="store_true")
    args = parser.parse_args(argv)

    if args.merge_only:
        merge(args.output)
        return
    if args.eval_every % args.steps_per_execution or args.steps % args.eval_every:
        parser.error(
            f"--steps_per_execution={args.steps_per_execution} must divide --eval_every="
            f"{args.eval_every}, which must divide --steps={args.steps}."
        )
    from keras_fusion import optimizers

    for flag, allowed in (
        ("optimizers", optimizers.OPTIMIZERS),
        ("schedules", optimizers.LR_SCHEDULES),
    ):
        for value in getattr(args, flag).split(","):
            if value not in allowed:
                parser.error(f"--{flag}: unknown {value!r}; allowed: {', '.join(allowed)}.")
    grid = [
        dict(hidden=int(h), optimizer=o, learning_rate=float(r), schedule=s, seed=int(seed))
        for h, o, r, s, seed in itertools.product(
            args.widths.split(","),
            args.optimizers.split(","),
            args.learning_rates.split(","),
            args.schedules.split(","),
            args.seeds.split(","),
        )
    ]
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from keras_fusion import diagnostics

    os.makedirs(args.workdir, exist_ok=True)
    setup = {field: getattr(args, field) for field in SETUP_FIELDS}
    setup.update(
        warmup_fraction=optimizers.WARMUP_FRACTION,
        eval_every=args.eval_every,
        eval_sample=EVAL_SAMPLE,
    )
    done = {run_key(r) for part in read_parts(args.output) for r in part["runs"]}
    todo = [run for run in grid if run_key(run) not in done]
    print(f"Machine: {machine_info()}\nSetup: {setup}\n{len(todo)} of {len(grid)} runs to do")
    if not todo:
        merge(args.output)
        return
    shared = Data(args)
    unigram = diagnostics.unigram_counts(shared.dataset(12345), shared.vocabulary_size, 200)
    name = args.part or "_".join(
        [
            "h" + args.widths.replace(",", "-"),
            args.optimizers.replace(",", "-"),
            "lr" + args.learning_rates.replace(",", "-"),
            args.schedules.replace(",", "-"),
            "s" + args.seeds.replace(",", "-"),
        ]
    )
    path = os.path.join(args.output + ".parts", name + ".json")
    part = open_part(path, setup=setup, corpus=shared.info, threads=args.threads)
    for run in todo:
        record = train_run(run, args, shared, unigram)
        part["runs"].append(record)
        part["seconds"] = round(part["seconds"] + record["seconds"], 1)
        save_json(part, path)
        use = record["encoder_use"]
        print(
            f"hidden {run['hidden']} {setting(run)} seed {run['seed']}: "
            f"{fmt(record['final_loss'])} (other encoder {fmt(use['mismatched_encoder_loss'])}, "
            f"content {fmt(use['content_loss'])} vs unigram "
            f"{fmt(use.get('content_unigram_loss'))}) in {record['seconds']} s",
            flush=True,
        )
    merge(args.output)


if __name__ == "__main__":
    sys.exit(main())
