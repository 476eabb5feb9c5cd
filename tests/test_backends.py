"""The core on the Keras JAX backend, checked from a TensorFlow test process: one subprocess
with `KERAS_BACKEND=jax` and two host devices loads a `.keras` file saved here, saves one of its
own, trains the command's tiny run (default strategy, then `--strategy=mirrored`, a
`keras.distribution.DataParallel` over both devices) and tries the TensorFlow-only features.
The results come back as JSON; each test reads the part it names."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import tiny_run_settings
from conftest import write_image_folder

import keras_transfer as kt

pytest.importorskip("jax", reason="needs jax (the jax extra)")

JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys, pathlib
    import numpy as np
    import keras
    import tensorflow as tf
    import keras_transfer as kt
    from keras_transfer.apps import image_classifier, image_config

    work = pathlib.Path(sys.argv[1])
    settings = json.loads(sys.argv[2])
    out = {"backend": keras.backend.backend(), "devices": keras.distribution.list_devices()}
    images = np.load(work / "images.npy")

    # A file saved on TensorFlow, loaded here; and one of our own for TensorFlow to load.
    loaded = keras.saving.load_model(work / "from_tensorflow.keras")
    np.save(work / "tensorflow_file_on_jax.npy", loaded.predict(images, verbose=0))
    keras.utils.set_random_seed(1)
    model = kt.create_classifier(
        "mobilenet", 3, input_shape=(32, 32, 3), weights=None, alpha=0.25
    )
    model.save(work / "from_jax.keras")
    np.save(work / "jax_file_on_jax.npy", model.predict(images, verbose=0))

    # TensorFlow-only features stop with one line naming the backend.
    errors = {}
    for name, call in {
        "hub": lambda: kt.HubBackbone(str(work)),
        "domain_adaptation": lambda: kt.fit_domain_adaptation(
            model, tf.data.Dataset.from_tensor_slices((images, [0, 1, 2, 0])).batch(2),
            tf.data.Dataset.from_tensor_slices(images).batch(2), "coral",
        ),
    }.items():
        try:
            call()
            errors[name] = None
        except kt.BackendError as error:
            errors[name] = str(error)
    out["errors"] = errors
    config_errors = {}
    for name, overrides in {
        "freeze_strategy=gradual": dict(freeze_strategy="gradual", unfreeze_schedule="1:1"),
        "export=tflite": dict(export="tflite"),
    }.items():
        try:
            image_config.Config(**dict(settings, **overrides))
            config_errors[name] = None
        except Exception as error:
            config_errors[name] = str(error)
    out["config_errors"] = config_errors

    # The command's tiny run, on one device, then DataParallel over both.
    for strategy in ("default", "mirrored"):
        config = image_config.Config(
            **dict(settings, model_dir=str(work / f"run_{strategy}"), strategy=strategy)
        )
        results = image_classifier.run(config)
        out[strategy] = {k: results[k] for k in ("backend", "replicas", "cached_features")}
        out[strategy]["history"] = results["history"]
    rows = kt.predict_images(work / "run_default", sorted(map(str, work.glob("data/*/*.jpg")))[:3])
    out["predicted_labels"] = [row["labels"][0] for row in rows]

    # After a DataParallel step every device holds the same weights, and they moved.
    distribution = kt.distribute.create_strategy("mirrored")
    with distribution.scope():
        model = kt.create_classifier(
            "mobilenet", 3, input_shape=(32, 32, 3), weights=None, alpha=0.25
        )
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    kernel = model.head.trainable_weights[0]
    before = np.asarray(kernel.value)
    model.fit(images, np.array([0, 1, 2, 0]), batch_size=4, epochs=1, verbose=0)
    shards = [np.asarray(shard.data) for shard in kernel.value.addressable_shards]
    out["data_parallel"] = {
        "replicas": distribution.num_replicas_in_sync,
        "shard_devices": len({str(s.device) for s in kernel.value.addressable_shards}),
        "shards_identical": all(np.array_equal(shards[0], s) for s in shards[1:]),
        "moved": float(np.abs(shards[0] - before).max()),
    }
    (work / "out.json").write_text(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("jax")
    write_image_folder(work / "data", {"a": 6, "b": 6, "c": 6})
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.save(work / "images.npy", images)
    keras.utils.set_random_seed(0)
    model = kt.create_classifier("mobilenet", 3, input_shape=(32, 32, 3), weights=None, alpha=0.25)
    model.save(work / "from_tensorflow.keras")
    settings = tiny_run_settings(work / "data", work / "unused")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
    )
    completed = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(work), json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = json.loads((work / "out.json").read_text())
    return work, model, images, out


def test_the_subprocess_ran_on_jax_with_two_devices(jax_run):
    _, _, _, out = jax_run
    assert out["backend"] == "jax"
    assert out["devices"] == ["cpu:0", "cpu:1"]


def test_keras_file_from_tensorflow_predicts_identically_on_jax(jax_run):
    work, model, images, _ = jax_run
    on_jax = np.load(work / "tensorflow_file_on_jax.npy")
    np.testing.assert_allclose(on_jax, model.predict(images, verbose=0), atol=1e-5)


def test_keras_file_from_jax_predicts_identically_on_tensorflow(jax_run):
    work, _, images, _ = jax_run
    on_tensorflow = keras.saving.load_model(work / "from_jax.keras").predict(images, verbose=0)
    np.testing.assert_allclose(on_tensorflow, np.load(work / "jax_file_on_jax.npy"), atol=1e-5)


def test_command_trains_on_jax_with_the_feature_cache(jax_run):
    _, _, _, out = jax_run
    run = out["default"]
    assert run["backend"] == "jax" and run["replicas"] == 1
    assert run["cached_features"] is True
    assert len(run["history"]["loss"]) == 2  # one head epoch, one fine-tuning epoch
    assert all(np.isfinite(run["history"]["loss"]))
    assert set(out["predicted_labels"]) <= {"a", "b", "c"} and len(out["predicted_labels"]) == 3


def test_command_strategy_mirrored_is_data_parallel_over_both_devices_on_jax(jax_run):
    _, _, _, out = jax_run
    run = out["mirrored"]
    assert run["backend"] == "jax" and run["replicas"] == 2
    assert len(run["history"]["loss"]) == 2 and all(np.isfinite(run["history"]["loss"]))


def test_data_parallel_step_leaves_identical_weights_on_every_device(jax_run):
    _, _, _, out = jax_run
    data_parallel = out["data_parallel"]
    assert data_parallel["replicas"] == 2 and data_parallel["shard_devices"] == 2
    assert data_parallel["shards_identical"] is True
    assert data_parallel["moved"] > 0


def test_tensorflow_only_features_stop_with_a_backend_error_on_jax(jax_run):
    _, _, _, out = jax_run
    assert set(out["errors"]) == {"hub", "domain_adaptation"}
    for name, message in out["errors"].items():
        assert message is not None, f"{name} ran on JAX"
        assert "needs the TensorFlow backend, but Keras runs on 'jax'" in message
        assert "KERAS_BACKEND=tensorflow" in message


def test_command_refuses_tensorflow_only_settings_on_jax_before_any_work(jax_run):
    _, _, _, out = jax_run
    assert set(out["config_errors"]) == {"freeze_strategy=gradual", "export=tflite"}
    for setting, message in out["config_errors"].items():
        assert message is not None, f"{setting} was accepted on JAX"
        assert message.startswith(f"{setting} needs the TensorFlow backend"), message
