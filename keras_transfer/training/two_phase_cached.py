"""`fit_two_phase` with phase 1 on features cached from the frozen backbone."""

from __future__ import annotations

import os
from typing import Any

from keras_transfer import heads
from keras_transfer.training import features
from keras_transfer.training.two_phase import DEFAULT_FINE_TUNE_EPOCHS
from keras_transfer.training.two_phase import DEFAULT_HEAD_EPOCHS
from keras_transfer.training.two_phase import fit_two_phase
from keras_transfer.training.two_phase_state import TwoPhaseHistory

__all__ = ["fit_two_phase_cached"]


def fit_two_phase_cached(
    model: heads.TransferClassifier,
    train_data: Any,
    validation_data: Any = None,
    *,
    feature_data: Any = None,
    head_epochs: int = DEFAULT_HEAD_EPOCHS,
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
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
