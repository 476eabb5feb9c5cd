"""Predictions of a trained image classifier for image files: the `keras-transfer predict`
logic.

A folder written by `keras-transfer train` (or `image_classifier.run`) holds `model.keras`
(raw 0-255 RGB images in, class probabilities out) and `labels.txt` (line i = output i).
Each image is read as validation images are during training: decoded, scaled to cover
`image_size / 0.875` and centrally cropped to the model's input size.

```python
model, labels = load_trained(model_dir)
rows, skipped = predict_files(model, labels, ["bee.jpg", "photos/"], top_k=2)
rows[0]  # -> {"file": "bee.jpg", "labels": ["bees", "ants"], "probabilities": [0.97, 0.03]}
```
"""

from __future__ import annotations

import csv
import io
import json
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

__all__ = [
    "CROP_FRACTION",
    "FORMATS",
    "LABELS_FILE",
    "MODEL_FILE",
    "format_rows",
    "list_images",
    "load_image",
    "load_trained",
    "predict_files",
]

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
# What the training loaders' validation split uses (data.PipelineOptions.crop_fraction).
CROP_FRACTION = 0.875
FORMATS = ("table", "jsonl", "csv")


def load_trained(model_dir: str, safe_mode: bool = True) -> tuple[keras.Model, list[str]]:
    """`(model, class names)` from a training run's folder."""
    model_path = os.path.join(model_dir, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"{model_path!r} does not exist: --model_dir must be a folder written by "
            "`keras-transfer train` (it holds model.keras and labels.txt)."
        )
    model = saving.load_model(model_path, safe_mode=safe_mode)
    labels_path = os.path.join(model_dir, LABELS_FILE)
    if os.path.isfile(labels_path):
        with open(labels_path, encoding="utf-8") as f:
            labels = [line.rstrip("\n") for line in f if line.strip()]
    else:
        labels = list(getattr(model, "class_names", None) or [])
    outputs = int(model.output_shape[-1])
    if len(labels) != outputs:
        raise ValueError(
            f"{labels_path!r} names {len(labels)} classes but the model has {outputs} "
            "outputs: the two files come from different runs. Train again, or copy the "
            "run's own labels.txt beside its model.keras."
        )
    return model, labels


def list_images(paths: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The image files among `paths` (folders are searched recursively, sorted), and
    `{path: reason}` for paths that are neither an image file nor a folder."""
    files, skipped = [], {}
    for path in paths:
        if os.path.isdir(path):
            for root, folders, names in os.walk(path):
                folders.sort()
                files.extend(
                    os.path.join(root, name)
                    for name in sorted(names)
                    if name.lower().endswith(data_lib.IMAGE_EXTENSIONS)
                )
        elif os.path.isfile(path):
            files.append(path)
        else:
            skipped[path] = "no such file or folder"
    return files, skipped


def load_image(path: str, image_size: tuple[int, int], max_pixels: int | None = None) -> np.ndarray:
    """One image as the model's `(height, width, 3)` float32 0-255 input.

    Raises:
        ValueError: the file is not an image TensorFlow can decode, or has more than
            `max_pixels` pixels (read from its header, before decoding).
    """
    if max_pixels:
        size = data_lib.read_image_size(path)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ValueError(f"{size[1]}x{size[0]} pixels is more than max_pixels={max_pixels}")
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        # TensorFlow's message wraps the reason in the op's name and device.
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message.splitlines()[0]).strip()
        raise ValueError(f"cannot decode it as an image ({reason})") from error
    load = data_lib.load_size(image_size, CROP_FRACTION)
    image = data_lib.resize_and_crop(image, load).numpy()
    top = (load[0] - image_size[0]) // 2
    left = (load[1] - image_size[1]) // 2
    return image[top : top + image_size[0], left : left + image_size[1]].astype("float32")


def predict_files(
    model: keras.Model,
    labels: Sequence[str],
    paths: Iterable[str],
    top_k: int = 3,
    batch_size: int = 32,
    max_pixels: int | None = 50_000_000,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The top-`top_k` labels and probabilities of every image in `paths`.

    Returns:
        `(rows, skipped)`: one `{"file", "labels", "probabilities"}` row per readable
        image, most probable first, and `{path: reason}` for the files that were skipped.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    files, skipped = list_images(paths)
    image_size = tuple(int(side) for side in model.input_shape[1:3])
    if None in image_size:
        raise ValueError(f"The model takes images of any size {model.input_shape}: set one.")
    rows: list[dict[str, Any]] = []
    k = min(top_k, len(labels))
    for start in range(0, len(files), batch_size):
        batch, names = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(load_image(path, image_size, max_pixels))
                names.append(path)
            except ValueError as error:
                skipped[path] = str(error)
        if not batch:
            continue
        probabilities = np.asarray(model.predict(np.stack(batch), verbose=0), "float64")
        for path, row in zip(names, probabilities):
            best = np.argsort(-row, kind="stable")[:k]
            rows.append(
                {
                    "file": path,
                    "labels": [labels[i] for i in best],
                    "probabilities": [round(float(row[i]), 6) for i in best],
                }
            )
    return rows, skipped


def format_rows(rows: Sequence[dict[str, Any]], output_format: str = "table") -> str:
    """`rows` of `predict_files` as a table, JSON lines or CSV (rank columns)."""
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
