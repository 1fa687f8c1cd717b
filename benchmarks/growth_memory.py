"""Does growing leak? Resident memory after five growths in one process.

Process A builds a small T5, wraps it in `GrowingT5Seq2SeqLM` and trains it
through five growths (`GrowthCallback`), then trains on a few steps. Process B
builds the final architecture directly and trains it the same number of
steps (so it holds the same model, optimizer state and traced train
function). Each runs in a fresh process; the figure is each one's resident
memory (VmRSS) after `gc.collect()`, and their ratio. Goal (reported, not
asserted): A within 10% of B.

Run: `python benchmarks/growth_memory.py` (about a minute); writes
`benchmarks/results/growth_memory.json`.
"""

import argparse
import datetime
import json
import os

from benchmark_utils import (
    in_fresh_process,
    machine_info,
    meminfo_kib,
    script_setup,
    versions,
    write_result,
)

ROOT = script_setup(__file__)

# Large enough that the models and optimizer state are a visible share of the
# process (TensorFlow's runtime alone is ~1.1 GiB): a leak of the five
# intermediate models would show.
CONFIG = dict(
    vocabulary_size=32000,
    num_layers=2,
    num_heads=4,
    hidden_dim=128,
    intermediate_dim=256,
    key_value_dim=32,
    dropout=0.0,
)
SCHEDULE = "deepen@2,widen_ffn@4,self_fuse@6,deepen@8,widen_ffn@10"
STEPS = 14
BATCH, LENGTH = 8, 32


def _train(model, steps, callbacks=()):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(3, CONFIG["vocabulary_size"], (steps * BATCH, LENGTH)).astype("int32")
    x = {
        "encoder_token_ids": ids,
        "encoder_padding_mask": np.ones_like(ids),
        "decoder_token_ids": ids,
        "decoder_padding_mask": np.ones_like(ids),
    }
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        x, ids, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks)
    )


def _resident(model):
    import gc

    gc.collect()
    return {
        "rss_bytes": meminfo_kib("VmRSS", "/proc/self/status") * 1024,
        "parameters": model.backbone.count_params(),
        "variables": len(model.weights),
    }


def grown_process():
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM
    from keras_fusion.models.fusion_t5_backbone import backbone_config

    model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(FusionT5Backbone(**CONFIG)))
    growth = GrowthCallback(SCHEDULE, verbose=0)
    _train(model, STEPS, [growth])
    result = _resident(model)
    result.update(events=growth.events, final_config=backbone_config(model.backbone))
    return json.loads(json.dumps(result))  # plain types (Keras tracks lists) for the pickle


def direct_process(final_config):
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM, GrowingT5Seq2SeqLM

    model = GrowingT5Seq2SeqLM(FusionT5Seq2SeqLM(FusionT5Backbone(**final_config)))
    _train(model, STEPS)
    return _resident(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", default=os.path.join(ROOT, "benchmarks", "results", "growth_memory.json")
    )
    args = parser.parse_args()
    grown = in_fresh_process(grown_process)
    final = {k: v for k, v in grown["final_config"].items() if k != "dtype"}
    direct = in_fresh_process(direct_process, final)
    ratio = grown["rss_bytes"] / direct["rss_bytes"]
    result = {
        "benchmark": "growth_memory",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "start_config": CONFIG,
        "schedule": SCHEDULE,
        "steps": STEPS,
        "batch": BATCH,
        "length": LENGTH,
        "grown": {k: v for k, v in grown.items() if k != "final_config"},
        "final_config": final,
        "direct": direct,
        "rss_ratio": ratio,
        "goal": 1.10,
        "goal_met": ratio <= 1.10,
    }
    write_result(result, args.output)
    mib = 1024 * 1024
    print(f"Start {CONFIG}; schedule {SCHEDULE}; {STEPS} steps of batch {BATCH} x {LENGTH}")
    print(f"Final: {grown['parameters']:,} parameters ({direct['parameters']:,} built directly)")
    print(f"Resident memory after five growths:      {grown['rss_bytes'] / mib:8.1f} MiB")
    print(f"Same final model built directly:         {direct['rss_bytes'] / mib:8.1f} MiB")
    state = 3 * 4 * direct["parameters"] / mib  # weights + Adam's two slots, float32
    print(
        f"Difference: {(grown['rss_bytes'] - direct['rss_bytes']) / mib:.1f} MiB; "
        "the final model with its "
        f"optimizer state is {state:.1f} MiB"
    )
    print(
        f"Ratio grown / direct: {ratio:.3f} (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})"
    )
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
