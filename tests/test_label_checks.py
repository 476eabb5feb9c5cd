"""Labels a head cannot take fail on every backend, naming the label: on TensorFlow in the
compiled step (the sparse cross-entropy kernel, `BinaryLabelCrossentropy`'s assertion), on
JAX (whose one-hot turns an index out of range into a row of zeros, silently) in the data,
before the step (`heads.check_labels`, which `TransferClassifier.fit` and `.evaluate`,
`fit_two_phase` and the feature cache call)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_tiny_classifier
from conftest import tiny_images

import keras_transfer as kt
from keras_transfer import heads

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
OUT_OF_RANGE = r"label value of 5 which is outside the valid range of \[0, 2\)"
NOT_ZERO_ONE = r"(?s)must be 0 or 1.*task=multiclass.*\[0\.5"


def small_classifier(head, jit_compile="auto"):
    """A `TransferClassifier` on a one-layer backbone: fast to compile on any backend."""
    backbone = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)])
    model = kt.TransferClassifier(backbone, head)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    return model


def x(n=8):
    return np.random.default_rng(0).uniform(0, 255, (n, 4, 4, 3)).astype("float32")


def weights_of(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


def assert_untouched(model, before):
    assert int(model.optimizer.iterations) == 0
    for old, now in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(old, now)


# --- JAX: the data is checked before any step --------------------------------------------


@pytest.mark.jax_only
def test_plain_fit_names_a_class_index_out_of_range_before_training():
    model = small_classifier(kt.ClassificationHead(2))
    before = weights_of(model)
    bad = np.array([0, 1, 5, 1] * 2, "int32")
    good = np.array([0, 1] * 4, "int32")
    with pytest.raises(ValueError, match=OUT_OF_RANGE + r": class indices of a 2-class head"):
        model.fit(x(), bad, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=OUT_OF_RANGE):
        model.fit(x(), good, validation_data=(x(), bad), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=OUT_OF_RANGE):
        model.fit(x(), good, 4, 1, 0, None, 0.0, (x(), bad))  # validation_data by position
    with pytest.raises(ValueError, match=r"label value of -1 .*\[0, 2\)"):
        model.evaluate(x(), -good, verbose=0)
    assert_untouched(model, before)


@pytest.mark.jax_only
def test_plain_fit_on_a_dataset_fails_when_a_bad_batch_is_read():
    model = small_classifier(kt.ClassificationHead(2))
    labels = np.array([0, 1] * 4 + [0, 5, 1, 0] + [1, 0] * 2, "int64")
    data = tf.data.Dataset.from_tensor_slices((x(16), labels)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=OUT_OF_RANGE):
        model.fit(data, epochs=1, verbose=0)


@pytest.mark.jax_only
def test_sigmoid_head_labels_must_be_0_or_1_unless_the_loss_takes_soft_labels():
    model = small_classifier(kt.ClassificationHead(1, task="binary"))
    before = weights_of(model)
    soft = np.array([0, 1, 0.5, 1] * 2, "float32")
    with pytest.raises(ValueError, match=NOT_ZERO_ONE):
        model.fit(x(), soft, epochs=1, verbose=0)
    data = tf.data.Dataset.from_tensor_slices((x(), soft)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_ZERO_ONE):
        model.fit(data, epochs=1, verbose=0)
    assert_untouched(model, before)
    # Soft labels with a loss chosen for them train.
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy())
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(model.optimizer.iterations) == 1


@pytest.mark.jax_only
def test_multi_task_labels_are_checked_head_by_head():
    head = kt.MultiTaskHead(
        {"species": {"num_classes": 2}, "colour": {"num_classes": 3, "task": "multilabel"}},
        name="head",
    )
    model = small_classifier(head)
    species = np.array([0, 1] * 4, "int32")
    colour = np.tile(np.array([[0, 1, 1]], "float32"), (8, 1))
    with pytest.raises(
        ValueError, match="^Head species: Received a " + OUT_OF_RANGE.replace("5", "2")
    ):
        model.fit(x(), {"species": species * 2, "colour": colour}, epochs=1, verbose=0)
    data = tf.data.Dataset.from_tensor_slices((x(), {"species": species, "colour": colour * 2}))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Head colour: .*must be 0 or 1"):
        model.fit(data.batch(8), epochs=1, verbose=0)
    history = model.fit(x(), {"species": species, "colour": colour}, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.jax_only
def test_what_the_check_leaves_alone():
    model = small_classifier(kt.ClassificationHead(3))
    one_hot = np.eye(3, dtype="int32")[[0, 1, 2, 0]]
    assert heads.check_labels(model, x(4), one_hot) is not None  # no error: vectors
    soft = np.full((4, 3), 1 / 3, "float32")
    mixed = tf.data.Dataset.from_tensor_slices((x(4), soft)).batch(2)
    assert heads.check_labels(model, mixed) is mixed  # soft label vectors (MixUp, CutMix)
    unlabelled = tf.data.Dataset.from_tensor_slices(x(4))
    assert heads.check_labels(model, unlabelled) is unlabelled
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    data = tf.data.Dataset.from_tensor_slices((np.ones((4, 2)), np.full(4, 7)))
    assert heads.check_labels(plain, data) is data  # no keras_transfer head


@pytest.mark.jax_only
@pytest.mark.parametrize("cached", [False, True], ids=["images", "cached_features"])
def test_fit_two_phase_checks_binary_labels_in_the_pipeline(cached):
    model = make_tiny_classifier(1, head={"task": "binary"})
    labels = np.array([0, 1, 3, 1], "int32")
    train = tf.data.Dataset.from_tensor_slices((tiny_images(4), labels)).batch(4)
    fit = kt.fit_two_phase_cached if cached else kt.fit_two_phase
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)must be 0 or 1.*\[3\]"):
        fit(model, train, head_epochs=1, fine_tune_epochs=0, verbose=0)


# --- every backend ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_plain_fit_refuses_bad_labels_on_every_backend(task):
    head = kt.ClassificationHead(2 if task == "multiclass" else 1, task=task)
    # Under XLA TensorFlow drops assertions (and its kernel's range check): not compiled here.
    model = small_classifier(head, jit_compile=False if ON_TENSORFLOW else "auto")
    labels = np.array([0, 1, 5, 1] * 2 if task == "multiclass" else [0, 1, 0.5, 1] * 2)
    # TensorFlow: its kernel or the loss's assertion, in the step; JAX: before the step.
    error = tf.errors.InvalidArgumentError if ON_TENSORFLOW else ValueError
    with pytest.raises(error, match=OUT_OF_RANGE if task == "multiclass" else NOT_ZERO_ONE):
        model.fit(x(), labels.astype("float32" if task == "binary" else "int32"), verbose=0)


@pytest.mark.tensorflow_only
def test_on_tensorflow_the_data_passes_unchanged():
    # The compiled step checks there; no extra pipeline stage.
    model = small_classifier(kt.ClassificationHead(2))
    data = tf.data.Dataset.from_tensor_slices((x(4), np.full(4, 7))).batch(2)
    assert heads.check_labels(model, data) is data
    assert heads.check_labels(model, x(4), np.full(4, 7)) is not None  # no error here
