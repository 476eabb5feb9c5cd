"""Single-image latency of an exported model, run the way a server on a CPU would run it:
a `.tflite` file in TensorFlow Lite's interpreter, an `.onnx` file in ONNX Runtime, each
with a stated number of threads (default 1: the number a latency means nothing without).

`measure_latency` times `runs` calls on one image after `warmup` untimed ones and reports
the median in milliseconds, beside the settings it was measured with, so that two numbers
are only compared when they were measured alike. A call is what serving one image costs:
setting the input, running the model and reading the output (a full-integer model's input
is quantized before the clock starts).

```python
latency = measure_latency("run/model_int8.tflite", image, threads=1)
latency["latency_ms_median"], latency["runtime"]  # e.g. (12.3, "tflite")
```
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_transfer.apps import export_check

__all__ = ["LATENCY_FORMATS", "measure_latency"]

# The export formats whose latency is measured, by file suffix.
LATENCY_FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


def _tflite_call(path: str, image: np.ndarray, threads: int) -> Callable[[], Any]:
    with open(path, "rb") as f:
        interpreter = export_check.tflite_interpreter(f.read(), num_threads=threads)
    (detail,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], image.shape)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]  # a full-integer model's scale and zero point
    batch = image
    if np.issubdtype(detail["dtype"], np.integer):
        batch = export_check.to_integer(image, detail)
    output = interpreter.get_output_details()[0]["index"]

    def call():
        interpreter.set_tensor(detail["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(output)

    return call


def _onnx_call(path: str, image: np.ndarray, threads: int) -> Callable[[], Any]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one image: nothing to run side by side
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: image})


def measure_latency(
    path: str | os.PathLike,
    image: np.ndarray | None = None,
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
) -> dict[str, Any]:
    """The median time to run an exported model on one image.

    Args:
        path: a `.tflite` or `.onnx` file (`kt.export`, `keras-transfer export`).
        image: one image as the model takes it, `(height, width, 3)` 0-255 (or a batch of
            one); `None`: a fixed random image of the model's input size (the time of a
            convolutional network hardly depends on the pixels).
        threads: CPU threads of the interpreter (TFLite `num_threads`) or of ONNX Runtime
            (`intra_op_num_threads`, one inter-op thread).
        runs: timed calls; the median is reported.
        warmup: untimed calls first (memory allocation, caches).

    Returns:
        `{"latency_ms_median", "latency_ms_p90", "runtime", "threads", "runs", "warmup",
        "machine"}`.

    Example:
    ```python
    latency = measure_latency("model.tflite", threads=1)
    print(f"{latency['latency_ms_median']:.1f} ms per image on {latency['threads']} thread")
    ```
    """
    path = os.fspath(path)
    runtime = LATENCY_FORMATS.get(os.path.splitext(path)[1].lower())
    if runtime is None:
        raise ValueError(
            f"Latency is measured for {', '.join(LATENCY_FORMATS)} files, not {path!r}: "
            "export with format='tflite' or format='onnx'."
        )
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}.")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}.")
    if image is None:
        image = _random_image(path, runtime)
    image = np.asarray(image, dtype="float32")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"image must be one image (h, w, 3) or a batch of one, got {image.shape}.")
    make = _tflite_call if runtime == "tflite" else _onnx_call
    call = make(path, image, threads)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return {
        "latency_ms_median": float(statistics.median(times)),
        "latency_ms_p90": float(np.percentile(times, 90)),
        "runtime": runtime,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def _random_image(path: str, runtime: str) -> np.ndarray:
    """A fixed random 0-255 image of the input size the file declares."""
    if runtime == "tflite":
        with open(path, "rb") as f:
            detail = export_check.tflite_interpreter(f.read()).get_input_details()[0]
        shape = [int(side) for side in detail["shape"][1:]]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape[1:]
    if not all(isinstance(side, int) and side > 0 for side in shape):
        raise ValueError(
            f"{path!r} takes images of any size ({shape}): pass image=, one image as the model "
            "takes it."
        )
    return np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
