"""Post-training quantization for `export`: the TFLite converter's modes and Keras' own
`model.quantize`, on a plain copy of the model (LoRA merged into its kernels first).

- `tflite_content(saved_model_dir, quantize, ...)`: the converter's dynamic-range
  (`"dynamic"`: int8 weights, float activations), `"float16"` (float16 weights) and
  full-integer `"int8"` (int8 weights and activations, calibrated on representative
  images; float32 input and output unless `io_dtype` is `"uint8"` or `"int8"`). The
  converter folds each BatchNormalization into the convolution before it, for every mode.
- `quantize_keras(model, "int8")`: Keras' `model.quantize("int8")` on a copy. Keras
  quantizes `Dense`, `EinsumDense` and `Embedding` layers; the others (convolutions,
  BatchNormalization) stay float, and `float_layers` names them.

```python
content = tflite_content("saved_model", "int8", representative_data=train_images)
quantized, report = quantize_keras(model, "int8")  # report["float_layers"]: still float
```
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from keras_transfer import _keras_compat
from keras_transfer.peft import lora
from keras_transfer.peft import lora_saving

__all__ = [
    "IO_DTYPES",
    "KERAS_QUANTIZE_MODES",
    "TFLITE_QUANTIZE_MODES",
    "as_image_batches",
    "plain_model",
    "quantize_keras",
    "tflite_content",
]

TFLITE_QUANTIZE_MODES = ("dynamic", "float16", "int8")
KERAS_QUANTIZE_MODES = ("int8",)
# The input and output type of a full-integer TFLite model.
IO_DTYPES = ("float32", "uint8", "int8")


def plain_model(model: keras.Model, copy: bool = False) -> tuple[keras.Model, bool]:
    """`(model without LoRA, whether LoRA was merged)`: a LoRA model's `merge_lora` copy
    (its kernels hold `W + (alpha / rank) A B`, so quantization sees the trained weights and
    the export has no LoRA branch), else `model` itself, or a copy of it with `copy`
    (for a step that changes the model in place, like `model.quantize`)."""
    if lora.lora_layers(model):
        return lora_saving.merge_lora(model), True
    if not copy:
        return model, False
    duplicate = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    duplicate.set_weights(model.get_weights())
    return duplicate, False


def as_image_batches(data: Any) -> Iterator[np.ndarray]:
    """Float32 image batches of `data`: an array of images `(n, height, width, 3)`, or an
    iterable of batches (a `tf.data.Dataset` or a list) of images or `(images, labels)`."""
    if hasattr(data, "shape"):
        yield np.asarray(data, dtype="float32")
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"Expected images (an array of shape (n, height, width, 3)) or an iterable of "
            f"batches, got {type(data).__name__}."
        )
    for batch in data:
        images = batch[0] if isinstance(batch, tuple | list) else batch
        yield np.asarray(images, dtype="float32")


def _representative_dataset(data: Any, input_shape: tuple) -> Any:
    """The converter's calibration input: one image at a time, as the model takes it."""
    images = [image for batch in as_image_batches(data) for image in batch]
    if not images:
        raise ValueError(
            "representative_data holds no images: int8 calibrates every activation's range "
            "on them; pass a few hundred training images (0-255, the model's input size)."
        )
    if tuple(images[0].shape) != tuple(input_shape):
        raise ValueError(
            f"representative_data images have shape {tuple(images[0].shape)}, the model "
            f"takes {tuple(input_shape)}: read them with kt.load_image(path, model)."
        )

    def generate():
        for image in images:
            yield [image[None]]

    return generate


def tflite_content(
    saved_model_dir: str,
    quantize: str | None = None,
    *,
    representative_data: Any = None,
    input_shape: tuple | None = None,
    io_dtype: str = "float32",
) -> bytes:
    """The `.tflite` flatbuffer of a SavedModel, converted by `tf.lite.TFLiteConverter`.

    Args:
        saved_model_dir: a SavedModel of the model (`model.export(...)`).
        quantize: None (float32), `"dynamic"`, `"float16"` or `"int8"` (module docstring).
        representative_data: for `"int8"`: images as the model takes them (0-255 float), as
            an array or an iterable of batches.
        input_shape: `(height, width, 3)` of one image, to check `representative_data`.
        io_dtype: for `"int8"`: the input and output type, `"float32"` (the converter
            quantizes inside the model), `"uint8"` or `"int8"` (the caller quantizes).

    Returns:
        The flatbuffer's bytes.
    """
    import tensorflow as tf

    if quantize is not None and quantize not in TFLITE_QUANTIZE_MODES:
        raise ValueError(
            f"Unknown TFLite quantization {quantize!r}: use one of "
            f"{', '.join(TFLITE_QUANTIZE_MODES)} (or none for float32)."
        )
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, got {io_dtype!r}.")
    if io_dtype != "float32" and quantize != "int8":
        raise ValueError(
            f"io_dtype={io_dtype!r} is for quantize='int8' (a full-integer model), not "
            f"quantize={quantize!r}."
        )
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative_data is None:
            raise ValueError(
                "quantize='int8' calibrates every activation's range on representative "
                "images: pass representative_data (a few hundred training images, 0-255)."
            )
        converter.representative_dataset = _representative_dataset(representative_data, input_shape)
        # Integer kernels only: an op without one fails the conversion instead of silently
        # staying float.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype != "float32":
            converter.inference_input_type = tf.as_dtype(io_dtype)
            converter.inference_output_type = tf.as_dtype(io_dtype)
    return converter.convert()


def quantize_keras(model: keras.Model, mode: str = "int8") -> tuple[keras.Model, dict[str, Any]]:
    """A copy of `model` with Keras' `model.quantize(mode)` applied, and what it changed.

    Keras quantizes the layers that implement it (`Dense`, `EinsumDense`, `Embedding`); the
    other layers with weights stay float: for a CNN that is every convolution and
    BatchNormalization, so the file shrinks only by the head's share.

    Returns:
        `(quantized copy, report)` with `quantized_layers` (their variable paths),
        `float_layers` (the layers with weights left in float) and `float_layer_types`
        (`{class name: count}` of those).
    """
    if mode not in KERAS_QUANTIZE_MODES:
        raise ValueError(
            f"Keras quantization {mode!r} is not offered: use one of "
            f"{', '.join(KERAS_QUANTIZE_MODES)}."
        )
    quantized, _ = plain_model(model, copy=True)
    with warnings.catch_warnings():
        # Keras warns once per layer without a quantized form (every convolution, pooling,
        # activation...); the report below names the ones with weights instead.
        warnings.filterwarnings("ignore", message=r"Layer \w+ does not have a `quantize`")
        quantized.quantize(mode)
    done, left = [], []
    for layer in _keras_compat.flatten_layers(quantized, include_self=False):
        if _keras_compat.flatten_layers(layer, include_self=False) or not layer.weights:
            continue  # a container, or a layer without weights
        if layer.dtype_policy.quantization_mode:
            done.append(layer)
        else:
            left.append(layer)
    report = {
        "quantized_layers": sorted(lora.layer_path(layer) for layer in done),
        "float_layers": sorted(lora.layer_path(layer) for layer in left),
        "float_layer_types": dict(collections.Counter(type(layer).__name__ for layer in left)),
    }
    if not done:
        raise ValueError(
            f"Keras' quantize({mode!r}) changed no layer of {model.name!r}: it quantizes "
            "Dense, EinsumDense and Embedding layers only. Export TFLite with "
            "quantize='int8' instead."
        )
    return quantized, report
