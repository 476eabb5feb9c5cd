"""BatchNormalization statistics of the current weights ("precise BN"): recomputed once
(`recalibrate_batchnorm`) or before each validation inside `fit` (`BatchNormRecalibration`).
"""

from __future__ import annotations

from typing import Any

import keras

from keras_transfer import _keras_compat

__all__ = ["BatchNormRecalibration", "recalibrate_batchnorm"]


def recalibrate_batchnorm(model: keras.Model, data: Any, steps: int | None = None) -> int:
    """Recomputes the moving statistics of `model`'s trainable BatchNormalization layers
    from `data` with the current weights ("precise BN").

    Each layer's moving mean and variance become the averages of its batch means and
    variances over `steps` batches of `data`, with the layers below it normalising by
    their batch statistics, exactly as in training. Weights do not change. Frozen
    BatchNormalization layers (pretrained statistics) are left alone.

    Args:
        model: a Keras model.
        data: batches of `(images, labels)` or of images (a `tf.data.Dataset` or any
            iterable), e.g. the training data.
        steps: batches to use; default all of `data` (it must be finite).

    Returns:
        The number of batches used (0 when the model has no trainable BatchNormalization).

    Example:
    ```python
    recalibrate_batchnorm(model, data.train, steps=50)
    model.evaluate(data.validation)
    ```
    """
    layers = [
        layer
        for layer in _keras_compat.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}.")
    momenta = [layer.momentum for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    used = 0
    try:
        # Momentum 0: after a training-mode forward pass the moving statistics are exactly
        # that batch's statistics. Eager calls read the momentum set here.
        for layer in layers:
            layer.momentum = 0.0
        for batch in data:
            if steps is not None and used >= steps:
                break
            images = batch[0] if isinstance(batch, tuple | list) else batch
            model(images, training=True)
            for total, layer in zip(sums, layers):
                total[0] += layer.moving_mean.numpy()
                total[1] += layer.moving_variance.numpy()
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not used:
        raise ValueError("recalibrate_batchnorm got no batches: `data` is empty.")
    for (mean, variance), layer in zip(sums, layers):
        layer.moving_mean.assign(mean / used)
        layer.moving_variance.assign(variance / used)
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Recalibrates BatchNormalization statistics (`recalibrate_batchnorm`) before each
    validation inside `fit` and at the end of training, so that the validation metrics and
    the returned model use statistics of the current weights.

    For models whose BatchNormalization layers train from scratch on few steps; a
    pretrained model with frozen BatchNormalization does not need it.

    Args:
        data: training batches to compute the statistics on.
        steps: batches per recalibration; default all of `data`.

    Example:
    ```python
    model.fit(train, validation_data=val, epochs=15,
              callbacks=[BatchNormRecalibration(train)])
    ```
    """

    def __init__(self, data: Any, steps: int | None = None):
        super().__init__()
        self.data = data
        self.steps = steps
        self._calibrated = False

    def on_train_batch_end(self, batch, logs=None):
        self._calibrated = False

    def on_test_begin(self, logs=None):
        self._recalibrate_if_stale()

    def on_train_end(self, logs=None):
        # After the last validation the statistics already match the final weights.
        self._recalibrate_if_stale()

    def _recalibrate_if_stale(self):
        if not self._calibrated:
            recalibrate_batchnorm(self.model, self.data, self.steps)
            self._calibrated = True
