"""Image datasets for transfer learning: folders of images and TensorFlow Datasets.

Both loaders yield batches of `(float32 RGB images in [0, 255], integer labels)`: the raw
range the classifiers built by `create_classifier` expect, since they carry their backbone's
preprocessing inside.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger("keras_transfer")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
VALIDATION_DIR_NAMES = ("val", "validation", "valid")
TRAIN_DIR_NAMES = ("train", "training")


@dataclasses.dataclass
class ImageData:
    """Batched training and validation datasets with what is known about them.

    Attributes:
        train: `tf.data.Dataset` of `(images, labels)` batches, shuffled each epoch.
        validation: the same for validation, or `None`.
        class_names: class names, index = label.
        num_train: number of training images.
        num_validation: number of validation images.
        skipped: paths of files that were not decodable images and were left out.
        image_size: `(height, width)` of the images.
        train_unaugmented: the training images as validation sees them (central crop, no
            augmentation, no shuffle): what cached feature extraction should run on.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    class_names: list[str]
    num_train: int
    num_validation: int
    skipped: list[str] = dataclasses.field(default_factory=list)
    image_size: tuple[int, int] = (224, 224)
    train_unaugmented: tf.data.Dataset | None = None


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


def _list_class_folder(directory: str) -> tuple[list[str], list[int], list[str]]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist.")
    class_names = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_names:
        raise ValueError(
            f"No class folders in {directory!r}. Expected one subfolder per class, e.g. "
            f"{directory}/cats/*.jpg and {directory}/dogs/*.jpg."
        )
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        for root, _, files in sorted(
            os.walk(os.path.join(directory, class_name), followlinks=True)
        ):
            for filename in sorted(files):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, filename))
                    labels.append(label)
    return paths, labels, class_names


def resize_and_crop(image: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    """Resizes one image to `size` as uint8.

    `resize="crop"` keeps the aspect ratio: it scales the image to cover `size` and takes
    the central part, as ImageNet evaluation does. `resize="squash"` stretches the whole
    image to `size` (what `keras.utils.image_dataset_from_directory` does by default).
    """
    if resize == "crop":
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.reduce_max(tf.constant(size, tf.float32) / shape)
        scaled = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        image = tf.image.resize(image, scaled)
        top = (scaled[0] - size[0]) // 2
        left = (scaled[1] - size[1]) // 2
        image = image[top : top + size[0], left : left + size[1]]
    elif resize == "squash":
        image = tf.image.resize(image, size)
    else:
        raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}.")
    # uint8 keeps an in-memory cache 4x smaller than float32.
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return tf.ensure_shape(image, (*size, 3))


def _decode(path: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    # decode_image handles JPEG, PNG, GIF (first frame) and BMP; channels=3 turns
    # grayscale into RGB and drops alpha, so every image arrives as RGB.
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return resize_and_crop(image, size, resize)


def load_size(image_size: tuple[int, int], crop_fraction: float) -> tuple[int, int]:
    """The size images are cached at so that a central (or random) crop of `image_size`
    covers `crop_fraction` of each side."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
    return tuple(int(round(side / crop_fraction)) for side in image_size)


def find_undecodable(paths: Sequence[str]) -> list[str]:
    """Paths TensorFlow cannot read as images (empty, truncated, not an image, unreadable).

    Every file is decoded once with the same decoder as training, in parallel, so that a
    bad file is found before training instead of crashing it mid-epoch.
    """
    if not paths:
        return []
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), list(paths)))
    dataset = dataset.map(
        # Reduce over the pixels: a statically known output (like the shape) would let
        # tf.data prune the decode and miss the errors.
        lambda index, path: (index, tf.reduce_max(_decode(path, (8, 8), "squash"))),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    decoded = {int(index) for index, _ in dataset.as_numpy_iterator()}
    return [path for i, path in enumerate(paths) if i not in decoded]


def _drop_bad_files(paths, labels, where: str) -> tuple[list[str], list[int], list[str]]:
    bad = set(find_undecodable(paths))
    if bad:
        logger.warning(
            "Skipped %d file(s) in %s that are not decodable images: %s",
            len(bad),
            where,
            ", ".join(sorted(bad)),
        )
    kept = [(p, label) for p, label in zip(paths, labels) if p not in bad]
    return [p for p, _ in kept], [label for _, label in kept], sorted(bad)


def _find_subdir(directory: str, names: Sequence[str]) -> str | None:
    for name in names:
        candidate = os.path.join(directory, name)
        if os.path.isdir(candidate):
            return candidate
    return None


def image_folder_dataset(
    directory: str | os.PathLike,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    *,
    validation_split: float = 0.2,
    validation_dir: str | os.PathLike | None = None,
    seed: int = 1337,
    augment: Any = False,
    shuffle: bool = True,
    cache: bool | str = True,
    drop_remainder: bool = False,
    crop_fraction: float = 0.875,
    resize: str = "crop",
) -> ImageData:
    """Loads a folder of images, one subfolder per class.

    If `directory` has `train/` and `val/` (or `validation/`, `valid/`) subfolders, they are
    the two splits; otherwise `validation_dir` is used if given, else `validation_split` of
    the files (a seeded random sample) is held out. Files that are not decodable images are
    left out with a logged warning that lists them, and listed in `ImageData.skipped`.

    Args:
        directory: the dataset folder.
        image_size: `(height, width)` (or one int) the images are resized to.
        batch_size: batch size of both datasets.
        validation_split: fraction held out when there is no validation folder (0 for none).
        validation_dir: an explicit validation folder with the same class subfolders.
        seed: seed of the split and the shuffling.
        augment: `True` for flip/rotation/zoom, a list or comma-separated string of
            augmentation names (`flip`, `rotation`, `zoom`, `contrast`, `translation`,
            `crop`: a random instead of the central crop), or a Keras layer; training only.
        shuffle: shuffle the training set every epoch.
        cache: keep decoded, resized images in memory (`True`), in files with this prefix
            (a string), or decode every epoch (`False`).
        drop_remainder: drop the last partial batch (static shapes, as TPUs need).
        crop_fraction: images are resized to `image_size / crop_fraction` and the central
            `image_size` part is used, the standard ImageNet evaluation crop (0.875). On
            ants-vs-bees this gives MobileNet features a 2-3 point better linear probe than
            stretching whole images. 1.0 uses the whole (aspect-preserved) image.
        resize: `"crop"` keeps the aspect ratio (scale to cover, then crop the centre);
            `"squash"` stretches the whole image, like `image_dataset_from_directory`.

    Returns:
        An `ImageData`.

    Example:
    ```python
    data = image_folder_dataset("hymenoptera_data", image_size=224, batch_size=32)
    model = create_classifier("mobilenet", len(data.class_names), class_names=data.class_names)
    ```
    """
    directory = os.fspath(directory)
    image_size = _as_size(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    train_dir = _find_subdir(directory, TRAIN_DIR_NAMES)
    val_dir = os.fspath(validation_dir) if validation_dir else None
    if train_dir and not val_dir:
        val_dir = _find_subdir(directory, VALIDATION_DIR_NAMES)
    if not (train_dir and val_dir):
        train_dir = directory

    paths, labels, class_names = _list_class_folder(train_dir)
    paths, labels, skipped = _drop_bad_files(paths, labels, train_dir)
    if val_dir:
        val_paths, val_labels, val_classes = _list_class_folder(val_dir)
        _check_same_classes(class_names, val_classes, train_dir, val_dir)
        val_paths, val_labels, val_skipped = _drop_bad_files(val_paths, val_labels, val_dir)
        skipped += val_skipped
    elif validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}.")
        order = list(range(len(paths)))
        random.Random(seed).shuffle(order)
        num_val = int(round(validation_split * len(paths)))
        val_index = set(order[:num_val])
        val_paths = [p for i, p in enumerate(paths) if i in val_index]
        val_labels = [label for i, label in enumerate(labels) if i in val_index]
        paths = [p for i, p in enumerate(paths) if i not in val_index]
        labels = [label for i, label in enumerate(labels) if i not in val_index]
    else:
        val_paths, val_labels = [], []
    if not paths:
        raise ValueError(f"No decodable images found under {train_dir!r} ({len(skipped)} skipped).")
    _check_class_counts(class_names, labels, train_dir)
    for split, count in (("training", len(paths)), ("validation", len(val_paths))):
        if drop_remainder and 0 < count < batch_size:
            raise ValueError(
                f"batch_size={batch_size} with drop_remainder=True leaves no batch of the "
                f"{count} {split} images. Lower batch_size to at most {count}, or set "
                "drop_remainder=False."
            )

    options = PipelineOptions(
        image_size=image_size,
        batch_size=batch_size,
        crop_fraction=crop_fraction,
        resize=resize,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        cache=cache,
        drop_remainder=drop_remainder,
    )
    train = options.build(_decoded(paths, labels, options), training=True, split="train")
    # Lazy: its images are decoded (and cached) only if it is iterated.
    train_unaugmented = options.build(
        _decoded(paths, labels, options), training=False, split="train_unaugmented"
    )
    validation = None
    if val_paths:
        validation = options.build(
            _decoded(val_paths, val_labels, options), training=False, split="validation"
        )
    logger.info(
        "Loaded %d training and %d validation images of %d classes from %s.",
        len(paths),
        len(val_paths),
        len(class_names),
        directory,
    )
    return ImageData(
        train=train,
        validation=validation,
        class_names=class_names,
        num_train=len(paths),
        num_validation=len(val_paths),
        skipped=skipped,
        image_size=image_size,
        train_unaugmented=train_unaugmented,
    )


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def _check_same_classes(train_classes, val_classes, train_dir, val_dir) -> None:
    if train_classes != val_classes:
        missing = sorted(set(train_classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"Class folders differ between {train_dir!r} and {val_dir!r}: missing in validation "
            f"{missing}, only in validation {extra}. Labels are folder indices, so both splits "
            "need the same class folders (an empty folder is fine)."
        )


def _check_class_counts(class_names, labels, where) -> None:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if len(class_names) < 2:
        raise ValueError(
            f"Only one class folder ({class_names[0]!r}) in {where!r}: a classifier needs at "
            "least two classes."
        )
    if empty:
        logger.warning("Class folder(s) without images in %s: %s", where, empty)


def _decoded(paths, labels, options: PipelineOptions) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
    return dataset.map(
        lambda path, label: (_decode(path, options.load_size, options.resize), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """How decoded images become training or validation batches (shared by all loaders)."""

    image_size: tuple[int, int]
    batch_size: int
    crop_fraction: float = 0.875
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
        top = (self.load_size[0] - self.image_size[0]) // 2
        left = (self.load_size[1] - self.image_size[1]) // 2
        return image[top : top + self.image_size[0], left : left + self.image_size[1]]

    def _random_crop(self, image):
        return tf.image.random_crop(image, (*self.image_size, 3), seed=self.seed)


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
        image_size, batch_size, seed, augment, shuffle, cache, drop_remainder,
            crop_fraction, resize: as in `image_folder_dataset`.
        train_split: TFDS split string for training.
        validation_split: TFDS split string for validation, or `None`.
        data_dir: TFDS data directory.
        image_key, label_key: feature names of the image and the label.
        download: let TFDS download and prepare the dataset if it is missing.

    Returns:
        An `ImageData`.
    """
    import tensorflow_datasets as tfds

    options = PipelineOptions(
        image_size=_as_size(image_size),
        batch_size=batch_size,
        crop_fraction=crop_fraction,
        resize=resize,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        cache=cache,
        drop_remainder=drop_remainder,
    )
    splits = [train_split] + ([validation_split] if validation_split else [])
    try:
        loaded, info = tfds.load(
            name, split=splits, data_dir=data_dir, with_info=True, download=download
        )
    except Exception as error:
        raise RuntimeError(
            f"Could not load TFDS dataset {name!r} ({type(error).__name__}: {error}). Without "
            "network access, prepare it elsewhere (`tfds build` / `tfds.load`) and pass "
            "`data_dir=` pointing at the copied TFDS data directory."
        ) from error
    label_feature = info.features[label_key]
    class_names = list(getattr(label_feature, "names", None) or [])
    if not class_names:
        class_names = [str(i) for i in range(label_feature.num_classes)]

    def to_pair(example):
        image = example[image_key]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        image = resize_and_crop(image[..., :3], options.load_size, options.resize)
        return image, tf.cast(example[label_key], tf.int32)

    def prepare(dataset, split, training=False):
        dataset = dataset.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
        return options.build(dataset, training=training, split=split)

    return ImageData(
        train=prepare(loaded[0], "train", training=True),
        validation=prepare(loaded[1], "validation") if validation_split else None,
        class_names=class_names,
        num_train=_num_examples(loaded[0], info, train_split),
        num_validation=_num_examples(loaded[1], info, validation_split) if validation_split else 0,
        image_size=options.image_size,
        train_unaugmented=prepare(loaded[0], "train_unaugmented"),
    )


def _num_examples(dataset: tf.data.Dataset, info: Any, split: str) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(info.splits[split].num_examples)
