"""Class weights: "balanced" values, the loss Keras computes with them, bad weights, label
counting, the imbalance warning and the balanced accuracy of the report."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_tiny_classifier
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer.data import imbalance
from keras_transfer.diagnostics import reports

LABELS = np.array([0] * 6 + [1] * 2 + [2] * 4, dtype=np.int32)  # 12 examples, 3 classes


def test_balanced_weights_are_n_over_k_times_n_c():
    weights = kt.resolve_class_weight("balanced", LABELS)
    assert weights == pytest.approx({0: 12 / 18, 1: 12 / 6, 2: 12 / 12})
    # Every class carries the same total weight, and the weights average 1 per example.
    assert np.mean([weights[c] for c in LABELS]) == pytest.approx(1.0)


@pytest.mark.parametrize("encoding", ["int", "int_column", "one_hot"])
def test_class_counts_of_a_dataset_in_one_pass(encoding):
    labels = {
        "int": LABELS,
        "int_column": LABELS[:, None],
        "one_hot": np.eye(3, dtype=np.float32)[LABELS],
    }[encoding]
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((12, 2)), labels)).batch(5)
    assert kt.class_counts(dataset).tolist() == [6, 2, 4]
    assert kt.class_counts(dataset, num_classes=4).tolist() == [6, 2, 4, 0]
    assert kt.resolve_class_weight("balanced", dataset) == pytest.approx({0: 2 / 3, 1: 2, 2: 1})


def test_binary_sigmoid_labels_count_as_two_classes():
    labels = np.array([0.0, 1.0, 1.0, 1.0], np.float32)
    assert kt.class_counts(labels).tolist() == [1, 3]


def per_example_cross_entropy(model, images, labels):
    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    return -np.log(probabilities[np.arange(len(labels)), labels])


@pytest.mark.parametrize("cached", [False, True], ids=["fit_two_phase", "fit_feature_extractor"])
def test_class_weights_change_the_loss_as_computed_by_hand(cached):
    images = tiny_images(12)
    data = tf.data.Dataset.from_tensor_slices((images, LABELS)).batch(12)  # one step
    model = make_tiny_classifier(3)
    # A random backbone's pooled features are near 0: a bias makes the classes' losses differ.
    model.head.output_dense.bias.assign([1.0, -0.5, 0.2])
    losses = per_example_cross_entropy(model, images, LABELS)
    weights = np.array([12 / 18, 12 / 6, 12 / 12])[LABELS]
    if cached:
        result = kt.fit_feature_extractor(
            model, data, epochs=1, batch_size=12, class_weight="balanced", verbose=0
        )
        history = result.history.history
    else:
        history = kt.fit_two_phase(
            model, data, head_epochs=1, fine_tune_epochs=0, class_weight="balanced", verbose=0
        ).history
    # Keras: sum of weighted losses / batch size; with balanced weights (mean 1) this is the
    # class-balanced mean of the per-example losses.
    expected = np.sum(weights * losses) / len(losses)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(np.sum(weights * losses) / np.sum(weights), rel=1e-6)
    assert abs(expected - losses.mean()) > 1e-3  # the weighting did change the loss


def test_dict_weights_by_index_name_or_json_key():
    names = ["cats", "dogs"]
    assert kt.resolve_class_weight({"dogs": 10}, class_names=names) == {1: 10.0}
    assert kt.resolve_class_weight({"1": 3, 0: 0.5}, num_classes=2) == {1: 3.0, 0: 0.5}
    parsed = imbalance.parse_class_weight('{"dogs": 10}')
    assert kt.resolve_class_weight(parsed, class_names=names) == {1: 10.0}
    assert imbalance.parse_class_weight("none") is None
    assert imbalance.parse_class_weight("balanced") == "balanced"
    with pytest.raises(ValueError, match="JSON object"):
        imbalance.parse_class_weight("[1, 2]")


@pytest.mark.parametrize(
    "class_weight, message",
    [
        ({5: 2.0}, r"class 5, which does not exist.*3 classes.*indices 0\.\.2"),
        ({"wolves": 2.0}, r"class 'wolves', which does not exist.*class names"),
        ({0: -1.0}, r"finite and >= 0"),
        ({0: float("nan")}, r"finite and >= 0"),
        ({0: 0, 1: 0, 2: 0}, r"every class weight 0"),
        ("uniform", r"use 'balanced', None, or a dict"),
    ],
)
def test_bad_class_weights_fail_before_training(class_weight, message):
    model = make_tiny_classifier(3, class_names=["a", "b", "c"])
    before = [w.copy() for w in model.get_weights()]
    data = tf.data.Dataset.from_tensor_slices((tiny_images(6), LABELS[:6] % 3)).batch(6)
    with pytest.raises(ValueError, match=message):
        kt.fit_two_phase(model, data, head_epochs=1, fine_tune_epochs=1, class_weight=class_weight)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_balanced_with_an_empty_class_names_it():
    model = make_tiny_classifier(3, class_names=["a", "b", "c"])
    data = tf.data.Dataset.from_tensor_slices((tiny_images(4), [0, 0, 2, 2])).batch(4)
    with pytest.raises(ValueError, match=r"class\(es\) 1 \('b'\) have none.*explicit dict"):
        kt.fit_two_phase(model, data, head_epochs=1, fine_tune_epochs=0, class_weight="balanced")


def test_multilabel_heads_refuse_class_weights():
    model = make_tiny_classifier(3, head={"task": "multilabel", "dropout": 0.0})
    with pytest.raises(ValueError, match="multilabel head"):
        kt.features.check_class_weight(model, "balanced")


def test_imbalance_warning_and_counts_in_the_loader(image_folder):
    folder = image_folder({"common": 7, "rare": 2}, size=(32, 32))
    data = kt.image_folder_dataset(folder, 32, batch_size=4, validation_split=0.0)
    assert data.class_counts == [7, 2]
    assert any("3.5x" in w and "'rare'" in w for w in data.warnings)
    assert kt.class_counts(data).tolist() == [7, 2]  # from the listing, no decoding
    assert imbalance.imbalance_warning([30, 10]) is None  # exactly 3x: no warning


def test_report_has_balanced_accuracy_and_per_class_recall():
    matrix = np.array([[90, 10], [5, 5]])
    report = reports.classification_report(matrix, ["cats", "dogs"])
    assert report["accuracy"] == pytest.approx(95 / 110)
    assert report["balanced_accuracy"] == pytest.approx((0.9 + 0.5) / 2)
    assert report["recall_per_class"] == pytest.approx({"cats": 0.9, "dogs": 0.5})
    assert "balanced accuracy 0.7000" in reports.format_report(report)


def test_cached_phase_one_weights_carry_into_fine_tuning():
    images = tiny_images(12)
    data = tf.data.Dataset.from_tensor_slices((images, LABELS)).batch(12)
    model = make_tiny_classifier(3)
    model.head.output_dense.bias.assign([1.0, -0.5, 0.2])
    weights = np.array([12 / 18, 12 / 6, 12 / 12])[LABELS]
    history = kt.fit_two_phase_cached(
        model,
        data,
        head_epochs=1,
        fine_tune_epochs=1,
        head_batch_size=12,
        fine_tune_lr=1e-12,  # phase 2 leaves the weights as they are: its loss is checkable
        class_weight="balanced",
        verbose=0,
    ).history
    losses = per_example_cross_entropy(model, images, LABELS)
    assert history["loss"][1] == pytest.approx(np.sum(weights * losses) / 12, rel=1e-5)
