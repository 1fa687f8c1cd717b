"""What a run records: held-out loss against training FLOPs, and its plot.

`MetricsRecorder` is the callback that counts FLOPs and evaluates;
`plot_metrics` draws its rows.
"""

import dataclasses
import io

import keras
import numpy as np

from keras_fusion import flops, storage
from keras_fusion.models.fusion_t5_backbone import backbone_config


@dataclasses.dataclass
class MetricsRow:
    step: int
    flops: float
    train_loss: float
    eval_loss: float
    eval_accuracy: float
    num_parameters: int
    growth: str = ""


class MetricsRecorder(keras.callbacks.Callback):
    """Counts training FLOPs and evaluates held-out loss every `every` steps.

    Rows (step, FLOPs so far, train loss, eval loss and accuracy, parameters,
    growth event) go to `rows` and, rewritten after each one, to `path` as
    JSON (any TF filesystem). A row is recorded whenever the optimizer step
    reaches a multiple of `every` (with `steps_per_execution > 1`, at the
    first execution boundary at or after it, where callbacks run), at
    `final_step`, and as `fit` begins when a growth happened then (its
    `train_loss` NaN: no step trained since). FLOPs of the current
    architecture are counted per step, so they follow each growth;
    `flops_offset` adds compute spent before this fit (a fusion's inputs').

    A row's `train_loss` is the mean training loss of the steps since the
    previous row (not Keras' running mean of the epoch), so that a run
    resumed from a checkpoint (`state` / `restore`) records the same rows as
    one that never stopped.

    Args:
        eval_data: a finite dataset of `(x, y, sample_weight)` batches.
        batch_size, encoder_length, decoder_length: the training shapes.
        every: evaluation period in optimizer steps.
        path: optional JSON path.
        flops_offset: FLOPs already spent.
        growth_callback: the run's `GrowthCallback`, to mark its events.
        stage: a label saved with the rows.
        final_step: optional step at which a last row is always recorded.
    """

    def __init__(
        self,
        eval_data,
        batch_size,
        encoder_length,
        decoder_length,
        every,
        path=None,
        flops_offset=0.0,
        growth_callback=None,
        stage="",
        final_step=None,
    ):
        super().__init__()
        self.eval_data = eval_data
        self.shape = (batch_size, encoder_length, decoder_length)
        self.every = every
        self.path = path
        self.flops = float(flops_offset)
        self.growth_callback = growth_callback
        self.stage = stage
        self.final_step = final_step
        self.rows = []
        self._marked = 0
        self._window = [0.0, 0]  # training-loss sum and steps since the last row
        self._last_step = None

    def state(self):
        """What a checkpoint must keep to resume recording exactly."""
        return {
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "flops": self.flops,
            "marked": self._marked,
            "window": list(self._window),
        }

    def restore(self, state):
        self.rows = [MetricsRow(**row) for row in state["rows"]]
        self.flops = state["flops"]
        self._marked = state["marked"]
        self._window = list(state["window"])

    def on_train_begin(self, logs=None):
        self._last_step = int(self.model.optimizer.iterations.numpy())
        # A growth as fit begins (a fusion-tree node fusing its inputs; the
        # growth callback runs first) gets its row at once: the grown
        # model's held-out loss before it trains, which no other row shows.
        if any(event["step"] == self._last_step for event in self._unmarked_events()):
            self.record(self._last_step, float("nan"))  # no training step since

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._epoch_sum = self._last_step, 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._release_stale_eval()
        step = int(self.model.optimizer.iterations.numpy())
        done = step - self._last_step
        self.flops += done * flops.training_flops(backbone_config(self.model.backbone), *self.shape)
        # Keras logs the epoch's running mean: recover this call's steps' sum.
        epoch_sum = float((logs or {}).get("loss", np.nan)) * (step - self._epoch_start)
        self._window[0] += epoch_sum - self._epoch_sum
        self._window[1] += done
        self._epoch_sum = epoch_sum
        last, self._last_step = self._last_step, step
        if step // self.every > last // self.every or step == self.final_step:
            self.record(step, self._window[0] / max(self._window[1], 1))
            self._window = [0.0, 0]

    def on_train_end(self, logs=None):
        self._release_stale_eval()

    def _release_stale_eval(self):
        """Drop the evaluation function of a model a growth has replaced.

        `_batch_sums` closes over the inner model it was traced for (and its
        concrete function captures that model's variables): kept until the
        next evaluation, or past the end of `fit` when no evaluation follows
        the last growth, it would keep the replaced model alive.
        """
        if getattr(self, "_eval_lm", None) is not None and self._eval_lm is not self.model.lm:
            self._eval_lm = self._batch_sums = None

    def _unmarked_events(self):
        """The growth events no row has marked yet."""
        return self.growth_callback.events[self._marked :] if self.growth_callback else []

    def record(self, step, train_loss):
        eval_loss, eval_accuracy = self.evaluate()
        events = self._unmarked_events()
        self._marked += len(events)
        row = MetricsRow(
            step=step,
            flops=self.flops,
            train_loss=train_loss,
            eval_loss=eval_loss,
            eval_accuracy=eval_accuracy,
            num_parameters=self.model.backbone.count_params(),
            growth=";".join(e["entry"] for e in events),
        )
        self.rows.append(row)
        if self.path:
            storage.write_json(
                self.path, {"stage": self.stage, "rows": [dataclasses.asdict(r) for r in self.rows]}
            )

    def evaluate(self):
        """Token-weighted held-out loss and accuracy.

        Not `model.evaluate`: inside `fit` it would reset the compiled
        metrics that `fit` is accumulating, and the epoch logs would report
        the evaluation instead of training.
        """
        import tensorflow as tf

        lm = self.model.lm
        if getattr(self, "_eval_lm", None) is not lm:  # retrace after a growth only
            self._eval_lm = lm

            @tf.function
            def batch_sums(x, y, weight):
                logits = lm(x, training=False)
                losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                correct = tf.cast(
                    tf.equal(tf.argmax(logits, -1, output_type=y.dtype), y), tf.float32
                )
                return (
                    tf.reduce_sum(losses * weight),
                    tf.reduce_sum(correct * weight),
                    tf.reduce_sum(weight),
                )

            self._batch_sums = batch_sums
        totals = np.zeros(3)
        for x, y, weight in self.eval_data:
            totals += [float(v) for v in self._batch_sums(x, y, weight)]
        return totals[0] / totals[2], totals[1] / totals[2]


def plot_metrics(curves, path, title="Held-out loss against training compute"):
    """PNG of eval loss against training FLOPs, growth events marked.

    Args:
        curves: `{label: [MetricsRow or dict, ...]}`.
        path: the PNG to write (any TF filesystem; atomically on local disk).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label, rows in curves.items():
        rows = [dataclasses.asdict(r) if isinstance(r, MetricsRow) else r for r in rows]
        (line,) = axis.plot(
            [r["flops"] for r in rows], [r["eval_loss"] for r in rows], marker=".", label=label
        )
        for r in rows:
            if r["growth"]:
                axis.axvline(r["flops"], color=line.get_color(), linestyle=":", alpha=0.7)
    axis.set_xlabel("training FLOPs (all models of the run)")
    axis.set_ylabel("held-out loss")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    return storage.write_bytes(path, image.getvalue())
