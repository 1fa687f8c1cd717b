"""What does Deep Fusion cost, compared with building the fused model fresh?

Fuses two keras-hub `T5Backbone`s of T5-small size (vocabulary 32128, hidden
512, 6 encoder + 6 decoder layers, 8 heads, feed-forward 2048, dropout 0,
keras-hub defaults otherwise: gated activation, tied embeddings) with
`FusionT5Backbone.fuse(a, b)`, and measures, in one run:

1. the wall time and peak memory of `fuse`;
2. the wall time (and peak memory) of constructing the same fused
   architecture from scratch with random initialisation,
   `FusionT5Backbone(**fused.get_config())`;
3. their ratios, against the goals (reported, not asserted):
   fuse time <= 1.5 x scratch time, and
   fuse peak memory <= 2 x fused parameter bytes + input parameter bytes;
4. a breakdown of `fuse` into its steps (reading the inputs and computing
   the fused parameters in NumPy, building the model with its variables
   created from those parameters), unless `--no-breakdown`.

How it measures:
- Each operation runs in a fresh process (multiprocessing "spawn"). Before
  measuring, that process imports TensorFlow/Keras, builds and fuses two tiny
  models (so import and first-trace costs are not counted), and builds the
  two input backbones (also for the from-scratch run, so both start from the
  same state).
- Time: `time.perf_counter` around the operation, repeated `--repeats` times
  (default 3) in that process, the result freed between repeats; the median
  is reported, with every repeat in the JSON. The ratio of the first runs
  alone is printed too: a first run pays for fresh memory (page faults),
  later ones reuse what the allocators kept, and `fuse` touches about twice
  the memory the from-scratch construction does. Wall times of such runs
  vary from run to run on a small shared machine; compare several runs, or
  the user/system CPU seconds recorded per repeat in the JSON.
- Peak memory: TensorFlow's allocations are invisible to `tracemalloc`, so
  the process's resident memory is used. The peak (VmHWM) is reset through
  `/proc/self/clear_refs` just before the operation and read after it; the
  figure is the peak minus the resident memory just before (inputs built).
  Where the reset is not allowed, a thread samples VmRSS every millisecond
  instead. The headline figure is the first repeat's, in the fresh process;
  later repeats reuse memory the allocators kept from the earlier ones.
- Parameter bytes are the sums of `size * itemsize` over `model.weights`.

Run: `make bench` (which runs `python benchmarks/growth_cost.py`), or
`python benchmarks/growth_cost.py --quick` for a small config that runs in
well under a minute. Prints the machine, library versions, the config, the
figures and a markdown table for benchmarks/README.md; writes the figures as JSON to
`benchmarks/results/growth_cost.json` (`growth_cost_quick.json` with
`--quick`; `--output PATH` to choose).
"""

import argparse
import datetime
import gc
import json
import os
import statistics
import threading
import time

from benchmark_utils import in_fresh_process, machine_info, save_json, script_setup, versions

ROOT = script_setup(__file__)

MIB = 1024 * 1024

# T5-small's shape, keras-hub defaults otherwise (gated, tied embeddings).
FULL_CONFIG = dict(
    vocabulary_size=32128,
    hidden_dim=512,
    num_layers=6,
    num_heads=8,
    intermediate_dim=2048,
    dropout=0.0,
)
QUICK_CONFIG = dict(
    vocabulary_size=4096,
    hidden_dim=128,
    num_layers=2,
    num_heads=4,
    intermediate_dim=512,
    dropout=0.0,
)
TIME_GOAL = 1.5  # fuse time / scratch time
MEMORY_GOAL = "2 * fused parameter bytes + input parameter bytes"


# --- Measurement helpers (run in the worker processes) ----------------------


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss():
    return _status_kib("VmRSS") * 1024


class PeakMemory:
    """Peak resident memory of the process over a `with` block, in bytes."""

    def __enter__(self):
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM after reset through /proc/self/clear_refs"
            self._sampler = None
        except OSError:
            self.method = "VmRSS sampled every 1 ms"
            self._peak = 0
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.before = _rss()
        if self._sampler is not None:
            self._peak = self.before
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self._sampler is None:
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self._peak, _rss())
        self.after = _rss()
        self.increase = self.peak - self.before
        return False


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _parameter_bytes(model):
    import numpy as np

    return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights))


def _setup(config):
    """Warm up, then build the two input backbones (seeded)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*does not support masking.*")
    import keras
    import keras_hub

    from keras_fusion.models import FusionT5Backbone

    keras.utils.set_random_seed(0)
    tiny = dict(
        vocabulary_size=64,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        dropout=0.0,
    )
    small = [keras_hub.models.T5Backbone(**tiny) for _ in range(2)]
    FusionT5Backbone.fuse(*small)
    FusionT5Backbone(**tiny)
    del small
    a = keras_hub.models.T5Backbone(**config)
    b = keras_hub.models.T5Backbone(**config)
    gc.collect()
    return a, b


def _measure(operation, repeats, inspect=None):
    """Run `operation` `repeats` times, timing each and measuring its memory.

    `inspect(result)`, if given, is called on the first result, outside the
    measured region; its dict is merged into the returned stats.
    """
    runs = []
    info = {}
    for i in range(repeats):
        user0, sys0 = _cpu_seconds()
        with PeakMemory() as memory:
            start = time.perf_counter()
            result = operation()
            seconds = time.perf_counter() - start
        user1, sys1 = _cpu_seconds()
        runs.append(
            dict(
                seconds=seconds,
                user_cpu_seconds=user1 - user0,
                system_cpu_seconds=sys1 - sys0,
                rss_before_bytes=memory.before,
                peak_rss_bytes=memory.peak,
                peak_increase_bytes=memory.increase,
                rss_after_bytes=memory.after,
            )
        )
        if i == 0 and inspect is not None:
            info = inspect(result)
        del result
        gc.collect()
    stats = dict(
        runs=runs,
        median_seconds=statistics.median(r["seconds"] for r in runs),
        peak_increase_bytes=runs[0]["peak_increase_bytes"],
        memory_method=memory.method,
    )
    stats.update(info)
    return stats


# --- Worker entry points (each runs in a fresh spawned process) -------------


def worker_fuse(config, repeats):
    a, b = _setup(config)
    from keras_fusion.models import FusionT5Backbone
    from keras_fusion.models.fusion_t5_backbone import backbone_config

    def inspect(fused):
        return dict(
            # JSON round trip: plain lists instead of Keras' tracked ones.
            fused_config=json.loads(json.dumps(backbone_config(fused))),
            fused_parameters=int(fused.count_params()),
            fused_parameter_bytes=_parameter_bytes(fused),
        )

    stats = _measure(lambda: FusionT5Backbone.fuse(a, b), repeats, inspect)
    stats["input_parameters"] = [int(m.count_params()) for m in (a, b)]
    stats["input_parameter_bytes"] = _parameter_bytes(a) + _parameter_bytes(b)
    return stats


def worker_scratch(config, fused_config, repeats):
    # The inputs are built and kept alive, unused, so that the process starts
    # from the same state as the fuse worker (freeing them would hand their
    # memory to the construction).
    inputs = _setup(config)
    from keras_fusion.models import FusionT5Backbone

    stats = _measure(lambda: FusionT5Backbone(**fused_config), repeats)
    del inputs
    return stats


def worker_breakdown(config):
    """One `fuse`, step by step, as `FusionT5Backbone.fuse` does it."""
    a, b = _setup(config)
    from keras_fusion import operators
    from keras_fusion.models import FusionT5Backbone
    from keras_fusion.models.fusion_t5_backbone import grown

    steps = []
    start_rss = _rss()

    def step(name, fn):
        with PeakMemory() as memory:
            start = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - start
        steps.append(
            dict(
                step=name,
                seconds=seconds,
                peak_increase_bytes=memory.peak - start_rss,
                rss_after_bytes=memory.after - start_rss,
            )
        )
        return out

    config_, parameters = step(
        "read inputs + fused parameters in NumPy (grown_by_fuse)",  # grown(operators.Fuse()) now
        lambda: grown(operators.Fuse(), [a, b]),
    )
    step(
        "build from them (from_parameters, no random init)",
        lambda: FusionT5Backbone.from_parameters(config_, parameters),
    )
    return steps


# --- Driver -----------------------------------------------------------------


def _mib(n):
    return n / MIB


def markdown_table(r):
    f, s = r["fuse"], r["scratch"]
    rows = [
        ("`fuse(a, b)` wall time (median)", f"{f['median_seconds']:.2f} s"),
        ("From-scratch `FusionT5Backbone(**config)` (median)", f"{s['median_seconds']:.2f} s"),
        (f"Time ratio fuse / scratch (goal <= {TIME_GOAL})", f"{r['time_ratio']:.2f}"),
        (
            "Time ratio, first runs in fresh processes",
            f"{r['first_run_time_ratio']:.2f} ({f['runs'][0]['seconds']:.2f} s / "
            f"{s['runs'][0]['seconds']:.2f} s)",
        ),
        ("`fuse` peak memory (RSS increase)", f"{_mib(f['peak_increase_bytes']):.0f} MiB"),
        ("From-scratch peak memory (RSS increase)", f"{_mib(s['peak_increase_bytes']):.0f} MiB"),
        (
            "Fused / input parameter bytes",
            f"{_mib(f['fused_parameter_bytes']):.0f} / {_mib(f['input_parameter_bytes']):.0f} MiB",
        ),
        ("Memory bound: 2 x fused + inputs", f"{_mib(r['memory_bound_bytes']):.0f} MiB"),
        ("`fuse` peak / bound (goal <= 1)", f"{r['memory_ratio']:.2f}"),
    ]
    m = r["machine"]
    lines = [
        f"Fusing two T5 backbones ({r['config_name']}: "
        + ", ".join(f"{k}={v}" for k, v in r["config"].items())
        + f") on {m['cpu_model']}, "
        f"{m['usable_cpus']} CPUs, {_mib(m['ram_bytes'] or 0) / 1024:.0f} GiB RAM, "
        f"TensorFlow {r['versions']['tensorflow']}, Keras {r['versions']['keras']}, "
        f"keras-hub {r['versions']['keras-hub']}; median of {r['repeats']} runs:",
        "",
        "| Measure | Value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small config (hidden 128, vocabulary 4096, 2 layers)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats of each operation (default 3)"
    )
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the step-by-step breakdown of fuse"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default benchmarks/results/growth_cost.json, "
        "growth_cost_quick.json with --quick)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    config = QUICK_CONFIG if args.quick else FULL_CONFIG
    output = args.output or os.path.join(
        ROOT,
        "benchmarks",
        "results",
        "growth_cost_quick.json" if args.quick else "growth_cost.json",
    )

    machine = machine_info()
    vers = versions()
    print(
        "Machine:",
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable), "
        f"{_mib(machine['ram_bytes'] or 0) / 1024:.1f} GiB RAM, {machine['platform']}",
    )
    print(
        "Versions:", ", ".join(f"{k} {v}" for k, v in vers.items()), f"python {machine['python']}"
    )
    print("Input config (each of the two backbones):", config)
    print(f"Repeats: {args.repeats}; each operation in a fresh spawned process.\n", flush=True)

    start = time.perf_counter()
    print("Measuring fuse ...", flush=True)
    fuse = in_fresh_process(worker_fuse, config, args.repeats)
    print("Measuring from-scratch construction ...", flush=True)
    scratch = in_fresh_process(worker_scratch, config, fuse["fused_config"], args.repeats)
    breakdown = None
    if not args.no_breakdown:
        print("Measuring the steps of fuse ...", flush=True)
        breakdown = in_fresh_process(worker_breakdown, config)

    bound = 2 * fuse["fused_parameter_bytes"] + fuse["input_parameter_bytes"]
    result = dict(
        benchmark="growth_cost",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config_name="quick" if args.quick else "T5-small size",
        config=config,
        repeats=args.repeats,
        machine=machine,
        versions=vers,
        fuse=fuse,
        scratch=scratch,
        time_ratio=fuse["median_seconds"] / scratch["median_seconds"],
        first_run_time_ratio=fuse["runs"][0]["seconds"] / scratch["runs"][0]["seconds"],
        time_goal=TIME_GOAL,
        memory_goal=MEMORY_GOAL,
        memory_bound_bytes=bound,
        memory_ratio=fuse["peak_increase_bytes"] / bound,
        fuse_breakdown=breakdown,
        benchmark_wall_seconds=None,
    )
    result["time_goal_met"] = result["time_ratio"] <= TIME_GOAL
    result["memory_goal_met"] = result["memory_ratio"] <= 1.0
    result["benchmark_wall_seconds"] = time.perf_counter() - start

    print("\nFused config:", fuse["fused_config"])
    print(f"Parameters: inputs {fuse['input_parameters']}, fused {fuse['fused_parameters']}\n")
    print(f"{'':34s}{'median':>9s}   runs (s)")
    for name, r in (("fuse(a, b)", fuse), ("FusionT5Backbone(**config)", scratch)):
        runs = ", ".join(f"{x['seconds']:.2f}" for x in r["runs"])
        print(f"{name:34s}{r['median_seconds']:8.2f}s   {runs}")
    print(
        f"time ratio fuse / scratch: {result['time_ratio']:.2f} "
        f"(goal <= {TIME_GOAL}: {'met' if result['time_goal_met'] else 'MISSED'})"
    )
    print(
        f"first runs only (fresh process, memory not yet reused): "
        f"{result['first_run_time_ratio']:.2f}\n"
    )
    print(
        "Peak memory, first run in a fresh process (RSS increase over the "
        "RSS with the inputs built):"
    )
    print(f"  fuse(a, b):                 {_mib(fuse['peak_increase_bytes']):8.0f} MiB")
    print(f"  FusionT5Backbone(**config): {_mib(scratch['peak_increase_bytes']):8.0f} MiB")
    print(f"  fused parameters:           {_mib(fuse['fused_parameter_bytes']):8.0f} MiB")
    print(f"  input parameters (both):    {_mib(fuse['input_parameter_bytes']):8.0f} MiB")
    print(f"  bound {MEMORY_GOAL}: {_mib(bound):.0f} MiB")
    print(
        f"  fuse peak / bound: {result['memory_ratio']:.2f} "
        f"({'met' if result['memory_goal_met'] else 'MISSED'})"
    )
    print(f"  ({fuse['memory_method']})\n")
    if breakdown:
        print(
            "Steps of one fuse (fresh process; memory relative to the RSS before the first step):"
        )
        for s in breakdown:
            print(
                f"  {s['step']:55s}{s['seconds']:7.2f}s  peak +"
                f"{_mib(s['peak_increase_bytes']):6.0f} MiB  after +"
                f"{_mib(s['rss_after_bytes']):6.0f} MiB"
            )
        print()
    print(markdown_table(result))

    save_json(result, output)


if __name__ == "__main__":
    main()
