"""Image classification datasets from TensorFlow Datasets (an optional dependency).

`tfds_dataset` resizes, crops and batches TFDS images exactly like `image_folder_dataset`
does a folder's, through the same `PipelineOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from keras_transfer.data.decoding import resize_and_crop
from keras_transfer.data.image_data import ImageData
from keras_transfer.data.pipeline import PipelineOptions
from keras_transfer.data.pipeline import pipeline_options

__all__ = [
    "tfds_dataset",
]


def tfds_dataset(
    name: str,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    *,
    train_split: str = "train[:80%]",
    validation_split: str | None = "train[80%:]",
    data_dir: str | None = None,
    seed: int = 1337,
    augment: Any = False,
    shuffle: bool = True,
    cache: bool | str = True,
    drop_remainder: bool = False,
    crop_fraction: float = 0.875,
    resize: str = "crop",
    image_key: str = "image",
    label_key: str = "label",
    download: bool = True,
) -> ImageData:
    """Loads an image classification dataset from TensorFlow Datasets.

    Images are resized, cropped and batched exactly like `image_folder_dataset`. With no
    network, prepare the dataset where it can be downloaded and point `data_dir` at a copy.

    Args:
        name: TFDS name, e.g. `"tf_flowers"`.
        image_size, batch_size, seed, augment, shuffle: as in `image_folder_dataset`.
        cache, drop_remainder, crop_fraction, resize: as in `image_folder_dataset`.
        train_split: TFDS split string for training.
        validation_split: TFDS split string for validation, or `None`.
        data_dir: TFDS data directory.
        image_key, label_key: feature names of the image and the label.
        download: let TFDS download and prepare the dataset if it is missing.

    Returns:
        An `ImageData`.

    Example:
    ```python
    data = tfds_dataset("tf_flowers", image_size=224, batch_size=32, augment=True)
    ```
    """
    tfds = _import_tfds()
    options = pipeline_options(
        image_size,
        batch_size,
        crop_fraction=crop_fraction,
        resize=resize,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        cache=cache,
        drop_remainder=drop_remainder,
    )
    splits = [train_split] + ([validation_split] if validation_split else [])
    loaded, info = _load_splits(tfds, name, splits, data_dir=data_dir, download=download)
    to_pair = _example_to_pair(image_key, label_key, options)
    return ImageData(
        train=_prepare(loaded[0], to_pair, options, "train", training=True),
        validation=_prepare(loaded[1], to_pair, options, "validation")
        if validation_split
        else None,
        class_names=_class_names(info, label_key),
        num_train=_num_examples(loaded[0], info, train_split),
        num_validation=_num_examples(loaded[1], info, validation_split) if validation_split else 0,
        image_size=options.image_size,
        train_unaugmented=_prepare(loaded[0], to_pair, options, "train_unaugmented"),
    )


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            "tfds_dataset needs TensorFlow Datasets, an optional dependency: "
            'pip install "keras-transfer[tfds]" (or pip install tensorflow-datasets).'
        ) from None
    return tfds


def _load_splits(
    tfds: Any, name: str, splits: list[str], *, data_dir: str | None, download: bool
) -> tuple[list[tf.data.Dataset], Any]:
    """The datasets of `splits` and the dataset's info, or an error that says what to do."""
    try:
        return tfds.load(name, split=splits, data_dir=data_dir, with_info=True, download=download)
    except Exception as error:
        raise RuntimeError(
            f"Could not load TFDS dataset {name!r} ({type(error).__name__}: {error}). Without "
            "network access, prepare it elsewhere (`tfds build` / `tfds.load`) and pass "
            "`data_dir=` pointing at the copied TFDS data directory."
        ) from error


def _class_names(info: Any, label_key: str) -> list[str]:
    """The label feature's names, else its indices as strings."""
    label_feature = info.features[label_key]
    class_names = list(getattr(label_feature, "names", None) or [])
    if not class_names:
        class_names = [str(i) for i in range(label_feature.num_classes)]
    return class_names


def _example_to_pair(
    image_key: str, label_key: str, options: PipelineOptions
) -> Callable[[dict[str, tf.Tensor]], tuple[tf.Tensor, tf.Tensor]]:
    """A map function from a TFDS example to `(uint8 RGB image of load_size, int32 label)`."""

    def to_pair(example):
        image = example[image_key]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        image = resize_and_crop(image[..., :3], options.load_size, options.resize)
        return image, tf.cast(example[label_key], tf.int32)

    return to_pair


def _prepare(
    dataset: tf.data.Dataset,
    to_pair: Callable,
    options: PipelineOptions,
    split: str,
    training: bool = False,
) -> tf.data.Dataset:
    dataset = dataset.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    return options.build(dataset, training=training, split=split)


def _num_examples(dataset: tf.data.Dataset, info: Any, split: str) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(info.splits[split].num_examples)
