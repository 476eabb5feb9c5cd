r"""`keras-transfer adapt`: a trained model adapted to unlabeled images of a new domain,
without the training data (AdaBN, TENT or SHOT).

    keras-transfer adapt --model_dir=/tmp/ants_vs_bees --target_dir=new_camera/ \
        --output_dir=/tmp/ants_vs_bees_new_camera --method=tent

The target images are read exactly as the run's validation images were (its crop and
resize, from config.json), in any folder layout; their labels, if they sit in subfolders
named like the classes, are never used to adapt, only reported. Writes model.keras,
labels.txt, config.json (the run's) and adapt.json (settings, seconds, the label-free
measures: mean prediction entropy, class shares, top-1 unchanged; and the target accuracy
before and after when the folder is labelled; with --test_dir, the test report of the
model before and after; whether the predictions collapsed, in which
case the model before adaptation is kept unless --norevert_collapse) to --output_dir
(default: <model_dir>_<method>, beside it), never to --model_dir.
"""

from __future__ import annotations

from absl import flags

from keras_transfer.apps import adapt as adapt_lib
from keras_transfer.apps import cli

__all__ = ["main"]

FLAGS = flags.FLAGS

flags.DEFINE_string("model_dir", None, "Folder of a trained model (model.keras, labels.txt).")
flags.DEFINE_string("target_dir", None, "Folder of unlabeled images of the new domain.")
flags.DEFINE_string(
    "test_dir",
    None,
    "Optional labelled test folder (subfolders named like the classes): the model is tested "
    'on it before and after adapting (adapt.json "test"). Its labels choose nothing.',
)
flags.DEFINE_string(
    "output_dir",
    "",
    "New folder for the adapted model; empty: <model_dir>_<method>, beside the trained one.",
)
flags.DEFINE_enum(
    "method",
    "adabn",
    list(adapt_lib.SOURCE_FREE_METHODS),
    "adabn: BatchNorm statistics of the target images (no training); tent: entropy "
    "minimisation of the BatchNorm scales and offsets; shot: the backbone trains with the "
    "head fixed (information maximisation and pseudo-labels).",
)
flags.DEFINE_integer(
    "epochs", None, "Epochs over the target images (tent, shot); default tent 1, shot 5."
)
flags.DEFINE_float(
    "learning_rate", None, "Adam's learning rate (tent, shot); default tent 1e-3, shot 1e-4."
)
flags.DEFINE_string(
    "unfreeze_blocks",
    "all",
    "shot: the backbone blocks to train: a count from the top, a block name to unfreeze "
    "from, or 'all' (every backbone layer).",
)
flags.DEFINE_bool(
    "train_bn",
    None,
    "shot: BatchNormalization trains (as SHOT's reference code) and its statistics are "
    "recomputed on the target images; default frozen.",
)
flags.DEFINE_float(
    "min_unchanged",
    None,
    "shot: undo the epoch and stop when fewer than this share of the target images keep "
    "the top class the model gave before adapting (a stop without labels); default 0.8, "
    "0: every epoch kept.",
)
flags.DEFINE_bool(
    "revert_collapse",
    True,
    "Keep the model from before adaptation when the adapted one's predictions collapse "
    "onto fewer classes (the entropy of the predicted class shares more than halves).",
)
flags.DEFINE_integer("batch_size", 32, "Target images per batch.")
flags.DEFINE_integer(
    "max_pixels", 50_000_000, "Skip images with more pixels than this (decompression bombs)."
)
flags.DEFINE_bool(
    "safe_mode", True, "Load model.keras in Keras' safe mode (no arbitrary code from the file)."
)
cli.define_verbose_flag(0, "Messages while adapting.")
flags.mark_flags_as_required(["model_dir", "target_dir"])


def main(argv: list[str]) -> None:
    del argv
    report = adapt_lib.adapt_model_dir(
        FLAGS.model_dir,
        FLAGS.target_dir,
        FLAGS.output_dir or None,
        adapt_lib.AdaptSettings(
            FLAGS.method,
            FLAGS.epochs,
            FLAGS.learning_rate,
            unfreeze=FLAGS.unfreeze_blocks,
            train_bn=FLAGS.train_bn,
            min_unchanged=FLAGS.min_unchanged,
            revert_collapse=FLAGS.revert_collapse,
        ),
        test_dir=FLAGS.test_dir,
        batch_size=FLAGS.batch_size,
        max_pixels=FLAGS.max_pixels or None,
        safe_mode=FLAGS.safe_mode,
        verbose=min(FLAGS.verbose, 2),
    )
    free = report["label_free"]
    line = (
        f"{report['method']} on {report['target_images']} target images: mean entropy "
        f"{free['mean_entropy_before']:.4f} -> {free['mean_entropy_after']:.4f}, top-1 "
        f"unchanged {100 * free['unchanged_top1']:.1f}%"
    )
    if report["target_accuracy_before"] is not None:
        line += (
            f"; target accuracy {report['target_accuracy_before']:.4f} -> "
            f"{report['target_accuracy_after']:.4f} (labels read for this line only)"
        )
    if "test" in report:
        line += (
            f"; test accuracy {report['test']['before']['accuracy']:.4f} -> "
            f"{report['test']['after']['accuracy']:.4f}"
        )
    if report["collapse"]["kept"] == "before_adaptation":
        line += "; the predictions collapsed, so the model was kept as it was before adaptation"
    print(line)
    print(f"Wrote {report['output_dir']}")
