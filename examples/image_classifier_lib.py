"""Logic of the image classifier example: images in, a fine-tuned model and its reports out.

`examples/image_classifier.py` holds only the flags and `main`; tests call `run` here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import config as config_lib
from keras_transfer import data as data_lib
from keras_transfer import distribute
from keras_transfer import reports
from keras_transfer import schedules
from keras_transfer import training
from keras_transfer.callbacks import GradualUnfreezing
from keras_transfer.callbacks import parse_unfreeze_schedule

logger = logging.getLogger("keras_transfer")

FREEZE_STRATEGIES = ("auto", "all_frozen", "top_n_unfrozen", "gradual", "none")
LR_SCHEDULES = ("constant", "cosine", "slanted_triangular", "one_cycle")
EXPORT_FORMATS = ("saved_model", "tflite")
RESOLVED_CONFIG_FILE = "config.json"


@dataclasses.dataclass
class Config:
    """Everything one run needs; the binary's flags and the `--config` file's keys map one to
    one onto these fields (the file also takes the recipe aliases in
    `keras_transfer.config.TRANSFER_CONFIG_ALIASES`)."""

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
    head_epochs: int = 20
    fine_tune_epochs: int = 5
    # Phase 1 on backbone features computed once from the unaugmented training images: an
    # epoch then costs a pass of the small head instead of the backbone, so 20 head epochs
    # take less time than 2 through the frozen backbone.
    cache_features: bool = True
    # auto: "gradual" when unfreeze_schedule is set, else "top_n_unfrozen".
    freeze_strategy: str = "auto"
    unfreeze_blocks: str = "all"
    unfreeze_schedule: str = ""
    head_lr: float = 1e-3
    # Adam fine-tuning all blocks of a small dataset needs a far lower rate than the head's:
    # at head_lr / 10 = 1e-4 ants-vs-bees validation accuracy fell from 0.87 to 0.73 in the
    # first fine-tuning epoch; 2e-5 improved it steadily. 0 means head_lr / 10.
    fine_tune_lr: float = 2e-5
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
    patience: int = 0  # 0: no early stopping
    # Keep (and save) the weights of each phase's epoch with the lowest validation loss
    # instead of its last epoch's.
    restore_best: bool = False
    validation_split: float = 0.2
    seed: int = 42
    augment: str = "flip,crop"
    dropout: float = 0.2
    train_bn: bool = False
    strategy: str = "default"
    tpu: str = ""
    mixed_precision: bool = False
    export: str = ""
    resume: bool = True
    verbose: int = 2

    def __post_init__(self):
        def check(name, allowed):
            if getattr(self, name) not in allowed:
                raise config_lib.ConfigError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}."
                )

        check("freeze_strategy", FREEZE_STRATEGIES)
        check("fine_tune", ("full", "lora"))
        if self.fine_tune == "lora" and self.resolved_freeze_strategy() == "gradual":
            raise config_lib.ConfigError("fine_tune=lora does not combine with gradual unfreezing.")
        check("lr_schedule", LR_SCHEDULES)
        check("strategy", distribute.STRATEGIES)
        for name in ("head_epochs", "fine_tune_epochs", "patience", "warmup_steps"):
            if getattr(self, name) < 0:
                raise config_lib.ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.batch_size <= 0:
            raise config_lib.ConfigError(f"batch_size must be > 0, got {self.batch_size}.")
        if not 0 <= self.lr_decay <= 1:
            raise config_lib.ConfigError(f"lr_decay must lie in [0, 1], got {self.lr_decay}.")
        if not 0 <= self.ema_momentum < 1:
            raise config_lib.ConfigError(
                f"ema_momentum must lie in [0, 1) (0: off), got {self.ema_momentum}."
            )
        if self.ema_momentum and self.restore_best:
            raise config_lib.ConfigError(
                "restore_best keeps an epoch's raw weights, but with ema_momentum the "
                "validation scores belong to the averaged ones: set ema_momentum=0 to use "
                "restore_best."
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
        if self.unfreeze_schedule:
            GradualUnfreezing(self.unfreeze_schedule)  # a clear error for bad syntax, now

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


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """The run's `Config`: the file's settings (if `path`), then `overrides` (the flags given
    on the command line) on top."""
    values = config_lib.read_config_file(path) if path else {}
    return config_lib.build_config(
        Config, values, overrides=overrides, source=repr(path) if path else "the flags"
    )


def _write_atomically(path: str, write) -> None:
    # Write beside the target and rename: an interrupted run never leaves a truncated file
    # in place of a good one.
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".partial.{name}")
    write(temporary)
    os.replace(temporary, path)


def _write_json(path: str, content: Any) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(content, f, indent=2)

    _write_atomically(path, write)


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
        config.data_dir, validation_split=config.validation_split, **common
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


def _clean_worker_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


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
    started again with the same settings continues from its last finished epoch.

    Args:
        config: the run's settings.
        strategy: a ready `tf.distribute.Strategy`; by default one is created from
            `config.strategy` and `config.tpu`.
        callbacks: extra Keras callbacks for both phases.

    Returns:
        The content of `results.json`.
    """
    start = time.perf_counter()
    if not config.model_dir:
        raise config_lib.ConfigError("Set model_dir (--model_dir): where the outputs go.")
    if bool(config.data_dir) == bool(config.dataset):
        raise config_lib.ConfigError(
            "Give exactly one of data_dir (--data_dir, a folder of images) and dataset "
            "(--dataset=tfds:<name>)."
        )
    keras.utils.set_random_seed(config.seed)
    if strategy is None:
        strategy = distribute.create_strategy(config.strategy, config.tpu or None)
    chief = distribute.is_chief(strategy)
    # Non-chief workers of a multi-worker run write to a scratch folder that is deleted.
    output_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="worker_")
    os.makedirs(output_dir, exist_ok=True)
    previous_policy = keras.config.dtype_policy().name
    policy = distribute.set_mixed_precision(config.mixed_precision, strategy)
    try:
        results = _run(config, strategy, output_dir, policy, list(callbacks or []))
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not chief:
            _clean_worker_dir(output_dir)
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    if chief:
        _write_json(os.path.join(output_dir, "results.json"), results)
    return results


def _run(
    config: Config,
    strategy: tf.distribute.Strategy,
    output_dir: str,
    policy: str,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, Any]:
    backbone_kwargs: dict[str, Any] = {}
    if config.backbone.startswith("hub:"):
        backbone_kwargs["load_options"] = distribute.hub_load_options(strategy)
    with strategy.scope():
        backbone = kt.create_backbone(
            config.backbone,
            input_shape=(config.image_size, config.image_size, 3) if config.image_size else None,
            weights=config.resolved_weights(),
            **backbone_kwargs,
        )
    image_size = backbone.input_shape[0] or backbone.default_size
    static = distribute.static_batches(strategy)
    data = load_data(config, image_size, drop_remainder=static)
    if static and data.num_train < config.batch_size:
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
    with strategy.scope():
        model = kt.create_classifier(
            backbone,
            len(data.class_names),
            head={"dropout": config.dropout},
            class_names=data.class_names,
        )
    resolved = dataclasses.asdict(config)
    _write_json(os.path.join(output_dir, RESOLVED_CONFIG_FILE), resolved)

    plan = _plan(config)
    batches = (math.floor if static else math.ceil)(data.num_train / config.batch_size)
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")))
    else:
        logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    if config.ema_momentum:
        # Validation sees the averaged weights; Keras puts them into the model when each
        # phase's fit ends. Between epochs the model (and its backup) keeps the raw ones.
        callbacks.append(keras.callbacks.SwapEMAWeights())
    monitor = "val_loss" if data.validation is not None else "loss"
    if config.patience or config.restore_best:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                # Without early stopping, a patience longer than any phase never stops.
                patience=config.patience or config.head_epochs + config.fine_tune_epochs + 1,
                restore_best_weights=config.restore_best,
                verbose=1 if config.verbose else 0,
            )
        )
    gradual = config.resolved_freeze_strategy() == "gradual"
    if gradual:
        callbacks.append(GradualUnfreezing(config.unfreeze_schedule, train_bn=config.train_bn))
    common = dict(
        train_bn=config.train_bn,
        optimizer=_optimizer_factory(config, plan["head_epochs"], batches),
        fine_tune_optimizer=_optimizer_factory(config, plan["fine_tune_epochs"], batches),
        lr_decay=config.lr_decay or None,
        callbacks=callbacks,
        # Keras' backups merge LoRA into the kernels: a LoRA run cannot resume from them.
        backup_dir=os.path.join(output_dir, "backup")
        if config.resume and config.fine_tune == "full"
        else None,
        fine_tune=config.fine_tune,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha or None,
        verbose=config.verbose,
    )
    cached = _use_feature_cache(config, plan, strategy, data)
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
    unfrozen = history.unfrozen_blocks
    if gradual:
        unfrozen = kt.trainable_blocks(model)

    _write_atomically(os.path.join(output_dir, "model.keras"), model.save)
    if kt.lora.lora_layers(model):
        kt.save_adapter(model, os.path.join(output_dir, "adapter.weights.h5"))
    with open(os.path.join(output_dir, "labels.txt"), "w") as f:
        f.write("\n".join(data.class_names) + "\n")
    results: dict[str, Any] = {
        "feature_extraction": history.phase_summary(training.PHASE_HEAD),
        "fine_tune": history.phase_summary(training.PHASE_FINE_TUNE),
        "history": {
            "epoch": list(history.epoch),
            "phase": list(history.phases),
            **{k: list(v) for k, v in history.history.items()},
        },
        "unfrozen_blocks": unfrozen,
        "class_names": data.class_names,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "skipped_files": data.skipped,
        "image_size": image_size,
        "replicas": strategy.num_replicas_in_sync,
        "dtype_policy": policy,
        "cached_features": cached,
        "config": resolved,
    }
    last_phase = history.phases[-1] if history.phases else None
    if config.restore_best and last_phase:
        kept = history.best_phase_metrics(last_phase, monitor, mode="min")
        results["saved_weights"] = {"phase": last_phase, "epoch": int(kept["epoch"]) + 1}
    if data.validation is not None:
        true, predicted = reports.predict_labels(model, data.validation)
        matrix = reports.confusion_matrix(true, predicted, len(data.class_names))
        # Measured on the saved model, whichever epoch's weights it holds.
        results["saved_model_val_accuracy"] = float(matrix.trace() / max(matrix.sum(), 1))
        report = reports.classification_report(matrix, data.class_names)
        report["confusion_matrix"] = matrix.tolist()
        results["validation_report"] = report
        reports.plot_confusion_matrix(
            matrix, data.class_names, os.path.join(output_dir, "confusion_matrix.png")
        )
        logger.info("validation report:\n%s", reports.format_report(report))
    reports.plot_training_curves(history, os.path.join(output_dir, "training_curves.png"))
    for export_format in config.export_formats():
        results.setdefault("exports", {})[export_format] = export(model, output_dir, export_format)
    for phase in (training.PHASE_HEAD, training.PHASE_FINE_TUNE):
        if results[phase]:
            logger.info(
                "%s: val_accuracy %.4f after %d epochs (%.1f s)",
                phase,
                results[phase].get("val_accuracy", float("nan")),
                results[phase]["epochs"],
                results[phase]["seconds"],
            )
    if "saved_model_val_accuracy" in results:
        logger.info(
            "saved model: val_accuracy %.4f%s",
            results["saved_model_val_accuracy"],
            " (weights of epoch {epoch}, {phase}, lowest val_loss)".format(
                **results["saved_weights"]
            )
            if "saved_weights" in results
            else "",
        )
    return results


def export(model: keras.Model, output_dir: str, export_format: str) -> str:
    """Exports `model` for serving: `"saved_model"` (`model.export`, a `serve` signature
    taking raw 0-255 float32 images) or `"tflite"` (converted from that SavedModel).
    Returns the written path."""
    saved_model_dir = os.path.join(output_dir, "saved_model")
    if not os.path.isdir(saved_model_dir):
        model.export(saved_model_dir, format="tf_saved_model", verbose=False)
    if export_format == "saved_model":
        return saved_model_dir
    if export_format != "tflite":
        raise ValueError(f"Unknown export format {export_format!r}; use {EXPORT_FORMATS}.")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    path = os.path.join(output_dir, "model.tflite")
    content = converter.convert()

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(content)

    _write_atomically(path, write)
    return path
