"""What does growing a model inside `fit` cost, and does the grown model train at full speed?

Trains a tiny T5 (vocabulary 1000, 2 layers, hidden 64, 4 heads,
feed-forward 128, dropout 0, batch 16, sequence length 64, AdamW) wrapped in
`GrowingT5Seq2SeqLM`, grows it inside `model.fit` with `GrowthCallback`, and
measures, for each growth operator (self_fuse, deepen by 2 layers, fuse with
a partner of the same config), in one run:

1. the cost of one growth event, for each operator twice, each in a fresh
   process: prepared ahead (`GrowthCallback`'s default: the grown model is
   built and its train step traced in a background thread while the tiny
   model trains) and synchronous (`prepare_ahead=False`). The event is the
   growth callback's own time (`seconds`: operator, optimizer-state mapping,
   writing values or building the model, `gc.collect`) plus the retrace on
   the first step after the growth (that step's duration minus the grown
   model's median step). The preparation's own cost is what it slows the
   tiny model's steps by while it runs (their excess over the tiny model's
   median step after the preparation finished, and the excess of the gaps
   between them): "with preparation" adds it to the event. Reported in
   seconds, in steps of the grown model and in steps of the tiny model.
   Goal (reported, not asserted): at most 20 training steps.
2. the steady-state speed of the grown model against a model of the same
   final architecture built directly (`FusionT5Backbone(**grown config)`,
   wrapped and compiled the same way, same optimizer class and config), as
   the ratio of steps per second grown / direct.
   Goal (reported, not asserted): >= 0.97 (no per-step retracing or
   leftover overhead).

How it measures:
- Each operator runs in a fresh process (multiprocessing "spawn"), so one
  operator's traced functions and allocations do not slow the next.
- Every training step is timed by a callback with `time.perf_counter` at
  `on_train_batch_begin` / `on_train_batch_end` (the callback defines
  `on_train_batch_end`, so Keras dispatches batch callbacks synchronously;
  Keras converts the step's logs to Python numbers before calling it, so the
  step's computation has finished when the end time is taken). Per step it
  also records the process CPU time, the time in Python's garbage collector
  (`gc.callbacks`) and the time spent tracing `tf.function`s in Python
  (TensorFlow's `tracing_compilation.trace_function`, wrapped for the run).
  The time between a step's end and the next step's begin (callbacks, the
  growth itself) is recorded too.
- Data: random token ids (NumPy, seeded), 8 distinct batches of fixed shape
  in a cached, repeated `tf.data.Dataset` (no partial batch, no retrace).
- The directly built model is constructed (from the entry's `grown_config` of the
  grown config) before any training: every seed is set before the first
  step, because `keras.utils.set_random_seed` clears TensorFlow's kernel
  cache and every train function already run would then pay its graph
  instantiation again (1-2 s) on its next call.
- The model grows at step `--grow-at` (400: late enough for the preparation
  to finish, as in real runs that grow after hundreds or thousands of
  steps) inside one `fit` call, which then goes on for `--post-steps` steps.
  `--tf-threads 1` limits TensorFlow to one thread, which leaves a core of a
  2-core machine to the Python host thread, as an accelerator's host has.
  The direct model is then warmed up (its first
  step traces its train function), and the two are trained alternately in
  short `fit` calls of `--chunk` steps, `--rounds` times each (order
  alternating), so both are measured side by side under the same load: on a
  small machine shared with other work the step time jumps between levels
  as other processes come and go. The first `--skip` steps of every `fit`
  call are excluded. Steady-state figures are the median (and mean) step
  times over the rest; the speed ratio is the median over rounds of
  (direct median step / grown median step) in that round, with the pooled
  ratios and the CPU-time ratio printed beside it.
- Evidence for the speed ratio: the trace counts of the train function's
  two `tf.function`s (`experimental_get_tracing_count`, read after every
  step: a count that grows during steady state means retracing per step),
  the number of model, trainable and optimizer variables, the parameter
  count, and the backbone configs of the grown and direct models.
- Breakdown of the callback's time: the operator (`entry.grown_parameters`), reading,
  mapping and writing the optimizer state, and `replace_lm`, timed by
  wrapping those functions for the run (the library is not modified). For
  comparison: the time to construct the direct model, and the first
  (traced) steps of the tiny and the direct model.

Run: `python benchmarks/growth_overhead.py` (about 4 minutes on 2 quiet
CPU cores: six fresh processes), or `python benchmarks/growth_overhead.py
--quick` for a fast check with fewer steps (most of the time is fixed,
importing TensorFlow and building and tracing the models).
`--operators self_fuse,deepen` picks operators; `--tf-threads 1` leaves a
core to the host thread. Prints the machine, library versions, the config, the figures and
a markdown table for benchmarks/README.md; writes everything as JSON to
`benchmarks/results/growth_overhead.json` (`growth_overhead_quick.json` with
`--quick`; `--output PATH` to choose).
"""

import argparse
import datetime
import os
import statistics
import time

from benchmark_utils import in_fresh_process, machine_info, save_json, script_setup, versions

ROOT = script_setup(__file__)

import instruments  # noqa: E402
from instruments import BATCH_SIZE, LEARNING_RATE, NUM_BATCHES, SEQUENCE_LENGTH, TINY_CONFIG  # noqa: E402

from keras_fusion.recipes import PRESETS  # noqa: E402

# T5-small's shape (t5-small / t5-v1_1-small, vocabulary 32128): `--size small`
# measures a growth where users train, where the fixed tracing costs that
# dominate the tiny model's figure are small against one step.
CONFIGS = {
    "tiny": TINY_CONFIG,
    "small": dict(PRESETS["small"], vocabulary_size=32128, dropout=0.0),
}
OPERATORS = ("self_fuse", "deepen", "fuse")
EVENT_GOAL_STEPS = 20  # a growth event costs at most 20 training steps
SPEED_GOAL = 0.97  # grown steps/s >= 0.97 x direct steps/s

# The growth comes late enough for the preparation (a few seconds in a
# background thread) to finish first, as it does in real runs (growth after
# hundreds or thousands of steps).
DEFAULTS = dict(grow_at=400, post_steps=30, chunk=5, rounds=40, skip=1, tf_threads=0)
QUICK = dict(grow_at=300, post_steps=20, chunk=5, rounds=8, skip=1, tf_threads=0)


# --- Worker (runs in a fresh spawned process) --------------------------------


def _entry(operator, at_step, partner=None):
    from keras_fusion.growth import Deepen, Fuse, SelfFuse

    if operator == "self_fuse":
        return SelfFuse(at_step=at_step)
    if operator == "deepen":
        return Deepen(at_step=at_step, num_new_layers=2)
    if operator == "fuse":
        return Fuse(at_step=at_step, partner=partner, weight=0.5)
    raise ValueError(f"unknown operator {operator!r}; choose from {OPERATORS}")


def _summary(seconds):
    seconds = sorted(seconds)
    n = len(seconds)
    return dict(
        count=n,
        median_seconds=statistics.median(seconds),
        mean_seconds=statistics.fmean(seconds),
        stdev_seconds=statistics.stdev(seconds) if n > 1 else 0.0,
        p10_seconds=seconds[int(0.1 * (n - 1))],
        p90_seconds=seconds[int(0.9 * (n - 1))],
        min_seconds=seconds[0],
        max_seconds=seconds[-1],
        steps_per_second_median=1.0 / statistics.median(seconds),
        steps_per_second_mean=1.0 / statistics.fmean(seconds),
    )


def _model_facts(model):
    import json as json_

    from keras_fusion.models.fusion_t5_backbone import backbone_config

    return dict(
        backbone_config=json_.loads(json_.dumps(backbone_config(model.backbone))),
        parameters=model.backbone.count_params(),
        variables=len(model.variables),
        trainable_variables=len(model.trainable_variables),
        non_trainable_variables=len(model.non_trainable_variables),
        optimizer=type(model.optimizer).__name__,
        optimizer_variables=len(model.optimizer.variables),
        optimizer_iterations=int(model.optimizer.iterations.numpy()),
        jit_compile=bool(model.jit_compile),
        run_eagerly=bool(model.run_eagerly),
        steps_per_execution=int(model.steps_per_execution),
    )


def worker(operator, settings, prepare_ahead=True):
    """Grow a tiny model with `operator` inside fit; time it against a direct build.

    With `prepare_ahead=False` (the synchronous growth, for comparison) only
    the growth fit runs (no steady-state rounds). `record` trains and clocks;
    `analyse` turns its step records into the figures (no TensorFlow)."""
    return analyse(record(operator, settings, prepare_ahead))


def record(operator, settings, prepare_ahead=True):
    """Train, grow and alternate the grown and direct models; return the raw records.

    Every step is a dict of `instruments.step_timer` (begin, end, cpu, gc,
    trace, function, traces, inner_traces)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*does not support masking.*")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    import keras

    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
    from keras_fusion.models.fusion_t5_backbone import backbone_config

    grow_at, post, chunk, rounds, skip = (
        settings[k] for k in ("grow_at", "post_steps", "chunk", "rounds", "skip")
    )
    if settings.get("tf_threads"):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(settings["tf_threads"])
        tf.config.threading.set_inter_op_parallelism_threads(settings["tf_threads"])
    config = CONFIGS[settings.get("size", "tiny")]
    data = instruments.dataset(vocab=config["vocabulary_size"])

    keras.utils.set_random_seed(0)
    model = instruments.wrap(FusionT5Backbone(**config))
    partner = None
    if operator == "fuse":
        keras.utils.set_random_seed(1)
        partner = FusionT5Seq2SeqLM(FusionT5Backbone(**config))
    base_facts = _model_facts(model)
    entry = _entry(operator, grow_at, partner)
    growth = GrowthCallback([entry], verbose=0, prepare_ahead=prepare_ahead)

    # The same final architecture, built directly (from the entry's grown_config),
    # wrapped the same way. Built, and every seed set, before any training:
    # `keras.utils.set_random_seed` clears TensorFlow's kernel cache, so
    # every train function already run would be instantiated (and
    # graph-optimised) again on its next call, a second or two each.
    keras.utils.set_random_seed(2)
    planned = entry.grown_config(backbone_config(model.backbone))
    build_start = time.perf_counter()
    direct = instruments.wrap(FusionT5Backbone(**planned))
    direct_build_seconds = time.perf_counter() - build_start

    # 1. Train the tiny model, grow it at step grow_at, go on post steps.
    timer = instruments.step_timer()
    with (
        instruments.Breakdown(type(entry)) as breakdown,
        instruments.Preparations() as preparations,
    ):
        model.fit(
            data, epochs=1, steps_per_epoch=grow_at + post, verbose=0, callbacks=[timer, growth]
        )
    event = dict(growth.events[0])
    assert len(timer.steps) == grow_at + post
    assert event["prepared_ahead"] == prepare_ahead, event
    if not prepare_ahead:
        rounds = 0

    # 2. Alternate fit calls of `chunk` steps: direct, grown, grown, direct, ...
    # The direct model's first call traces its train function: a warm-up call.
    warmup = instruments.step_timer()
    direct.fit(data, epochs=1, steps_per_epoch=skip + 2, verbose=0, callbacks=[warmup])
    chunks = {"grown": [], "direct": []}
    for r in range(rounds):
        order = ("grown", "direct") if r % 2 == 0 else ("direct", "grown")
        for name in order:
            t = instruments.step_timer()
            m = direct if name == "direct" else model
            m.fit(data, epochs=1, steps_per_epoch=chunk, verbose=0, callbacks=[t])
            chunks[name].append(t.steps)

    # The preparation (prepared growth) runs in a thread while the tiny model trains.
    preparation = None
    if preparations.started and preparations.started[0].finished_at is not None:
        p = preparations.started[0]
        preparation = dict(
            window=(p.started_at, p.finished_at), phase_seconds=dict(p.phase_seconds)
        )
    return dict(
        operator=operator,
        prepare_ahead=prepare_ahead,
        settings=settings,
        rounds=rounds,
        event=event,
        breakdown_seconds=breakdown.seconds,
        preparation=preparation,
        growth_fit=timer.steps,
        direct_warmup=warmup.steps,
        chunks=chunks,
        direct_build_seconds=direct_build_seconds,
        base=base_facts,
        grown=_model_facts(model),
        direct=_model_facts(direct),
        same_architecture=backbone_config(model.backbone) == backbone_config(direct.backbone),
    )


def _durations(steps, key=None):
    return [s[key] if key else s["end"] - s["begin"] for s in steps]


def _gaps(steps):
    """The time between each step's end and the next step's begin."""
    return [steps[i + 1]["begin"] - steps[i]["end"] for i in range(len(steps) - 1)]


def steady_speed(chunks, skip, rounds):
    """Steady-state figures of the grown and direct models' alternating fit calls.

    The speed ratio is the median over rounds of (direct median step / grown
    median step) in that round; the first `skip` steps of every call are left out."""

    def steady(name, key=None):
        return [d for c in chunks[name] for d in _durations(c, key)[skip:]]

    grown, direct = _summary(steady("grown")), _summary(steady("direct"))
    per_round = []
    for r in range(rounds):
        g = statistics.median(_durations(chunks["grown"][r])[skip:])
        d = statistics.median(_durations(chunks["direct"][r])[skip:])
        per_round.append(dict(grown_median_seconds=g, direct_median_seconds=d, speed_ratio=d / g))
    cpu = {name: statistics.median(steady(name, "cpu")) for name in chunks}

    def pooled(key):
        return direct[key] / grown[key] if rounds else None

    return dict(
        grown_steady=grown,
        direct_steady=direct,
        speed_ratio=statistics.median(x["speed_ratio"] for x in per_round) if per_round else None,
        speed_ratio_pooled_median=pooled("median_seconds"),
        speed_ratio_pooled_mean=pooled("mean_seconds"),
        speed_ratio_p10=pooled("p10_seconds"),
        cpu_seconds_per_step_median=cpu,
        cpu_speed_ratio=(cpu["direct"] / cpu["grown"]) if rounds else None,
        gc_seconds_in_steady_steps={name: sum(steady(name, "gc")) for name in chunks},
        speed_ratio_per_round=per_round,
    )


def tiny_steady(growth_fit, grow_at, skip, window):
    """The tiny model's own step time: its steps after the preparation
    finished (all its steps without one, or when fewer than 10 are left)."""
    clean = [
        i for i in range(skip, grow_at) if window is None or growth_fit[i]["begin"] > window[1]
    ]
    if len(clean) < 10:
        clean = list(range(skip, grow_at))
    fit_durations = _durations(growth_fit)
    return _summary([fit_durations[i] for i in clean])


def event_cost(growth_fit, grow_at, skip, callback_seconds, median_step, tiny_step):
    """The growth event's cost: the callback's own time plus the retrace's
    excess on the first step after it; and the same from the wall clock (end
    of step grow_at to end of step grow_at + 1, less one ordinary step and
    one ordinary callback gap)."""
    fit_durations, gaps = _durations(growth_fit), _gaps(growth_fit)
    after = growth_fit[grow_at]  # step grow_at + 1: the retrace
    first_after = fit_durations[grow_at]
    growth_gap = gaps[grow_at - 1]  # between step grow_at's end and the next begin
    ordinary_gap = statistics.median(gaps[skip : grow_at - 1] + gaps[grow_at + 1 :])
    retrace_extra = first_after - median_step
    cost = callback_seconds + retrace_extra
    return dict(
        callback_seconds=callback_seconds,
        first_step_after_growth_seconds=first_after,
        first_step_after_growth_cpu_seconds=after["cpu"],
        first_step_after_growth_gc_seconds=after["gc"],
        first_step_after_growth_python_trace_seconds=after["trace"],
        retrace_extra_seconds=retrace_extra,
        cost_seconds=cost,
        cost_in_grown_steps=cost / median_step,
        cost_in_tiny_steps=cost / tiny_step,
        wall_clock_cost_seconds=growth_gap + first_after - median_step - ordinary_gap,
        growth_gap_seconds=growth_gap,
        ordinary_gap_seconds=ordinary_gap,
        steps_2_to_10_after_growth_excess_seconds=sum(
            d - median_step for d in fit_durations[grow_at + 1 : grow_at + 10]
        ),
        first_steps_after_growth_seconds=fit_durations[grow_at : grow_at + 5],
    )


def preparation_cost(growth_fit, grow_at, skip, preparation, tiny_step, ordinary_gap, median_step):
    """What the preparation cost the tiny model's training: the excess of
    its steps (and of the gaps between them) that overlap the thread's run."""
    if preparation is None:
        return None
    window = preparation["window"]
    fit_durations, gaps = _durations(growth_fit), _gaps(growth_fit)
    overlap = [
        i
        for i in range(skip, grow_at)
        if growth_fit[i]["end"] > window[0] and growth_fit[i]["begin"] < window[1]
    ]
    excess = sum(fit_durations[i] - tiny_step for i in overlap)
    excess += sum(gaps[i] - ordinary_gap for i in overlap if i < grow_at - 1)
    return dict(
        seconds_in_thread=window[1] - window[0],
        phase_seconds=preparation["phase_seconds"],
        steps_overlapped=len(overlap),
        first_overlapped_step=overlap[0] + 1 if overlap else None,
        tiny_steps_slowed_by_seconds=excess,
        # Python's garbage collector (either thread: a collection holds
        # the GIL, so the training's host thread waits through it).
        python_gc_seconds_in_overlapped_steps=sum(growth_fit[i]["gc"] for i in overlap),
        tiny_steps_slowed_by_grown_steps=excess / median_step,
    )


def trace_info(steps):
    """Per train function, in order: its steps and its trace counts after the first and last."""
    functions = []
    for s in steps:
        if not functions or functions[-1]["function"] != s["function"]:
            functions.append(
                dict(
                    function=s["function"],
                    steps=0,
                    traces_after_first_step=s["traces"],
                    inner_traces_after_first_step=s["inner_traces"],
                )
            )
        functions[-1]["traces_after_last_step"] = s["traces"]
        functions[-1]["inner_traces_after_last_step"] = s["inner_traces"]
        functions[-1]["steps"] += 1
    for f in functions:
        del f["function"]
    return functions


def analyse(recorded):
    """The figures of one `record` run (see the module docstring)."""
    settings, rounds = recorded["settings"], recorded["rounds"]
    grow_at, post, skip = (settings[k] for k in ("grow_at", "post_steps", "skip"))
    growth_fit, warmup, event = recorded["growth_fit"], recorded["direct_warmup"], recorded["event"]
    chunks = recorded["chunks"]
    if not rounds:  # synchronous growth: the growth fit's own steps
        chunks = {"grown": [growth_fit[grow_at + 10 :]], "direct": [warmup]}
    speed = steady_speed(chunks, skip, rounds)
    median_step = speed["grown_steady"]["median_seconds"]
    window = recorded["preparation"]["window"] if recorded["preparation"] else None
    base_steady = tiny_steady(growth_fit, grow_at, skip, window)
    tiny_step = base_steady["median_seconds"]
    cost = event_cost(growth_fit, grow_at, skip, event["seconds"], median_step, tiny_step)
    preparation = preparation_cost(
        growth_fit,
        grow_at,
        skip,
        recorded["preparation"],
        tiny_step,
        cost["ordinary_gap_seconds"],
        median_step,
    )
    total_cost = cost["wall_clock_cost_seconds"] + (
        preparation["tiny_steps_slowed_by_seconds"] if preparation else 0.0
    )
    fit_durations = _durations(growth_fit)
    growth_event = dict(
        step=event["step"],
        parameters_before=event["parameters_before"],
        parameters_after=event["parameters_after"],
        callback_breakdown_seconds=recorded["breakdown_seconds"],
        **cost,
        prepared_ahead=event["prepared_ahead"],
        waited_for_preparation_seconds=event["waited_seconds"],
        preparation=preparation,
        total_cost_seconds=total_cost,
        total_cost_in_grown_steps=total_cost / median_step,
    )
    grown_all = growth_fit + [s for c in chunks["grown"] for s in c]
    direct_all = warmup + [s for c in chunks["direct"] for s in c]
    first_of_chunk = {
        name: [
            dict(
                seconds=c[0]["end"] - c[0]["begin"],
                gc_seconds=c[0]["gc"],
                python_trace_seconds=c[0]["trace"],
            )
            for c in chunks[name]
        ]
        for name in chunks
    }
    return dict(
        operator=recorded["operator"],
        prepare_ahead=recorded["prepare_ahead"],
        entry=event["entry"],
        settings=settings,
        base=recorded["base"],
        grown=recorded["grown"],
        direct=recorded["direct"],
        same_architecture=recorded["same_architecture"],
        growth_event=growth_event,
        comparison_seconds=dict(
            tiny_model_first_step=fit_durations[0],
            tiny_model_first_step_python_trace=growth_fit[0]["trace"],
            direct_model_first_step=_durations(warmup)[0],
            direct_model_first_step_python_trace=warmup[0]["trace"],
            direct_model_construction=recorded["direct_build_seconds"],
        ),
        first_step_of_each_fit_call=first_of_chunk,
        tiny_steady=base_steady,
        grown_steady=speed.pop("grown_steady"),
        direct_steady=speed.pop("direct_steady"),
        grown_after_growth_in_growth_fit=_summary(fit_durations[grow_at + 10 :])
        if post > 12
        else None,
        **speed,
        traces=dict(grown=trace_info(grown_all), direct=trace_info(direct_all)),
        step_seconds=dict(
            growth_fit=fit_durations,
            grown_chunks=[_durations(c) for c in chunks["grown"]],
            direct_chunks=[_durations(c) for c in chunks["direct"]],
            direct_warmup=_durations(warmup),
        ),
    )


# --- Driver ------------------------------------------------------------------


def _short_config(config, base):
    changed = {k: v for k, v in config.items() if base.get(k) != v}
    names = dict(
        hidden_dim="hidden",
        num_layers="layers",
        num_heads="heads",
        intermediate_dim="ff",
        norm_groups="norm groups",
    )
    return ", ".join(f"{names.get(k, k)} {v}" for k, v in changed.items() if k in names)


def markdown_table(result):
    m, v = result["machine"], result["versions"]
    lines = [
        f"Growth inside `fit` on a {result['settings'].get('size', 'tiny')} T5 (vocabulary "
        f"{result['config']['vocabulary_size']}, {result['config']['num_layers']} layers, hidden "
        f"{result['config']['hidden_dim']}, {result['config']['num_heads']} heads, feed-forward "
        f"{result['config']['intermediate_dim']}, "
        f"dropout 0, batch {BATCH_SIZE}, length {SEQUENCE_LENGTH}, AdamW; "
        f"{result['tiny_ms_per_step']:.0f} ms/step) on {m['cpu_model']}, {m['usable_cpus']} CPUs, "
        f"TensorFlow {v['tensorflow']}, Keras {v['keras']}, keras-hub {v['keras-hub']}. "
        f"TensorFlow threads: {result['settings'].get('tf_threads') or 'default (all cores)'}. "
        f"Growth at step {result['settings']['grow_at']}, prepared ahead (the default) and "
        f"synchronous (`prepare_ahead=False`), each operator and mode in a fresh process. "
        f"Event = growth callback + first step after growth less a steady step (operator, "
        f"optimizer mapping, retrace); with preparation = event + what the background "
        "preparation slowed the tiny model's steps by; "
        "speed = steps/s of the grown model / steps/s of the same "
        f"architecture built directly (median over {result['settings']['rounds']} alternating "
        f"rounds of {result['settings']['chunk']} steps each):",
        "",
        "| Operator | Grown model | Event, prepared ahead: s (grown steps, "
        f"goal <= {EVENT_GOAL_STEPS}) | With preparation: s (grown steps) "
        "| Synchronous event: s (grown steps) | retrace after growth, prepared / synchronous (s) "
        f"| grown / direct ms/step | Speed grown / direct (goal >= {SPEED_GOAL}) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["operators"]:
        e, se = r["growth_event"], r["synchronous"]["growth_event"]
        lines.append(
            f"| `{r['operator']}` | {r['grown_summary']} | {e['cost_seconds']:.2f} "
            f"({e['cost_in_grown_steps']:.0f}) | {e['total_cost_seconds']:.2f} "
            f"({e['total_cost_in_grown_steps']:.0f}) | {se['cost_seconds']:.2f} "
            f"({se['cost_in_grown_steps']:.0f}) "
            f"| {e['retrace_extra_seconds']:.2f} / {se['retrace_extra_seconds']:.2f} "
            f"| {1e3 * r['grown_steady']['median_seconds']:.1f} / "
            f"{1e3 * r['direct_steady']['median_seconds']:.1f} "
            f"| {r['speed_ratio']:.3f} |"
        )
    return "\n".join(lines)


def _print_operator(r):
    e, c = r["growth_event"], r["comparison_seconds"]
    g, d, t = r["grown_steady"], r["direct_steady"], r["tiny_steady"]
    print(
        f"\n== {r['entry']}, {'prepared ahead' if r['prepare_ahead'] else 'synchronous'}: "
        f"{r['grown_summary']} "
        f"(parameters {e['parameters_before']:,} -> {e['parameters_after']:,})"
    )
    print(f"  tiny model step (median of {t['count']}):   {1e3 * t['median_seconds']:8.1f} ms")
    print(f"  growth callback (operator + optimizer): {e['callback_seconds']:8.3f} s")
    for label, s in e["callback_breakdown_seconds"].items():
        print(f"      {label:35s}{s:8.3f} s")
    print(
        f"  first step after growth (retrace):      {e['first_step_after_growth_seconds']:8.3f} s "
        f"(over a steady step: {e['retrace_extra_seconds']:.3f} s)"
    )
    print(
        f"      Python tracing {e['first_step_after_growth_python_trace_seconds']:.3f} s, "
        f"Python GC {e['first_step_after_growth_gc_seconds']:.3f} s, the rest (graph "
        f"instantiation and optimisation, execution) "
        f"{e['first_step_after_growth_seconds'] - e['first_step_after_growth_python_trace_seconds'] - e['first_step_after_growth_gc_seconds']:.3f} s"  # noqa: E501 (one replacement field)
    )
    print(
        "  next steps after growth (s): "
        + ", ".join(f"{x:.3f}" for x in e["first_steps_after_growth_seconds"][1:])
    )
    print(
        "  for comparison: first (traced) step of the tiny model "
        f"{c['tiny_model_first_step']:.3f} s "
        f"(tracing {c['tiny_model_first_step_python_trace']:.3f} s), of the direct model "
        f"{c['direct_model_first_step']:.3f} s "
        f"(tracing {c['direct_model_first_step_python_trace']:.3f} s); "
        f"constructing the direct model {c['direct_model_construction']:.3f} s"
    )
    slow = [
        f"{x['seconds']:.3f}"
        for x in r["first_step_of_each_fit_call"]["grown"]
        if x["seconds"] > 5 * g["median_seconds"]
    ]
    if slow:
        print(f"  note: slow first steps of later grown fit calls (s): {', '.join(slow)}")
    if e["preparation"]:
        p = e["preparation"]
        print(
            f"  preparation (background thread): {p['seconds_in_thread']:.2f} s, over tiny steps "
            f"{p['first_overlapped_step']}-"
            f"{p['first_overlapped_step'] + p['steps_overlapped'] - 1}, "
            f"which it slowed by {p['tiny_steps_slowed_by_seconds']:.3f} s in all "
            f"(= {p['tiny_steps_slowed_by_grown_steps']:.1f} grown steps); waited for at the "
            f"growth: {e['waited_for_preparation_seconds']:.3f} s"
        )
        print(
            "      in the thread: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in p["phase_seconds"].items())
        )
        print(
            f"      Python GC (either thread) during those steps: "
            f"{p['python_gc_seconds_in_overlapped_steps']:.3f} s"
        )
    print(
        f"  TOTAL (event + preparation's slowdown): {e['total_cost_seconds']:.3f} s = "
        f"{e['total_cost_in_grown_steps']:.1f} grown steps"
    )
    print(
        f"  GROWTH EVENT COST: {e['cost_seconds']:.3f} s = {e['cost_in_grown_steps']:.1f} "
        f"grown-model steps = {e['cost_in_tiny_steps']:.1f} tiny-model steps "
        f"(wall clock: {e['wall_clock_cost_seconds']:.3f} s); goal <= {EVENT_GOAL_STEPS} "
        f"steps: {'met' if r['event_goal_met'] else 'MISSED'}"
    )
    if r["speed_ratio"] is None:
        return
    print(
        f"  steady state ({g['count']} grown / {d['count']} direct steps, "
        f"{len(r['speed_ratio_per_round'])} alternating rounds):"
    )
    for name, s in (("grown", g), ("direct", d)):
        print(
            f"      {name:7s} median {1e3 * s['median_seconds']:6.1f} ms  mean "
            f"{1e3 * s['mean_seconds']:6.1f} ms  p10-p90 {1e3 * s['p10_seconds']:5.1f}-"
            f"{1e3 * s['p90_seconds']:5.1f} ms  {s['steps_per_second_median']:5.1f} steps/s  "
            f"CPU {1e3 * r['cpu_seconds_per_step_median'][name]:6.1f} ms/step  "
            f"GC {r['gc_seconds_in_steady_steps'][name]:.3f} s in all"
        )
    rounds = ", ".join(f"{x['speed_ratio']:.2f}" for x in r["speed_ratio_per_round"])
    print(
        f"  SPEED grown / direct: {r['speed_ratio']:.3f} (median of per-round ratios; goal >= "
        f"{SPEED_GOAL}: {'met' if r['speed_goal_met'] else 'MISSED'})"
    )
    print(
        f"      pooled median {r['speed_ratio_pooled_median']:.3f}, pooled mean "
        f"{r['speed_ratio_pooled_mean']:.3f}, p10 {r['speed_ratio_p10']:.3f}, CPU time "
        f"{r['cpu_speed_ratio']:.3f}"
    )
    print(f"      per round: {rounds}")
    before, after = r["load_average_before_after"]
    print(
        f"      system load average (1 min) before / after: {before[0]:.2f} / {after[0]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    tr = r["traces"]

    def traces(x):
        return (
            f"{x['traces_after_last_step']}/{x['inner_traces_after_last_step']} "
            f"over {x['steps']} steps"
        )

    print(
        "  trace counts (outer/inner tf.function) per train function: grown "
        + "; ".join(traces(x) for x in tr["grown"])
        + " | direct "
        + "; ".join(traces(x) for x in tr["direct"])
    )
    gm, dm = r["grown"], r["direct"]
    print(
        f"  variables grown/direct: model {gm['variables']}/{dm['variables']}, trainable "
        f"{gm['trainable_variables']}/{dm['trainable_variables']}, optimizer "
        f"{gm['optimizer_variables']}/{dm['optimizer_variables']}, parameters "
        f"{gm['parameters']:,}/{dm['parameters']:,}; same architecture: "
        f"{r['same_architecture']}",
        flush=True,
    )


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a fast check")
    parser.add_argument(
        "--operators",
        default=",".join(OPERATORS),
        help=f"comma-separated, from {', '.join(OPERATORS)} (default all)",
    )
    for name in DEFAULTS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"default {DEFAULTS[name]} ({QUICK[name]} with --quick)"
            + (
                "; TensorFlow's intra- and inter-op threads, 0 for its default "
                "(all cores). 1 leaves a core of this 2-core machine to the host "
                "thread, as an accelerator's host has"
                if name == "tf_threads"
                else ""
            ),
        )
    parser.add_argument(
        "--size",
        choices=sorted(CONFIGS),
        default="tiny",
        help="model size: tiny (the default) or small (T5-small's shape)",
    )
    parser.add_argument(
        "--prepared-only",
        action="store_true",
        help="measure only the prepared-ahead growth (the default path), not the synchronous one",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON path (default benchmarks/results/growth_overhead.json, "
        "growth_overhead_quick.json with --quick)",
    )
    return parser


def parse_flags(parser, argv):
    """(args, settings, operators, output) from the command line; bad flags exit with an error."""
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else DEFAULTS)
    for name in settings:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if settings["grow_at"] <= settings["skip"] + 1 or settings["post_steps"] < 5:
        parser.error("--grow-at must exceed --skip + 1 and --post-steps must be >= 5")
    if settings["chunk"] <= settings["skip"] or settings["rounds"] < 1:
        parser.error("--chunk must exceed --skip and --rounds must be >= 1")
    settings["size"] = args.size
    operators = [o.strip() for o in args.operators.split(",") if o.strip()]
    for o in operators:
        if o not in OPERATORS:
            parser.error(f"unknown operator {o!r}; choose from {', '.join(OPERATORS)}")
    output = args.output or os.path.join(
        ROOT,
        "benchmarks",
        "results",
        "growth_overhead_quick.json" if args.quick else "growth_overhead.json",
    )
    return args, settings, operators, output


def with_goals(r):
    """`r` (one worker's result) with its goals marked."""
    r["grown_summary"] = _short_config(r["grown"]["backbone_config"], r["base"]["backbone_config"])
    e = r["growth_event"]
    r["event_goal_met"] = e["cost_in_grown_steps"] <= EVENT_GOAL_STEPS
    r["event_goal_met_tiny_steps"] = e["cost_in_tiny_steps"] <= EVENT_GOAL_STEPS
    r["total_goal_met"] = e["total_cost_in_grown_steps"] <= EVENT_GOAL_STEPS
    r["speed_goal_met"] = r["speed_ratio"] >= SPEED_GOAL if r["speed_ratio"] else None
    return r


def measure(operator, settings, prepared_only=False):
    """One operator: the prepared growth, then (unless `prepared_only`) the
    synchronous one, each in a fresh process; the synchronous figures nest
    under the prepared result's "synchronous"."""
    print(f"\nMeasuring {operator} ...", flush=True)
    pair = []
    for prepare_ahead in (True,) if prepared_only else (True, False):
        load_before = os.getloadavg()
        r = in_fresh_process(worker, operator, settings, prepare_ahead)
        r["load_average_before_after"] = [load_before, os.getloadavg()]
        _print_operator(with_goals(r))
        pair.append(r)
    r = pair[0]
    if len(pair) > 1:
        keys = ("growth_event", "tiny_steady", "grown_steady", "event_goal_met", "total_goal_met")
        r["synchronous"] = {k: pair[1][k] for k in keys}
    else:
        r["synchronous"] = {
            "growth_event": dict.fromkeys(
                ("cost_seconds", "cost_in_grown_steps", "retrace_extra_seconds"), float("nan")
            ),
            "not_measured": "--prepared-only",
        }
    return r


def print_summary(results):
    print("\nSummary:")
    for r in results:
        e = r["growth_event"]
        se = r["synchronous"]["growth_event"]
        print(
            f"  {r['operator']:10s} prepared ahead: event {e['cost_seconds']:5.2f} s = "
            f"{e['cost_in_grown_steps']:5.1f} grown steps "
            f"[{'met' if r['event_goal_met'] else 'MISSED'}], "
            f"with the preparation's slowdown {e['total_cost_seconds']:5.2f} s = "
            f"{e['total_cost_in_grown_steps']:5.1f} "
            f"[{'met' if r['total_goal_met'] else 'MISSED'}]; "
            f"synchronous: {se['cost_seconds']:5.2f} s = {se['cost_in_grown_steps']:5.1f}; "
            f"speed grown/direct {r['speed_ratio']:.3f} "
            f"[{'met' if r['speed_goal_met'] else 'MISSED'}]"
        )


def main(argv=None):
    args, settings, operators, output = parse_flags(build_parser(), argv)
    machine, vers = machine_info(), versions()
    print(
        "Machine:",
        f"{machine['cpu_model']}, {machine['cpu_count']} CPUs "
        f"({machine['usable_cpus']} usable), "
        f"{(machine['ram_bytes'] or 0) / 2**30:.1f} GiB RAM, {machine['platform']}",
    )
    print(
        "Versions:", ", ".join(f"{k} {v}" for k, v in vers.items()), f"python {machine['python']}"
    )
    print(
        "Config:",
        CONFIGS[args.size],
        f"batch {BATCH_SIZE}, sequence length "
        f"{SEQUENCE_LENGTH}, AdamW(learning_rate={LEARNING_RATE})",
    )
    print(
        "Settings:",
        settings,
        "operators:",
        operators,
        "(each operator in a fresh spawned process)",
        flush=True,
    )

    start = time.perf_counter()
    results = [measure(o, settings, args.prepared_only) for o in operators]
    tiny_ms = 1e3 * statistics.median(r["tiny_steady"]["median_seconds"] for r in results)
    result = dict(
        benchmark="growth_overhead",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        quick=args.quick,
        config=dict(
            CONFIGS[args.size],
            batch_size=BATCH_SIZE,
            sequence_length=SEQUENCE_LENGTH,
            optimizer="AdamW",
            learning_rate=LEARNING_RATE,
            distinct_batches=NUM_BATCHES,
        ),
        settings=settings,
        machine=machine,
        versions=vers,
        goals=dict(
            event_cost_steps=EVENT_GOAL_STEPS,
            event_cost_unit="steps of the grown model (also reported in tiny-model steps)",
            speed_ratio=SPEED_GOAL,
        ),
        tiny_ms_per_step=tiny_ms,
        operators=results,
        all_goals_met=all(r["event_goal_met"] and r["speed_goal_met"] for r in results),
        all_goals_met_counting_preparation=all(
            r["total_goal_met"] and r["speed_goal_met"] for r in results
        ),
        benchmark_wall_seconds=time.perf_counter() - start,
    )
    print_summary(results)
    print()
    print(markdown_table(result))
    save_json(result, output)


if __name__ == "__main__":
    main()
