r"""`keras-transfer export`: a trained model in a serving format.

    keras-transfer export --model_dir=/tmp/ants_vs_bees --format=tflite

`--format=saved_model` writes `saved_model/` (a `serve` signature taking raw 0-255 float32
RGB images), `tflite` writes `model.tflite` (converted from that SavedModel), `onnx`
writes `model.onnx` (needs the `onnx` extra: pip install 'keras-transfer[onnx]'). The
outputs go to --model_dir unless --output_dir is given.
"""

from __future__ import annotations

from absl import flags

from keras_transfer.apps import cli
from keras_transfer.apps import export as export_lib
from keras_transfer.apps import predict as predict_lib

__all__ = ["HINTS", "main"]

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Folder of a trained model (model.keras).")
flags.DEFINE_enum("format", "saved_model", list(export_lib.EXPORT_FORMATS), "Export format.")
flags.DEFINE_string("output_dir", "", "Where the export goes; empty: --model_dir.")
flags.DEFINE_bool(
    "safe_mode", True, "Load model.keras in Keras' safe mode (no arbitrary code from the file)."
)
cli.define_verbose_flag(0, "Messages while exporting.")
flags.mark_flags_as_required(["model_dir"])


def main(argv: list[str]) -> None:
    del argv
    model, _ = predict_lib.load_trained(FLAGS.model_dir, safe_mode=FLAGS.safe_mode)
    path = export_lib.export_model(model, FLAGS.output_dir or FLAGS.model_dir, FLAGS.format)
    print(f"Wrote {path}")


HINTS = {
    export_lib.ExportUnavailableError: (
        "--format=saved_model and --format=tflite need nothing more than TensorFlow."
    ),
}
