"""Two-phase transfer learning in plain `model.fit`: train the head, then fine-tune.

Phase 1 freezes the backbone and trains the head at `head_lr`. Phase 2 unfreezes the requested
blocks (BatchNormalization stays in inference mode unless `train_bn`), recompiles with a new
optimizer at `fine_tune_lr` and continues the epoch count (Keras' `initial_epoch`), so callbacks,
TensorBoard and the history see one timeline without holes: phase 2 starts at the epoch after phase
1's last, also when early stopping ended phase 1 early (after 13 of 100 head epochs the logs show
phase 2 as epochs 14 to 23). Phase 1 runs epochs `initial_epoch` to `initial_epoch + head_epochs -
1` at most. Learning-rate schedules inside the phase-2 optimizer count its own steps, however phase
1 ended.

Resuming (`backup_dir`): each phase runs with `keras.callbacks.BackupAndRestore` in its own
subfolder (weights, optimizer state and epoch, saved at every epoch end), and a JSON file
(`two_phase_state`) records the settings, whether phase 1 finished, phase 2's first epoch and every
epoch's logs. Calling `fit_two_phase` again with the same arguments on a freshly built model after
a crash or kill skips a finished phase 1, restores phase 2's trainable set, optimizer and
learning-rate schedule position, continues from the last completed epoch under the epoch numbers of
the uninterrupted run (so epoch-keyed callbacks such as `GradualUnfreezing` see the same epochs),
and returns the full history of both phases. The folder's contents are deleted when training
completes; with `keep_backup=True` they are kept, with the model's final values, until the caller
deletes them (`two_phase_state.delete_backup`) once its own outputs are written: a rerun in between
restores those values without training. A rerun with other epochs, learning rates, `unfreeze`,
`train_bn`, `lr_decay` or caller settings (`backup_settings`, e.g. the image size and data) is
refused, naming them. Not restored: callbacks' own state (e.g. `EarlyStopping` patience), the
position of a per-epoch reshuffle and Keras' dropout random state, so a resumed run matches an
uninterrupted one exactly only when neither is used. A backup written before phase 2's first epoch
was recorded keeps numbering phase 2 from the plan (`initial_epoch + head_epochs`), as when it was
written.

Cached phase 1 (`head_features`): the frozen backbone runs once over `head_features.data` (default
`train_data`) and the head trains on its outputs, at the speed of a small dense network. Phase-1
callbacks then see the head model (features in), and its BatchNormalization statistics stay the
pretrained ones even with `train_bn`. With `backup_dir`, a finished cached phase 1 is skipped on
resume, extraction included.

EMA (`ema_momentum`, 0.5 by default: the defaults suite's advisor chose it): each phase's
optimizer keeps Keras' moving average of the weights (`use_ema`, via `with_ema`), its momentum
stated per epoch (the older weights' share after one epoch) and converted over the phase's
batches, so that it averages over the same epochs on any dataset; `SwapEMAWeights` (added after
the caller's callbacks) lets validation score the average, and each phase ends with it. When the
batches per epoch are unknown (a dataset of unknown cardinality without `steps_per_epoch`) it
is off, with a warning.

`class_weight` goes to Keras' `fit(class_weight=...)` in both phases: `"balanced"` (class `c`
weighs `n / (k * n_c)`, from the cached labels of a cached phase 1, else one pass over
`train_data`), a dict `{class index or name: weight}` (missing classes weigh 1), or `None`. A class
that does not exist, a negative weight or "balanced" with an empty class is an error before
training starts. `lr_decay` gives the phase-2 optimizer per-variable multipliers
(`keras_transfer.optimizers.layerwise.with_layerwise_lr`): frozen blocks get no gradients. Without
`jit_compile` in `compile_kwargs`, both phases use `distribute.default_jit_compile`: XLA on a
single GPU, off on CPU (measured slower there) and TPU (XLA anyway).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer import heads
from keras_transfer.backbones import freezing
from keras_transfer.data import imbalance
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.peft import lora
from keras_transfer.training import features
from keras_transfer.training import two_phase_state
from keras_transfer.training import weight_averaging
from keras_transfer.training.callbacks import backup
from keras_transfer.training.callbacks import guards
from keras_transfer.training.two_phase_state import PHASE_FINE_TUNE
from keras_transfer.training.two_phase_state import PHASE_HEAD
from keras_transfer.training.two_phase_state import TwoPhaseHistory
from keras_transfer.utils import distribute
from keras_transfer.utils import fit_arguments

__all__ = [
    "DEFAULT_EMA_MOMENTUM",
    "DEFAULT_FINE_TUNE_EPOCHS",
    "DEFAULT_FINE_TUNE_LR",
    "DEFAULT_HEAD_EPOCHS",
    "DEFAULT_HEAD_LR",
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "check_initial_epoch",
    "fit_two_phase",
]

logger = logging.getLogger("keras_transfer")

# The defaults of `fit_two_phase`, which the command's `plan="fixed"` and the README's
# snippets use too (one set of defaults everywhere).
DEFAULT_HEAD_EPOCHS = 20
DEFAULT_FINE_TUNE_EPOCHS = 5
DEFAULT_HEAD_LR = 1e-3
DEFAULT_FINE_TUNE_LR = 2e-5
# Validate and keep an EMA of the weights, its momentum per epoch: the defaults suite's
# advisor rule (benchmarks/defaults_suite.py; benchmarks/results/defaults_suite.json).
DEFAULT_EMA_MOMENTUM = 0.5

# `fit` arguments that count image batches: meaningless for a phase on cached features.
IMAGE_BATCH_COUNTS = ("steps_per_epoch", "validation_steps")


def fit_two_phase(
    model: keras.Model,
    train_data: Any,
    validation_data: Any = None,
    *,
    head_epochs: int = DEFAULT_HEAD_EPOCHS,
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
    head_lr: float = DEFAULT_HEAD_LR,
    fine_tune_lr: float | None = DEFAULT_FINE_TUNE_LR,
    unfreeze: int | str = "all",
    train_bn: bool = False,
    optimizer: str | type | optimizers.OptimizerFactory = "adam",
    fine_tune_optimizer: str | type | optimizers.OptimizerFactory | None = None,
    lr_decay: float | None = None,
    loss: Any = "auto",
    metrics: Any = "auto",
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    compile_kwargs: dict[str, Any] | None = None,
    backup_dir: str | os.PathLike | None = None,
    nan_guard: bool = True,
    initial_epoch: int = 0,
    head_features: features.FeatureCache | None = None,
    fine_tune: str = "full",
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: str | Sequence[str] | None = None,
    class_weight: str | Mapping[Any, float] | None = None,
    keep_backup: bool = False,
    backup_settings: Mapping[str, Any] | None = None,
    ema_momentum: float = DEFAULT_EMA_MOMENTUM,
    **fit_kwargs: Any,
) -> TwoPhaseHistory:
    """Trains the head with the backbone frozen, then fine-tunes the top blocks (phase 2
    numbers its epochs on from phase 1's last; the module docstring has the details).

    Args:
        model: a `create_classifier` model, or any model nesting a `keras.applications`
            backbone (then give `loss` and `metrics`).
        train_data, validation_data: what `model.fit` takes as `x` and `validation_data`.
        head_epochs, fine_tune_epochs: epochs of phase 1 and of phase 2 (0 skips it).
        head_lr, fine_tune_lr: learning rates of phases 1 and 2 (None: `head_lr / 10`).
        unfreeze: blocks to fine-tune: a count from the output side, a block name to
            unfreeze from, a fraction in (0, 1), or `"all"`.
        train_bn: make BatchNormalization layers trainable (fastai's `train_bn`).
        optimizer: optimizer name, class, or factory `learning_rate -> optimizer`.
        fine_tune_optimizer: optimizer for phase 2 if different from `optimizer`.
        lr_decay: phase-2 block `i` of `L` trains at `lr_decay ** (L - i)` times the rate.
        loss, metrics: passed to `compile`; `"auto"` uses the head's defaults.
        callbacks: Keras callbacks, used in both phases.
        compile_kwargs: extra `compile` arguments (`jit_compile`, `steps_per_execution`...).
        backup_dir: make the run resumable: a folder for the training state, emptied when
            training completes (unless `keep_backup`); rerun the same call to resume.
        nan_guard: a NaN/inf loss or metric restores the weights of the start of that
            epoch and raises `NonFiniteLossError` (`guards.NonFiniteGuard`).
        initial_epoch: where the epoch axis starts, as in `model.fit`.
        head_features: a `features.FeatureCache`: phase 1 on cached backbone features.
        fine_tune: `"full"` trains the unfrozen blocks' weights in phase 2; `"lora"` their
            low-rank updates (`enable_lora`).
        lora_rank, lora_alpha, lora_targets: `enable_lora`'s rank, alpha and `targets`.
        class_weight: `"balanced"`, `{class index or name: weight}` or `None`, for both
            phases' training loss (`resolve_class_weight`).
        keep_backup: keep the backup, with the final values, for the caller to delete.
        backup_settings: the caller's own settings (JSON values) a resume must match.
        ema_momentum: an EMA of the weights, its momentum per epoch (0: off), which
            validation scores and each phase ends with; the module docstring has details.
        **fit_kwargs: extra `fit` arguments (`verbose`, ...; a cached phase 1 drops counts).

    Returns:
        A `TwoPhaseHistory` with both phases on one epoch axis.
    """
    # Every argument by name, in one object the steps share (`_prepare_run` checks them).
    run = _prepare_run(_Run(**locals()))
    if run.state is not None and run.state.finished:
        return _finished_run(run)
    result = TwoPhaseHistory()
    if head_epochs:
        _head_phase(run, result)
    if fine_tune_epochs:
        _fine_tune_phase(run, result)
    return _final_history(run, result)


@dataclasses.dataclass
class _Run:
    """The arguments of one `fit_two_phase` call, then what its phases share."""

    model: keras.Model
    train_data: Any
    validation_data: Any
    head_epochs: int
    fine_tune_epochs: int
    head_lr: float
    fine_tune_lr: float | None
    unfreeze: int | str
    train_bn: bool
    optimizer: Any
    fine_tune_optimizer: Any
    lr_decay: float | None
    loss: Any
    metrics: Any
    callbacks: Any
    compile_kwargs: Any
    backup_dir: str | os.PathLike | None
    nan_guard: bool
    initial_epoch: int
    head_features: features.FeatureCache | None
    fine_tune: str
    lora_rank: int
    lora_alpha: float | None
    lora_targets: str | Sequence[str] | None
    class_weight: Any
    keep_backup: bool
    backup_settings: Mapping[str, Any] | None
    ema_momentum: float
    fit_kwargs: dict[str, Any]
    # Filled in by `_prepare_run`.
    make_head_optimizer: Callable[[float], Any] | None = None
    make_fine_tune_optimizer: Callable[[float], Any] | None = None
    unfreeze_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    state: two_phase_state.RunState | None = None
    guard: list[keras.callbacks.Callback] = dataclasses.field(default_factory=list)

    @property
    def phase_count(self) -> int:
        return int(bool(self.head_epochs)) + int(bool(self.fine_tune_epochs))

    @property
    def lora_request(self) -> dict[str, Any]:  # `enable_lora`'s arguments
        rank, alpha, targets = self.lora_rank, self.lora_alpha, self.lora_targets
        return dict(rank=rank, alpha=alpha, targets=targets, **self.unfreeze_kwargs)


def _prepare_run(run: _Run) -> _Run:
    """Checks every argument and resolves the defaults, before any training starts."""
    if "epochs" in run.fit_kwargs:
        raise TypeError("fit_two_phase sets `epochs` itself; use head_epochs / fine_tune_epochs.")
    _check_epochs_and_rates(run)
    run.make_head_optimizer = optimizers.optimizer_factory(run.optimizer)
    run.make_fine_tune_optimizer = optimizers.optimizer_factory(
        run.fine_tune_optimizer or run.optimizer
    )
    _check_head_features(run)
    loss = heads.resolve_loss_and_metrics(run.model, run.loss, run.metrics)["loss"]  # fail now
    run.class_weight = features.check_class_weight(run.model, run.class_weight)
    fit_arguments.check_not_empty(run.train_data, "train_data")
    fit_arguments.check_not_empty(run.validation_data, "validation_data")
    fit_arguments.check_image_size(run.model, run.train_data, "train_data")
    fit_arguments.check_image_size(run.model, run.validation_data, "validation_data")
    if not isinstance(run.model, heads.TransferClassifier):  # whose fit checks its labels
        run.train_data = heads.check_labels(run.model, run.train_data, loss=loss)
        run.validation_data = heads.check_labels(run.model, run.validation_data, loss=loss)
    run.compile_kwargs = dict(run.compile_kwargs or {})
    if "jit_compile" not in run.compile_kwargs:
        run.compile_kwargs["jit_compile"] = distribute.default_jit_compile(
            distribute.model_strategy(run.model), run.model
        )
    run.callbacks = list(run.callbacks or [])
    _add_ema(run)
    _check_fine_tune_request(run)
    if run.backup_dir is not None:
        run.state = two_phase_state.RunState(
            run.backup_dir, settings=two_phase_state.resume_settings(run)
        )
    _count_balanced_class_weight(run)
    expect_validation = run.validation_data is not None and "validation_freq" not in run.fit_kwargs
    run.guard = [guards.EmptyEpochGuard(expect_validation)]
    run.guard += [guards.NonFiniteGuard()] if run.nan_guard else []
    fit_arguments.no_fit_shuffle(run.train_data, run.fit_kwargs)
    return run


def _check_epochs_and_rates(run: _Run) -> None:
    for name in ("head_epochs", "fine_tune_epochs"):
        value = getattr(run, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    check_initial_epoch(run.initial_epoch)
    optimizers.check_learning_rate(run.head_lr, "head_lr")
    if run.fine_tune_lr is None:
        run.fine_tune_lr = run.head_lr / 10.0
    optimizers.check_learning_rate(run.fine_tune_lr, "fine_tune_lr")
    lr_decay = run.lr_decay
    if lr_decay is not None and not (
        isinstance(lr_decay, int | float) and not isinstance(lr_decay, bool) and 0 < lr_decay <= 1
    ):
        raise ValueError(f"lr_decay must be a number in (0, 1] or None, got {lr_decay!r}.")


def _add_ema(run: _Run) -> None:
    """Both phases' optimizers keep an EMA of the weights (`with_ema`, per epoch of the
    training data; a cached phase 1 converts over its own batches), and validation scores
    it (`SwapEMAWeights`, after the caller's callbacks, as Keras' docs order them)."""
    weight_averaging.ema_momentum_per_step(run.ema_momentum, 1)  # a momentum in [0, 1)
    steps = fit_arguments.batches_per_epoch(run.train_data, run.fit_kwargs)
    if run.ema_momentum and steps is None:
        logger.warning(
            "ema_momentum=%g is off: the batches per epoch of train_data are unknown. Pass "
            "steps_per_epoch=..., or ema_momentum=0.",
            run.ema_momentum,
        )
        run.ema_momentum = 0.0
    if not run.ema_momentum:
        return
    head_factory, fine_tune_factory = run.make_head_optimizer, run.make_fine_tune_optimizer
    momentum = run.ema_momentum
    if run.head_features is None:  # on cached features, `fit_head_on_features` adds it
        run.make_head_optimizer = lambda rate: weight_averaging.with_ema(
            head_factory(rate), momentum, steps
        )
    run.make_fine_tune_optimizer = lambda rate: weight_averaging.with_ema(
        fine_tune_factory(rate), momentum, steps
    )
    if not any(isinstance(c, keras.callbacks.SwapEMAWeights) for c in run.callbacks):
        run.callbacks.append(keras.callbacks.SwapEMAWeights())


def _check_head_features(run: _Run) -> None:
    """A cached phase 1 needs a `FeatureCache` and a `TransferClassifier`; its data
    defaults to `train_data`."""
    if run.head_features is None:
        return
    if not isinstance(run.head_features, features.FeatureCache):
        raise TypeError(
            f"head_features must be a keras_transfer.training.features.FeatureCache, got "
            f"{type(run.head_features).__name__}."
        )
    if not isinstance(run.model, heads.TransferClassifier):
        raise TypeError(
            f"head_features (phase 1 on cached features) needs a TransferClassifier "
            f"(create_classifier), got {type(run.model).__name__}: caching needs the model's "
            "preprocessing and head."
        )
    if run.head_features.data is None:
        run.head_features = dataclasses.replace(run.head_features, data=run.train_data)
    fit_arguments.check_not_empty(run.head_features.data, "head_features.data")


def _check_fine_tune_request(run: _Run) -> None:
    """Validates the fine-tuning request before time is spent on phase 1."""
    run.unfreeze_kwargs = freezing.unfreeze_request(run.unfreeze)
    freezing.select_blocks(freezing.backbone_and_blocks(run.model)[1], **run.unfreeze_kwargs)
    if run.fine_tune not in ("full", "lora"):
        raise ValueError(f"fine_tune must be 'full' or 'lora', got {run.fine_tune!r}.")
    if run.fine_tune == "lora":
        lora.check_lora_request(run.model, **run.lora_request)


def _count_balanced_class_weight(run: _Run) -> None:
    """Resolves `class_weight="balanced"` from the labels of `train_data` unless a cached
    phase 1 will read them from its cache."""
    cached_phase_runs = (
        run.head_features is not None
        and run.head_epochs
        and not (run.state and run.state.head_done)
    )
    if run.class_weight == "balanced" and not cached_phase_runs:
        num_classes, class_names = imbalance.class_weight_classes(run.model)
        run.class_weight = imbalance.resolve_class_weight(
            "balanced", run.train_data, num_classes=num_classes, class_names=class_names
        )


def _phase_callbacks(run: _Run, phase: str) -> list[keras.callbacks.Callback]:
    if run.state is None:
        return run.guard + run.callbacks
    # Order matters: the guard raises before a diverged epoch is recorded or backed
    # up, and the epoch's logs are recorded before its backup, so a kill in between
    # repeats the epoch (its record is overwritten) rather than losing its logs.
    # Keras' weights files hold LoRA merged and reload it as zeros: LoRA backups keep
    # the matrices too.
    lora_phase = run.fine_tune == "lora" and phase == PHASE_FINE_TUNE
    backup_type = backup.LoraBackupAndRestore if lora_phase else backup.AtomicBackupAndRestore
    return [
        *run.guard,
        two_phase_state.EpochRecorder(run.state, phase),
        backup_type(run.state.phase_dir(phase), double_checkpoint=True, delete_checkpoint=False),
        *run.callbacks,
    ]


def _head_phase(run: _Run, result: TwoPhaseHistory) -> None:
    """Phase 1: the head trains on the frozen backbone, unless a backup says it finished."""
    if run.state and run.state.head_done:
        logger.info(
            "phase 1/%d: the head's training already finished (from %s)",
            run.phase_count,
            run.backup_dir,
        )
        return
    logger.info(
        "phase 1/%d: training the head on the frozen backbone at lr %s for %s%s",
        run.phase_count,
        _rate(run.head_lr),
        _epochs_text(run.head_epochs),
        ", on cached backbone features" if run.head_features is not None else "",
    )
    freezing.freeze(run.model, train_bn=run.train_bn)
    start = time.perf_counter()
    if run.head_features is None:
        history = _fit_head(run)
    else:
        history = _fit_head_on_cached_features(run)
    result.add(PHASE_HEAD, history, time.perf_counter() - start)


def _fit_head(run: _Run) -> keras.callbacks.History:
    run.model.compile(
        optimizer=run.make_head_optimizer(run.head_lr),
        **heads.resolve_loss_and_metrics(run.model, run.loss, run.metrics),
        **run.compile_kwargs,
    )
    _keras_compat.reset_fit_initial_epoch(run.model)
    return run.model.fit(
        run.train_data,
        validation_data=run.validation_data,
        initial_epoch=run.initial_epoch,
        epochs=run.initial_epoch + run.head_epochs,
        callbacks=_phase_callbacks(run, PHASE_HEAD),
        class_weight=run.class_weight,
        **run.fit_kwargs,
    )


def _fit_head_on_cached_features(run: _Run) -> keras.callbacks.History:
    head_result = features.fit_head_on_features(
        run.model,
        run.validation_data,
        cache=run.head_features,
        epochs=run.head_epochs,
        optimizer=run.make_head_optimizer(run.head_lr),
        loss=run.loss,
        metrics=run.metrics,
        callbacks=_phase_callbacks(run, PHASE_HEAD),
        initial_epoch=run.initial_epoch,
        class_weight=run.class_weight,
        jit_compile=run.compile_kwargs["jit_compile"],
        ema_momentum=run.ema_momentum,
        **{k: v for k, v in run.fit_kwargs.items() if k not in IMAGE_BATCH_COUNTS},
    )
    # "balanced" was resolved from the cached labels: phase 2 uses the same weights.
    run.class_weight = head_result.class_weight
    return head_result.history


def _fine_tune_phase(run: _Run, result: TwoPhaseHistory) -> None:
    """Phase 2: unfreeze, recompile, then train from the epoch after phase 1's last."""
    result.unfrozen_blocks = _unfreeze_for_fine_tuning(run)
    _compile_fine_tuning(run)
    logger.info(
        "phase %d/%d: fine-tuning %s at lr %s%s for %s, BatchNorm %s",
        run.phase_count,
        run.phase_count,
        _blocks_text(result.unfrozen_blocks, run.fine_tune, run.lora_rank),
        _rate(run.fine_tune_lr),
        f" (x{run.lr_decay} per block below the top)" if run.lr_decay is not None else "",
        _epochs_text(run.fine_tune_epochs),
        "training" if run.train_bn else "frozen",
    )
    first_epoch = _fine_tune_initial_epoch(run, result)
    _save_or_restore_head_phase(run, first_epoch)
    start = time.perf_counter()
    _keras_compat.reset_fit_initial_epoch(run.model)
    history = run.model.fit(
        run.train_data,
        validation_data=run.validation_data,
        initial_epoch=first_epoch,
        epochs=first_epoch + run.fine_tune_epochs,
        callbacks=_phase_callbacks(run, PHASE_FINE_TUNE),
        class_weight=run.class_weight,
        **run.fit_kwargs,
    )
    result.add(PHASE_FINE_TUNE, history, time.perf_counter() - start)


def _unfreeze_for_fine_tuning(run: _Run) -> list[str]:
    """Makes the requested blocks (or their LoRA updates) trainable; returns their names."""
    if run.fine_tune == "lora":
        return lora.enable_lora(run.model, **run.lora_request, train_bn=run.train_bn).blocks
    return freezing.unfreeze(run.model, train_bn=run.train_bn, **run.unfreeze_kwargs)


def _compile_fine_tuning(run: _Run) -> None:
    optimizer = run.make_fine_tune_optimizer(run.fine_tune_lr)
    if run.lr_decay is not None:
        multipliers = optimizers.layer_decay_multipliers(run.model, run.lr_decay)
        optimizer = optimizers.with_layerwise_lr(optimizer, multipliers)
    run.model.compile(
        optimizer=optimizer,
        **heads.resolve_loss_and_metrics(run.model, run.loss, run.metrics),
        **run.compile_kwargs,
    )


def _fine_tune_initial_epoch(run: _Run, result: TwoPhaseHistory) -> int:
    """Phase 2's first epoch: the one after phase 1's last, so the timeline has no holes.

    With a backup, phase 1 may have run in an earlier process: its records tell, and once
    phase 1 finished the backup holds the number itself, so every resumed run reuses it.
    """
    if run.state is None:
        head = [e for e, phase in zip(result.epoch, result.phases) if phase == PHASE_HEAD]
    else:
        recorded = run.state.fine_tune_initial_epoch
        if recorded is not None:
            return recorded
        if run.head_epochs and run.state.head_done:
            # A backup from before phase 2's first epoch was recorded: its phase-2 epochs
            # (and Keras' backup of them) follow the plan.
            return run.initial_epoch + run.head_epochs
        head = run.state.epochs_of(PHASE_HEAD)
    return max(head) + 1 if head else run.initial_epoch


def _save_or_restore_head_phase(run: _Run, fine_tune_initial_epoch: int) -> None:
    """With a backup: keep the end of phase 1 (or reload it in a resumed run)."""
    if run.state is None or not run.head_epochs:
        return
    restored = run.state.finish_head_phase(run.model, fine_tune_initial_epoch)
    if restored and run.fine_tune == "lora":
        # The end-of-phase-1 file reloads LoRA matrices as zeros, which never train;
        # a phase-2 backup, if there is one, then restores the trained ones.
        lora.resume_lora(run.model)


def _final_history(run: _Run, result: TwoPhaseHistory) -> TwoPhaseHistory:
    """The history of both phases; with a backup, the one spanning every process that
    worked on this run, and the backup is deleted (`keep_backup`: marked finished)."""
    if run.state is None:
        return result
    history = run.state.history(unfrozen_blocks=result.unfrozen_blocks)
    if run.keep_backup:
        run.state.finish(run.model)
    else:
        run.state.delete()
    return history


def _finished_run(run: _Run) -> TwoPhaseHistory:
    """A kept backup of a finished run (its caller was stopped before deleting it): the
    model is set up as at the end of that run, with its final values, and nothing trains."""
    logger.info("training already finished (from %s): restoring its final model", run.backup_dir)
    unfrozen: list[str] = []
    if run.fine_tune_epochs:
        unfrozen = _unfreeze_for_fine_tuning(run)  # LoRA layers exist from here on
        _compile_fine_tuning(run)
    else:
        freezing.freeze(run.model, train_bn=run.train_bn)
    run.state.restore_final_values(run.model)
    history = run.state.history(unfrozen_blocks=unfrozen)
    if not run.keep_backup:
        run.state.delete()
    return history


def _rate(learning_rate: Any) -> str:
    return f"{learning_rate:g}" if isinstance(learning_rate, int | float) else str(learning_rate)


def _epochs_text(epochs: int) -> str:
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


def _blocks_text(blocks: Sequence[str], fine_tune: str, lora_rank: int) -> str:
    count = f"{len(blocks)} block{'' if len(blocks) == 1 else 's'}"
    return f"LoRA updates (rank {lora_rank}) of {count}" if fine_tune == "lora" else count


def check_initial_epoch(initial_epoch: Any) -> None:
    """Raises a clear error unless `initial_epoch` is an integer >= 0."""
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}.")
