"""Image classification datasets from TensorFlow Datasets (an optional dependency).

`tfds_dataset` resizes, crops and batches TFDS images exactly like `image_folder_dataset`
does a folder's, through the same `PipelineOptions`.
"""

from __future__ import annotations

import dataclasses
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
    test_split: str | None = None,
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
        test_split: TFDS split string for the test set (e.g. `"test"`), or `None`: one
            evaluation after training, never seen by training or model selection. It must
            not overlap the other two (e.g. `"train[:10%]"` with `train_split="train[10%:]"`).
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
    named = {"train": train_split, "validation": validation_split, "test": test_split}
    named = {split: value for split, value in named.items() if value}
    _check_distinct(named)
    loaded, info = _load_splits(
        tfds, name, list(named.values()), data_dir=data_dir, download=download
    )
    return _image_data(dict(zip(named, loaded)), named, info, options, image_key, label_key)


def _image_data(
    datasets: dict[str, tf.data.Dataset],
    named: dict[str, str],
    info: Any,
    options: PipelineOptions,
    image_key: str,
    label_key: str,
) -> ImageData:
    """The `ImageData` of the loaded `datasets` (role -> dataset; `named`: role -> split)."""
    class_names = _class_names(info, label_key)
    options = dataclasses.replace(options, num_classes=len(class_names))
    to_pair = _example_to_pair(image_key, label_key, options)

    def prepared(split, options=options):
        if split not in datasets:
            return None
        return _prepare(datasets[split], to_pair, options, split)

    def count(split):
        return _num_examples(datasets[split], info, named[split]) if split in datasets else 0

    return ImageData(
        train=_prepare(datasets["train"], to_pair, options, "train", training=True),
        validation=prepared("validation"),
        class_names=class_names,
        num_train=count("train"),
        num_validation=count("validation"),
        image_size=options.image_size,
        train_unaugmented=_prepare(datasets["train"], to_pair, options, "train_unaugmented"),
        # Every test example counts: no batch of them is dropped.
        test=prepared("test", dataclasses.replace(options, drop_remainder=False)),
        num_test=count("test"),
    )


def _check_distinct(named: dict[str, str]) -> None:
    """The same TFDS split string for two roles (e.g. validation and test) is an error."""
    seen: dict[str, str] = {}
    for role, split in named.items():
        if split in seen:
            raise ValueError(
                f"The {seen[split]} and {role} splits are both {split!r}: a {role} set that "
                "was also trained or selected on says nothing new. Give them different splits."
            )
        seen[split] = role


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
