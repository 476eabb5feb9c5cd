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
from keras_transfer.data.decoding import central_crop_pixels
from keras_transfer.data.decoding import check_batch_size
from keras_transfer.data.decoding import decode_central_crop
from keras_transfer.data.decoding import decode_image_bytes
from keras_transfer.data.decoding import load_size
from keras_transfer.data.decoding import plain_jpegs
from keras_transfer.data.decoding import resize_and_crop

__all__ = [
    "PipelineOptions",
    "augmentation_names",
    "augmentation_pipeline",
    "decoded_dataset",
    "label_mixing",
    "pipeline_options",
    "uses_label_mixing",
]

_AUGMENTATIONS = {
    "flip": lambda seed: keras.layers.RandomFlip("horizontal", seed=seed),
    "rotation": lambda seed: keras.layers.RandomRotation(0.1, seed=seed),
    "zoom": lambda seed: keras.layers.RandomZoom(0.1, seed=seed),
    "contrast": lambda seed: keras.layers.RandomContrast(0.1, seed=seed),
    "translation": lambda seed: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
    # Cubuk et al. 2020 (arXiv:1909.13719): 2 random operations of magnitude 0.5 per image.
    "randaugment": lambda seed: keras.layers.RandAugment(value_range=(0, 255), seed=seed),
    # Hendrycks et al. 2020 (arXiv:1912.02781): the image side (Keras has no JSD loss).
    "augmix": lambda seed: keras.layers.AugMix(value_range=(0, 255), seed=seed),
}
# Augmentations that mix two images and their labels: the training labels become soft
# vectors (train with `heads.SoftLabelCrossentropy`); both given: one of them per batch.
_LABEL_MIXING = {
    # Zhang et al. 2018 (arXiv:1710.09412), alpha 0.2 as in their ImageNet runs.
    "mixup": lambda seed: keras.layers.MixUp(alpha=0.2, seed=seed),
    # Yun et al. 2019 (arXiv:1905.04899), Beta(1, 1) box sizes.
    "cutmix": lambda seed: keras.layers.CutMix(factor=1.0, seed=seed),
}


def augmentation_pipeline(
    augment: bool | str | Sequence[str] | keras.layers.Layer | None, seed: int | None = None
) -> keras.layers.Layer | None:
    """A `keras.layers.Pipeline` from `True` (the guide's set), names, or a ready layer.

    Names: `flip`, `rotation`, `zoom`, `contrast`, `translation`, `randaugment`, `augmix`.
    (`crop`, a random crop instead of the central one, is handled by the loaders, which keep
    the uncropped image; `mixup` and `cutmix` mix labels too: `label_mixing`.)
    """
    if augment is None or augment is False:
        return None
    if isinstance(augment, keras.layers.Layer):
        return augment
    augment = augmentation_names(augment)
    layers = []
    for name in augment:
        if name == "crop" or name in _LABEL_MIXING:
            continue
        if name in _AUGMENTATIONS:
            layers.append(_AUGMENTATIONS[name](seed))
        else:
            raise ValueError(
                f"Unknown augmentation {name!r}. Choose from "
                f"{sorted([*_AUGMENTATIONS, *_LABEL_MIXING, 'crop'])}, "
                "or pass a keras layer."
            )
    return keras.layers.Pipeline(layers, name="augmentation") if layers else None


def uses_label_mixing(augment: Any) -> bool:
    """Whether `augment` names `mixup` or `cutmix` (its training labels are then soft)."""
    return any(name in _LABEL_MIXING for name in augmentation_names(augment))


def label_mixing(augment: Any, num_classes: int, seed: int | None = None):
    """A function `(float images, int labels) -> (images, soft labels)` applying the `mixup`
    / `cutmix` of `augment` to a batch (one of them per batch when both are named), or
    `None` when it names neither."""
    layers = [
        _LABEL_MIXING[name](seed) for name in augmentation_names(augment) if name in _LABEL_MIXING
    ]
    if not layers:
        return None
    if not num_classes or num_classes < 2:
        raise ValueError(f"mixup/cutmix need the number of classes (>= 2), got {num_classes!r}.")

    def mix(images, labels):
        batch = {"images": images, "labels": tf.one_hot(tf.reshape(labels, [-1]), num_classes)}
        if len(layers) == 1:
            mixed = layers[0](batch, training=True)
        else:
            mixed = tf.cond(
                tf.random.uniform((), seed=seed) < 0.5,
                lambda: layers[0](batch, training=True),
                lambda: layers[1](batch, training=True),
            )
        return mixed["images"], mixed["labels"]

    return mix


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
    # Needed by the label-mixing augmentations (`mixup`, `cutmix`); the loaders set it.
    num_classes: int | None = None

    @property
    def load_size(self) -> tuple[int, int]:
        return load_size(self.image_size, self.crop_fraction)

    def build(self, dataset: tf.data.Dataset, *, training: bool, split: str) -> tf.data.Dataset:
        """Cache, shuffle, crop, batch, augment and prefetch `(image, label)` pairs: uint8
        or float32 images of `load_size` (cropped here) or of `image_size` (decoded as
        their central crop); the batches are float32."""
        if self.cache:
            dataset = dataset.cache("" if self.cache is True else f"{self.cache}_{split}")
        if training and self.shuffle:
            # The cache holds uint8 images, so a full-dataset buffer stays affordable.
            dataset = dataset.shuffle(50_000, seed=self.seed, reshuffle_each_iteration=True)
        random_crop = self.random_crop(training)
        if random_crop and self.load_size == self.image_size:
            raise ValueError("The 'crop' augmentation needs crop_fraction < 1.")
        # Images decoded with `decode_central_crop` arrive cropped already.
        if tuple(dataset.element_spec[0].shape[:2]) != self.image_size:
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
        elif dataset.element_spec[0].dtype != tf.float32:
            dataset = dataset.map(
                lambda images, labels: (tf.cast(images, tf.float32), labels),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        mix = label_mixing(self.augment, self.num_classes, self.seed) if training else None
        if mix is not None:
            dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def build_files(
        self, paths: Sequence[str], labels: Any, *, training: bool, split: str
    ) -> tf.data.Dataset:
        """`decoded_dataset` of the image files, then `build`. Without a cache, a training
        split shuffles its file paths before decoding instead of its decoded images after:
        a shuffle buffer of decoded images would hold up to 50,000 of them (about 10 GB at
        256 px) and decode the whole buffer before the first batch."""
        shuffle_files = training and self.shuffle and not self.cache
        dataset = decoded_dataset(
            paths,
            labels,
            self,
            shuffle=shuffle_files,
            central_crop=not self.random_crop(training),
        )
        options = dataclasses.replace(self, shuffle=False) if shuffle_files else self
        return options.build(dataset, training=training, split=split)

    def decode_bytes(
        self, contents: tf.Tensor, *, central_crop: bool, plain_jpeg: bool = False
    ) -> tf.Tensor:
        """One encoded image as this pipeline decodes it, for image files and records
        alike: its central `image_size` crop (`decode_central_crop`; float32 with the same
        whole-level values when nothing is cached, which saves converting to uint8 and
        back), or the `load_size` image a random crop is taken from later
        (`decode_image_bytes`)."""
        if central_crop:
            return decode_central_crop(
                contents, self.image_size, self.crop_fraction, self.resize,
                plain_jpeg=plain_jpeg, dtype="uint8" if self.cache else "float32",
            )  # fmt: skip
        return decode_image_bytes(contents, self.load_size, self.resize, plain_jpeg=plain_jpeg)

    def decode_pixels(self, image: tf.Tensor, *, central_crop: bool) -> tf.Tensor:
        """`decode_bytes` of an image decoded already (uint8 pixels, upright: records that
        store pixels): the same values as `decode_bytes` of a lossless PNG of it."""
        if central_crop:
            return central_crop_pixels(
                image, self.image_size, self.crop_fraction, self.resize,
                dtype="uint8" if self.cache else "float32",
            )  # fmt: skip
        return resize_and_crop(image, self.load_size, self.resize)

    def check_full_batches(self, training: int, validation: int) -> None:
        """With `drop_remainder`, a non-empty training or validation split (of `training`
        and `validation` images) needs one full batch; the test split keeps its last
        partial batch (it is not distributed). Every loader's rule."""
        for split, count in (("training", training), ("validation", validation)):
            if self.drop_remainder and 0 < count < self.batch_size:
                raise ValueError(
                    f"batch_size={self.batch_size} with drop_remainder=True leaves no batch of "
                    f"the {count} {split} images. Lower batch_size to at most {count}, or set "
                    "drop_remainder=False."
                )

    def random_crop(self, training: bool) -> bool:
        """Whether this split's images are cropped at random (a training split with the
        `crop` augmentation); the others are cropped centrally, as they are decoded."""
        return training and "crop" in augmentation_names(self.augment)

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
    paths: Sequence[str],
    labels: Sequence[int],
    options: PipelineOptions,
    shuffle: bool = False,
    central_crop: bool = False,
) -> tf.data.Dataset:
    """`(uint8 image of options.load_size, label)` pairs of the image files `paths`, decoded
    in parallel (unbatched, ready for `options.build`). With `central_crop`, the images are
    their central `options.image_size` crops instead (`decode_central_crop`: the decoder
    of validation images and of `predict`), as float32 with the same whole-level values when
    `options.cache` is off. A split of local JPEGs stored upright (`plain_jpegs`) gets the
    decoder without the EXIF parse and the branch on the format. A label is an int32 class
    index, or a float32 vector when `labels` is 2-D (multilabel 0/1 or regression targets).
    With `shuffle`, the files are read in a new order each epoch (seeded by `options.seed`)."""
    labels = np.asarray(labels)
    labels = labels.astype(np.float32 if labels.ndim > 1 else np.int32)
    plain = plain_jpegs(paths)
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), labels))
    if shuffle and len(paths):
        dataset = dataset.shuffle(len(paths), seed=options.seed, reshuffle_each_iteration=True)
    return dataset.map(
        lambda path, label: (
            options.decode_bytes(
                tf.io.read_file(path), central_crop=central_crop, plain_jpeg=plain
            ),
            label,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
