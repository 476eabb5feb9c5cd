r"""Fine-tunes a pretrained backbone on a folder of images, in two phases.

Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top blocks and
fine-tunes at a lower learning rate. Writes model.keras, labels.txt and results.json.

    python examples/image_classifier.py \
      --data_dir=../shared/assets/datasets/hymenoptera_data \
      --backbone=mobilenet \
      --weights=../shared/assets/weights/mobilenet_1_0_224_tf_no_top.h5 \
      --model_dir=/tmp/ants_vs_bees

`--data_dir` holds one folder per class, or `train/` and `val/` (or `validation/`) folders
that do.
"""

from absl import app
from absl import flags

import image_classifier_lib

FLAGS = flags.FLAGS
_DEFAULTS = image_classifier_lib.Config(data_dir="", model_dir="")

flags.DEFINE_string(
    "data_dir", None, "Folder of images, one subfolder per class, or with train/ and val/."
)
flags.DEFINE_string("model_dir", None, "Where model.keras, labels.txt and results.json go.")
flags.DEFINE_string(
    "backbone",
    _DEFAULTS.backbone,
    "Backbone name (see keras_transfer.list_backbones()) or hub:<handle or path>.",
)
flags.DEFINE_string(
    "weights", _DEFAULTS.weights, "'imagenet', 'none', or the path to a weights file (offline)."
)
flags.DEFINE_integer(
    "image_size",
    _DEFAULTS.image_size,
    "Input height and width; 0 for the backbone's pretrained size.",
)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Batch size.")
flags.DEFINE_integer(
    "head_epochs", _DEFAULTS.head_epochs, "Epochs training the head on the frozen backbone."
)
flags.DEFINE_integer(
    "fine_tune_epochs", _DEFAULTS.fine_tune_epochs, "Epochs fine-tuning the unfrozen blocks."
)
flags.DEFINE_string(
    "unfreeze_blocks",
    _DEFAULTS.unfreeze_blocks,
    "Blocks to fine-tune: a count from the top, a block name to unfreeze from, or 'all'.",
)
flags.DEFINE_float("head_lr", _DEFAULTS.head_lr, "Learning rate of the head phase.")
flags.DEFINE_float(
    "fine_tune_lr",
    _DEFAULTS.fine_tune_lr,
    "Learning rate of the fine-tuning phase; 0 for head_lr / 10.",
)
flags.DEFINE_float(
    "validation_split",
    _DEFAULTS.validation_split,
    "Fraction held out when data_dir has no validation folder.",
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (data split, shuffling, initialisation).")
flags.DEFINE_string(
    "augment",
    _DEFAULTS.augment,
    "Comma-separated training augmentations (flip, rotation, zoom, contrast, translation, crop); empty for none.",
)
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout before the output layer.")
flags.DEFINE_bool(
    "train_bn",
    _DEFAULTS.train_bn,
    "Train BatchNormalization layers too (default: keep them frozen in inference mode).",
)
flags.DEFINE_integer(
    "verbose",
    _DEFAULTS.verbose,
    "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
)
flags.mark_flags_as_required(["data_dir", "model_dir"])


def main(argv):
    del argv
    config = image_classifier_lib.Config(
        **{field: FLAGS[field].value for field in image_classifier_lib.Config.__dataclass_fields__}
    )
    results = image_classifier_lib.run(config)
    for phase in ("feature_extraction", "fine_tune"):
        if results[phase]:
            print(
                f"{phase}: val_accuracy={results[phase].get('val_accuracy', float('nan')):.4f} "
                f"({results[phase]['epochs']} epochs, {results[phase]['seconds']:.1f} s)"
            )
    print(f"Saved model.keras, labels.txt and results.json to {config.model_dir}")


if __name__ == "__main__":
    app.run(main)
