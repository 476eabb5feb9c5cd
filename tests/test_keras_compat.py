"""The private Keras / TensorFlow APIs in keras_transfer/_keras_compat.py still exist and
behave as the package relies on: a Keras or TensorFlow upgrade that removes one fails here,
by name, instead of mis-training silently."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import _keras_compat


def test_every_private_api_used_still_exists():
    missing = _keras_compat.missing_internals()
    assert not missing, (
        f"This Keras {keras.__version__} / TensorFlow {tf.__version__} lacks private APIs "
        f"keras_transfer relies on: {missing}. Update keras_transfer/_keras_compat.py."
    )


def test_only_the_compat_module_touches_private_apis():
    import pathlib
    import re

    package = pathlib.Path(kt.__file__).parent
    pattern = re.compile(r"keras\.src|tf\.__internal__|tensorflow\.python")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(package.glob("*.py"))
        if path.name != "_keras_compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_flatten_layers_reaches_layers_held_as_attributes():
    model = kt.create_classifier(
        "mobilenet",
        2,
        input_shape=(32, 32, 3),
        weights=None,
        alpha=0.25,
        head={"hidden_units": [4]},
    )
    layers = _keras_compat.flatten_layers(model, include_self=False)
    assert model not in layers and model.head in layers
    # The head's Dense layers are attributes of a custom layer, not `Model.layers` entries.
    dense_in_head = [
        layer
        for layer in _keras_compat.flatten_layers(model.head)
        if isinstance(layer, keras.layers.Dense)
    ]
    assert len(dense_in_head) == 2 and all(layer in layers for layer in dense_in_head)


def test_capture_call_outputs_records_nested_layers_and_restores_their_call():
    inner = keras.layers.Dense(2, kernel_initializer="ones")
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    x = np.ones((1, 3), "float32")
    with pytest.raises(RuntimeError), _keras_compat.capture_call_outputs([inner]) as captured:
        outer(x)
        raise RuntimeError("restored even when the block fails")
    np.testing.assert_allclose(captured[0], [[3.0, 3.0]])
    assert "call" not in inner.__dict__ and inner.call.__func__ is keras.layers.Dense.call


def test_own_trainable_variables_excludes_sublayers_and_survives_freezing():
    inner = keras.layers.Dense(3)
    inner.build((None, 2))
    inner.trainable = False
    assert len(_keras_compat.own_trainable_variables(inner)) == 2
    assert inner.trainable_weights == []


def test_reset_fit_initial_epoch_forgets_a_restored_epoch(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path), delete_checkpoint=False)
    model.fit(x, y, epochs=2, callbacks=[backup], verbose=0)
    model.fit(x, y, epochs=2, callbacks=[backup], verbose=0)  # restores epoch 2
    assert model._initial_epoch == 2
    _keras_compat.reset_fit_initial_epoch(model)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert history.epoch == [0]


def test_optimizer_hooks_route_to_public_names():
    calls = []

    class Probe(_keras_compat.OptimizerHooks, keras.optimizers.AdamW):
        def apply_weight_decay(self, variables):
            calls.append("decay")
            self.parent_apply_weight_decay(variables)

        def update_moving_averages(self, variables):
            calls.append("ema")
            self.parent_update_moving_averages(variables)

    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = Probe(learning_rate=0.1, weight_decay=0.5, use_ema=True)
    optimizer.apply([np.zeros(2, "float32")], [variable])
    assert "decay" in calls and "ema" in calls
    # AdamW's decoupled decay ran through the parent: w <- w - lr * wd * w.
    np.testing.assert_allclose(variable.numpy(), [0.95, 0.95], rtol=1e-6)
    assert _keras_compat.variable_index(optimizer, variable) == 0
    assert _keras_compat.has_standard_weight_decay(keras.optimizers.AdamW)


def test_require_keras_names_the_feature_and_both_versions(monkeypatch):
    monkeypatch.setattr(_keras_compat, "KERAS_VERSION", (3, 14, 1))
    assert _keras_compat.keras_at_least("3.14") and not _keras_compat.keras_at_least("3.15")
    with pytest.raises(RuntimeError, match=r"hidden_units.*Keras 3\.15 or newer.*keras>=3\.15"):
        kt.heads.ClassificationHead(2, hidden_units=[4])
    kt.heads.ClassificationHead(2)  # no hidden layers: nothing nested to save


def test_version_strings_parse_to_release_numbers():
    assert _keras_compat.release_numbers("3.10.0rc1") == (3, 10, 0)
    assert _keras_compat.release_numbers("3.15.1") == (3, 15, 1)
    assert _keras_compat.release_numbers("3.13.0.dev2025") == (3, 13, 0)
