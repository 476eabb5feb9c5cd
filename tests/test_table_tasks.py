"""Multilabel and regression tables end to end in the command (`keras-transfer train
--labels_csv --task=multilabel|regression`, then `keras-transfer predict`): the thresholds
chosen per label on validation, the reports and plots in the run folder, the rows predict
prints, and the settings such a run refuses by name."""

import csv
import io
import json

import numpy as np
import pytest
from conftest import LABEL_TABLE_LABELS
from conftest import LABEL_TABLE_TARGETS
from conftest import assert_png_image
from conftest import keras_transfer_command
from conftest import tiny_run_settings
from conftest import write_label_table

import keras_transfer as kt
from keras_transfer.apps import config as config_lib
from keras_transfer.apps import export_check
from keras_transfer.apps import image_classifier
from keras_transfer.apps import image_config
from keras_transfer.apps import image_plan
from keras_transfer.apps import image_tasks
from keras_transfer.apps import predict as predict_lib
from keras_transfer.apps import predict_tasks
from keras_transfer.diagnostics import label_reports

LABELS = list(LABEL_TABLE_LABELS)
TARGETS = list(LABEL_TABLE_TARGETS)
TABLE_FLAGS = [
    "--backbone=mobilenet",
    "--weights=none",
    "--image_size=32",
    "--batch_size=4",
    "--plan=fixed",
    "--head_epochs=2",
    "--fine_tune_epochs=1",
    "--unfreeze_blocks=2",
    "--head_lr=0.01",
    "--augment=",
    "--seed=1",  # 14 training, 5 validation and 5 test images of the 24
    "--test_split=0.2",
    "--path_column=file",
    "--verbose=2",
]


# --- the threshold rule --------------------------------------------------------------------


def test_best_f1_thresholds_on_hand_made_labels():
    labels = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    scores = np.array([[0.9, 0.9, 0.6, 0.9], [0.3, 0.8, 0.4, 0.8], [0.2, 0.3, 0.2, 0.3],
                       [0.1, 0.2, 0.1, 0.1]])  # fmt: skip
    thresholds = kt.best_f1_thresholds(labels, scores)
    # Column 0: only a cut between 0.2 and 0.3 catches both positives alone (F1 = 1).
    assert thresholds[0] == pytest.approx(0.25)
    # Column 1: F1 2/3 at a cut in (0.8, 0.9] (one hit of one) and at one in (0, 0.2]
    # (both hits of four); the first is nearer 0.5. Its midpoint is kept.
    assert thresholds[1] == pytest.approx(0.85)
    # Column 2 has no positive: F1 is 0 everywhere, 0.5 stays.
    assert thresholds[2] == 0.5
    # Column 3: F1 = 1 for every cut in (0.3, 0.8], which holds 0.5.
    assert thresholds[3] == 0.5
    report = kt.multilabel_report(labels, scores, ["a", "b", "c", "d"], thresholds)
    assert [row["f1"] for row in report["per_label"].values()] == pytest.approx([1, 2 / 3, 0, 1])
    # At one 0.5 for all, column 0 finds one positive of two.
    assert kt.multilabel_report(labels, scores, ["a", "b", "c", "d"])["per_label"]["a"][
        "f1"
    ] == pytest.approx(2 / 3)


def test_the_chosen_threshold_beats_every_other_cut_of_random_scores():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(40, 3)) < 0.3).astype(int)
    scores = np.clip(labels * 0.3 + rng.uniform(size=(40, 3)) * 0.7, 0, 1)
    thresholds = kt.best_f1_thresholds(labels, scores)
    for column, threshold in enumerate(thresholds):
        assert 0 <= threshold <= 1

        def f1(cut, column=column):
            report = kt.multilabel_report(labels[:, [column]], scores[:, [column]], ["x"], cut)
            return report["per_label"]["x"]["f1"]

        best = f1(threshold)
        assert all(f1(cut) <= best + 1e-12 for cut in np.linspace(0, 1, 201))


def test_thresholds_and_reports_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"must both be \(examples, labels\)"):
        kt.best_f1_thresholds([[1, 0]], [[0.5]])
    with pytest.raises(ValueError, match="one number or one per label"):
        kt.multilabel_report([[1, 0]], [[0.5, 0.5]], ["a", "b"], [0.5, 0.5, 0.5])


# --- the settings a multilabel or regression run refuses ----------------------------------------


@pytest.mark.parametrize(
    "task, settings, says",
    [
        ("multilabel", {"class_weight": "balanced"}, "class_weight weights the one class"),
        ("regression", {"label_smoothing": 0.1}, "label_smoothing smooths class labels"),
        ("multilabel", {"augment": "flip,mixup"}, "remove mixup and cutmix from --augment"),
        ("regression", {"diagnostics": True}, "drop --diagnostics"),
        ("multilabel", {"target_dir": "t"}, "drop --target_dir"),
        ("multilabel", {"target_dir": "t", "adapt": "tent"}, "adapt adapts a classifier"),
        (
            "regression",
            {"zero_shot": True, "backbone": "keras_hub:clip_vit_base_patch16"},
            "drop --zero_shot",
        ),
    ],
)
def test_multiclass_only_settings_are_refused_by_name(task, settings, says):
    with pytest.raises(config_lib.ConfigError, match=says) as caught:
        image_config.Config(data_dir="x", model_dir="y", labels_csv="t.csv", task=task, **settings)
    assert f"task={task!r}" in str(caught.value) and f"a {task} table" in str(caught.value)


def test_a_task_needs_a_label_table():
    with pytest.raises(config_lib.ConfigError, match="give labels_csv"):
        image_config.Config(data_dir="x", model_dir="y", task="multilabel")


def test_each_task_trains_with_its_keras_loss_and_metrics():
    multilabel = image_tasks.loss_arguments("multilabel", label_smoothing=0.1)
    assert isinstance(multilabel["loss"], kt.BinaryLabelCrossentropy)
    assert multilabel["loss"].get_config()["label_smoothing"] == 0.1
    assert [m.name for m in multilabel["metrics"]] == ["auc", "pr_auc"]
    assert all(m.multi_label for m in multilabel["metrics"])
    assert multilabel["metrics"][1].curve.name == "PR"
    regression = image_tasks.loss_arguments("regression")
    assert regression["loss"].name == "mean_squared_error"
    assert [m.name for m in regression["metrics"]] == ["mae", "rmse"]


def test_the_scaled_plan_of_a_table_task_follows_the_training_set_size():
    config = image_config.Config(
        data_dir="x", model_dir="y", labels_csv="t.csv", task="regression", plan="scaled"
    )
    backbone = kt.create_backbone("mobilenet", input_shape=(32, 32, 3), weights=None, alpha=0.25)
    transfer = image_plan.measure_transferability(config, backbone, data=None)
    assert "rank class labels" in transfer["error"]

    class Data:
        num_train = 200

    planned, plan = image_plan.plan_training(config, backbone, Data(), transfer)
    assert plan["reason"].startswith("Transferability not measured (LogME and H-score rank")
    assert planned.head_epochs and planned.head_lr and plan["block_logme"] is None
    assert planned.fine_tune_lr == kt.size_scaled_plan(200).fine_tune_lr


# --- predict's rows and files -------------------------------------------------------------


def test_predict_rows_of_each_task_and_their_formats():
    row = predict_tasks.task_row("a.png", np.array([0.2, 0.9, 0.45]), LABELS, "multilabel",
                                 [0.3, 0.5, 0.4])  # fmt: skip
    assert row["labels"] == ["green", "blue"] and row["probabilities"] == [0.9, 0.45]
    assert row["all_probabilities"] == {"red": 0.2, "green": 0.9, "blue": 0.45}
    lines = list(csv.reader(io.StringIO(predict_lib.format_rows([row], "csv", "multilabel"))))
    assert lines == [["file", "labels", *LABELS], ["a.png", "green;blue", "0.200000",
                                                   "0.900000", "0.450000"]]  # fmt: skip
    table = predict_lib.format_rows([row], "table", "multilabel").splitlines()
    assert table[0].split() == ["file", "labels", *LABELS]
    assert table[1].split() == ["a.png", "green;blue", "0.2000", "0.9000", "0.4500"]
    values = predict_tasks.task_row("b.png", np.array([1.5, -2.0]), TARGETS, "regression")
    assert values == {"file": "b.png", "values": {"redness": 1.5, "blueness": -2.0}}
    text = predict_lib.format_rows([values], "jsonl", "regression")
    assert json.loads(text) == values


def test_predict_needs_the_runs_thresholds(tmp_path):
    with pytest.raises(FileNotFoundError, match="thresholds.json' does not exist.*Restore"):
        predict_tasks.load_thresholds(str(tmp_path), LABELS)
    (tmp_path / "thresholds.json").write_text(json.dumps({"red": 0.5, "green": 0.5}))
    with pytest.raises(ValueError, match=r"must map each of the model's labels"):
        predict_tasks.load_thresholds(str(tmp_path), LABELS)
    (tmp_path / "thresholds.json").write_text(json.dumps(dict.fromkeys(LABELS, 1.5)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        predict_tasks.load_thresholds(str(tmp_path), LABELS)


def test_an_export_check_of_label_vectors_compares_outputs_only():
    outputs = np.array([[0.9, 0.1], [0.2, 0.7]])
    result = export_check.compare(outputs, outputs + 0.01, [[1, 0], [0, 1]])
    assert result["max_probability_difference"] == pytest.approx(0.01)
    assert "keras_accuracy" not in result


# --- the command, end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    """`keras-transfer train --task=multilabel` on a 24-image table: (table, images, run
    folder, process)."""
    root = tmp_path_factory.mktemp("multilabel")
    table, images = write_label_table(root)
    model_dir = root / "run"
    process = keras_transfer_command(
        "train", f"--data_dir={images}", f"--model_dir={model_dir}", f"--labels_csv={table}",
        f"--label_columns={','.join(LABELS)}", "--task=multilabel", "--label_smoothing=0.05",
        *TABLE_FLAGS,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    return table, images, model_dir, process


def test_a_multilabel_run_keeps_a_threshold_per_label_chosen_on_validation(multilabel_run):
    table, images, model_dir, process = multilabel_run
    results = json.loads((model_dir / "results.json").read_text())
    assert results["task"] == "multilabel" and results["class_names"] == LABELS
    thresholds = results["thresholds"]
    assert list(thresholds) == LABELS and all(0 <= t <= 1 for t in thresholds.values())
    assert json.loads((model_dir / "thresholds.json").read_text()) == thresholds
    assert results["thresholds_chosen_on"] == "validation"
    # Both phases ran, the head's on cached features, with the task's Keras metrics.
    assert results["history"]["phase"] == ["feature_extraction"] * 2 + ["fine_tune"]
    assert results["cached_features"] is True
    assert {"val_loss", "val_auc", "val_pr_auc"} <= set(results["history"])
    # The thresholds are those of the saved model's validation outputs, read as the run did.
    data = kt.image_table_dataset(
        table, images, "file", LABELS, "multilabel", image_size=32, batch_size=4,
        validation_split=0.2, test_split=0.2, seed=1,
    )  # fmt: skip
    model = kt.load_model(model_dir / "model.keras")
    labels, outputs = label_reports.predict_outputs(model, data.validation)
    expected = kt.best_f1_thresholds(labels, outputs)
    assert list(thresholds.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    validation = results["validation_report"]
    assert validation["num_examples"] == results["num_validation"] == len(labels)
    assert validation["threshold"] == list(thresholds.values())
    recomputed = kt.multilabel_report(labels, outputs, LABELS, expected)
    assert validation["mAP"] == pytest.approx(recomputed["mAP"])
    for name in LABELS:
        row = validation["per_label"][name]
        assert set(row) == {
            "average_precision",
            "precision",
            "recall",
            "f1",
            "support",
            "threshold",
        }
        assert row["f1"] == pytest.approx(recomputed["per_label"][name]["f1"])
        # No other cut does better on these images.
        column = LABELS.index(name)
        at_half = kt.multilabel_report(labels[:, [column]], outputs[:, [column]], [name])
        assert row["f1"] >= at_half["per_label"][name]["f1"]
    # The test images, once, at the validation thresholds.
    test = results["test"]
    assert test["num_examples"] == results["num_test"] > 0
    assert test["threshold"] == list(thresholds.values())
    assert "mAP" in test and set(test["per_label"]) == set(LABELS)
    assert "test set, " in process.stdout and "at the validation thresholds" in process.stdout
    assert "val_pr_auc" in process.stdout and "thresholds chosen on them" in process.stdout
    assert results["plots"] == ["label_f1.png", "training_curves.png"]
    assert_png_image(model_dir / "label_f1.png")
    assert not (model_dir / "confusion_matrix.png").exists()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["task"] == "multilabel" and config["label_columns"] == ",".join(LABELS)


def test_predict_gives_the_labels_at_or_above_their_thresholds(multilabel_run):
    _, images, model_dir, _ = multilabel_run
    process = keras_transfer_command(
        "predict", f"--model_dir={model_dir}", "--format=jsonl", images / "0.png", images / "1.png"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = [json.loads(line) for line in process.stdout.splitlines()]
    assert [row["file"] for row in rows] == [str(images / "0.png"), str(images / "1.png")]
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    model = kt.load_model(model_dir / "model.keras")
    pictures = np.stack([predict_lib.load_image(row["file"], (32, 32)) for row in rows])
    for row, probabilities in zip(rows, model.predict(pictures, verbose=0)):
        assert set(row) == {"file", "labels", "probabilities", "all_probabilities"}
        assert list(row["all_probabilities"]) == LABELS
        np.testing.assert_allclose(
            list(row["all_probabilities"].values()), probabilities, atol=1e-5
        )
        chosen = [
            i for i in np.argsort(-probabilities) if probabilities[i] >= thresholds[LABELS[i]]
        ]
        assert row["labels"] == [LABELS[i] for i in chosen]
    # The Python entry point reads the same run folder the same way.
    assert kt.predict_images(model_dir, [images / "0.png", images / "1.png"]) == rows


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """`image_classifier.run` (what `keras-transfer train` runs) of a regression table:
    (images, run folder, results)."""
    root = tmp_path_factory.mktemp("regression")
    table, images = write_label_table(root)
    model_dir = root / "run"
    settings = tiny_run_settings(
        images, model_dir, labels_csv=str(table), path_column="file", seed=1,
        label_columns=",".join(TARGETS), task="regression", test_split=0.2, head_lr=0.01,
    )  # fmt: skip
    return images, model_dir, image_classifier.run(image_config.Config(**settings))


def test_a_regression_run_reports_mae_rmse_and_r2_per_target(regression_run):
    images, model_dir, results = regression_run
    written = json.loads((model_dir / "results.json").read_text())
    assert written["task"] == "regression" and written["class_names"] == TARGETS
    assert "thresholds" not in written and not (model_dir / "thresholds.json").exists()
    assert {"val_mae", "val_rmse"} <= set(written["history"])
    for split in ("validation_report", "test"):
        report = written[split]
        assert set(report) == {"mae", "rmse", "r2", "num_examples", "per_target"}
        assert list(report["per_target"]) == TARGETS
        rows = report["per_target"].values()
        assert report["mae"] == pytest.approx(np.mean([row["mae"] for row in rows]))
        assert report["rmse"] == pytest.approx(np.mean([row["rmse"] for row in rows]))
        # The targets vary on these images: R² is a number, its mean over the targets.
        assert all(isinstance(row["r2"], float) for row in rows)
        assert report["r2"] == pytest.approx(np.mean([row["r2"] for row in rows]))
        assert all(row["rmse"] >= row["mae"] >= 0 for row in rows)
    assert written["validation_report"]["num_examples"] == written["num_validation"]
    assert written["test"]["num_examples"] == written["num_test"] > 0
    assert written["plots"] == ["predicted_vs_true.png", "training_curves.png"]
    assert_png_image(model_dir / "predicted_vs_true.png")
    model = kt.load_model(model_dir / "model.keras")
    assert model.head.task == "regression" and model.output_shape == (None, 2)
    # An export's check lists the run's images again, with their targets.
    files = export_check.run_files(str(model_dir))
    assert len(files.validation_paths) == written["num_validation"]
    assert np.shape(files.validation_labels) == (written["num_validation"], 2)


def test_predict_gives_the_value_of_each_target(regression_run):
    images, model_dir, _ = regression_run
    process = keras_transfer_command(
        "predict", f"--model_dir={model_dir}", "--format=csv", images / "2.png", images / "3.png"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    lines = list(csv.reader(io.StringIO(process.stdout)))
    assert lines[0] == ["file", *TARGETS] and len(lines) == 3
    model = kt.load_model(model_dir / "model.keras")
    pictures = np.stack([predict_lib.load_image(line[0], (32, 32)) for line in lines[1:]])
    expected = model.predict(pictures, verbose=0)
    np.testing.assert_allclose([[float(v) for v in line[1:]] for line in lines[1:]], expected,
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    rows = kt.predict_images(model_dir, images / "2.png")
    assert set(rows[0]) == {"file", "values"} and list(rows[0]["values"]) == TARGETS
