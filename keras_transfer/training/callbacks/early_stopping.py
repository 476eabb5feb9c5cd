"""Early stopping that restores the weights validation scored (with an exponential moving
average, the averaged ones) and can carry its best score from one `fit` to the next
(`ValidatedEarlyStopping`).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["ValidatedEarlyStopping"]


class ValidatedEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that restores the weights validation scored, and can
    carry its best score from one `fit` to the next.

    Two differences from Keras' class, both for two-phase training with an exponential
    moving average of the weights:

    - With `keras.callbacks.SwapEMAWeights`, validation scores the averaged weights, but
      Keras' `EarlyStopping` keeps the raw ones of the best epoch: the restored model is
      not the one that scored best. This callback copies the weights at the end of each
      validation instead (for a model without EMA they are the epoch's weights). Put it
      *before* `SwapEMAWeights` in the callback list, so that its `on_test_end` runs while
      the averaged weights are still in the model.
    - With `carry_over=True`, a `fit` starts from the best score of the previous `fit` it
      watched (the head phase, for the fine-tuning phase), with the weights the new `fit`
      starts from as that score's weights: a second phase that never beats the first is
      undone at its end (`restore_best_weights`), so a generous fine-tuning budget cannot
      leave the model worse on the monitored metric than the head alone. The best epoch of
      the previous phase is reported as `best_epoch = -1`.

    Args:
        carry_over: start each `fit` from the previous `fit`'s best score and weights.
        **kwargs: `keras.callbacks.EarlyStopping` arguments (`monitor`, `patience`,
            `restore_best_weights`, ...).

    Example:
    ```python
    stop = ValidatedEarlyStopping(patience=3, restore_best_weights=True, carry_over=True)
    kt.fit_two_phase(model, train, val, callbacks=[stop, keras.callbacks.SwapEMAWeights()],
                     optimizer=lambda lr: keras.optimizers.Adam(lr, use_ema=True))
    ```
    """

    def __init__(self, carry_over: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.carry_over = bool(carry_over)
        self.previous_best: float | None = None
        self._validated_weights = None
        self._in_fit = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._validated_weights = None
        self._in_fit = True
        if self.carry_over and self.previous_best is not None:
            self.best = self.previous_best
            self.best_epoch = -1
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()

    def on_test_end(self, logs=None):
        if self._in_fit and self.restore_best_weights:
            self._validated_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        best_before = self.best
        super().on_epoch_end(epoch, logs)
        improved = self.best_epoch == epoch and self.best is not best_before
        if improved and self.restore_best_weights and self._validated_weights is not None:
            self.best_weights = self._validated_weights
        self._validated_weights = None

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._in_fit = False
        if self.best is not None:
            self.previous_best = float(self.best)
