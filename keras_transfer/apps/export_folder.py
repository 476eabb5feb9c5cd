"""Exports of a training run's folder, checked on the run's own images: `export_model_dir`
(the `keras-transfer export` logic) and its record, `export.json`.

The run's images are listed again from its `config.json` (`export_check.run_files`: the
same folder, splits and seed), read as its validation images were, and each export is
compared with the Keras model on the validation images (or the test images, if the run had
no validation split). int8 TFLite calibrates on a random sample of the training images.
`export.json` holds one report per file name (`export.export`'s, with the SHA-256 of the
`model.keras` it came from); an export whose check failed is recorded with
`"written": false` and leaves no file of that name. With `measure_latency`, each `.tflite`
or `.onnx` file's single-image latency (`export_latency`) is added: `latency_ms_median` and
the `latency` settings it was measured with. `export_run` is the same work on a model in
memory: what `keras-transfer train --export` runs before the run's folder is written.

```python
reports = export_model_dir("runs/ants", "tflite", ["dynamic", "int8"], min_agreement=0.98)
print("\\n".join(format_report(report) for report in reports))
```
"""

from __future__ import annotations

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
from keras_transfer.apps import export_latency
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
from keras_transfer.utils import files as fs
from keras_transfer.utils import reliability

__all__ = [
    "check_settings",
    "export_model_dir",
    "export_run",
    "format_report",
    "record_reports",
]


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


def record_reports(output_dir: str, model_dir: str, reports: list[dict[str, Any]]) -> str:
    """Adds `reports` to `export.json` in `output_dir` (one entry per file name, with the
    SHA-256 of the `model.keras` in `model_dir` they came from); returns its path."""
    path = os.path.join(output_dir, EXPORT_REPORT_FILE)
    exports: dict[str, Any] = {}
    if fs.isfile(path):
        try:
            with fs.open_file(path, encoding="utf-8") as f:
                previous = json.load(f)
            if isinstance(previous, dict) and isinstance(previous.get("exports"), dict):
                exports = previous["exports"]
        except (OSError, ValueError):
            pass  # an unreadable record is replaced by this one
    digest = reliability.file_sha256(os.path.join(model_dir, predict_lib.MODEL_FILE))
    for report in reports:
        exports[report["file"]] = {**report, "model_sha256": digest}
    _outputs.write_json(path, {"exports": dict(sorted(exports.items()))})
    return path


def check_settings(
    export_format: str,
    modes: Sequence[str | None],
    check_on: str = "auto",
    io_dtype: str = "float32",
    min_agreement: float | None = None,
    measure_latency: bool = False,
    latency_threads: int = 1,
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
    if measure_latency and export_format not in export_latency.LATENCY_FORMATS.values():
        raise ValueError(
            f"Latency is measured for format=tflite and format=onnx, not {export_format!r}."
        )
    if measure_latency and (isinstance(latency_threads, bool) or latency_threads < 1):
        raise ValueError(f"latency_threads must be >= 1, got {latency_threads!r}.")
    if export_format == "onnx" and (check_on != "none" or measure_latency):
        if importlib.util.find_spec("onnxruntime") is None:
            raise ExportUnavailableError(
                "Checking the ONNX export (or timing it) needs onnxruntime: pip install "
                "'keras-transfer[onnx]' (or --check_on=none without --measure_latency)."
            )


def export_model_dir(
    model_dir: str,
    export_format: str = "saved_model",
    quantize: Sequence[str | None] = (None,),
    *,
    output_dir: str | None = None,
    safe_mode: bool = True,
    **options: Any,
) -> list[dict[str, Any]]:
    """`keras-transfer export`: the model of a training run's folder in `export_format`,
    once per `quantize` mode, each checked on the run's validation images and recorded in
    `export.json` (in `output_dir`, default `model_dir`).

    The run's images are listed again from its `config.json` (`export_check.run_files`).
    `options` are `export_run`'s (`check_on`, `data_dir`, `representative_images`,
    `io_dtype`, `min_agreement`, `seed`, `measure_latency`, `latency_threads`). Every export
    is attempted; then, if any fell below `min_agreement`, `ExportCheckError` (with every
    report) is raised.

    Returns:
        One report per export (`export`'s), as `export.json` holds them.
    """
    modes = list(quantize) or [None]
    check_settings(
        export_format,
        modes,
        options.get("check_on", "auto"),
        options.get("io_dtype", "float32"),
        options.get("min_agreement"),
        options.get("measure_latency", False),
        options.get("latency_threads", 1),
    )
    model, labels = predict_lib.load_trained(model_dir, safe_mode=safe_mode)
    output_dir = output_dir or model_dir
    reports, failures = export_run(
        model, labels, model_dir, export_format, modes, output_dir, **options
    )
    record_reports(output_dir, model_dir, reports)
    if failures:
        raise ExportCheckError(" ".join(failures), reports)
    return reports


def _check_and_calibration_images(
    model: keras.Model,
    labels: list[str],
    model_dir: str,
    files_config: dict[str, Any] | None,
    check_on: str,
    calibrate: bool,
    data_dir: str | None,
    *,
    count: int,
    seed: int,
) -> tuple[CheckImages | None, np.ndarray | None]:
    """The run's check images and int8 calibration images, read as its validation images
    were (with its decode settings)."""
    if check_on == "none" and not calibrate:
        return None, None
    files = export_check.run_files(model_dir, data_dir, files_config)
    if files.class_names != labels:
        raise ValueError(
            f"The data folder {files.directory!r} has the classes {files.class_names}, the "
            f"model {labels}: pass --data_dir=<the run's images>."
        )
    settings = predict_lib.decode_settings(model_dir, files_config)
    check = None if check_on == "none" else _run_check_images(model, files, check_on, settings)
    representative = None
    if calibrate:
        if count < 1:
            raise ValueError(f"representative_images must be >= 1, got {count}.")
        paths = export_check.sample_paths(files.train_paths, count, seed)
        representative = export_check.read_images(paths, model, **settings)
    return check, representative


def export_run(
    model: keras.Model,
    labels: Sequence[str],
    model_dir: str,
    export_format: str,
    modes: Sequence[str | None],
    output_dir: str,
    *,
    config: dict[str, Any] | None = None,
    check_on: str = "auto",
    data_dir: str | None = None,
    representative_images: int = 200,
    io_dtype: str = "float32",
    min_agreement: float | None = None,
    seed: int = 0,
    measure_latency: bool = False,
    latency_threads: int = 1,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The exports of a training run's `model` (the work of `export_model_dir`, and of
    `keras-transfer train --export` on the model it holds), unrecorded.

    The run's images are listed from `config` (its resolved settings) or else from
    `model_dir`'s `config.json` (`data_dir` if they moved). Each export is checked on the
    validation images (`check_on`: `"auto"` validation, else test; `"none"` unchecked); int8
    TFLite calibrates on `representative_images` training images chosen with `seed`; with
    `measure_latency` each file's single-image latency on `latency_threads` threads is
    added (`export_latency.measure_latency`).

    Returns:
        `(reports, failures)`: one report per export, and the messages of the checks that
        fell below `min_agreement` (their files not written).
    """
    options = dict(
        config=config, check_on=check_on, data_dir=data_dir,
        representative_images=representative_images, io_dtype=io_dtype,
        min_agreement=min_agreement, seed=seed, measure_latency=measure_latency,
        latency_threads=latency_threads,
    )  # fmt: skip
    if not fs.is_remote(output_dir):
        return _export_run(model, labels, model_dir, export_format, modes, output_dir, **options)
    # A remote folder (gs://...): exported and checked locally, then copied there.
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX) as local:
        reports, failures = _export_run(
            model, labels, model_dir, export_format, modes, local, **options
        )
        for report in reports:
            _upload(report, local, output_dir)
    return reports, failures


def _upload(report: dict[str, Any], local: str, output_dir: str) -> None:
    """Copies the export of `report` from `local` onto the remote `output_dir`: a file
    replaced whole; a folder (a SavedModel), which object stores cannot rename, deleted
    then copied file by file. An export whose check failed removes the earlier one."""
    source, target = os.path.join(local, report["file"]), os.path.join(output_dir, report["file"])
    if report["written"] and not os.path.isdir(source):
        reliability.copy_atomically(source, target)
        return
    if fs.isdir(target):
        fs.rmtree(target)
    elif fs.exists(target):
        fs.remove(target)
    if report["written"]:
        fs.upload_folder(source, target)


def _export_run(
    model: keras.Model,
    labels: Sequence[str],
    model_dir: str,
    export_format: str,
    modes: Sequence[str | None],
    output_dir: str,
    *,
    config: dict[str, Any] | None,
    check_on: str,
    data_dir: str | None,
    representative_images: int,
    io_dtype: str,
    min_agreement: float | None,
    seed: int,
    measure_latency: bool,
    latency_threads: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """`export_run` into a local `output_dir`."""
    calibrate = export_format == "tflite" and "int8" in modes
    check, representative = _check_and_calibration_images(
        model,
        list(labels),
        model_dir,
        config,
        check_on,
        calibrate,
        data_dir,
        count=representative_images,
        seed=seed,
    )
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_partials(output_dir)
    reports, failures = [], []
    with tempfile.TemporaryDirectory(prefix=PARTIAL_PREFIX, dir=output_dir) as scratch:
        saved_model_dir = None
        if export_format == "tflite":  # one SavedModel for every conversion
            saved_model_dir = os.path.join(scratch, "saved_model")
            plain, _ = quantization.plain_model(model)
            plain.export(saved_model_dir, format="tf_saved_model", verbose=False)
        for mode in modes:
            int8 = calibrate and mode == "int8"
            path = os.path.join(output_dir, output_name(export_format, mode))
            try:
                report = export_one(
                    model,
                    path,
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
            if measure_latency and report["written"]:
                image = None if check is None else check.images[0]
                latency = export_latency.measure_latency(path, image, threads=latency_threads)
                report["latency_ms_median"] = latency.pop("latency_ms_median")
                report["latency"] = latency
            reports.append(report)
    return reports, failures


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
    if report.get("latency_ms_median") is not None:
        latency = report["latency"]
        lines.append(
            f"  latency {report['latency_ms_median']:.2f} ms per image (median of "
            f"{latency['runs']} runs, {latency['runtime']}, {latency['threads']} thread(s))"
        )
    if report.get("float_layer_types"):
        kinds = ", ".join(f"{n} {kind}" for kind, n in report["float_layer_types"].items())
        lines.append(
            f"  {len(report['quantized_layers'])} layer(s) int8; left in float: {kinds} "
            "(named in export.json)"
        )
    return "\n".join(lines)
