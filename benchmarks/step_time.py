"""How fast a train step of growth_vs_scratch_v2's models runs, by compile setting.

For each model of `--models` (by default the v2 benchmark's hidden-64
target, its half-width model and the hidden-32 target of the width probe;
the hidden-16 target on request) and each
setting of `--settings` (Keras' default `jit_compile="auto"` with one step a
call; XLA with one step a call; XLA with 25 steps a call, what
`make bench-vs-scratch` uses), the one process builds the model, compiles
it, warms it up for 50 steps, then times `--steps` steps of `fit` on a repeated
batch of random tokens (batch 16 x (64, 16), the benchmark's shape). The
settings are measured in turn, for `--rounds` interleaved rounds, so that a
change of machine load falls on all of them; the median per setting is
reported with the ratio to the default. The data pipeline and the held-out
evaluations are not timed.

Run: `python benchmarks/step_time.py` (5.5 min a round on 2 CPU cores, two
rounds by default; `--rounds=1` for the figures in benchmarks/README.md); results
in `benchmarks/results/step_time.json`.
"""

import argparse
import os
import statistics
import time

from benchmark_utils import machine_info, save_json, script_setup, versions

ROOT = script_setup(__file__)

SETTINGS = {"auto": ("auto", 1), "xla": (True, 1), "xla_25": (True, 25)}
MODELS = {  # name: (hidden_dim, divide the width by)
    "d64_target": (64, 1),
    "d64_half": (64, 2),
    "d32_target": (32, 1),
    "d16_target": (16, 1),
}
DEFAULT_MODELS = ("d64_target", "d64_half", "d32_target")


def config(name):
    from protocol import divide_width

    from keras_fusion import recipes

    hidden, parts = MODELS[name]
    target = recipes.target_config(
        "tiny", 1000, num_layers=4, hidden_dim=hidden, intermediate_dim=2 * hidden
    )
    return divide_width(target, parts) if parts > 1 else target


def batches(batch_size=16, input_length=64, target_length=16):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = {
        "encoder_token_ids": rng.integers(1, 1000, (batch_size, input_length)).astype("int32"),
        "encoder_padding_mask": np.ones((batch_size, input_length), "int32"),
        "decoder_token_ids": rng.integers(1, 1000, (batch_size, target_length)).astype("int32"),
        "decoder_padding_mask": np.ones((batch_size, target_length), "int32"),
    }
    y = rng.integers(1, 1000, (batch_size, target_length)).astype("int32")
    weights = np.ones((batch_size, target_length), "float32")
    return tf.data.Dataset.from_tensors((x, y, weights)).repeat()


def time_steps(name, setting, steps):
    """Milliseconds a step of `fit` for one model and setting."""
    import keras

    from keras_fusion import optimizers, recipes

    jit_compile, steps_per_execution = SETTINGS[setting]
    keras.backend.clear_session()
    model = recipes.compile_model(
        recipes.build_model(config(name), 0),
        optimizers.make_optimizer("adamw", 3e-3, "cosine", 10, 10 * steps, global_clipnorm=1.0),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    data = batches()
    model.fit(data, epochs=1, steps_per_epoch=50, verbose=0)  # build, trace, compile
    begin = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return 1000 * (time.perf_counter() - begin) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help=f"of {', '.join(MODELS)}"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=300, help="timed steps (multiple of 25)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "step_time.json")
    )
    args = parser.parse_args(argv)
    models = args.models.split(",")
    settings = args.settings.split(",")
    for name in models:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; known: {', '.join(MODELS)}")
    for setting in settings:
        if setting not in SETTINGS:
            parser.error(f"--settings: unknown {setting!r}; known: {', '.join(SETTINGS)}")
    if args.steps < 25 or args.steps % 25 or args.rounds < 1:
        parser.error("--steps must be a positive multiple of 25 and --rounds >= 1")

    from keras_fusion.growth import parameter_count

    started = time.perf_counter()
    machine = machine_info()
    print(f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs; {versions()}")
    print(f"{args.steps} timed steps a measurement, batch 16 x (64, 16), {args.rounds} rounds")
    times = {name: {setting: [] for setting in settings} for name in models}
    for round_index in range(args.rounds):
        for name in models:
            for setting in settings:
                ms = time_steps(name, setting, args.steps)
                times[name][setting].append(ms)
                print(
                    f"  round {round_index}: {name:<11} {setting:<7} {ms:6.1f} ms a step",
                    flush=True,
                )
    results = {}
    for name in models:
        medians = {s: statistics.median(v) for s, v in times[name].items()}
        model_config = config(name)
        results[name] = {
            "config": model_config,
            "parameters": parameter_count(model_config),
            "ms_per_step": times[name],
            "median_ms_per_step": medians,
            "speedup_over_auto": {s: medians["auto"] / m for s, m in medians.items()}
            if "auto" in medians
            else None,
        }
        print(
            f"{name:<11} ({results[name]['parameters']:,} parameters): "
            + ", ".join(f"{s} {m:.1f} ms" for s, m in medians.items())
            + (
                " | speed-up over auto: "
                + ", ".join(f"{s} {r:.2f}x" for s, r in results[name]["speedup_over_auto"].items())
                if results[name]["speedup_over_auto"]
                else ""
            )
        )
    save_json(
        {
            "benchmark": "step_time",
            "machine": machine,
            "versions": versions(),
            "steps": args.steps,
            "rounds": args.rounds,
            "settings": {
                s: {"jit_compile": SETTINGS[s][0], "steps_per_execution": SETTINGS[s][1]}
                for s in settings
            },
            "results": results,
            "benchmark_wall_seconds": time.perf_counter() - started,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
