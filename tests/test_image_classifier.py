"""The main example end to end: its `_lib` on a generated image folder, and the binary's
flags in a subprocess."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_transfer import data

import image_classifier_lib

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "image_classifier.py")


def _config(data_dir, model_dir, **overrides):
    settings = dict(
        data_dir=str(data_dir),
        model_dir=str(model_dir),
        backbone="mobilenet",
        weights=None,
        image_size=32,
        batch_size=8,
        head_epochs=2,
        fine_tune_epochs=1,
        unfreeze_blocks="2",
        verbose=0,
    )
    settings.update(overrides)
    return image_classifier_lib.Config(**settings)


def test_run_writes_model_labels_and_results(image_folder, tmp_path):
    image_folder({"cats": 6, "dogs": 5}, subdir="train")
    root = image_folder({"cats": 3, "dogs": 3}, subdir="val").parent
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(_config(root, model_dir))

    written = set(os.listdir(model_dir))
    assert {"labels.txt", "model.keras", "results.json", "config.json"} <= written
    assert "backup" not in written or not os.listdir(model_dir / "backup")
    assert (model_dir / "labels.txt").read_text().split() == ["cats", "dogs"]
    on_disk = json.loads((model_dir / "results.json").read_text())
    assert on_disk == results
    for phase, epochs in (("feature_extraction", 2), ("fine_tune", 1)):
        assert 0.0 <= on_disk[phase]["val_accuracy"] <= 1.0
        assert on_disk[phase]["seconds"] > 0
        assert on_disk[phase]["epochs"] == epochs
    assert on_disk["unfrozen_blocks"] == ["conv_dw_12", "conv_dw_13"]
    assert (on_disk["num_train"], on_disk["num_validation"]) == (11, 6)
    assert on_disk["config"]["backbone"] == "mobilenet"

    model = keras.saving.load_model(model_dir / "model.keras", safe_mode=True)
    assert model.class_names == ["cats", "dogs"]
    # The saved model takes raw images and reproduces the reported validation accuracy.
    validation = data.image_folder_dataset(root, image_size=32, batch_size=8).validation
    _, accuracy = model.evaluate(validation, verbose=0)
    assert accuracy == pytest.approx(on_disk["fine_tune"]["val_accuracy"], abs=1e-6)


def test_run_carves_a_validation_split(image_folder, tmp_path):
    root = image_folder({"a": 8, "b": 7, "c": 5})
    results = image_classifier_lib.run(
        _config(root, tmp_path / "out", validation_split=0.25, fine_tune_epochs=0, augment="")
    )
    assert (results["num_train"], results["num_validation"]) == (15, 5)
    assert results["fine_tune"] == {}
    assert results["class_names"] == ["a", "b", "c"]


def test_binary_flags_and_main(image_folder, tmp_path):
    root = image_folder({"x": 4, "y": 4})
    model_dir = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            f"--data_dir={root}",
            f"--model_dir={model_dir}",
            "--backbone=mobilenet",
            "--weights=none",
            "--image_size=32",
            "--batch_size=4",
            "--head_epochs=1",
            "--fine_tune_epochs=1",
            "--unfreeze_blocks=1",
            "--validation_split=0.25",
            "--verbose=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "feature_extraction: val_accuracy=" in completed.stdout
    assert "fine_tune: val_accuracy=" in completed.stdout
    assert json.loads((model_dir / "results.json").read_text())["config"]["weights"] == "none"


def test_binary_requires_data_dir(tmp_path):
    completed = subprocess.run(
        [sys.executable, EXAMPLE, f"--model_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "data_dir" in completed.stderr


def test_unknown_backbone_fails_before_loading_data(tmp_path):
    with pytest.raises(ValueError, match="Did you mean"):
        image_classifier_lib.run(
            _config(tmp_path / "none", tmp_path / "out", backbone="mobilenet_v")
        )
    assert not np.any([p.endswith(".keras") for p in os.listdir(tmp_path / "out")])
