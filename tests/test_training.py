"""keras_fusion.training: RunConfig, the model_dir guard, StopAtStep, PreemptionWatch."""

import json
import os
import signal

import keras
import numpy as np
import pytest

from keras_fusion import training


def test_growth_flags_become_callback_options():
    config = training.RunConfig(
        learning_rate_scale="0.25", rewarmup_steps=50, growth_optimizer_state="reset"
    )
    assert config.growth_options() == dict(
        learning_rate_scale=0.25, rewarmup_steps=50, optimizer_slots="reset"
    )
    assert training.RunConfig().growth_options()["learning_rate_scale"] == "auto"
    for bad, message in [
        (dict(learning_rate_scale="-1"), "learning_rate_scale"),
        (dict(rewarmup_steps=-5), "rewarmup_steps"),
        (dict(growth_optimizer_state="fresh"), "growth_optimizer_state"),
        (
            dict(export=False, export_dir="served"),
            r"--export_dir=served names where the SavedModel goes, but --noexport writes none",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            training.RunConfig(**bad).check()


def test_steps_need_no_relation_to_eval_every():
    config = training.RunConfig(steps=40, eval_every=100).check()
    # The default growth time: DEFAULT_GROWTH_FRACTION (0.05) of the steps,
    # and FUSION_GROWTH_FRACTION (0.1) for the recipes that fuse partners.
    assert (config.recipe, config.steps, config.growth_step) == ("deep_fusion", 40, 4)
    for recipe in ("stack", "deepen", "self_fusion"):
        assert training.RunConfig(recipe=recipe, steps=40).check().growth_step == 2
    assert training.RunConfig(recipe="fusion_tree", steps=40).check().growth_step == 4
    with pytest.raises(
        ValueError, match=r"steps \(40\) must be a multiple of steps_per_execution \(16\)"
    ):
        training.RunConfig(steps=40, steps_per_execution=16).check()
    with pytest.raises(
        ValueError, match=r"growth_step \(each node's steps\) \(6\) must be a multiple"
    ):
        training.RunConfig(steps=40, growth_step=6, steps_per_execution=4).check()


def directory_contents(root):
    """{relative path: bytes} of every file under root."""
    contents = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, root)] = f.read()
    return contents


def test_a_model_dir_holding_another_run_is_refused_naming_each_flag_and_left_as_it_was(tmp_path):
    training.prepare_model_dir(
        training.RunConfig(model_dir=str(tmp_path), steps=100, learning_rate=3e-3)
    )
    (tmp_path / "final.keras").write_bytes(b"the earlier run's model")
    before = directory_contents(tmp_path)
    other = training.RunConfig(model_dir=str(tmp_path), steps=200, learning_rate=1e-3)
    with pytest.raises(ValueError) as error:
        training.prepare_model_dir(other)
    message = str(error.value)
    assert f"--model_dir={tmp_path}" in message
    assert "--learning_rate: 0.003 there, 0.001 now" in message
    assert "--steps: 100 there, 200 now" in message
    assert "--recipe" not in message  # only the flags that differ
    assert directory_contents(tmp_path) == before


def test_the_same_flags_resume_and_resumable_flags_may_change(tmp_path):
    first = training.RunConfig(model_dir=str(tmp_path), steps=100)
    training.prepare_model_dir(first)
    training.prepare_model_dir(first)  # the same run: accepted
    # RESUMABLE_FLAGS: a pre-empted TPU VM may come back under another name,
    # the export may go elsewhere (or be skipped), checkpoints may come more
    # or less often.
    training.prepare_model_dir(
        training.RunConfig(
            model_dir=str(tmp_path),
            steps=100,
            tpu="other-tpu",
            export_dir=str(tmp_path / "elsewhere"),
            checkpoint_every=7,
        )
    )
    training.prepare_model_dir(training.RunConfig(model_dir=str(tmp_path), steps=100, export=False))
    with open(tmp_path / "run.json") as f:
        flags = json.load(f)["flags"]
    assert flags["steps"] == 100
    assert not {"tpu", "export_dir", "export", "checkpoint_every", "fresh"} & set(flags)


def test_fresh_deletes_what_an_earlier_run_wrote(tmp_path):
    training.prepare_model_dir(training.RunConfig(model_dir=str(tmp_path), steps=100))
    written = [
        "metrics.json",
        "metrics_main.json",
        "metrics_partner.json",
        "partner.keras",
        "final.keras",
        "loss_vs_flops.png",
        "checkpoints/ckpt-1.keras",
        "checkpoints/checkpoint.json",
        "logs/main/events",
        "export/saved_model.pb",
    ]
    for name in written:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"from the earlier run")
    (tmp_path / "notes.txt").write_text("not the run's")
    # Other flags: refused without fresh, accepted with it.
    training.prepare_model_dir(training.RunConfig(model_dir=str(tmp_path), steps=200, fresh=True))
    assert sorted(directory_contents(tmp_path)) == ["notes.txt", "run.json"]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "logs").exists()
    with open(tmp_path / "run.json") as f:
        assert json.load(f)["flags"]["steps"] == 200


def test_stop_at_step_stops_fit_at_that_optimizer_step():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.ones((1000, 2), "float32")
    y = np.zeros((1000, 1), "float32")
    # 1000 steps in the epoch; the callback must end fit after the 7th.
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[training.StopAtStep(7)])
    assert int(model.optimizer.iterations.numpy()) == 7


def test_preemption_watch_turns_sigterm_into_a_request_and_restores_the_handler():
    received = []

    def previous(signum, frame):
        received.append(signum)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        watch = training.PreemptionWatch()
        with watch:
            assert not watch.requested
            watch.stop_if_requested("before")  # nothing requested: no error
            os.kill(os.getpid(), signal.SIGTERM)
            assert watch.requested
            with pytest.raises(
                training.Preempted,
                match="pre-empted \\(SIGTERM\\) in the test: the last checkpoint stands",
            ):
                watch.stop_if_requested("in the test")
        assert received == []  # the watch, not the previous handler, took it
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


def test_a_deep_fusion_run_of_the_layout_before_the_tree_is_refused_and_kept(tmp_path):
    """deep_fusion trains as a fusion tree (nodes/NAME/); a model_dir where it
    trained its partner and main model in checkpoints/ cannot be resumed:
    refused naming --fresh, nothing written or deleted."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint.json").write_text('{"checkpoints": []}')
    (tmp_path / "partner.keras").write_bytes(b"an earlier run's partner")
    before = directory_contents(tmp_path)
    with pytest.raises(ValueError, match=r"before deep_fusion trained as a fusion tree.*--fresh"):
        training.run(training.RunConfig(recipe="deep_fusion", model_dir=str(tmp_path), steps=8))
    assert directory_contents(tmp_path) == before
