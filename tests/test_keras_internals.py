"""Canaries for `keras_fusion._keras_internals`: each private Keras, keras-hub
or TensorFlow behaviour the package relies on, checked directly, so that an
upgrade that changes one fails here first, by name."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusion import _keras_internals as internals


def dense(units=3):
    layer = keras.layers.Dense(units, kernel_initializer="random_normal")
    layer.build((None, 2))
    return layer


def test_build_uninitialized_defers_the_variables_and_keeps_them_out_of_keras_list():
    layer, variables = internals.build_uninitialized(dense)
    assert {id(v) for v in variables} == {id(v) for v in layer.weights}
    assert all(internals.is_uninitialized(v) for v in variables)
    # Keras' own list is left as it was: ending a later stateless scope
    # initialises none of ours.
    with keras.StatelessScope():
        pass
    assert all(internals.is_uninitialized(v) for v in variables)
    kernel = np.arange(6, dtype="float32").reshape(2, 3)
    internals.initialize_with(layer.kernel, lambda shape, dtype=None: tf.constant(kernel, dtype))
    internals.initialize_with(layer.bias)  # its own initializer: zeros
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros(3))
    assert not internals.is_uninitialized(layer.kernel)


def test_variables_handed_back_are_initialised_by_the_enclosing_scope():
    kernel = np.full((2, 3), 7.0, "float32")
    with keras.StatelessScope():
        layer, variables = internals.build_uninitialized(dense)
        internals.set_uninitialized_initializer(
            layer.kernel, lambda shape, dtype=None: tf.constant(kernel, dtype)
        )
        internals.hand_back_uninitialized(variables)
        assert internals.in_stateless_scope()
    assert not internals.in_stateless_scope()
    np.testing.assert_array_equal(layer.kernel.numpy(), kernel)


def test_seed_this_thread_makes_unseeded_draws_repeatable_in_any_thread():
    draws = []

    def draw():
        internals.seed_this_thread(5)
        draws.append(keras.random.normal((4,)).numpy())

    for _ in range(2):
        thread = threading.Thread(target=draw)
        thread.start()
        thread.join()
    np.testing.assert_array_equal(draws[0], draws[1])


class Holder(keras.Model):
    def __init__(self):
        super().__init__()
        self.inner = dense()

    def call(self, x):
        return self.inner(x)


def test_untracking_drops_the_old_layer_from_the_trainable_variables():
    model = Holder()
    model(np.zeros((1, 2), "float32"))
    old, new = model.inner, dense(4)
    assert model._tracker.locked  # what untracking has to undo
    with internals.untracking(model, old):
        model.inner = new
    ids = {id(v) for v in model.trainable_variables}
    assert ids == {id(v) for v in new.trainable_variables}
    assert model._tracker.locked


def test_compiled_state_refresh_and_trainer_adoption():
    model, source = Holder(), Holder()
    for m in (model, source):
        m.compile(optimizer="adam", loss="mse", metrics=["mae"])
        m.fit(np.zeros((2, 2)), np.zeros((2, 3)), verbose=0)
    old, new = model.inner, dense()
    with internals.untracking(model, old):
        model.inner = new
        internals.refresh_compiled_trainable_state(model)
    layers = set(model._compiled_trainable_state)
    assert new in layers and old not in layers
    internals.adopt_compiled_trainer(model, source)
    assert model._loss_tracker is source._loss_tracker
    assert model._compile_loss is source._compile_loss
    assert model._compile_metrics is source._compile_metrics
    optimizer = keras.optimizers.Adam(1e-3)
    internals.set_compiled_optimizer(model, optimizer)
    assert model._compile_config.config["optimizer"] is optimizer


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_slots_hold_the_moments_of_each_variable(amsgrad):
    a, b = keras.Variable(np.ones((2, 3), "float32")), keras.Variable(np.ones((4,), "float32"))
    optimizer = keras.optimizers.Adam(0.1, beta_1=0.9, beta_2=0.99, amsgrad=amsgrad)
    optimizer.build([a, b])
    gradients = [np.full((2, 3), 2.0, "float32"), np.full((4,), -3.0, "float32")]
    optimizer.apply_gradients(zip(gradients, [a, b]))
    slots = internals.adam_slots(optimizer)
    assert sorted(slots) == sorted(["momentum", "velocity"] + (["velocity_hat"] if amsgrad else []))
    for variable, gradient in zip([a, b], gradients):
        i = internals.variable_index(optimizer, variable)
        # Keras' Adam: m = (1 - beta_1) g, v = (1 - beta_2) g^2 after one step.
        np.testing.assert_allclose(slots["momentum"][i].numpy(), 0.1 * gradient, rtol=1e-6)
        np.testing.assert_allclose(slots["velocity"][i].numpy(), 0.01 * gradient**2, rtol=1e-5)


def test_adafactor_slots_are_full_for_vectors_and_factored_for_matrices():
    kernel, bias = (
        keras.Variable(np.ones((2, 3), "float32")),
        keras.Variable(np.ones((4,), "float32")),
    )
    optimizer = keras.optimizers.Adafactor(0.1)
    optimizer.build([kernel, bias])
    v, r, c = internals.adafactor_slots(optimizer)
    k, b = (internals.variable_index(optimizer, x) for x in (kernel, bias))
    assert tuple(r[k].shape) == (2,) and tuple(c[k].shape) == (3,)
    assert tuple(v[b].shape) == (4,)


def test_patched_reduce_reduces_dicts_leaf_by_leaf_and_scalars_without_an_axis():
    strategy = internals.patch_strategy_reduce(tf.distribute.MirroredStrategy(["/cpu:0"]))
    value = strategy.run(lambda: {"batch": tf.constant([1.0, 2.0, 3.0]), "loss": tf.constant(4.0)})
    reduced = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=0)
    assert float(reduced["batch"]) == 6.0 and float(reduced["loss"]) == 4.0


def test_keras_hub_private_names_are_where_we_import_them():
    from keras_hub.models import T5Backbone

    backbone = T5Backbone(
        vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8
    )
    assert isinstance(backbone.encoder_transformer_layers[0], internals.T5TransformerLayer)
    assert isinstance(
        backbone.encoder_transformer_layers[0].self_attention, internals.T5MultiHeadAttention
    )
    assert isinstance(backbone.encoder_layer_norm, internals.T5LayerNorm)
    x = np.linspace(-3, 3, 7).astype("float32")
    tanh_gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(
        np.asarray(internals.gelu_approximate(x)), tanh_gelu, rtol=1e-5, atol=1e-6
    )
    assert internals.preset_utils.TOKENIZER_CONFIG_FILE == "tokenizer.json"
