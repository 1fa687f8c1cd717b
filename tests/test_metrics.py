"""keras_fusion.metrics: the plot on any filesystem, the recorder's state across a resume."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from keras_fusion import flops, metrics
from keras_fusion.models.fusion_t5_backbone import backbone_config
from t5_test_utils import growing_lm, random_inputs, random_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the PNG specification's first 8 bytes

ROWS = [
    metrics.MetricsRow(
        step=10, flops=1e9, train_loss=5.0, eval_loss=4.5, eval_accuracy=0.1, num_parameters=1000
    ),
    metrics.MetricsRow(
        step=20,
        flops=3e9,
        train_loss=4.0,
        eval_loss=3.5,
        eval_accuracy=0.2,
        num_parameters=4000,
        growth="self_fuse@10",
    ),
]


@pytest.mark.parametrize("where", ["local", "ram"])
def test_plot_metrics_writes_a_png_from_rows_and_dicts(where, tmp_path):
    path = str(tmp_path / "plot.png") if where == "local" else "ram://test_metrics/plot.png"
    curves = {"rows": ROWS, "dicts": [dataclasses.asdict(r) for r in ROWS]}
    written = metrics.plot_metrics(curves, path)
    with tf.io.gfile.GFile(written, "rb") as f:
        image = f.read()
    assert image[:8] == PNG_SIGNATURE
    assert len(image) > 1000  # a drawn figure, not just a header


def fit(model, x, y, steps, callbacks):
    repeat = lambda a: np.concatenate([a] * steps)  # noqa: E731
    model.fit(
        {k: repeat(v) for k, v in x.items()},
        repeat(y),
        batch_size=len(y),
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


@pytest.mark.slow
def test_recorder_state_round_trips_rows_flops_and_the_loss_window(tmp_path):
    x, y = random_inputs(batch_size=2, seed=3), random_labels(batch_size=2, seed=4)
    eval_data = tf.data.Dataset.from_tensors((x, y, x["decoder_padding_mask"].astype("float32")))
    model = growing_lm()
    path = str(tmp_path / "metrics.json")
    recorder = metrics.MetricsRecorder(eval_data, 2, 9, 9, every=2, path=path, stage="main")
    fit(model, x, y, 3, [recorder])
    # A row at step 2; step 3's loss waits in the window for the next row.
    assert [r.step for r in recorder.rows] == [2]
    state = json.loads(json.dumps(recorder.state()))  # what a checkpoint keeps is JSON
    assert state["window"][1] == 1
    per_step = flops.training_flops(backbone_config(model.backbone), 2, 9, 9)
    assert state["flops"] == pytest.approx(3 * per_step)
    assert state["rows"][0]["flops"] == pytest.approx(2 * per_step)
    with open(path) as f:
        assert json.load(f) == {"stage": "main", "rows": state["rows"]}

    resumed = metrics.MetricsRecorder(eval_data, 2, 9, 9, every=2)
    resumed.restore(state)
    assert resumed.rows == recorder.rows
    assert all(isinstance(r, metrics.MetricsRow) for r in resumed.rows)
    assert resumed.flops == recorder.flops
    assert resumed.state() == recorder.state()
