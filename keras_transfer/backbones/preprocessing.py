"""The ImageNet input normalisations of `keras.applications`, as a saveable layer."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ImagePreprocessing"]

# Channel statistics used by `keras.applications.imagenet_utils.preprocess_input`.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)

MODES = ("tf", "caffe", "torch", "unit")


@keras.saving.register_keras_serializable(package="keras_transfer")
class ImagePreprocessing(keras.layers.Layer):
    """Maps raw RGB images in [0, 255] to what a `keras.applications` backbone expects.

    It computes exactly what the family's `preprocess_input` computes, but as a layer with
    a config, so a saved model carries its preprocessing and loads with `safe_mode=True`
    (a `Lambda` around `preprocess_input` would not).

    Args:
        mode: `"tf"` (scale to [-1, 1]), `"caffe"` (RGB to BGR, subtract the ImageNet BGR
            mean), `"torch"` (scale to [0, 1], normalise by the ImageNet mean and std) or
            `"unit"` (scale to [0, 1], the TF Hub image convention).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    layer = ImagePreprocessing("tf")
    float(layer(np.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])  # -> 1.0
    ```
    """

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"ImagePreprocessing mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        mean = ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
