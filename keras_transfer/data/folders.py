"""Loaders of image folders: a folder of class subfolders (`image_folder_dataset`) and a
folder of target-domain images in any layout (`target_image_dataset`).

Both yield batches of float32 RGB images in [0, 255]: the raw range the classifiers built by
`create_classifier` expect, since they carry their backbone's preprocessing inside. The files
are listed by `listing`, decoded by `decoding` and batched by `pipeline`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_transfer.data import imbalance
from keras_transfer.data.decoding import DEFAULT_MAX_PIXELS
from keras_transfer.data.decoding import UNSUPPORTED_IMAGE_FORMATS
from keras_transfer.data.image_data import ImageData
from keras_transfer.data.listing import DatasetFiles
from keras_transfer.data.listing import FileListing
from keras_transfer.data.listing import drop_bad_files
from keras_transfer.data.listing import list_dataset_folder
from keras_transfer.data.listing import report_listing
from keras_transfer.data.listing import walk_image_files
from keras_transfer.data.pipeline import PipelineOptions
from keras_transfer.data.pipeline import pipeline_options
from keras_transfer.utils import files as fs

__all__ = [
    "TargetImages",
    "image_folder_dataset",
    "target_image_dataset",
]

logger = logging.getLogger("keras_transfer")


def image_folder_dataset(
    directory: str | os.PathLike,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    *,
    validation_split: float = 0.2,
    validation_dir: str | os.PathLike | None = None,
    test_split: float = 0.0,
    test_dir: str | os.PathLike | None = None,
    seed: int = 1337,
    augment: Any = False,
    shuffle: bool = True,
    cache: bool | str = True,
    drop_remainder: bool = False,
    crop_fraction: float = 0.875,
    resize: str = "crop",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageData:
    """Loads a folder of images, one subfolder per class, as training, validation and test.

    The splits are the `train/`, `val/` (`validation/`, `valid/`) and `test/` (`testing/`)
    subfolders when `train/` has one of the others beside it, else `directory` (training),
    `validation_dir` and `test_dir`; a split without a folder is held out of each class's
    training images, stably (by a hash of `seed` and the file's path) and stratified (rules:
    `data.splits`). The test split is for one evaluation of the finished model. Files that
    cannot be used (undecodable, above `max_pixels`, TIFF, HEIC...) are left out with a
    logged warning, in `skipped` and `skip_reasons`; links are followed, each file used once.

    Args:
        directory: the dataset folder.
        image_size: `(height, width)` (or one int) the images are resized to.
        batch_size: batch size of the datasets.
        validation_split, test_split: fractions held out where there is no such folder; 0: none.
        validation_dir, test_dir: explicit folders with the same class subfolders.
        seed: seed of the splits and the shuffling.
        augment: `True` (flip/rotation/zoom), names as a list or comma-separated string
            (`data.augmentation_pipeline`; `crop`: a random crop; `mixup` / `cutmix` make
            soft training labels), or a Keras layer; training only.
        shuffle: shuffle the training set every epoch.
        cache: keep decoded, resized images in memory (`True`), in files with this prefix
            (a string), or decode every epoch (`False`).
        drop_remainder: drop the last partial batch (static shapes, as TPUs need).
        crop_fraction: images are resized to `image_size / crop_fraction` and the central
            `image_size` part is used, the ImageNet evaluation crop (0.875: a 2-3 point better
            MobileNet linear probe on ants-vs-bees than stretching). 1.0: the whole image.
        resize: `"crop"` keeps the aspect ratio (scale to cover, then crop the centre);
            `"squash"` stretches the whole image, like `image_dataset_from_directory`.
        max_pixels: images with more pixels (from the file header) are skipped without being
            decoded; `None` for no limit. The default, 50 megapixels, is 150 MB decoded.

    Example:
    ```python
    data = image_folder_dataset("hymenoptera_data", image_size=224, batch_size=32)
    model = create_classifier("mobilenet", len(data.class_names), class_names=data.class_names)
    ```
    """
    directory = os.fspath(directory)
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
    files = list_dataset_folder(
        directory,
        validation_dir=validation_dir,
        validation_split=validation_split,
        test_dir=test_dir,
        test_split=test_split,
        seed=seed,
        max_pixels=max_pixels,
    )
    class_counts = _training_class_counts(files)
    options.check_full_batches(len(files.train_paths), len(files.validation_paths))
    return _image_data(files, class_counts, options, directory)


def _training_class_counts(files: DatasetFiles) -> np.ndarray:
    """Training images per class; warns (and records the warning) if they are imbalanced."""
    labels = np.asarray(files.train_labels, dtype=np.int64)
    class_counts = np.bincount(labels, minlength=len(files.class_names))
    message = imbalance.imbalance_warning(class_counts, files.class_names)
    if message:
        logger.warning(message)
        files.warnings.append(message)
    return class_counts


def _image_data(
    files: DatasetFiles, class_counts: np.ndarray, options: PipelineOptions, directory: str
) -> ImageData:
    """The training, unaugmented training, validation and test datasets of `files`."""
    options = dataclasses.replace(options, num_classes=len(files.class_names))
    paths, labels = files.train_paths, files.train_labels
    train = options.build_files(paths, labels, training=True, split="train")
    # Lazy: its images are decoded (and cached) only if it is iterated.
    train_unaugmented = options.build_files(
        paths, labels, training=False, split="train_unaugmented"
    )
    validation = None
    if files.validation_paths:
        validation = options.build_files(
            files.validation_paths, files.validation_labels, training=False, split="validation"
        )
    test = None
    if files.test_paths:
        # Every test image counts: no batch of them is dropped.
        test = dataclasses.replace(options, drop_remainder=False).build_files(
            files.test_paths, files.test_labels, training=False, split="test"
        )
    logger.info(
        "Loaded %d training, %d validation and %d test images of %d classes from %s.",
        len(paths),
        len(files.validation_paths),
        len(files.test_paths),
        len(files.class_names),
        directory,
    )
    return ImageData(
        train=train,
        validation=validation,
        class_names=files.class_names,
        num_train=len(paths),
        num_validation=len(files.validation_paths),
        skipped=list(files.skip_reasons),
        image_size=options.image_size,
        train_unaugmented=train_unaugmented,
        skip_reasons=files.skip_reasons,
        warnings=files.warnings,
        class_counts=[int(c) for c in class_counts],
        test=test,
        num_test=len(files.test_paths),
    )


@dataclasses.dataclass
class TargetImages:
    """Images of the domain a model will see (for domain adaptation), labelled or not.

    Attributes:
        images: shuffled batches of images (no labels), for `fit_domain_adaptation`.
        unshuffled: the same images, unaugmented, in one fixed order (the listing shuffled
            once with `seed`, so that batches mix the classes), for `domain_distance`,
            AdaBN and SHOT.
        labelled: `(images, labels)` batches when every image sits in a subfolder named
            after one of the training classes (label = that class's index in
            `class_names`), else `None`.
        num_images: how many images.
        labelled_reason: why `labelled` is or is not there.
        skipped: each left-out file -> why.

    Example:
    ```python
    target = kt.data.target_image_dataset("photos/", data.class_names, image_size=224)
    kt.fit_domain_adaptation(model, data.train, target.images, method="dann", epochs=5)
    ```
    """

    images: tf.data.Dataset
    unshuffled: tf.data.Dataset
    labelled: tf.data.Dataset | None
    num_images: int
    labelled_reason: str
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def target_image_dataset(
    directory: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    *,
    seed: int = 1337,
    crop_fraction: float = 0.875,
    resize: str = "crop",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> TargetImages:
    """Loads every image under `directory`, in any folder layout, as target images.

    Images are found recursively (with the same rules as `image_folder_dataset`: symbolic
    links followed once, hidden files ignored, undecodable and oversized files skipped with
    a reason) and resized and centre-cropped like validation images. If every image lies
    under a first-level subfolder named like one of `class_names`, the images are also
    returned with those labels, to measure the target accuracy; they are never used for
    training.

    Args:
        directory: the target folder.
        class_names: the training classes (`ImageData.class_names`).
        image_size, batch_size, seed, crop_fraction, resize, max_pixels: as in
            `image_folder_dataset`.

    Returns:
        A `TargetImages`.
    """
    directory = os.fspath(directory)
    if not fs.isdir(directory):
        raise FileNotFoundError(
            f"Target folder {directory!r} does not exist: give a folder of images (any layout)."
        )
    options = pipeline_options(
        image_size, batch_size, crop_fraction=crop_fraction, resize=resize, seed=seed
    )
    listing = FileListing(directory, [])
    for path in walk_image_files(directory, listing):
        extension = os.path.splitext(path)[1].lower()
        if extension in UNSUPPORTED_IMAGE_FORMATS:
            listing.skipped[path] = f"{UNSUPPORTED_IMAGE_FORMATS[extension]} is not decoded"
        elif fs.realpath(path) not in listing.real_paths:
            listing.real_paths[fs.realpath(path)] = path
            listing.paths.append(path)
            listing.labels.append(-1)
    drop_bad_files(listing, max_pixels)
    if not listing.paths:
        raise ValueError(
            f"No decodable images under the target folder {directory!r} "
            f"({len(listing.skipped)} skipped): domain adaptation needs target images."
        )
    report_listing(listing)
    labels, reason = _target_labels(directory, listing.paths, list(class_names or []))
    images = options.build_files(listing.paths, labels, training=True, split="target")
    # One fixed order, but not the listing's: a folder listed class by class would give
    # batches of one class, whose statistics AdaBN would average and SHOT would train on.
    order = np.random.default_rng(seed).permutation(len(listing.paths))
    unshuffled = options.build_files(
        [listing.paths[i] for i in order],
        [labels[i] for i in order],
        training=False,
        split="target_unshuffled",
    )
    labelled = unshuffled if reason.startswith("every image") else None
    return TargetImages(
        images=images.map(lambda batch, _: batch),
        unshuffled=unshuffled.map(lambda batch, _: batch),
        labelled=labelled,
        num_images=len(listing.paths),
        labelled_reason=reason,
        skipped=dict(listing.skipped),
    )


def _target_labels(directory: str, paths: list[str], known: list[str]) -> tuple[list[int], str]:
    """Each target image's class index from its first-level subfolder (-1: none), and why
    the target images are, or are not, labelled."""
    first = [fs.relpath(p, directory).split(os.sep)[0] for p in paths]
    nested = all(os.sep in fs.relpath(p, directory) for p in paths)
    if not known:
        reason = "no training classes given"
    elif not nested:
        reason = "images lie directly in the target folder, not in class subfolders"
    elif not set(first) <= set(known):
        unknown = sorted(set(first) - set(known))
        reason = f"subfolders {unknown[:5]} are not training classes {known}"
    else:
        reason = f"every image is in a subfolder named after a training class ({known})"
    return [known.index(name) if name in known else -1 for name in first], reason
