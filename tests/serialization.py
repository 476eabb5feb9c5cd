"""Serialization checks in the way of KerasHub's `TestCase.run_serialization_test` and
`run_model_saving_test`: a config survives `from_config` and `serialize_keras_object`
unchanged, and a `.keras` file gives back a model with the same outputs."""

import json
import pathlib

import keras
import numpy as np


def _as_json(config):
    return json.dumps(config, sort_keys=True, indent=1)


def run_serialization_test(instance):
    """`get_config` -> `from_config` -> `get_config` is the same config, and so is a
    `serialize_keras_object` -> JSON -> `deserialize_keras_object` round trip (which resolves
    the class through the registered name). Returns the revived object."""
    cls = type(instance)
    config = _as_json(instance.get_config())
    revived = cls.from_config(json.loads(config))
    assert type(revived) is cls
    assert _as_json(revived.get_config()) == config, f"{cls.__name__}.from_config changed it"

    serialized = json.loads(_as_json(keras.saving.serialize_keras_object(instance)))
    assert serialized["registered_name"] == keras.saving.get_registered_name(cls)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls
    assert _as_json(revived.get_config()) == config, f"{cls.__name__} lost state in JSON"
    return revived


def perturb_weights(model, seed=0):
    """Moves every weight by a small positive amount, so that a reload that re-initialises
    (or re-reads pretrained) weights instead of restoring the saved ones gives other outputs."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shift = rng.uniform(0.01, 0.1, variable.shape).astype(variable.dtype)
        variable.assign(variable.numpy() + shift)


def run_model_saving_test(model, probe, tmp_path, perturb=True):
    """Saves `model` to `.keras`, reloads it with `safe_mode=True` and checks that
    `probe(model)` (arrays, or a list of them) is equal for the original and the reloaded
    model. With `perturb`, every weight is moved first (see `perturb_weights`). Returns the
    reloaded model."""
    if perturb:
        perturb_weights(model)
    path = pathlib.Path(tmp_path) / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    expected, actual = probe(model), probe(loaded)
    for want, got in zip(_as_list(expected), _as_list(actual), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    return loaded


def _as_list(value):
    return list(value) if isinstance(value, list | tuple) else [value]
