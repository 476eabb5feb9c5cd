"""The main example end to end: its `_lib` on a generated image folder, and the binary's
flags in a subprocess."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from interruption import InterruptAt

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


@pytest.mark.slow
def test_export_saved_model_and_tflite_match_keras(image_folder, tmp_path):
    import tensorflow as tf

    root = image_folder({"cats": 6, "dogs": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(
            root,
            model_dir,
            head_epochs=1,
            fine_tune_epochs=0,
            validation_split=0.25,
            export="saved_model,tflite",
        )
    )
    assert set(results["exports"]) == {"saved_model", "tflite"}
    model = keras.saving.load_model(model_dir / "model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)

    served = tf.saved_model.load(str(model_dir / "saved_model"))
    np.testing.assert_allclose(served.serve(images).numpy(), expected, atol=1e-5)

    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "model.tflite"))
    (input_detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], images)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite, expected, atol=1e-4)


def test_reports_and_resolved_config(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(root, model_dir, validation_split=0.25, head_epochs=2, fine_tune_epochs=1)
    )
    report = results["validation_report"]
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == results["num_validation"] == 3
    assert report["accuracy"] == pytest.approx(results["fine_tune"]["val_accuracy"], abs=1e-6)
    assert set(report["per_class"]) == {"a", "b"}
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"]
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved == results["config"]
    assert image_classifier_lib.load_config(str(model_dir / "config.json"), {}).head_epochs == 2
    if pytest.importorskip("matplotlib"):
        assert (model_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
        assert (model_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_gradual_unfreezing_schedule_and_lr_options(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            head_epochs=1,
            fine_tune_epochs=2,
            unfreeze_schedule="1:1,2:3",
            lr_decay=0.5,
            lr_schedule="cosine",
            warmup_steps=1,
            weight_decay=1e-4,
            patience=5,
            augment="",
        )
    )
    # One timeline of 3 epochs; at the end the top 3 blocks train.
    assert results["history"]["epoch"] == [0, 1, 2]
    assert results["unfrozen_blocks"] == ["conv_dw_11", "conv_dw_12", "conv_dw_13"]


def test_early_stopping_stops_a_phase(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            head_epochs=6,
            fine_tune_epochs=0,
            head_lr=0.0,  # nothing improves: stops after 1 + patience epochs
            patience=1,
            augment="",
        )
    )
    assert results["feature_extraction"]["epochs"] == 2


@pytest.mark.slow
def test_binary_config_file_and_flag_override(image_folder, tmp_path):
    root = image_folder({"x": 4, "y": 4})
    model_dir = tmp_path / "out"
    config_path = tmp_path / "run.json"
    config_path.write_text(
        json.dumps(
            {
                "transfer_config": {
                    "data_dir": str(root),
                    "source_model": "mobilenet",
                    "weights": "none",
                    "image_size": 32,
                    "batch_size": 4,
                    "epochs": {"head": 3, "fine_tune": 1},
                    "validation_split": 0.25,
                    "verbose": 0,
                }
            }
        )
    )
    completed = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            f"--config={config_path}",
            f"--model_dir={model_dir}",
            "--head_epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    resolved = json.loads((model_dir / "config.json").read_text())
    assert (resolved["head_epochs"], resolved["fine_tune_epochs"]) == (1, 1)
    assert resolved["backbone"] == "mobilenet"

    bad = tmp_path / "bad.yaml"
    bad.write_text("head_lrr: 0.1\n")
    completed = subprocess.run(
        [sys.executable, EXAMPLE, f"--config={bad}", f"--model_dir={model_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode != 0
    assert "did you mean 'head_lr'" in completed.stderr


def test_cached_head_phase_then_fine_tuning_on_one_timeline_with_best_weights_kept(
    image_folder, tmp_path
):
    root = image_folder({"a": 6, "b": 6})
    seen = InterruptAt()
    results = image_classifier_lib.run(
        _config(
            root,
            tmp_path / "out",
            validation_split=0.25,
            fine_tune_epochs=2,
            restore_best=True,
            ema_momentum=0.0,
        ),
        callbacks=[seen],
    )
    assert results["cached_features"] is True
    assert seen.epochs == [0, 1, 2, 3]  # callbacks see phase 2 continue phase 1's count
    history = results["history"]
    assert history["epoch"] == [0, 1, 2, 3]
    assert results["feature_extraction"]["epochs"] == 2
    # The saved weights are those of phase 2's lowest-val_loss epoch, and the saved model's
    # measured accuracy is that epoch's.
    fine_tune_losses = history["val_loss"][2:]
    best = int(np.argmin(fine_tune_losses))
    assert results["saved_weights"] == {"phase": "fine_tune", "epoch": 3 + best}
    assert results["saved_model_val_accuracy"] == pytest.approx(
        history["val_accuracy"][2 + best], abs=1e-6
    )


def test_interrupted_run_resumes_from_model_dir(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    # Through the frozen backbone, phase 1 is backed up epoch by epoch too.
    config = _config(
        root,
        tmp_path / "out",
        validation_split=0.25,
        head_epochs=2,
        augment="",
        cache_features=False,
    )
    first = InterruptAt(at=1)
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[first])
    assert first.epochs == [0]
    assert os.listdir(tmp_path / "out" / "backup")

    second = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[second])
    assert second.epochs == [1, 2]  # epoch 0 is not trained again
    assert results["history"]["epoch"] == [0, 1, 2]
    assert results["feature_extraction"]["epochs"] == 2


def test_cached_run_interrupted_in_fine_tuning_resumes_there(image_folder, tmp_path):
    root = image_folder({"a": 6, "b": 6})
    config = _config(root, tmp_path / "out", validation_split=0.25, fine_tune_epochs=2)
    first = InterruptAt(at=3)
    with pytest.raises(KeyboardInterrupt):
        image_classifier_lib.run(config, callbacks=[first])
    assert first.epochs == [0, 1, 2]

    second = InterruptAt()
    results = image_classifier_lib.run(config, callbacks=[second])
    # Phase 1 on cached features is cheap and runs again; fine-tuning epoch 2 is not.
    assert second.epochs == [0, 1, 3]
    assert results["history"]["epoch"] == [0, 1, 2, 3]
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"] * 2


def _tensorboard_scalars(log_dir):
    """`{tag: [(step, value), ...]}` as TensorBoard reads the run in `log_dir`."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
        for tag in accumulator.Tags()["tensors"]
        if tag.startswith("epoch_")  # not the model-config text summary
    }


def test_tensorboard_logs_one_epoch_timeline_across_phases(image_folder, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard to write TensorBoard logs")
    root = image_folder({"cats": 6, "dogs": 6})
    model_dir = tmp_path / "out"
    results = image_classifier_lib.run(
        _config(root, model_dir, head_epochs=1, fine_tune_epochs=2, validation_split=0.25)
    )
    history = results["history"]
    assert history["phase"] == ["feature_extraction", "fine_tune", "fine_tune"]
    for split, prefix in (("train", ""), ("validation", "val_")):
        scalars = _tensorboard_scalars(model_dir / "logs" / split)
        for metric in ("loss", "accuracy"):
            # The fine-tuning phase continues the head phase's epoch axis (no restart at 0),
            # with the values the run reported.
            steps, values = zip(*scalars[f"epoch_{metric}"])
            assert steps == (0, 1, 2)
            np.testing.assert_allclose(values, history[prefix + metric], rtol=1e-6)
    learning_rates = dict(_tensorboard_scalars(model_dir / "logs" / "train")["epoch_learning_rate"])
    assert learning_rates[1] < learning_rates[0]  # the phase boundary is visible
