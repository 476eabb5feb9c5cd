r"""Fine-tunes a pretrained backbone on a folder of images or a TFDS dataset, in two phases.

Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top blocks and
fine-tunes at a lower learning rate. Writes model.keras (for inference: no optimizer
state), labels.txt, config.json, results.json, TensorBoard logs, training curves and a
confusion matrix to --model_dir.

    python examples/image_classifier.py \
      --data_dir=../shared/assets/datasets/hymenoptera_data \
      --backbone=mobilenet \
      --weights=../shared/assets/weights/mobilenet_1_0_224_tf_no_top.h5 \
      --model_dir=/tmp/ants_vs_bees

    # Settings from a file, flags on top; TFDS data on a Colab TPU in bfloat16:
    python examples/image_classifier.py --config=examples/configs/tf_flowers_tpu.yaml \
      --strategy=tpu --mixed_precision --model_dir=gs://bucket/flowers

The installed command `keras-transfer train` is the same program with the same flags.

`--data_dir` holds one folder per class, or `train/` and `val/` (or `validation/`) folders
that do.

A failure prints one error line and a hint on stderr: exit 2 for a command line that cannot
be used (an unknown flag, a bad flag value, no --model_dir), 1 for anything else (a bad
setting in --config, a missing file, an error while training). `--verbose` alone (or
KERAS_TRANSFER_DEBUG=1) adds the traceback.
"""

from keras_transfer.apps import cli
from keras_transfer.apps import image_classifier_cli

if __name__ == "__main__":
    cli.run(
        image_classifier_cli.main,
        hints=image_classifier_cli.HINTS,
        doc=image_classifier_cli.__doc__,
        flags_modules=[image_classifier_cli],
    )
