"""LoRA models and Keras' weights files: merging for export, and training backups.

Keras writes LoRA layers merged (`W + (alpha / rank) A B` in the kernel) and loads them with
`A = B = 0`, where both gradients are zero. `merge_lora` builds from that a plain model
without LoRA variables (for inference and export); `LoraBackupAndRestore` keeps the `A` and
`B` matrices beside each training backup and sets them back on restore, so that a killed LoRA
run resumes where it stopped.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import keras
import numpy as np

from keras_transfer.peft import lora
from keras_transfer.utils import reliability

__all__ = ["LoraBackupAndRestore", "merge_lora"]


def _base_kernel_variable(layer: keras.layers.Layer):
    """The variable holding the frozen `W` of a LoRA layer (its `kernel` attribute is the
    merged sum, a tensor)."""
    for variable in layer.weights:
        if variable.path.rsplit("/", 1)[-1] in ("kernel", "embeddings"):
            return variable
    raise ValueError(f"LoRA layer {layer.name!r} has no kernel or embeddings variable.")


def _lora_update(layer: keras.layers.Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Keras' LoRA layers all compute W + (alpha / rank) * A @ B (A: (..., rank), B: (rank, n)).
    return (float(layer.lora_alpha) / int(layer.lora_rank)) * np.matmul(a, b)


def _strip_lora(config: Any) -> Any:
    if isinstance(config, dict):
        result = {key: _strip_lora(value) for key, value in config.items()}
        if "lora_rank" in result:
            result["lora_rank"] = None
            result.pop("lora_alpha", None)
        return result
    if isinstance(config, list):
        return [_strip_lora(item) for item in config]
    return config


def merge_lora(model: keras.Model) -> keras.Model:
    """A copy of `model` without LoRA variables whose kernels hold `W + (alpha / rank) A B`.

    For inference and export: the copy predicts what `model` predicts (within float
    rounding) at the cost of the base model. It is built from the model's config with LoRA
    left out, and takes its weights from Keras' own weights file, in which Keras already
    merges LoRA into the kernels. `model` itself is unchanged; compile the copy to train it.

    Args:
        model: a model with LoRA layers (from `enable_lora` or `load_adapter`).

    Returns:
        The merged model.

    Example:

    ```python
    merged = kt.merge_lora(model)
    merged.export("serving")  # a plain model, no LoRA
    ```
    """
    if not lora.lora_layers(model):
        raise ValueError(f"{model.name!r} has no LoRA layers to merge.")
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    merged = keras.saving.deserialize_keras_object(config)
    with tempfile.TemporaryDirectory() as directory:
        weights = os.path.join(directory, "merged.weights.h5")
        model.save_weights(weights)
        with warnings.catch_warnings():
            # The file holds the optimizer's state too; the uncompiled copy has none.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            merged.load_weights(weights)
    # Keras' weights file holds each LoRA layer's `kernel` property, which it casts to the
    # compute dtype: under mixed_float16 every merged kernel came back rounded to float16.
    # The merge is written again in the variables' own dtype (float32), so it is exact.
    # The copy's variables stand in the order of the model's, LoRA left out (nested names
    # may differ, so they are paired by position).
    originals = [
        v for v in model.weights if v.path.rsplit("/", 1)[-1] not in lora.LORA_VARIABLE_NAMES
    ]
    copies = dict(zip((id(v) for v in originals), merged.weights, strict=True))
    for layer in lora.lora_layers(model):
        base = _base_kernel_variable(layer)
        a, b = (keras.ops.convert_to_numpy(v) for v in (layer.lora_kernel_a, layer.lora_kernel_b))
        copies[id(base)].assign(keras.ops.convert_to_numpy(base) + _lora_update(layer, a, b))
    return merged


class LoraBackupAndRestore(reliability.AtomicBackupAndRestore):
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
        os.makedirs(self.backup_dir, exist_ok=True)
        matrices = self._path(self.LORA_FILE)

        def save_matrices(temporary):
            values = {}
            for layer in lora.lora_layers(self.model):
                path = lora.layer_path(layer)
                values[f"{path}/a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
                values[f"{path}/b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
            with open(temporary, "wb") as f:
                np.savez(f, **values)
            if self.double_checkpoint and os.path.exists(matrices):
                reliability.copy_atomically(matrices, self._path(self.LORA_FILE, previous=True))

        reliability.write_atomically(matrices, save_matrices)
        super().save_backup()

    def on_train_begin(self, logs=None):
        layers = lora.lora_layers(self.model)
        has_backup = any(
            os.path.exists(self._path(self.WEIGHTS_FILE, previous=previous))
            for previous in (False, True)
        )
        if not layers or not has_backup:
            return super().on_train_begin(logs)
        # The frozen W as built: the restored kernels hold W + update, not W.
        bases = [keras.ops.convert_to_numpy(_base_kernel_variable(layer)) for layer in layers]
        result = super().on_train_begin(logs)
        restored = [keras.ops.convert_to_numpy(_base_kernel_variable(layer)) for layer in layers]
        for candidate in (self._path(self.LORA_FILE), self._path(self.LORA_FILE, previous=True)):
            matrices = self._matching_matrices(candidate, layers, bases, restored)
            if matrices is not None:
                for layer, base, (a, b) in zip(layers, bases, matrices, strict=True):
                    _base_kernel_variable(layer).assign(base)
                    layer.lora_kernel_a.assign(a)
                    layer.lora_kernel_b.assign(b)
                return result
        raise reliability.BackupUnreadableError(
            f"The training backup in {self.backup_dir!r} holds LoRA kernels that match neither "
            "the model's frozen weights plus its saved LoRA matrices nor the previous ones: it "
            "was written for another base model, or its matrices file is missing. Build the "
            "model from the same weights as the run that wrote it, or delete the folder to "
            "start over."
        )

    @staticmethod
    def _matching_matrices(path, layers, bases, restored):
        if not os.path.exists(path):
            return None
        with np.load(path) as stored:
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
                expected = base + _lora_update(layer, a, b)
                scale = max(1.0, float(np.max(np.abs(expected))))
                if not np.allclose(kernel, expected, rtol=0, atol=1e-5 * scale):
                    return None
                matrices.append((a, b))
        return matrices
