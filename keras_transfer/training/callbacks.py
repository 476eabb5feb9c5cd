"""Callbacks for transfer learning: gradual unfreezing inside one `model.fit` (ULMFiT's
recipe, on backbone blocks: `GradualUnfreezing`, `ensure_optimizer_variables`),
BatchNormalization recalibration (`recalibrate_batchnorm`, `BatchNormRecalibration`) and
early stopping that restores the weights validation scored (`ValidatedEarlyStopping`).

Keras builds the train step once per `fit` and the optimizer creates its slots for the
variables of its first update, refusing unknown variables afterwards. Changing `trainable`
mid-fit therefore needs two things, which `GradualUnfreezing` does:

1. Before the first epoch, the optimizer is built on every variable the schedule will ever
   train, so the variables unfrozen later already have their slots (and, under a per-variable
   learning-rate optimizer, their multipliers). An optimizer that was already built on fewer
   variables (a reloaded `.keras` model, a second `fit`, a distribution strategy building it
   up front) is replaced by a copy built on all of them, keeping the state it had.
2. When the trainable set changes at an epoch boundary, the train function is rebuilt
   (`model.make_train_function(force=True)`), so the next step is traced with the new
   trainable variables and the new BatchNormalization modes.
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import freezing

__all__ = [
    "BatchNormRecalibration",
    "GradualUnfreezing",
    "ValidatedEarlyStopping",
    "ensure_optimizer_variables",
    "parse_unfreeze_schedule",
    "recalibrate_batchnorm",
]

ScheduleValue = int | float | str


def parse_unfreeze_schedule(text: str) -> dict[int, ScheduleValue]:
    """A schedule from flag syntax: `"3:1,8:2,12:all"` -> `{3: 1, 8: 2, 12: "all"}`.

    Values are block counts from the top, `"all"`, fractions (`"0.5"`) or block names.
    """
    schedule: dict[int, ScheduleValue] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        epoch, sep, value = item.partition(":")
        if not sep or not epoch.strip().isdigit() or not value.strip():
            raise ValueError(
                f"Bad unfreeze schedule entry {item!r} in {text!r}: write `epoch:blocks` pairs "
                "separated by commas, e.g. '3:1,8:2,12:all'."
            )
        value = value.strip()
        if value.isdigit():
            parsed: ScheduleValue = int(value)
        elif re.fullmatch(r"0?\.\d+", value):
            parsed = float(value)
        else:
            parsed = value
        schedule[int(epoch)] = parsed
    if not schedule:
        raise ValueError(f"Empty unfreeze schedule {text!r}; e.g. '3:1,8:2,12:all'.")
    return schedule


@keras.saving.register_keras_serializable(package="keras_transfer")
class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreezes backbone blocks from the top on an epoch schedule, inside one `fit`.

    At the start of epoch `e` the backbone is set to the entry of `schedule` with the largest
    epoch `<= e`; before the first entry it is frozen (only the head trains). Epochs count
    from 0 as in Keras callbacks, and `initial_epoch` is respected, so a resumed run lands
    in the right state. BatchNormalization layers stay frozen and in inference mode unless
    `train_bn=True`, as in `keras_transfer.backbones.freezing`.

    Newly unfrozen variables get fresh optimizer slots while the optimizer's step count
    keeps running: for Adam-like optimizers their first updates are not bias-corrected as
    for a fresh optimizer, so pair unfreezing with a low (or warming-up) rate for those blocks.

    Args:
        schedule: `{epoch: blocks}` where `blocks` is a block count from the output side,
            `"all"`, a fraction in (0, 1) or a block name to unfreeze from (what
            `fit_two_phase(unfreeze=...)` takes); or flag syntax `"3:1,8:2,12:all"`.
        train_bn: make BatchNormalization layers trainable (fastai's `train_bn`).
        verbose: print the blocks unfrozen at each change.

    Example:
    ```python
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    model.fit(data, epochs=15, callbacks=[GradualUnfreezing({3: 1, 8: 2, 12: "all"})])
    ```
    """

    def __init__(
        self,
        schedule: Mapping[int, ScheduleValue] | str,
        train_bn: bool = False,
        verbose: int = 0,
    ):
        super().__init__()
        if isinstance(schedule, str):
            schedule = parse_unfreeze_schedule(schedule)
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError(
                f"schedule must be a non-empty mapping {{epoch: blocks}}, got {schedule!r}."
            )
        checked: dict[int, ScheduleValue] = {}
        for epoch, value in schedule.items():
            epoch_int = int(epoch) if isinstance(epoch, str) and epoch.isdigit() else epoch
            if isinstance(epoch_int, bool) or not isinstance(epoch_int, int) or epoch_int < 0:
                raise ValueError(f"Schedule epochs must be integers >= 0, got {epoch!r}.")
            freezing.unfreeze_request(value)  # a clear error for a bad value, now
            checked[epoch_int] = value
        self.schedule = dict(sorted(checked.items()))
        self.train_bn = train_bn
        self.verbose = verbose
        # epoch -> names of the blocks trainable from that epoch, filled in during `fit`.
        self.unfrozen_blocks: dict[int, list[str]] = {}
        self._applied: Any = None

    def state_at(self, epoch: int) -> ScheduleValue:
        """The schedule entry in force at `epoch` (0 blocks before the first entry)."""
        value: ScheduleValue = 0
        for start, entry in self.schedule.items():
            if start <= epoch:
                value = entry
        return value

    def _apply(self, value: ScheduleValue) -> list[str]:
        if value == 0 and not isinstance(value, bool):
            freezing.freeze(self.model, train_bn=self.train_bn)
            return []
        return freezing.unfreeze(
            self.model, train_bn=self.train_bn, **freezing.unfreeze_request(value)
        )

    def on_train_begin(self, logs=None):
        if getattr(self.model, "optimizer", None) is None:
            raise ValueError("GradualUnfreezing needs a compiled model: call model.compile first.")
        # Visit every state of the schedule (fails now on a request the backbone cannot
        # satisfy) and give the optimizer slots for everything any of them trains.
        variables: dict[int, keras.Variable] = {}
        # The final state first, so the optimizer's variables start in the order of the
        # model's trainable weights at the end of `fit`: Keras pairs the two lists by
        # position when it writes averaged weights back (`use_ema`).
        for value in [*reversed(list(self.schedule.values())), 0]:
            self._apply(value)
            for variable in self.model.trainable_variables:
                variables.setdefault(id(variable), variable)
        ensure_optimizer_variables(self.model, variables.values())
        self._applied = None

    def on_epoch_begin(self, epoch, logs=None):
        value = self.state_at(epoch)
        if self._applied is not None and value == self._applied:
            return
        names = self._apply(value)
        self._applied = value
        self.unfrozen_blocks[epoch] = names
        # The compiled step captured the old trainable variables and BN modes.
        self.model.make_train_function(force=True)
        # Keep Keras' "trainable state changed since compile" check in step with the step
        # function it guards.
        _keras_compat.sync_compiled_trainable_state(self.model)
        if self.verbose:
            print(
                f"GradualUnfreezing: epoch {epoch + 1}: {len(names)} trainable backbone "
                f"block(s){': ' + ', '.join(names) if names else ''}"
            )

    def get_config(self):
        return {
            # JSON object keys are strings; the constructor takes them back.
            "schedule": {str(epoch): value for epoch, value in self.schedule.items()},
            "train_bn": self.train_bn,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def ensure_optimizer_variables(
    model: keras.Model, variables: Iterable[keras.Variable]
) -> keras.optimizers.Optimizer:
    """Makes `model.optimizer` able to update every variable in `variables`.

    An unbuilt optimizer is built on them. A built one that lacks some is replaced by a
    copy (from its config) built on its own variables plus the missing ones, with its
    iterations, learning rate and slots copied over by variable path, so training continues
    where it was.

    Returns:
        The optimizer now attached to the model.
    """
    optimizer = model.optimizer
    variables = list(variables)
    strategy = getattr(model, "distribute_strategy", None)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    if not optimizer.built:
        with scope:
            optimizer.build(variables)
        return optimizer
    known = list(getattr(optimizer, "_trainable_variables", []))
    known_ids = {id(v) for v in known}
    missing = [v for v in variables if id(v) not in known_ids]
    if not missing:
        return optimizer
    with scope:
        replacement = optimizer.__class__.from_config(optimizer.get_config())
        replacement.build(known + missing)
    _copy_state(optimizer, replacement)
    model.optimizer = replacement
    return replacement


def _copy_state(source: keras.optimizers.Optimizer, target: keras.optimizers.Optimizer) -> None:
    by_path: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    for variable in source.variables:
        by_path[variable.path].append(variable)
    for variable in target.variables:
        if by_path.get(variable.path):
            old = by_path[variable.path].popleft()
            if tuple(old.shape) == tuple(variable.shape):
                variable.assign(old.value)


def recalibrate_batchnorm(model: keras.Model, data: Any, steps: int | None = None) -> int:
    """Recomputes the moving statistics of `model`'s trainable BatchNormalization layers
    from `data` with the current weights ("precise BN").

    Each layer's moving mean and variance become the averages of its batch means and
    variances over `steps` batches of `data`, with the layers below it normalising by
    their batch statistics, exactly as in training. Weights do not change. Frozen
    BatchNormalization layers (pretrained statistics) are left alone.

    Args:
        model: a Keras model.
        data: batches of `(images, labels)` or of images (a `tf.data.Dataset` or any
            iterable), e.g. the training data.
        steps: batches to use; default all of `data` (it must be finite).

    Returns:
        The number of batches used (0 when the model has no trainable BatchNormalization).

    Example:
    ```python
    recalibrate_batchnorm(model, data.train, steps=50)
    model.evaluate(data.validation)
    ```
    """
    layers = [
        layer
        for layer in _keras_compat.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}.")
    momenta = [layer.momentum for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    used = 0
    try:
        # Momentum 0: after a training-mode forward pass the moving statistics are exactly
        # that batch's statistics. Eager calls read the momentum set here.
        for layer in layers:
            layer.momentum = 0.0
        for batch in data:
            if steps is not None and used >= steps:
                break
            images = batch[0] if isinstance(batch, tuple | list) else batch
            model(images, training=True)
            for total, layer in zip(sums, layers):
                total[0] += layer.moving_mean.numpy()
                total[1] += layer.moving_variance.numpy()
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not used:
        raise ValueError("recalibrate_batchnorm got no batches: `data` is empty.")
    for (mean, variance), layer in zip(sums, layers):
        layer.moving_mean.assign(mean / used)
        layer.moving_variance.assign(variance / used)
    return used


class BatchNormRecalibration(keras.callbacks.Callback):
    """Recalibrates BatchNormalization statistics (`recalibrate_batchnorm`) before each
    validation inside `fit` and at the end of training, so that the validation metrics and
    the returned model use statistics of the current weights.

    For models whose BatchNormalization layers train from scratch on few steps; a
    pretrained model with frozen BatchNormalization does not need it.

    Args:
        data: training batches to compute the statistics on.
        steps: batches per recalibration; default all of `data`.

    Example:
    ```python
    model.fit(train, validation_data=val, epochs=15,
              callbacks=[BatchNormRecalibration(train)])
    ```
    """

    def __init__(self, data: Any, steps: int | None = None):
        super().__init__()
        self.data = data
        self.steps = steps
        self._calibrated = False

    def on_train_batch_end(self, batch, logs=None):
        self._calibrated = False

    def on_test_begin(self, logs=None):
        self._recalibrate_if_stale()

    def on_train_end(self, logs=None):
        # After the last validation the statistics already match the final weights.
        self._recalibrate_if_stale()

    def _recalibrate_if_stale(self):
        if not self._calibrated:
            recalibrate_batchnorm(self.model, self.data, self.steps)
            self._calibrated = True


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
