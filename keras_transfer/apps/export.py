"""Exports a trained classifier for serving, optionally quantized, and checks each export
against the model: `kt.export`, and the writing behind `keras-transfer export`
(`export_folder`).

- `saved_model`: `model.export(format="tf_saved_model")`, a `serve` signature taking raw
  0-255 float32 RGB images of the model's input size;
- `tflite`: that SavedModel converted by `tf.lite.TFLiteConverter`, as float32 or
  quantized: `dynamic` (int8 weights), `float16` (float16 weights) or `int8` (int8 weights
  and activations, calibrated on representative training images; `quantization`);
  the converter folds every BatchNormalization into the convolution before it;
- `onnx`: `model.export(format="onnx")` (the `onnx` extra: tf2onnx on TensorFlow);
- `keras`: Keras' own `model.quantize("int8")` saved as a `.keras` file (it quantizes
  Dense/EinsumDense/Embedding layers; the report names the layers left in float).

A LoRA model is merged first (`kt.merge_lora`). With check images, each export runs on them
and is compared with the Keras model (`export_check.compare`: top-1 agreement, accuracy of
each, largest probability difference); below `min_agreement` the export is an
`ExportCheckError` and no file of that name is left. Each output is written beside its name
as `.partial-*` and moved in only once complete and checked, and an export first deletes
what a killed export left in the folder.

```python
path = export_model(kt.load_model("run/model.keras"), "run", "tflite")  # run/model.tflite
report = export(model, "run/model_int8.tflite", quantize="int8", representative_data=images,
                check_data=(images, labels), min_agreement=0.98)
```
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_transfer import saving
from keras_transfer.apps import export_check
from keras_transfer.apps import quantization
from keras_transfer.apps.export_check import ExportCheckError
from keras_transfer.utils import backend
from keras_transfer.utils import reliability

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_REPORT_FILE",
    "OUTPUT_NAMES",
    "PARTIAL_PREFIX",
    "QUANTIZE_MODES",
    "CheckImages",
    "ExportUnavailableError",
    "check_request",
    "export",
    "export_model",
    "export_one",
    "output_name",
    "remove_stale_partials",
]

EXPORT_FORMATS = ("saved_model", "tflite", "onnx", "keras")
# The unquantized outputs' names; a quantized one is `model_<mode>.<suffix>` (`output_name`).
OUTPUT_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
QUANTIZE_MODES = {
    "saved_model": (),
    "tflite": quantization.TFLITE_QUANTIZE_MODES,
    "onnx": (),
    "keras": quantization.KERAS_QUANTIZE_MODES,
}
_SUFFIXES = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras"}
EXPORT_REPORT_FILE = "export.json"
# How temporary files and folders beside an output start (`reliability.write_atomically`).
PARTIAL_PREFIX = ".partial-"


class ExportUnavailableError(ImportError):
    """An export format whose converter is not installed; the message names the extra."""


@dataclasses.dataclass
class CheckImages:
    """Labelled images an export is checked on, and the Keras model's probabilities on them
    (`reference`, computed once for every export)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    reference: np.ndarray | None = None


def output_name(export_format: str, quantize: str | None = None) -> str:
    """The file (or folder) name of an export: `model.tflite`, `model_int8.tflite`,
    `model_int8.keras`, `saved_model`..."""
    if export_format == "keras":
        return f"model_{quantize}.keras"
    if quantize:
        return OUTPUT_NAMES[export_format].replace("model.", f"model_{quantize}.")
    return OUTPUT_NAMES[export_format]


def _all_output_names() -> set[str]:
    return {
        output_name(export_format, mode)
        for export_format, modes in QUANTIZE_MODES.items()
        for mode in ((None,) if export_format != "keras" else ()) + tuple(modes)
    }


def check_request(export_format: str, quantize: str | None, io_dtype: str = "float32") -> None:
    """Refuses an unknown format, a quantization the format does not offer, or a converter
    this backend or install lacks: before any work."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(
            f"Unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}."
        )
    modes = QUANTIZE_MODES[export_format]
    if export_format == "keras" and quantize is None:
        raise ValueError(
            "format='keras' writes a quantized .keras model: pass quantize='int8' (model.keras "
            "itself is the float model)."
        )
    if quantize is not None and quantize not in modes:
        offered = f"one of {', '.join(modes)}" if modes else "none"
        raise ValueError(
            f"format={export_format!r} takes quantize={offered}, not {quantize!r}; TFLite "
            f"offers {', '.join(quantization.TFLITE_QUANTIZE_MODES)}."
        )
    if io_dtype != "float32" and (export_format, quantize) != ("tflite", "int8"):
        raise ValueError(f"io_dtype={io_dtype!r} is for format='tflite' with quantize='int8'.")
    if export_format == "tflite":
        # The converter rejects the uint32 seed state jax2tf's SavedModel carries.
        backend.require_tensorflow(
            "TFLite export",
            "export with KERAS_BACKEND=tensorflow (model.keras loads on either), or use "
            "format='keras' with quantize='int8', which runs on JAX",
        )
    if export_format == "onnx":
        if backend.is_tensorflow() and importlib.util.find_spec("tf2onnx") is None:
            raise ExportUnavailableError(
                "ONNX export needs tf2onnx: pip install 'keras-transfer[onnx]'."
            )
        if not backend.is_tensorflow() and importlib.util.find_spec("jax2onnx") is None:
            # Keras converts with jax2onnx on JAX, which the extra leaves out (it pulls in
            # Flax, Equinox and Orbax).
            raise ExportUnavailableError(
                f"ONNX export on {backend.backend()} needs jax2onnx: pip install jax2onnx, or "
                "export with KERAS_BACKEND=tensorflow and the onnx extra."
            )


def remove_stale_partials(output_dir: str) -> list[str]:
    """Deletes what killed exports left in `output_dir`: `.partial-*` scratch folders and
    temporary export files. Returns their paths."""
    if not os.path.isdir(output_dir):
        return []
    suffixes = tuple(f"-{name}" for name in _all_output_names() | {EXPORT_REPORT_FILE})
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


def _replace_folder(build: Callable[[str], Any], target: str) -> None:
    """Builds a folder with `build(path)` in a scratch folder beside `target`, then moves
    the old `target` aside into the scratch folder, moves the new one in and deletes the
    scratch folder: never a half-deleted `target`, and what a kill leaves behind is one
    `.partial-*` folder, which the next export deletes (`remove_stale_partials`)."""
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


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _, names in os.walk(path)
            for name in names
        )
    return os.path.getsize(path)


def _tflite_bytes(model, path, saved_model_dir, quantize, representative_data, io_dtype) -> bytes:
    options = dict(
        representative_data=representative_data,
        input_shape=tuple(model.input_shape[1:]),
        io_dtype=io_dtype,
    )
    if saved_model_dir is not None:
        return quantization.tflite_content(saved_model_dir, quantize, **options)
    # The converter's input only: a temporary SavedModel, not left beside the .tflite.
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=parent) as scratch:
        source = os.path.join(scratch, "saved_model")
        model.export(source, format="tf_saved_model", verbose=False)
        return quantization.tflite_content(source, quantize, **options)


def _write_export(
    model: keras.Model,
    path: str,
    export_format: str,
    quantize: str | None,
    verify: Callable[[str, Callable[[str, np.ndarray], np.ndarray]], None],
    report: dict[str, Any],
    *,
    representative_data: Any = None,
    io_dtype: str = "float32",
    saved_model_dir: str | None = None,
) -> None:
    """Writes one export at `path` through a `.partial-*` scratch path, calling
    `verify(scratch path, predict)` before it is moved in (a raise leaves nothing)."""
    if export_format == "saved_model":

        def build(folder):
            model.export(folder, format="tf_saved_model", verbose=False)
            verify(folder, export_check.predict_saved_model)

        _replace_folder(build, path)
    elif export_format == "tflite":
        content = _tflite_bytes(
            model, path, saved_model_dir, quantize, representative_data, io_dtype
        )

        def write(temporary):
            with open(temporary, "wb") as f:
                f.write(content)
            verify(temporary, lambda _, images: export_check.predict_tflite(content, images))

        reliability.write_atomically(path, write)
    elif export_format == "onnx":

        def write(temporary):
            with warnings.catch_warnings():
                # Keras' patch of tf2onnx for NumPy 2 probes the removed `np.object`.
                warnings.filterwarnings("ignore", message=r"In the future `np.object`")
                model.export(temporary, format="onnx", verbose=False)
            verify(temporary, export_check.predict_onnx)

        reliability.write_atomically(path, write)
    else:
        quantized, layers = quantization.quantize_keras(model, quantize)
        report.update(layers)

        def write(temporary):
            saving.save_model(quantized, temporary)
            # Loaded back even unchecked: a layer that rebuilds its sublayers from its own
            # settings would come back float and fail to load the int8 weights.
            try:
                reloaded = saving.load_model(temporary)
            except ValueError as error:
                raise ValueError(
                    f"Keras' {quantize} model of {model.name!r} does not load back "
                    f"({str(error).splitlines()[0]}): a layer of it does not record its "
                    "quantized sublayers. Export format='tflite' instead."
                ) from error
            verify(temporary, lambda _, images: reloaded.predict(images, batch_size=32, verbose=0))

        reliability.write_atomically(path, write)


class _Verifier:
    """`verify(path, predict)` of `_write_export`: compares `predict(path, images)` on the
    check images with the Keras model and raises `ExportCheckError` below `min_agreement`."""

    def __init__(self, check: CheckImages | None, min_agreement: float | None, report: dict):
        self.check, self.min_agreement, self.report = check, min_agreement, report

    def __call__(self, path: str, predict: Callable[[str, np.ndarray], np.ndarray]) -> None:
        if self.check is None:
            return
        exported = predict(path, self.check.images)
        result = export_check.compare(self.check.reference, exported, self.check.labels)
        result["on"] = self.check.source
        if self.min_agreement is not None:
            result["min_agreement"] = self.min_agreement
            result["passed"] = result["top1_agreement"] >= self.min_agreement
        self.report["check"] = result
        if not result.get("passed", True):
            raise ExportCheckError(
                f"{self.report['file']} agrees with the Keras model on "
                f"{result['top1_agreement']:.4f} of {result['images']} images' top-1 labels, "
                f"below min_agreement={self.min_agreement}: not written."
            )


def export_one(
    model: keras.Model,
    path: str,
    export_format: str,
    quantize: str | None,
    *,
    check: CheckImages | None = None,
    min_agreement: float | None = None,
    representative_data: Any = None,
    io_dtype: str = "float32",
    saved_model_dir: str | None = None,
) -> dict[str, Any]:
    """Writes and checks one export (`export`'s work); its report. A failed check removes
    any earlier file of that name, so that no file looks like the export that failed."""
    path = os.fspath(path)
    if export_format == "onnx" and check is not None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise ExportUnavailableError(
                "Checking the ONNX export needs onnxruntime: pip install 'keras-transfer[onnx]'."
            )
    plain, merged = quantization.plain_model(model)
    report: dict[str, Any] = {
        "file": os.path.basename(os.path.normpath(path)),
        "format": export_format,
        "quantize": quantize or "none",
        "lora_merged": merged,
    }
    if export_format == "tflite" and quantize == "int8":
        report["io_dtype"] = io_dtype
    if check is not None and check.reference is None:
        check.reference = np.asarray(model.predict(check.images, batch_size=32, verbose=0))
    try:
        _write_export(
            plain,
            path,
            export_format,
            quantize,
            _Verifier(check, min_agreement, report),
            report,
            representative_data=representative_data,
            io_dtype=io_dtype,
            saved_model_dir=saved_model_dir,
        )
    except ExportCheckError as error:
        report["written"] = False
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        raise ExportCheckError(str(error), [report]) from None
    report["written"] = True
    report["bytes"] = _size(path)
    return report


def export(
    model: keras.Model,
    path: str | os.PathLike,
    format: str | None = None,
    quantize: str | None = None,
    representative_data: Any = None,
    *,
    check_data: Any = None,
    min_agreement: float | None = None,
    io_dtype: str = "float32",
) -> dict[str, Any]:
    """Writes `model` for serving at `path`, optionally quantized, checked against `model`.

    A LoRA model is merged first; the file is moved onto `path` only once complete and checked.

    Args:
        model: a classifier taking raw 0-255 images (what `create_classifier` builds).
        path: the file to write (`.tflite`, `.onnx`, `.keras`) or, for a SavedModel, the
            folder.
        format: `"tflite"`, `"saved_model"`, `"onnx"` or `"keras"`; default from `path`'s
            suffix (a path without one is a SavedModel).
        quantize: `None` (float32); for `"tflite"`: `"dynamic"` (int8 weights, float
            activations), `"float16"` (float16 weights) or `"int8"` (int8 weights and
            activations, calibrated on `representative_data`); for `"keras"`: `"int8"`
            (Keras' `model.quantize`: Dense, EinsumDense and Embedding layers; the report's
            `float_layers` names the rest). TFLite folds BatchNormalization into the
            convolutions in every mode.
        representative_data: for `quantize="int8"` TFLite: a few hundred training images
            as the model takes them (an array `(n, h, w, 3)` of 0-255 values, or an
            iterable of such batches or of `(images, labels)`).
        check_data: images to compare the export with `model` on: `(images, labels)` or
            images alone (no accuracy then), e.g. validation images read by `kt.load_image`.
        min_agreement: with `check_data`, the lowest share of images on which the export's
            top-1 label must equal the model's; below it an `ExportCheckError` is raised and
            no file is left at `path` (an earlier one is removed).
        io_dtype: for `quantize="int8"` TFLite: `"float32"` input and output, or
            `"uint8"` / `"int8"` (the caller quantizes the pixels by the stored scale).

    Returns:
        The report: `file`, `format`, `quantize`, `lora_merged`, `bytes`, `written`, and with
        `check_data` a `check` of `top1_agreement`, `max_probability_difference`,
        `mean_probability_difference` (with labels `keras_accuracy`, `export_accuracy`).

    Raises:
        ExportCheckError: the check fell below `min_agreement`.
        BackendError: TFLite on a backend other than TensorFlow.
        ExportUnavailableError: ONNX without its converter (the `onnx` extra).

    Example:
    ```python
    model = kt.create_classifier("mobilenet", 2, input_shape=(32, 32, 3), weights=None)
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    report = kt.export(model, "model_int8.tflite", quantize="int8",
                       representative_data=images, check_data=images)
    report["check"]["top1_agreement"]
    ```
    """
    path = os.fspath(path)
    if format is None:
        format = _SUFFIXES.get(os.path.splitext(path)[1].lower(), "saved_model")
    check_request(format, quantize, io_dtype)
    if min_agreement is not None and check_data is None:
        raise ValueError("min_agreement needs check_data: the images to compare on.")
    if (format, quantize) == ("tflite", "int8") and representative_data is None:
        raise ValueError(
            "quantize='int8' calibrates every activation's range on representative images: "
            "pass representative_data (a few hundred training images, 0-255)."
        )
    remove_stale_partials(os.path.dirname(os.path.abspath(path)))
    return export_one(
        model,
        path,
        format,
        quantize,
        check=None if check_data is None else _given_check_images(check_data),
        min_agreement=min_agreement,
        representative_data=representative_data,
        io_dtype=io_dtype,
    )


def _given_check_images(check_data: Any) -> CheckImages:
    """`export`'s `check_data` (`(images, labels)` or images) as `CheckImages`."""
    images, labels = check_data if isinstance(check_data, tuple) else (check_data, None)
    images = np.concatenate(list(quantization.as_image_batches(images)))
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    return CheckImages(images, labels, f"{len(images)} given images")


def export_model(
    model: keras.Model, output_dir: str, export_format: str, saved_model_dir: str | None = None
) -> str:
    """Writes `model` in `export_format` to `output_dir` (names in `OUTPUT_NAMES`),
    unquantized and unchecked (`export_folder.export_run` checks the exports of a training
    run, `keras-transfer train --export` included).

    Args:
        model: the model to export.
        output_dir: the folder to write into.
        export_format: `"saved_model"`, `"tflite"` or `"onnx"`.
        saved_model_dir: for `"tflite"`, a SavedModel of `model` already exported; by
            default one is exported to a temporary folder, deleted after the conversion.

    Returns:
        The written path.

    Raises:
        ExportUnavailableError: `"onnx"` without its converter installed.
    """
    if export_format not in OUTPUT_NAMES:
        raise ValueError(
            f"Unknown export format {export_format!r}; use one of {', '.join(OUTPUT_NAMES)}."
        )
    check_request(export_format, None)
    path = os.path.join(output_dir, OUTPUT_NAMES[export_format])
    remove_stale_partials(output_dir)
    export_one(model, path, export_format, None, saved_model_dir=saved_model_dir)
    return path
