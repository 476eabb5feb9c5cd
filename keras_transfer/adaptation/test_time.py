"""Adaptation of a trained classifier to unlabeled target images, without the source data:
AdaBN and TENT.

- `adapt_batchnorm` (AdaBN; Li et al., "Revisiting Batch Normalization For Practical Domain
  Adaptation", 2016, arXiv:1603.04779): every BatchNormalization layer's moving statistics
  are recomputed on the target images; no weight changes.
- `fit_tent` (TENT; Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
  Minimization", ICLR 2021, arXiv:2006.10726): plain `model.fit` on the target images with
  the mean prediction entropy as the loss (`PredictionEntropy`), training only the
  BatchNormalization scales and offsets. BatchNormalization normalises by the target
  batches' statistics while it trains, and its moving statistics follow them, so the
  adapted model predicts with target statistics too.

Both need a backbone with BatchNormalization (the `keras.applications` CNNs); for one
without, they raise a `ValueError` saying so. Neither reads a label: a target dataset of
`(images, labels)` has its labels dropped.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.adaptation.losses import PredictionEntropy

__all__ = ["adapt_batchnorm", "batchnorm_layers", "fit_tent"]


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer nested in `model`; a `ValueError` if there is none."""
    layers = [
        layer
        for layer in _keras_compat.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        raise ValueError(
            f"{model.name} has no BatchNormalization layer: AdaBN and TENT adapt those. Use "
            "fit_domain_adaptation (DANN, CORAL, MMD) with labelled source images instead."
        )
    return layers


def adapt_batchnorm(model: keras.Model, target: Any, steps: int | None = None) -> int:
    """AdaBN: recomputes every BatchNormalization layer's moving mean and variance on the
    target images (frozen ones included), with the layers below normalising by the target
    batches' statistics. Weights and the layers' `trainable` flags are unchanged.

    Args:
        model: a trained classifier.
        target: unlabeled target batches (images, or `(images, labels)`: labels unused).
        steps: batches to use; default all of `target` (it must be finite).

    Returns:
        The number of batches used.

    Example:
    ```python
    adapt_batchnorm(model, target_images)
    model.predict(target_images)
    ```
    """
    from keras_transfer.training.callbacks import batchnorm

    layers = batchnorm_layers(model)
    flags = [layer.trainable for layer in layers]
    try:
        # Recalibration (precise BN) covers the trainable layers: make them all trainable.
        for layer in layers:
            layer.trainable = True
        return batchnorm.recalibrate_batchnorm(model, target, steps=steps)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag


def fit_tent(
    model: keras.Model,
    target: Any,
    epochs: int = 1,
    learning_rate: float = 1e-3,
    from_logits: bool | None = None,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """TENT: minimises the prediction entropy on the target images, training only the
    BatchNormalization scales and offsets, with plain `model.fit` (Adam).

    The model's other layers, its `trainable` flags and its compiled loss and metrics are
    restored afterwards; its BatchNormalization weights and statistics stay adapted.

    Args:
        model: a trained classifier (softmax or logits output).
        target: unlabeled target batches (images, or `(images, labels)`: labels unused),
            a `tf.data.Dataset`.
        epochs: passes over `target` (the paper adapts online, one pass).
        learning_rate: Adam's rate (the paper's 1e-3 for Adam).
        from_logits: whether the outputs are logits; default the head's `logits` setting,
            else probabilities.
        **fit_kwargs: more `fit` arguments (`verbose`, `callbacks`, `steps_per_epoch`).

    Example:
    ```python
    fit_tent(model, target_images, epochs=1)
    ```
    """
    if from_logits is None:
        from_logits = bool(getattr(getattr(model, "head", None), "logits", False))
    norms = batchnorm_layers(model)
    layers = _keras_compat.flatten_layers(model, include_self=True)
    flags = [layer.trainable for layer in layers]
    compiled = model.get_compile_config() if model.compiled else None
    try:
        for layer in layers:  # outermost first: a container's flag also sets its layers'
            # Containers stay trainable so that the BatchNormalization weights inside count.
            container = bool(_keras_compat.flatten_layers(layer, include_self=False))
            layer.trainable = container or any(layer is norm for norm in norms)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=PredictionEntropy(from_logits=from_logits),
        )
        return model.fit(_images_only(target), epochs=epochs, **fit_kwargs)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag
        if compiled is not None:
            model.compile_from_config(compiled)


def _images_only(target: Any) -> Any:
    """`(images, zeros)` batches: `fit` wants targets; `PredictionEntropy` ignores them."""
    import tensorflow as tf

    def pair(*batch):
        images = batch[0]  # batches of images, or of (images, labels): labels dropped
        return images, tf.zeros(tf.shape(images)[:1])

    return target.map(pair)
