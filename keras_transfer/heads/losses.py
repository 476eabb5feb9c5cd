"""Losses that heads compile with by default.

`BinaryLabelCrossentropy` is the binary cross-entropy of `task="binary"` and `"multilabel"`
heads: it refuses labels other than 0 and 1 instead of training towards them.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["BinaryLabelCrossentropy"]

_BINARY_LABELS_MESSAGE = (
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
    assertions, so there it checks nothing. Heads with `task="binary"` or `"multilabel"`
    use it by default; pass `keras.losses.BinaryCrossentropy()` for soft labels.

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
        labels = tf.cast(y_true, tf.float32)
        valid = tf.logical_or(tf.equal(labels, 0.0), tf.equal(labels, 1.0))
        check = tf.debugging.Assert(
            tf.reduce_all(valid),
            [_BINARY_LABELS_MESSAGE, tf.boolean_mask(labels, tf.logical_not(valid))[:5]],
        )
        with tf.control_dependencies([check]):
            y_true = tf.identity(y_true)
        return super().call(y_true, y_pred)
