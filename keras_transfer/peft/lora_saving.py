"""LoRA models and Keras' weights files: merging for export.

Keras writes LoRA layers merged (`W + (alpha / rank) A B` in the kernel) and loads them with
`A = B = 0`, where both gradients are zero. `merge_lora` builds from that a plain model
without LoRA variables (for inference and export). The pieces it reads a LoRA layer with
(`base_kernel_variable`, `lora_update`) also serve `LoraBackupAndRestore`, the training
backup in `keras_transfer.training.callbacks.backup` that keeps the `A` and `B` matrices.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import keras
import numpy as np

from keras_transfer.peft import lora

__all__ = ["base_kernel_variable", "lora_update", "merge_lora"]


def base_kernel_variable(layer: keras.layers.Layer) -> keras.Variable:
    """The variable holding the frozen `W` of a LoRA layer (its `kernel` attribute is the
    merged sum, a tensor)."""
    for variable in layer.weights:
        if variable.path.rsplit("/", 1)[-1] in ("kernel", "embeddings"):
            return variable
    raise ValueError(f"LoRA layer {layer.name!r} has no kernel or embeddings variable.")


def lora_update(layer: keras.layers.Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The update `(alpha / rank) A B` a LoRA layer adds to its frozen kernel, from the
    matrices `a` (`(..., rank)`) and `b` (`(rank, n)`), as Keras' LoRA layers compute it."""
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
        base = base_kernel_variable(layer)
        a, b = (keras.ops.convert_to_numpy(v) for v in (layer.lora_kernel_a, layer.lora_kernel_b))
        copies[id(base)].assign(keras.ops.convert_to_numpy(base) + lora_update(layer, a, b))
    return merged
