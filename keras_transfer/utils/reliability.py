"""Nothing silent, nothing lost: divergence and empty-data detection, label checks, atomic
backups, and the finite-weights check and atomic write that `saving.save_model` uses."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer import _keras_compat

__all__ = [
    "AtomicBackupAndRestore",
    "BackupUnreadableError",
    "EmptyEpochGuard",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "check_finite_weights",
    "check_free_space",
    "copy_atomically",
    "non_finite_variables",
    "write_atomically",
]


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
    ends with `path`'s name, so extension checks such as Keras' `.keras` still pass. Its
    name is random and it is created exclusively (`tempfile.mkstemp`, `O_EXCL`), so a
    symbolic link planted in the folder is never written through. A killed or failed write
    leaves the previous file at `path` untouched and removes the temporary file.
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".partial-", suffix=f"-{name}", dir=directory)
    try:
        # mkstemp creates the file 0600; the result gets the permissions of a new file.
        os.fchmod(descriptor, 0o666 & ~_umask())
        os.close(descriptor)
        write(temporary)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _sync_folder(directory)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def copy_atomically(source: str, target: str) -> None:
    """Makes `target` a copy of `source` without a moment where it is partial: a hard link
    (no data copied) where the file system has them, else a copy, then a rename."""
    directory, name = os.path.split(os.path.abspath(target))
    descriptor, temporary = tempfile.mkstemp(prefix=".partial-", suffix=f"-{name}", dir=directory)
    os.close(descriptor)
    try:
        os.remove(temporary)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Raises `OSError(ENOSPC)` naming `folder` and the bytes needed when the file system of
    `folder` has less than `needed_bytes` free, before anything is written."""
    folder = os.fspath(folder)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space for {what} in {folder!r}: it needs about "
            f"{needed_bytes:,} bytes and {free:,} bytes are free. Free some space, or point it "
            "at a folder on a disk with room.",
        )


# ---------------------------------------------------------------------------------------
# Labels and empty data
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Backups
# ---------------------------------------------------------------------------------------


class BackupUnreadableError(RuntimeError):
    """A training backup exists but cannot be loaded into the model."""


class AtomicBackupAndRestore(_keras_compat.BackupSaveHook, keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups are never half-written.

    Keras writes `latest.weights.h5` in place: a full disk or a kill during the save leaves
    a partial file, and every rerun then fails to load it ("N objects could not be loaded")
    without naming the folder. Here each backup is written to a temporary file beside it
    and renamed into place, so the latest backup is always a complete one; with
    `double_checkpoint=True` the previous backup is kept (as a hard link, no copy) before
    the rename. On restore, a backup that cannot be loaded falls back to the previous one
    if there is one, else raises `BackupUnreadableError` naming the folder, the reason and
    the fix, leaving the model's weights as they were.

    The weights and the epoch number are two files renamed one after the other: a kill
    between the two renames (microseconds) repeats one epoch on resume.

    Args:
        backup_dir: the folder of the backup (used by this callback only).
        save_freq: `"epoch"` or a number of batches, as in Keras.
        double_checkpoint: keep the previous backup as a fallback.
        delete_checkpoint: delete the folder when training ends.

    Example:

    ```python
    backup = AtomicBackupAndRestore("run/backup", double_checkpoint=True)
    model.fit(dataset, epochs=10, callbacks=[backup])  # rerun the same call after a kill
    ```
    """

    WEIGHTS_FILE = "latest.weights.h5"
    METADATA_FILE = "training_metadata.json"
    PREVIOUS_SUFFIX = ".bkp"  # Keras' name for the previous backup

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self._epochs_done = 0
        self._batch = 0

    def _path(self, name: str, previous: bool = False) -> str:
        return os.path.join(self.backup_dir, name) + (self.PREVIOUS_SUFFIX if previous else "")

    def on_train_begin(self, logs=None):
        if not os.path.exists(self._path(self.WEIGHTS_FILE)) and not os.path.exists(
            self._path(self.WEIGHTS_FILE, previous=True)
        ):
            return super().on_train_begin(logs)
        before = [v.numpy() for v in self.model.weights] if self.model.built else None
        try:
            return super().on_train_begin(logs)
        except Exception as error:  # h5py's OSError, Keras' ValueError, a broken JSON ...
            first_error = error
        if self._use_previous():
            try:
                return super().on_train_begin(logs)
            except Exception:  # the previous backup is damaged too: report the first error
                pass
        if before is not None:
            for variable, value in zip(self.model.weights, before, strict=True):
                variable.assign(value)
        reason = f"{type(first_error).__name__}: {first_error}".strip()
        if len(reason) > 400:
            reason = reason[:400] + " ..."
        raise BackupUnreadableError(
            f"The training backup in {self.backup_dir!r} cannot be loaded into this model "
            f"({reason}). It was left incomplete (a full disk or a kill during a save by an "
            "older version) or was written for another model. Delete the folder "
            f"{self.backup_dir!r} (or pass another backup folder) to start over, after freeing "
            "disk space if the disk is full; to keep the backup, build the same model and "
            "compile it the same way as the run that wrote it."
        ) from first_error

    def _use_previous(self) -> bool:
        previous = self._path(self.WEIGHTS_FILE, previous=True)
        if not os.path.exists(previous):
            return False
        copy_atomically(previous, self._path(self.WEIGHTS_FILE))
        metadata = self._path(self.METADATA_FILE)
        if os.path.exists(self._path(self.METADATA_FILE, previous=True)):
            copy_atomically(self._path(self.METADATA_FILE, previous=True), metadata)
        elif os.path.exists(metadata):
            os.remove(metadata)
        return True

    def on_epoch_begin(self, epoch, logs=None):
        self._epochs_done = epoch
        self._batch = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batch = batch
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = epoch + 1
        self._batch = 0
        super().on_epoch_end(epoch, logs)

    def save_backup(self):
        # Called through `_keras_compat.BackupSaveHook` in place of Keras' in-place writes.
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = self._path(self.WEIGHTS_FILE)
        metadata = self._path(self.METADATA_FILE)

        def save_weights(temporary):
            self.model.save_weights(temporary, overwrite=True)
            if self.double_checkpoint and os.path.exists(weights):
                # The new backup is complete: only now retire the current one.
                copy_atomically(weights, self._path(self.WEIGHTS_FILE, previous=True))

        write_atomically(weights, save_weights)
        if self.double_checkpoint and os.path.exists(metadata):
            copy_atomically(metadata, self._path(self.METADATA_FILE, previous=True))

        def save_metadata(temporary):
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({"epoch": self._epochs_done, "batch": self._batch}, f)

        write_atomically(metadata, save_metadata)
