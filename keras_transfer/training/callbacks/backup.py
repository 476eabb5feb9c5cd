"""Training backups that are never half-written: `AtomicBackupAndRestore` (Keras'
`BackupAndRestore` with atomic renames and a fallback to the previous backup),
`LoraBackupAndRestore` (which also keeps the LoRA matrices, so a killed LoRA run resumes
with them) and `BackupUnreadableError`.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from keras_transfer import _keras_compat
from keras_transfer.peft import lora
from keras_transfer.peft import lora_saving
from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = ["AtomicBackupAndRestore", "BackupUnreadableError", "LoraBackupAndRestore"]


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
        if not files.exists(self._path(self.WEIGHTS_FILE)) and not files.exists(
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
        if not files.exists(previous):
            return False
        reliability.copy_atomically(previous, self._path(self.WEIGHTS_FILE))
        metadata = self._path(self.METADATA_FILE)
        if files.exists(self._path(self.METADATA_FILE, previous=True)):
            reliability.copy_atomically(self._path(self.METADATA_FILE, previous=True), metadata)
        elif files.exists(metadata):
            files.remove(metadata)
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
        files.makedirs(self.backup_dir)
        weights = self._path(self.WEIGHTS_FILE)
        metadata = self._path(self.METADATA_FILE)

        def save_weights(temporary):
            self.model.save_weights(temporary, overwrite=True)
            if self.double_checkpoint and files.exists(weights):
                # The new backup is complete: only now retire the current one.
                reliability.copy_atomically(weights, self._path(self.WEIGHTS_FILE, previous=True))

        reliability.write_atomically(weights, save_weights)
        if self.double_checkpoint and files.exists(metadata):
            reliability.copy_atomically(metadata, self._path(self.METADATA_FILE, previous=True))

        def save_metadata(temporary):
            with files.open_file(temporary, "w", encoding="utf-8") as f:
                json.dump({"epoch": self._epochs_done, "batch": self._batch}, f)

        reliability.write_atomically(metadata, save_metadata)


class LoraBackupAndRestore(AtomicBackupAndRestore):
    """`AtomicBackupAndRestore` for LoRA training: a killed run resumes with its LoRA
    matrices, not with zeros.

    Keras' weights files hold LoRA layers merged (`W + (alpha / rank) A B` in the kernel) and
    load them with `A = B = 0`, where both gradients are zero: a plain backup would resume a
    LoRA run that can no longer train. This callback writes the `A` and `B` matrices beside
    each backup (before it, so a kill in between leaves a newer matrices file, never a
    missing one). On restore it takes the frozen `W` from the model as it was built, picks
    the matrices file whose update matches the restored kernels (`W + update`), and sets
    `W`, `A` and `B` back, so that training goes on as if never interrupted. A backup whose
    kernels match no matrices file (another base model) is an error naming the folder.

    Args:
        backup_dir: the folder of the backup.
        **kwargs: `AtomicBackupAndRestore` arguments (`save_freq`, `double_checkpoint`,
            `delete_checkpoint`).

    Example:

    ```python
    kt.enable_lora(model, rank=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    backup = kt.LoraBackupAndRestore("run/backup", double_checkpoint=True)
    model.fit(train, epochs=10, callbacks=[backup])  # rerun the same lines after a kill
    ```
    """

    LORA_FILE = "latest.lora.npz"

    def save_backup(self):
        files.makedirs(self.backup_dir)
        matrices = self._path(self.LORA_FILE)

        def save_matrices(temporary):
            values = {}
            for layer in lora.lora_layers(self.model):
                path = lora.layer_path(layer)
                values[f"{path}/a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
                values[f"{path}/b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
            with files.open_file(temporary, "wb") as f:
                np.savez(f, **values)
            if self.double_checkpoint and files.exists(matrices):
                reliability.copy_atomically(matrices, self._path(self.LORA_FILE, previous=True))

        reliability.write_atomically(matrices, save_matrices)
        super().save_backup()

    def on_train_begin(self, logs=None):
        layers = lora.lora_layers(self.model)
        has_backup = any(
            files.exists(self._path(self.WEIGHTS_FILE, previous=previous))
            for previous in (False, True)
        )
        if not layers or not has_backup:
            return super().on_train_begin(logs)
        # The frozen W as built: the restored kernels hold W + update, not W.
        bases = [
            keras.ops.convert_to_numpy(lora_saving.base_kernel_variable(layer)) for layer in layers
        ]
        result = super().on_train_begin(logs)
        restored = [
            keras.ops.convert_to_numpy(lora_saving.base_kernel_variable(layer)) for layer in layers
        ]
        for candidate in (self._path(self.LORA_FILE), self._path(self.LORA_FILE, previous=True)):
            matrices = self._matching_matrices(candidate, layers, bases, restored)
            if matrices is not None:
                for layer, base, (a, b) in zip(layers, bases, matrices, strict=True):
                    lora_saving.base_kernel_variable(layer).assign(base)
                    layer.lora_kernel_a.assign(a)
                    layer.lora_kernel_b.assign(b)
                return result
        raise BackupUnreadableError(
            f"The training backup in {self.backup_dir!r} holds LoRA kernels that match neither "
            "the model's frozen weights plus its saved LoRA matrices nor the previous ones: it "
            "was written for another base model, or its matrices file is missing. Build the "
            "model from the same weights as the run that wrote it, or delete the folder to "
            "start over."
        )

    @staticmethod
    def _matching_matrices(path, layers, bases, restored):
        if not files.exists(path):
            return None
        with np.load(files.readable(path)) as stored:
            matrices = []
            for layer, base, kernel in zip(layers, bases, restored, strict=True):
                key = lora.layer_path(layer)
                if f"{key}/a" not in stored:
                    return None
                a, b = stored[f"{key}/a"], stored[f"{key}/b"]
                if a.shape != tuple(layer.lora_kernel_a.shape) or b.shape != tuple(
                    layer.lora_kernel_b.shape
                ):
                    return None
                expected = base + lora_saving.lora_update(layer, a, b)
                scale = max(1.0, float(np.max(np.abs(expected))))
                if not np.allclose(kernel, expected, rtol=0, atol=1e-5 * scale):
                    return None
                matrices.append((a, b))
        return matrices
