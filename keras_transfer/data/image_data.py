"""What the image loaders return: `ImageData`, `is_image_data` to recognise it, and
`as_dataset`, the one conversion of what functions accept as data into batches.

Modules that accept an `ImageData` as well as arrays or datasets test for it with
`is_image_data` (by its attributes, so they need not import the loaders or TensorFlow data
code to recognise one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "ImageData",
    "as_dataset",
    "is_image_data",
]


@dataclasses.dataclass
class ImageData:
    """Batched training, validation and test datasets with what is known about them.

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
        test: the held-out test images as validation sees them, or `None`: for one
            evaluation of the finished model. Validation chooses epochs and settings, so its
            accuracy is optimistic; the test split, never seen before, is not.
        num_test: number of test images.
        task: what the labels are: `"multiclass"` (int32 class indices), `"multilabel"`
            (float32 0/1 vectors, one entry per name of `class_names`) or `"regression"`
            (float32 target vectors; `class_names` names the targets). Only
            `image_table_dataset` makes the last two.
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
    test: tf.data.Dataset | None = None
    num_test: int = 0
    task: str = "multiclass"


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


def as_dataset(
    data: Any,
    what: str = "data",
    *,
    batch_size: int | None = None,
    shuffle_seed: int | None = None,
) -> Any:
    """What the package's functions accept as data, as batches: the one conversion.

    - a `tf.data.Dataset` (or any other iterable of batches) comes back as it is;
    - an `ImageData` gives its training split;
    - NumPy arrays (images, or a tuple/list such as `(images, labels)`) are batched by
      `batch_size`, shuffled first when `shuffle_seed` is given; without a `batch_size` the
      caller takes no arrays, and the error says how to make a dataset of them;
    - `None` is an error naming `what`.

    Args:
        data: the data.
        what: its name in error messages (`"source"`, `"validation_data"`...).
        batch_size: batch arrays into this many examples; `None` refuses arrays.
        shuffle_seed: shuffle arrays (every epoch anew) with this seed before batching.

    Returns:
        Batches: a `tf.data.Dataset`, or the caller's own iterable.

    Example:

    ```python
    batches = as_dataset((images, labels), "data", batch_size=32)
    ```
    """
    if data is None:
        raise ValueError(f"{what} is None.")
    if is_image_data(data):
        return data.train
    if not isinstance(data, tuple | list | np.ndarray):
        return data
    arrays = _as_arrays(data)
    if batch_size is None:
        raise TypeError(
            f"{what} must be a batched tf.data.Dataset (or iterable) of (images, labels), got a "
            f"{type(data).__name__}. For arrays use "
            "tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)."
        )
    if arrays is None:
        raise TypeError(
            f"{what} must be a batched tf.data.Dataset, a NumPy array of images or a tuple of "
            f"NumPy arrays (images, labels); got a {type(data).__name__} of "
            f"{', '.join(sorted({type(a).__name__ for a in data})) or 'nothing'}."
        )
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle_seed is not None:
        count = len(arrays[0]) if isinstance(arrays, tuple) else len(arrays)
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size)


def _as_arrays(data: Any) -> Any:
    """`data` as a NumPy array or a tuple of arrays (what `from_tensor_slices` takes), else
    `None`. A tuple's parts may be lists (labels often are); each becomes an array."""
    if isinstance(data, np.ndarray):
        return data
    if data and all(isinstance(a, np.ndarray | list) for a in data):
        return tuple(np.asarray(a) for a in data)
    return None
