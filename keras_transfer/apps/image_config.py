"""The settings of one image classifier run: `Config`, its allowed values, the `--config`
file's reading (`load_config`) and the checks that need the file system (`check_config`).

`plan="fixed"` fills the planned settings left at None with `FIXED_DEFAULTS`; `plan="auto"`
asks the advisor (`image_plan.plan_training`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keras_transfer import data as data_lib
from keras_transfer.apps import config as config_lib
from keras_transfer.apps import model_folder
from keras_transfer.apps.image_tasks import check_task_options
from keras_transfer.apps.model_folder import RESOLVED_CONFIG_FILE
from keras_transfer.backbones import registry
from keras_transfer.data import imbalance
from keras_transfer.data.tables import BAD_ROW_POLICIES
from keras_transfer.data.tables import TABLE_TASKS
from keras_transfer.peft.lora_targets import parse_lora_targets
from keras_transfer.training import two_phase
from keras_transfer.training.callbacks.unfreezing import checked_unfreeze_schedule
from keras_transfer.utils import backend
from keras_transfer.utils import distribute
from keras_transfer.utils import files

__all__ = [
    "ADAPT_METHODS",
    "SOURCE_FREE_METHODS",
    "Config",
    "EXPORT_FORMATS",
    "FIXED_DEFAULTS",
    "FREEZE_STRATEGIES",
    "LR_SCHEDULES",
    "PLANS",
    "RESOLVED_CONFIG_FILE",
    "check_config",
    "describe_fixed_defaults",
    "load_config",
]


FREEZE_STRATEGIES = ("auto", "all_frozen", "top_n_unfrozen", "gradual", "none")
LR_SCHEDULES = ("constant", "cosine", "slanted_triangular", "one_cycle")
EXPORT_FORMATS = ("saved_model", "tflite")
PLANS = ("auto", "fixed", "scaled")
# Domain adaptation with the labelled training images, in place of the fine-tuning phase.
ADAPT_METHODS = ("dann", "coral", "mmd", "mcc")
# Source-free adaptation of the trained model, after training (`apps.adapt`).
SOURCE_FREE_METHODS = ("adabn", "tent", "shot")
# What `plan="fixed"` fills in: `fit_two_phase`'s own defaults (the settings before the
# advisor), so the command, the API and the README's snippets agree.
FIXED_DEFAULTS = dict(
    head_epochs=two_phase.DEFAULT_HEAD_EPOCHS,
    fine_tune_epochs=two_phase.DEFAULT_FINE_TUNE_EPOCHS,
    unfreeze_blocks="all",
    head_lr=two_phase.DEFAULT_HEAD_LR,
    fine_tune_lr=two_phase.DEFAULT_FINE_TUNE_LR,
    patience=0,
    restore_best=False,
    ema_momentum=two_phase.DEFAULT_EMA_MOMENTUM,
)


def describe_fixed_defaults() -> str:
    """`FIXED_DEFAULTS`' values in their order, as the command's flags spell them
    (`--plan`'s help quotes them)."""

    def spelled(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(spelled(value) for value in FIXED_DEFAULTS.values())


@dataclasses.dataclass
class Config:
    """Everything one run needs; the binary's flags and the `--config` file's keys map one to
    one onto these fields (the file also takes the recipe aliases in
    `apps.config.TRANSFER_CONFIG_ALIASES`). Invalid values raise `apps.config.ConfigError`.

    ```python
    config = Config(data_dir="images", model_dir="runs/one", backbone="mobilenet")
    results = run(config)
    ```
    """

    data_dir: str = ""
    model_dir: str = ""
    # "tfds:<name>" reads TensorFlow Datasets instead of data_dir.
    dataset: str = ""
    tfds_data_dir: str = ""
    train_split: str = "train[:80%]"
    eval_split: str = "train[80%:]"
    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    image_size: int = 0  # 0: the backbone's pretrained size
    batch_size: int = 32
    # "auto": the advisor (keras_transfer.recommend_training_plan, the defaults suite's rule)
    # fills in the settings left at None below; "fixed": FIXED_DEFAULTS (today the rule is
    # one plan for every dataset, this one); "scaled": keras_transfer.size_scaled_plan.
    plan: str = "auto"
    head_epochs: int | None = None
    fine_tune_epochs: int | None = None
    # Phase 1 on backbone features computed once from the unaugmented training images: 20
    # head epochs then take less time than 2 through the frozen backbone.
    cache_features: bool = True
    # auto: "gradual" when unfreeze_schedule is set, else "top_n_unfrozen".
    freeze_strategy: str = "auto"
    unfreeze_blocks: str | None = None
    unfreeze_schedule: str = ""
    head_lr: float | None = None
    # Adam fine-tuning all blocks of a small dataset needs a far lower rate than the head's:
    # at head_lr / 10 = 1e-4 ants-vs-bees validation accuracy fell from 0.87 to 0.73 in the
    # first fine-tuning epoch; 2e-5 improved it steadily. 0 means head_lr / 10.
    fine_tune_lr: float | None = None
    lr_decay: float = 0.0  # 0: one learning rate for all blocks
    # "lora": phase 2 trains LoRA updates of the unfrozen blocks (keras_transfer.enable_lora)
    # and writes adapter.weights.h5 beside the model.
    fine_tune: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 0.0  # 0: the rank
    # The layers of those blocks LoRA adapts: "" the backbone's default (KerasHub attention:
    # the query/value projections; CNNs: every supported layer), "all", "all_dense", or
    # comma-separated layer names and layer-path patterns (keras_transfer.enable_lora).
    lora_targets: str = ""
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    # Validate and save an exponential moving average of the weights, its momentum stated
    # per epoch (the older weights' share after one epoch; 0: off), so 0.5 averages over
    # about the last two epochs on any dataset (kt.fit_two_phase's ema_momentum).
    ema_momentum: float | None = None
    patience: int | None = None  # 0: no early stopping
    # Keep (and save) the weights of each phase's epoch with the lowest validation loss
    # instead of its last epoch's; the fine-tuning phase must beat the head phase's best
    # (kt.ValidatedEarlyStopping(carry_over=True)), else the head phase's weights are kept.
    restore_best: bool | None = None
    validation_split: float = 0.2
    # A test set, evaluated once after training (results.json "test"): a folder with the
    # class subfolders (a test/ beside data_dir's train/ is found without it), or a
    # fraction of each class held out of data_dir. Image folders only.
    test_dir: str = ""
    test_split: float = 0.0
    # Images with more pixels are skipped before decoding (decompression bombs); 0: no limit.
    max_pixels: int = 50_000_000
    # Labels from a CSV file instead of class folders (kt.image_table_dataset): its
    # path_column holds image paths relative to data_dir, label_columns the class names
    # (multiclass), the 0/1 label columns (multilabel) or the numeric targets (regression;
    # apps.image_tasks); bad_rows "error" or "skip" (named by row).
    labels_csv: str = ""
    path_column: str = "path"
    label_columns: str = "label"
    task: str = "multiclass"
    bad_rows: str = "error"
    # Class weights of the training loss: "balanced" (n / (k * n_c)), "none", or a JSON
    # object {class name or index: weight}, e.g. '{"dogs": 10}'.
    class_weight: str = "none"
    seed: int = 42
    augment: str = "flip,crop"
    # Label smoothing of the training loss; with it or with mixup/cutmix in augment the
    # model trains with kt.SoftLabelCrossentropy (class indices and soft labels alike).
    label_smoothing: float = 0.0
    # WiSE-FT (kt.wise_ft): after fine-tuning, interpolate between the head phase's weights
    # (the zero-shot classifier's with zero_shot) and the fine-tuned ones, alpha in 0, 0.1,
    # ..., 1 chosen on validation accuracy (results.json "wise_ft"). Needs fine_tune=full,
    # top_n_unfrozen blocks and resume.
    wise_ft: bool = False
    # Start from a zero-shot classifier (kt.zero_shot_classifier) of a CLIP or SigLIP
    # backbone (keras_hub:<preset>): its head is the text tower's embeddings of prompts
    # naming the class folders. Scored before training (results.json "zero_shot"); WiSE-FT
    # then interpolates from it.
    zero_shot: bool = False
    dropout: float = 0.2
    train_bn: bool = False
    strategy: str = "default"
    tpu: str = ""
    mixed_precision: bool = False
    export: str = ""
    resume: bool = True
    # Replace the outputs of an earlier run in model_dir (RUN_OUTPUTS only); without it a
    # model_dir holding anything but a backup to resume is refused.
    overwrite: bool = False
    # Measure transferability before training and per-block drift after it (results.json
    # "diagnostics", drift.png); source_weights: a with-top weights file of the backbone
    # (e.g. mobilenet_1_0_224_tf.h5) for the source-task agreement.
    diagnostics: bool = False
    source_weights: str = ""
    # Images of the domain the model will see (any folder layout; class subfolders named
    # like the training classes give a target accuracy): results.json "domain" reports the
    # domain distance before and after training. With adapt (dann, coral, mmd), the
    # fine-tuning phase is unsupervised domain adaptation on them (kt.fit_domain_adaptation).
    target_dir: str = ""
    adapt: str = ""
    # Keras fit verbosity 0-2; 3 is 2 for Keras, and the binary shows tracebacks.
    verbose: int = 2
    # Same results on every run of the same settings on the same machine: seeds and
    # TensorFlow's deterministic ops (slower; it cannot be turned off in the process).
    deterministic: bool = False

    def __post_init__(self):
        def check(name, allowed):
            if getattr(self, name) not in allowed:
                raise config_lib.ConfigError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}."
                )

        check("freeze_strategy", FREEZE_STRATEGIES)
        check("plan", PLANS)
        check("fine_tune", ("full", "lora"))
        if self.fine_tune == "lora" and self.resolved_freeze_strategy() == "gradual":
            raise config_lib.ConfigError("fine_tune=lora does not combine with gradual unfreezing.")
        if self.lora_targets and self.fine_tune != "lora":
            raise config_lib.ConfigError(
                f"lora_targets={self.lora_targets!r} chooses the layers LoRA adapts: add "
                "fine_tune=lora (--fine_tune=lora), or drop lora_targets."
            )
        try:
            self.resolved_lora_targets()
        except ValueError as error:
            raise config_lib.ConfigError(f"{error} (--lora_targets)") from None
        check("lr_schedule", LR_SCHEDULES)
        check("strategy", distribute.STRATEGIES)
        for name in ("head_epochs", "fine_tune_epochs", "patience", "warmup_steps"):
            if (getattr(self, name) or 0) < 0:
                raise config_lib.ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 <= self.verbose <= 3:
            raise config_lib.ConfigError(f"verbose must be 0, 1, 2 or 3, got {self.verbose}.")
        if self.batch_size <= 0:
            raise config_lib.ConfigError(f"batch_size must be > 0, got {self.batch_size}.")
        if not 0 <= self.lr_decay <= 1:
            raise config_lib.ConfigError(f"lr_decay must lie in [0, 1], got {self.lr_decay}.")
        if not 0 <= (self.ema_momentum or 0) < 1:
            raise config_lib.ConfigError(
                f"ema_momentum must lie in [0, 1) (0: off), got {self.ema_momentum}."
            )
        self._check_recipes()
        if self.weight_decay < 0:
            raise config_lib.ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        unknown = set(self.export_formats()) - set(EXPORT_FORMATS)
        if unknown:
            raise config_lib.ConfigError(
                f"Unknown export format(s) {sorted(unknown)}; use {', '.join(EXPORT_FORMATS)}."
            )
        if self.dataset and not self.dataset.startswith("tfds:"):
            raise config_lib.ConfigError(
                f"dataset={self.dataset!r}: write tfds:<name> (e.g. tfds:tf_flowers), or use "
                "data_dir for a folder of images."
            )
        if self.freeze_strategy == "gradual" and not self.unfreeze_schedule:
            raise config_lib.ConfigError(
                "freeze_strategy='gradual' needs unfreeze_schedule, e.g. '10:1,11:3,12:all'."
            )
        check("adapt", ("",) + ADAPT_METHODS + SOURCE_FREE_METHODS)
        if self.adapt and not self.target_dir:
            raise config_lib.ConfigError(
                f"adapt={self.adapt!r} adapts to unlabeled target images: set target_dir "
                "(--target_dir) to a folder of them."
            )
        if self.adapt in ADAPT_METHODS and (
            self.fine_tune != "full" or self.resolved_freeze_strategy() != "top_n_unfrozen"
        ):
            raise config_lib.ConfigError(
                f"adapt={self.adapt!r} replaces the fine-tuning phase of the two-phase "
                "strategy: use freeze_strategy auto or top_n_unfrozen with fine_tune=full."
            )
        if self.source_weights and not self.diagnostics:
            raise config_lib.ConfigError(
                "source_weights is for the diagnostics' source-task agreement: add diagnostics "
                "(--diagnostics), or drop source_weights."
            )
        if self.unfreeze_schedule:
            checked_unfreeze_schedule(self.unfreeze_schedule)  # a clear error for bad syntax
        try:
            imbalance.parse_class_weight(self.class_weight)
        except ValueError as error:
            raise config_lib.ConfigError(str(error)) from None
        self._check_test_set()
        self._check_table()
        self._check_backend()  # last: a setting's own mistake is named first

    def _check_test_set(self) -> None:
        if not 0 <= self.test_split < 1:
            raise config_lib.ConfigError(
                f"test_split must lie in [0, 1) (0: no held-out test set), got {self.test_split}."
            )
        if self.test_dir and self.test_split:
            raise config_lib.ConfigError(
                "Give one of test_dir (a test folder) and test_split (a held-out fraction)."
            )
        if self.dataset and (self.test_dir or self.test_split):
            raise config_lib.ConfigError(
                "test_dir and test_split are for data_dir: with a TFDS dataset, load it with "
                "keras_transfer.tfds_dataset(test_split=...) in Python."
            )
        # validation_split's own range is check_config's (_check_numbers) to report.
        if 0 <= self.validation_split < 1 and self.validation_split + self.test_split >= 1:
            raise config_lib.ConfigError(
                f"validation_split={self.validation_split} and test_split={self.test_split} "
                "leave no training images: their sum must be below 1."
            )

    def _check_table(self) -> None:
        if self.task not in TABLE_TASKS:
            raise config_lib.ConfigError(f"task must be one of {TABLE_TASKS}, got {self.task!r}.")
        if self.bad_rows not in BAD_ROW_POLICIES:
            raise config_lib.ConfigError(
                f"bad_rows must be one of {BAD_ROW_POLICIES}, got {self.bad_rows!r}."
            )
        if self.labels_csv and (self.dataset or self.test_dir):
            raise config_lib.ConfigError(
                "labels_csv labels the images of data_dir: it takes no dataset or test_dir "
                "(hold a test set out with test_split)."
            )
        check_task_options(self)  # what a multilabel or regression run cannot use

    def resolved_weights(self) -> str | None:
        if self.weights is None or str(self.weights).lower() in ("", "none"):
            return None
        return self.weights

    def _check_recipes(self) -> None:
        if self.wise_ft and (
            self.fine_tune != "full"
            or self.resolved_freeze_strategy() != "top_n_unfrozen"
            or self.adapt
            or not self.resume
        ):
            raise config_lib.ConfigError(
                "wise_ft interpolates from the head phase's weights, kept in the run's backup: "
                "it needs fine_tune=full, freeze_strategy top_n_unfrozen (or auto), no adapt, "
                "and resume."
            )
        if self.zero_shot and not self.backbone.startswith("keras_hub:"):
            raise config_lib.ConfigError(
                f"zero_shot needs a CLIP or SigLIP image-text backbone; backbone="
                f"{self.backbone!r} is not one. Use --backbone=keras_hub:<clip or siglip preset "
                "name or folder>, or drop --zero_shot."
            )
        if not 0 <= self.label_smoothing < 1:
            raise config_lib.ConfigError(
                f"label_smoothing must lie in [0, 1) (0: none), got {self.label_smoothing}."
            )

    def resolved_lora_targets(self) -> str | list[str] | None:
        """`enable_lora`'s `targets` from `lora_targets` (`parse_lora_targets`)."""
        return parse_lora_targets(self.lora_targets)

    def resolved_freeze_strategy(self) -> str:
        if self.freeze_strategy != "auto":
            return self.freeze_strategy
        return "gradual" if self.unfreeze_schedule else "top_n_unfrozen"

    def _check_backend(self) -> None:
        """The TensorFlow-only settings refused before any work on another Keras backend."""
        if backend.is_tensorflow():
            return
        needs_tensorflow = {
            f"adapt={self.adapt}": self.adapt in ADAPT_METHODS,
            f"backbone={self.backbone}": self.backbone.startswith("hub:"),
            "export=tflite": "tflite" in self.export_formats(),
            "freeze_strategy=gradual": self.resolved_freeze_strategy() == "gradual",
        }
        alternative = (
            "set KERAS_BACKEND=tensorflow (adapt=adabn|tent|shot, keras.applications "
            "backbones, freeze_strategy=top_n_unfrozen and export=saved_model run on JAX)"
        )
        for setting, needed in needs_tensorflow.items():
            if needed:
                try:
                    backend.require_tensorflow(setting, alternative)
                except backend.BackendError as error:  # a usage error of the command
                    raise config_lib.ConfigError(str(error)) from None

    def export_formats(self) -> list[str]:
        return [f.strip() for f in self.export.split(",") if f.strip()]

    def resolved(self, image_size: int) -> dict[str, Any]:
        """The settings the run really used, as `config.json` holds them (and `--config`
        reads them back): the real image size, freeze strategy and fine-tuning rate, and
        only the data source's own fields."""
        values = dataclasses.asdict(self)
        values.update(
            image_size=int(image_size),
            freeze_strategy=self.resolved_freeze_strategy(),
            fine_tune_lr=self.fine_tune_lr or self.head_lr / 10,
            weights=self.resolved_weights() or "none",
        )
        unused = _TFDS_FIELDS if self.data_dir else _FOLDER_FIELDS
        if not self.labels_csv:
            unused += _TABLE_FIELDS
        for name in unused:
            values.pop(name, None)
        return values


# Fields that only a TFDS run, or only an image-folder run, reads.
_TFDS_FIELDS = ("dataset", "tfds_data_dir", "train_split", "eval_split")
_FOLDER_FIELDS = ("data_dir", "validation_split", "test_dir", "test_split", "max_pixels")
# Fields that only a run with labels_csv reads.
_TABLE_FIELDS = ("labels_csv", "path_column", "label_columns", "task", "bad_rows")


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """The run's `Config`: the file's settings (if `path`), then `overrides` (the flags given
    on the command line) on top."""
    values = config_lib.read_config_file(path) if path else {}
    return config_lib.build_config(
        Config, values, overrides=overrides, source=repr(path) if path else "the flags"
    )


def check_config(config: Config) -> None:
    """Fails (`ConfigError`, `FileNotFoundError`) before any work on what `Config` alone
    does not check: the numbers' ranges, the outputs' folder, the data source, the files
    and folders the settings name. A run calls it first, so a bad setting is reported
    before the backbone is built or a single image is read."""
    _check_numbers(config)
    _check_backbone(config)
    if not config.model_dir:
        raise config_lib.ConfigError("Set model_dir (--model_dir): where the outputs go.")
    model_folder.check_model_dir(config.model_dir)
    model_folder.check_model_dir_reuse(config.model_dir, config.overwrite, config.resume)
    if bool(config.data_dir) == bool(config.dataset):
        raise config_lib.ConfigError(
            "Give exactly one of data_dir (--data_dir, a folder of images) and dataset "
            "(--dataset=tfds:<name>)."
        )
    weights = config.resolved_weights()
    if (
        weights not in (None, "imagenet")
        and registry.backbone_prefix(config.backbone) is None
        and not files.isfile(weights)
    ):
        raise FileNotFoundError(
            f"weights={weights!r} (--weights) is not a file. Give the path of the backbone's "
            "headless weights file (e.g. mobilenet_1_0_224_tf_no_top.h5), 'imagenet' to "
            "download them, or 'none' to start from random weights."
        )
    if config.labels_csv and not files.isfile(config.labels_csv):
        raise FileNotFoundError(
            f"labels_csv={config.labels_csv!r} (--labels_csv) is not a file. Give a CSV file "
            f"with a header row, a {config.path_column!r} column of image paths relative to "
            f"data_dir and a {config.label_columns!r} column of class names."
        )
    if config.labels_csv and config.data_dir and not files.isdir(config.data_dir):
        raise FileNotFoundError(
            f"data_dir={config.data_dir!r} (--data_dir) is not a folder: with labels_csv it "
            "is the folder the CSV's image paths are relative to."
        )
    if config.data_dir and not files.isdir(config.data_dir):
        raise FileNotFoundError(
            f"data_dir={config.data_dir!r} (--data_dir) is not a folder. Give a folder with "
            "one subfolder of images per class, or with train/ and val/ folders that have them."
        )
    records = bool(config.data_dir) and data_lib.is_records_folder(config.data_dir)
    if records and (config.labels_csv or config.test_dir):
        raise config_lib.ConfigError(
            f"data_dir={config.data_dir!r} holds TFRecord shards, which carry their labels and "
            "splits: labels_csv and test_dir are for image folders. Drop them, or write the "
            "records again with them (kt.data.write_records(..., test_dir=...))."
        )
    if config.test_dir and not files.isdir(config.test_dir):
        raise FileNotFoundError(
            f"test_dir={config.test_dir!r} (--test_dir) is not a folder. Give a folder with "
            "the same class subfolders as the training images."
        )
    if config.target_dir and not files.isdir(config.target_dir):
        raise FileNotFoundError(
            f"target_dir={config.target_dir!r} (--target_dir) is not a folder. Give a folder "
            "of images of the target domain, or leave target_dir empty."
        )
    if config.source_weights and not files.isfile(config.source_weights):
        raise FileNotFoundError(
            f"source_weights={config.source_weights!r} (--source_weights) is not a file. "
            "Give the backbone's with-top weights file (e.g. mobilenet_1_0_224_tf.h5), or "
            "leave source_weights empty."
        )


def _check_numbers(config: Config) -> None:
    def refuse(name: str, rule: str) -> None:
        raise config_lib.ConfigError(
            f"{name}={getattr(config, name)!r} (--{name}): {name} must be {rule}."
        )

    if config.head_lr is not None and not config.head_lr > 0:
        refuse("head_lr", "> 0 (e.g. 1e-3), or unset for the plan's rate")
    if config.fine_tune_lr is not None and not config.fine_tune_lr >= 0:
        refuse("fine_tune_lr", "> 0 (e.g. 2e-5), 0 for head_lr / 10, or unset for the plan's")
    if config.image_size < 0:
        refuse("image_size", ">= 0 (0: the backbone's pretrained size)")
    if not 0 <= config.validation_split < 1:
        refuse("validation_split", "in [0, 1): the fraction of images held out")
    if not 0 <= config.dropout < 1:
        refuse("dropout", "in [0, 1)")
    if config.max_pixels < 0:
        refuse("max_pixels", ">= 0 (0: no limit)")
    if config.lora_rank < 1:
        refuse("lora_rank", "an integer >= 1 (typically 4 to 16)")
    if config.lora_alpha < 0:
        refuse("lora_alpha", ">= 0 (0: the rank)")
    try:
        data_lib.augmentation_pipeline(config.augment or None, seed=0)
    except ValueError as error:
        raise config_lib.ConfigError(f"augment={config.augment!r} (--augment): {error}") from None


def _check_backbone(config: Config) -> None:
    """A registered backbone name, and an image size its architecture accepts."""
    if registry.backbone_prefix(config.backbone) is not None:
        return  # hub:..., keras_hub:...: checked when the backbone is built
    try:
        spec = registry.get_spec(config.backbone)
    except ValueError as error:
        raise config_lib.ConfigError(
            f"backbone={config.backbone!r} (--backbone): {error}"
        ) from None
    if config.image_size and config.image_size < spec.min_size:
        raise config_lib.ConfigError(
            f"image_size={config.image_size} (--image_size): {config.backbone} needs images of "
            f"at least {spec.min_size}x{spec.min_size}; use --image_size={spec.min_size} or "
            "more, or 0 for its pretrained size."
        )
