"""Nothing silent, nothing lost: divergence detection and atomic, finite-checked saving."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or metric."""


class NonFiniteWeightsError(FloatingPointError):
    """A model holds NaN or infinite weights and must not be saved as a result."""


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


def non_finite_variables(model: keras.Model) -> list[str]:
    """Paths of the model's variables holding NaN or infinite values."""
    bad = []
    for variable in model.variables:
        value = keras.ops.convert_to_numpy(variable.value)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            bad.append(variable.path)
    return bad


def check_finite_weights(model: keras.Model) -> None:
    """Raises `NonFiniteWeightsError` naming the variables if any is NaN or infinite."""
    bad = non_finite_variables(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"The model has {len(bad)} variable(s) with NaN/inf values ({shown}); refusing to "
            "save it as a result. Training diverged: restore a checkpoint and lower the "
            "learning rate or clip gradients."
        )


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Calls `write(temporary_path)` then renames the file onto `path`.

    The temporary file sits beside `path` (same file system, so the rename is atomic) and
    ends with `path`'s name, so extension checks such as Keras' `.keras` still pass. A
    killed or failed write leaves the previous file at `path` untouched.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".partial-{os.getpid()}-{name}")
    try:
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_model(
    model: keras.Model, filepath: str | os.PathLike, *, check_finite: bool = True, **kwargs: Any
) -> None:
    """`model.save(filepath)` that never leaves a truncated or NaN model at `filepath`.

    Args:
        model: the model to save.
        filepath: a `.keras` path (or `.weights.h5`, then only the weights are saved).
        check_finite: refuse (`NonFiniteWeightsError`) to save NaN/inf weights.
        **kwargs: passed to `model.save` / `model.save_weights`.
    """
    if check_finite:
        check_finite_weights(model)
    filepath = os.fspath(filepath)
    if filepath.endswith(".weights.h5"):
        write_atomically(filepath, lambda path: model.save_weights(path, **kwargs))
    else:
        write_atomically(filepath, lambda path: model.save(path, **kwargs))
