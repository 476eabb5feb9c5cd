"""Two-phase transfer learning in plain `model.fit`: train the head, then fine-tune."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import _keras_compat
from keras_transfer import heads
from keras_transfer.backbones import freezing
from keras_transfer.data import folders as data_lib
from keras_transfer.data import imbalance
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.peft import lora
from keras_transfer.peft import lora_saving
from keras_transfer.training import features
from keras_transfer.utils import distribute
from keras_transfer.utils import reliability

__all__ = [
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "TwoPhaseHistory",
    "check_initial_epoch",
    "fit_two_phase",
    "fit_two_phase_cached",
]

logger = logging.getLogger("keras_transfer")

PHASE_HEAD = "feature_extraction"
PHASE_FINE_TUNE = "fine_tune"
STATE_FILE = "two_phase_state.json"
HEAD_WEIGHTS_FILE = "feature_extraction_done.weights.h5"
# `fit` arguments that count image batches: meaningless for a phase on cached features.
IMAGE_BATCH_COUNTS = ("steps_per_epoch", "validation_steps")


@dataclasses.dataclass
class TwoPhaseHistory:
    """The merged history of both phases, on one epoch timeline.

    Attributes:
        history: metric name -> one value per epoch, as in `keras.callbacks.History`.
        epoch: epoch indices (phase 2 continues from phase 1's count).
        phases: the phase of each epoch: `"feature_extraction"` or `"fine_tune"`.
        seconds: wall time of each phase.
        unfrozen_blocks: the blocks trained in phase 2.
    """

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    epoch: list[int] = dataclasses.field(default_factory=list)
    phases: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    unfrozen_blocks: list[str] = dataclasses.field(default_factory=list)

    def add(self, phase: str, keras_history: keras.callbacks.History, seconds: float) -> None:
        epochs = list(keras_history.epoch)
        for key, values in keras_history.history.items():
            column = self.history.setdefault(key, [float("nan")] * len(self.epoch))
            column.extend(float(v) for v in values)
        self.epoch.extend(epochs)
        self.phases.extend([phase] * len(epochs))
        for column in self.history.values():
            column.extend([float("nan")] * (len(self.epoch) - len(column)))
        self.seconds[phase] = seconds

    def phase_metrics(self, phase: str) -> dict[str, float]:
        """The metrics of the last epoch of `phase` (empty if it did not run)."""
        indices = [i for i, p in enumerate(self.phases) if p == phase]
        if not indices:
            return {}
        return {key: values[indices[-1]] for key, values in self.history.items()}

    def best_phase_metrics(self, phase: str, monitor: str = "val_accuracy", mode: str = "max"):
        """The metrics of the best epoch of `phase` by `monitor`."""
        indices = [i for i, p in enumerate(self.phases) if p == phase]
        if not indices or monitor not in self.history:
            return {}
        pick = max if mode == "max" else min
        best = pick(indices, key=lambda i: self.history[monitor][i])
        return {"epoch": self.epoch[best], **{k: v[best] for k, v in self.history.items()}}

    def phase_summary(self, phase: str, monitor: str = "val_accuracy") -> dict[str, Any]:
        """A JSON-ready summary of `phase`: last-epoch metrics, epoch count, wall time and,
        when `monitor` was logged, the best epoch (1-based) and its value."""
        last = self.phase_metrics(phase)
        if not last:
            return {}
        summary = {key: float(value) for key, value in last.items()}
        summary["epochs"] = self.phases.count(phase)
        summary["seconds"] = round(self.seconds.get(phase, 0.0), 2)
        best = self.best_phase_metrics(phase, monitor)
        if best:
            summary["best_epoch"] = int(best["epoch"]) + 1
            summary[f"best_{monitor}"] = float(best[monitor])
        return summary


def fit_two_phase(
    model: keras.Model,
    train_data: Any,
    validation_data: Any = None,
    *,
    head_epochs: int = 5,
    fine_tune_epochs: int = 5,
    head_lr: float = 1e-3,
    fine_tune_lr: float | None = None,
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
    class_weight: str | Mapping[Any, float] | None = None,
    **fit_kwargs: Any,
) -> TwoPhaseHistory:
    """Trains the head with the backbone frozen, then fine-tunes the top blocks.

    Phase 1 freezes the backbone and trains the head at `head_lr`. Phase 2 unfreezes the
    requested blocks (BatchNormalization stays in inference mode unless `train_bn`),
    recompiles with a new optimizer at `fine_tune_lr`, and continues the epoch count
    (Keras' `initial_epoch`), so callbacks and TensorBoard see one timeline. Phase 2 starts
    at epoch `initial_epoch + head_epochs` even when early stopping ended phase 1 sooner
    (the log then jumps, e.g. from epoch 9 to 101 of a 100-epoch head budget): the timeline
    is the plan's, so epoch-keyed schedules (`GradualUnfreezing`) and a resumed run's
    backups number every phase-2 epoch the same way whatever phase 1 did.

    Args:
        model: a `create_classifier` model, or any model nesting a `keras.applications`
            backbone (then give `loss` and `metrics`).
        train_data: what `model.fit` takes as `x` (a `tf.data.Dataset`, arrays, ...).
        validation_data: passed to `model.fit`.
        head_epochs: epochs of phase 1 (0 skips it).
        fine_tune_epochs: epochs of phase 2 (0 skips it).
        head_lr: learning rate of phase 1.
        fine_tune_lr: learning rate of phase 2; default `head_lr / 10`.
        unfreeze: blocks to fine-tune: a count from the output side, a block name to
            unfreeze from, a fraction in (0, 1), or `"all"`.
        train_bn: make BatchNormalization layers trainable (fastai's `train_bn`).
        optimizer: optimizer name, class, or factory `learning_rate -> optimizer` (a
            factory can return a learning-rate schedule based optimizer, a layer-wise
            learning-rate optimizer, ...).
        fine_tune_optimizer: optimizer for phase 2 if different from `optimizer`.
        lr_decay: discriminative learning rates in phase 2: the phase-2 optimizer gets
            per-variable multipliers (`keras_transfer.optimizers.layerwise.with_layerwise_lr`), block
            `i` of the backbone's `L` blocks `lr_decay ** (L - i)`, the head 1.0. Frozen
            blocks get no gradients. `None` (default): one learning rate for all.
        loss, metrics: passed to `compile`; `"auto"` uses the head's defaults.
        callbacks: Keras callbacks, used in both phases.
        compile_kwargs: extra `compile` arguments (`jit_compile`, `steps_per_execution`...).
            Without `jit_compile`, both phases use `distribute.default_jit_compile`: XLA on
            a single GPU, off on CPU (measured slower there) and TPU (XLA anyway).
        backup_dir: make the run resumable: a folder for the training state. Each phase
            runs with `keras.callbacks.BackupAndRestore` in its own subfolder (weights,
            optimizer state and epoch, saved at every epoch end), and a small JSON file
            records the settings, whether phase 1 finished and every epoch's logs. Calling
            `fit_two_phase` again with the same arguments on a freshly built model after a
            crash or kill skips a finished phase 1, restores phase 2's trainable set,
            optimizer and learning-rate schedule position, continues from the last
            completed epoch, and returns the full history of both phases. The folder's
            contents are deleted when training completes. A rerun with other epochs,
            learning rates, `unfreeze`, `train_bn` or `lr_decay` is refused. Not restored:
            callbacks' own state (e.g. `EarlyStopping` patience), the position of a
            per-epoch reshuffle and Keras' dropout random state, so a resumed run matches
            an uninterrupted one exactly only when neither is used.
        nan_guard: add a `reliability.NonFiniteGuard`: a NaN/inf loss or metric restores
            the weights of the start of that epoch and raises `NonFiniteLossError`, so a
            diverged model is never returned and the backup keeps its last good epoch.
        initial_epoch: where the epoch axis starts, for a run continuing earlier training
            (as in `model.fit`): phase 1 runs epochs `initial_epoch` to
            `initial_epoch + head_epochs - 1`, phase 2 the next `fine_tune_epochs`.
            Callbacks, the returned history and the backup all use these numbers.
        head_features: run phase 1 on cached backbone features (`features.FeatureCache`):
            the frozen backbone runs once over `head_features.data` (default `train_data`)
            and the head trains on its outputs, at the speed of a small dense network.
            Needs a `TransferClassifier`. Phase-1 callbacks then see the head model
            (features in), and its BatchNormalization statistics stay the pretrained ones
            even with `train_bn`. With `backup_dir`, a finished cached phase 1 is skipped
            on resume, extraction included.
        fine_tune: `"full"` trains the unfrozen blocks' weights in phase 2; `"lora"` trains
            low-rank updates of their layers instead (`keras_transfer.enable_lora`).
        lora_rank, lora_alpha: LoRA rank and alpha when `fine_tune="lora"`.
        class_weight: weights of the classes in the training loss of both phases, given
            to Keras' `fit(class_weight=...)`: `"balanced"` (class `c` weighs
            `n / (k * n_c)`, from the training labels: the cached labels of a cached phase
            1, else one pass over `train_data`), a dict `{class index or name: weight}`
            (missing classes weigh 1), or `None`. See `keras_transfer.resolve_class_weight`;
            a class that does not exist, a negative weight or "balanced" with an empty class
            is an error before training starts.
        **fit_kwargs: extra `fit` arguments (`verbose`, ...). A cached
            phase 1 gets them too, except `steps_per_epoch` and `validation_steps`, which
            count image batches.

    Returns:
        A `TwoPhaseHistory` with both phases on one epoch axis.
    """
    if "epochs" in fit_kwargs:
        raise TypeError("fit_two_phase sets `epochs` itself; use head_epochs / fine_tune_epochs.")
    for name, value in (("head_epochs", head_epochs), ("fine_tune_epochs", fine_tune_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    check_initial_epoch(initial_epoch)
    optimizers.check_learning_rate(head_lr, "head_lr")
    if fine_tune_lr is None:
        fine_tune_lr = head_lr / 10.0
    optimizers.check_learning_rate(fine_tune_lr, "fine_tune_lr")
    if lr_decay is not None and not (
        isinstance(lr_decay, int | float) and not isinstance(lr_decay, bool) and 0 < lr_decay <= 1
    ):
        raise ValueError(f"lr_decay must be a number in (0, 1] or None, got {lr_decay!r}.")
    make_head_optimizer = optimizers.optimizer_factory(optimizer)
    make_fine_tune_optimizer = optimizers.optimizer_factory(fine_tune_optimizer or optimizer)
    if head_features is not None:
        if not isinstance(head_features, features.FeatureCache):
            raise TypeError(
                f"head_features must be a keras_transfer.training.features.FeatureCache, got "
                f"{type(head_features).__name__}."
            )
        if not isinstance(model, heads.TransferClassifier):
            raise TypeError(
                f"head_features (phase 1 on cached features) needs a TransferClassifier "
                f"(create_classifier), got {type(model).__name__}: caching needs the model's "
                "preprocessing and head."
            )
        if head_features.data is None:
            head_features = dataclasses.replace(head_features, data=train_data)
        _check_not_empty(head_features.data, "head_features.data")
    heads.resolve_loss_and_metrics(model, loss, metrics)  # fail before training, not after
    class_weight = features.check_class_weight(model, class_weight)
    _check_not_empty(train_data, "train_data")
    _check_not_empty(validation_data, "validation_data")
    compile_kwargs = dict(compile_kwargs or {})
    if "jit_compile" not in compile_kwargs:
        compile_kwargs["jit_compile"] = distribute.default_jit_compile(
            model.distribute_strategy, model
        )
    callbacks = list(callbacks or [])
    unfreeze_kwargs = freezing.unfreeze_request(unfreeze)
    # Validate the fine-tuning request before spending time on phase 1.
    freezing.select_blocks(freezing.backbone_and_blocks(model)[1], **unfreeze_kwargs)
    if fine_tune not in ("full", "lora"):
        raise ValueError(f"fine_tune must be 'full' or 'lora', got {fine_tune!r}.")
    if fine_tune == "lora":
        lora.check_lora_request(model, lora_rank, lora_alpha, **unfreeze_kwargs)

    state = None
    if backup_dir is not None:
        state = _RunState(
            backup_dir,
            settings={
                # Not the model name: Keras numbers default names per process.
                "num_weights": len(model.weights),
                "head_epochs": head_epochs,
                "fine_tune_epochs": fine_tune_epochs,
                # The backup restores the optimizer's learning-rate variable: a rerun with
                # another rate would silently train at the old one, so it is refused.
                "head_lr": float(head_lr),
                "fine_tune_lr": float(fine_tune_lr),
                "unfreeze": str(unfreeze),
                "train_bn": bool(train_bn),
                "lr_decay": lr_decay,
                # The records and Keras' backups are keyed by absolute epoch numbers.
                "initial_epoch": initial_epoch,
                "cached_head_phase": head_features is not None,
                # Only when set, so that backups of runs without them stay resumable.
                **(
                    {"fine_tune": fine_tune, "lora_rank": lora_rank, "lora_alpha": lora_alpha}
                    if fine_tune == "lora"
                    else {}
                ),
                # Only when set, so that backups of runs without weights stay resumable.
                **(
                    {"class_weight": json.loads(json.dumps(class_weight))}
                    if class_weight is not None
                    else {}
                ),
            },
        )
    if class_weight == "balanced" and not (
        head_features is not None and head_epochs and not (state and state.head_done)
    ):
        # No cached phase 1 to read the labels from: count them now, before training.
        num_classes, class_names = imbalance.class_weight_classes(model)
        class_weight = imbalance.resolve_class_weight(
            "balanced", train_data, num_classes=num_classes, class_names=class_names
        )
    expect_validation = validation_data is not None and "validation_freq" not in fit_kwargs
    guard = [reliability.EmptyEpochGuard(expect_validation)]
    guard += [reliability.NonFiniteGuard()] if nan_guard else []

    def phase_callbacks(phase):
        if state is None:
            return guard + callbacks
        # Order matters: the guard raises before a diverged epoch is recorded or backed
        # up, and the epoch's logs are recorded before its backup, so a kill in between
        # repeats the epoch (its record is overwritten) rather than losing its logs.
        # Keras' weights files hold LoRA merged and reload it as zeros: LoRA backups keep
        # the matrices too.
        lora_phase = fine_tune == "lora" and phase == PHASE_FINE_TUNE
        backup = (
            lora_saving.LoraBackupAndRestore if lora_phase else reliability.AtomicBackupAndRestore
        )
        return [
            *guard,
            _EpochRecorder(state, phase),
            backup(state.phase_dir(phase), double_checkpoint=True, delete_checkpoint=False),
            *callbacks,
        ]

    data_lib.no_fit_shuffle(train_data, fit_kwargs)
    phases = int(bool(head_epochs)) + int(bool(fine_tune_epochs))
    result = TwoPhaseHistory()
    if head_epochs and state and state.head_done:
        logger.info(
            "phase 1/%d: the head's training already finished (from %s)", phases, backup_dir
        )
    if head_epochs and not (state and state.head_done):
        logger.info(
            "phase 1/%d: training the head on the frozen backbone at lr %s for %s%s",
            phases,
            _rate(head_lr),
            _epochs_text(head_epochs),
            ", on cached backbone features" if head_features is not None else "",
        )
        freezing.freeze(model, train_bn=train_bn)
        start = time.perf_counter()
        if head_features is None:
            model.compile(
                optimizer=make_head_optimizer(head_lr),
                **heads.resolve_loss_and_metrics(model, loss, metrics),
                **compile_kwargs,
            )
            _keras_compat.reset_fit_initial_epoch(model)
            history = model.fit(
                train_data,
                validation_data=validation_data,
                initial_epoch=initial_epoch,
                epochs=initial_epoch + head_epochs,
                callbacks=phase_callbacks(PHASE_HEAD),
                class_weight=class_weight,
                **fit_kwargs,
            )
        else:
            head_result = features.fit_head_on_features(
                model,
                validation_data,
                cache=head_features,
                epochs=head_epochs,
                optimizer=make_head_optimizer(head_lr),
                loss=loss,
                metrics=metrics,
                callbacks=phase_callbacks(PHASE_HEAD),
                initial_epoch=initial_epoch,
                class_weight=class_weight,
                jit_compile=compile_kwargs["jit_compile"],
                **{k: v for k, v in fit_kwargs.items() if k not in IMAGE_BATCH_COUNTS},
            )
            history = head_result.history
            # "balanced" was resolved from the cached labels: phase 2 uses the same weights.
            class_weight = head_result.class_weight
        result.add(PHASE_HEAD, history, time.perf_counter() - start)
    if fine_tune_epochs:
        if fine_tune == "lora":
            summary = lora.enable_lora(
                model, lora_rank, lora_alpha, **unfreeze_kwargs, train_bn=train_bn
            )
            result.unfrozen_blocks = summary.blocks
        else:
            result.unfrozen_blocks = freezing.unfreeze(model, train_bn=train_bn, **unfreeze_kwargs)
        fine_tune_optimizer = make_fine_tune_optimizer(fine_tune_lr)
        if lr_decay is not None:
            multipliers = optimizers.layer_decay_multipliers(model, lr_decay)
            fine_tune_optimizer = optimizers.with_layerwise_lr(fine_tune_optimizer, multipliers)
        model.compile(
            optimizer=fine_tune_optimizer,
            **heads.resolve_loss_and_metrics(model, loss, metrics),
            **compile_kwargs,
        )
        logger.info(
            "phase %d/%d: fine-tuning %s at lr %s%s for %s, BatchNorm %s",
            phases,
            phases,
            _blocks_text(result.unfrozen_blocks, fine_tune, lora_rank),
            _rate(fine_tune_lr),
            f" (x{lr_decay} per block below the top)" if lr_decay is not None else "",
            _epochs_text(fine_tune_epochs),
            "training" if train_bn else "frozen",
        )
        if state is not None and head_epochs:
            restored = state.finish_head_phase(model)
            if restored and fine_tune == "lora":
                # The end-of-phase-1 file reloads LoRA matrices as zeros, which never train;
                # a phase-2 backup, if there is one, then restores the trained ones.
                lora.resume_lora(model)
        start = time.perf_counter()
        _keras_compat.reset_fit_initial_epoch(model)
        history = model.fit(
            train_data,
            validation_data=validation_data,
            initial_epoch=initial_epoch + head_epochs,
            epochs=initial_epoch + head_epochs + fine_tune_epochs,
            callbacks=phase_callbacks(PHASE_FINE_TUNE),
            class_weight=class_weight,
            **fit_kwargs,
        )
        result.add(PHASE_FINE_TUNE, history, time.perf_counter() - start)
    if state is not None:
        # The per-epoch records span every process that worked on this run.
        result = state.history(unfrozen_blocks=result.unfrozen_blocks)
        state.delete()
    return result


def _rate(learning_rate: Any) -> str:
    return f"{learning_rate:g}" if isinstance(learning_rate, int | float) else str(learning_rate)


def _epochs_text(epochs: int) -> str:
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


def _blocks_text(blocks: Sequence[str], fine_tune: str, lora_rank: int) -> str:
    count = f"{len(blocks)} block{'' if len(blocks) == 1 else 's'}"
    if fine_tune == "lora":
        return f"LoRA updates (rank {lora_rank}) of {count}"
    return count


def check_initial_epoch(initial_epoch: Any) -> None:
    """Raises a clear error unless `initial_epoch` is an integer >= 0."""
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}.")


def _check_not_empty(data: Any, name: str) -> None:
    if isinstance(data, tf.data.Dataset):
        # -1 is infinite, -2 unknown (e.g. after `filter`): only a known 0 is an error.
        empty = int(data.cardinality()) == 0
    else:
        empty = getattr(data, "shape", None) is not None and len(data.shape) and data.shape[0] == 0
    if empty:
        raise ValueError(
            f"{name} is empty: it yields no batches. Check that the folder or split has "
            "examples; with drop_remainder=True, a dataset smaller than one batch has no "
            "batches: lower batch_size."
        )


class _EpochRecorder(keras.callbacks.Callback):
    """Writes each finished epoch's logs and duration to the run state."""

    def __init__(self, state: _RunState, phase: str):
        super().__init__()
        self.state = state
        self.phase = phase
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.state.record_epoch(epoch, self.phase, logs or {}, time.perf_counter() - self._start)


class _RunState:
    """The JSON that makes a two-phase run resumable: settings, phase-1 completion and
    per-epoch logs. Model and optimizer state live in Keras' own files beside it."""

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, STATE_FILE)
        self.head_weights_path = os.path.join(self.directory, HEAD_WEIGHTS_FILE)
        self.data: dict[str, Any] = {"settings": settings, "head_done": False, "epochs": {}}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("settings") != settings:
                raise ValueError(
                    f"{self.directory!r} holds the backup of a run with other settings "
                    f"({saved.get('settings')}; this run: {settings}). Resume with the same "
                    "arguments, or delete the folder (or pass another backup_dir) to start over."
                )
            self.data = saved
        else:
            self._save()

    @property
    def head_done(self) -> bool:
        return bool(self.data["head_done"]) and os.path.exists(self.head_weights_path)

    def phase_dir(self, phase: str) -> str:
        return os.path.join(self.directory, phase)

    def record_epoch(self, epoch: int, phase: str, logs: dict, seconds: float) -> None:
        values = {}
        for key, value in logs.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.data["epochs"][str(epoch)] = {"phase": phase, "seconds": seconds, "logs": values}
        self._save()

    def finish_head_phase(self, model: keras.Model) -> bool:
        """After phase 2 is compiled: save or restore the end-of-phase-1 weights; True if
        restored.

        The phase-2 optimizer is built first so that the weights file holds its (fresh)
        state, and the same file loads into a rerun's identically compiled model.
        """
        model.optimizer.build(model.trainable_variables)
        if self.head_done:
            model.load_weights(self.head_weights_path)
            return True
        reliability.write_atomically(self.head_weights_path, model.save_weights)
        self.data["head_done"] = True
        self._save()
        shutil.rmtree(self.phase_dir(PHASE_HEAD), ignore_errors=True)
        return False

    def history(self, unfrozen_blocks: list[str]) -> TwoPhaseHistory:
        result = TwoPhaseHistory(unfrozen_blocks=list(unfrozen_blocks))
        records = sorted(self.data["epochs"].items(), key=lambda item: int(item[0]))
        for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
            chosen = [(int(epoch), r) for epoch, r in records if r["phase"] == phase]
            if not chosen:
                continue
            keys = list(dict.fromkeys(k for _, r in chosen for k in r["logs"]))
            history = keras.callbacks.History()
            history.epoch = [epoch for epoch, _ in chosen]
            history.history = {k: [r["logs"].get(k, float("nan")) for _, r in chosen] for k in keys}
            result.add(phase, history, sum(r["seconds"] for _, r in chosen))
        return result

    def delete(self) -> None:
        for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
            shutil.rmtree(self.phase_dir(phase), ignore_errors=True)
        for path in (self.head_weights_path, self.path):
            if os.path.exists(path):
                os.remove(path)
        if os.path.isdir(self.directory) and not os.listdir(self.directory):
            os.rmdir(self.directory)

    def _save(self) -> None:
        def write(path):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1)

        reliability.write_atomically(self.path, write)


def fit_two_phase_cached(
    model: heads.TransferClassifier,
    train_data: Any,
    validation_data: Any = None,
    *,
    feature_data: Any = None,
    head_epochs: int = 10,
    fine_tune_epochs: int = 5,
    head_batch_size: int = 32,
    passes: int = 1,
    seed: int | None = 1337,
    cache_dir: str | os.PathLike | None = None,
    max_memory_bytes: int = features.DEFAULT_MAX_MEMORY_BYTES,
    **two_phase_kwargs: Any,
) -> TwoPhaseHistory:
    """`fit_two_phase` with phase 1 on cached features: `fit_two_phase(...,
    head_features=FeatureCache(feature_data, head_batch_size, passes, seed, cache_dir,
    max_memory_bytes))`.

    Phase 1 trains `model.head` on features cached from `feature_data` (default
    `train_data`; pass a non-augmented version of the training set, e.g.
    `ImageData.train_unaugmented`, or an augmented one with `passes=K`). Phase 2 fine-tunes
    on `train_data` (augment it: the backbone runs anyway). Every argument is checked
    before the extraction starts, and with `backup_dir` a finished phase 1 is skipped on
    resume.

    Args:
        model: a `TransferClassifier`.
        train_data: phase 2's training data.
        validation_data: validation data of both phases.
        feature_data: the data phase 1 caches features of; default `train_data`.
        head_epochs, fine_tune_epochs: as in `fit_two_phase`.
        head_batch_size, passes, seed, cache_dir, max_memory_bytes: see `FeatureCache`.
        **two_phase_kwargs: the other `fit_two_phase` arguments (`head_lr`,
            `fine_tune_lr`, `unfreeze`, `train_bn`, `optimizer`, `lr_decay`, `callbacks`,
            `backup_dir`, `initial_epoch`, `fit` arguments, ...).

    Returns:
        A `TwoPhaseHistory` with both phases on one epoch axis.
    """
    cache = features.FeatureCache(
        feature_data,
        batch_size=head_batch_size,
        passes=passes,
        seed=seed,
        cache_dir=cache_dir,
        max_memory_bytes=max_memory_bytes,
    )
    return fit_two_phase(
        model,
        train_data,
        validation_data,
        head_epochs=head_epochs,
        fine_tune_epochs=fine_tune_epochs,
        head_features=cache,
        **two_phase_kwargs,
    )
