r"""`keras-transfer train`: fine-tunes a pretrained backbone on a folder of images or a TFDS
dataset, in two phases.

Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top blocks and
fine-tunes at a lower learning rate. Writes model.keras (for inference: no optimizer
state), labels.txt, config.json, results.json, TensorBoard logs, training curves and a
confusion matrix to --model_dir.

    # Your folder, ImageNet weights downloaded (needs a network):
    keras-transfer train --data_dir=path/to/images --backbone=mobilenet \
      --weights=imagenet --model_dir=runs/mine

    # Offline, from a weights file (in the project's checkout: the shared assets):
    keras-transfer train \
      --data_dir=../shared/assets/datasets/hymenoptera_data \
      --backbone=mobilenet \
      --weights=../shared/assets/weights/mobilenet_1_0_224_tf_no_top.h5 \
      --model_dir=/tmp/ants_vs_bees

    # Settings from a file, flags on top; TFDS data on a Colab TPU in bfloat16:
    keras-transfer train --config=examples/configs/tf_flowers_tpu.yaml \
      --strategy=tpu --mixed_precision --model_dir=gs://bucket/flowers

`--data_dir` holds one folder per class, or `train/` and `val/` (or `validation/`) folders
that do, and optionally `test/`; or any images, labelled by `--labels_csv` (a CSV file with
`path` and `label` columns: `--path_column`, `--label_columns`; `--task=multilabel` or
`regression` for 0/1 label columns or numeric targets); or the TFRecord shards
`kt.data.write_records` wrote from such a folder (found by their records_manifest.json; the
splits are the ones written). `--test_split=0.2` holds out a test set instead: evaluated
once after training, its accuracy (with a 95% interval) in results.json "test" is the
estimate to report; the validation accuracy chose the epoch and settings, so it is optimistic.

A failure prints one error line and a hint on stderr: exit 2 for a command line that cannot
be used (an unknown flag, a bad flag or --config value, an unknown backbone, no
--model_dir, a model_dir holding an earlier run without --overwrite), 1 for anything else (a
missing file, an error while training). `--verbose` alone (or KERAS_TRANSFER_DEBUG=1) adds
the traceback and TensorFlow's own messages. `--helpshort` lists the flags most runs need.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app
from absl import flags

import keras_transfer as kt
from keras_transfer.apps import cli
from keras_transfer.apps import image_classifier as image_classifier_lib
from keras_transfer.apps import image_config
from keras_transfer.apps import image_plan
from keras_transfer.apps import image_reports
from keras_transfer.data.tables import TABLE_TASKS

__all__ = ["HINTS", "main"]

FLAGS = flags.FLAGS
_DEFAULTS = image_config.Config(data_dir="", model_dir="")

flags.DEFINE_string("config", None, "A .yaml or .json file of settings; flags given override it.")
flags.DEFINE_string(
    "data_dir",
    "",
    "Folder of images, one subfolder per class, or with train/ and val/; or the TFRecord "
    "shards of one (kt.data.write_records).",
)
flags.DEFINE_string("dataset", "", "tfds:<name> (e.g. tfds:tf_flowers) instead of --data_dir.")
flags.DEFINE_string(
    "labels_csv",
    _DEFAULTS.labels_csv,
    "A CSV file labelling the images instead of class folders: a header row, a --path_column "
    "of image paths relative to --data_dir and a --label_columns column of class names.",
)
flags.DEFINE_string("path_column", _DEFAULTS.path_column, "The image path column of --labels_csv.")
flags.DEFINE_string(
    "label_columns",
    _DEFAULTS.label_columns,
    "The label column(s) of --labels_csv, comma-separated: one of class names (multiclass), "
    "one 0/1 column per label or one of ';'-separated names (multilabel), the numeric "
    "targets (regression).",
)
flags.DEFINE_enum(
    "task",
    _DEFAULTS.task,
    list(TABLE_TASKS),
    "What the --labels_csv labels are: multiclass (softmax), multilabel (sigmoid, binary "
    "cross-entropy, a threshold per label chosen on validation in thresholds.json) or "
    "regression (linear, mean squared error).",
)
flags.DEFINE_string(
    "bad_rows",
    _DEFAULTS.bad_rows,
    "Rows of --labels_csv that cannot be used (missing file, empty or unknown label, duplicate "
    "path, path out of --data_dir): 'error' lists them by row number, 'skip' leaves them out "
    "with a warning.",
)
flags.DEFINE_string("tfds_data_dir", "", "TFDS data directory (a prepared copy when offline).")
flags.DEFINE_string("train_split", _DEFAULTS.train_split, "TFDS split to train on.")
flags.DEFINE_string(
    "eval_split", _DEFAULTS.eval_split, "TFDS split to validate on; empty for none."
)
flags.DEFINE_string("model_dir", "", "Where the model, results and reports go.")
flags.DEFINE_string(
    "backbone",
    _DEFAULTS.backbone,
    "Backbone name (see keras_transfer.list_backbones()), hub:<handle or path>, or "
    "keras_hub:<KerasHub preset name or folder>.",
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
flags.DEFINE_enum(
    "plan",
    _DEFAULTS.plan,
    list(image_config.PLANS),
    "auto: the advisor (keras_transfer.recommend_training_plan, the rule the defaults suite "
    "chose) sets head_epochs, fine_tune_epochs, unfreeze_blocks, head_lr, fine_tune_lr, "
    "patience, restore_best and ema_momentum when not given; fixed: the fixed defaults "
    f"({image_config.describe_fixed_defaults()}), which the suite's rule chooses for every "
    "dataset today; scaled: keras_transfer.size_scaled_plan (budgets, rates and blocks from "
    "the data's size and per-block LogME, early stopping; it lost on the suite). Flags given "
    "always win.",
)
_PLANNED = " Default: chosen by --plan."
flags.DEFINE_integer(
    "head_epochs", None, "Epochs training the head on the frozen backbone." + _PLANNED
)
flags.DEFINE_integer("fine_tune_epochs", None, "Epochs fine-tuning the unfrozen blocks." + _PLANNED)
flags.DEFINE_bool(
    "cache_features",
    _DEFAULTS.cache_features,
    "Train the head phase on backbone features computed once from the unaugmented training "
    "images (default and mirrored strategies); --nocache_features runs every head epoch "
    "through the frozen backbone on augmented images.",
)
flags.DEFINE_string(
    "unfreeze_blocks",
    None,
    "Blocks to fine-tune: a count from the top, a block name to unfreeze from, or 'all'."
    + _PLANNED,
)
flags.DEFINE_float("head_lr", None, "Learning rate of the head phase." + _PLANNED)
flags.DEFINE_float(
    "fine_tune_lr",
    None,
    "Learning rate of the fine-tuning phase; 0 for head_lr / 10." + _PLANNED,
)
flags.DEFINE_float(
    "validation_split",
    _DEFAULTS.validation_split,
    "Fraction held out when data_dir has no validation folder.",
)
flags.DEFINE_string(
    "test_dir",
    _DEFAULTS.test_dir,
    "A test folder with the class subfolders, evaluated once after training (results.json "
    "'test'); a test/ folder beside data_dir's train/ is used without this flag.",
)
flags.DEFINE_float(
    "test_split",
    _DEFAULTS.test_split,
    "Fraction of each class held out of data_dir as a test set, never seen in training or "
    "model selection and evaluated once after it; 0: none.",
)
flags.DEFINE_integer(
    "max_pixels",
    _DEFAULTS.max_pixels,
    "Skip images with more pixels than this, read from the file header before decoding "
    "(decompression bombs); 0: no limit.",
)
flags.DEFINE_string(
    "class_weight",
    _DEFAULTS.class_weight,
    "Class weights of the training loss: balanced (n / (k * n_c) from the training counts), "
    "none, or a JSON object {class name or index: weight}, e.g. '{\"dogs\": 10}'.",
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (data split, shuffling, initialisation).")
flags.DEFINE_string(
    "augment",
    _DEFAULTS.augment,
    "Comma-separated training augmentations (flip, rotation, zoom, contrast, translation, "
    "crop, randaugment, augmix, and mixup / cutmix, which also mix the labels); empty for none.",
)
flags.DEFINE_float(
    "label_smoothing",
    _DEFAULTS.label_smoothing,
    "Label smoothing of the training loss (e.g. 0.1); 0 for none.",
)
flags.DEFINE_bool(
    "wise_ft",
    _DEFAULTS.wise_ft,
    "WiSE-FT: after fine-tuning, keep the interpolation between the head phase's (with "
    "--zero_shot: the zero-shot classifier's) and the fine-tuned weights (alpha 0, 0.1, ..., "
    "1) with the best validation accuracy.",
)
flags.DEFINE_bool(
    "zero_shot",
    _DEFAULTS.zero_shot,
    "Start from the zero-shot classifier of a CLIP or SigLIP --backbone=keras_hub:<preset>: "
    "its head is the text tower's embeddings of prompts naming the class folders; scored "
    "before training (results.json 'zero_shot'), and WiSE-FT's start with --wise_ft.",
)
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout before the output layer.")
flags.DEFINE_bool(
    "train_bn",
    _DEFAULTS.train_bn,
    "Train BatchNormalization layers too (default: keep them frozen in inference mode).",
)
flags.DEFINE_enum(
    "freeze_strategy",
    _DEFAULTS.freeze_strategy,
    image_config.FREEZE_STRATEGIES,
    "all_frozen: head only; top_n_unfrozen: two phases, --unfreeze_blocks in phase 2; gradual: "
    "--unfreeze_schedule in one timeline; none: train everything from the start; auto: gradual "
    "if --unfreeze_schedule is set, else top_n_unfrozen.",
)
flags.DEFINE_string(
    "unfreeze_schedule",
    _DEFAULTS.unfreeze_schedule,
    "Gradual unfreezing as epoch:blocks pairs, epochs counted from 0 over the whole run, "
    "e.g. '10:1,11:3,12:all'.",
)
flags.DEFINE_float(
    "lr_decay",
    _DEFAULTS.lr_decay,
    "Per-block learning-rate decay in fine-tuning (block i of L gets lr * decay**(L-i)); 0: off.",
)
flags.DEFINE_enum(
    "fine_tune",
    _DEFAULTS.fine_tune,
    ["full", "lora"],
    "Phase 2: 'full' trains the unfrozen blocks' weights, 'lora' low-rank updates of their "
    "layers (adapter.weights.h5 is written beside the model; --resume does not apply).",
)
flags.DEFINE_integer("lora_rank", _DEFAULTS.lora_rank, "LoRA rank with --fine_tune=lora.")
flags.DEFINE_float("lora_alpha", _DEFAULTS.lora_alpha, "LoRA alpha; 0 for the rank.")
flags.DEFINE_string(
    "lora_targets",
    _DEFAULTS.lora_targets,
    "With --fine_tune=lora, the layers of the unfrozen blocks LoRA adapts: empty for the "
    "backbone's default (KerasHub attention: query/value; CNNs: every supported layer), 'all', "
    "'all_dense', or comma-separated layer names and layer-path regex patterns, e.g. "
    "'transformer_block_12/.*/(query|key|value)$'.",
)
flags.DEFINE_enum(
    "lr_schedule",
    _DEFAULTS.lr_schedule,
    image_config.LR_SCHEDULES,
    "Learning-rate schedule within each phase.",
)
flags.DEFINE_integer(
    "warmup_steps", _DEFAULTS.warmup_steps, "Warm-up steps of the cosine schedule."
)
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW weight decay; 0: Adam.")
flags.DEFINE_integer(
    "patience", None, "Early stopping patience in epochs (per phase); 0: off." + _PLANNED
)
flags.DEFINE_enum(
    "strategy",
    _DEFAULTS.strategy,
    list(kt.distribute.STRATEGIES),
    "tf.distribute strategy.",
)
flags.DEFINE_string("tpu", _DEFAULTS.tpu, "TPU address or name, 'local' on a TPU VM, empty: auto.")
flags.DEFINE_bool(
    "mixed_precision",
    _DEFAULTS.mixed_precision,
    "mixed_bfloat16 on TPU, mixed_float16 on GPU; float32 on CPU (measured faster there).",
)
flags.DEFINE_string(
    "export",
    _DEFAULTS.export,
    "Comma-separated: saved_model, tflite; each checked against model.keras on the validation "
    "images, as `keras-transfer export` checks, in export.json.",
)
flags.DEFINE_float(
    "ema_momentum",
    None,
    "Validate and save an exponential moving average of the weights with this momentum "
    "per epoch (converted to keras use_ema's per-step momentum from the batch count); "
    "0 turns it off." + _PLANNED,
)
flags.DEFINE_bool(
    "restore_best",
    None,
    "Keep (and save) the weights of each phase's epoch with the lowest validation loss "
    "instead of the last epoch's; fine-tuning is kept only if it beats the head phase." + _PLANNED,
)
flags.DEFINE_bool(
    "overwrite",
    _DEFAULTS.overwrite,
    "Replace the outputs of an earlier run in model_dir (its model, results, plots, logs and "
    "backup; nothing else). Without it, a model_dir holding anything but a backup to resume "
    "is refused.",
)
flags.DEFINE_bool(
    "resume",
    _DEFAULTS.resume,
    "Back up the training state in model_dir/backup and continue an interrupted run (a run "
    "with other settings is refused, naming them); the backup is deleted once the outputs "
    "are written.",
)
flags.DEFINE_bool(
    "deterministic",
    _DEFAULTS.deterministic,
    "Identical results on every run of the same settings on this machine: seeds plus "
    "TensorFlow's deterministic ops (slower).",
)
flags.DEFINE_bool(
    "diagnostics",
    _DEFAULTS.diagnostics,
    "Before training, score the backbone's blocks on the training images (LogME, H-score); "
    "after it, per-block drift (CKA) from the pretrained backbone on the validation images: "
    "results.json 'diagnostics' and drift.png.",
)
flags.DEFINE_string(
    "source_weights",
    _DEFAULTS.source_weights,
    "With --diagnostics: the backbone's weights file WITH its ImageNet top (e.g. "
    "mobilenet_1_0_224_tf.h5), for the source-task top-1 agreement after fine-tuning.",
)
flags.DEFINE_string(
    "target_dir",
    _DEFAULTS.target_dir,
    "Images of the domain the model will see, any folder layout: results.json 'domain' gets "
    "their distance from the training images (proxy A-distance, MMD) before and after "
    "training, and the target accuracy when they sit in subfolders named like the classes.",
)
flags.DEFINE_enum(
    "adapt",
    _DEFAULTS.adapt,
    ["", *image_config.ADAPT_METHODS, *image_config.SOURCE_FREE_METHODS],
    "Adaptation to the unlabeled images of --target_dir (their labels are never used): "
    "dann, coral, mmd or mcc replace the fine-tuning phase (kt.fit_domain_adaptation); "
    "adabn, tent or shot adapt the trained model at the end, without the training images "
    "(results.json 'adaptation'); empty: none.",
)
cli.define_verbose_flag(
    _DEFAULTS.verbose,
    "Progress: 0 quiet, 1 a progress bar per epoch, 2 one line per epoch (the default), "
    "3 (or --verbose alone) one line per epoch plus TensorFlow's messages and tracebacks.",
)

# `--help` lists every flag under these groups (a test checks that none is missing);
# `--helpshort` lists SHORT_FLAGS, the ones most runs need.
FLAG_GROUPS = {
    "data": [
        "data_dir", "dataset", "tfds_data_dir", "train_split", "eval_split", "validation_split",
        "test_dir", "test_split", "max_pixels", "image_size", "batch_size", "augment",
        "class_weight", "seed", "deterministic", "labels_csv", "path_column", "label_columns",
        "task", "bad_rows",
    ],
    "backbone": ["backbone", "weights", "zero_shot", "dropout", "config"],
    "plan": ["plan", "head_epochs", "fine_tune_epochs", "head_lr", "fine_tune_lr",
             "unfreeze_blocks", "patience", "restore_best"],
    "phases": ["cache_features", "freeze_strategy", "unfreeze_schedule", "train_bn",
               "lr_decay", "lr_schedule", "warmup_steps", "fine_tune", "lora_rank",
               "lora_alpha", "lora_targets"],
    "regularisation and weight averaging": ["weight_decay", "label_smoothing", "ema_momentum",
                                            "wise_ft"],
    "adaptation and diagnostics": ["target_dir", "adapt", "diagnostics", "source_weights"],
    "output": ["model_dir", "overwrite", "resume", "export", "verbose"],
    "distribution": ["strategy", "tpu", "mixed_precision"],
}  # fmt: skip
SHORT_FLAGS = [
    "data_dir", "dataset", "model_dir", "backbone", "weights", "image_size", "batch_size",
    "validation_split", "test_dir", "test_split", "plan", "head_epochs", "fine_tune_epochs",
    "head_lr", "fine_tune_lr", "unfreeze_blocks", "augment", "fine_tune", "export",
    "overwrite", "resume", "strategy", "config", "verbose",
]  # fmt: skip


def main(argv: list[str]) -> None:
    del argv
    fields = image_config.Config.__dataclass_fields__
    overrides = {name: FLAGS[name].value for name in fields if FLAGS[name].present}
    config = image_config.load_config(FLAGS.config, overrides)
    if "verbose" not in overrides and config.verbose == image_config.Config.verbose:
        # A progress bar for a person at a terminal; one line per epoch into a log file.
        config = dataclasses.replace(config, verbose=progress_verbosity(sys.stdout))
    if not config.model_dir:
        raise app.UsageError("Set --model_dir (or model_dir in --config).")
    if bool(config.data_dir) == bool(config.dataset):
        raise app.UsageError("Give exactly one of --data_dir and --dataset=tfds:<name>.")
    results = image_classifier_lib.run(config)
    print(image_plan.describe_plan(results["plan"]))
    print(image_reports.summary(results, config))


def progress_verbosity(stream) -> int:
    """Keras' fit verbosity when none was asked for: 1 (a progress bar) on a terminal, 2 (one
    line per epoch) when the output goes to a file or a pipe."""
    isatty = getattr(stream, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


# Errors whose message names no flag to change.
HINTS = {
    kt.WeightsUnavailableError: (
        "Offline? Pass --weights=/path/to/<backbone>_no_top.h5 (a Keras weights file without "
        "the classification top), put that file in the Keras cache "
        f"({kt.backbones.keras_cache_dir()}), or pass --weights=none to train from scratch."
    ),
}
