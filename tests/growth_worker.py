"""A training process for the multi-process growth tests (run, not imported).

`--scenario mirrored`: two logical CPU devices under MirroredStrategy, a
growth inside fit; writes what it measured as JSON for the test to check.
`--scenario resume`: trains with GrowthCheckpoint and a growth schedule; with
`--kill_at POINT:STEP` it kills itself (SIGKILL, no clean-up) at that point,
so the next run must resume from the checkpoint directory. Points:
`step` (at the end of optimizer step STEP), `growth` (inside the growth at
STEP: the grown model and its optimizer are built, nothing is swapped yet),
`save` (during the checkpoint write at STEP: the temporary file is half
written when the process dies).
"""

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402


def mirrored(out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from keras_fusion import growth_maps
    from keras_fusion.callbacks import GrowthCallback
    from keras_fusion.diagnostics import relative_error
    from keras_fusion.growth import Deepen, SelfFuse
    from keras_fusion.models import variable_trees
    from keras_fusion.models.fusion_t5_backbone import backbone_variables
    from t5_test_utils import AtStep, growing_lm, random_inputs, random_labels

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = random_inputs(batch_size=4, seed=11), random_labels(batch_size=4, seed=12)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def batch_loss(model):
        # A direct call: predict_on_batch under MirroredStrategy returns
        # one copy of the batch per replica in Keras 3.15.
        return float(loss(y, model(x), sample_weight=x["decoder_padding_mask"]))

    def old_layers(model):
        tree = variable_trees.read(backbone_variables(model.backbone))
        tree["encoder_layers"] = tree["encoder_layers"][:2]
        tree["decoder_layers"] = tree["decoder_layers"][:2]
        return tree

    def fit(model, steps, callbacks):
        model.fit(
            {k: np.concatenate([v] * steps) for k, v in x.items()},
            np.concatenate([y] * steps),
            sample_weight=np.concatenate([x["decoder_padding_mask"]] * steps).astype("float32"),
            batch_size=4,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )

    result = {"replicas": strategy.num_replicas_in_sync}
    with strategy.scope():
        small, grown = (
            growing_lm(keras.optimizers.Adam(1e-2)),
            growing_lm(keras.optimizers.Adam(1e-2)),
        )
    at_growth, before, after = AtStep(2, old_layers), AtStep(2, batch_loss), AtStep(2, batch_loss)
    fit(small, 3, [at_growth])
    old_lm = grown.lm
    growth = GrowthCallback([Deepen(at_step=2)], verbose=0)
    fit(grown, 3, [before, growth, after])
    errors = growth_maps.map_leaves(
        lambda name, leaves: relative_error(leaves[2] - leaves[0], leaves[1] - leaves[0]),
        [at_growth.value, old_layers(small), old_layers(grown)],
    )
    result.update(
        loss_before=before.value,
        loss_after=after.value,
        not_prepared_reason=growth.events[0]["not_prepared_reason"],
        update_error=max(keras.tree.flatten(errors)),
        num_layers=grown.backbone.num_layers,
        iterations=int(grown.optimizer.iterations.numpy()),
        old_variables_in_model=len(
            {id(v) for v in grown.trainable_variables} & {id(v) for v in old_lm.trainable_variables}
        ),
        trainable_equals_lm=[id(v) for v in grown.trainable_variables]
        == [id(v) for v in grown.lm.trainable_variables],
        # A count, not all(...): all() of no variables would be True.
        num_trainable=len(grown.trainable_variables),
        num_mirrored=sum(
            isinstance(v.value, tf.distribute.DistributedValues) for v in grown.trainable_variables
        ),
        new_output_projection_max=float(
            np.abs(
                grown.backbone.decoder_transformer_layers[-1].output_projector.kernel.numpy()
            ).max()
        ),
    )
    with strategy.scope():
        fused = growing_lm(keras.optimizers.AdamW(1e-2))
    before, after = AtStep(1, batch_loss), AtStep(1, batch_loss)
    fit(fused, 2, [before, GrowthCallback([SelfFuse(at_step=1, noise=0.01)], verbose=0), after])
    result.update(
        self_fuse_loss_before=before.value,
        self_fuse_loss_after=after.value,
        self_fuse_hidden_dim=fused.backbone.hidden_dim,
    )
    with open(out, "w") as f:
        json.dump(result, f)


def resume(out, directory, kill_at):
    import keras
    import numpy as np

    from keras_fusion.callbacks import (
        GrowthCallback,
        GrowthCheckpoint,
        checkpoint_epoch,
        restore_latest,
    )
    from keras_fusion.models import GrowingT5Seq2SeqLM
    from t5_test_utils import growing_lm, random_inputs, random_labels

    point, kill_at_step = kill_at.split(":") if kill_at else ("", "-1")
    kill_at_step = int(kill_at_step)

    def at_kill_step(model):
        return int(model.optimizer.iterations.numpy()) == kill_at_step

    if point == "growth":
        replace_lm = GrowingT5Seq2SeqLM.replace_lm

        def replace_lm_then_die(self, lm, *args, **kwargs):
            if at_kill_step(self):
                os.kill(os.getpid(), signal.SIGKILL)
            return replace_lm(self, lm, *args, **kwargs)

        GrowingT5Seq2SeqLM.replace_lm = replace_lm_then_die
    elif point == "save":
        save = GrowingT5Seq2SeqLM.save

        def save_half_then_die(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            if at_kill_step(self):
                size = os.path.getsize(filepath)
                with open(filepath, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)

        GrowingT5Seq2SeqLM.save = save_half_then_die

    x, y = random_inputs(batch_size=8, seed=3), random_labels(batch_size=8, seed=4)
    restored = restore_latest(directory)
    model = restored or growing_lm(keras.optimizers.AdamW(1e-2))
    start = {
        "step": int(model.optimizer.iterations.numpy()),
        "epoch": checkpoint_epoch(directory),
        "history": list(model.growth_history),
    }
    with open(out + ".start.json", "w") as f:  # what a killed run resumed from
        json.dump(start, f)

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if point == "step" and at_kill_step(self.model):
                os.kill(os.getpid(), signal.SIGKILL)

    growth = GrowthCallback("deepen@3,widen_ffn@5", verbose=0)
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=4,
        initial_epoch=checkpoint_epoch(directory),
        shuffle=False,
        verbose=0,
        callbacks=[growth, KillAt(), GrowthCheckpoint(directory)],
    )
    with open(out, "w") as f:
        json.dump(
            {
                "restored": restored is not None,
                "start": start,
                "applied_in_this_run": [e["entry"] for e in growth.events],
                "history": model.growth_history,
                "iterations": int(model.optimizer.iterations.numpy()),
                "num_layers": model.backbone.num_layers,
                "intermediate_dim": model.backbone.intermediate_dim,
                "finite_loss": bool(np.isfinite(model.evaluate(x, y, verbose=0))),
            },
            f,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["mirrored", "resume"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint_dir")
    parser.add_argument("--kill_at", default="", help="POINT:STEP, POINT in step, growth, save")
    args = parser.parse_args()
    if args.scenario == "mirrored":
        mirrored(args.out)
    else:
        resume(args.out, args.checkpoint_dir, args.kill_at)
