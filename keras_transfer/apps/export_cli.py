r"""`keras-transfer export`: a trained model in a serving format, optionally quantized, and
checked against the model on the run's validation images.

    keras-transfer export --model_dir=/tmp/ants_vs_bees --format=tflite
    keras-transfer export --model_dir=/tmp/ants_vs_bees --format=tflite \
        --quantize=dynamic,float16,int8 --min_agreement=0.98
    keras-transfer export --model_dir=/tmp/ants_vs_bees --format=keras --quantize=int8

`--format=saved_model` writes `saved_model/` (a `serve` signature taking raw 0-255 float32
RGB images), `tflite` writes `model.tflite` (converted from that SavedModel), `onnx` writes
`model.onnx` (needs the `onnx` extra: pip install 'keras-transfer[onnx]'), `keras` a
quantized `model_int8.keras`. `--quantize` (comma-separated) writes `model_<mode>.tflite`
per mode: `dynamic` (int8 weights), `float16` (float16 weights), `int8` (int8 weights and
activations, calibrated on --representative_images training images); `--format=keras
--quantize=int8` is Keras' own `model.quantize("int8")`, which quantizes Dense layers and
leaves the rest in float (export.json names them). A LoRA model is merged first; TFLite
folds BatchNormalization into the convolutions.

Every export is run on the run's validation images (or test images; `--check_on`), read as
the run read them (config.json says where they are; `--data_dir` if they moved), and
compared with model.keras: top-1 agreement, accuracy of each, largest probability
difference. The numbers are printed and written to export.json. Below `--min_agreement` the
export fails (exit code 1) and no file of its name is left. The outputs go to --model_dir
unless --output_dir is given. `--measure_latency` (tflite, onnx) adds each file's
single-image latency on `--latency_threads` CPU threads (TFLite's interpreter, ONNX Runtime)
to export.json: the median of 50 runs on one check image after 5 warm-up runs.
"""

from __future__ import annotations

from absl import app
from absl import flags

from keras_transfer.apps import cli
from keras_transfer.apps import export as export_lib
from keras_transfer.apps import export_check
from keras_transfer.apps import export_folder
from keras_transfer.apps import quantization

__all__ = ["HINTS", "main"]

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Folder of a trained model (model.keras).")
flags.DEFINE_enum("format", "saved_model", list(export_lib.EXPORT_FORMATS), "Export format.")
flags.DEFINE_list(
    "quantize",
    [],
    "Comma-separated quantization modes, one file each: for tflite none (float32), dynamic, "
    "float16, int8; for keras int8. Empty: unquantized.",
)
flags.DEFINE_integer(
    "representative_images",
    200,
    "With --quantize=int8 (tflite): how many training images, chosen at random, calibrate "
    "the activation ranges.",
)
flags.DEFINE_enum(
    "io_dtype",
    "float32",
    list(quantization.IO_DTYPES),
    "With --quantize=int8 (tflite): the input and output type; uint8 or int8 make a "
    "full-integer model whose caller quantizes the pixels by the stored scale.",
)
flags.DEFINE_enum(
    "check_on",
    "auto",
    list(export_check.CHECK_SPLITS),
    "The run's images each export is compared with model.keras on: auto (validation, else "
    "test), validation, test, or none.",
)
flags.DEFINE_float(
    "min_agreement",
    None,
    "Fail (exit code 1, no file left) if an export's top-1 label agrees with model.keras's "
    "on fewer than this share of the check images, e.g. 0.98.",
)
flags.DEFINE_bool(
    "measure_latency",
    False,
    "With --format=tflite or onnx: time each written file on one check image (median of 50 "
    "runs after 5 warm-up runs) and add latency_ms_median to export.json.",
)
flags.DEFINE_integer(
    "latency_threads",
    1,
    "With --measure_latency: the CPU threads of the TFLite interpreter or ONNX Runtime.",
)
flags.DEFINE_string(
    "data_dir", "", "Where the run's images are now; empty: the data_dir of its config.json."
)
flags.DEFINE_string("output_dir", "", "Where the export goes; empty: --model_dir.")
flags.DEFINE_bool(
    "safe_mode", True, "Load model.keras in Keras' safe mode (no arbitrary code from the file)."
)
cli.define_verbose_flag(0, "Messages while exporting.")
flags.mark_flags_as_required(["model_dir"])


def main(argv: list[str]) -> None:
    del argv
    modes = [None if mode in ("", "none") else mode for mode in FLAGS.quantize] or [None]
    try:
        export_folder.check_settings(
            FLAGS.format,
            modes,
            FLAGS.check_on,
            FLAGS.io_dtype,
            FLAGS.min_agreement,
            FLAGS.measure_latency,
            FLAGS.latency_threads,
        )
    except ValueError as error:  # flags that cannot go together
        raise app.UsageError(str(error)) from None
    try:
        reports = export_folder.export_model_dir(
            FLAGS.model_dir,
            FLAGS.format,
            modes,
            output_dir=FLAGS.output_dir or None,
            check_on=FLAGS.check_on,
            data_dir=FLAGS.data_dir or None,
            representative_images=FLAGS.representative_images,
            io_dtype=FLAGS.io_dtype,
            min_agreement=FLAGS.min_agreement,
            safe_mode=FLAGS.safe_mode,
            measure_latency=FLAGS.measure_latency,
            latency_threads=FLAGS.latency_threads,
        )
    except export_check.ExportCheckError as error:
        _print(error.reports)
        raise
    _print(reports)


def _print(reports: list[dict]) -> None:
    folder = FLAGS.output_dir or FLAGS.model_dir
    for report in reports:
        print(export_folder.format_report(report))
    if reports:
        print(f"Wrote the reports to {folder}/{export_lib.EXPORT_REPORT_FILE}")


HINTS = {
    export_lib.ExportUnavailableError: (
        "--format=saved_model, tflite and keras need nothing more than TensorFlow (keras: "
        "Keras alone)."
    ),
    export_check.ExportCheckError: (
        "export.json has every export's check; try a milder --quantize (float16, dynamic), "
        "more --representative_images, or a lower --min_agreement."
    ),
}
