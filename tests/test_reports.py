"""Reports: confusion matrix, per-class precision/recall, and their PNGs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_png_image

from keras_transfer.diagnostics import reports
from keras_transfer.training import two_phase as training


def test_confusion_matrix_and_report_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 1]
    matrix = reports.confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [1, 1, 0], [0, 1, 0]])
    report = reports.classification_report(matrix, ["a", "b", "c"])
    assert report["per_class"]["a"] == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "support": 3,
    }
    assert report["per_class"]["b"]["precision"] == pytest.approx(1 / 3)
    assert report["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    # Never predicted: precision 0 rather than NaN.
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    assert "accuracy 0.5000" in reports.format_report(report)


def test_wilson_interval_by_hand():
    # 8 of 10: p = 0.8, z = 1.96; centre (0.8 + z²/20) / (1 + z²/10), the textbook values.
    low, high = reports.wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # At 0 and all correct the interval still has a width (the normal one would not).
    assert reports.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert reports.wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    low99, high99 = reports.wilson_interval(8, 10, confidence=0.99)
    assert low99 < low and high < high99
    with pytest.raises(ValueError, match="at least one example"):
        reports.wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"correct must lie in \[0, total=10\]"):
        reports.wilson_interval(11, 10)


def test_macro_f1_and_balanced_accuracy_by_hand():
    # Class 0: precision 2/2, recall 2/3, F1 0.8; class 1: precision 1/2, recall 1, F1 2/3.
    matrix = np.array([[2, 1], [0, 1]])
    assert reports.macro_f1(matrix) == pytest.approx((0.8 + 2 / 3) / 2)
    # A class neither in the labels nor predicted is left out of the mean.
    padded = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert reports.macro_f1(padded) == pytest.approx((0.8 + 2 / 3) / 2)
    assert reports.balanced_accuracy(np.array([[9, 1], [1, 1]])) == pytest.approx(0.7)
    assert reports.balanced_accuracy(padded) == pytest.approx((2 / 3 + 1) / 2)


def test_held_out_report_fields():
    matrix = np.array([[5, 1], [1, 3]])  # 8 of 10 right
    report = reports.held_out_report(matrix, ["ants", "bees"])
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["accuracy_ci95"] == [
        pytest.approx(0.4902, abs=1e-4),
        pytest.approx(0.9433, abs=1e-4),
    ]
    assert report["num_images"] == 10
    assert report["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert report["macro_f1"] == pytest.approx((5 / 6 + 3 / 4) / 2)  # here F1 = recall
    assert report["per_class"]["bees"] == {
        "precision": pytest.approx(0.75),
        "recall": pytest.approx(0.75),
        "f1": pytest.approx(0.75),
        "support": 4,
    }
    assert report["confusion_matrix"] == [[5, 1], [1, 3]]


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        reports.confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        reports.confusion_matrix([0, 1, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="does not match 3 classes"):
        reports.classification_report(np.zeros((2, 2)), ["a", "b", "c"])


def test_predict_labels_keeps_labels_aligned_with_shuffled_data():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))
    x = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]] * 5, dtype="float32")
    y = np.array([0, 1, 1, 1] * 5)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(20).batch(3)
    true, predicted = reports.predict_labels(model, dataset)
    matrix = reports.confusion_matrix(true, predicted, 2)
    np.testing.assert_array_equal(matrix, [[5, 0], [5, 10]])


def _history():
    history = training.TwoPhaseHistory()
    for phase, losses in ((training.PHASE_HEAD, [1.0, 0.8]), (training.PHASE_FINE_TUNE, [0.5])):
        keras_history = keras.callbacks.History()
        keras_history.epoch = list(range(len(history.epoch), len(history.epoch) + len(losses)))
        keras_history.history = {
            "loss": losses,
            "accuracy": [0.5] * len(losses),
            "val_loss": losses,
            "val_accuracy": [0.6] * len(losses),
        }
        history.add(phase, keras_history, 1.0)
    return history


def test_pngs_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    curves = reports.plot_training_curves(_history(), tmp_path / "curves.png")
    matrix = reports.plot_confusion_matrix(
        np.eye(3, dtype=int) * 4, list("abc"), tmp_path / "cm.png"
    )
    for path in (curves, matrix):
        assert_png_image(path, min_size=(300, 200))
