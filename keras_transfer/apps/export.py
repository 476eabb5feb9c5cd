"""Exports a trained classifier for serving: the `keras-transfer export` logic.

- `saved_model`: `model.export(format="tf_saved_model")`, a `serve` signature taking raw
  0-255 float32 RGB images of the model's input size;
- `tflite`: that SavedModel converted by `tf.lite.TFLiteConverter`;
- `onnx`: `model.export(format="onnx")`, which needs `tf2onnx` (the `onnx` extra).

Each output replaces the previous one only once it is complete (a SavedModel folder: the
old one is moved aside, the new one in, then the old one deleted), and an export first
deletes what a killed export left in the folder (`.partial-*` scratch folders and files).

```python
path = export_model(kt.load_model("run/model.keras"), "run", "tflite")  # run/model.tflite
```
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_transfer.utils import backend
from keras_transfer.utils import reliability

__all__ = [
    "EXPORT_FORMATS",
    "OUTPUT_NAMES",
    "PARTIAL_PREFIX",
    "ExportUnavailableError",
    "export_model",
]

EXPORT_FORMATS = ("saved_model", "tflite", "onnx")
OUTPUT_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
# How temporary files and folders beside an output start (`reliability.write_atomically`).
PARTIAL_PREFIX = ".partial-"


class ExportUnavailableError(ImportError):
    """An export format whose converter is not installed; the message names the extra."""


def _replace_folder(build, target: str) -> None:
    """Builds a folder with `build(path)` in a scratch folder beside `target`, then moves
    the old `target` aside into the scratch folder, moves the new one in and deletes the
    scratch folder: never a half-deleted `target`, and what a kill leaves behind is one
    `.partial-*` folder, which the next export deletes (`_remove_stale_partials`)."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=parent)
    try:
        built = os.path.join(scratch, os.path.basename(target))
        build(built)
        if os.path.lexists(target):
            os.replace(target, os.path.join(scratch, "previous"))
        os.replace(built, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale_partials(output_dir: str) -> list[str]:
    """Deletes what killed exports left in `output_dir`: `.partial-*` scratch folders and
    temporary export files. Returns their paths."""
    if not os.path.isdir(output_dir):
        return []
    suffixes = tuple(f"-{name}" for name in OUTPUT_NAMES.values())
    removed = []
    for entry in os.scandir(output_dir):
        if not entry.name.startswith(PARTIAL_PREFIX):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.name.endswith(suffixes):
            os.remove(entry.path)
        else:
            continue
        removed.append(entry.path)
    return removed


def export_model(
    model: keras.Model, output_dir: str, export_format: str, saved_model_dir: str | None = None
) -> str:
    """Writes `model` in `export_format` to `output_dir` (names in `OUTPUT_NAMES`).

    Args:
        model: the model to export.
        output_dir: the folder to write into.
        export_format: `"saved_model"`, `"tflite"` or `"onnx"`.
        saved_model_dir: for `"tflite"`, a SavedModel of `model` already exported; by
            default one is exported to a temporary folder, deleted after the conversion.

    Returns:
        The written path.

    Raises:
        ExportUnavailableError: `"onnx"` without `tf2onnx` installed.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}."
        )
    if export_format == "tflite":
        # The converter rejects the uint32 seed state jax2tf's SavedModel carries.
        backend.require_tensorflow(
            "TFLite export", "export with KERAS_BACKEND=tensorflow (model.keras loads on either)"
        )
    path = os.path.join(output_dir, OUTPUT_NAMES[export_format])
    _remove_stale_partials(output_dir)
    if export_format == "onnx":
        if importlib.util.find_spec("tf2onnx") is None:
            raise ExportUnavailableError(
                "ONNX export needs tf2onnx: pip install 'keras-transfer[onnx]'."
            )
        reliability.write_atomically(
            path, lambda temporary: model.export(temporary, format="onnx", verbose=False)
        )
        return path
    if export_format == "saved_model":
        _replace_folder(
            lambda folder: model.export(folder, format="tf_saved_model", verbose=False), path
        )
        return path
    if saved_model_dir is None:
        # The converter's input only: a temporary SavedModel, not left beside the .tflite.
        with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=output_dir) as scratch:
            source = os.path.join(scratch, "saved_model")
            model.export(source, format="tf_saved_model", verbose=False)
            content = tf.lite.TFLiteConverter.from_saved_model(source).convert()
    else:
        content = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert()

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(content)

    reliability.write_atomically(path, write)
    return path
