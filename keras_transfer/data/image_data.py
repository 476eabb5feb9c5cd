"""What the image loaders return: `ImageData`, and `is_image_data` to recognise it.

Modules that accept an `ImageData` as well as arrays or datasets test for it with
`is_image_data` (by its attributes, so they need not import the loaders or TensorFlow data
code to recognise one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

__all__ = [
    "ImageData",
    "is_image_data",
]


@dataclasses.dataclass
class ImageData:
    """Batched training and validation datasets with what is known about them.

    Attributes:
        train: `tf.data.Dataset` of `(images, labels)` batches, shuffled each epoch.
        validation: the same for validation, or `None`.
        class_names: class names, index = label.
        num_train: number of training images.
        num_validation: number of validation images.
        skipped: paths of image files that were left out (not decodable, above
            `max_pixels`, a format TensorFlow does not decode, or a second link to an
            image already listed).
        skip_reasons: each skipped path -> why it was left out.
        warnings: what the loader warned about (also logged): skipped files, symbolic link
            loops, a validation folder without images (then `validation` is `None`).
        image_size: `(height, width)` of the images.
        train_unaugmented: the training images as validation sees them (central crop, no
            augmentation, no shuffle): what cached feature extraction should run on.
        class_counts: training images per class (index = label), from the file listing;
            `None` when the loader does not know them without reading the data (TFDS).
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: list[str]
    num_train: int
    num_validation: int
    skipped: list[str] = dataclasses.field(default_factory=list)
    image_size: tuple[int, int] = (224, 224)
    train_unaugmented: tf.data.Dataset | None = None
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    class_counts: list[int] | None = None


def is_image_data(obj: Any) -> bool:
    """Whether `obj` is an `ImageData` (or shaped like one: a `train` split and
    `class_names`), as returned by `image_folder_dataset` and `tfds_dataset`.

    Example:
    ```python
    data = image_folder_dataset("hymenoptera_data", image_size=224)
    is_image_data(data)  # -> True
    is_image_data(data.train)  # -> False: a tf.data.Dataset
    ```
    """
    return hasattr(obj, "train") and hasattr(obj, "class_names")
