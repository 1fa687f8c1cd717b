"""The scripts end to end: every recipe, the SavedModel in a fresh process, bad input."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_fusion
from keras_fusion import data, recipes, training
from keras_fusion.diagnostics import relative_error
from t5_test_utils import TOLERANCE
from train_jobs import worker_shared_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory, worker_id):
    texts = data.load_corpus("embedded", "train")[:300]
    folder = worker_shared_folder(
        tmp_path_factory,
        worker_id,
        "test_tools_tokenizer",
        lambda folder: data.train_tokenizer(texts, 500, str(folder)),
    )
    # The one model the folder holds (train_tokenizer caches it by content).
    (path,) = [str(p) for p in folder.iterdir() if p.suffix == ".model"]
    return path


def tiny_run(recipe, model_dir, tokenizer_path, **overrides):
    config = training.RunConfig(
        recipe=recipe,
        preset="tiny",
        hidden_dim=32,
        num_heads=2,
        key_value_dim=16,
        intermediate_dim=64,
        steps=20,
        growth_step=10,
        eval_every=10,
        eval_batches=1,
        batch_size=8,
        input_length=32,
        target_length=8,
        tokenizer=tokenizer_path,
        model_dir=str(model_dir),
        **overrides,
    )
    return training.run(config)


def run_script(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


FIXTURE_WARNINGS = {}  # the warnings each recipe's run raised
FIXTURE_KERAS_WARNINGS = {}  # what keras_user_warnings made of a shared fixture's


def run_recording_warnings(recipe, model_dir, tokenizer_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning, from every thread, each time
        # What a user sees: the library's one filter (keras-hub's T5 warns at
        # every build that its attention layers drop a mask; keras_fusion/__init__).
        warnings.filterwarnings(
            "ignore", message=keras_fusion.KERAS_HUB_MASK_WARNING, category=UserWarning
        )
        summary = tiny_run(recipe, model_dir, tokenizer_path)
    FIXTURE_WARNINGS[recipe] = caught
    return summary


@pytest.fixture(scope="module")
def deep_fusion_run(tmp_path_factory, worker_id, tokenizer_path):
    """The tiny deep_fusion run, trained once for both xdist workers: its
    summary and the Keras warnings it raised are kept beside it."""

    def build(folder):
        summary = run_recording_warnings("deep_fusion", folder / "run", tokenizer_path)
        warned = keras_user_warnings(FIXTURE_WARNINGS["deep_fusion"])
        (folder / "outcome.json").write_text(json.dumps({"summary": summary, "warned": warned}))

    folder = worker_shared_folder(tmp_path_factory, worker_id, "test_tools_deep_fusion", build)
    outcome = json.loads((folder / "outcome.json").read_text())
    FIXTURE_KERAS_WARNINGS["deep_fusion"] = outcome["warned"]
    return folder / "run", outcome["summary"]


def keras_user_warnings(caught):
    """The `UserWarning`s raised inside Keras or keras-hub."""
    return [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, UserWarning)
        and any(f"{os.sep}{package}{os.sep}" in w.filename for package in ("keras", "keras_hub"))
    ]


def assert_artefacts(model_dir, grown):
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    curves = metrics["curves"]
    # The final model's line: its one curve, or (deep_fusion, a fusion tree of
    # depth 1) the first leaf's continued by the root that fuses the second in
    # (the root's first row is the fused model's, at the fusion).
    tree = "root" in curves
    main = curves["leaf0"] + curves["root"] if tree else next(iter(curves.values()))
    assert [r["step"] for r in main] == ([10, 10, 20] if tree else [10, 20])
    assert all(np.isfinite(r["eval_loss"]) and r["flops"] > 0 for r in main)
    # FLOPs only grow along the line (the root's first row adds leaf1's).
    assert all(b["flops"] > a["flops"] for a, b in zip(main, main[1:]))
    assert bool(metrics["growth_events"]) == grown
    # Each growth is marked on the row of the step that saw it.
    assert [r["growth"] for r in main if r["growth"]] == [
        e["entry"] for e in metrics["growth_events"]
    ]
    # The encoder check scores the same held-out batches as the last row.
    use = metrics["encoder_use"]
    assert use["loss"] == pytest.approx(main[-1]["eval_loss"], rel=1e-4)
    assert np.isfinite(use["mismatched_encoder_loss"]) and np.isfinite(use["content_loss"])
    with open(os.path.join(model_dir, "loss_vs_flops.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(model_dir, "logs"))
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))
    model = keras.saving.load_model(os.path.join(model_dir, "final.keras"), compile=False)
    # Every recipe ends at the target size (hidden 32, 2 layers).
    assert (model.backbone.hidden_dim, model.backbone.num_layers) == (32, 2)
    assert not [n for n in os.listdir(model_dir) if n.startswith(".partial")]
    return model


@pytest.mark.slow
def test_deep_fusion_recipe(deep_fusion_run):
    """Deep Fusion is the fusion tree of depth 1: two half-width leaves (the
    partners, seeds 0 and 1), then the root, which continues leaf0 and fuses
    leaf1 in at its first step."""
    model_dir, summary = deep_fusion_run
    model = assert_artefacts(model_dir, grown=True)
    assert model.backbone.norm_groups == [16, 16]
    assert "Final eval loss" in summary and "training FLOPs" in summary
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    curves = metrics["curves"]
    assert list(curves) == ["leaf0", "leaf1", "root"]
    (event,) = metrics["growth_events"]
    assert event["entry"].startswith("fuse@10:partner=") and event["entry"].endswith(
        os.path.join("nodes", "leaf1", "final.keras") + ":weight=0.5"
    )
    # Both partners' compute is counted in the root's FLOPs: at the fusion
    # (its first row, before it trains) exactly theirs, then more.
    partners = curves["leaf0"][-1]["flops"] + curves["leaf1"][-1]["flops"]
    first, last = curves["root"]
    assert (first["step"], first["flops"], first["growth"]) == (10, partners, event["entry"])
    assert np.isnan(first["train_loss"]) and last["flops"] > partners
    for node in ("leaf0", "leaf1", "root"):
        assert os.path.exists(os.path.join(model_dir, "nodes", node, "done.json"))
    # No Keras UserWarning: each is a sign that the library feeds Keras
    # something it did not expect ("`shuffle=True` was passed, but will be
    # ignored" came from fit's default on a dataset).
    assert FIXTURE_KERAS_WARNINGS["deep_fusion"] == []


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["self_fusion", "deepen", "scratch"])
def test_other_recipes(recipe, tmp_path, tokenizer_path):
    run_recording_warnings(recipe, tmp_path, tokenizer_path)
    model = assert_artefacts(tmp_path, grown=recipe != "scratch")
    assert len(model.growth_history) == (recipe != "scratch")
    if recipe == "self_fusion":
        # A growth inside fit is prepared ahead in a thread, and Keras warns
        # of nothing: "The structure of `inputs` doesn't match" came from a
        # TrackedDict data spec in that preparation thread.
        with open(os.path.join(tmp_path, "metrics.json")) as f:
            (event,) = json.load(f)["growth_events"]
        assert event["prepared_ahead"] is True
    assert keras_user_warnings(FIXTURE_WARNINGS[recipe]) == []


@pytest.mark.slow
def test_saved_model_in_a_fresh_process_matches_keras_and_answers_text(deep_fusion_run, tmp_path):
    model_dir, _ = deep_fusion_run
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 400, (2, 12)).astype("int32")
    batch = {
        "encoder_token_ids": ids,
        "encoder_padding_mask": np.ones_like(ids),
        "decoder_token_ids": ids[:, ::-1].copy(),
        "decoder_padding_mask": np.ones_like(ids),
    }
    np.savez(tmp_path / "batch.npz", **batch)
    # The token-id SavedModel needs no TensorFlow Text; the text one does.
    script = f"""
import sys
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(model_dir / "export")!r})
batch = dict(np.load({str(tmp_path / "batch.npz")!r}))
logits = loaded.signatures["serving_default"](\
**{{k: tf.constant(v) for k, v in batch.items()}})["logits"]
np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
assert "tensorflow_text" not in sys.modules
import tensorflow_text  # registers the SentencePiece ops of generate_text
text_model = tf.saved_model.load({str(model_dir / "export" / "text")!r})
text = text_model.signatures["generate_text"](\
text=tf.constant(["def main():", "The import statement"]))["text"]
print("GENERATED", [t.decode() for t in text.numpy()])
"""
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr[-3000:]
    generated = eval(process.stdout.split("GENERATED", 1)[1].strip())
    assert len(generated) == 2 and all(isinstance(t, str) for t in generated)
    model = keras.saving.load_model(os.path.join(model_dir, "final.keras"), compile=False)
    expected = model.predict_on_batch(batch)
    assert relative_error(np.load(tmp_path / "logits.npy"), expected) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--data=/nonexistent/*.txt"], "error: .*/nonexistent/\\*.txt"),
        (
            ["--preset=huge"],
            "error: preset must be one of \\('tiny', 'small', 'base'\\), got 'huge'",
        ),
        (
            ["--data=tfds:no_such_dataset_xyz", "--data_dir=/tmp/no_tfds"],
            "error: .*no_such_dataset_xyz",
        ),
        (["--data={empty}"], "error: The 1 file\\(s\\) matching .*empty.txt' hold no text"),
        (
            ["--learning_rate_scale=half"],
            "error: learning_rate_scale must be 'auto', 'width' or a number > 0, got 'half'",
        ),
    ],
)
def test_train_script_bad_input_exits_with_one_line_and_keeps_existing_model(
    args, message, tmp_path
):
    final = tmp_path / "final.keras"
    final.write_bytes(b"a good model from an earlier run")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [a.format(empty=empty) for a in args]
    process = run_script(
        "tools.train", f"--model_dir={tmp_path}", "--steps=20", "--eval_every=10", *args
    )
    assert process.returncode == 2
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and __import__("re").search(message, errors[0]), process.stderr[-2000:]
    assert final.read_bytes() == b"a good model from an earlier run"


@pytest.mark.slow
def test_fuse_script(deep_fusion_run, tmp_path):
    model_dir, _ = deep_fusion_run
    partner = str(model_dir / "nodes" / "leaf1" / "final.keras")  # a Deep Fusion partner
    final = str(model_dir / "final.keras")
    output = str(tmp_path / "fused.keras")
    process = run_script("tools.fuse", f"--models={partner},{partner}", f"--output={output}")
    assert process.returncode == 0, process.stderr[-2000:]
    error = float(process.stdout.split("random tokens:")[1].split()[0])
    assert error <= TOLERANCE
    fused = keras.saving.load_model(output, compile=False)
    assert fused.backbone.norm_groups == [16, 16]
    # A file that is not a model is refused, and the output is untouched.
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")
    before = open(output, "rb").read()
    process = run_script("tools.fuse", f"--models={partner},{broken}", f"--output={output}")
    assert process.returncode == 2 and "error: cannot load" in process.stderr
    assert open(output, "rb").read() == before
    process = run_script("tools.fuse", f"--models={partner},{final}", f"--output={output}")
    assert process.returncode == 0, process.stderr[-2000:]
    # Models that cannot be fused: the error names the field and both values.
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM

    other = FusionT5Seq2SeqLM(
        FusionT5Backbone(
            vocabulary_size=400,
            num_layers=2,
            num_heads=1,
            hidden_dim=16,
            intermediate_dim=32,
            key_value_dim=16,
        )
    )
    other_path = str(tmp_path / "other.keras")
    other.save(other_path)
    before = open(output, "rb").read()
    process = run_script("tools.fuse", f"--models={partner},{other_path}", f"--output={output}")
    assert process.returncode == 2
    assert "error: vocabulary_size differs: 500 vs 400" in process.stderr
    assert open(output, "rb").read() == before


@pytest.mark.slow
def test_evaluate_script_refuses_a_tokenizer_of_another_vocabulary(deep_fusion_run, tmp_path):
    model_dir, _ = deep_fusion_run
    other = data.train_tokenizer(data.load_corpus("embedded", "train")[:200], 400, str(tmp_path))
    process = run_script(
        "tools.evaluate", f"--model={model_dir / 'final.keras'}", f"--tokenizer={other}"
    )
    assert process.returncode == 2
    assert (
        "error: the tokenizer has 400 pieces but the model's vocabulary_size is 500"
        in process.stderr
    )


@pytest.mark.slow
def test_every_tool_runs_with_every_path_on_a_remote_filesystem(tmp_path):
    """tools.train (a text glob, model_dir and export_dir), tools.fuse,
    tools.export and tools.evaluate with every path under ram://, TF's
    in-process filesystem, which Python's open() and os cannot see: all of
    it must go through tf.io.gfile, and nothing lands in the working folder."""
    out = tmp_path / "out.json"
    work = tmp_path / "cwd"
    work.mkdir()
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "tools", "ram_worker.py"), str(out)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    for tool in ("train", "fuse", "export", "evaluate"):
        assert result[tool]["code"] == 0, (tool, result[tool]["output"])
    assert "held-out loss" in result["evaluate"]["output"]
    files = result["files"]
    for name in (
        "run/run.json",
        "run/metrics.json",
        "run/loss_vs_flops.png",
        "run/final.keras",
        # Deep Fusion is the tree of depth 1: each node in its own folder.
        *(
            f"run/nodes/{node}/{name}"
            for node in ("leaf0", "leaf1", "root")
            for name in ("metrics.json", "final.keras", "done.json", "checkpoints/checkpoint.json")
        ),
        "served/saved_model.pb",
        "fused/fused.keras",
        "fused/export/saved_model.pb",
    ):
        assert files.get(name, 0) > 0, name
    assert [n for n in files if n.startswith("run/tokenizer/") and n.endswith(".model")]
    assert [n for n in files if n.startswith("run/logs/root/")] and [
        n for n in files if n.startswith("run/logs/growth/")
    ]
    # --checkpoint_every=5, the last two kept: a leaf's at 5 and at its end
    # (6, --growth_step), the root's at 10 and 15.
    for node, steps in (("leaf0", (5, 6)), ("leaf1", (5, 6)), ("root", (10, 15))):
        assert sorted(
            int(n.split("ckpt-")[1].split("-")[0])
            for n in files
            if n.startswith(f"run/nodes/{node}/checkpoints/ckpt-")
        ) == list(steps)
    # --eval_every=10: rows at 10 and at each node's last step.
    curves = result["metrics"]["curves"]
    assert {node: [r["step"] for r in rows] for node, rows in curves.items()} == {
        "leaf0": [6],
        "leaf1": [6],
        "root": [6, 10, 15],  # 6: the fused model, as the root begins
    }
    assert os.listdir(work) == []  # no "ram:" folder, no stray file


@pytest.mark.parametrize("tpu", ["grpc://127.0.0.1:1", "no-such-tpu", "local"])
def test_tpu_strategy_fails_fast_when_no_tpu_is_reachable(tpu):
    """An error naming the flag (exit 2), not the resolver's endless wait
    (run_script's timeout would fail the test), and nothing written."""
    process = run_script(
        "tools.train",
        "--strategy=tpu",
        f"--tpu={tpu}",
        "--steps=3",
        "--eval_every=1",
        "--data=embedded",
        "--model_dir=ram://tpu_test",
    )
    assert process.returncode == 2, process.stderr[-2000:]
    assert f"--tpu={tpu}" in process.stderr and "error:" in process.stderr
    assert "Loading corpus" not in process.stdout  # checked first


def test_fuse_and_export_scripts_take_hugging_face_folders(tmp_path):
    import keras_hub

    from hf_test_utils import T5_11, hf_logits, load_hf, save_hf_t5
    from t5_test_utils import random_inputs

    a, folder_a = save_hf_t5(tmp_path / "a", seed=1, **T5_11)
    b, folder_b = save_hf_t5(tmp_path / "b", seed=2, d_model=8, num_heads=2, d_ff=12, **T5_11)
    fused = str(tmp_path / "fused.keras")
    process = run_script("tools.fuse", f"--models={folder_a},{folder_b}", f"--output={fused}")
    assert process.returncode == 0, process.stderr[-2000:]
    assert float(process.stdout.split("random tokens:")[1].split()[0]) <= TOLERANCE
    # A grouped fusion cannot become an HF T5: refused, nothing written.
    process = run_script(
        "tools.export",
        f"--model={fused}",
        "--format=huggingface",
        f"--export_dir={tmp_path / 'refused'}",
    )
    assert process.returncode == 2 and "no grouped RMSNorm" in process.stderr
    assert not (tmp_path / "refused").exists()
    # An HF folder through the tool, back to HF and to a keras-hub preset.
    process = run_script(
        "tools.export",
        f"--model={folder_a}",
        "--format=huggingface",
        f"--export_dir={tmp_path / 'hf_out'}",
    )
    assert process.returncode == 0, process.stderr[-2000:]
    inputs = random_inputs()
    assert (
        relative_error(hf_logits(load_hf(tmp_path / "hf_out"), inputs), hf_logits(a, inputs))
        <= TOLERANCE
    )
    process = run_script(
        "tools.export",
        f"--model={folder_b}",
        "--format=keras_hub",
        f"--export_dir={tmp_path / 'preset'}",
    )
    assert process.returncode == 0, process.stderr[-2000:]
    loaded = keras_hub.models.Seq2SeqLM.from_preset(str(tmp_path / "preset"))
    assert (
        relative_error(np.asarray(loaded(inputs, training=False)), hf_logits(b, inputs))
        <= TOLERANCE
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["self_fusion", "deep_fusion"])
def test_init_from_starts_the_recipe_from_a_trained_checkpoint(recipe, tmp_path, tokenizer_path):
    """--init_from: the run's starting model is the checkpoint itself (same
    logits when fit begins: deep_fusion's both partners, its tree's leaves),
    and the recipe grows it (both fusions: 2x wide)."""
    from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
    from t5_test_utils import random_backbone, random_inputs

    start = FusionT5Seq2SeqLM(
        random_backbone(
            cls=FusionT5Backbone,
            vocabulary_size=500,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            key_value_dim=8,
        )
    )
    path = str(tmp_path / "start.keras")
    start.save(path)
    inputs = {k: np.minimum(v, 499) for k, v in random_inputs(seed=3).items()}

    at_begin = {}  # stage: its model's logits when its fit begins

    class AtBegin(keras.callbacks.Callback):
        def __init__(self, stage):
            super().__init__()
            self.stage = stage

        def on_train_begin(self, logs=None):
            at_begin[self.stage] = np.array(self.model.lm(inputs))

    config = training.RunConfig(
        recipe=recipe,
        init_from=path,
        tokenizer=tokenizer_path,
        steps=8,
        growth_step=4,
        eval_every=4,
        eval_batches=1,
        batch_size=8,
        input_length=32,
        target_length=8,
        model_dir=str(tmp_path / "run"),
        export=False,  # the SavedModel is other tests' subject
    )
    summary = training.run(config, callbacks=lambda stage: [AtBegin(stage)])
    assert "SavedModel not written (--noexport)" in summary
    assert not os.path.exists(tmp_path / "run" / "export")
    # The stages that start from the checkpoint (the root starts with the fusion).
    starting = ["leaf0", "leaf1"] if recipe == "deep_fusion" else ["main"]
    assert sorted(at_begin) == sorted(starting + (["root"] if recipe == "deep_fusion" else []))
    for stage in starting:
        assert relative_error(at_begin[stage], start(inputs)) <= TOLERANCE, stage
    final = keras.saving.load_model(str(tmp_path / "run" / "final.keras"), compile=False)
    assert (final.backbone.hidden_dim, final.backbone.num_layers) == (32, 2)
    with pytest.raises(
        ValueError, match="holds no tokenizer: give its SentencePiece model as --tokenizer"
    ):
        recipes.init_from(path)


def test_train_flags_default_to_run_config():
    # tools.train's defaults are RunConfig's (chosen by
    # benchmarks/training_defaults.py): the script and the library agree.
    import dataclasses

    from tools import train

    for field in dataclasses.fields(training.RunConfig):
        assert train.FLAGS[field.name].default == field.default, field.name


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "auto"),
        (["--jit_compile", "--steps_per_execution=4"], "true"),  # the bare flag takes no value
        (["--nojit_compile", "--steps_per_execution=4"], "false"),
        (["--jit_compile=auto"], "auto"),
        (["--jit_compile=false"], "false"),
        (["--jit_compile=True"], "true"),
    ],
)
def test_jit_compile_is_written_like_a_boolean_and_keeps_auto(argv, expected):
    from absl import flags

    import tools
    from tools import train

    assert train.FLAGS["jit_compile"].boolean and train.FLAGS["jit_compile"].default == "auto"
    values = flags.FlagValues()
    tools.define_auto_bool("jit_compile", "auto", "XLA", flag_values=values)
    flags.DEFINE_integer("steps_per_execution", 1, "steps", flag_values=values)
    values(["train", *argv])
    assert values.jit_compile == expected
    assert values.steps_per_execution == (4 if "--steps_per_execution=4" in argv else 1)
    assert values.jit_compile in training.JIT_COMPILE  # what RunConfig accepts


def test_jit_compile_refuses_other_words_naming_the_value():
    from absl import flags

    import tools

    values = flags.FlagValues()
    tools.define_auto_bool("jit_compile", "auto", "XLA", flag_values=values)
    with pytest.raises(flags.IllegalFlagValueError, match="'maybe' is not auto, true or false"):
        values(["train", "--jit_compile=maybe"])
    with pytest.raises(ValueError, match="does not take an argument"):
        values(["train", "--nojit_compile=true"])
