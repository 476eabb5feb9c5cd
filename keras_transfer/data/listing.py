"""The files of an image folder: the walk, what is left out and why, and the split.

`list_dataset_folder` finds the training, validation and test folders (or holds out a
stable, stratified sample: `splits`), lists one subfolder per class, and leaves out what cannot be used, each with its
reason: undecodable files, images above `max_pixels` (from the header, before decoding),
formats TensorFlow does not decode. Symbolic links are followed, but each real file is used
once: a link loop is not followed again, a second link to an image in the same class is
skipped, and a file reachable from two classes (or from two splits) is an error. Hidden
files and folders are ignored and counted in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
from collections.abc import Sequence

from keras_transfer.data import decoding
from keras_transfer.data import splits
from keras_transfer.data.decoding import IMAGE_EXTENSIONS
from keras_transfer.data.decoding import UNSUPPORTED_IMAGE_FORMATS
from keras_transfer.data.decoding import read_image_size
from keras_transfer.utils import files as fs

__all__ = [
    "TEST_DIR_NAMES",
    "TRAIN_DIR_NAMES",
    "VALIDATION_DIR_NAMES",
    "DatasetFiles",
    "FileListing",
    "drop_bad_files",
    "list_class_folder",
    "list_dataset_folder",
    "list_pairs",
    "report_listing",
    "walk_image_files",
]

logger = logging.getLogger("keras_transfer")

VALIDATION_DIR_NAMES = ("val", "validation", "valid")
TRAIN_DIR_NAMES = ("train", "training")
TEST_DIR_NAMES = ("test", "testing")


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
    if not fs.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist.")
    class_names, hidden = [], []
    for entry in fs.scandir(directory):
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
            real = fs.realpath(path)
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
    visited = {fs.realpath(top)}
    walked = []
    for root, dirs, files in fs.walk(top, followlinks=True):
        here = fs.realpath(root)
        kept = []
        for name in sorted(dirs):
            path = os.path.join(root, name)
            real = fs.realpath(path)
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
        if fs.isdir(candidate):
            return candidate
    return None


def _check_no_shared_files(first: FileListing, second: FileListing, splits: str) -> None:
    shared = sorted(set(first.real_paths) & set(second.real_paths))
    if shared:
        shown = "; ".join(
            f"{first.real_paths[real]} and {second.real_paths[real]}" for real in shared[:5]
        )
        raise ValueError(
            f"{len(shared)} file(s) are both {splits} images, in {first.directory!r} and "
            f"{second.directory!r} (through symbolic links): {shown}. An image seen in "
            "training or model selection makes the evaluation meaningless: remove the links "
            "from one of the folders."
        )


def _check_same_classes(train_classes, other_classes, train_dir, other_dir, split) -> None:
    if train_classes != other_classes:
        missing = sorted(set(train_classes) - set(other_classes))
        extra = sorted(set(other_classes) - set(train_classes))
        raise ValueError(
            f"Class folders differ between {train_dir!r} and {other_dir!r}: missing in {split} "
            f"{missing}, only in {split} {extra}. Labels are folder indices, so every split "
            "needs the same class folders (an empty folder is fine)."
        )


def _check_class_counts(files: DatasetFiles) -> None:
    """At least two classes; a warning (logged and recorded) for each class without
    training images and, for each split there is, without validation or test images."""
    class_names, where = files.class_names, files.directory
    if len(class_names) < 2:
        raise ValueError(
            f"Only one class folder ({class_names[0]!r}) in {where!r}: a classifier needs at "
            "least two classes."
        )
    checks = [
        (files.train_labels, "training", f"Their folders in {where} have no usable images."),
        (files.validation_labels, "validation", _hint(files.held_out, "validation")),
        (files.test_labels, "test", _hint(files.held_out, "test")),
    ]
    for labels, split, hint in checks:
        message = None
        if split in files.held_out and not labels:
            message = (
                f"{split}_split drew no image of {where}: there is no {split} split. Raise "
                f"{split}_split or add images (a class of 3 images or more always gives one)."
            )
        elif labels or split == "training":  # per class, for each split there is
            message = splits.missing_classes_warning(class_names, labels, split, hint)
        if message:
            logger.warning(message)
            files.warnings.append(message)


def _hint(held_out: list[str], split: str) -> str:
    if split in held_out:
        return (
            f"A class needs 3 images to be held out for {split} (4 with both a validation and "
            "a test split); add images to these classes."
        )
    return f"Put some of their images in the {split} folder's class folders."


@dataclasses.dataclass
class DatasetFiles:
    """The training, validation and test images of a dataset folder, ready to decode.

    Attributes:
        directory: the training folder (the dataset folder, or its `train/`).
        class_names: class folder names, index = label.
        train_paths: the training images.
        train_labels: their labels.
        validation_paths: the validation images (empty for no validation split).
        validation_labels: their labels.
        test_paths: the test images (empty for no test split).
        test_labels: their labels.
        skip_reasons: each left-out file -> why, the training folder's first.
        warnings: what was logged as a warning.
        held_out: the splits ("validation", "test") held out of the training folder.
    """

    directory: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    validation_paths: list[str] = dataclasses.field(default_factory=list)
    validation_labels: list[int] = dataclasses.field(default_factory=list)
    test_paths: list[str] = dataclasses.field(default_factory=list)
    test_labels: list[int] = dataclasses.field(default_factory=list)
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    held_out: list[str] = dataclasses.field(default_factory=list)


def list_dataset_folder(
    directory: str,
    *,
    validation_dir: str | os.PathLike | None = None,
    validation_split: float = 0.2,
    test_dir: str | os.PathLike | None = None,
    test_split: float = 0.0,
    seed: int = 1337,
    max_pixels: int | None = decoding.DEFAULT_MAX_PIXELS,
) -> DatasetFiles:
    """Lists the training, validation and test images of `directory`, one subfolder per
    class.

    The folders: `train/` with `val/` (or `validation/`, `valid/`) and/or `test/` (or
    `testing/`) subfolders when they exist, else `directory` itself; `validation_dir` and
    `test_dir` name other folders. A split without a folder is held out of the training
    folder: `validation_split` and `test_split` of each class, by a hash of the seed and each
    file's path relative to the training folder, so adding images moves no other image
    between splits, with at least one training image per class (the rule: `splits`). An
    empty validation or test folder is a logged warning, and then there is no such split;
    a class without images in a split is one too. What is left out and why: see the module
    docstring.

    Example:
    ```python
    files = list_dataset_folder("hymenoptera_data", validation_split=0.2, test_split=0.1)
    files.class_names, len(files.train_paths), len(files.test_paths), files.skip_reasons
    ```
    """
    decoding.check_max_pixels(max_pixels)
    train_dir, val_dir, found_test_dir = _split_folders(directory, validation_dir, test_dir)
    held_out_validation = 0.0 if val_dir else validation_split
    splits.check_fractions(held_out_validation, test_split)
    if found_test_dir and test_split:
        raise ValueError(
            f"test_split={test_split} holds out test images, but there is a test folder "
            f"{found_test_dir!r}: use one of them (test_split=0 to use the folder)."
        )
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
    added = [listing]
    if val_dir:
        added.append(_add_folder(files, added, val_dir, "validation", max_pixels))
    if found_test_dir:
        _add_folder(files, added, found_test_dir, "test", max_pixels)
    if held_out_validation or test_split:
        _hold_out(files, held_out_validation, test_split, seed)
    if not files.train_paths:
        raise ValueError(
            f"No decodable images found under {train_dir!r} ({len(listing.skipped)} skipped)."
        )
    _check_class_counts(files)
    return files


def _split_folders(
    directory: str,
    validation_dir: str | os.PathLike | None,
    test_dir: str | os.PathLike | None,
) -> tuple[str, str | None, str | None]:
    """The training folder, the validation folder and the test folder (`None`: held out,
    or none). `val/` and `test/` subfolders count only beside a `train/` one."""
    train_dir = _find_subdir(directory, TRAIN_DIR_NAMES)
    val_dir = os.fspath(validation_dir) if validation_dir else None
    test = os.fspath(test_dir) if test_dir else None
    if train_dir and not val_dir:
        val_dir = _find_subdir(directory, VALIDATION_DIR_NAMES)
    if train_dir and not test:
        test = _find_subdir(directory, TEST_DIR_NAMES)
    if not (train_dir and (val_dir or test)):
        train_dir = directory
    return train_dir, val_dir, test


def _add_folder(
    files: DatasetFiles,
    listed: list[FileListing],
    directory: str,
    split: str,
    max_pixels: int | None,
) -> FileListing:
    """Lists `directory` as the `split` ("validation" or "test") images of `files`,
    checking it shares no file with the folders `listed` before it."""
    other = list_class_folder(directory, allow_empty=True)
    if other.paths or other.skipped:
        _check_same_classes(files.class_names, other.class_names, files.directory, directory, split)
    for earlier, name in zip(listed, ("training", "validation")):
        _check_no_shared_files(earlier, other, f"{name} and {split}")
    drop_bad_files(other, max_pixels)
    files.warnings += report_listing(other)
    files.skip_reasons.update(sorted(other.skipped.items()))
    setattr(files, f"{split}_paths", other.paths)
    setattr(files, f"{split}_labels", other.labels)
    if not other.paths:
        fraction = "validation_split" if split == "validation" else "test_split"
        message = (
            f"The {split} folder {directory!r} has no images: there is no {split} split (no "
            f"{split} metrics). Put images in it, or remove it to hold out {fraction} of the "
            "training images instead."
        )
        logger.warning(message)
        files.warnings.append(message)
    return other


def _hold_out(files: DatasetFiles, validation_split: float, test_split: float, seed: int) -> None:
    """Moves `validation_split` and `test_split` of each class's training images to
    validation and test: stable under added images, stratified (`splits.assign_splits`)."""
    paths, labels = files.train_paths, files.train_labels
    keys = [fs.relpath(path, files.directory).replace(os.sep, "/") for path in paths]
    assigned = splits.assign_splits(
        keys, labels, validation_split=validation_split, test_split=test_split, seed=seed
    )
    chosen = {
        split: [i for i, s in enumerate(assigned) if s == split]
        for split in (splits.TRAIN, splits.VALIDATION, splits.TEST)
    }
    files.train_paths = [paths[i] for i in chosen[splits.TRAIN]]
    files.train_labels = [labels[i] for i in chosen[splits.TRAIN]]
    if validation_split:
        files.validation_paths = [paths[i] for i in chosen[splits.VALIDATION]]
        files.validation_labels = [labels[i] for i in chosen[splits.VALIDATION]]
    if test_split:
        files.test_paths = [paths[i] for i in chosen[splits.TEST]]
        files.test_labels = [labels[i] for i in chosen[splits.TEST]]
    files.held_out = [
        name
        for name, fraction in (("validation", validation_split), ("test", test_split))
        if fraction
    ]


def _pair_labels(pairs: list, class_names: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """The class names and the index labels of `(path, label)` pairs."""
    if any(not (isinstance(p, Sequence) and len(p) == 2) for p in pairs):
        raise ValueError("Each pair must be (path, label), e.g. ('cats/1.jpg', 'cat').")
    labels = [label for _, label in pairs]
    if all(isinstance(label, str) for label in labels):
        names = list(class_names) if class_names is not None else sorted(set(labels))
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(f"Labels {unknown[:10]} are not in class_names {names[:10]}.")
        return names, [names.index(label) for label in labels]
    if all(isinstance(label, numbers.Integral) and not isinstance(label, bool) for label in labels):
        count = max(labels) + 1 if labels else 0
        names = list(class_names) if class_names is not None else [str(i) for i in range(count)]
        if min(labels, default=0) < 0 or count > len(names):
            raise ValueError(
                f"Integer labels must index class_names (0 to {len(names) - 1}), got labels "
                f"from {min(labels)} to {max(labels)}."
            )
        return names, [int(label) for label in labels]
    raise ValueError("Labels must be all class names (str) or all class indices (int).")


def list_pairs(
    pairs: Sequence[tuple[str | os.PathLike, str | int]],
    class_names: Sequence[str] | None = None,
    *,
    validation_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 1337,
    max_pixels: int | None = decoding.DEFAULT_MAX_PIXELS,
) -> DatasetFiles:
    """`(path, label)` pairs listed as an image folder is: missing, repeated and unusable
    files left out with their reasons, then held out by the folder loader's stable,
    stratified rule, each image keyed by its normalised path.

    Labels are class names (`class_names` orders them; default: sorted), or indices into
    `class_names` (default names: `"0"`, `"1"`...).

    Example:
    ```python
    files = list_pairs([("a/1.jpg", "cat"), ("b/2.jpg", "dog")], validation_split=0.0)
    files.class_names, files.train_labels  # -> ['cat', 'dog'], [0, 1]
    ```
    """
    decoding.check_max_pixels(max_pixels)
    splits.check_fractions(validation_split, test_split)
    names, labels = _pair_labels(list(pairs), class_names)
    if len(names) < 2:
        raise ValueError(f"Only one class ({names}): a classifier needs at least two.")
    listing = FileListing("the (path, label) pairs", names)
    for number, ((path, _), label) in enumerate(zip(pairs, labels), start=1):
        path = os.fspath(path)
        extension = os.path.splitext(path)[1].lower()
        if os.path.realpath(path) in listing.real_paths:
            # Keyed by the pair: the path itself names the image that is used.
            first = listing.real_paths[os.path.realpath(path)]
            listing.skipped[f"pair {number}: {path}"] = f"listed again: the same file as {first}"
        elif not os.path.isfile(path):
            listing.skipped[path] = "no such file"
        elif extension in UNSUPPORTED_IMAGE_FORMATS:
            listing.skipped[path] = (
                f"{UNSUPPORTED_IMAGE_FORMATS[extension]} images are not decoded by TensorFlow; "
                "convert them to JPEG or PNG"
            )
        else:
            listing.real_paths[os.path.realpath(path)] = path
            listing.paths.append(path)
            listing.labels.append(label)
    drop_bad_files(listing, max_pixels)
    if not listing.paths:
        raise ValueError(
            f"No usable image among the {len(pairs)} pairs ({len(listing.skipped)} skipped)."
        )
    warnings = report_listing(listing)
    keys = [os.path.normpath(path).replace(os.sep, "/") for path in listing.paths]
    assigned = splits.assign_splits(
        keys, listing.labels, validation_split=validation_split, test_split=test_split, seed=seed
    )
    parts = [
        ([p for p, s in zip(listing.paths, assigned) if s == code],
         [label for label, s in zip(listing.labels, assigned) if s == code])
        for code in (splits.TRAIN, splits.VALIDATION, splits.TEST)
    ]  # fmt: skip
    held = [name for name, f in (("validation", validation_split), ("test", test_split)) if f]
    for split_name, (_, split_labels) in zip(splits.SPLIT_NAMES, parts):
        if split_name == "training" or split_name in held:
            hint = "Add images of these classes to the pairs."
            message = splits.missing_classes_warning(names, split_labels, split_name, hint)
            if message:
                logger.warning(message)
                warnings.append(message)
    return DatasetFiles(
        "", names, *parts[0], *parts[1], *parts[2],
        skip_reasons=dict(sorted(listing.skipped.items())), warnings=warnings, held_out=held,
    )  # fmt: skip
