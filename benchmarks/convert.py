"""Hugging Face T5 import and export: time and peak memory against transformers.

A T5-small-size checkpoint (random weights; d_model 512, 6 layers, 8 heads,
d_kv 64, d_ff 2048, vocabulary 32128, gated-gelu, untied: T5.1.1's layout)
is written once with `save_pretrained`. Then, each in a fresh process and in
interleaved rounds:
- `transformers`: `T5ForConditionalGeneration.from_pretrained(folder)`;
- `import`: `FusionT5Seq2SeqLM.from_preset(folder)`;
- `export`: `export_to_transformers` of the imported model (timed alone);
- references: transformers' load with every parameter read once (its
  `from_pretrained` leaves tensors on the file's memory map, unread), and
  keras-hub's own `T5Backbone(...)` of the same shape with random weights.
Each process first loads a tiny checkpoint of the same layout (a warm-up:
transformers imports most of its modules lazily inside the first
`from_pretrained`, and Keras traces its first model), so that times and
memory exclude library start-up; peak memory is the process's peak resident
memory (VmHWM) during the operation less its resident memory just before it
(the peak is reset through /proc/self/clear_refs). Goals (reported,
not asserted): import within 2x transformers' time, and peak memory within
2x the checkpoint's size.

Run: `python benchmarks/convert.py` (about two minutes here; `--rounds`,
`--small` for a quick check); writes `benchmarks/results/convert.json`.
"""

import argparse
import datetime
import os
import statistics
import tempfile
import time

from benchmark_utils import (
    in_fresh_process,
    machine_info,
    meminfo_kib,
    script_setup,
    versions,
    write_result,
)

ROOT = script_setup(__file__)

T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_heads=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    decoder_start_token_id=0,
)
TINY = dict(T5_SMALL, vocab_size=500, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)


def _status_kib(field):
    return meminfo_kib(field, "/proc/self/status")


def _reset_peak():
    """Reset VmHWM to the current resident size (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(operation):
    """Seconds and peak extra resident bytes of `operation()`."""
    import gc

    gc.collect()
    reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = operation()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return result, {
        "seconds": seconds,
        "peak_extra_bytes": (peak - before) * 1024,
        "peak_reset": reset,
    }


def write_checkpoint(folder, config):
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(**config)).save_pretrained(folder)
    return sum(
        os.path.getsize(os.path.join(folder, n))
        for n in os.listdir(folder)
        if n.endswith(".safetensors")
    )


def transformers_process(folder, warm_up_folder):
    import transformers

    load = transformers.T5ForConditionalGeneration.from_pretrained
    load(warm_up_folder)
    _, figures = _measure(lambda: load(folder))
    # from_pretrained leaves the tensors on the file's memory map, unread
    # until used; the same load with every parameter read once:
    _, figures["with_weights_read"] = _measure(
        lambda: sum(float(p.detach().sum()) for p in load(folder).parameters())
    )
    return figures


def import_process(folder, warm_up_folder, export_dir):
    from keras_fusion.models import FusionT5Seq2SeqLM

    warm = FusionT5Seq2SeqLM.from_preset(warm_up_folder)
    warm.export_to_transformers(export_dir + "-warm-up")
    del warm

    def import_then_export():  # the model is freed on return
        lm, figures = _measure(lambda: FusionT5Seq2SeqLM.from_preset(folder))
        _, export = _measure(lambda: lm.export_to_transformers(export_dir))
        return figures, export

    figures, export = import_then_export()
    # Reference: keras-hub's own T5Backbone of the same shape, random weights
    # (it traces its layers' calls to build the functional graph, and fills
    # its variables with random values).
    import keras_hub

    from keras_fusion import storage
    from keras_fusion.utils.transformers import convert_t5

    config, _ = convert_t5.convert_config(
        storage.read_json(storage.join(folder, convert_t5.CONFIG_FILE))
    )
    config.pop("norm_groups")
    _, scratch = _measure(lambda: keras_hub.models.T5Backbone(**config))
    return {"import": figures, "export": export, "keras_hub_t5_backbone_random": scratch}


def summary(runs, key):
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "all": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--small", action="store_true", help="a tiny config instead of T5-small (a smoke run)"
    )
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "convert.json")
    )
    args = parser.parse_args()
    config = TINY if args.small else T5_SMALL
    with tempfile.TemporaryDirectory() as work:
        folder, warm_up = os.path.join(work, "hf"), os.path.join(work, "warm_up")
        checkpoint_bytes = in_fresh_process(write_checkpoint, folder, config)
        in_fresh_process(write_checkpoint, warm_up, TINY)
        hf_runs, import_runs, export_runs, scratch_runs = [], [], [], []
        for i in range(args.rounds):
            hf_runs.append(in_fresh_process(transformers_process, folder, warm_up))
            measured = in_fresh_process(
                import_process, folder, warm_up, os.path.join(work, f"export{i}")
            )
            import_runs.append(measured["import"])
            export_runs.append(measured["export"])
            scratch_runs.append(measured["keras_hub_t5_backbone_random"])
    hf = {k: summary(hf_runs, k) for k in ("seconds", "peak_extra_bytes")}
    ours = {k: summary(import_runs, k) for k in ("seconds", "peak_extra_bytes")}
    export = {k: summary(export_runs, k) for k in ("seconds", "peak_extra_bytes")}
    hf_read = {
        k: summary([r["with_weights_read"] for r in hf_runs], k)
        for k in ("seconds", "peak_extra_bytes")
    }
    scratch = {k: summary(scratch_runs, k) for k in ("seconds", "peak_extra_bytes")}
    time_ratio = ours["seconds"]["median"] / hf["seconds"]["median"]
    memory_ratio = ours["peak_extra_bytes"]["median"] / checkpoint_bytes
    result = {
        "benchmark": "convert",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "config": config,
        "rounds": args.rounds,
        "checkpoint_bytes": checkpoint_bytes,
        "transformers_from_pretrained": hf,
        "transformers_from_pretrained_weights_read": hf_read,
        "keras_hub_t5_backbone_random": scratch,
        "import_time_vs_weights_read": ours["seconds"]["median"] / hf_read["seconds"]["median"],
        "import_time_vs_keras_hub_build": ours["seconds"]["median"] / scratch["seconds"]["median"],
        "import": ours,
        "export": export,
        "import_time_ratio": time_ratio,
        "import_memory_ratio": memory_ratio,
        "export_memory_ratio": export["peak_extra_bytes"]["median"] / checkpoint_bytes,
        "goals": {"import_time_ratio": 2.0, "import_memory_ratio": 2.0},
        "peak_reset": all(r["peak_reset"] for r in hf_runs + import_runs + export_runs),
    }
    write_result(result, args.output)
    mib = 1024 * 1024
    print(
        f"Config {config}; checkpoint {checkpoint_bytes / mib:.1f} MiB; "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(
        f"transformers from_pretrained: {hf['seconds']['median']:6.2f} s, "
        f"peak +{hf['peak_extra_bytes']['median'] / mib:7.1f} MiB"
    )
    print(
        f"  ... and every weight read:  {hf_read['seconds']['median']:6.2f} s, "
        f"peak +{hf_read['peak_extra_bytes']['median'] / mib:7.1f} MiB"
    )
    print(
        f"keras_fusion import:          {ours['seconds']['median']:6.2f} s, "
        f"peak +{ours['peak_extra_bytes']['median'] / mib:7.1f} MiB"
    )
    print(
        f"keras-hub T5Backbone(random): {scratch['seconds']['median']:6.2f} s, "
        f"peak +{scratch['peak_extra_bytes']['median'] / mib:7.1f} MiB"
    )
    print(
        f"keras_fusion export:          {export['seconds']['median']:6.2f} s, "
        f"peak +{export['peak_extra_bytes']['median'] / mib:7.1f} MiB"
    )
    print(
        f"Import time / transformers: {time_ratio:.2f} "
        f"(goal <= 2: {'met' if time_ratio <= 2 else 'NOT met'})"
    )
    print(
        f"Import peak / checkpoint:   {memory_ratio:.2f} "
        f"(goal <= 2: {'met' if memory_ratio <= 2 else 'NOT met'})"
    )
    print(f"Wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
