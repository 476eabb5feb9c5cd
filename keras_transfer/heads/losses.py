"""Losses that heads compile with, and the soft-label loss and accuracy of the recipes.

`BinaryLabelCrossentropy` is the binary cross-entropy of `task="binary"` and `"multilabel"`
heads: it refuses labels other than 0 and 1 instead of training towards them.
`SoftLabelCrossentropy` and `SoftLabelAccuracy` take class indices (validation, test) and
soft label vectors (MixUp / CutMix training batches) alike, with label smoothing.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.utils import backend

__all__ = [
    "BINARY_LABELS_MESSAGE",
    "BinaryLabelCrossentropy",
    "SoftLabelAccuracy",
    "SoftLabelCrossentropy",
]

BINARY_LABELS_MESSAGE = (
    "Labels of a binary or multilabel (sigmoid) head must be 0 or 1. For class indices "
    "0..N-1 use a multiclass head (task=multiclass); for soft labels in [0, 1] compile with "
    "an explicit loss=keras.losses.BinaryCrossentropy(). First labels outside {0, 1}:"
)


@keras.saving.register_keras_serializable(package="keras_transfer")
class BinaryLabelCrossentropy(keras.losses.BinaryCrossentropy):
    """`keras.losses.BinaryCrossentropy` that refuses labels other than 0 and 1.

    Binary cross-entropy takes any label silently: a 0.5 trains towards 0.5, a 3 (a class
    index given to a sigmoid head) pushes the logit without bound. This loss checks every
    batch and fails at the first bad one with `tf.errors.InvalidArgumentError` saying what
    to do, as sparse categorical cross-entropy does for out-of-range class indices. The
    check is one comparison per label; under XLA (`jit_compile=True`) TensorFlow drops
    assertions. Heads with `task="binary"` or `"multilabel"` use it by default; pass
    `keras.losses.BinaryCrossentropy()` for soft labels.

    On JAX, which has no in-graph assertion, the package checks the labels in the data
    before they reach a step (`heads.check_labels`: `TransferClassifier.fit` and
    `.evaluate`, `fit_two_phase`, the feature cache), with the same message. For the
    paths that check cannot see, this loss keeps a host callback: a model that is not a
    `TransferClassifier` compiled with this loss (e.g. a `keras.Sequential` ending in a
    `ClassificationHead`), data from a Python generator or a `keras.utils.PyDataset`, and
    `train_on_batch` or a custom training loop. There the step fails with a `RuntimeError`
    (`JaxRuntimeError`) carrying the message.

    Args:
        **kwargs: `keras.losses.BinaryCrossentropy` arguments (`from_logits`,
            `label_smoothing`, `axis`, `reduction`, `name`, `dtype`).

    Example:

    ```python
    model.compile(optimizer="adam", loss=BinaryLabelCrossentropy(from_logits=True))
    model.fit(images, np.array([0, 1, 0.5]))  # InvalidArgumentError: ... must be 0 or 1
    ```
    """

    def call(self, y_true, y_pred):
        if backend.backend() == "jax":
            # Also on a TransferClassifier, whose labels `check_labels` has already passed:
            # the loss cannot tell which data feeds it (see the class docstring).
            import jax

            jax.debug.callback(_check_binary_labels, y_true)
        if not backend.is_tensorflow():
            return super().call(y_true, y_pred)
        labels = tf.cast(y_true, tf.float32)
        valid = tf.logical_or(tf.equal(labels, 0.0), tf.equal(labels, 1.0))
        check = tf.debugging.Assert(
            tf.reduce_all(valid),
            [BINARY_LABELS_MESSAGE, tf.boolean_mask(labels, tf.logical_not(valid))[:5]],
        )
        with tf.control_dependencies([check]):
            y_true = tf.identity(y_true)
        return super().call(y_true, y_pred)


def _check_binary_labels(labels) -> None:
    """The JAX check: runs on the host with the batch's labels as a NumPy array."""
    labels = np.asarray(labels, dtype="float32")
    bad = labels[(labels != 0.0) & (labels != 1.0)]
    if bad.size:
        raise ValueError(f"{BINARY_LABELS_MESSAGE} {bad[:5]}")


def _label_vectors(y_true, y_pred):
    """Soft label vectors for `y_true`: class indices (shape `(batch,)` or `(batch, 1)`) are
    one-hot encoded; vectors as wide as `y_pred`'s class axis pass through."""
    num_classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == num_classes != 1:
        return keras.ops.cast(y_true, y_pred.dtype)
    indices = keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32")
    return keras.ops.one_hot(indices, num_classes, dtype=y_pred.dtype)


@keras.saving.register_keras_serializable(package="keras_transfer")
class SoftLabelCrossentropy(keras.losses.CategoricalCrossentropy):
    """Categorical cross-entropy on class indices or soft label vectors, with label smoothing.

    Keras' `SparseCategoricalCrossentropy` takes indices but no label smoothing and no mixed
    labels; `CategoricalCrossentropy` takes only vectors. MixUp and CutMix (`augment=
    "mixup"`, `"cutmix"`) give the training batches soft vectors while validation and test
    keep class indices, so one compiled loss must take both: indices are one-hot encoded,
    then `label_smoothing` (Szegedy et al. 2016, arXiv:1512.00567) moves that much of each
    label's mass to the uniform distribution.

    Args:
        label_smoothing: in [0, 1); 0.1 is the usual value.
        **kwargs: `keras.losses.CategoricalCrossentropy` arguments (`from_logits`, `axis`,
            `reduction`, `name`, `dtype`).

    Example:

    ```python
    loss = SoftLabelCrossentropy(label_smoothing=0.1)
    float(loss(np.array([1]), np.array([[0.5, 0.5]])))  # -> 0.693: ln 2
    ```
    """

    def __init__(self, label_smoothing: float = 0.0, **kwargs):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        super().__init__(label_smoothing=label_smoothing, **kwargs)

    def call(self, y_true, y_pred):
        return super().call(_label_vectors(y_true, y_pred), y_pred)


@keras.saving.register_keras_serializable(package="keras_transfer")
class SoftLabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Accuracy on class indices or soft label vectors (the most likely class of each).

    Validation and test batches keep class indices while MixUp/CutMix training batches
    carry soft vectors; compiled with `SoftLabelCrossentropy`, this metric reads both.

    Args:
        name, dtype: as for any Keras metric (default name `"accuracy"`).

    Example:

    ```python
    metric = SoftLabelAccuracy()
    metric.update_state(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[0.9, 0.1], [0.6, 0.4]]))
    float(metric.result())  # -> 0.5
    ```
    """

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(_soft_label_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _soft_label_accuracy(y_true, y_pred):
    labels = keras.ops.argmax(_label_vectors(y_true, y_pred), axis=-1)
    return keras.ops.cast(keras.ops.equal(labels, keras.ops.argmax(y_pred, axis=-1)), "float32")
