"""Exports of a training run's folder, checked on the run's own images: `export_model_dir`
(the `keras-transfer export` logic) and its record, `export.json`.

The run's images are listed again from its `config.json` (`export_check.run_files`: the
same folder, splits and seed), read as its validation images were, and each export is
compared with the Keras model on the validation images (or the test images, if the run had
no validation split). int8 TFLite calibrates on a random sample of the training images.
`export.json` holds one report per file name (`export.export`'s, with the SHA-256 of the
`model.keras` it came from); an export whose check failed is recorded with
`"written": false` and leaves no file of that name.

```python
reports = export_model_dir("runs/ants", "tflite", ["dynamic", "int8"], min_agreement=0.98)
print("\\n".join(format_report(report) for report in reports))
```
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer.apps import _outputs
from keras_transfer.apps import export_check
from keras_transfer.apps import predict as predict_lib
from keras_transfer.apps import quantization
from keras_transfer.apps.export import EXPORT_REPORT_FILE
from keras_transfer.apps.export import PARTIAL_PREFIX
from keras_transfer.apps.export import CheckImages
from keras_transfer.apps.export import ExportUnavailableError
from keras_transfer.apps.export import check_request
from keras_transfer.apps.export import export_one
from keras_transfer.apps.export import output_name
from keras_transfer.apps.export import remove_stale_partials
from keras_transfer.apps.export_check import ExportCheckError

__all__ = ["check_settings", "export_model_dir", "format_report"]


def _run_check_images(
    model: keras.Model, files: Any, check_on: str, settings: dict[str, Any]
) -> CheckImages:
    """The run's validation (or test) images, read as its validation images were."""
    split = check_on
    if check_on == "auto":
        split = "validation" if files.validation_paths else "test"
    paths = getattr(files, f"{split}_paths")
    if not paths:
        raise ValueError(
            f"The run has no {split} images to check the export on"
            + (" (nor validation images)" if check_on == "auto" else "")
            + ": pass --check_on=validation|test for a split it has, or --check_on=none."
        )
    images = export_check.read_images(paths, model, **settings)
    labels = np.asarray(getattr(files, f"{split}_labels"))
    return CheckImages(images, labels, f"{len(paths)} {split} images of {files.directory}")


def _record(output_dir: str, model_dir: str, reports: list[dict[str, Any]]) -> str:
    """Adds `reports` to `export.json` in `output_dir` (one entry per file name, with the
    SHA-256 of the `model.keras` they came from); returns its path."""
    path = os.path.join(output_dir, EXPORT_REPORT_FILE)
    exports: dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
            if isinstance(previous, dict) and isinstance(previous.get("exports"), dict):
                exports = previous["exports"]
        except (OSError, ValueError):
            pass  # an unreadable record is replaced by this one
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, predict_lib.MODEL_FILE), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    for report in reports:
        exports[report["file"]] = {**report, "model_sha256": digest.hexdigest()}
    _outputs.write_json(path, {"exports": dict(sorted(exports.items()))})
    return path


def check_settings(
    export_format: str,
    modes: Sequence[str | None],
    check_on: str = "auto",
    io_dtype: str = "float32",
    min_agreement: float | None = None,
) -> None:
    """Raises `ValueError` for settings `export_model_dir` cannot use (before any work), and
    `BackendError` / `ExportUnavailableError` for a converter this process lacks."""
    for mode in modes:
        check_request(export_format, mode, io_dtype if mode == "int8" else "float32")
    if io_dtype != "float32" and "int8" not in modes:
        raise ValueError(f"io_dtype={io_dtype!r} is for format='tflite' with quantize='int8'.")
    if check_on not in export_check.CHECK_SPLITS:
        raise ValueError(
            f"check_on must be one of {', '.join(export_check.CHECK_SPLITS)}, got {check_on!r}."
        )
    if min_agreement is not None and check_on == "none":
        raise ValueError("min_agreement needs a check: leave out check_on='none'.")
    if export_format == "onnx" and check_on != "none":
        if importlib.util.find_spec("onnxruntime") is None:
            raise ExportUnavailableError(
                "Checking the ONNX export needs onnxruntime: pip install 'keras-transfer[onnx]' "
                "(or --check_on=none)."
            )


def export_model_dir(
    model_dir: str,
    export_format: str = "saved_model",
    quantize: Sequence[str | None] = (None,),
    *,
    output_dir: str | None = None,
    check_on: str = "auto",
    data_dir: str | None = None,
    representative_images: int = 200,
    io_dtype: str = "float32",
    min_agreement: float | None = None,
    safe_mode: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`keras-transfer export`: the model of a training run's folder in `export_format`,
    once per `quantize` mode, each checked on the run's validation images (`check_on`:
    `"auto"` validation, else test; `"none"` unchecked) and recorded in `export.json`.

    The run's images are listed again from its `config.json` (`export_check.run_files`;
    `data_dir` if they moved); int8 TFLite calibrates on `representative_images` of its
    training images, chosen at random with `seed`. Every export is attempted; then, if any
    fell below `min_agreement`, `ExportCheckError` (with every report) is raised.

    Returns:
        One report per export (`export`'s), as `export.json` holds them.
    """
    modes = list(quantize) or [None]
    check_settings(export_format, modes, check_on, io_dtype, min_agreement)
    model, labels = predict_lib.load_trained(model_dir, safe_mode=safe_mode)
    output_dir = output_dir or model_dir
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_partials(output_dir)
    settings = predict_lib.decode_settings(model_dir)
    calibrate = export_format == "tflite" and "int8" in modes
    files = None
    if check_on != "none" or calibrate:
        files = export_check.run_files(model_dir, data_dir)
        if files.class_names != labels:
            raise ValueError(
                f"The data folder {files.directory!r} has the classes {files.class_names}, the "
                f"model {labels}: pass --data_dir=<the run's images>."
            )
    check = None if check_on == "none" else _run_check_images(model, files, check_on, settings)
    representative = None
    if calibrate:
        if representative_images < 1:
            raise ValueError(f"representative_images must be >= 1, got {representative_images}.")
        paths = export_check.sample_paths(files.train_paths, representative_images, seed)
        representative = export_check.read_images(paths, model, **settings)
    reports, failures = [], []
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=output_dir) as scratch:
        saved_model_dir = None
        if export_format == "tflite":  # one SavedModel for every conversion
            saved_model_dir = os.path.join(scratch, "saved_model")
            plain, _ = quantization.plain_model(model)
            plain.export(saved_model_dir, format="tf_saved_model", verbose=False)
        for mode in modes:
            int8 = calibrate and mode == "int8"
            try:
                report = export_one(
                    model,
                    os.path.join(output_dir, output_name(export_format, mode)),
                    export_format,
                    mode,
                    check=check,
                    min_agreement=min_agreement,
                    representative_data=representative if int8 else None,
                    io_dtype=io_dtype if int8 else "float32",
                    saved_model_dir=saved_model_dir,
                )
            except ExportCheckError as error:
                report = error.reports[0]
                failures.append(str(error))
            if int8:
                report["representative_images"] = len(representative)
            reports.append(report)
    _record(output_dir, model_dir, reports)
    if failures:
        raise ExportCheckError(" ".join(failures), reports)
    return reports


def format_report(report: dict[str, Any]) -> str:
    """An export's report as the command prints it: the file, then its check."""
    state = f"{report['bytes'] / 1e6:.2f} MB" if report.get("written") else "NOT WRITTEN"
    details = [report["format"], f"quantize={report['quantize']}"]
    if report.get("io_dtype"):
        details.append(f"{report['io_dtype']} input/output")
    if report.get("lora_merged"):
        details.append("LoRA merged")
    lines = [f"{report['file']}: {state} ({', '.join(details)})"]
    check = report.get("check")
    if check:
        line = f"  on {check['on']}: top-1 agreement {check['top1_agreement']:.4f}"
        if "min_agreement" in check:
            line += f" (min {check['min_agreement']}: {'ok' if check['passed'] else 'FAILED'})"
        if "export_accuracy" in check:
            line += (
                f", accuracy {check['export_accuracy']:.4f} (Keras {check['keras_accuracy']:.4f})"
            )
        line += f", max probability difference {check['max_probability_difference']:.4f}"
        lines.append(line)
    elif report.get("written"):
        lines.append("  not checked (--check_on=none)")
    if report.get("float_layer_types"):
        kinds = ", ".join(f"{n} {kind}" for kind, n in report["float_layer_types"].items())
        lines.append(
            f"  {len(report['quantized_layers'])} layer(s) int8; left in float: {kinds} "
            "(named in export.json)"
        )
    return "\n".join(lines)
