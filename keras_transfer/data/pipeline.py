"""The tf.data pipeline shared by every loader: decoded uint8 images become batches.

`PipelineOptions` caches, shuffles, crops (centrally, or randomly with the `crop`
augmentation), batches, augments and prefetches; `pipeline_options` checks a loader's
arguments and builds them; `decoded_dataset` decodes a list of image files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.data.decoding import DEFAULT_CROP_FRACTION
from keras_transfer.data.decoding import as_image_size
from keras_transfer.data.decoding import central_crop
from keras_transfer.data.decoding import check_batch_size
from keras_transfer.data.decoding import decode_and_resize
from keras_transfer.data.decoding import load_size

__all__ = [
    "PipelineOptions",
    "augmentation_names",
    "augmentation_pipeline",
    "decoded_dataset",
    "pipeline_options",
]

_AUGMENTATIONS = {
    "flip": lambda seed: keras.layers.RandomFlip("horizontal", seed=seed),
    "rotation": lambda seed: keras.layers.RandomRotation(0.1, seed=seed),
    "zoom": lambda seed: keras.layers.RandomZoom(0.1, seed=seed),
    "contrast": lambda seed: keras.layers.RandomContrast(0.1, seed=seed),
    "translation": lambda seed: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
}


def augmentation_pipeline(
    augment: bool | str | Sequence[str] | keras.layers.Layer | None, seed: int | None = None
) -> keras.layers.Layer | None:
    """A `keras.layers.Pipeline` from `True` (the guide's set), names, or a ready layer.

    Names: `flip`, `rotation`, `zoom`, `contrast`, `translation`. (`crop`, a random crop
    instead of the central one, is handled by the loaders, which keep the uncropped image.)
    """
    if augment is None or augment is False:
        return None
    if isinstance(augment, keras.layers.Layer):
        return augment
    augment = augmentation_names(augment)
    layers = []
    for name in augment:
        if name == "crop":
            continue
        if name in _AUGMENTATIONS:
            layers.append(_AUGMENTATIONS[name](seed))
        else:
            raise ValueError(
                f"Unknown augmentation {name!r}. Choose from {sorted([*_AUGMENTATIONS, 'crop'])}, "
                "or pass a keras layer."
            )
    return keras.layers.Pipeline(layers, name="augmentation") if layers else None


def augmentation_names(augment: Any) -> list[str]:
    """The augmentation names in `augment` (`True`, a list, or a comma-separated string)."""
    if augment is None or augment is False or isinstance(augment, keras.layers.Layer):
        return []
    if augment is True:
        return ["flip", "rotation", "zoom"]
    if isinstance(augment, str):
        return [name.strip() for name in augment.split(",") if name.strip()]
    return list(augment)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How decoded images become training or validation batches (shared by all loaders)."""

    image_size: tuple[int, int]
    batch_size: int
    crop_fraction: float = DEFAULT_CROP_FRACTION
    resize: str = "crop"
    augment: Any = False
    shuffle: bool = True
    seed: int | None = None
    cache: bool | str = True
    drop_remainder: bool = False

    @property
    def load_size(self) -> tuple[int, int]:
        return load_size(self.image_size, self.crop_fraction)

    def build(self, dataset: tf.data.Dataset, *, training: bool, split: str) -> tf.data.Dataset:
        """Cache, shuffle, crop, batch, augment and prefetch `(uint8 image, label)` pairs
        whose images have `load_size`."""
        if self.cache:
            dataset = dataset.cache("" if self.cache is True else f"{self.cache}_{split}")
        if training and self.shuffle:
            # The cache holds uint8 images, so a full-dataset buffer stays affordable.
            dataset = dataset.shuffle(50_000, seed=self.seed, reshuffle_each_iteration=True)
        random_crop = training and "crop" in augmentation_names(self.augment)
        if random_crop and self.load_size == self.image_size:
            raise ValueError("The 'crop' augmentation needs crop_fraction < 1.")
        if self.load_size != self.image_size:
            crop = self._random_crop if random_crop else self._central_crop
            dataset = dataset.map(
                lambda image, label: (crop(image), label), num_parallel_calls=tf.data.AUTOTUNE
            )
        dataset = dataset.batch(self.batch_size, drop_remainder=self.drop_remainder)
        augment = augmentation_pipeline(self.augment, seed=self.seed) if training else None
        if augment is not None:
            dataset = dataset.map(
                lambda images, labels: (
                    augment(tf.cast(images, tf.float32), training=True),
                    labels,
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        else:
            dataset = dataset.map(
                lambda images, labels: (tf.cast(images, tf.float32), labels),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _central_crop(self, image):
        # The crop of `decoding.decode_for_model` (what `predict` reads), on purpose.
        return central_crop(image, self.image_size)

    def _random_crop(self, image):
        return tf.image.random_crop(image, (*self.image_size, 3), seed=self.seed)


def pipeline_options(
    image_size: int | Sequence[int], batch_size: int, **options: Any
) -> PipelineOptions:
    """Checks `image_size` and `batch_size` (raising a `ValueError` naming the bad one) and
    returns the `PipelineOptions` with `options` (`crop_fraction`, `resize`, `augment`,
    `shuffle`, `seed`, `cache`, `drop_remainder`; the rest keep their defaults).

    Example:
    ```python
    options = pipeline_options(224, 32, augment=True, seed=1337)
    options.load_size  # -> (256, 256): the central 224 px crop covers 0.875 of each side
    ```
    """
    image_size = as_image_size(image_size)
    check_batch_size(batch_size)
    return PipelineOptions(image_size=image_size, batch_size=batch_size, **options)


def decoded_dataset(
    paths: Sequence[str], labels: Sequence[int], options: PipelineOptions
) -> tf.data.Dataset:
    """`(uint8 image of options.load_size, int32 label)` pairs of the image files `paths`,
    decoded in parallel (unbatched, ready for `options.build`)."""
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
    return dataset.map(
        lambda path, label: (decode_and_resize(path, options.load_size, options.resize), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
