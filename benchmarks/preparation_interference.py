"""Why preparing a growth ahead still slows training: what kind of thread work interferes?

`GrowthCallback` prepares the next growth in a background thread (build the
grown model, trace and run its train step) while the current model trains
(`keras_fusion/growth_ahead.py`). `benchmarks/growth_overhead.py` measures
what that slows the training by, even with a core left free
(`--tf-threads 1`). This benchmark asks which part of the thread's work
does it, and whether Python's GIL switch interval (`sys.setswitchinterval`)
is the lever.

It trains the tiny T5 of `growth_overhead.py` (same config, data, AdamW)
with TensorFlow limited to one intra- and one inter-op thread, so that one
of the two cores is free for the background thread, and times every step
while a background thread runs one of these workloads for a fixed time
(`--seconds`, default 3):

- `none`: no background thread (the reference);
- `python`: a pure-Python loop (holds the GIL, no TensorFlow);
- `python_1ms`: the same loop with the switch interval lowered from 5 ms
  to 1 ms while it runs;
- `build`: constructing tiny backbones with zero weights
  (`FusionT5Backbone.zeros`) again and again (what the preparation's first
  phase does);
- `trace`: tracing and running a Keras train step of a second tiny model
  again and again (`make_train_function(force=True)`, one step: what the
  preparation's second phase does);
- `trace_1ms`: the same with the 1 ms switch interval.

Each workload is measured `--repeats` times (default 3), the workloads in
an order that rotates each repeat. For each it reports the median step time
while the thread ran, the slowdown per step against `none` of the same
repeat, the total excess of the window's steps over that median (which,
unlike the median, counts the rare long stalls), the window's longest step,
the number of full (generation 2) garbage collections during the window
(`gc.callbacks`, any thread: a collection holds the GIL, so the training's
host thread waits through it; the JSON also keeps the wall time spent
inside collections, which includes finalizers that release the GIL and so
overstates the stall), and how busy TensorFlow's own threads were (CPU seconds of every thread
other than the main and the background one, from `/proc/self/task/*/stat`,
read at the start and end of each window only) per step and per second of
wall time. A slowdown with TensorFlow's threads doing the same CPU work per
step but less of it per second means the training waited, not that it
lacked a core.

Run: `python benchmarks/preparation_interference.py` (about 2 minutes).
Prints the machine, versions, config and a table; writes JSON to
`benchmarks/results/preparation_interference.json`.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time

from benchmark_utils import machine_info, script_setup, versions

ROOT = script_setup(__file__)

WORKLOADS = ("none", "python", "python_1ms", "build", "trace", "trace_1ms")
DEFAULT_SWITCH = 0.005  # CPython's default switch interval


def _thread_ticks():
    """CPU clock ticks (user + system) of each thread of this process."""
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])
    return ticks


def _workloads(seconds, data):
    import instruments as go
    import keras

    from keras_fusion.models import FusionT5Backbone

    keras.utils.set_random_seed(5)
    other = go.wrap(FusionT5Backbone(**go.TINY_CONFIG))
    other.fit(data, epochs=1, steps_per_epoch=1, verbose=0)
    iterator = iter(data)

    def until_done(body):
        def run():
            end = time.perf_counter() + seconds
            count = 0
            while time.perf_counter() < end:
                body()
                count += 1
            return count

        return run

    def python():
        sum(i * i for i in range(20000))

    def build():
        FusionT5Backbone.zeros(go.TINY_CONFIG)

    def trace():
        other.make_train_function(force=True)
        other.train_function(iterator)

    return {
        "python": (until_done(python), DEFAULT_SWITCH),
        "python_1ms": (until_done(python), 0.001),
        "build": (until_done(build), DEFAULT_SWITCH),
        "trace": (until_done(trace), DEFAULT_SWITCH),
        "trace_1ms": (until_done(trace), 0.001),
    }


def run(seconds, repeats, reference_steps):
    import warnings

    warnings.filterwarnings("ignore", message=".*does not support masking.*")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import instruments as go
    import keras

    from keras_fusion.models import FusionT5Backbone

    data = go.dataset()
    keras.utils.set_random_seed(0)
    model = go.wrap(FusionT5Backbone(**go.TINY_CONFIG))
    workloads = _workloads(seconds, data)
    model.fit(data, epochs=1, steps_per_epoch=20, verbose=0)  # trace, warm up

    main_tid = threading.get_native_id()
    _GCClock = go.GCClock
    _GCClock.install()

    class Window(keras.callbacks.Callback):
        """Times steps; starts the workload after the first; stops with it."""

        def __init__(self, work):
            super().__init__()
            self.work, self.steps, self.thread, self.thread_tid = work, [], None, None
            self.count = None

        def on_train_batch_begin(self, batch, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if batch == 0:
                self.ticks, self.start = _thread_ticks(), now
                self.gc = (_GCClock.total, _GCClock.full)
                if self.work is not None:
                    body, interval = self.work
                    previous = sys.getswitchinterval()

                    def target():
                        self.thread_tid = threading.get_native_id()
                        sys.setswitchinterval(interval)
                        try:
                            self.count = body()
                        finally:
                            sys.setswitchinterval(previous)

                    self.thread = threading.Thread(target=target)
                    self.thread.start()
                return
            self.steps.append(now - self.begin)
            done = (
                len(self.steps) >= reference_steps
                if self.thread is None
                else not self.thread.is_alive()
            )
            if done:
                self.end, self.ticks_end = now, _thread_ticks()
                self.gc = (_GCClock.total - self.gc[0], _GCClock.full - self.gc[1])
                self.model.stop_training = True

    rows = []
    for repeat in range(repeats):
        order = WORKLOADS[repeat % len(WORKLOADS) :] + WORKLOADS[: repeat % len(WORKLOADS)]
        order = ("none",) + tuple(w for w in order if w != "none")
        for name in order:
            window = Window(None if name == "none" else workloads[name])
            model.fit(data, epochs=1, steps_per_epoch=100000, verbose=0, callbacks=[window])
            if window.thread is not None:
                window.thread.join()
            wall = window.end - window.start
            tf_ticks = sum(
                t - window.ticks.get(tid, 0)
                for tid, t in window.ticks_end.items()
                if tid not in (main_tid, window.thread_tid)
            )
            tf_seconds = tf_ticks / os.sysconf("SC_CLK_TCK")
            rows.append(
                dict(
                    repeat=repeat,
                    workload=name,
                    steps=len(window.steps),
                    wall_seconds=wall,
                    median_step_seconds=statistics.median(window.steps),
                    step_seconds=window.steps,
                    longest_step_seconds=max(window.steps),
                    python_gc_seconds=window.gc[0],
                    full_collections=window.gc[1],
                    workload_iterations=window.count,
                    tensorflow_threads_cpu_seconds_per_step=tf_seconds / len(window.steps),
                    tensorflow_threads_busy_cores=tf_seconds / wall,
                )
            )
    for row in rows:
        reference = next(
            r for r in rows if r["repeat"] == row["repeat"] and r["workload"] == "none"
        )
        row["slowdown_ms_per_step"] = 1e3 * (
            row["median_step_seconds"] - reference["median_step_seconds"]
        )
        row["excess_seconds"] = sum(
            d - reference["median_step_seconds"] for d in row["step_seconds"]
        )
        row["excess_ms_per_step"] = 1e3 * row["excess_seconds"] / row["steps"]
    return rows


def summarize(rows):
    out = {}
    for name in WORKLOADS:
        mine = [r for r in rows if r["workload"] == name]
        out[name] = {
            key: statistics.median(r[key] for r in mine)
            for key in (
                "median_step_seconds",
                "slowdown_ms_per_step",
                "excess_ms_per_step",
                "longest_step_seconds",
                "python_gc_seconds",
                "full_collections",
                "tensorflow_threads_cpu_seconds_per_step",
                "tensorflow_threads_busy_cores",
            )
        }
        out[name]["slowdown_ms_per_step_each_repeat"] = [
            round(r["slowdown_ms_per_step"], 2) for r in mine
        ]
        out[name]["longest_step_ms_each_repeat"] = [
            round(1e3 * r["longest_step_seconds"]) for r in mine
        ]
    return out


def markdown_table(summary):
    lines = [
        "| Background thread | Median step (ms) | Median slowdown (ms/step) "
        "| Mean excess (ms/step) | Longest step (ms) "
        "| Full GCs | TF threads' CPU per step (ms) | TF threads busy (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        lines.append(
            f"| `{name}` | {1e3 * s['median_step_seconds']:.1f} "
            f"| {s['slowdown_ms_per_step']:+.1f} | "
            f"{s['excess_ms_per_step']:+.1f} | {1e3 * s['longest_step_seconds']:.0f} | "
            f"{s['full_collections']:g} | "
            f"{1e3 * s['tensorflow_threads_cpu_seconds_per_step']:.1f} | "
            f"{s['tensorflow_threads_busy_cores']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="how long each workload runs (default 3)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="measurements per workload (default 3)"
    )
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=100,
        help="steps of the reference window without a thread (default 100)",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(ROOT, "benchmarks", "results", "preparation_interference.json"),
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1 or args.reference_steps < 10:
        parser.error("--seconds must be > 0, --repeats >= 1 and --reference-steps >= 10")
    import instruments as go

    machine, vers = machine_info(), versions()
    print(
        "Machine:",
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable), {machine['platform']}",
    )
    print(
        "Versions:", ", ".join(f"{k} {v}" for k, v in vers.items()), f"python {machine['python']}"
    )
    print(
        "Tiny config:",
        go.TINY_CONFIG,
        f"batch {go.BATCH_SIZE}, sequence length {go.SEQUENCE_LENGTH}, "
        "AdamW; TensorFlow threads: 1 intra-op, 1 inter-op",
        flush=True,
    )
    start = time.perf_counter()
    rows = run(args.seconds, args.repeats, args.reference_steps)
    summary = summarize(rows)
    result = dict(
        benchmark="preparation_interference",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        config=dict(
            go.TINY_CONFIG,
            batch_size=go.BATCH_SIZE,
            sequence_length=go.SEQUENCE_LENGTH,
            optimizer="AdamW",
            tf_threads=1,
        ),
        settings=dict(
            seconds=args.seconds, repeats=args.repeats, reference_steps=args.reference_steps
        ),
        machine=machine,
        versions=vers,
        summary=summary,
        rows=rows,
        benchmark_wall_seconds=time.perf_counter() - start,
    )
    print()
    for name, s in summary.items():
        print(
            f"  {name:11s} step {1e3 * s['median_step_seconds']:5.1f} ms, slowdown "
            f"{s['slowdown_ms_per_step']:+5.1f} ms/step "
            f"(each repeat {s['slowdown_ms_per_step_each_repeat']}), "
            f"mean excess {s['excess_ms_per_step']:+5.1f} ms/step, longest step "
            f"{1e3 * s['longest_step_seconds']:.0f} ms, full GCs {s['full_collections']:g}, "
            f"TF threads {1e3 * s['tensorflow_threads_cpu_seconds_per_step']:5.1f} ms CPU/step, "
            f"{s['tensorflow_threads_busy_cores']:.2f} cores busy"
        )
    print()
    print(markdown_table(summary))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(args.output + ".tmp", args.output)
    print(
        f"\nWrote {os.path.relpath(args.output)} (took {result['benchmark_wall_seconds']:.0f} s)."
    )


if __name__ == "__main__":
    main()
