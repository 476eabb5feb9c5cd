r"""`keras-transfer predict`: the top classes of image files by a trained model.

    keras-transfer predict --model_dir=/tmp/ants_vs_bees bee.jpg photos/
    keras-transfer predict --model_dir=/tmp/ants_vs_bees --format=jsonl --top_k=1 photos/

Folders are searched recursively for .jpg/.jpeg/.png/.gif/.bmp/.webp files. Prints one
row per image: its top `--top_k` labels (the class names stored in model.keras) with their
probabilities, as a table (default), JSON lines or CSV on stdout. For a multilabel run
(`task` in its config.json) the row holds every label whose probability is at or above its
threshold (the run's thresholds.json), then every label's probability; for a regression run
the predicted value of each target. `--top_k` applies to multiclass runs only. Images are read exactly as
the run's validation images were (its crop_fraction and resize, from config.json). Files
that cannot be read are skipped with a message on stderr and counted; the exit code is 1
when no image could be read.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from keras_transfer.apps import cli
from keras_transfer.apps import predict as predict_lib
from keras_transfer.apps import predict_tasks

__all__ = ["main"]

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Folder of a trained model (model.keras, labels.txt).")
flags.DEFINE_integer("top_k", 3, "How many of the most probable classes to show per image.")
flags.DEFINE_enum("format", "table", list(predict_lib.FORMATS), "Output format on stdout.")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.")
flags.DEFINE_integer(
    "max_pixels", 50_000_000, "Skip images with more pixels than this (decompression bombs)."
)
flags.DEFINE_bool(
    "safe_mode",
    True,
    "Load model.keras in Keras' safe mode (no arbitrary code from the file).",
)
cli.define_verbose_flag(0, "Messages while predicting.")
flags.mark_flags_as_required(["model_dir"])


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image files or folders after the flags.")
    if FLAGS.top_k < 1:
        raise app.UsageError(f"--top_k must be >= 1, got {FLAGS.top_k}.")
    model, labels = predict_lib.load_trained(FLAGS.model_dir, safe_mode=FLAGS.safe_mode)
    config = predict_lib.read_run_config(FLAGS.model_dir)
    # A multilabel or regression run's task (config.json) and label thresholds.
    settings = predict_tasks.task_settings(FLAGS.model_dir, model, labels, config)
    rows, skipped = predict_lib.predict_files(
        model,
        labels,
        paths,
        top_k=FLAGS.top_k,
        batch_size=FLAGS.batch_size,
        max_pixels=FLAGS.max_pixels or None,
        **predict_lib.decode_settings(FLAGS.model_dir, config),
        **settings,
    )
    sys.stdout.write(predict_lib.format_rows(rows, FLAGS.format, settings["task"]))
    sys.stdout.flush()
    for path, reason in skipped.items():
        sys.stderr.write(f"skipped {path}: {reason}\n")
    if skipped:
        sys.stderr.write(f"{len(rows)} image(s) predicted, {len(skipped)} skipped\n")
    if not rows:
        raise FileNotFoundError(
            f"No readable image among {' '.join(paths)}: give image files or folders of them."
        )
    return 0
