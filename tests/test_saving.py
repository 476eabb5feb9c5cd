"""kt.save_model (for inference: no optimizer state) and kt.load_model; the banners and
the TensorBoard step axis of fit_two_phase; no Keras shuffle warning for datasets."""

import collections
import json
import logging
import os
import warnings
import zipfile

import keras
import numpy as np
import pytest
from conftest import tiny_images

import keras_transfer as kt


def _trained(model, dataset):
    # Adam with EMA: two slots per weight plus the averages, as the image command trains.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return model


def test_save_model_leaves_out_the_optimizer(tiny_classifier, tiny_dataset, tmp_path):
    model = _trained(tiny_classifier, tiny_dataset)
    optimizer = model.optimizer
    kt.save_model(model, tmp_path / "inference.keras")
    kt.save_model(model, tmp_path / "full.keras", include_optimizer=True)
    slim = os.path.getsize(tmp_path / "inference.keras")
    full = os.path.getsize(tmp_path / "full.keras")
    # Adam's two slots and the EMA copy: about four times the weights.
    assert full > 3 * slim
    # The model keeps training after the save as before it.
    assert model.optimizer is optimizer and model.compiled
    with zipfile.ZipFile(tmp_path / "inference.keras") as archive:
        assert not json.loads(archive.read("config.json"))["compile_config"]

    images = tiny_images(4)
    expected = model.predict(images, verbose=0)
    for name in ("inference.keras", "full.keras"):
        reloaded = kt.load_model(tmp_path / name)
        assert isinstance(reloaded, kt.TransferClassifier)
        np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-6)
    assert not kt.load_model(tmp_path / "inference.keras").compiled
    assert kt.load_model(tmp_path / "full.keras").compiled


def test_save_model_refuses_other_paths_and_load_model_missing_files(tiny_classifier, tmp_path):
    with pytest.raises(ValueError, match=r"end the path in \.keras"):
        kt.save_model(tiny_classifier, tmp_path / "model.h5")
    with pytest.raises(FileNotFoundError, match="No model at"):
        kt.load_model(tmp_path / "missing.keras")
    assert not os.listdir(tmp_path)


def test_load_model_is_safe_mode_by_default(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        kt.load_model(tmp_path / "lambda.keras")
    assert kt.load_model(tmp_path / "lambda.keras", safe_mode=False) is not None


def test_fit_two_phase_logs_a_banner_per_phase_and_no_shuffle_warning(
    tiny_classifier, tiny_dataset, caplog
):
    with (
        caplog.at_level(logging.INFO, logger="keras_transfer"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        kt.fit_two_phase(
            tiny_classifier,
            tiny_dataset,
            head_epochs=1,
            fine_tune_epochs=2,
            head_lr=1e-3,
            fine_tune_lr=2e-5,
            unfreeze=3,
            lr_decay=0.8,
            verbose=0,
        )
    banners = [r.getMessage() for r in caplog.records if r.getMessage().startswith("phase")]
    assert banners == [
        "phase 1/2: training the head on the frozen backbone at lr 0.001 for 1 epoch",
        "phase 2/2: fine-tuning 3 blocks at lr 2e-05 (x0.8 per block below the top) for "
        "2 epochs, BatchNorm frozen",
    ]
    # Keras warns that fit's default shuffle=True is ignored for a tf.data.Dataset.
    assert not [w for w in caught if "shuffle" in str(w.message)]


def test_run_tensorboard_continues_the_step_axis(tiny_classifier, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing import event_file_loader

    board = kt.RunTensorBoard(str(tmp_path / "logs"), update_freq=1)
    kt.fit_two_phase(
        tiny_classifier,
        tiny_dataset,
        tiny_dataset,
        head_epochs=2,
        fine_tune_epochs=1,
        callbacks=[board],
        verbose=0,
    )
    steps = collections.defaultdict(list)
    for folder in ("train", "validation"):
        for path in sorted((tmp_path / "logs" / folder).glob("events*")):
            for event in event_file_loader.EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    steps[value.tag].append(event.step)
    # 16 images in batches of 8: 2 steps per epoch over 3 epochs of two phases.
    assert steps["evaluation_loss_vs_iterations"] == [2, 4, 6]
    assert sorted(steps["batch_loss"]) == [1, 2, 3, 4, 5, 6]
    assert steps["epoch_loss"] == [0, 1, 2, 0, 1, 2]  # train/ and validation/
