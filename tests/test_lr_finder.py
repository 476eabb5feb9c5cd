import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_png_image

from keras_transfer.optimizers import schedules
from keras_transfer.training import lr_finder


def regression_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def model_with_state():
    """Dense + BatchNorm (moving statistics) + Dropout (seed state): all must be restored."""
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.1)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_model_and_its_optimizer_are_left_as_they_were():
    model = model_with_state()
    schedule = schedules.WarmupCosineDecay(1e-2, total_steps=100, warmup_steps=10)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    x, y = regression_data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # optimizer built, with state
    weights = [np.array(v) for v in model.variables]
    optimizer = model.optimizer
    optimizer_state = [np.array(v) for v in optimizer.variables]

    result = lr_finder.find_learning_rate(model, (x, y), min_lr=1e-5, max_lr=1.0, steps=20)

    assert len(result.learning_rates) > 5
    assert model.optimizer is optimizer
    for variable, value in zip(model.variables, weights, strict=True):
        np.testing.assert_array_equal(np.array(variable), value, err_msg=variable.path)
    for variable, value in zip(optimizer.variables, optimizer_state, strict=True):
        np.testing.assert_array_equal(np.array(variable), value, err_msg=variable.path)
    assert optimizer._learning_rate is schedule
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # the model still trains as before
    assert int(optimizer.iterations) == 16


def test_sweep_is_exponential_and_suggestion_is_a_rate_that_trains():
    # Zero initial weights: the same curve on every backend (their random initial weights
    # differ, and from a lucky start the early batches' noise can outweigh the descent).
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="zeros")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
    x, y = regression_data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 8 batches, repeated
    result = lr_finder.find_learning_rate(model, data, min_lr=1e-5, max_lr=100.0, steps=70)

    ratios = np.diff(np.log(result.learning_rates))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)
    assert result.learning_rates[0] == pytest.approx(1e-5)
    # Plain SGD on this least-squares problem diverges above lr ~ 1: the sweep stops there.
    assert result.diverged and len(result.learning_rates) < 70
    assert 0.3 < result.learning_rates[-1] < 10
    assert result.method == "valley" and result.suggestion == result.valley
    assert 1e-3 < result.valley < 1.0
    assert 1e-3 < result.steepest < 1.0
    assert result.minimum < result.learning_rates[-1]

    # The suggested rate trains far better than a too-small one and than the rate where
    # the sweep blew up.
    losses = {}
    for name, learning_rate in (
        ("suggested", result.suggestion),
        ("too_small", 1e-4),
        ("blown", result.learning_rates[-1] * 3),
    ):
        inputs = keras.Input((8,))
        fresh = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="zeros")(inputs))
        fresh.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
        history = fresh.fit(data, epochs=3, verbose=0)
        losses[name] = history.history["loss"][-1]
    assert losses["suggested"] < 0.2 * losses["too_small"], losses
    assert not losses["blown"] < 10 * losses["suggested"], losses  # NaN counts as blown


def test_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "lr.png"
    lr_finder.find_learning_rate(
        model, regression_data(), min_lr=1e-4, max_lr=1.0, steps=10, plot_path=path
    )
    assert_png_image(path, min_size=(300, 200))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr"),
        ({"steps": 2}, "steps"),
        ({"method": "best"}, "method"),
        ({"divergence_factor": 1.0}, "divergence_factor"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=message):
        lr_finder.find_learning_rate(model, regression_data(), **kwargs)


def test_uncompiled_model_and_bad_data_are_clear_errors():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="compile"):
        lr_finder.find_learning_rate(model, regression_data())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        lr_finder.find_learning_rate(model, [1, 2, 3])
