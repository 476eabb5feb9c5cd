"""Gradual unfreezing inside one `model.fit` (ULMFiT's recipe, on backbone blocks):
`GradualUnfreezing`, its flag syntax (`parse_unfreeze_schedule`) and
`ensure_optimizer_variables`.

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
import re
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import freezing
from keras_transfer.utils import backend
from keras_transfer.utils import distribute

__all__ = [
    "GradualUnfreezing",
    "ScheduleValue",
    "checked_unfreeze_schedule",
    "ensure_optimizer_variables",
    "parse_unfreeze_schedule",
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


def checked_unfreeze_schedule(
    schedule: Mapping[int, ScheduleValue] | str,
) -> dict[int, ScheduleValue]:
    """`schedule` (a mapping or the command's "epoch:blocks,..." text) checked and sorted by
    epoch, with a clear error for a bad epoch or block count; usable on any backend, so a
    configuration names its own mistake before the backend check."""
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
    return dict(sorted(checked.items()))


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

    TensorFlow only: Keras' JAX trainer cannot grow the trainable set inside one `fit`, so
    on another backend the constructor raises `kt.BackendError` (whatever the schedule and
    optimizer); unfreeze once instead (`fit_two_phase(unfreeze=...)`).

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
        # First, before any other check: no schedule, optimizer or model can make it work on
        # another backend (see `_NEEDS_TENSORFLOW`), and a per-layer learning-rate
        # optimizer would otherwise fail later, inside Keras, with its own error.
        backend.require_tensorflow(*_NEEDS_TENSORFLOW)
        self.schedule = checked_unfreeze_schedule(schedule)
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


# Keras' JAX trainer pairs the optimizer's slots 1:1 with the trainable variables it reads at
# the start of `fit`; a set that grows between epochs needs TensorFlow's trainer. Checked in
# `GradualUnfreezing.__init__`: with a per-layer learning-rate optimizer, Keras' JAX trainer
# fails before any callback's `on_train_begin` runs.
_NEEDS_TENSORFLOW = (
    "GradualUnfreezing (freeze_strategy='gradual')",
    "set KERAS_BACKEND=tensorflow, or unfreeze once (fit_two_phase's unfreeze=, "
    "freeze_strategy='top_n_unfrozen')",
)


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
    scope = distribute.model_scope(model)
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
