"""Predictions of a trained image classifier for image files: the `keras-transfer predict`
logic.

A folder written by `keras-transfer train` (or `image_classifier.run`) holds `model.keras`
(raw 0-255 RGB images in, class probabilities out, the class names stored with it),
`labels.txt` (line i = output i) and `config.json` (the run's settings). Each image is read
as validation images are during training, by the same function (`data.decode_for_model`):
decoded (JPEGs at reduced scale, like the loaders), scaled to cover
`image_size / crop_fraction` and centrally cropped to the model's input size, with the
run's `crop_fraction` and `resize` (`decode_settings`), so predicting the validation images
reproduces the validation accuracy of `results.json`.

```python
model, labels = load_trained(model_dir)
rows, skipped = predict_files(model, labels, ["bee.jpg", "photos/"], top_k=2,
                              **decode_settings(model_dir))
rows[0]  # -> {"file": "bee.jpg", "labels": ["bees", "ants"], "probabilities": [0.97, 0.03]}
```
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer import saving
from keras_transfer.apps import predict_tasks
from keras_transfer.apps.image_config import RESOLVED_CONFIG_FILE
from keras_transfer.utils import files as fs

__all__ = [
    "CROP_FRACTION",
    "FORMATS",
    "LABELS_FILE",
    "MODEL_FILE",
    "decode_settings",
    "format_rows",
    "list_images",
    "load_image",
    "load_trained",
    "predict_files",
    "predict_images",
    "read_run_config",
]

logger = logging.getLogger("keras_transfer")

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
# What the training loaders' validation split uses (data.PipelineOptions.crop_fraction).
CROP_FRACTION = data_lib.DEFAULT_CROP_FRACTION
FORMATS = ("table", "jsonl", "csv")


def load_trained(model_dir: str, safe_mode: bool = True) -> tuple[keras.Model, list[str]]:
    """`(model, class names)` from a training run's folder.

    The names are the ones stored in `model.keras` (`class_names`); `labels.txt` is only
    read for a model without them, and must agree with them when both exist: a stale
    labels.txt beside a retrained model would otherwise print bees as ants.
    """
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not fs.isfile(model_path):
        raise FileNotFoundError(
            f"{model_path!r} does not exist: --model_dir must be a folder written by "
            "`keras-transfer train` (it holds model.keras and labels.txt)."
        )
    model = saving.load_model(model_path, safe_mode=safe_mode)
    stored = getattr(model, "class_names", None)
    stored = [str(name) for name in stored] if isinstance(stored, list | tuple) else []
    labels_path = os.path.join(model_dir, LABELS_FILE)
    labels = stored
    if fs.isfile(labels_path):
        with fs.open_file(labels_path, encoding="utf-8") as f:
            listed = [line.rstrip("\n") for line in f if line.strip()]
        if stored and listed != stored:
            raise ValueError(_labels_mismatch(labels_path, listed, model_path, stored))
        labels = listed
    outputs = int(model.output_shape[-1])
    if len(labels) != outputs:
        raise ValueError(
            f"{labels_path!r} names {len(labels)} classes but the model has {outputs} "
            "outputs: the two files come from different runs. Train again, or copy the "
            "run's own labels.txt beside its model.keras."
        )
    return model, labels


def _labels_mismatch(labels_path: str, listed: list[str], model_path: str, stored: list[str]):
    if len(listed) != len(stored):
        difference = f"lists {len(listed)} classes, the model {len(stored)}"
    else:
        line = next(i for i, (a, b) in enumerate(zip(listed, stored)) if a != b)
        difference = f"says line {line + 1} is {listed[line]!r}, the model's output {line} is {stored[line]!r}"
    return (
        f"{labels_path!r} disagrees with the class names stored in {model_path!r}: it "
        f"{difference}. labels.txt is stale or from another run: delete it (the model's "
        "names are used) or write the model's names into it, one per line."
    )


def read_run_config(model_dir: str, required: str = "") -> dict[str, Any] | None:
    """The `config.json` a training run wrote into `model_dir`, as a dict; `None` if the
    folder has none, unless `required` (what the caller needs it for and the way out, e.g.
    "so the run's images cannot be found: pass --check_on=none"), which makes a missing file
    a `FileNotFoundError` naming both. An unreadable file, or one that is not a JSON object,
    is a `ValueError` naming the file."""
    path = os.path.join(model_dir, RESOLVED_CONFIG_FILE)
    if not fs.isfile(path):
        if required:
            raise FileNotFoundError(f"{path!r} does not exist, {required}")
        return None
    restore = "restore the run's config.json" + (
        "" if required else " or delete it (the defaults are used then)"
    )
    try:
        with fs.open_file(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path!r} ({error}): {restore}.") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} is not a JSON object: {restore}.")
    return config


def decode_settings(model_dir: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"crop_fraction", "resize"}` of the run that wrote `model_dir`, for `predict_files`
    and `load_image`: from its `config.json` (`read_run_config`), or from `config` (the
    run's resolved settings, when the caller holds them), else the loaders' defaults (a
    folder without one, or a run that kept them)."""
    settings: dict[str, Any] = {"crop_fraction": CROP_FRACTION, "resize": "crop"}
    if config is None:
        config = read_run_config(model_dir)
    if config is None:
        return settings
    settings.update({key: config[key] for key in settings if key in config})
    crop_fraction, resize = settings["crop_fraction"], settings["resize"]
    if (
        isinstance(crop_fraction, bool)
        or not isinstance(crop_fraction, int | float)
        or not 0 < crop_fraction <= 1
        or resize not in ("crop", "squash")
    ):
        path = os.path.join(model_dir, RESOLVED_CONFIG_FILE)
        raise ValueError(
            f"{path!r} has crop_fraction={crop_fraction!r}, resize={resize!r}: crop_fraction "
            "must lie in (0, 1] and resize be 'crop' or 'squash'. Restore the run's config.json."
        )
    return settings


def list_images(paths: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The image files among `paths` (folders are searched recursively, sorted), and
    `{path: reason}` for paths that are neither an image file nor a folder."""
    files, skipped = [], {}
    for path in paths:
        if fs.isdir(path):
            for root, folders, names in fs.walk(path):
                folders.sort()
                files.extend(
                    os.path.join(root, name)
                    for name in sorted(names)
                    if name.lower().endswith(data_lib.IMAGE_EXTENSIONS)
                )
        elif fs.isfile(path):
            files.append(path)
        else:
            skipped[path] = "no such file or folder"
    return files, skipped


def load_image(
    path: str,
    image_size: tuple[int, int] | keras.Model,
    max_pixels: int | None = None,
    crop_fraction: float = CROP_FRACTION,
    resize: str = "crop",
) -> np.ndarray:
    """One image as the model's `(height, width, 3)` float32 0-255 input, read exactly as
    the validation images of a run with this `crop_fraction` and `resize`
    (`data.decode_for_model`).

    Args:
        path: the image file.
        image_size: `(height, width)`, or the model (its input size).
        max_pixels: refuse images with more pixels (read from the header); None: no limit.
        crop_fraction, resize: as the training loaders took them (their defaults here).

    Example:
    ```python
    image = kt.load_image("bee.jpg", model)
    model.predict(image[None])
    ```

    Raises:
        ValueError: the file is not an image TensorFlow can decode, or has more than
            `max_pixels` pixels (read from its header, before decoding).
    """
    if isinstance(image_size, keras.Model):
        image_size = _model_image_size(image_size)
    if max_pixels:
        size = data_lib.read_image_size(path)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ValueError(f"{size[1]}x{size[0]} pixels is more than max_pixels={max_pixels}")
    try:
        image = data_lib.decode_for_model(path, image_size, crop_fraction, resize)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        # TensorFlow's message wraps the reason in the op's name and device.
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message.splitlines()[0]).strip()
        raise ValueError(f"cannot decode it as an image ({reason})") from error
    return image.numpy().astype("float32")


def predict_files(
    model: keras.Model,
    labels: Sequence[str],
    paths: Iterable[str],
    top_k: int = 3,
    batch_size: int = 32,
    max_pixels: int | None = 50_000_000,
    crop_fraction: float = CROP_FRACTION,
    resize: str = "crop",
    task: str = "multiclass",
    thresholds: Sequence[float] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The top-`top_k` labels and probabilities of every image in `paths`, each read by
    `load_image` with `crop_fraction` and `resize` (those of the run: `decode_settings`).
    A multilabel or regression model (`task`, the run's: `predict_tasks.task_settings`)
    gives its task's rows instead (`predict_tasks.task_row`): every label at or above its
    threshold (`thresholds`, one per label, default 0.5) with all probabilities, or each
    target's value; `top_k` does not apply to them.

    Returns:
        `(rows, skipped)`: one `{"file", "labels", "probabilities"}` row per readable
        image, most probable first, and `{path: reason}` for the files that were skipped.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    predict_tasks.run_task({"task": task})  # a clear error for an unknown task
    files, skipped = list_images(paths)
    image_size = _model_image_size(model)
    rows: list[dict[str, Any]] = []
    k = min(top_k, len(labels))
    for start in range(0, len(files), batch_size):
        batch, names = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(load_image(path, image_size, max_pixels, crop_fraction, resize))
                names.append(path)
            except ValueError as error:
                skipped[path] = str(error)
        if not batch:
            continue
        probabilities = np.asarray(model.predict(np.stack(batch), verbose=0), "float64")
        for path, row in zip(names, probabilities):
            if task != "multiclass":
                rows.append(predict_tasks.task_row(path, row, labels, task, thresholds))
                continue
            best = np.argsort(-row, kind="stable")[:k]
            rows.append(
                {
                    "file": path,
                    "labels": [labels[i] for i in best],
                    "probabilities": [round(float(row[i]), 6) for i in best],
                }
            )
    return rows, skipped


def _model_image_size(model: keras.Model) -> tuple[int, int]:
    image_size = tuple(model.input_shape[1:3])
    if None in image_size:
        raise ValueError(
            f"The model takes images of any size {model.input_shape}: pass image_size=(h, w)."
        )
    return tuple(int(side) for side in image_size)


def predict_images(
    model: keras.Model | str | os.PathLike,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 1,
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int = 32,
    max_pixels: int | None = 50_000_000,
    crop_fraction: float | None = None,
    resize: str | None = None,
) -> list[dict[str, Any]]:
    """The top-`top_k` labels of image files, read as the validation images of training.

    Args:
        model: a classifier taking raw 0-255 images, or a folder written by
            `keras-transfer train` (its model, class names and decode settings are used).
        paths: image files and folders (searched recursively), or one of them.
        top_k: labels per image, most probable first.
        class_names: the output names; default the model's `class_names` (a
            `create_classifier` model keeps them), else "0", "1", ...
        batch_size: images per `predict` call.
        max_pixels: images with more pixels are skipped (decompression bombs).
        crop_fraction, resize: how the images are cropped (default: the run's settings for
            a folder, the loaders' defaults for a model).

    Returns:
        One `{"file", "labels", "probabilities"}` row per readable image (a multilabel
        model's: the labels at or above the run's thresholds, 0.5 for a model that is not
        a folder, and `"all_probabilities"`; a regression model's: `{"file", "values"}`).
        Unreadable files are skipped with a logged warning naming each and the reason.

    Example:
    ```python
    rows = kt.predict_images("model_dir", "photos/", top_k=2)
    rows[0]  # -> {"file": "photos/bee.jpg", "labels": ["bees", "ants"], ...}
    ```
    """
    settings: dict[str, Any] = {"crop_fraction": CROP_FRACTION, "resize": "crop"}
    if isinstance(model, str | os.PathLike):
        model_dir = os.fspath(model)
        model, names = load_trained(model_dir)
        config = read_run_config(model_dir)
        settings = decode_settings(model_dir, config)
        settings.update(predict_tasks.task_settings(model_dir, model, names, config))
    else:
        stored = getattr(model, "class_names", None)
        outputs = int(model.output_shape[-1])
        names = [str(n) for n in stored] if stored else [str(i) for i in range(outputs)]
        settings["task"] = predict_tasks.run_task(None, model)
    if crop_fraction is not None:
        settings["crop_fraction"] = crop_fraction
    if resize is not None:
        settings["resize"] = resize
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    rows, skipped = predict_files(
        model,
        list(class_names or names),
        [os.fspath(p) for p in paths],
        top_k=top_k,
        batch_size=batch_size,
        max_pixels=max_pixels,
        **settings,
    )
    for path, reason in skipped.items():
        logger.warning("Skipped %s: %s", path, reason)
    if skipped:
        logger.warning(
            "Skipped %d of %d paths (reasons above).", len(skipped), len(rows) + len(skipped)
        )
    return rows


def format_rows(
    rows: Sequence[dict[str, Any]], output_format: str = "table", task: str = "multiclass"
) -> str:
    """`rows` of `predict_files` as a table, JSON lines or CSV (rank columns; a multilabel
    or regression `task`'s: `predict_tasks.format_task_rows`)."""
    if task != "multiclass":
        return predict_tasks.format_task_rows(rows, task, output_format)
    if output_format == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    k = max((len(row["labels"]) for row in rows), default=0)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["file"]
        for rank in range(1, k + 1):
            header += [f"label_{rank}", f"probability_{rank}"]
        writer.writerow(header)
        for row in rows:
            cells = [row["file"]]
            for label, probability in zip(row["labels"], row["probabilities"]):
                cells += [label, f"{probability:.6f}"]
            writer.writerow(cells)
        return buffer.getvalue()
    if output_format != "table":
        raise ValueError(f"Unknown format {output_format!r}; use one of {', '.join(FORMATS)}.")
    width = max((len(row["file"]) for row in rows), default=4)
    lines = [f"{'file':<{width}}  prediction"]
    for row in rows:
        predictions = "  ".join(
            f"{label} {probability:.4f}"
            for label, probability in zip(row["labels"], row["probabilities"])
        )
        lines.append(f"{row['file']:<{width}}  {predictions}")
    return "\n".join(lines) + "\n"
