"""The from-scratch baseline and the negative-transfer check.

Whether transfer helps at all is an empirical question: `fit_scratch_baseline` trains the
same architecture from random weights with the same budget, and
`check_negative_transfer` warns when the transferred model is not better.

A from-scratch baseline on a small dataset has few optimiser steps (244 images at batch 32
for 15 epochs: 120 steps), and its weights change fast. BatchNormalization's moving
statistics, which the inference-mode model (validation, `evaluate`, `predict`) normalises
with, are an exponential average that lags behind them. With Keras' default momentum 0.99
they still hold 0.99**120 = 30% of their initial values (mean 0, variance 1) after 120
steps; even at 0.9 the depthwise layers of a MobileNet that is still learning fast keep
about twice their current variance, and the error compounds over ~27 layers until the
features vanish and the model predicts one class while its training accuracy rises.
Two fixes, both on by default in `fit_scratch_baseline`:

- `scratch_model(bn_momentum=0.9)` (PyTorch's default; a window of ~10 steps instead of
  ~100). Momentum is a training setting: the layers and their shapes are unchanged.
- `BatchNormRecalibration` ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
  BatchNorm"): before each validation and at the end of training, the moving statistics
  are recomputed as the average of batch statistics over training batches with the
  current, fixed weights. It runs forward passes only (no weight changes), so the
  training budget stays the same.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones.hub import HubBackbone
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.training import callbacks as callbacks_lib
from keras_transfer.utils import fit_arguments

__all__ = [
    "DEFAULT_SCRATCH_BN_MOMENTUM",
    "NegativeTransferWarning",
    "check_negative_transfer",
    "fit_scratch_baseline",
    "scratch_model",
]

logger = logging.getLogger("keras_transfer")

DEFAULT_SCRATCH_BN_MOMENTUM = 0.9


def scratch_model(
    model: TransferClassifier, *, bn_momentum: float | None = DEFAULT_SCRATCH_BN_MOMENTUM
) -> TransferClassifier:
    """The same architecture as `model` with freshly initialised weights, all trainable
    (BatchNormalization included): the baseline transfer must beat.

    Args:
        model: a `TransferClassifier` (`create_classifier`); it is not modified.
        bn_momentum: momentum of the moving mean and variance of every
            BatchNormalization layer (backbone and head). The default 0.9 lets the
            moving statistics follow the fast-changing weights of a short from-scratch
            run, so that inference-mode predictions (validation, `evaluate`) match what
            training learned; Keras' default 0.99 needs many hundreds of steps (see the
            module docstring). `None` keeps each layer's own momentum.

    Example:
    ```python
    baseline = scratch_model(model)
    baseline.compile()
    ```
    """
    if not isinstance(model, TransferClassifier):
        raise TypeError(
            f"scratch_model needs a TransferClassifier (create_classifier), got "
            f"{type(model).__name__}. For another model use keras.models.clone_model."
        )
    # Rebuilding from the config creates every layer anew: new initial weights, nothing copied.
    if bn_momentum is not None and not (
        isinstance(bn_momentum, int | float)
        and not isinstance(bn_momentum, bool)
        and 0.0 <= bn_momentum < 1.0
    ):
        raise ValueError(
            f"bn_momentum must be a number in [0, 1) or None, got {bn_momentum!r} (0.9 suits "
            "runs of a few hundred steps; None keeps the layers' own momentum)."
        )
    baseline = TransferClassifier.from_config(model.get_config())
    # A HubBackbone rebuilt from its config loads the pretrained SavedModel again.
    for layer in _keras_compat.flatten_layers(baseline, include_self=False):
        if isinstance(layer, HubBackbone):
            layer.reinitialize()
    baseline.trainable = True
    for layer in _keras_compat.flatten_layers(baseline, include_self=False):
        layer.trainable = True
        # Read at trace time by BatchNormalization.call, and saved by its get_config.
        if bn_momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(bn_momentum)
    return baseline


def fit_scratch_baseline(
    model: TransferClassifier,
    train_data: Any,
    validation_data: Any = None,
    *,
    epochs: int,
    learning_rate: float = 1e-3,
    optimizer: str | type = "adam",
    bn_momentum: float | None = DEFAULT_SCRATCH_BN_MOMENTUM,
    recalibrate_bn: bool = True,
    recalibration_steps: int | None = None,
    **fit_kwargs: Any,
) -> tuple[TransferClassifier, keras.callbacks.History]:
    """Trains `scratch_model(model)` (same architecture, random weights) for `epochs`.

    Give it the transferred model's budget (its total epochs on the same data) to ask
    whether transfer helped; then `check_negative_transfer`. Every layer trains,
    BatchNormalization included, at `learning_rate` (1e-3 with Adam: random weights need
    larger steps than fine-tuning's 1e-4 to 1e-5); `bn_momentum` is `scratch_model`'s.

    With `recalibrate_bn` (default), a `BatchNormRecalibration(train_data,
    recalibration_steps)` callback recomputes the BatchNormalization statistics before
    each validation and at the end: forward passes only, one pass over `train_data` each
    time unless `recalibration_steps` limits it (set it for a large or infinite dataset).

    Returns:
        The trained baseline and its `History`.
    """
    baseline = scratch_model(model, bn_momentum=bn_momentum)
    baseline.compile(optimizer=optimizers.optimizer_factory(optimizer)(learning_rate))
    if recalibrate_bn:
        fit_kwargs["callbacks"] = [
            *(fit_kwargs.get("callbacks") or []),
            callbacks_lib.BatchNormRecalibration(train_data, recalibration_steps),
        ]
    fit_arguments.no_fit_shuffle(train_data, fit_kwargs)
    history = baseline.fit(train_data, validation_data=validation_data, epochs=epochs, **fit_kwargs)
    return baseline, history


class NegativeTransferWarning(UserWarning):
    """The pretrained model did no better than the same architecture trained from scratch."""


def check_negative_transfer(
    transfer_score: float,
    scratch_score: float,
    *,
    metric: str = "val_accuracy",
    higher_is_better: bool = True,
    margin: float = 0.0,
) -> bool:
    """Warns (`NegativeTransferWarning`) when transfer is not better than from scratch.

    Args:
        transfer_score: the transferred model's validation score.
        scratch_score: the from-scratch baseline's score on the same data and budget.
        metric: the score's name, for the message.
        higher_is_better: `False` for losses.
        margin: transfer must win by more than this to count as better.

    Returns:
        `True` if negative transfer was detected (and warned about).
    """
    gain = transfer_score - scratch_score if higher_is_better else scratch_score - transfer_score
    if gain > margin:
        logger.info(
            "Transfer helped: %s %.4f vs %.4f from scratch.", metric, transfer_score, scratch_score
        )
        return False
    warnings.warn(
        f"Negative transfer: the pretrained model's {metric} ({transfer_score:.4f}) is not "
        f"better than the same architecture trained from scratch ({scratch_score:.4f}). The "
        "pretraining domain may be too far from this data: try features from a lower block "
        "(create_classifier(feature_block=...)), fine-tuning all blocks with train_bn=True, "
        "or another backbone.",
        NegativeTransferWarning,
        stacklevel=2,
    )
    return True
