"""Logic of the image classifier example: images in, a fine-tuned model and its reports out.

`run` composes named steps, each a function tests and notebooks can call on its own (the
shape of TF Hub's `make_image_classifier_lib.make_image_classifier`):

    check_config -> create_backbone -> load_data -> measure_transferability
        -> plan_training -> build_model -> [check_diagnostics, load_target] -> train_model
        -> save_model -> report [-> domain_report, diagnose] -> export

`plan_training` fills in the training settings left unset (None) with the advisor's plan
(`keras_transfer.recommend_training_plan`), see docs/diagnostics_and_defaults.md.

`examples/image_classifier.py` holds only the flags and `main`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import _config as config_lib
from keras_transfer.apps import _outputs
from keras_transfer.apps import export as export_lib
from keras_transfer.data import imbalance
from keras_transfer.diagnostics import reports
from keras_transfer.optimizers import schedules
from keras_transfer.training import two_phase as training
from keras_transfer.training.callbacks import GradualUnfreezing
from keras_transfer.training.callbacks import parse_unfreeze_schedule
from keras_transfer.utils import distribute
from keras_transfer.utils import reliability

__all__ = [
    "ADAPT_METHODS",
    "Config",
    "Environment",
    "FREEZE_STRATEGIES",
    "LR_SCHEDULES",
    "PLANS",
    "Trained",
    "build_model",
    "check_config",
    "check_diagnostics",
    "class_weight",
    "create_backbone",
    "describe_plan",
    "diagnose",
    "domain_report",
    "export",
    "load_config",
    "load_data",
    "load_target",
    "measure_transferability",
    "plan_training",
    "report",
    "run",
    "save_model",
    "summary",
    "train_model",
]

logger = logging.getLogger("keras_transfer")

FREEZE_STRATEGIES = ("auto", "all_frozen", "top_n_unfrozen", "gradual", "none")
LR_SCHEDULES = ("constant", "cosine", "slanted_triangular", "one_cycle")
EXPORT_FORMATS = ("saved_model", "tflite")
RESOLVED_CONFIG_FILE = "config.json"
PLANS = ("auto", "fixed")
ADAPT_METHODS = ("dann", "coral", "mmd")
# The settings before the advisor (tuned on ants-vs-bees): what `plan="fixed"` fills in.
FIXED_DEFAULTS = dict(
    head_epochs=20,
    fine_tune_epochs=5,
    unfreeze_blocks="all",
    head_lr=1e-3,
    fine_tune_lr=2e-5,
    patience=0,
    restore_best=False,
)


@dataclasses.dataclass
class Config:
    """Everything one run needs; the binary's flags and the `--config` file's keys map one to
    one onto these fields (the file also takes the recipe aliases in
    `_config.TRANSFER_CONFIG_ALIASES`). Invalid values raise `_config.ConfigError`.

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
    # "auto": keras_transfer.recommend_training_plan chooses the settings left at None below
    # (epochs, learning rates, blocks to unfreeze, early stopping) from the training set's
    # size and measured per-block LogME; "fixed": None means the values of FIXED_DEFAULTS.
    plan: str = "auto"
    head_epochs: int | None = None
    fine_tune_epochs: int | None = None
    # Phase 1 on backbone features computed once from the unaugmented training images: an
    # epoch then costs a pass of the small head instead of the backbone, so 20 head epochs
    # take less time than 2 through the frozen backbone.
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
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    # Validate and save an exponential moving average of the weights (momentum per step;
    # 0 disables). On ants-vs-bees the last fine-tuning epochs' raw weights swing by 2-3
    # validation images from one epoch to the next; their average does not.
    ema_momentum: float = 0.9
    patience: int | None = None  # 0: no early stopping
    # Keep (and save) the weights of each phase's epoch with the lowest validation loss
    # instead of its last epoch's; the fine-tuning phase must beat the head phase's best
    # (kt.ValidatedEarlyStopping(carry_over=True)), else the head phase's weights are kept.
    restore_best: bool | None = None
    validation_split: float = 0.2
    # Images with more pixels are skipped before decoding (decompression bombs); 0: no limit.
    max_pixels: int = 50_000_000
    # Class weights of the training loss: "balanced" (n / (k * n_c)), "none", or a JSON
    # object {class name or index: weight}, e.g. '{"dogs": 10}'.
    class_weight: str = "none"
    seed: int = 42
    augment: str = "flip,crop"
    dropout: float = 0.2
    train_bn: bool = False
    strategy: str = "default"
    tpu: str = ""
    mixed_precision: bool = False
    export: str = ""
    resume: bool = True
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
        if not 0 <= self.ema_momentum < 1:
            raise config_lib.ConfigError(
                f"ema_momentum must lie in [0, 1) (0: off), got {self.ema_momentum}."
            )
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
        check("adapt", ("",) + ADAPT_METHODS)
        if self.adapt and not self.target_dir:
            raise config_lib.ConfigError(
                f"adapt={self.adapt!r} adapts to unlabeled target images: set target_dir "
                "(--target_dir) to a folder of them."
            )
        if self.adapt and (
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
            GradualUnfreezing(self.unfreeze_schedule)  # a clear error for bad syntax, now
        try:
            imbalance.parse_class_weight(self.class_weight)
        except ValueError as error:
            raise config_lib.ConfigError(str(error)) from None

    def resolved_weights(self) -> str | None:
        if self.weights is None or str(self.weights).lower() in ("", "none"):
            return None
        return self.weights

    def resolved_freeze_strategy(self) -> str:
        if self.freeze_strategy != "auto":
            return self.freeze_strategy
        return "gradual" if self.unfreeze_schedule else "top_n_unfrozen"

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
        for name in unused:
            values.pop(name, None)
        return values


# Fields that only a TFDS run, or only an image-folder run, reads.
_TFDS_FIELDS = ("dataset", "tfds_data_dir", "train_split", "eval_split")
_FOLDER_FIELDS = ("data_dir", "validation_split", "max_pixels")


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """The run's `Config`: the file's settings (if `path`), then `overrides` (the flags given
    on the command line) on top."""
    values = config_lib.read_config_file(path) if path else {}
    return config_lib.build_config(
        Config, values, overrides=overrides, source=repr(path) if path else "the flags"
    )


def run(
    config: Config,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, Any]:
    """Loads the data, builds the classifier, trains and saves everything.

    Writes to `config.model_dir`: `model.keras` (raw 0-255 RGB images in, class
    probabilities out; loads with `safe_mode=True`, except models with a TF Hub backbone,
    whose SavedModel graph only loads with `safe_mode=False`), `labels.txt` (one class name
    per line, line i = output i), `config.json` (the resolved configuration),
    `results.json` (per-phase final metrics and wall time, the configuration, data sizes,
    skipped files, validation precision/recall per class), `training_curves.png` and
    `confusion_matrix.png` (when matplotlib is installed), TensorBoard logs in `logs/`, and
    with `export`: `saved_model/` and `model.tflite`. With `resume`, an interrupted run
    started again with the same settings continues from its last finished epoch. A run
    that fails before training starts (bad settings, missing weights or data) creates no
    `model_dir`.

    Args:
        config: the run's settings.
        strategy: a ready `tf.distribute.Strategy`; by default one is created from
            `config.strategy` and `config.tpu`.
        callbacks: extra Keras callbacks for both phases.

    Returns:
        The content of `results.json`.
    """
    start = time.perf_counter()
    check_config(config)
    with _environment(config, strategy) as environment:
        backbone = create_backbone(config, environment.strategy)
        image_size = backbone.input_shape[0] or backbone.default_size
        data = load_data(
            config, image_size, drop_remainder=distribute.static_batches(environment.strategy)
        )
        _check_batches(config, data, environment.strategy)
        class_weight(config, data)  # a bad class_weight fails before model_dir is written
        transfer = measure_transferability(config, backbone, data)
        config, plan = plan_training(config, backbone, data, transfer)
        model = build_model(config, backbone, data.class_names, environment.strategy)
        source = check_diagnostics(config, backbone, data)
        target, distance_before = load_target(config, backbone, data, image_size)
        pretrained = kt.forgetting.pretrained_copy(model) if config.diagnostics else None
        _write_json(environment.output_dir, RESOLVED_CONFIG_FILE, config.resolved(image_size))
        trained = train_model(config, model, data, environment, list(callbacks or []), target)
        save_model(model, data.class_names, environment.output_dir)
        results = report(config, model, data, trained, environment, image_size)
        results["plan"] = plan
        if target is not None:
            results["domain"] = domain_report(config, model, data, target, distance_before)
        if config.diagnostics:
            results["diagnostics"] = diagnose(
                pretrained, model, data, transfer, source, environment.output_dir
            )
        for export_format in config.export_formats():
            results.setdefault("exports", {})[export_format] = export(
                model, environment.output_dir, export_format
            )
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    if environment.chief:
        _write_json(environment.output_dir, "results.json", results)
    return results


@dataclasses.dataclass
class Environment:
    """Where and how a run executes.

    Args:
        strategy: the `tf.distribute.Strategy` the model is built and trained under.
        output_dir: `model_dir` on the chief; a scratch folder, deleted at the end, on the
            other workers of a multi-worker run.
        chief: whether this process writes the results.
        dtype_policy: the Keras dtype policy of the run (`float32`, `mixed_bfloat16`, ...).
    """

    strategy: tf.distribute.Strategy
    output_dir: str
    chief: bool
    dtype_policy: str


@contextlib.contextmanager
def _environment(config: Config, strategy: tf.distribute.Strategy | None) -> Iterator[Environment]:
    """Seeds, creates the strategy and sets the dtype policy; restores the previous policy
    and deletes a worker's scratch folder when the run ends, failed or not."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if strategy is None:
        strategy = distribute.create_strategy(config.strategy, config.tpu or None)
    chief = distribute.is_chief(strategy)
    # The chief's model_dir is created by its first write, after the backbone, the data
    # and the model were built: a run that cannot start leaves no folder behind.
    output_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="worker_")
    previous_policy = keras.config.dtype_policy().name
    policy = distribute.set_mixed_precision(config.mixed_precision, strategy)
    try:
        yield Environment(strategy, output_dir, chief, policy)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)


def check_config(config: Config) -> None:
    """Fails (`ConfigError`, `FileNotFoundError`) before any work on what `Config` alone
    cannot check: the outputs' folder, the data source, a weights path."""
    if not config.model_dir:
        raise config_lib.ConfigError("Set model_dir (--model_dir): where the outputs go.")
    if bool(config.data_dir) == bool(config.dataset):
        raise config_lib.ConfigError(
            "Give exactly one of data_dir (--data_dir, a folder of images) and dataset "
            "(--dataset=tfds:<name>)."
        )
    weights = config.resolved_weights()
    if (
        weights not in (None, "imagenet")
        and not config.backbone.startswith("hub:")
        and not os.path.isfile(weights)
    ):
        raise FileNotFoundError(
            f"weights={weights!r} (--weights) is not a file. Give the path of the backbone's "
            "headless weights file (e.g. mobilenet_1_0_224_tf_no_top.h5), 'imagenet' to "
            "download them, or 'none' to start from random weights."
        )
    if config.data_dir and not os.path.isdir(config.data_dir):
        raise FileNotFoundError(
            f"data_dir={config.data_dir!r} (--data_dir) is not a folder. Give a folder with "
            "one subfolder of images per class, or with train/ and val/ folders that have them."
        )


def create_backbone(config: Config, strategy: tf.distribute.Strategy) -> kt.Backbone:
    """The pretrained backbone of `config`, built under `strategy`."""
    backbone_kwargs: dict[str, Any] = {}
    if config.backbone.startswith("hub:"):
        backbone_kwargs["load_options"] = distribute.hub_load_options(strategy)
    with strategy.scope():
        return kt.create_backbone(
            config.backbone,
            input_shape=(config.image_size, config.image_size, 3) if config.image_size else None,
            weights=config.resolved_weights(),
            **backbone_kwargs,
        )


def load_data(config: Config, image_size: int, drop_remainder: bool) -> data_lib.ImageData:
    """The training and validation data of `config`: an image folder or a TFDS dataset."""
    common = dict(
        image_size=image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        augment=config.augment or False,
        drop_remainder=drop_remainder,
    )
    if config.dataset:
        return data_lib.tfds_dataset(
            config.dataset[len("tfds:") :],
            train_split=config.train_split,
            validation_split=config.eval_split or None,
            data_dir=config.tfds_data_dir or None,
            **common,
        )
    return data_lib.image_folder_dataset(
        config.data_dir,
        validation_split=config.validation_split,
        max_pixels=config.max_pixels or None,
        **common,
    )


def _check_batches(
    config: Config, data: data_lib.ImageData, strategy: tf.distribute.Strategy
) -> None:
    """Batch sizes the strategy cannot run, before building the model."""
    if distribute.static_batches(strategy) and data.num_train < config.batch_size:
        raise ValueError(
            f"{data.num_train} training images are fewer than one batch of {config.batch_size}: "
            "with static shapes (TPU) every batch is full. Lower batch_size."
        )
    replicas = strategy.num_replicas_in_sync
    first_validation_batch = min(config.batch_size, data.num_validation)
    if data.validation is not None and first_validation_batch % replicas:
        # Keras builds a distributed model from the mean of the first validation batch's
        # per-replica parts, which fails when they differ in size.
        raise ValueError(
            f"The first validation batch ({first_validation_batch} images) does not split "
            f"evenly over {replicas} replicas, which Keras' distributed evaluation cannot "
            "handle. Use a batch_size that is a multiple of the replica count and at most the "
            "validation set's size."
        )


def measure_transferability(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData
) -> dict[str, Any] | None:
    """Per-block LogME of the pretrained backbone on the training images, before training
    (one backbone pass): what the advisor plans from and `--diagnostics` reports. `None`
    when nothing needs it; `{"error": why}` when it cannot be measured."""
    needed = config.plan == "auto" and any(getattr(config, n) is None for n in FIXED_DEFAULTS)
    if not (needed or config.diagnostics):
        return None
    start = time.perf_counter()
    try:
        try:
            scores = kt.transferability(backbone, data, ["logme", "hscore"], blocks="all")
        except ValueError as error:
            if "blocks" not in str(error):
                raise
            scores = kt.transferability(backbone, data, ["logme", "hscore"])  # no known blocks
            scores = {method: {"output": value} for method, value in scores.items()}
    except ValueError as error:  # e.g. fewer than two examples in a class
        logger.warning("Transferability not measured: %s", error)
        return {"error": str(error)}
    scores["best_block_by_logme"] = max(scores["logme"], key=scores["logme"].get)
    scores["seconds"] = round(time.perf_counter() - start, 2)
    return scores


def plan_training(
    config: Config,
    backbone: kt.Backbone,
    data: data_lib.ImageData,
    transfer: dict[str, Any] | None,
) -> tuple[Config, dict[str, Any]]:
    """`config` with the planned settings it left at None filled in, and the plan for
    results.json: every planned setting, which were given, and why."""
    missing = [name for name in FIXED_DEFAULTS if getattr(config, name) is None]
    if config.plan == "fixed" or not missing:
        values, reason = dict(FIXED_DEFAULTS), "plan=fixed: the fixed defaults."
        if not missing:
            reason = "Every planned setting was given."
    else:
        logme = (transfer or {}).get("logme")
        recipe = kt.recommend_training_plan(
            data.num_train,
            logme if isinstance(logme, dict) and "output" not in logme else None,
            backbone=backbone,
            cached_head=config.cache_features,
        )
        values = dict(
            head_epochs=recipe.head_epochs,
            fine_tune_epochs=recipe.fine_tune_epochs,
            unfreeze_blocks=str(recipe.unfreeze),
            head_lr=recipe.head_lr,
            fine_tune_lr=recipe.fine_tune_lr,
            patience=recipe.patience,
            restore_best=True,
        )
        reason = recipe.reason
        given = {name: getattr(config, name) for name in FIXED_DEFAULTS if name not in missing}
        if given:
            reason += " Given settings win: " + ", ".join(f"{k}={v}" for k, v in given.items())
            reason += "."
        if transfer and "error" in transfer:
            reason = f"Transferability not measured ({transfer['error']}). {reason}"
    config = dataclasses.replace(config, **{name: values[name] for name in missing})
    plan = {name: getattr(config, name) for name in FIXED_DEFAULTS}
    plan.update(
        source=config.plan,
        given=[name for name in FIXED_DEFAULTS if name not in missing],
        reason=reason,
        block_logme=(transfer or {}).get("logme"),
    )
    logger.info("%s", describe_plan(plan))
    return config, plan


def describe_plan(plan: dict[str, Any]) -> str:
    """The training plan as one line: where it came from, the settings given, and why."""
    given = ", ".join(plan["given"]) or "none"
    return f"plan ({plan['source']}; given: {given}): {plan['reason']}"


def check_diagnostics(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData
) -> keras.Model | None:
    """The with-top source model of `source_weights`, or `None`; before training, so that
    a wrong file or too few probe images fail the run before it starts."""
    if config.diagnostics and _probe_split(data)[1] < kt.forgetting.MIN_PROBE_IMAGES:
        raise ValueError(
            f"diagnostics compare activations on at least {kt.forgetting.MIN_PROBE_IMAGES} "
            f"images, but there are {data.num_validation} validation and {data.num_train} "
            "training images: add images or drop diagnostics."
        )
    if not config.source_weights:
        return None
    return kt.forgetting.source_model(backbone, config.source_weights)


def _probe_split(data: data_lib.ImageData) -> tuple[str, int]:
    """The images drift is measured on: validation, or training when validation has too
    few (CKA needs kt.forgetting.MIN_PROBE_IMAGES)."""
    if data.validation is not None and data.num_validation >= kt.forgetting.MIN_PROBE_IMAGES:
        return "validation", data.num_validation
    return "training", data.num_train


def load_target(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData, image_size: int
) -> tuple[data_lib.TargetImages | None, kt.DomainDistance | None]:
    """The target images of `target_dir` and their distance from the training images in
    the pretrained backbone's features (before training), or `(None, None)`."""
    if not config.target_dir:
        return None, None
    target = data_lib.target_image_dataset(
        config.target_dir,
        data.class_names,
        image_size=image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        max_pixels=config.max_pixels or None,
    )
    logger.info("%d target images; labelled: %s", target.num_images, target.labelled_reason)
    distance = kt.domain_distance(backbone, data.train_unaugmented, target.unshuffled)
    logger.info("Before training: %s", distance.describe())
    return target, distance


def domain_report(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    target: data_lib.TargetImages,
    before: kt.DomainDistance,
) -> dict[str, Any]:
    """results.json's "domain": the distance between training and target images before
    and after training, and the trained model's target accuracy if the target is labelled."""
    after = kt.domain_distance(model, data.train_unaugmented, target.unshuffled)
    accuracy = None
    if target.labelled is not None:
        true, predicted = reports.predict_labels(model, target.labelled)
        accuracy = float((true == predicted).mean())
    logger.info("After training: %s; target accuracy %s", after.describe(), accuracy)
    return {
        "method": config.adapt or None,
        "target_images": target.num_images,
        "target_labelled": target.labelled is not None,
        "target_labelled_reason": target.labelled_reason,
        "target_skipped": target.skipped,
        "distance_before": dataclasses.asdict(before),
        "distance_after": dataclasses.asdict(after),
        "describe_before": before.describe(),
        "describe_after": after.describe(),
        "target_accuracy": accuracy,
    }


def diagnose(
    pretrained: kt.Backbone,
    model: keras.Model,
    data: data_lib.ImageData,
    transfer: dict[str, Any] | None,
    source: keras.Model | None,
    output_dir: str,
) -> dict[str, Any]:
    """results.json's "diagnostics": the transferability measured before training, and
    the per-block drift (CKA) from the pretrained backbone and the source-task agreement
    on the validation images (the training images without validation); drift.png."""
    if transfer and "error" in transfer:
        raise ValueError(f"diagnostics: transferability cannot be measured: {transfer['error']}")
    scores = {k: v for k, v in (transfer or {}).items() if k != "seconds"}
    split, _ = _probe_split(data)
    summary = kt.forgetting.diagnostics_summary(
        pretrained,
        model,
        data,
        data.validation if split == "validation" else data.train_unaugmented,
        source_head=source,
        drift_plot=os.path.join(output_dir, "drift.png"),
        transferability=scores or None,
    )
    summary["transferability"]["seconds"] = (transfer or {}).get("seconds")
    summary["probe_split"] = split
    logger.info(
        "diagnostics: least changed -> most changed block: %s; source top-1 agreement %s",
        sorted(summary["block_cka"], key=summary["block_cka"].get, reverse=True),
        summary["source_top1_agreement"],
    )
    return summary


def build_model(
    config: Config,
    backbone: kt.Backbone,
    class_names: list[str],
    strategy: tf.distribute.Strategy,
) -> kt.TransferClassifier:
    """The classifier: `backbone`, then a head with `config.dropout`, one output per class."""
    with strategy.scope():
        return kt.create_classifier(
            backbone,
            len(class_names),
            head={"dropout": config.dropout},
            class_names=class_names,
        )


@dataclasses.dataclass
class Trained:
    """What `train_model` did.

    Args:
        history: both phases' `TwoPhaseHistory`.
        cached_features: whether phase 1 ran on cached backbone features.
        unfrozen_blocks: the blocks trainable at the end.
        monitor: the metric early stopping and `restore_best` watched.
    """

    history: kt.TwoPhaseHistory
    cached_features: bool
    unfrozen_blocks: list[str]
    monitor: str


def train_model(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    environment: Environment,
    callbacks: list[keras.callbacks.Callback],
    target: data_lib.TargetImages | None = None,
) -> Trained:
    """Two-phase (or gradual, or all-frozen, or unfrozen) training of `model` as `config`
    says, with TensorBoard logs and the backup in `environment.output_dir`. With
    `config.adapt`, phase 2 is domain adaptation to `target` (same blocks, epochs and
    learning rate; the head and the domain classifier at head_lr); it is not backed up."""
    unplanned = [name for name in FIXED_DEFAULTS if getattr(config, name) is None]
    if unplanned:
        raise ValueError(
            f"{', '.join(unplanned)} not set: pass the config through plan_training first "
            "(run does), or set them."
        )
    output_dir, strategy = environment.output_dir, environment.strategy
    plan = _plan(config)
    static = distribute.static_batches(strategy)
    batches = (math.floor if static else math.ceil)(data.num_train / config.batch_size)
    if importlib.util.find_spec("tensorboard") is not None:
        # One step axis for both phases (Keras' own callback restarts it with each optimizer).
        callbacks.append(kt.RunTensorBoard(os.path.join(output_dir, "logs")))
    else:
        logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    monitor = "val_loss" if data.validation is not None else "loss"
    if config.patience or config.restore_best:
        # Before SwapEMAWeights: it keeps the (averaged) weights validation scored.
        callbacks.append(
            kt.ValidatedEarlyStopping(
                monitor=monitor,
                # Without early stopping, a patience longer than any phase never stops.
                patience=config.patience or config.head_epochs + config.fine_tune_epochs + 1,
                restore_best_weights=config.restore_best,
                # Fine-tuning must beat the head's best validation loss (training losses
                # on cached and on augmented images are not comparable).
                carry_over=bool(config.restore_best) and data.validation is not None,
                verbose=1 if config.verbose else 0,
            )
        )
    if config.ema_momentum:
        # Validation sees the averaged weights; Keras puts them into the model when each
        # phase's fit ends. Between epochs the model (and its backup) keeps the raw ones.
        callbacks.append(keras.callbacks.SwapEMAWeights())
    gradual = config.resolved_freeze_strategy() == "gradual"
    if gradual:
        callbacks.append(GradualUnfreezing(config.unfreeze_schedule, train_bn=config.train_bn))
    common = dict(
        train_bn=config.train_bn,
        optimizer=_optimizer_factory(config, plan["head_epochs"], batches),
        fine_tune_optimizer=_optimizer_factory(config, plan["fine_tune_epochs"], batches),
        lr_decay=config.lr_decay or None,
        callbacks=callbacks,
        # LoRA runs resume too: fit_two_phase keeps their matrices (kt.LoraBackupAndRestore).
        backup_dir=os.path.join(output_dir, "backup") if config.resume else None,
        fine_tune=config.fine_tune,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha or None,
        verbose=min(config.verbose, 2),
        class_weight=class_weight(config, data),
    )
    cached = _use_feature_cache(config, plan, strategy, data)
    adapt_epochs = plan["fine_tune_epochs"] if config.adapt else 0
    if config.adapt:
        plan["fine_tune_epochs"] = 0
    with strategy.scope():
        if cached:
            history = kt.fit_two_phase_cached(
                model,
                data.train,
                data.validation,
                feature_data=data.train_unaugmented,
                head_batch_size=config.batch_size,
                seed=config.seed,
                **plan,
                **common,
            )
        else:
            history = kt.fit_two_phase(model, data.train, data.validation, **plan, **common)
    if adapt_epochs:
        start = time.perf_counter()
        adapted, history.unfrozen_blocks = kt.domain.fit_adaptation_phase(
            model,
            data.train,
            target.images,
            config.adapt,
            adapt_epochs,
            data.validation,
            unfreeze=plan["unfreeze"],
            train_bn=config.train_bn,
            backbone_lr=plan["fine_tune_lr"],
            head_lr=plan["head_lr"],
            optimizer_kwargs=dict(
                use_ema=bool(config.ema_momentum), ema_momentum=config.ema_momentum or 0.99
            ),
            callbacks=callbacks,
            initial_epoch=plan["head_epochs"],
            verbose=min(config.verbose, 2),
        )
        history.add(training.PHASE_FINE_TUNE, adapted, time.perf_counter() - start)
    unfrozen = kt.trainable_blocks(model) if gradual else history.unfrozen_blocks
    return Trained(history, cached, unfrozen, monitor)


def class_weight(config: Config, data: data_lib.ImageData) -> dict[int, float] | None:
    """`config.class_weight` as `{class index: weight}` (None for none), from the loader's
    class counts (one pass over the training data when it has none, as for TFDS)."""
    return kt.resolve_class_weight(
        imbalance.parse_class_weight(config.class_weight), data, class_names=data.class_names
    )


def _plan(config: Config) -> dict[str, Any]:
    """`fit_two_phase` arguments for the freeze strategy."""
    strategy = config.resolved_freeze_strategy()
    plan = dict(
        head_epochs=config.head_epochs,
        fine_tune_epochs=config.fine_tune_epochs,
        head_lr=config.head_lr,
        fine_tune_lr=config.fine_tune_lr or config.head_lr / 10,
        unfreeze=config.unfreeze_blocks,
    )
    if strategy == "all_frozen":
        plan["fine_tune_epochs"] = 0
    elif strategy == "none":
        # Everything trains from the first epoch, at the fine-tuning rate.
        plan.update(head_epochs=0, fine_tune_epochs=config.head_epochs + config.fine_tune_epochs)
        plan["unfreeze"] = "all"
    elif strategy == "gradual":
        # One timeline: GradualUnfreezing starts frozen (head only) and unfreezes at the
        # scheduled epochs; phase 2's optimizer (with lr_decay, if any) covers every block.
        schedule = parse_unfreeze_schedule(config.unfreeze_schedule)
        plan.update(
            head_epochs=0,
            fine_tune_epochs=config.head_epochs + config.fine_tune_epochs,
            fine_tune_lr=config.head_lr,
            # The blocks the schedule ends with: the layer-wise multipliers cover them all.
            unfreeze=schedule[max(schedule)],
        )
    return plan


def _use_feature_cache(
    config: Config, plan: dict[str, Any], strategy: tf.distribute.Strategy, data
) -> bool:
    """Whether phase 1 runs on cached features; says why not when it was asked for."""
    if not config.cache_features or not plan["head_epochs"]:
        return False
    reason = None
    if data.train_unaugmented is None:
        reason = "the data has no unaugmented training split"
    elif not isinstance(strategy, _CACHE_STRATEGIES):
        # The extraction loop runs on the host, outside the strategy's replicas.
        reason = f"{type(strategy).__name__} runs the backbone on its own devices"
    if reason:
        logger.info("Phase 1 trains through the frozen backbone: %s.", reason)
        return False
    return True


# Strategies whose devices are this host's, where extracting on the host loses nothing.
_CACHE_STRATEGIES = (
    type(tf.distribute.get_strategy()),
    tf.distribute.MirroredStrategy,
    tf.distribute.OneDeviceStrategy,
)


def _optimizer_factory(config: Config, epochs: int, steps_per_epoch: int):
    """`learning_rate -> optimizer` for one phase: Adam, or AdamW with weight decay, on the
    configured learning-rate schedule over that phase's steps."""
    total_steps = max(epochs * steps_per_epoch, 1)

    def make(learning_rate):
        rate: Any = learning_rate
        if config.lr_schedule == "cosine":
            rate = schedules.WarmupCosineDecay(
                learning_rate,
                total_steps=total_steps,
                warmup_steps=min(config.warmup_steps, total_steps - 1),
                floor=learning_rate * 0.01,
            )
        elif config.lr_schedule == "slanted_triangular":
            rate = schedules.SlantedTriangular(learning_rate, total_steps=total_steps)
        elif config.lr_schedule == "one_cycle":
            rate = schedules.OneCycle(learning_rate, total_steps=total_steps)
        ema = dict(use_ema=bool(config.ema_momentum), ema_momentum=config.ema_momentum or 0.99)
        if config.weight_decay:
            return keras.optimizers.AdamW(
                learning_rate=rate, weight_decay=config.weight_decay, **ema
            )
        return keras.optimizers.Adam(learning_rate=rate, **ema)

    return make


def save_model(model: keras.Model, class_names: list[str], output_dir: str) -> None:
    """`model.keras` for inference (without the optimizer's state and EMA copies) and
    `labels.txt` (line i = output i), each replaced atomically."""
    _outputs.save_classifier(model, class_names, output_dir)


def report(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    trained: Trained,
    environment: Environment,
    image_size: int,
) -> dict[str, Any]:
    """The results of the run (what `results.json` holds), the validation report of the
    saved model, and the confusion matrix and training-curve plots in the output folder."""
    history = trained.history
    results: dict[str, Any] = {
        "feature_extraction": history.phase_summary(training.PHASE_HEAD),
        "fine_tune": history.phase_summary(training.PHASE_FINE_TUNE),
        "history": {
            # 1-based over the whole run, as Keras prints them and the plots draw them.
            "epoch": [int(epoch) + 1 for epoch in history.epoch],
            "phase": list(history.phases),
            **{k: list(v) for k, v in history.history.items()},
        },
        "unfrozen_blocks": trained.unfrozen_blocks,
        "class_names": data.class_names,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "skipped_files": data.skipped,
        # Why each file was skipped, and what the loader warned about (e.g. an empty val/).
        "skip_reasons": dict(getattr(data, "skip_reasons", {}) or {}),
        "warnings": list(getattr(data, "warnings", []) or []),
        "validation": data.validation is not None,
        "image_size": image_size,
        "replicas": environment.strategy.num_replicas_in_sync,
        "dtype_policy": environment.dtype_policy,
        "cached_features": trained.cached_features,
        "class_counts": getattr(data, "class_counts", None),
        "class_weight": {
            data.class_names[c]: w for c, w in (class_weight(config, data) or {}).items()
        },
        "config": config.resolved(image_size),
    }
    last_phase = history.phases[-1] if history.phases else None
    if config.restore_best and last_phase:
        results["saved_weights"] = _kept_epoch(history, trained.monitor, last_phase)
    output_dir = environment.output_dir
    if data.validation is not None:
        true, predicted = reports.predict_labels(model, data.validation)
        matrix = reports.confusion_matrix(true, predicted, len(data.class_names))
        # Measured on the saved model, whichever epoch's weights it holds.
        results["saved_model_val_accuracy"] = float(matrix.trace() / max(matrix.sum(), 1))
        validation_report = reports.classification_report(matrix, data.class_names)
        validation_report["confusion_matrix"] = matrix.tolist()
        results["validation_report"] = validation_report
        plotted = reports.plot_confusion_matrix(
            matrix,
            data.class_names,
            os.path.join(output_dir, "confusion_matrix.png"),
            title=f"{_run_title(config)}\nvalidation data, {int(matrix.sum())} images",
        )
        if plotted:
            results.setdefault("plots", []).append(os.path.basename(plotted))
    plotted = reports.plot_training_curves(
        history, os.path.join(output_dir, "training_curves.png"), title=_run_title(config)
    )
    if plotted:
        results.setdefault("plots", []).append(os.path.basename(plotted))
    return results


def _run_title(config: Config) -> str:
    source = config.dataset or os.path.basename(os.path.normpath(config.data_dir))
    return f"{config.backbone} on {source}"


def summary(results: dict[str, Any], config: Config) -> str:
    """What a person reads at the end of a run: each phase's result, the saved model's
    validation report and where everything went."""
    lines = []
    phases = [p for p in (training.PHASE_HEAD, training.PHASE_FINE_TUNE) if results.get(p)]
    names = {training.PHASE_HEAD: "head", training.PHASE_FINE_TUNE: "fine-tuning"}
    for index, phase in enumerate(phases, start=1):
        row = results[phase]
        accuracy = row.get("val_accuracy")
        lines.append(
            f"phase {index}/{len(phases)} ({names[phase]}): "
            + (f"val_accuracy {accuracy:.4f}, " if accuracy is not None else "")
            + f"{row['epochs']} epochs, {row['seconds']:.1f} s"
        )
    report = results.get("validation_report")
    if report:
        kept = results.get("saved_weights")
        lines.append(
            f"saved model on {results['num_validation']} validation images"
            + (f" (weights of epoch {kept['epoch']}, lowest val_loss)" if kept else "")
            + ":"
        )
        lines.append(reports.format_report(report))
    model_path = os.path.join(config.model_dir, _outputs.MODEL_FILE)
    if os.path.isfile(model_path):
        size = os.path.getsize(model_path) / 1e6
        lines.append(f"model.keras: {size:.1f} MB, for inference (no optimizer state)")
    if not results.get("plots"):
        lines.append(
            "plots: skipped, matplotlib is not installed (pip install 'keras-transfer[plot]')"
        )
    lines.append(f"outputs in {config.model_dir} ({results.get('total_seconds', 0):.0f} s in all)")
    return "\n".join(lines)


def _kept_epoch(history: kt.TwoPhaseHistory, monitor: str, last_phase: str) -> dict[str, Any]:
    """The phase and 1-based epoch whose weights `restore_best` kept: the lowest `monitor`
    of the last phase, or of both phases when the fine-tuning phase had to beat the head
    phase (validation loss, `carry_over`)."""
    phases = {last_phase}
    if monitor.startswith("val_"):
        phases = set(history.phases)
    indices = [i for i, phase in enumerate(history.phases) if phase in phases]
    values = history.history.get(monitor, [])
    best = min(indices, key=lambda i: (values[i], i)) if values else indices[-1]
    return {"phase": history.phases[best], "epoch": int(history.epoch[best]) + 1}


def export(model: keras.Model, output_dir: str, export_format: str) -> str:
    """Exports `model` for serving: `"saved_model"` (`model.export`, a `serve` signature
    taking raw 0-255 float32 images) or `"tflite"` (converted from that SavedModel).
    Returns the written path."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {export_format!r}; use {EXPORT_FORMATS}.")
    # Always a fresh SavedModel: one left by an earlier run in this folder is stale.
    return export_lib.export_model(model, output_dir, export_format)


def _write_json(output_dir: str, name: str, content: Any) -> None:
    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)

    reliability.write_atomically(os.path.join(output_dir, name), write)
