"""The files of an image folder: the walk, what is left out and why, and the split.

`list_dataset_folder` finds the training and validation folders (or holds out a seeded
sample), lists one subfolder per class, and leaves out what cannot be used, each with its
reason: undecodable files, images above `max_pixels` (from the header, before decoding),
formats TensorFlow does not decode. Symbolic links are followed, but each real file is used
once: a link loop is not followed again, a second link to an image in the same class is
skipped, and a file reachable from two classes (or from both splits) is an error. Hidden
files and folders are ignored and counted in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Sequence

import numpy as np

from keras_transfer.data import decoding
from keras_transfer.data.decoding import IMAGE_EXTENSIONS
from keras_transfer.data.decoding import UNSUPPORTED_IMAGE_FORMATS
from keras_transfer.data.decoding import read_image_size

__all__ = [
    "TRAIN_DIR_NAMES",
    "VALIDATION_DIR_NAMES",
    "DatasetFiles",
    "FileListing",
    "drop_bad_files",
    "list_class_folder",
    "list_dataset_folder",
    "report_listing",
    "walk_image_files",
]

logger = logging.getLogger("keras_transfer")

VALIDATION_DIR_NAMES = ("val", "validation", "valid")
TRAIN_DIR_NAMES = ("train", "training")


@dataclasses.dataclass
class FileListing:
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
        """Leaves out the paths in `bad` (path -> reason), recording why."""
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


def list_class_folder(directory: str, allow_empty: bool = False) -> FileListing:
    """The images under each class subfolder of `directory` (label = sorted folder index).

    Raises `FileNotFoundError` for a missing folder, and `ValueError` for no class folders
    (unless `allow_empty`), a line break in a class name, or a file linked into two classes.
    """
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
    listing = FileListing(directory, class_names, hidden=hidden)
    owner: dict[str, tuple[int, str]] = {}  # real path -> (label, listed path)
    conflicts = []
    for label, class_name in enumerate(class_names):
        _check_class_name(class_name, directory)
        for path in walk_image_files(os.path.join(directory, class_name), listing):
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


def walk_image_files(top: str, listing: FileListing) -> list[str]:
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


def drop_bad_files(listing: FileListing, max_pixels: int | None) -> None:
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
    # Looked up on `decoding` when called, so that a test can watch which files reach it.
    undecodable = decoding.find_undecodable(listing.paths)
    listing.drop(
        {
            path: "not a decodable image (empty, truncated, corrupt or unreadable)"
            for path in undecodable
        }
    )


def report_listing(listing: FileListing) -> list[str]:
    """Logs what was left out of `listing` (warnings) and what was ignored (info), and
    returns the warnings."""
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


def _check_no_shared_files(train: FileListing, validation: FileListing) -> None:
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


@dataclasses.dataclass
class DatasetFiles:
    """The training and validation images of a dataset folder, ready to decode.

    Attributes:
        directory: the training folder (the dataset folder, or its `train/`).
        class_names: class folder names, index = label.
        train_paths: the training images.
        train_labels: their labels.
        validation_paths: the validation images (empty for no validation split).
        validation_labels: their labels.
        skip_reasons: each left-out file -> why, the training folder's first.
        warnings: what was logged as a warning.
    """

    directory: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    validation_paths: list[str] = dataclasses.field(default_factory=list)
    validation_labels: list[int] = dataclasses.field(default_factory=list)
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)


def list_dataset_folder(
    directory: str,
    *,
    validation_dir: str | os.PathLike | None = None,
    validation_split: float = 0.2,
    seed: int = 1337,
    max_pixels: int | None = decoding.DEFAULT_MAX_PIXELS,
) -> DatasetFiles:
    """Lists the training and validation images of `directory`, one subfolder per class.

    The splits are `train/` and `val/` (or `validation/`, `valid/`) subfolders when both
    exist; otherwise `directory` and `validation_dir` if given, else `directory` with a
    `validation_split` sample held out (drawn with `seed`). An empty validation folder is a
    logged warning, and then there is no validation split. What is left out and why: see the
    module docstring.

    Example:
    ```python
    files = list_dataset_folder("hymenoptera_data", validation_split=0.2)
    files.class_names, len(files.train_paths), files.skip_reasons
    ```
    """
    train_dir, val_dir = _split_folders(directory, validation_dir)
    listing = list_class_folder(train_dir)
    drop_bad_files(listing, max_pixels)
    files = DatasetFiles(
        train_dir,
        listing.class_names,
        listing.paths,
        listing.labels,
        skip_reasons=dict(sorted(listing.skipped.items())),
        warnings=report_listing(listing),
    )
    if val_dir:
        _add_validation_folder(files, listing, val_dir, max_pixels)
    elif validation_split:
        _hold_out(files, validation_split, seed)
    if not files.train_paths:
        raise ValueError(
            f"No decodable images found under {train_dir!r} ({len(listing.skipped)} skipped)."
        )
    _check_class_counts(files.class_names, files.train_labels, train_dir)
    return files


def _split_folders(
    directory: str, validation_dir: str | os.PathLike | None
) -> tuple[str, str | None]:
    """The training folder and the validation folder (`None`: hold out a sample)."""
    train_dir = _find_subdir(directory, TRAIN_DIR_NAMES)
    val_dir = os.fspath(validation_dir) if validation_dir else None
    if train_dir and not val_dir:
        val_dir = _find_subdir(directory, VALIDATION_DIR_NAMES)
    if not (train_dir and val_dir):
        train_dir = directory
    return train_dir, val_dir


def _add_validation_folder(
    files: DatasetFiles, train: FileListing, val_dir: str, max_pixels: int | None
) -> None:
    val_listing = list_class_folder(val_dir, allow_empty=True)
    if val_listing.paths or val_listing.skipped:
        _check_same_classes(files.class_names, val_listing.class_names, files.directory, val_dir)
    _check_no_shared_files(train, val_listing)
    drop_bad_files(val_listing, max_pixels)
    files.warnings += report_listing(val_listing)
    files.skip_reasons.update(sorted(val_listing.skipped.items()))
    files.validation_paths, files.validation_labels = val_listing.paths, val_listing.labels
    if not val_listing.paths:
        message = (
            f"The validation folder {val_dir!r} has no images: training runs with no "
            "validation (no validation metrics). Put images in it, or remove it to hold "
            "out validation_split of the training images instead."
        )
        logger.warning(message)
        files.warnings.append(message)


def _hold_out(files: DatasetFiles, validation_split: float, seed: int) -> None:
    """Moves a seeded `validation_split` sample of the training images to validation."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}.")
    paths, labels = files.train_paths, files.train_labels
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    held_out = set(order[: int(round(validation_split * len(paths)))])
    files.validation_paths = [p for i, p in enumerate(paths) if i in held_out]
    files.validation_labels = [label for i, label in enumerate(labels) if i in held_out]
    files.train_paths = [p for i, p in enumerate(paths) if i not in held_out]
    files.train_labels = [label for i, label in enumerate(labels) if i not in held_out]
