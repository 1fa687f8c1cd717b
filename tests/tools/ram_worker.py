"""Runs tools.train, tools.fuse, tools.export and tools.evaluate, as scripts, with every
path under TF's in-process `ram://` filesystem, then reports what each wrote.

    python tests/tools/ram_worker.py OUT.json

`ram://` lives in one process, so the four scripts run here one after the
other through `runpy` (each as `__main__`, with its own argv; absl's flags of
the previous script are removed first). OUT.json gets every script's exit
code and output tail, and every file under `ram://` with its size.
"""

import contextlib
import io
import json
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = "ram://kf"
TINY = [
    "--preset=tiny",
    "--hidden_dim=32",
    "--num_heads=2",
    "--key_value_dim=16",
    "--intermediate_dim=64",
    "--batch_size=8",
    "--input_length=32",
    "--target_length=8",
    "--vocabulary_size=500",
]


def script(module, *argv):
    from absl import flags

    for name in list(flags.FLAGS):
        if name not in (
            "log_dir",
            "v",
            "verbosity",
            "logtostderr",
            "alsologtostderr",
            "stderrthreshold",
            "showprefixforinfo",
            "logger_levels",
            "run_with_pdb",
            "pdb_post_mortem",
            "pdb",
            "run_with_profiling",
            "profile_file",
            "use_cprofile_for_profiling",
            "only_check_args",
            "test_tmpdir",
            "test_srcdir",
            "test_random_seed",
            "test_randomize_ordering_seed",
            "xml_output_file",
            "op_conversion_fallback_to_while_loop",
            "delta_threshold",
            "tt_check_filter",
            "tt_single_core_summaries",
            "runtime_oom_exit",
            "hbm_oom_exit",
            "help",
            "helpshort",
            "helpfull",
            "helpxml",
            "flagfile",
            "undefok",
        ):
            delattr(flags.FLAGS, name)
    sys.argv = [module, *argv]
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as exit:
            code = exit.code or 0
    return {"code": code, "output": out.getvalue()[-4000:]}


def main(out):
    import tensorflow as tf

    from keras_fusion import data, storage

    # A text corpus on the remote filesystem, as `--data=gs://bucket/texts/*.txt` would be.
    texts = data.load_corpus("embedded", "train")[:400]
    for i in range(4):
        storage.write_text(f"{ROOT}/texts/part{i}.txt", "\n\n".join(texts[i::4]))
    results = {
        "train": script(
            "tools.train",
            "--recipe=deep_fusion",
            "--steps=15",
            "--growth_step=6",
            "--eval_every=10",
            "--eval_batches=1",
            "--checkpoint_every=5",
            f"--data={ROOT}/texts/*.txt",
            f"--model_dir={ROOT}/run",
            f"--export_dir={ROOT}/served",
            *TINY,
        )
    }
    tokenizer = (storage.glob(f"{ROOT}/run/tokenizer/*.model") or ["(no tokenizer)"])[0]
    results["fuse"] = script(
        "tools.fuse",
        f"--models={ROOT}/run/final.keras,{ROOT}/run/final.keras",
        f"--output={ROOT}/fused/fused.keras",
    )
    results["export"] = script(
        "tools.export",
        f"--model={ROOT}/fused/fused.keras",
        f"--tokenizer={tokenizer}",
        f"--export_dir={ROOT}/fused/export",
    )
    results["evaluate"] = script(
        "tools.evaluate",
        f"--model={ROOT}/run/final.keras",
        f"--tokenizer={tokenizer}",
        f"--data={ROOT}/texts/*.txt",
        "--batch_size=8",
        "--batches=2",
        "--input_length=32",
        "--target_length=8",
    )
    results["files"] = {
        storage.join(folder, name)[len(ROOT) + 1 :]: len(
            storage.read_bytes(storage.join(folder, name))
        )
        for folder, _, names in tf.io.gfile.walk(ROOT)
        for name in names
    }
    metrics = f"{ROOT}/run/metrics.json"
    results["metrics"] = storage.read_json(metrics) if storage.exists(metrics) else None
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
