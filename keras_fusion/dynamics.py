"""DynamicsMonitor: the quantities that govern training after growth.

The paper's backward-error analysis (arXiv 2306.11903, after Barrett and
Dherin's implicit gradient regularisation): gradient descent with step `h`
follows the modified loss `L + (h/4)·||∇L||²`, so the implicit
regulariser `(h/4)·||∇L||²` is what the step size adds to the loss. After
Deep Fusion the kernels are block-diagonal, one block per source model; the
gradient in the off-diagonal (cross) blocks is what makes the sources
interact. After self fusion the two halves start identical (up to the
cancelling noise) and must move apart for the wider model to be more than
the small one. `DynamicsMonitor` measures these during `fit`.

The block arithmetic is kept in small pure functions (`source_layout`,
`kernel_partitions`, `block_square_sums`) that work on arrays and tensors
alike.
"""

import json
import math

import keras
import numpy as np
import tensorflow as tf

from keras_fusion import growth_maps, storage
from keras_fusion.flops import head_dim
from keras_fusion.models import inner_lm
from keras_fusion.models.fusion_t5_backbone import backbone_config, backbone_variables

SOURCE_FIELDS = ("hidden_dim", "num_heads", "intermediate_dim")

# Quantities also put into the epoch logs: present in every record, so that
# loggers that fix their columns at the first epoch (CSVLogger) keep working.
EPOCH_LOG_KEYS = ("loss", "grad_norm", "regularizer")


def source_dims(backbone):
    """`{"hidden_dim", "num_heads", "intermediate_dim"}` of a source model.

    Example: `sources=[source_dims(a.backbone), source_dims(b.backbone)]`
    before `FusionT5Seq2SeqLM.fuse(a, b)`.
    """
    return {field: int(getattr(backbone, field)) for field in SOURCE_FIELDS}


def source_layout(backbone, sources=None):
    """The per-source dimensions of a (possibly fused) backbone, or None.

    After `fuse` the backbone records only its feature groups
    (`norm_groups`), not how many heads or feed-forward units each source
    brought, so the layout is taken from `sources` when given. Without it,
    the layout is derived only where that is unambiguous: a model with one
    norm group is one source (None is returned: nothing to split), and a
    model whose groups are all of one size is split into equal sources
    (exact for self fusion, repeated self fusion and the fusion of models of
    one shape). Anything else needs `sources`.

    Args:
        backbone: a `FusionT5Backbone` (or `T5Backbone`).
        sources: optional list of dicts with `SOURCE_FIELDS`, in fusion
            order.

    Returns:
        A list of dicts (two or more), or None for a single source.

    Raises:
        ValueError: if `sources` does not add up to the backbone, cuts
            through a norm group, or is needed and missing.
    """
    groups = list(getattr(backbone, "norm_groups", None) or [backbone.hidden_dim])
    if sources is None:
        count = len(groups)
        if count == 1:
            return None
        if len(set(groups)) != 1 or backbone.num_heads % count or backbone.intermediate_dim % count:
            raise ValueError(
                f"Cannot tell the source layout of a model with norm_groups={groups}, "
                f"num_heads={backbone.num_heads}, intermediate_dim={backbone.intermediate_dim}: "
                "pass sources=[source_dims(a.backbone), source_dims(b.backbone), ...]."
            )
        return [
            {
                "hidden_dim": groups[0],
                "num_heads": backbone.num_heads // count,
                "intermediate_dim": backbone.intermediate_dim // count,
            }
        ] * count
    sources = [{field: int(s[field]) for field in SOURCE_FIELDS} for s in sources]
    for field in SOURCE_FIELDS:
        total = sum(s[field] for s in sources)
        if total != getattr(backbone, field):
            raise ValueError(
                f"sources add up to {field}={total} but the model has {getattr(backbone, field)}."
            )
    group_ends = set(np.cumsum(groups).tolist())
    source_ends = np.cumsum([s["hidden_dim"] for s in sources]).tolist()
    if not set(source_ends) <= group_ends:
        raise ValueError(
            f"sources' hidden_dims {[s['hidden_dim'] for s in sources]} cut through the "
            f"model's norm_groups {groups}."
        )
    return sources if len(sources) > 1 else None


def kernel_partitions(sources, key_value_dim):
    """Row and column block sizes of every kernel kind, one block per source.

    Hidden-side axes are split by the sources' `hidden_dim`, attention inner
    axes by `num_heads * key_value_dim`, feed-forward axes by
    `intermediate_dim` (fused kernels concatenate heads and units per
    source, `growth_maps.fuse_parameters`).

    Returns:
        `{kernel name: (row sizes, column sizes)}` for the names in
        `growth_maps.KERNELS`.
    """
    hidden = [s["hidden_dim"] for s in sources]
    inner = [s["num_heads"] * key_value_dim for s in sources]
    ffn = [s["intermediate_dim"] for s in sources]
    return {
        "query": (hidden, inner),
        "key": (hidden, inner),
        "value": (hidden, inner),
        "output": (inner, hidden),
        "ffn_input": (hidden, ffn),
        "ffn_gate": (hidden, ffn),
        "ffn_output": (ffn, hidden),
    }


def block_square_sums(matrix, rows, cols):
    """Sum of squares of every block of a 2-D matrix, as an (n, n) tensor.

    Entry `[i, j]` is the squared Frobenius norm of the block of row part
    `i` and column part `j`: the diagonal holds the sources' own blocks, the
    rest the cross blocks.
    """
    row_ids = np.repeat(np.arange(len(rows)), rows)
    col_ids = np.repeat(np.arange(len(cols)), cols)
    squares = tf.square(tf.convert_to_tensor(matrix, tf.float32))
    by_rows = tf.math.unsorted_segment_sum(squares, row_ids, len(rows))
    return tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(by_rows), col_ids, len(cols)))


def _named_kernels(tree):
    """[(kernel name, variable)] of a backbone parameter tree."""
    found = []
    growth_maps.map_leaves(
        lambda name, leaves: (
            found.append((name, leaves[0])) if name in growth_maps.KERNELS else None
        ),
        [tree],
    )
    return found


def _halves(sources):
    """Index splitting the sources into two identical halves, or None."""
    count = len(sources)
    if count % 2 or sources[: count // 2] != sources[count // 2 :]:
        return None
    return count // 2


class DynamicsMonitor(keras.callbacks.Callback):
    """Logs the backward-error-analysis quantities of training, during fit.

    Every `every` optimizer steps (global `optimizer.iterations`) the
    monitor takes the gradient of the training loss on a fixed probe batch
    and records:
        - `loss`: the loss on the probe batch;
        - `learning_rate`: `h`, the optimizer's current rate (a schedule is
          evaluated at the current step);
        - `grad_norm`: `||∇L||` over all trainable variables;
        - `regularizer`: `(h/4)·||∇L||²`, the implicit regulariser of the
          modified loss gradient descent follows.
    For a fused model (two or more sources, see `source_layout`), over the
    2-D kernels (attention q/k/v/o, self and cross; ffn input/gate/output):
        - `kernel_grad_norm`: the gradient norm over all kernels;
        - `source_{i}_grad_norm`: restricted to source i's diagonal blocks;
        - `cross_grad_norm`: restricted to the off-diagonal blocks, where the
          sources interact (zero weights there at fusion; this gradient is
          what fills them);
        - `cross_grad_fraction`: `cross_grad_norm² / kernel_grad_norm²`.
    When the sources split into two identical halves (self fusion):
        - `halves_embedding_distance`, `halves_kernel_distance`: the
          relative distance `||A - B|| / sqrt((||A||² + ||B||²) / 2)`
          between the two halves of the token embedding (feature columns),
          and between the halves' diagonal blocks of all kernels together.
          0 means the wide model is still the small one.

    The loss is `model.compute_loss(x, y, model(x, training=False),
    sample_weight)`: the compiled loss plus any `add_loss` terms, without
    dropout, so that records differ only through the weights. The gradient
    is one compiled `tf.function`, traced once per inner model: for a
    `GrowingT5Seq2SeqLM` it is retraced when `model.lm` is swapped at
    growth (`num_traces` counts the traces). A measurement costs one forward
    and backward pass on the probe batch; with the default `every=10` and a
    probe the size of a training batch that is roughly a tenth of the
    training compute.

    Put it after `GrowthCallback` in the callback list to measure the grown
    model at the step of growth.

    Args:
        probe: `(x, y)` or `(x, y, sample_weight)`, a fixed batch.
        every: int >= 1, measure every this many optimizer steps.
        sources: optional list of per-source dims (`source_dims`), in fusion
            order, used once the model's dimensions match them; without it
            the layout is derived where unambiguous (`source_layout`).
        log_dir: optional TensorBoard directory: scalars `dynamics/<name>`.
        jsonl_path: optional file to append one JSON record per line.

    Each record (a dict with `step` and the quantities above) is appended
    to `records`. The epoch logs get the last record's `dynamics_loss`,
    `dynamics_grad_norm` and `dynamics_regularizer` (numbers, present every
    epoch, so `History` and `CSVLogger` take them).

    Example:

    ```python
    monitor = DynamicsMonitor((x_probe, y_probe), every=10, log_dir="tb")
    model.fit(data, callbacks=[GrowthCallback("self_fuse@1000"), monitor])
    monitor.records[-1]["halves_kernel_distance"]
    ```
    """

    def __init__(self, probe, every=10, sources=None, log_dir=None, jsonl_path=None):
        super().__init__()
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}.")
        if not isinstance(probe, (tuple, list)) or len(probe) not in (2, 3):
            raise ValueError("probe must be (x, y) or (x, y, sample_weight).")
        x, y, sample_weight = (tuple(probe) + (None,))[:3]
        self.probe = keras.tree.map_structure(tf.convert_to_tensor, (x, y, sample_weight))
        self.every = every
        self.sources = sources
        self.log_dir = log_dir
        self.jsonl_path = jsonl_path
        self.records = []
        self.num_traces = 0
        self._traced_for = None
        self._function = None
        self._writer = None

    # --- Measurement --------------------------------------------------------

    def measure(self):
        """One record of the quantities for the model now (not logged)."""
        model = self.model
        function = self._function_for(model)
        values = {k: v.numpy().tolist() for k, v in function(*self.probe).items()}
        learning_rate = float(model.optimizer.learning_rate)
        squared = values.pop("grad_square")
        record = {
            "step": int(model.optimizer.iterations.numpy()),
            "learning_rate": learning_rate,
            "loss": values.pop("loss"),
            "grad_norm": math.sqrt(squared),
            "regularizer": learning_rate / 4.0 * squared,
        }
        if "kernel_square" in values:
            kernel = values.pop("kernel_square")
            record["kernel_grad_norm"] = math.sqrt(kernel)
            for i, value in enumerate(values.pop("source_squares")):
                record[f"source_{i}_grad_norm"] = math.sqrt(value)
            cross = values.pop("cross_square")
            record["cross_grad_norm"] = math.sqrt(cross)
            record["cross_grad_fraction"] = cross / kernel if kernel > 0 else 0.0
        record.update(values)
        return record

    def _function_for(self, model):
        inner = inner_lm(model)
        if self._traced_for is not inner:
            self._function = self._build_function(model)
            self._traced_for = inner
        return self._function

    def _build_function(self, model):
        backbone = model.backbone
        sources = self._layout(backbone)
        kernels = _named_kernels(backbone_variables(backbone))
        partitions = halves = None
        if sources:
            partitions = kernel_partitions(sources, head_dim(backbone_config(backbone)))
            halves = _halves(sources)
        embedding = backbone.token_embedding.embeddings
        monitor = self

        @tf.function
        def measure(x, y, sample_weight):
            monitor.num_traces += 1  # Python side effect: runs at trace time only
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                y_pred = model(x, training=False)
                loss = model.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
                )
            gradients = tape.gradient(loss, variables)
            # Densify the embedding's IndexedSlices (repeated tokens summed).
            by_variable = {
                id(v): tf.convert_to_tensor(g)
                for v, g in zip(variables, gradients)
                if g is not None
            }
            out = {
                "loss": loss,
                "grad_square": tf.add_n(
                    [tf.reduce_sum(tf.square(g)) for g in by_variable.values()]
                ),
            }
            if partitions is None:
                return out
            blocks = [
                block_square_sums(by_variable[id(v)], *partitions[name])
                for name, v in kernels
                if id(v) in by_variable
            ]
            total = tf.add_n(blocks)
            diagonal = tf.linalg.diag_part(total)
            out["kernel_square"] = tf.reduce_sum(total)
            out["source_squares"] = diagonal
            out["cross_square"] = tf.reduce_sum(total * (1.0 - tf.eye(len(sources))))
            if halves is not None:
                hidden_half = sum(s["hidden_dim"] for s in sources[:halves])
                table = embedding.value
                out["halves_embedding_distance"] = _relative_distance(
                    [(table[:, :hidden_half], table[:, hidden_half:])]
                )
                pairs = []
                for name, v in kernels:
                    rows, cols = partitions[name]
                    r, c = sum(rows[:halves]), sum(cols[:halves])
                    kernel = v.value
                    pairs.append((kernel[:r, :c], kernel[r:, c:]))
                out["halves_kernel_distance"] = _relative_distance(pairs)
            return out

        return measure

    def _layout(self, backbone):
        sources = self.sources
        if sources is not None:
            matches = all(
                sum(s[field] for s in sources) == getattr(backbone, field)
                for field in SOURCE_FIELDS
            )
            if not matches:  # e.g. before the growth that the list describes
                sources = None
        return source_layout(backbone, sources)

    # --- Callback -----------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every or (self.records and self.records[-1]["step"] == step):
            return
        self._log(self.measure())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.records:
            for key in EPOCH_LOG_KEYS:
                logs[f"dynamics_{key}"] = self.records[-1][key]

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _log(self, record):
        self.records.append(record)
        if self._writer is not None:
            with self._writer.as_default(step=record["step"]):
                for key, value in record.items():
                    if key != "step":
                        tf.summary.scalar(f"dynamics/{key}", value)
        if self.jsonl_path:
            storage.append_text(self.jsonl_path, json.dumps(record) + "\n")


def _relative_distance(pairs):
    """`||A - B|| / sqrt((||A||² + ||B||²) / 2)` over pairs of tensors."""
    difference = tf.add_n([tf.reduce_sum(tf.square(a - b)) for a, b in pairs])
    size = tf.add_n([tf.reduce_sum(tf.square(a)) + tf.reduce_sum(tf.square(b)) for a, b in pairs])
    return tf.sqrt(difference) / tf.sqrt(tf.maximum(size / 2.0, 1e-30))
