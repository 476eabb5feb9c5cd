"""Divergence, atomic writes and determinism: nothing silent, nothing lost."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import make_tiny_classifier
from interruption import InterruptAt

from keras_transfer import saving
from keras_transfer.training import two_phase as training
from keras_transfer.training.callbacks import guards
from keras_transfer.utils import reliability


class Poison(keras.callbacks.Callback):
    """Makes the head's kernel NaN when `epoch` begins: a deterministic divergence."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.head.output_dense.kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


class Snapshot(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.at_epoch_end = {}

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end[epoch] = self.model.get_weights()


def test_divergence_stops_restores_and_keeps_the_backup(tiny_dataset, tmp_path):
    model = make_tiny_classifier()
    snapshot = Snapshot()
    backup = tmp_path / "backup"
    kwargs = dict(head_epochs=2, fine_tune_epochs=3, head_lr=1e-2, verbose=0)
    with pytest.raises(guards.NonFiniteLossError, match=r"loss=nan.*epoch 4.*learning rate"):
        training.fit_two_phase(
            model,
            tiny_dataset,
            tiny_dataset,
            callbacks=[Poison(3), snapshot],
            backup_dir=backup,
            **kwargs,
        )
    # The model holds the last finite weights (those at the end of epoch 3), not NaNs.
    assert not reliability.non_finite_variables(model)
    for got, want in zip(model.get_weights(), snapshot.at_epoch_end[2]):
        np.testing.assert_array_equal(got, want)
    # The diverged epoch was neither recorded nor backed up: the backup is at epoch 3.
    state = json.loads((backup / "two_phase_state.json").read_text())
    assert sorted(state["epochs"], key=int) == ["0", "1", "2"]
    metadata = json.loads((backup / "fine_tune" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 3
    saving.save_model(model, tmp_path / "model.keras")  # finite: saving is allowed

    # A rerun (here without the poison) resumes from the last good epoch and completes.
    history = training.fit_two_phase(
        make_tiny_classifier(), tiny_dataset, tiny_dataset, backup_dir=backup, **kwargs
    )
    assert history.epoch == [0, 1, 2, 3, 4]
    assert all(np.isfinite(history.history["loss"]))


def test_guard_catches_real_divergence_in_plain_fit():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e12), "mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32") * 100
    y = x.sum(axis=1, keepdims=True)
    with pytest.raises(guards.NonFiniteLossError, match="epoch 1"):
        model.fit(x, y, epochs=5, verbose=0, callbacks=[guards.NonFiniteGuard()])
    assert not reliability.non_finite_variables(model)  # back to the initial weights


def test_nan_guard_off_lets_keras_behave_as_usual(tiny_dataset, tmp_path):
    model = make_tiny_classifier()
    history = training.fit_two_phase(
        model,
        tiny_dataset,
        head_epochs=2,
        fine_tune_epochs=0,
        callbacks=[Poison(1)],
        verbose=0,
        nan_guard=False,
    )
    assert np.isnan(history.history["loss"][1])
    with pytest.raises(reliability.NonFiniteWeightsError, match="head/predictions/kernel"):
        saving.save_model(model, tmp_path / "unused.keras")
    assert not (tmp_path / "unused.keras").exists()


def test_backup_of_other_settings_is_refused(tiny_dataset, tmp_path):
    backup = tmp_path / "backup"
    model = make_tiny_classifier()
    with pytest.raises(KeyboardInterrupt):
        training.fit_two_phase(
            model,
            tiny_dataset,
            head_epochs=2,
            fine_tune_epochs=1,
            callbacks=[InterruptAt(1)],
            backup_dir=backup,
            verbose=0,
        )
    with pytest.raises(ValueError, match="other settings.*delete the folder"):
        training.fit_two_phase(
            make_tiny_classifier(),
            tiny_dataset,
            head_epochs=3,
            fine_tune_epochs=1,
            backup_dir=backup,
            verbose=0,
        )


def test_interrupted_save_keeps_the_previous_file(tmp_path):
    model = make_tiny_classifier()
    path = tmp_path / "model.keras"
    saving.save_model(model, path)
    good = path.read_bytes()

    def crash_midway(target, **kwargs):
        with open(target, "wb") as f:
            f.write(good[: len(good) // 3])  # a truncated zip
        raise OSError("disk full")

    model.save = crash_midway
    with pytest.raises(OSError, match="disk full"):
        saving.save_model(model, path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]  # no partial file left behind
    keras.saving.load_model(path, safe_mode=True)


def test_save_model_weights_only(tmp_path):
    model = make_tiny_classifier()
    saving.save_model(model, tmp_path / "model.weights.h5")
    other = make_tiny_classifier()
    other.load_weights(tmp_path / "model.weights.h5")
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    from keras_transfer.apps import image_classifier as lib
    config = lib.Config(
        data_dir=sys.argv[1], model_dir=sys.argv[2], backbone="mobilenet", weights=None,
        image_size=32, batch_size=8, head_epochs=2, fine_tune_epochs=1, head_lr=1e-2,
        augment="flip,crop", verbose=0, seed=7,
    )
    results = lib.run(config)
    print(json.dumps({p: results[p] for p in ("feature_extraction", "fine_tune")}))
    """
)


@pytest.mark.slow
def test_example_runs_are_deterministic_with_a_seed(image_folder, tmp_path):
    """Two runs of the example in two processes give the same metrics, bit for bit."""
    from conftest import REPO_ROOT

    data_dir = image_folder({"red": 12, "green": 12}, size=(40, 48))
    script = tmp_path / "run.py"
    script.write_text(DETERMINISM_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), str(data_dir), str(tmp_path / f"run{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    metrics = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr[-3000:]
        metrics.append(json.loads(stdout.strip().splitlines()[-1]))
    for phase in ("feature_extraction", "fine_tune"):
        first, second = metrics[0][phase], metrics[1][phase]
        first.pop("seconds"), second.pop("seconds")
        assert first == second
        assert first["epochs"] >= 1


@pytest.mark.slow
def test_interruption_in_phase_one_resumes_in_phase_one(tiny_dataset, tmp_path):
    kwargs = dict(head_epochs=2, fine_tune_epochs=1, head_lr=1e-2, verbose=0)
    keras.utils.set_random_seed(1)
    reference = make_tiny_classifier()
    expected = training.fit_two_phase(reference, tiny_dataset, tiny_dataset, **kwargs)

    backup = tmp_path / "backup"
    keras.utils.set_random_seed(1)
    with pytest.raises(KeyboardInterrupt):
        training.fit_two_phase(
            make_tiny_classifier(),
            tiny_dataset,
            tiny_dataset,
            callbacks=[InterruptAt(1)],
            backup_dir=backup,
            **kwargs,
        )
    keras.utils.set_random_seed(1)
    model = make_tiny_classifier()
    history = training.fit_two_phase(model, tiny_dataset, tiny_dataset, backup_dir=backup, **kwargs)
    assert history.epoch == expected.epoch == [0, 1, 2]
    assert history.phases == expected.phases
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-5)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not backup.exists()


SAVE_LOOP = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras_transfer as kt
    from keras_transfer import saving
    model = kt.create_classifier("mobilenet", 2, input_shape=(32, 32, 3), weights=None)
    while True:
        saving.save_model(model, sys.argv[1])
        print("SAVED", flush=True)
    """
)


def test_sigkill_during_save_leaves_a_loadable_model(tmp_path):
    import signal
    import time

    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP)
    path = tmp_path / "model.keras"
    process = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "SAVED"
    time.sleep(0.1)  # somewhere inside a later save
    process.send_signal(signal.SIGKILL)
    process.wait()
    loaded = keras.saving.load_model(path, safe_mode=True)  # never a truncated file
    assert loaded.backbone_name == "mobilenet"
