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
import struct
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.data import imbalance

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageData",
    "PipelineOptions",
    "TargetImages",
    "augmentation_names",
    "augmentation_pipeline",
    "check_batch_size",
    "check_image_size",
    "decode_and_resize",
    "find_undecodable",
    "image_folder_dataset",
    "load_size",
    "no_fit_shuffle",
    "read_image_size",
    "resize_and_crop",
    "target_image_dataset",
    "tfds_dataset",
]

logger = logging.getLogger("keras_transfer")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Image formats TensorFlow's decoder does not read: reported by name instead of ignored.
UNSUPPORTED_IMAGE_FORMATS = {
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jp2": "JPEG 2000",
    ".psd": "Photoshop",
    ".ico": "ICO",
    ".svg": "SVG",
}
DEFAULT_MAX_PIXELS = 50_000_000
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


@dataclasses.dataclass
class _Listing:
    """The images of one split folder, and what was left out of it and why."""

    directory: str
    class_names: list[str]
    paths: list[str] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> reason
    real_paths: dict[str, str] = dataclasses.field(default_factory=dict)  # real -> listed
    hidden: list[str] = dataclasses.field(default_factory=list)
    other: list[str] = dataclasses.field(default_factory=list)
    loops: list[str] = dataclasses.field(default_factory=list)

    def drop(self, bad: dict[str, str]) -> None:
        kept = [(p, label) for p, label in zip(self.paths, self.labels) if p not in bad]
        self.paths = [p for p, _ in kept]
        self.labels = [label for _, label in kept]
        self.skipped.update(bad)


def _check_class_name(name: str, directory: str) -> None:
    if name.splitlines() != [name]:
        raise ValueError(
            f"Class folder {name!r} in {directory!r} has a line break in its name: labels.txt "
            "holds one class name per line, so line i would no longer name output i. Rename "
            "the folder without line breaks."
        )


def _list_class_folder(directory: str, allow_empty: bool = False) -> _Listing:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist.")
    class_names, hidden = [], []
    for entry in os.scandir(directory):
        if entry.is_dir():
            if entry.name.startswith("."):
                hidden.append(entry.path)
            else:
                class_names.append(entry.name)
    class_names.sort()
    if not class_names and not allow_empty:
        raise ValueError(
            f"No class folders in {directory!r}. Expected one subfolder per class, e.g. "
            f"{directory}/cats/*.jpg and {directory}/dogs/*.jpg."
        )
    listing = _Listing(directory, class_names, hidden=hidden)
    owner: dict[str, tuple[int, str]] = {}  # real path -> (label, listed path)
    conflicts = []
    for label, class_name in enumerate(class_names):
        _check_class_name(class_name, directory)
        for path in _walk_class(os.path.join(directory, class_name), listing):
            real = os.path.realpath(path)
            if real in owner:
                first_label, first = owner[real]
                if first_label != label:
                    conflicts.append((first_label, first, label, path))
                else:
                    listing.skipped[path] = f"same file as {first} (a symbolic link)"
                continue
            owner[real] = (label, path)
            extension = os.path.splitext(path)[1].lower()
            if extension in UNSUPPORTED_IMAGE_FORMATS:
                listing.skipped[path] = (
                    f"{UNSUPPORTED_IMAGE_FORMATS[extension]} images are not decoded by "
                    "TensorFlow; convert them to JPEG or PNG"
                )
            else:
                listing.paths.append(path)
                listing.labels.append(label)
                listing.real_paths[real] = path
    if conflicts:
        shown = "; ".join(
            f"{class_names[a]!r}: {first} and {class_names[b]!r}: {second}"
            for a, first, b, second in conflicts[:5]
        )
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise ValueError(
            f"{len(conflicts)} file(s) in {directory!r} belong to two classes through symbolic "
            f"links, so their label is ambiguous: {shown}{more}. Remove the link from the "
            "class the image does not belong to."
        )
    return listing


def _walk_class(top: str, listing: _Listing) -> list[str]:
    """The image files under one class folder, following symbolic links but not loops."""
    found = []
    visited = {os.path.realpath(top)}
    walked = []
    for root, dirs, files in os.walk(top, followlinks=True):
        here = os.path.realpath(root)
        kept = []
        for name in sorted(dirs):
            path = os.path.join(root, name)
            real = os.path.realpath(path)
            if name.startswith("."):
                listing.hidden.append(path)
            elif real in visited or here == real or here.startswith(real + os.sep):
                # A link to a folder that contains it (`loop -> .`), or a second way into a
                # folder already listed: following it would list the same images again.
                listing.loops.append(path)
            else:
                visited.add(real)
                kept.append(name)
        dirs[:] = kept
        walked.append((root, files))
    for root, files in sorted(walked):
        for filename in sorted(files):
            path = os.path.join(root, filename)
            if filename.startswith("."):
                listing.hidden.append(path)
            elif filename.lower().endswith(IMAGE_EXTENSIONS) or filename.lower().endswith(
                tuple(UNSUPPORTED_IMAGE_FORMATS)
            ):
                found.append(path)
            else:
                listing.other.append(path)
    return found


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


def decode_and_resize(
    path: tf.Tensor, size: tuple[int, int], resize: str = "crop", scaled_jpeg: bool = True
) -> tf.Tensor:
    """Reads, decodes and resizes one image file to `size` (see `resize_and_crop`).

    With `scaled_jpeg`, a JPEG at least twice `size` on both sides is decoded at 1/2, 1/4 or
    1/8 of its size (`tf.io.decode_jpeg(ratio=...)`, the largest ratio that keeps it at least
    `size`): libjpeg then skips most of the inverse DCT work, and the smaller image resizes
    with less aliasing. Measured (benchmarks/throughput.py, `large_jpeg_decode`): ants-vs-bees
    photos (median 500x375) at 128 px, 377 of 397 decoded at ratio 2: 1.32x the images/s
    (noisy, loaded machine) and a linear-probe validation accuracy of 0.889 vs 0.895 (one
    image of 153). Other
    formats, and JPEGs smaller than twice `size`, are decoded in full.
    """
    contents = tf.io.read_file(path)
    if not scaled_jpeg:
        return resize_and_crop(_decode_full(contents), size, resize)

    def scaled():
        shape = tf.image.extract_jpeg_shape(contents)
        # The largest ratio that keeps both sides at least `size`: 0 -> 1, 1 -> 2, 2 -> 4, 3 -> 8.
        fits = tf.minimum(shape[0] // size[0], shape[1] // size[1])
        branch = tf.reduce_sum(tf.cast(fits >= tf.constant([2, 4, 8]), tf.int32))
        return tf.switch_case(
            branch,
            [
                lambda ratio=ratio: tf.io.decode_jpeg(contents, channels=3, ratio=ratio)
                for ratio in (1, 2, 4, 8)
            ],
        )

    image = tf.cond(tf.io.is_jpeg(contents), scaled, lambda: _decode_full(contents))
    return resize_and_crop(image, size, resize)


def _decode_full(contents: tf.Tensor) -> tf.Tensor:
    # decode_image handles JPEG, PNG, GIF (first frame) and BMP; channels=3 turns
    # grayscale into RGB and drops alpha, so every image arrives as RGB.
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape((None, None, 3))
    return image


def _decode(path: tf.Tensor, size: tuple[int, int], resize: str = "crop") -> tf.Tensor:
    return decode_and_resize(path, size, resize)


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
        lambda index, path: (
            index,
            # Full decode: every part of the file is read, whatever its size.
            tf.reduce_max(decode_and_resize(path, (8, 8), "squash", scaled_jpeg=False)),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    decoded = {int(index) for index, _ in dataset.as_numpy_iterator()}
    return [path for i, path in enumerate(paths) if i not in decoded]


def _drop_bad_files(listing: _Listing, max_pixels: int | None) -> None:
    """Leaves out images above `max_pixels` (by their header, before any decoding) and
    files TensorFlow cannot decode, recording each with its reason."""
    if max_pixels is not None:
        too_large = {}
        for path in listing.paths:
            size = read_image_size(path)
            if size is not None and size[0] * size[1] > max_pixels:
                pixels = size[0] * size[1]
                too_large[path] = (
                    f"{size[1]}x{size[0]} pixels ({pixels / 1e6:.1f} megapixels, "
                    f"{3 * pixels / 1e9:.1f} GB decoded) is above max_pixels={max_pixels}"
                )
        listing.drop(too_large)
    undecodable = find_undecodable(listing.paths)
    listing.drop(
        {
            path: "not a decodable image (empty, truncated, corrupt or unreadable)"
            for path in undecodable
        }
    )


def _report(listing: _Listing) -> list[str]:
    """Logs what was left out of `listing` and returns the warnings."""
    warnings = []
    where = listing.directory
    if listing.skipped:
        message = f"Skipped {len(listing.skipped)} file(s) in {where}: " + "; ".join(
            f"{path} ({reason})" for path, reason in sorted(listing.skipped.items())
        )
        logger.warning(message)
        warnings.append(message)
    if listing.loops:
        message = (
            f"Did not follow {len(listing.loops)} symbolic link(s) in {where} that lead back "
            "into a folder already listed, so each image is used once: "
            + ", ".join(listing.loops[:10])
            + (" ..." if len(listing.loops) > 10 else "")
        )
        logger.warning(message)
        warnings.append(message)
    if listing.hidden:
        logger.info(
            "Ignored %d hidden file(s) or folder(s) (names starting with '.') in %s.",
            len(listing.hidden),
            where,
        )
    if listing.other:
        extensions = sorted(
            {os.path.splitext(p)[1].lower() or "no extension" for p in listing.other}
        )
        logger.info(
            "Ignored %d other file(s) in %s that are not images by their name (%s).",
            len(listing.other),
            where,
            ", ".join(extensions),
        )
    return warnings


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageData:
    """Loads a folder of images, one subfolder per class.

    If `directory` has `train/` and `val/` (or `validation/`, `valid/`) subfolders, they are
    the two splits; otherwise `validation_dir` is used if given, else `validation_split` of
    the files (a seeded random sample) is held out. An empty validation folder is a logged
    warning, and the data then has no validation split.

    JPEG, PNG, GIF, BMP and WebP files are read. Files that cannot be used are left out with
    a logged warning naming each one and why, and listed in `ImageData.skipped` and
    `ImageData.skip_reasons`: undecodable files, images above `max_pixels` (found from the
    file header, before any decoding: a decompression bomb costs nothing), and image formats
    TensorFlow does not decode (TIFF, HEIC, ...). Symbolic links are followed, but each real
    file is used once: a link loop is not followed again, a second link to an image in the
    same class is skipped, and a file reachable from two classes (or from both the training
    and the validation folder) is an error. Hidden files and folders (`.thumbnails/`,
    `.DS_Store`) are ignored and counted in the log.

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
        max_pixels: images with more pixels (height x width, from the file header) are
            skipped without being decoded; `None` for no limit. The default, 50 megapixels,
            is 150 MB decoded.

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
    check_batch_size(batch_size)
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}.")
    train_dir = _find_subdir(directory, TRAIN_DIR_NAMES)
    val_dir = os.fspath(validation_dir) if validation_dir else None
    if train_dir and not val_dir:
        val_dir = _find_subdir(directory, VALIDATION_DIR_NAMES)
    if not (train_dir and val_dir):
        train_dir = directory

    listing = _list_class_folder(train_dir)
    _drop_bad_files(listing, max_pixels)
    paths, labels, class_names = listing.paths, listing.labels, listing.class_names
    warnings = _report(listing)
    skip_reasons = dict(sorted(listing.skipped.items()))
    if val_dir:
        val_listing = _list_class_folder(val_dir, allow_empty=True)
        if val_listing.paths or val_listing.skipped:
            _check_same_classes(class_names, val_listing.class_names, train_dir, val_dir)
        _check_no_shared_files(listing, val_listing)
        _drop_bad_files(val_listing, max_pixels)
        warnings += _report(val_listing)
        skip_reasons.update(sorted(val_listing.skipped.items()))
        val_paths, val_labels = val_listing.paths, val_listing.labels
        if not val_paths:
            message = (
                f"The validation folder {val_dir!r} has no images: training runs with no "
                "validation (no validation metrics). Put images in it, or remove it to hold "
                "out validation_split of the training images instead."
            )
            logger.warning(message)
            warnings.append(message)
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
        raise ValueError(
            f"No decodable images found under {train_dir!r} ({len(listing.skipped)} skipped)."
        )
    _check_class_counts(class_names, labels, train_dir)
    class_counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    message = imbalance.imbalance_warning(class_counts, class_names)
    if message:
        logger.warning(message)
        warnings.append(message)
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
        skipped=list(skip_reasons),
        image_size=image_size,
        train_unaugmented=train_unaugmented,
        skip_reasons=skip_reasons,
        warnings=warnings,
        class_counts=[int(c) for c in class_counts],
    )


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    check_image_size(image_size)
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_image_size(image_size: Any, name: str = "image_size") -> None:
    """Raises a `ValueError` naming `name` unless `image_size` is a positive int or a
    `(height, width)` pair of positive ints."""
    sizes = [image_size] if _is_int(image_size) else image_size
    if isinstance(image_size, str | bytes) or not (
        _is_int(image_size)
        or (isinstance(sizes, Sequence) and len(sizes) == 2 and all(_is_int(s) for s in sizes))
    ):
        raise ValueError(
            f"{name} must be an int or a (height, width) pair of ints, got {image_size!r}."
        )
    if any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be positive, got {image_size!r}.")


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """Raises a `ValueError` naming `name` unless `batch_size` is a positive integer."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"{name} must be a positive integer, got {batch_size!r}.")


def _check_no_shared_files(train: _Listing, validation: _Listing) -> None:
    shared = sorted(set(train.real_paths) & set(validation.real_paths))
    if shared:
        shown = "; ".join(
            f"{train.real_paths[real]} and {validation.real_paths[real]}" for real in shared[:5]
        )
        raise ValueError(
            f"{len(shared)} file(s) are both in the training folder {train.directory!r} and "
            f"the validation folder {validation.directory!r} (through symbolic links): "
            f"{shown}. Validation images seen in training make the validation metrics "
            "meaningless: remove the links from one of the folders."
        )


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
        image_size, batch_size, seed, augment, shuffle: as in `image_folder_dataset`.
        cache, drop_remainder, crop_fraction, resize: as in `image_folder_dataset`.
        train_split: TFDS split string for training.
        validation_split: TFDS split string for validation, or `None`.
        data_dir: TFDS data directory.
        image_key, label_key: feature names of the image and the label.
        download: let TFDS download and prepare the dataset if it is missing.

    Returns:
        An `ImageData`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(
            "tfds_dataset needs TensorFlow Datasets, an optional dependency: "
            'pip install "keras-transfer[tfds]" (or pip install tensorflow-datasets).'
        ) from None

    check_batch_size(batch_size)
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


# ---------------------------------------------------------------------------------------
# Image sizes from file headers
# ---------------------------------------------------------------------------------------

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4 (DHT),
# C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """`(height, width)` of a JPEG, PNG, GIF, BMP or WebP file, read from its header.

    Only the first bytes are read (a JPEG's markers up to its frame header), never the
    pixels, so this is cheap on any file, including one that would decode to gigabytes.
    The format is taken from the content, not the file name. `None` when the file cannot
    be read or is not one of these formats.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(f)
            return _header_size(head)
    except OSError:
        return None


def _header_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    if head[:6] in (b"GIF87a", b"GIF89a"):
        # The logical screen: TensorFlow decodes every frame onto a canvas of this size.
        width, height = struct.unpack("<HH", head[6:10])
        return height, width
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            width, height = struct.unpack("<HH", head[18:22])
        else:
            width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)  # a negative height means top-down rows
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", head[26:30])
            return height & 0x3FFF, width & 0x3FFF
        if chunk == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":
            width = int.from_bytes(head[24:27], "little") + 1
            height = int.from_bytes(head[27:30], "little") + 1
            return height, width
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    for _ in range(1000):  # segments before the frame header: APPn, DQT, COM, ...
        if f.read(1) != b"\xff":
            return None
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            continue
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if marker in _JPEG_FRAME_MARKERS:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            # A height of 0 is defined later by a DNL marker: unknown here.
            return (height, width) if height else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / scan before any frame
            return None
        f.seek(length - 2, os.SEEK_CUR)
    return None


@dataclasses.dataclass
class TargetImages:
    """Images of the domain a model will see (for domain adaptation), labelled or not.

    Attributes:
        images: shuffled batches of images (no labels), for `fit_domain_adaptation`.
        unshuffled: the same images in a fixed order, for `domain_distance`.
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
        image_size, batch_size, seed, crop_fraction, max_pixels: as in
            `image_folder_dataset`.

    Returns:
        A `TargetImages`.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Target folder {directory!r} does not exist: give a folder of images (any layout)."
        )
    image_size = _as_size(image_size)
    check_batch_size(batch_size)
    listing = _Listing(directory, [])
    for path in _walk_class(directory, listing):
        extension = os.path.splitext(path)[1].lower()
        if extension in UNSUPPORTED_IMAGE_FORMATS:
            listing.skipped[path] = f"{UNSUPPORTED_IMAGE_FORMATS[extension]} is not decoded"
        elif os.path.realpath(path) not in listing.real_paths:
            listing.real_paths[os.path.realpath(path)] = path
            listing.paths.append(path)
            listing.labels.append(-1)
    _drop_bad_files(listing, max_pixels)
    if not listing.paths:
        raise ValueError(
            f"No decodable images under the target folder {directory!r} "
            f"({len(listing.skipped)} skipped): domain adaptation needs target images."
        )
    _report(listing)
    first = [os.path.relpath(p, directory).split(os.sep)[0] for p in listing.paths]
    nested = all(os.sep in os.path.relpath(p, directory) for p in listing.paths)
    known = list(class_names or [])
    if not known:
        reason = "no training classes given"
    elif not nested:
        reason = "images lie directly in the target folder, not in class subfolders"
    elif not set(first) <= set(known):
        unknown = sorted(set(first) - set(known))
        reason = f"subfolders {unknown[:5]} are not training classes {known}"
    else:
        reason = f"every image is in a subfolder named after a training class ({known})"
    labels = [known.index(name) if name in known else -1 for name in first]
    options = PipelineOptions(
        image_size=image_size, batch_size=batch_size, crop_fraction=crop_fraction, seed=seed
    )
    decoded = _decoded(listing.paths, labels, options)
    images = options.build(decoded, training=True, split="target")
    unshuffled = options.build(decoded, training=False, split="target_unshuffled")
    labelled = unshuffled if reason.startswith("every image") else None
    return TargetImages(
        images=images.map(lambda batch, _: batch),
        unshuffled=unshuffled.map(lambda batch, _: batch),
        labelled=labelled,
        num_images=len(listing.paths),
        labelled_reason=reason,
        skipped=dict(listing.skipped),
    )


def no_fit_shuffle(train_data: Any, fit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`fit_kwargs` with `shuffle=False` when `train_data` is a `tf.data.Dataset` and no
    `shuffle` is given: a dataset shuffles itself, and Keras ignores (and warns about) fit's
    default `shuffle=True` for one."""
    if isinstance(train_data, tf.data.Dataset):
        fit_kwargs.setdefault("shuffle", False)
    return fit_kwargs
