"""The `keras-transfer` command as a user runs it (`python -m keras_transfer` in a
subprocess): train on a tiny image folder, predict, export to TFLite; its output files and
its output on the terminal."""

import collections
import csv
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT
from conftest import keras_transfer_command as command
from conftest import write_image_folder

import keras_transfer as kt
from keras_transfer.apps import image_config
from keras_transfer.apps import predict as predict_lib
from keras_transfer.diagnostics import reports

TRAIN_FLAGS = [
    "--backbone=mobilenet",
    "--weights=none",
    "--image_size=32",
    "--batch_size=4",
    "--head_epochs=2",
    "--fine_tune_epochs=1",
    "--unfreeze_blocks=2",
    "--head_lr=0.01",
    "--fine_tune_lr=0",
    "--seed=3",
    "--deterministic",
    "--test_split=0.25",  # 9 training, 3 validation and 4 test images of the 16
    "--verbose=1",  # a progress bar, and still none of TensorFlow's C++ start-up lines
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `keras-transfer train` run: (data folder, model folder, the finished process)."""
    root = tmp_path_factory.mktemp("command")
    data_dir = root / "images"
    write_image_folder(data_dir, {"ants": 8, "bees": 8}, size=(40, 48))
    model_dir = root / "run"
    process = command("train", f"--data_dir={data_dir}", f"--model_dir={model_dir}", *TRAIN_FLAGS)
    assert process.returncode == 0, process.stderr[-3000:]
    return data_dir, model_dir, process


def test_train_writes_the_outputs_and_prints_one_summary(trained):
    _, model_dir, process = trained
    for name in ("model.keras", "labels.txt", "config.json", "results.json"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "labels.txt").read_text().split() == ["ants", "bees"]
    # The summary is printed once, on stdout: the validation table, then the test line.
    assert process.stdout.count("saved model on") == 1
    assert process.stdout.count("macro F1") == 2
    assert process.stdout.count("test set, 4 images never seen before") == 1
    assert "model.keras:" in process.stdout and "for inference" in process.stdout


def test_train_output_is_readable(trained):
    _, _, process = trained
    log = process.stderr
    assert "phase 1/2: training the head on the frozen backbone at lr 0.01 for 2 epochs" in log
    assert "phase 2/2: fine-tuning 2 blocks at lr 0.001 for 1 epoch, BatchNorm frozen" in log
    assert "extracting backbone features of the training images" in log
    assert "extracted features of 9 training images" in log
    # Not a Keras progress bar's float formatting of a count, not Keras' shuffle warning,
    # not TensorFlow's C++ start-up lines.
    assert not re.search(r"examples: \d+\.\d{4}", log)
    assert "shuffle=True" not in log
    for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in log, noise


def test_config_json_holds_the_resolved_values(trained):
    data_dir, model_dir, _ = trained
    config = json.loads((model_dir / "config.json").read_text())
    assert config["image_size"] == 32
    assert config["freeze_strategy"] == "top_n_unfrozen"  # "auto" as resolved
    assert config["fine_tune_lr"] == pytest.approx(0.001)  # 0: head_lr / 10
    assert config["data_dir"] == str(data_dir)
    for tfds_field in ("dataset", "tfds_data_dir", "train_split", "eval_split"):
        assert tfds_field not in config
    # It reads back as a --config file.
    again = image_config.load_config(str(model_dir / "config.json"), {})
    assert again.freeze_strategy == "top_n_unfrozen" and again.image_size == 32


def test_epochs_are_counted_from_one_everywhere(trained):
    _, model_dir, process = trained
    results = json.loads((model_dir / "results.json").read_text())
    assert results["history"]["epoch"] == [1, 2, 3]
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"]
    assert "Epoch 3/3" in process.stdout + process.stderr


def test_train_with_test_split_reports_the_test_accuracy_and_its_interval(trained):
    _, model_dir, process = trained
    results = json.loads((model_dir / "results.json").read_text())
    test = results["test"]
    assert results["num_test"] == test["num_images"] == 4
    assert (results["num_train"], results["num_validation"]) == (9, 3)
    correct = round(test["accuracy"] * 4)
    assert test["accuracy"] == correct / 4
    low, high = test["accuracy_ci95"]
    assert [low, high] == pytest.approx(list(reports.wilson_interval(correct, 4)))
    assert low <= test["accuracy"] <= high
    assert set(test["per_class"]) == {"ants", "bees"}
    assert sum(row["support"] for row in test["per_class"].values()) == 4
    assert {"macro_f1", "balanced_accuracy"} <= set(test)
    assert results["config"]["test_split"] == 0.25
    assert f"accuracy {test['accuracy']:.4f} (95% interval {low:.4f}-{high:.4f})" in process.stdout
    assert "optimistic" not in process.stdout


def _event_steps(folder):
    from tensorboard.backend.event_processing import event_file_loader

    steps = collections.defaultdict(list)
    for path in sorted(folder.glob("events*")):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return steps


def test_tensorboard_steps_continue_across_the_phases(trained):
    _, model_dir, _ = trained
    steps = _event_steps(model_dir / "logs" / "validation")
    # 9 training images in batches of 4: 3 steps per epoch, in both phases.
    assert steps["evaluation_loss_vs_iterations"] == [3, 6, 9]
    assert steps["epoch_loss"] == [0, 1, 2]


def test_predict_matches_the_model(trained, tmp_path):
    data_dir, model_dir, _ = trained
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not an image")
    process = command(
        "predict",
        f"--model_dir={model_dir}",
        "--format=jsonl",
        "--top_k=2",
        data_dir / "ants",
        data_dir / "bees" / "bees_0.jpg",
        unreadable,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [json.loads(line) for line in process.stdout.splitlines()]
    assert len(rows) == 9  # 8 ants and a bee
    assert f"skipped {unreadable}: cannot decode it as an image" in process.stderr
    assert "9 image(s) predicted, 1 skipped" in process.stderr

    model = kt.load_model(model_dir / "model.keras")
    labels = ["ants", "bees"]
    images = np.stack([predict_lib.load_image(row["file"], (32, 32)) for row in rows])
    expected = model.predict(images, verbose=0)
    for row, probabilities in zip(rows, expected):
        order = np.argsort(-probabilities)
        assert row["labels"] == [labels[i] for i in order]
        np.testing.assert_allclose(row["probabilities"], probabilities[order], atol=1e-5)

    csv_text = predict_lib.format_rows(rows, "csv")
    lines = list(csv.reader(io.StringIO(csv_text)))
    assert lines[0] == ["file", "label_1", "probability_1", "label_2", "probability_2"]
    assert lines[1][0] == rows[0]["file"] and len(lines) == 10


@pytest.mark.tensorflow_only
def test_export_tflite_matches_keras(trained):
    data_dir, model_dir, _ = trained
    process = command("export", f"--model_dir={model_dir}", "--format=tflite")
    assert process.returncode == 0, process.stderr[-3000:]
    assert (model_dir / "model.tflite").is_file()
    # The converter's SavedModel was temporary: nothing but the .tflite is left behind.
    assert not (model_dir / "saved_model").exists()
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".partial")]

    import tensorflow as tf

    model = kt.load_model(model_dir / "model.keras")
    images = np.stack(
        [predict_lib.load_image(str(p), (32, 32)) for p in sorted(data_dir.glob("*/*.jpg"))[:4]]
    )
    interpreter = tf.lite.Interpreter(model_path=str(model_dir / "model.tflite"))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(lite, model.predict(images, verbose=0), atol=1e-4)


@pytest.mark.jax_only
def test_export_tflite_is_refused_on_other_backends_in_one_line(trained):
    _, model_dir, _ = trained
    process = command("export", f"--model_dir={model_dir}", "--format=tflite")
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "TFLite export needs the TensorFlow backend, but Keras runs on" in process.stderr
    assert not (model_dir / "model.tflite").exists()
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".partial")]


@pytest.mark.tensorflow_only
def test_export_onnx_without_tf2onnx_names_the_extra(tiny_classifier, tmp_path, monkeypatch):
    import importlib.util

    from keras_transfer.apps import export as export_lib

    # The dev install has the onnx extra: hide tf2onnx as a slim install lacks it.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tf2onnx" else real_find_spec(name, *args),
    )
    with pytest.raises(export_lib.ExportUnavailableError) as error:
        export_lib.export_model(tiny_classifier, str(tmp_path), "onnx")
    assert str(error.value) == "ONNX export needs tf2onnx: pip install 'keras-transfer[onnx]'."
    assert not os.listdir(tmp_path)


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from keras_transfer.apps import command as command_lib

    with pytest.raises(SystemExit) as exit_info:
        command_lib.main(["keras-transfer", "trian"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "keras-transfer: error: unknown command 'trian' (did you mean 'train'?)",
        "  hint: the commands are train, train-text, predict, export, adapt; `keras-transfer --help` "
        "describes them.",
    ]
    no_images = command("predict", f"--model_dir={tmp_path}")
    assert no_images.returncode == 2
    assert no_images.stderr.splitlines() == [
        "keras-transfer predict: error: Give one or more image files or folders after the flags.",
        "  hint: `keras-transfer predict --helpshort` lists the flags and their values.",
    ]


def test_helpshort_lists_the_command_flags():
    help_text = command("predict", "--helpshort")
    assert help_text.returncode == 0
    assert help_text.stdout.startswith("usage: keras-transfer predict [flags]")
    for flag in ("--model_dir", "--top_k", "--format: <table|jsonl|csv>"):
        assert flag in help_text.stdout


@pytest.mark.slow
def test_deterministic_runs_give_identical_results(trained, tmp_path):
    data_dir, model_dir, _ = trained
    again = command("train", f"--data_dir={data_dir}", f"--model_dir={tmp_path}", *TRAIN_FLAGS)
    assert again.returncode == 0, again.stderr[-3000:]
    first = json.loads((model_dir / "results.json").read_text())["history"]
    second = json.loads((tmp_path / "results.json").read_text())["history"]
    assert first == second  # every metric of every epoch, bit for bit
    a = keras.saving.load_model(model_dir / "model.keras")
    b = keras.saving.load_model(tmp_path / "model.keras")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_helpshort_fits_a_screen_and_help_groups_every_flag():
    from absl import flags

    from keras_transfer.apps import image_classifier_cli

    short = subprocess.run(
        [sys.executable, "-m", "keras_transfer", "train", "--helpshort"],
        capture_output=True,
        text=True,
    )
    assert short.returncode == 0 and len(short.stdout.splitlines()) <= 40
    assert "--model_dir" in short.stdout and "--verbose" in short.stdout
    grouped = {n for names in image_classifier_cli.FLAG_GROUPS.values() for n in names}
    defined = {
        flag.name for flag in flags.FLAGS.get_flags_for_module(image_classifier_cli.__name__)
    }
    assert defined - grouped == set(), "flags missing from FLAG_GROUPS"
    full = subprocess.run(
        [sys.executable, "-m", "keras_transfer", "train", "--help"], capture_output=True, text=True
    )
    for title in image_classifier_cli.FLAG_GROUPS:
        assert f"\n{title}:\n" in full.stdout
    assert "--verbose (default: 2)" in full.stdout


def test_progress_is_a_bar_at_a_terminal_and_lines_in_a_log():
    # (--verbose=1 without TensorFlow's start-up lines: test_train_output_is_readable.)
    from keras_transfer.apps import image_classifier_cli

    class Terminal:
        def isatty(self):
            return True

    assert image_classifier_cli.progress_verbosity(Terminal()) == 1
    assert image_classifier_cli.progress_verbosity(io.StringIO()) == 2


def test_the_command_line_guide_names_every_train_flag():
    from keras_transfer.apps import image_classifier_cli

    guide = (REPO_ROOT / "docs" / "guide" / "command-line.md").read_text()
    missing = [
        name
        for names in image_classifier_cli.FLAG_GROUPS.values()
        for name in names
        if f"`--{name}" not in guide
    ]
    assert missing == []
