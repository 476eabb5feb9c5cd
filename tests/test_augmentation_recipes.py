"""The training recipes of the data pipeline and the loss: RandAugment, AugMix, MixUp,
CutMix (soft training labels) and label smoothing, through the API and the command."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_transfer as kt
from keras_transfer.apps import image_classifier as image_classifier_lib
from keras_transfer.apps import image_training
from keras_transfer.apps.config import ConfigError


def _batch(n=8, num_classes=3):
    images = np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype("float32")
    return tf.constant(images), tf.constant(np.arange(n) % num_classes, tf.int32)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "mixup,cutmix"])
def test_label_mixing_gives_soft_labels_that_sum_to_one(name):
    images, labels = _batch()
    mix = kt.data.label_mixing(name, num_classes=3, seed=1)

    mixed_images, soft = mix(images, labels)

    assert mixed_images.shape == images.shape
    assert soft.shape == (8, 3) and keras.backend.standardize_dtype(soft.dtype) == "float32"
    soft = keras.ops.convert_to_numpy(soft)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    # Some labels are mixtures: neither 0 nor 1 (MixUp's weight or CutMix's box share).
    assert np.any((soft > 0.01) & (soft < 0.99))
    assert kt.data.uses_label_mixing(f"flip,{name}")
    assert kt.data.label_mixing("flip,crop", num_classes=3) is None


def test_label_mixing_needs_the_number_of_classes():
    with pytest.raises(ValueError, match="number of classes"):
        kt.data.label_mixing("mixup", num_classes=None)


@pytest.mark.parametrize("name", ["randaugment", "augmix"])
def test_randaugment_and_augmix_change_images_in_the_0_255_range(name):
    images, _ = _batch()
    layer = kt.data.augmentation_pipeline(name, seed=3)

    augmented = keras.ops.convert_to_numpy(layer(images, training=True))

    assert augmented.shape == images.shape
    assert augmented.min() >= 0.0 and augmented.max() <= 255.0 + 1e-3
    assert not np.allclose(augmented, np.array(images))


def test_folder_loader_mixes_training_labels_only(image_folder):
    root = image_folder({"a": 6, "b": 6, "c": 6})
    data = kt.image_folder_dataset(
        root, image_size=32, batch_size=6, validation_split=0.34, augment="flip,mixup", seed=0
    )

    _, train_labels = next(iter(data.train))
    _, validation_labels = next(iter(data.validation))
    _, unaugmented_labels = next(iter(data.train_unaugmented))

    assert train_labels.shape[1:] == (3,) and train_labels.dtype == tf.float32
    assert validation_labels.shape.rank == 1 and validation_labels.dtype == tf.int32
    assert unaugmented_labels.shape.rank == 1


def test_soft_label_crossentropy_matches_keras_on_indices_and_one_hots():
    predicted = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    indices = tf.constant([0, 2])
    one_hot = tf.one_hot(indices, 3)

    plain = kt.SoftLabelCrossentropy()(indices, predicted)
    sparse = keras.losses.SparseCategoricalCrossentropy()(indices, predicted)
    smoothed = kt.SoftLabelCrossentropy(label_smoothing=0.1)(indices[:, None], predicted)
    keras_smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(one_hot, predicted)

    assert float(plain) == pytest.approx(float(sparse), rel=1e-6)
    assert float(smoothed) == pytest.approx(float(keras_smoothed), rel=1e-6)
    assert float(smoothed) > float(plain)  # smoothing penalises the confident right answers
    soft = tf.constant([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected = -(0.5 * np.log(0.7) + 0.5 * np.log(0.2) + np.log(0.6)) / 2
    assert float(kt.SoftLabelCrossentropy()(soft, predicted)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        kt.SoftLabelCrossentropy(label_smoothing=1.0)


def test_soft_label_accuracy_reads_indices_and_soft_labels():
    predicted = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], "float32")
    metric = kt.SoftLabelAccuracy()
    metric.update_state(np.array([0, 1, 1]), predicted)
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    metric.update_state(np.array([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]], "float32"), predicted)
    assert float(metric.result()) == pytest.approx(2 / 3)


def test_command_trains_with_mixup_and_label_smoothing(image_folder, tmp_path, tiny_run_config):
    root = image_folder({"a": 8, "b": 8, "c": 8})
    model_dir = tmp_path / "out"
    config = tiny_run_config(root, model_dir, augment="flip,mixup,cutmix", label_smoothing=0.1)

    results = image_classifier_lib.run(config)

    # Both phases trained on soft labels (Keras' sparse cross-entropy would refuse them).
    assert len(results["history"]["accuracy"]) == 2
    arguments = image_training.loss_arguments(config)
    assert isinstance(arguments["loss"], kt.SoftLabelCrossentropy)
    assert arguments["loss"].label_smoothing == pytest.approx(0.1)
    assert isinstance(arguments["metrics"][0], kt.SoftLabelAccuracy)
    assert image_training.loss_arguments(tiny_run_config(root, model_dir)) == {}
    settings = json.loads((model_dir / "config.json").read_text())
    assert settings["label_smoothing"] == 0.1 and "mixup" in settings["augment"]


def test_config_refuses_label_smoothing_outside_0_1(tmp_path, tiny_run_config):
    with pytest.raises(ConfigError, match="label_smoothing must lie in"):
        tiny_run_config(tmp_path, tmp_path / "out", label_smoothing=1.0)
