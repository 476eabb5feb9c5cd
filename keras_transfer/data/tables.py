"""Images labelled by a table: a CSV file (or a pandas DataFrame) with one row per image.

`image_table_dataset` reads a table whose path column holds each image's path relative to
`image_root` and whose label columns hold its labels, for three tasks:

- `"multiclass"`: one label column of class names (one class per image);
- `"multilabel"`: several columns of 0/1, one per label, named after the labels (the
  primary form: `path,cat,dog,outdoor`); or one column of names separated by
  `label_delimiter` (`path,labels` with `cat;outdoor`). An image may have no label (all 0s);
  an empty cell of the one-column form is an error, as it often means a row was not filled;
- `"regression"`: one or more columns of numbers (float targets).

Rows that cannot be used are named by their row number: row 1 is the first data row (the
header is not counted; in a CSV file the line number is given too, which is the row number a
spreadsheet shows). The problems: an empty or absolute path, a path leading out of
`image_root` (`..`), a path listed twice, a missing file, an empty or unknown label, a
non-numeric or non-finite target. By default they are an error listing them all (the first
20 shown); `bad_rows="skip"` leaves them out, counted and logged. Files that exist but cannot
be used (undecodable, above `max_pixels`, TIFF...) are skipped with a logged warning, as
`image_folder_dataset` does.

The images are decoded, resized, cached and batched by the same pipeline as image folders,
and split by the same stable rule (`splits`): the key of each image is its normalised path,
so appending rows moves no earlier image between splits. Multiclass splits are stratified by
class, multilabel ones by each image's rarest label, regression ones are not stratified.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import posixpath
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_transfer.data import decoding
from keras_transfer.data import imbalance
from keras_transfer.data import splits
from keras_transfer.data.decoding import UNSUPPORTED_IMAGE_FORMATS
from keras_transfer.data.image_data import ImageData
from keras_transfer.data.listing import DatasetFiles
from keras_transfer.data.listing import FileListing
from keras_transfer.data.listing import drop_bad_files
from keras_transfer.data.pipeline import PipelineOptions
from keras_transfer.data.pipeline import pipeline_options
from keras_transfer.data.pipeline import uses_label_mixing
from keras_transfer.utils import files as fs

__all__ = [
    "BAD_ROW_POLICIES",
    "TABLE_TASKS",
    "BadRowsError",
    "LabelTable",
    "image_table_dataset",
    "list_table_files",
    "read_label_table",
]

logger = logging.getLogger("keras_transfer")

TABLE_TASKS = ("multiclass", "multilabel", "regression")
BAD_ROW_POLICIES = ("error", "skip")
_SHOWN_ROWS = 20
_TRUE, _FALSE = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no")


class BadRowsError(ValueError):
    """Rows of a label table that cannot be used.

    Attributes:
        rows: `(row number, reason)` of every bad row, row 1 being the first data row.
    """

    def __init__(self, message: str, rows: list[tuple[int, str]]):
        super().__init__(message)
        self.rows = rows


@dataclasses.dataclass
class LabelTable:
    """The cells of a label table, as stripped strings (an empty or missing cell: `""`).

    Attributes:
        columns: the header.
        rows: one dict per data row, column -> cell.
        lines: the CSV line each row starts on (`None` for a DataFrame).
        source: how messages name the table.
    """

    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int] | None
    source: str

    def where(self, index: int) -> str:
        """How messages name the row of 0-based `index`: `row 3 (line 4)` in a CSV file."""
        line = f" (line {self.lines[index]})" if self.lines else ""
        return f"row {index + 1}{line}"


def _cell(value: Any) -> str:
    """A cell as a stripped string; `None`, NaN and pandas' missing values are `""`."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def read_label_table(table: Any) -> LabelTable:
    """The cells of `table`: the path of a CSV file (read with the `csv` module; UTF-8, a
    header row first) or a pandas DataFrame (pandas is not needed otherwise).

    Example:
    ```python
    table = read_label_table("labels.csv")
    table.columns, len(table.rows), table.where(0)  # -> ..., ..., 'row 1 (line 2)'
    ```
    """
    if isinstance(table, str | os.PathLike):
        path = os.fspath(table)
        if not fs.isfile(path):
            raise FileNotFoundError(f"Label table {path!r} is not a file: give a CSV file.")
        with fs.open_file(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows, lines, previous = [], [], reader.line_num
            for record in reader:
                # A record starts after the previous one ends (a quoted cell may span lines).
                start, previous = previous + 1, reader.line_num
                if any(cell.strip() for cell in record):  # blank lines are no rows
                    rows.append(record)
                    lines.append(start)
        if not header:
            raise ValueError(f"Label table {path!r} is empty: it needs a header row.")
        columns = [name.strip() for name in header]
        cells = [{c: _cell(v) for c, v in zip(columns, record)} for record in rows]
        return LabelTable(columns, cells, lines, repr(path))
    if hasattr(table, "columns") and hasattr(table, "to_dict"):
        columns = [str(c).strip() for c in table.columns]
        records = table.to_dict("records")
        cells = [{str(c).strip(): _cell(v) for c, v in r.items()} for r in records]
        return LabelTable(columns, cells, None, "the DataFrame")
    raise TypeError(
        f"The label table must be the path of a CSV file or a pandas DataFrame, got a "
        f"{type(table).__name__}."
    )


def _check_columns(table: LabelTable, path_column: str, label_columns: list[str]) -> None:
    # Unnamed columns (trailing commas) may repeat: no cell of theirs is read.
    duplicated = sorted({c for c in table.columns if c and table.columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"Label table {table.source} has duplicate columns {duplicated}.")
    missing = [c for c in [path_column, *label_columns] if c not in table.columns]
    if missing:
        raise ValueError(
            f"Label table {table.source} has no column(s) {missing}; its columns are "
            f"{table.columns}. Pass path_column= and label_columns= (--path_column, "
            "--label_columns) to name the image path and label columns."
        )
    if not label_columns:
        raise ValueError("label_columns is empty: name at least one label column.")
    if path_column in label_columns:
        raise ValueError(f"Column {path_column!r} cannot be both the path and a label column.")


def _file_check(image_root: str) -> Callable[[str], bool]:
    """Whether a path under `image_root` is a file: one question per path on a local disk;
    on a remote file system, where each question is a request, one listing of the folder."""
    if not fs.is_remote(image_root):
        return fs.isfile
    found = {os.path.join(root, name) for root, _, names in fs.walk(image_root) for name in names}
    return found.__contains__


def _check_path(cell: str, image_root: str, seen: dict[str, int], index: int, table, isfile):
    """`(key, None)` for a usable path (key: the normalised relative path), else
    `(None, reason)`; records the key of each well-formed path in `seen` (key -> row index),
    so that a later row of the same image is a duplicate, whatever the first row's fate.
    `isfile(path)` says whether a file exists (`_file_check`)."""
    if not cell:
        return None, "empty path cell"
    relative = cell.replace("\\", "/")
    if os.path.isabs(cell) or relative.startswith("/") or (cell[:1].isalpha() and cell[1:2] == ":"):
        return None, f"absolute path {cell!r}: paths are relative to image_root"
    key = posixpath.normpath(relative)
    if key == ".." or key.startswith("../"):
        return None, f"path {cell!r} leads out of image_root"
    if key in seen:
        return None, f"{cell!r} is listed again: the same image as {table.where(seen[key])}"
    seen[key] = index
    if not isfile(os.path.join(image_root, *key.split("/"))):
        return None, f"no file {cell!r} under image_root"
    return key, None


def _parse_flag(cell: str) -> float | None:
    lowered = cell.lower()
    return 1.0 if lowered in _TRUE else 0.0 if lowered in _FALSE else None


def _parse_labels(row: dict[str, str], task: str, label_columns: list[str], known, delimiter):
    """`(labels, None)`: the labels of one row (a class name, a list of names, or a list of
    floats); or `(None, why there are none)`."""
    if task == "multiclass":
        name = row.get(label_columns[0], "")
        if not name:
            return None, f"empty label cell {label_columns[0]!r}"
        if known is not None and name not in known:
            return None, f"unknown class {name!r} (classes: {sorted(known)[:10]})"
        return name, None
    if task == "multilabel" and len(label_columns) == 1:
        cell = row.get(label_columns[0], "")
        names = [n.strip() for n in cell.split(delimiter) if n.strip()]
        if not names:
            return None, f"empty label cell {label_columns[0]!r}"
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            return None, f"unknown label(s) {unknown} (labels: {sorted(known)[:10]})"
        return sorted(set(names)), None
    values = []
    for column in label_columns:
        cell = row.get(column, "")
        if not cell:
            return None, f"empty label cell {column!r}"
        if task == "multilabel":
            value = _parse_flag(cell)
            if value is None:
                return None, f"{column!r} is {cell!r}, not 0 or 1"
        else:
            try:
                value = float(cell)
            except ValueError:
                return None, f"{column!r} is {cell!r}, not a number"
            if not math.isfinite(value):
                return None, f"{column!r} is {cell!r}, not a finite number"
        values.append(value)
    return values, None


@dataclasses.dataclass
class _Rows:
    """The usable rows of a table: their file paths, keys, labels and row indices."""

    paths: list[str] = dataclasses.field(default_factory=list)
    keys: list[str] = dataclasses.field(default_factory=list)
    labels: list[Any] = dataclasses.field(default_factory=list)
    indices: list[int] = dataclasses.field(default_factory=list)
    bad: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _check_rows(table, image_root, path_column, label_columns, task, known, delimiter) -> _Rows:
    """Every row checked: the usable ones, and `(row index, reason)` of the others."""
    found, seen, isfile = _Rows(), {}, _file_check(image_root)
    for index, row in enumerate(table.rows):
        cell = row.get(path_column, "")
        key, reason = _check_path(cell, image_root, seen, index, table, isfile)
        labels, label_reason = _parse_labels(row, task, label_columns, known, delimiter)
        reason = reason or label_reason
        if reason is not None:
            found.bad.append((index, reason))
            continue
        found.paths.append(os.path.join(image_root, *key.split("/")))
        found.keys.append(key)
        found.labels.append(labels)
        found.indices.append(index)
    return found


def _report_bad_rows(table: LabelTable, bad: list[tuple[int, str]], policy: str) -> list[str]:
    """Raises `BadRowsError` (policy "error") or logs the bad rows and returns the warning."""
    if not bad:
        return []
    shown = "; ".join(f"{table.where(i)}: {reason}" for i, reason in bad[:_SHOWN_ROWS])
    more = f"; and {len(bad) - _SHOWN_ROWS} more" if len(bad) > _SHOWN_ROWS else ""
    summary = f"{len(bad)} of {len(table.rows)} rows of label table {table.source}"
    if policy == "error":
        raise BadRowsError(
            f"{summary} cannot be used: {shown}{more}. Fix these rows, or pass "
            "bad_rows='skip' (--bad_rows=skip) to leave them out.",
            [(i + 1, reason) for i, reason in bad],
        )
    message = f"Skipped {summary} (bad_rows='skip'): {shown}{more}."
    logger.warning(message)
    return [message]


def _drop_unusable_files(table: LabelTable, rows: _Rows, max_pixels) -> dict[str, str]:
    """Leaves out the files TensorFlow does not decode (by format, size or content), as the
    folder loader does; returns each left-out path -> its row and why."""
    listing = FileListing(table.source, [])
    skipped = {}
    for position, path in enumerate(rows.paths):
        extension = os.path.splitext(path)[1].lower()
        if extension in UNSUPPORTED_IMAGE_FORMATS:
            skipped[path] = (
                f"{UNSUPPORTED_IMAGE_FORMATS[extension]} images are not decoded by TensorFlow; "
                "convert them to JPEG or PNG"
            )
        else:
            listing.paths.append(path)
            listing.labels.append(position)
    drop_bad_files(listing, max_pixels)
    skipped.update(listing.skipped)
    kept = set(listing.labels)
    position_of = {path: position for position, path in enumerate(rows.paths)}
    reasons = {
        path: f"{table.where(rows.indices[position_of[path]])}: {reason}"
        for path, reason in skipped.items()
    }
    for name in ("paths", "keys", "labels", "indices"):
        values = getattr(rows, name)
        setattr(rows, name, [v for position, v in enumerate(values) if position in kept])
    return dict(sorted(reasons.items()))


def _encode_labels(rows: _Rows, task: str, label_columns: list[str], classes, delimiter):
    """`(class_names, labels array, strata)`: int32 class indices, float32 0/1 vectors or
    float32 targets; strata: what each example's split is stratified by."""
    if task == "regression":
        return list(label_columns), np.asarray(rows.labels, np.float32), [0] * len(rows.labels)
    if task == "multiclass":
        names = list(classes) if classes is not None else sorted(set(rows.labels))
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index[name] for name in rows.labels], np.int32)
        return names, labels, labels.tolist()
    if len(label_columns) == 1:
        names = (
            list(classes) if classes is not None else sorted({n for r in rows.labels for n in r})
        )
        index = {name: i for i, name in enumerate(names)}
        labels = np.zeros((len(rows.labels), len(names)), np.float32)
        for row, row_names in enumerate(rows.labels):
            labels[row, [index[n] for n in row_names]] = 1.0
    else:
        names = list(label_columns)
        labels = np.asarray(rows.labels, np.float32).reshape(-1, len(names))
    # Each image with its rarest label (no label: a group of its own), so that rare labels
    # get validation and test images where the split rule can give them.
    counts = labels.sum(axis=0)
    strata = [
        int(min(np.flatnonzero(row), key=lambda c: (counts[c], c))) if row.any() else len(names)
        for row in labels
    ]
    return names, labels, strata


def _split_warnings(task, names, labels: np.ndarray, split: np.ndarray, held) -> list[str]:
    """Warnings (logged) for the classes (labels) without an image in training or in a
    held-out split."""
    warnings = []
    if task == "regression":
        return warnings
    for code, split_name in enumerate(splits.SPLIT_NAMES):
        if code != splits.TRAIN and split_name not in held:
            continue
        members = labels[split == code]
        # Multilabel: each positive label counts once per image.
        present = members if task == "multiclass" else np.nonzero(members)[1]
        hint = "Add rows of these classes to the table."
        message = splits.missing_classes_warning(names, present, split_name, hint)
        if message:
            logger.warning(message)
            warnings.append(message)
    return warnings


def _check_arguments(task, bad_rows, label_columns, augment, classes) -> list[str]:
    if task not in TABLE_TASKS:
        raise ValueError(f"task must be one of {TABLE_TASKS}, got {task!r}.")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"bad_rows must be one of {BAD_ROW_POLICIES}, got {bad_rows!r}.")
    columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    columns = [c.strip() for name in columns for c in name.split(",") if c.strip()]
    if task == "multiclass" and len(columns) != 1:
        raise ValueError(
            f"task='multiclass' reads one label column of class names, got {columns}. For "
            "several 0/1 columns use task='multilabel'."
        )
    if task != "multiclass" and uses_label_mixing(augment):
        raise ValueError(f"mixup and cutmix mix class labels: task={task!r} cannot use them.")
    if classes is not None and (task == "regression" or len(columns) > 1):
        raise ValueError("classes= names the classes of one label column of names.")
    return columns


def _usable_rows(
    labels_table, image_root, path_column, columns, task, classes, delimiter, bad_rows, max_pixels
):
    """The rows that can be used, with what was left out (`skip_reasons`) and warned."""
    known = set(classes) if classes is not None else None
    rows = _check_rows(labels_table, image_root, path_column, columns, task, known, delimiter)
    warnings = _report_bad_rows(labels_table, rows.bad, bad_rows)
    skip_reasons = {labels_table.where(index): reason for index, reason in rows.bad}
    unusable = _drop_unusable_files(labels_table, rows, max_pixels)
    if unusable:
        message = f"Skipped {len(unusable)} file(s) of {labels_table.source}: " + "; ".join(
            f"{path} ({reason})" for path, reason in unusable.items()
        )
        logger.warning(message)
        warnings.append(message)
    skip_reasons.update(unusable)
    if not rows.paths:
        raise ValueError(
            f"No usable image in label table {labels_table.source} ({len(skip_reasons)} "
            "rows left out)."
        )
    return rows, skip_reasons, warnings


def list_table_files(
    table: Any,
    image_root: str | os.PathLike,
    path_column: str = "path",
    label_columns: str | Sequence[str] = "label",
    task: str = "multiclass",
    *,
    validation_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 1337,
    classes: Sequence[str] | None = None,
    label_delimiter: str = ";",
    bad_rows: str = "error",
    max_pixels: int | None = decoding.DEFAULT_MAX_PIXELS,
) -> DatasetFiles:
    """The training, validation and test images of a label table with their labels, checked
    and split (arguments: `image_table_dataset`), ready to decode: what
    `list_dataset_folder` is to an image folder. Labels are class indices (multiclass) or
    float32 vectors (multilabel, regression).

    Example:
    ```python
    files = list_table_files("labels.csv", "photos", "file", "species", test_split=0.1)
    files.class_names, len(files.train_paths), files.skip_reasons
    ```
    """
    columns = _check_arguments(task, bad_rows, label_columns, False, classes)
    decoding.check_max_pixels(max_pixels)
    splits.check_fractions(validation_split, test_split)
    image_root = os.fspath(image_root)
    if not fs.isdir(image_root):
        raise FileNotFoundError(f"image_root {image_root!r} is not a folder of images.")
    labels_table = read_label_table(table)
    _check_columns(labels_table, path_column, columns)
    rows, skip_reasons, warnings = _usable_rows(
        labels_table, image_root, path_column, columns, task, classes, label_delimiter,
        bad_rows, max_pixels,
    )  # fmt: skip
    names, labels, strata = _encode_labels(rows, task, columns, classes, label_delimiter)
    if task == "multiclass" and len(names) < 2:
        raise ValueError(
            f"Only one class ({names[0]!r}) in {labels_table.source}: a classifier needs two."
        )
    split = splits.assign_splits(
        rows.keys, strata, validation_split=validation_split, test_split=test_split, seed=seed
    )
    held = [name for name, f in (("validation", validation_split), ("test", test_split)) if f]
    warnings += _split_warnings(task, names, labels, split, held)
    paths = np.asarray(rows.paths)
    parts = [(paths[split == code].tolist(), list(labels[split == code])) for code in range(3)]
    return DatasetFiles(
        image_root, names, *parts[splits.TRAIN], *parts[splits.VALIDATION],
        *parts[splits.TEST], skip_reasons=skip_reasons, warnings=warnings, held_out=held,
    )  # fmt: skip


def image_table_dataset(
    table: Any,
    image_root: str | os.PathLike,
    path_column: str = "path",
    label_columns: str | Sequence[str] = "label",
    task: str = "multiclass",
    *,
    image_size: int | tuple[int, int] = (224, 224),
    batch_size: int = 32,
    validation_split: float = 0.2,
    test_split: float = 0.0,
    seed: int = 1337,
    classes: Sequence[str] | None = None,
    label_delimiter: str = ";",
    bad_rows: str = "error",
    augment: Any = False,
    shuffle: bool = True,
    cache: bool | str = True,
    drop_remainder: bool = False,
    crop_fraction: float = decoding.DEFAULT_CROP_FRACTION,
    resize: str = "crop",
    max_pixels: int | None = decoding.DEFAULT_MAX_PIXELS,
) -> ImageData:
    """Loads images labelled by a table (a CSV file or a DataFrame) as training, validation
    and test data, like `image_folder_dataset` (what each task reads: the module docstring).

    Args:
        table: the path of a CSV file with a header row, or a pandas DataFrame.
        image_root: the folder the paths of the path column are relative to.
        path_column: the column of image paths.
        label_columns: the label column(s): a name, a list, or names separated by commas.
        task: `"multiclass"` (int32 labels), `"multilabel"` (float32 0/1 vectors, one entry
            per label) or `"regression"` (float32 vectors, one entry per label column).
        classes: the class (or label) names in output order; a name not in it is an unknown
            label. Default: the sorted names found in the table.
        label_delimiter: separates the names of the one-column multilabel form.
        bad_rows: `"error"` raises a `BadRowsError` naming every bad row; `"skip"` leaves
            them out with a logged warning (in `skip_reasons`, keyed `"row 3 (line 4)"`).
        image_size, batch_size, validation_split, test_split, seed: as `image_folder_dataset`.
        augment, shuffle, cache, drop_remainder, crop_fraction, resize, max_pixels: as in
            `image_folder_dataset` (`mixup` and `cutmix` are for multiclass only).

    Returns:
        An `ImageData` whose `task` is `task` and whose `class_names` name the outputs: the
        classes, the labels or the regression targets.

    Example:
    ```python
    data = kt.image_table_dataset("labels.csv", "photos", "file", "species", image_size=224)
    model = kt.create_classifier("mobilenet", len(data.class_names), class_names=data.class_names)
    ```
    """
    _check_arguments(task, bad_rows, label_columns, augment, classes)
    options = pipeline_options(
        image_size, batch_size, crop_fraction=crop_fraction, resize=resize, augment=augment,
        shuffle=shuffle, seed=seed, cache=cache, drop_remainder=drop_remainder,
    )  # fmt: skip
    files = list_table_files(
        table, image_root, path_column, label_columns, task, validation_split=validation_split,
        test_split=test_split, seed=seed, classes=classes, label_delimiter=label_delimiter,
        bad_rows=bad_rows, max_pixels=max_pixels,
    )  # fmt: skip
    options = dataclasses.replace(options, num_classes=len(files.class_names))
    return _table_image_data(files, task, options)


def _table_image_data(files: DatasetFiles, task: str, options: PipelineOptions) -> ImageData:
    """The `ImageData` of `files`, built as the folder loader's."""
    names, warnings = files.class_names, files.warnings
    options.check_full_batches(len(files.train_paths), len(files.validation_paths))

    def build(split, training, name=None, split_options=options):
        paths, labels = getattr(files, f"{split}_paths"), getattr(files, f"{split}_labels")
        if not paths:
            return None
        # `name` names the cache file of `cache="prefix"`: one per dataset.
        return split_options.build_files(paths, labels, training=training, split=name or split)

    class_counts = None
    if task == "multiclass":
        class_counts = np.bincount(files.train_labels, minlength=len(names)).tolist()
        message = imbalance.imbalance_warning(np.asarray(class_counts), names)
        if message:
            logger.warning(message)
            warnings.append(message)
    elif task == "multilabel":  # training images with each label
        class_counts = [int(c) for c in np.sum(files.train_labels, axis=0)]
    sizes = [len(files.train_paths), len(files.validation_paths), len(files.test_paths)]
    logger.info(
        "Loaded %d training, %d validation and %d test images from a label table (%s, %d "
        "outputs).", *sizes, task, len(names),
    )  # fmt: skip
    train = build("train", True)
    # Lazy: its images are decoded (and cached) only if it is iterated.
    unaugmented = build("train", False, "train_unaugmented")
    return ImageData(
        train=train,
        validation=build("validation", False),
        class_names=names,
        num_train=sizes[0],
        num_validation=sizes[1],
        skipped=list(files.skip_reasons),
        image_size=options.image_size,
        train_unaugmented=unaugmented,
        skip_reasons=files.skip_reasons,
        warnings=warnings,
        class_counts=class_counts,
        # Every test image counts: no batch of them is dropped.
        test=build("test", False, "test", dataclasses.replace(options, drop_remainder=False)),
        num_test=sizes[2],
        task=task,
    )
