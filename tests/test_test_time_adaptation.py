"""AdaBN (`kt.adapt_batchnorm`) and TENT (`kt.fit_tent`): adaptation of a trained model to
unlabeled target images, without the source data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt


def _conv_bn_classifier():
    """Conv -> frozen BatchNormalization (source statistics) -> pooling -> softmax."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="top")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("bn").trainable = False
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _target(n=32, seed=1):
    # A shifted domain: brighter and lower-contrast than the source statistics (0, 1).
    images = np.random.default_rng(seed).normal(3.0, 0.5, (n, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((images, np.zeros(n, "int32"))).batch(8), images


def test_adapt_batchnorm_gives_frozen_layers_the_target_statistics():
    model = _conv_bn_classifier()
    bn = model.get_layer("bn")
    data, images = _target()
    conv_outputs = model.get_layer("conv")(images).numpy().reshape(-1, 4)

    used = kt.adapt_batchnorm(model, data)

    assert used == 4
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv_outputs.mean(axis=0), rtol=1e-4)
    assert bn.trainable is False  # flags unchanged
    np.testing.assert_allclose(bn.gamma.numpy(), np.ones(4))  # weights unchanged


def test_fit_tent_lowers_the_entropy_training_only_batchnorm_scales_and_offsets():
    model = _conv_bn_classifier()
    data, images = _target()
    before = {w.path: w.numpy().copy() for w in model.weights}
    entropy = kt.PredictionEntropy()

    start = float(entropy(np.zeros(len(images)), model.predict(images, verbose=0)))
    kt.fit_tent(model, data, epochs=20, learning_rate=5e-2, verbose=0)
    end = float(entropy(np.zeros(len(images)), model.predict(images, verbose=0)))

    assert end < start
    changed = {p for p, w in before.items() if not np.allclose(w, _value(model, p))}
    assert changed and all("bn/" in p for p in changed), changed
    # The model's flags and compiled loss are back as they were.
    assert model.get_layer("bn").trainable is False and model.get_layer("conv").trainable
    assert model.loss == "sparse_categorical_crossentropy"


def _value(model, path):
    return next(w.numpy() for w in model.weights if w.path == path)


def test_test_time_adaptation_needs_batchnorm():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="no BatchNormalization layer"):
        kt.adapt_batchnorm(model, [np.zeros((2, 4), "float32")])


def test_prediction_entropy_of_probabilities_and_logits():
    probabilities = np.array([[0.5, 0.5], [1.0, 0.0]], "float32")
    # The zero probability is clipped to 1e-7 before the log: 1e-7 * ln(1e-7) ~ 2e-6 more.
    entropy = float(kt.PredictionEntropy()(np.zeros(2), probabilities))
    assert entropy == pytest.approx(np.log(2) / 2, abs=2e-6)
    logits = np.log(np.array([[0.25, 0.75]], "float32"))
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert float(kt.PredictionEntropy(from_logits=True)(np.zeros(1), logits)) == pytest.approx(
        expected
    )
