"""The training run of the image classifier: the two-phase (or gradual, all-frozen,
unfrozen) fit with its callbacks and optimizers, domain adaptation in phase 2, and the
resumable backup in `model_dir/backup` (`resume`).

The backup records every setting that changes the model, the data or the training
(`resume_settings`); `check_resume` refuses a rerun with other values before the run writes
anything, naming them. The backup outlives training (`fit_two_phase(keep_backup=True)`)
until the run's outputs are written (`delete_backup`): a run stopped while writing them
finishes from it when started again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import adapt as adapt_lib
from keras_transfer.apps import image_tasks
from keras_transfer.apps import image_zero_shot
from keras_transfer.apps.image_config import ADAPT_METHODS
from keras_transfer.apps.image_config import FIXED_DEFAULTS
from keras_transfer.apps.image_config import SOURCE_FREE_METHODS
from keras_transfer.apps.image_config import Config
from keras_transfer.apps.image_model import Environment
from keras_transfer.optimizers import schedules
from keras_transfer.training import two_phase as training
from keras_transfer.training import two_phase_state
from keras_transfer.training.callbacks import GradualUnfreezing
from keras_transfer.training.callbacks import parse_unfreeze_schedule
from keras_transfer.utils import distribute
from keras_transfer.utils import files

__all__ = [
    "BACKUP_DIR",
    "OnTrainingStart",
    "Trained",
    "backup_dir",
    "check_resume",
    "delete_backup",
    "resume_settings",
    "train_model",
]

BACKUP_DIR = "backup"
# Config fields that change neither the model, nor the data, nor the training: a resumed
# run may differ in them. Every other field (new ones too) must match the backup's.
_NOT_RESUME_SETTINGS = (
    "model_dir",
    "verbose",
    "export",
    "resume",
    "overwrite",
    "diagnostics",
    "source_weights",
    "strategy",
    "tpu",
    "deterministic",
    "plan",  # what it decides is compared: the resolved epochs, rates, blocks
)

logger = logging.getLogger("keras_transfer")


@dataclasses.dataclass
class Trained:
    """What `train_model` did.

    Args:
        history: both phases' `TwoPhaseHistory`.
        cached_features: whether phase 1 ran on cached backbone features.
        unfrozen_blocks: the blocks trainable at the end.
        monitor: the metric early stopping and `restore_best` watched.
        wise_ft: with `config.wise_ft`, the alpha kept and each alpha's validation accuracy
            (validation loss for a multilabel or regression task).
        adaptation: with a source-free `config.adapt`, `apps.adapt.adapt_model`'s report.
        zero_shot: with `config.zero_shot`, the zero-shot classifier training started from.
    """

    history: kt.TwoPhaseHistory
    cached_features: bool
    unfrozen_blocks: list[str]
    monitor: str
    wise_ft: dict[str, Any] | None = None
    adaptation: dict[str, Any] | None = None
    zero_shot: image_zero_shot.ZeroShotStart | None = None


class OnTrainingStart(keras.callbacks.Callback):
    """Calls `action()` once, when the run's first `fit` begins: after every check of the
    training (its arguments, the resume check, the extraction of cached features), so
    what it writes (the run's `config.json`) describes a run that really trains.

    Args:
        action: what to do, without arguments.
    """

    def __init__(self, action: Callable[[], Any]):
        super().__init__()
        self.action: Callable[[], Any] | None = action

    def on_train_begin(self, logs=None):
        if self.action is not None:
            action, self.action = self.action, None
            action()


def train_model(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    environment: Environment,
    callbacks: list[keras.callbacks.Callback],
    target: data_lib.TargetImages | None = None,
    *,
    class_weight: dict[int, float] | None,
    backup_settings: dict[str, Any] | None = None,
) -> Trained:
    """Two-phase (or gradual, or all-frozen, or unfrozen) training of `model` as `config`
    says, with TensorBoard logs and the backup in `environment.output_dir`. With a
    domain-adaptation `config.adapt` (dann, coral, mmd, mcc), phase 2 is domain adaptation
    to `target` (same blocks, epochs and learning rate; the head and the domain classifier
    at head_lr); it is not backed up. With a source-free one (adabn, tent, shot), the
    trained model is adapted to `target` at the end (`apps.adapt`).

    Args:
        config: the run's settings, planned (`image_plan.plan_training`).
        model: the classifier to train.
        data: the training and validation data.
        environment: the run's strategy and output folder.
        callbacks: extra Keras callbacks; the run's own are appended to this list.
        target: the target images of `config.adapt`.
        class_weight: `{class index: weight}` of the training loss
            (`image_plan.class_weight`), or None.
        backup_settings: what the backup records and a resumed run must match; default
            `resume_settings(config, data, <the data's image size>)`.
    """
    _check_planned(config)
    # The zero-shot classifier, copied and scored on validation before any training.
    zero_shot = image_zero_shot.zero_shot_start(config, model, data, environment.strategy)
    plan = _freeze_strategy_arguments(config)
    monitor = "val_loss" if data.validation is not None else "loss"
    callbacks.extend(_run_callbacks(config, data, environment.output_dir, monitor))
    common = _fit_arguments(config, plan, data, environment, callbacks, class_weight)
    if common["backup_dir"] is not None:
        common["backup_settings"] = backup_settings or resume_settings(
            config, data, data.image_size[0]
        )
    cached = _use_feature_cache(config, plan, environment.strategy, data)
    domain_adaptation = config.adapt in ADAPT_METHODS
    adapt_epochs = plan["fine_tune_epochs"] if domain_adaptation else 0
    if domain_adaptation:
        plan["fine_tune_epochs"] = 0  # domain adaptation replaces the fine-tuning phase
    with environment.strategy.scope():
        history = _fit_phases(config, model, data, plan, common, cached)
    if adapt_epochs:
        _adapt_to_target(config, model, data, target, plan, adapt_epochs, callbacks, history)
    gradual = config.resolved_freeze_strategy() == "gradual"
    unfrozen = kt.trainable_blocks(model) if gradual else history.unfrozen_blocks
    wise = _wise_ft(model, data, common["backup_dir"], zero_shot) if config.wise_ft else None
    adaptation = None
    if config.adapt in SOURCE_FREE_METHODS:  # the trained model, to the target images
        # --train_bn is SHOT's (the backbone it trains); AdaBN and TENT set their own.
        train_bn = config.train_bn if config.adapt == "shot" else None
        settings = adapt_lib.AdaptSettings(config.adapt, train_bn=train_bn)
        adaptation = adapt_lib.adapt_model(model, target, settings, min(config.verbose, 2))
    return Trained(history, cached, unfrozen, monitor, wise, adaptation, zero_shot)


def _wise_ft(
    model: keras.Model,
    data: data_lib.ImageData,
    backup: str | None,
    zero_shot: image_zero_shot.ZeroShotStart | None = None,
) -> dict[str, Any] | None:
    """WiSE-FT after fine-tuning: the interpolation between the head phase's weights (kept
    in the backup), or the zero-shot classifier's, and the fine-tuned ones whose validation
    accuracy is best (a multilabel or regression model's: whose validation loss is)."""
    head_weights = os.path.join(backup or "", two_phase_state.HEAD_WEIGHTS_FILE)
    start: Any = zero_shot.model if zero_shot is not None else head_weights
    if zero_shot is None and (backup is None or not files.exists(head_weights)):
        logger.warning("wise_ft: no head-phase weights in the backup; the fine-tuned weights stay.")
        return None
    if data.validation is None:
        raise ValueError(
            "wise_ft chooses its alpha on the validation split: set validation_split > 0."
        )
    metric = "accuracy" if getattr(data, "task", "multiclass") == "multiclass" else "loss"
    chosen = kt.wise_ft(model, start, data.validation, metric=metric)
    return {
        "start": "zero_shot" if zero_shot is not None else "head_phase",
        "alpha": chosen.alpha,
        f"val_{metric}_by_alpha": {f"{a:.2f}": round(v, 6) for a, v in chosen.scores.items()},
    }


def backup_dir(config: Config, environment: Environment) -> str | None:
    """The run's backup folder (None without `resume`)."""
    return os.path.join(environment.output_dir, BACKUP_DIR) if config.resume else None


def resume_settings(config: Config, data: data_lib.ImageData, image_size: int) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the backup: every setting
    that changes the model, the data or the training (image size, backbone, weights, data
    folder, class names and image counts, head, LoRA, epochs, rates, ...), as JSON values."""
    settings = config.resolved(image_size)
    for name in _NOT_RESUME_SETTINGS:
        settings.pop(name, None)
    if not config.adapt:
        settings.pop("target_dir", None)  # only reported on, then
    if not config.lora_targets:
        settings.pop("lora_targets", None)  # the default: backups from before it resume
    if settings.get("data_dir"):
        settings["data_dir"] = files.abspath(settings["data_dir"])
    settings.update(
        class_names=list(data.class_names),
        num_train=int(data.num_train),
        num_validation=int(data.num_validation),
    )
    return settings


def check_resume(config: Config, environment: Environment, settings: dict[str, Any]) -> None:
    """Refuses (`two_phase_state.BackupSettingsError`, naming every differing setting) to
    resume a backup in `model_dir` written with other `resume_settings`, before the run
    writes anything; nothing without `resume` or a backup."""
    folder = backup_dir(config, environment)
    if folder is not None:
        two_phase_state.check_backup_settings(folder, settings)


def delete_backup(config: Config, environment: Environment) -> None:
    """Deletes the run's backup: once its outputs are written, the backup is no longer
    needed to finish it."""
    folder = backup_dir(config, environment)
    if folder is not None and files.isdir(folder):
        two_phase_state.delete_backup(folder)


def _check_planned(config: Config) -> None:
    """Fails on planned settings still None: `plan_training` fills them in."""
    unplanned = [name for name in FIXED_DEFAULTS if getattr(config, name) is None]
    if unplanned:
        raise ValueError(
            f"{', '.join(unplanned)} not set: pass the config through plan_training first "
            "(run does), or set them."
        )


def _run_callbacks(
    config: Config, data: data_lib.ImageData, output_dir: str, monitor: str
) -> list[keras.callbacks.Callback]:
    """TensorBoard logs, early stopping / best weights and gradual unfreezing, in the order
    they must run (`fit_two_phase` adds the EMA's `SwapEMAWeights` after them)."""
    callbacks: list[keras.callbacks.Callback] = []
    if importlib.util.find_spec("tensorboard") is not None:
        # One step axis for both phases (Keras' own callback restarts it with each optimizer).
        callbacks.append(kt.RunTensorBoard(os.path.join(output_dir, "logs")))
    else:
        logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
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
    if config.resolved_freeze_strategy() == "gradual":
        callbacks.append(GradualUnfreezing(config.unfreeze_schedule, train_bn=config.train_bn))
    return callbacks


def _fit_arguments(
    config: Config,
    plan: dict[str, Any],
    data: data_lib.ImageData,
    environment: Environment,
    callbacks: list[keras.callbacks.Callback],
    class_weight: dict[int, float] | None,
) -> dict[str, Any]:
    """The `fit_two_phase` arguments besides the plan: optimizers over each phase's steps,
    callbacks, backup folder, LoRA and class weights."""
    static = distribute.static_batches(environment.strategy)
    batches = (math.floor if static else math.ceil)(data.num_train / config.batch_size)
    return dict(
        train_bn=config.train_bn,
        optimizer=_optimizer_factory(config, plan["head_epochs"], batches),
        fine_tune_optimizer=_optimizer_factory(config, plan["fine_tune_epochs"], batches),
        lr_decay=config.lr_decay or None,
        ema_momentum=config.ema_momentum,
        callbacks=callbacks,
        # LoRA runs resume too: fit_two_phase keeps their matrices (kt.LoraBackupAndRestore).
        backup_dir=backup_dir(config, environment),
        # Deleted by the run once its outputs are written (`delete_backup`).
        keep_backup=True,
        fine_tune=config.fine_tune,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha or None,
        lora_targets=config.resolved_lora_targets(),
        verbose=min(config.verbose, 2),
        class_weight=class_weight,
        **loss_arguments(config),
    )


def loss_arguments(config: Config) -> dict[str, Any]:
    """`fit_two_phase`'s `loss` and `metrics`: those of a multilabel or regression task
    (`image_tasks.loss_arguments`); for multiclass, those of label smoothing or
    label-mixing augmentations (soft training labels), else empty (the head's defaults)."""
    if config.task != "multiclass":
        return image_tasks.loss_arguments(config.task, config.label_smoothing)
    if not config.label_smoothing and not data_lib.uses_label_mixing(config.augment):
        return {}
    return dict(
        loss=kt.SoftLabelCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[kt.SoftLabelAccuracy(name="accuracy")],
    )


def _fit_phases(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    plan: dict[str, Any],
    common: dict[str, Any],
    cached: bool,
) -> kt.TwoPhaseHistory:
    """Both phases, the head's on cached backbone features when `cached`."""
    if cached:
        return kt.fit_two_phase_cached(
            model,
            data.train,
            data.validation,
            feature_data=data.train_unaugmented,
            head_batch_size=config.batch_size,
            seed=config.seed,
            **plan,
            **common,
        )
    return kt.fit_two_phase(model, data.train, data.validation, **plan, **common)


def _adapt_to_target(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    target: data_lib.TargetImages,
    plan: dict[str, Any],
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    history: kt.TwoPhaseHistory,
) -> None:
    """Phase 2 as domain adaptation to `target`, added to `history`: it keeps its last
    epoch. Early stopping and `restore_best` are left out of it: they watch the source
    validation loss, which rises by design as the alignment term trades source fit for
    target fit (DANN's reversal weight ramps up), so they would undo the adaptation and keep
    its first epoch or the head phase's weights. Without target labels the epoch budget is
    the declared, label-free choice."""
    start = time.perf_counter()
    callbacks = [c for c in callbacks if not isinstance(c, kt.ValidatedEarlyStopping)]
    adapted, history.unfrozen_blocks = kt.domain.fit_adaptation_phase(
        model,
        data.train,
        target.images,
        config.adapt,
        epochs,
        data.validation,
        unfreeze=plan["unfreeze"],
        train_bn=config.train_bn,
        backbone_lr=plan["fine_tune_lr"],
        head_lr=plan["head_lr"],
        optimizer_kwargs=ema_arguments(config, math.ceil(data.num_train / config.batch_size)),
        # Validation sees the averaged weights (fit_two_phase adds this for its phases).
        callbacks=callbacks + [keras.callbacks.SwapEMAWeights()] * bool(config.ema_momentum),
        # Numbered on from the head phase's last epoch, also when it stopped early.
        initial_epoch=history.epoch[-1] + 1 if history.epoch else 0,
        verbose=min(config.verbose, 2),
    )
    history.add(training.PHASE_FINE_TUNE, adapted, time.perf_counter() - start)


def _freeze_strategy_arguments(config: Config) -> dict[str, Any]:
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


# Strategies whose devices are this host's, where extracting on the host loses nothing; on
# JAX extraction is Keras' own predict step, which runs on the distribution's devices.
_CACHE_STRATEGIES = (
    distribute.KerasDistribution,
    type(tf.distribute.get_strategy()),
    tf.distribute.MirroredStrategy,
    tf.distribute.OneDeviceStrategy,
)


def _optimizer_factory(config: Config, epochs: int, steps_per_epoch: int):
    """`learning_rate -> optimizer` for one phase: Adam, or AdamW with weight decay, on the
    configured learning-rate schedule over that phase's steps (`fit_two_phase` adds the
    EMA, `config.ema_momentum`)."""
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
        if config.weight_decay:
            return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay)
        return keras.optimizers.Adam(learning_rate=rate)

    return make


def ema_arguments(config: Config, steps_per_epoch: int) -> dict[str, Any]:
    """Keras optimizer arguments for `config.ema_momentum`, a momentum per *epoch*: Keras'
    `ema_momentum` acts per step, so it is converted over this phase's steps per epoch
    (`kt.ema_momentum_per_step`) and averages over the same number of epochs whatever the
    dataset's size."""
    if not config.ema_momentum:
        return dict(use_ema=False)
    per_step = kt.ema_momentum_per_step(config.ema_momentum, max(steps_per_epoch, 1))
    return dict(use_ema=True, ema_momentum=per_step)
