"""Checks an exported model against the Keras model it came from, on labelled images.

`compare` gives the share of images whose top-1 label the export and the model agree on,
the accuracy of each (with labels) and the largest difference of any class probability.
The `predict_*` functions run each export format on a batch of images the way a server
would: the `.tflite` flatbuffer in TensorFlow Lite's interpreter (quantizing the input and
dequantizing the output of a full-integer model by the scale and zero point stored in it),
a SavedModel's `serve` signature, an `.onnx` file in ONNX Runtime.

`run_files` lists a training run's images again from its `config.json` (the same listing,
split and seed as the run), and `read_images` decodes them as the run's validation
images were (`predict.load_image`, the package's one decode path), so the check sees what
the run's validation saw.

```python
files = run_files("runs/ants_vs_bees")
images = read_images(files.validation_paths, model, **predict.decode_settings(model_dir))
compare(model.predict(images), predict_tflite(content, images), files.validation_labels)
```
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer import data as data_lib
from keras_transfer.apps import predict as predict_lib
from keras_transfer.apps.image_config import Config
from keras_transfer.utils import files as fs

__all__ = [
    "CHECK_SPLITS",
    "ExportCheckError",
    "compare",
    "predict_onnx",
    "predict_saved_model",
    "predict_tflite",
    "read_images",
    "run_files",
    "sample_paths",
    "tflite_interpreter",
    "to_integer",
]

# Which of the run's images an export is checked on; "auto": validation, else test.
CHECK_SPLITS = ("auto", "validation", "test", "none")
_BATCH_SIZE = 32


class ExportCheckError(RuntimeError):
    """An export whose check fell below `min_agreement`; `reports` holds every export's
    report (the failed ones with `"written": False`)."""

    def __init__(self, message: str, reports: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.reports = list(reports or [])


def compare(
    reference: np.ndarray, exported: np.ndarray, labels: Sequence[int] | None = None
) -> dict[str, Any]:
    """How far `exported` (class probabilities of the export) is from `reference` (those of
    the Keras model) on the same images: `top1_agreement` (the share of images whose most
    probable class is the same), `max_probability_difference` and
    `mean_probability_difference` (absolute, over every image and class), and with `labels`
    (class indices) `keras_accuracy` and `export_accuracy`. The outputs of a multilabel or
    regression model (label vectors as `labels`) are compared by their differences, the
    top-1 agreement being that of the highest output."""
    reference = np.asarray(reference, dtype="float64")
    exported = np.asarray(exported, dtype="float64")
    if reference.shape != exported.shape or not len(reference):
        raise ValueError(
            f"Cannot compare predictions of shapes {reference.shape} and {exported.shape}."
        )
    top_reference = np.argmax(reference, axis=-1)
    top_exported = np.argmax(exported, axis=-1)
    difference = np.abs(reference - exported)
    result: dict[str, Any] = {
        "images": len(reference),
        "top1_agreement": float(np.mean(top_reference == top_exported)),
        "max_probability_difference": float(difference.max()),
        "mean_probability_difference": float(difference.mean()),
    }
    if labels is not None and np.ndim(labels) == 1:  # class indices (not label vectors)
        labels = np.asarray(labels)
        result["keras_accuracy"] = float(np.mean(top_reference == labels))
        result["export_accuracy"] = float(np.mean(top_exported == labels))
    return result


def _batches(images: np.ndarray) -> list[np.ndarray]:
    return [images[i : i + _BATCH_SIZE] for i in range(0, len(images), _BATCH_SIZE)]


def to_integer(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float `values` as a full-integer TFLite tensor takes them (its scale and zero point
    from the interpreter's `detail`), rounded and clipped to the integer type."""
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(detail["dtype"])
    quantized = np.round(values / scale + zero_point)
    return np.clip(quantized, limits.min, limits.max).astype(detail["dtype"])


def _from_integer(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return (values.astype("float32") - zero_point) * scale


def tflite_interpreter(content: bytes, num_threads: int | None = None) -> Any:
    """An interpreter of a `.tflite` flatbuffer: LiteRT's (`ai_edge_litert`) when installed,
    else TensorFlow's own, whose deprecation warning in favour of LiteRT is not the user's
    to act on. `num_threads`: its CPU threads (`None`: the interpreter's default)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter")
            return tf.lite.Interpreter(model_content=content, num_threads=num_threads)
    return Interpreter(model_content=content, num_threads=num_threads)


def predict_tflite(content: bytes, images: np.ndarray) -> np.ndarray:
    """The outputs of a `.tflite` flatbuffer (`content`) on `images`, in float32."""
    interpreter = tflite_interpreter(content)
    (input_detail,) = interpreter.get_input_details()
    outputs = []
    for batch in _batches(np.asarray(images, dtype="float32")):
        interpreter.resize_tensor_input(input_detail["index"], batch.shape)
        interpreter.allocate_tensors()
        # The details after resizing: a full-integer model keeps its scale and zero point.
        input_detail = interpreter.get_input_details()[0]
        output_detail = interpreter.get_output_details()[0]
        if np.issubdtype(input_detail["dtype"], np.integer):
            batch = to_integer(batch, input_detail)
        interpreter.set_tensor(input_detail["index"], batch)
        interpreter.invoke()
        output = interpreter.get_tensor(output_detail["index"])
        if np.issubdtype(output_detail["dtype"], np.integer):
            output = _from_integer(output, output_detail)
        outputs.append(np.asarray(output, dtype="float32"))
    return np.concatenate(outputs)


def predict_saved_model(folder: str, images: np.ndarray) -> np.ndarray:
    """The outputs of a SavedModel's `serve` signature on `images`."""
    import tensorflow as tf

    served = tf.saved_model.load(folder)
    return np.concatenate(
        [np.asarray(served.serve(tf.constant(batch))) for batch in _batches(images)]
    )


def predict_onnx(path: str, images: np.ndarray) -> np.ndarray:
    """The outputs of an `.onnx` file in ONNX Runtime (CPU) on `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: np.asarray(batch, "float32")})[0] for batch in _batches(images)]
    )


def run_files(
    model_dir: str, data_dir: str | None = None, config: dict[str, Any] | None = None
) -> data_lib.DatasetFiles:
    """The training, validation and test images of the run that wrote `model_dir`, listed
    as the run listed them (its `config.json`, or `config`, the run's resolved settings:
    data folder or label table, splits, seed, max_pixels); `data_dir` replaces the data
    folder (the images moved)."""
    if config is None:
        config = predict_lib.read_run_config(
            model_dir,
            required="so the run's images cannot be found: pass --check_on=none to export "
            "unchecked (and no --quantize=int8, which needs them).",
        )
    if config.get("dataset") and not data_dir:
        raise ValueError(
            f"The run read {config['dataset']!r}; checks and int8 calibration read image "
            "folders only: pass --data_dir=<a folder of class subfolders>, or --check_on=none "
            "(and no --quantize=int8)."
        )
    directory = data_dir or config.get("data_dir") or ""
    if not fs.isdir(directory):
        raise FileNotFoundError(
            f"The run's data folder {directory!r} does not exist: pass --data_dir=<where the "
            "images are now>, or --check_on=none (and no --quantize=int8)."
        )

    if data_lib.is_records_folder(directory):
        raise ValueError(
            f"The run read the TFRecord shards in {directory!r}; checks and int8 calibration "
            "read image files: pass --data_dir=<the image folder the records were written "
            "from>, or --check_on=none (and no --quantize=int8)."
        )

    def setting(name: str) -> Any:
        return config.get(name, getattr(Config, name))

    if config.get("labels_csv"):
        return data_lib.list_table_files(
            config["labels_csv"],
            directory,
            setting("path_column"),
            setting("label_columns"),
            setting("task"),
            validation_split=setting("validation_split"),
            test_split=setting("test_split"),
            seed=setting("seed"),
            bad_rows=setting("bad_rows"),
            max_pixels=setting("max_pixels") or None,
        )
    return data_lib.list_dataset_folder(
        directory,
        validation_split=setting("validation_split"),
        test_dir=setting("test_dir") or None,
        test_split=setting("test_split"),
        seed=setting("seed"),
        max_pixels=setting("max_pixels") or None,
    )


def sample_paths(paths: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """`count` of `paths` (all if fewer) chosen at random with `seed`, in their order."""
    if count >= len(paths):
        return list(paths)
    chosen = np.random.default_rng(seed).choice(len(paths), size=count, replace=False)
    return [paths[i] for i in sorted(chosen)]


def read_images(
    paths: Sequence[str],
    model: keras.Model,
    crop_fraction: float = predict_lib.CROP_FRACTION,
    resize: str = "crop",
) -> np.ndarray:
    """`paths` as `model` takes them, read as the run's validation images were
    (`predict.load_image` with the run's `crop_fraction` and `resize`)."""
    if not paths:
        raise ValueError("No images to read.")
    return np.stack(
        [predict_lib.load_image(path, model, None, crop_fraction, resize) for path in paths]
    )
