"""Training that fails loudly: `NonFiniteGuard` stops on a NaN/inf loss or metric, puts back
the last finite weights and raises `NonFiniteLossError`; `EmptyEpochGuard` raises when an
epoch trained (or validated) on no batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

__all__ = ["EmptyEpochGuard", "NonFiniteGuard", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or metric."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training on a NaN/inf loss, puts back the last finite weights, and raises.

    Keras' `TerminateOnNaN` only sets `stop_training`: `fit` then returns normally with
    NaN weights, and `BackupAndRestore.on_train_end` deletes the last good backup. This
    callback instead checks the epoch's logs (the training loss is a running mean, so one
    non-finite batch makes it non-finite for the rest of the epoch), restores the weights
    the model had when the epoch began, and raises `NonFiniteLossError`. Raising keeps
    `fit` from running `on_train_end`, so a `BackupAndRestore` listed after this callback
    keeps its last good checkpoint and never saves the diverged epoch.

    The check runs once per epoch (no per-batch host synchronisation); the weight snapshot
    is one host copy of the model weights per epoch.

    Args:
        monitor: log keys to check; `None` checks every numeric log value (`loss`,
            `val_loss`, metrics).
        restore_weights: put back the weights of the start of the diverged epoch.

    Example:
    ```python
    model.fit(x, y, epochs=10, callbacks=[NonFiniteGuard(), keras.callbacks.BackupAndRestore(d)])
    ```
    """

    def __init__(self, monitor: Sequence[str] | None = None, restore_weights: bool = True):
        super().__init__()
        self.monitor = list(monitor) if monitor is not None else None
        self.restore_weights = restore_weights
        self._good_weights = None
        self._good_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.restore_weights:
            self._good_weights = self.model.get_weights()
            self._good_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        bad = {}
        for key, value in (logs or {}).items():
            if self.monitor is not None and key not in self.monitor:
                continue
            try:
                number = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                bad[key] = number
        if not bad:
            return
        restored = ""
        if self.restore_weights and self._good_weights is not None:
            self.model.set_weights(self._good_weights)
            restored = (
                f" The model weights were restored to those at the start of epoch "
                f"{self._good_epoch + 1}, the last finite state."
            )
        found = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise NonFiniteLossError(
            f"Training diverged: {found} at the end of epoch {epoch + 1}.{restored} Lower the "
            "learning rate (e.g. 10x), clip gradients (an optimizer with clipnorm=1.0), check "
            "the inputs and labels for NaN/inf or out-of-range values, and with mixed precision "
            "keep the loss in float32."
        )


class EmptyEpochGuard(keras.callbacks.Callback):
    """Raises when an epoch trained on no batch (or validated on none).

    `model.fit` on a dataset of unknown size that yields nothing (a `filter` that drops
    everything, an empty folder behind a generator) only warns, runs every epoch with no
    step, and returns an empty history. This callback turns that into a `ValueError` at the
    end of the first epoch.

    Args:
        expect_validation: also raise when the epoch's logs hold no validation metric
            (leave `False` with `validation_freq` other than 1).
        train_name, validation_name: what the message calls the two datasets.

    Example:

    ```python
    model.fit(dataset, epochs=5, callbacks=[EmptyEpochGuard()])
    ```
    """

    def __init__(
        self,
        expect_validation: bool = False,
        train_name: str = "train_data",
        validation_name: str = "validation_data",
    ):
        super().__init__()
        self.expect_validation = expect_validation
        self.train_name = train_name
        self.validation_name = validation_name

    def on_epoch_end(self, epoch, logs=None):
        keys = list(logs or {})
        empty = None
        if not any(not key.startswith("val_") for key in keys):
            empty = self.train_name
        elif self.expect_validation and not any(key.startswith("val_") for key in keys):
            empty = self.validation_name
        if empty:
            raise ValueError(
                f"{empty} yielded no batches in epoch {epoch + 1}: it is empty. Check that "
                "the folder, split or filter leaves examples; with drop_remainder=True, a "
                "dataset smaller than one batch has no batches: lower batch_size."
            )
