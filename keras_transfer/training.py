"""Two-phase transfer learning in plain `model.fit`: train the head, then fine-tune."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_transfer import freezing
from keras_transfer import optimizers

OptimizerFactory = Callable[[float], keras.optimizers.Optimizer]

PHASE_HEAD = "feature_extraction"
PHASE_FINE_TUNE = "fine_tune"


def optimizer_factory(optimizer: str | type | OptimizerFactory = "adam") -> OptimizerFactory:
    """A function `learning_rate -> new optimizer` from a name, a class or a factory.

    Each phase gets a new optimizer: phase 2 must not inherit phase 1's moment estimates,
    which were accumulated for the head alone.
    """
    if isinstance(optimizer, str):
        name = optimizer

        def make(learning_rate):
            return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})

        make(1e-3)  # fail now on an unknown name, not after phase 1
        return make
    if isinstance(optimizer, type) and issubclass(optimizer, keras.optimizers.Optimizer):
        return lambda learning_rate: optimizer(learning_rate=learning_rate)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "Pass an optimizer class, name or factory (learning_rate -> optimizer), not an "
            "optimizer instance: each phase needs its own optimizer and learning rate."
        )
    if callable(optimizer):
        return optimizer
    raise TypeError(f"Cannot make an optimizer from {optimizer!r}.")


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
    optimizer: str | type | OptimizerFactory = "adam",
    fine_tune_optimizer: str | type | OptimizerFactory | None = None,
    lr_decay: float | None = None,
    loss: Any = "auto",
    metrics: Any = "auto",
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    compile_kwargs: dict[str, Any] | None = None,
    **fit_kwargs: Any,
) -> TwoPhaseHistory:
    """Trains the head with the backbone frozen, then fine-tunes the top blocks.

    Phase 1 freezes the backbone and trains the head at `head_lr`. Phase 2 unfreezes the
    requested blocks (BatchNormalization stays in inference mode unless `train_bn`),
    recompiles with a new optimizer at `fine_tune_lr`, and continues the epoch count with
    `initial_epoch`, so callbacks and TensorBoard see one timeline.

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
            per-variable multipliers (`keras_transfer.optimizers.with_layerwise_lr`), block
            `i` of the backbone's `L` blocks `lr_decay ** (L - i)`, the head 1.0. Frozen
            blocks get no gradients. `None` (default): one learning rate for all.
        loss, metrics: passed to `compile`; `"auto"` uses the head's defaults.
        callbacks: Keras callbacks, used in both phases.
        compile_kwargs: extra `compile` arguments (`jit_compile`, `steps_per_execution`...).
        **fit_kwargs: extra `fit` arguments (`class_weight`, `verbose`, ...).

    Returns:
        A `TwoPhaseHistory` with both phases on one epoch axis.
    """
    for key in ("epochs", "initial_epoch"):
        if key in fit_kwargs:
            raise TypeError(f"fit_two_phase sets `{key}` itself; use head_epochs / fine_tune_epochs.")
    if head_epochs < 0 or fine_tune_epochs < 0:
        raise ValueError("head_epochs and fine_tune_epochs must be >= 0.")
    if fine_tune_lr is None:
        fine_tune_lr = head_lr / 10.0
    if lr_decay is not None and not (
        isinstance(lr_decay, int | float) and not isinstance(lr_decay, bool) and 0 < lr_decay <= 1
    ):
        raise ValueError(f"lr_decay must be a number in (0, 1] or None, got {lr_decay!r}.")
    make_head_optimizer = optimizer_factory(optimizer)
    make_fine_tune_optimizer = optimizer_factory(fine_tune_optimizer or optimizer)
    _resolve_loss_and_metrics(model, loss, metrics)  # fail before training, not after
    compile_kwargs = dict(compile_kwargs or {})
    callbacks = list(callbacks or [])
    unfreeze_kwargs = unfreeze_request(unfreeze)
    # Validate the fine-tuning request before spending time on phase 1.
    freezing.select_blocks(freezing._backbone_and_blocks(model)[1], **unfreeze_kwargs)

    result = TwoPhaseHistory()
    if head_epochs:
        freezing.freeze(model, train_bn=train_bn)
        model.compile(
            optimizer=make_head_optimizer(head_lr),
            **_resolve_loss_and_metrics(model, loss, metrics),
            **compile_kwargs,
        )
        start = time.perf_counter()
        history = model.fit(
            train_data,
            validation_data=validation_data,
            epochs=head_epochs,
            callbacks=callbacks,
            **fit_kwargs,
        )
        result.add(PHASE_HEAD, history, time.perf_counter() - start)
    if fine_tune_epochs:
        result.unfrozen_blocks = freezing.unfreeze(model, train_bn=train_bn, **unfreeze_kwargs)
        fine_tune = make_fine_tune_optimizer(fine_tune_lr)
        if lr_decay is not None:
            multipliers = optimizers.layer_decay_multipliers(model, lr_decay)
            fine_tune = optimizers.with_layerwise_lr(fine_tune, multipliers)
        model.compile(
            optimizer=fine_tune,
            **_resolve_loss_and_metrics(model, loss, metrics),
            **compile_kwargs,
        )
        start = time.perf_counter()
        history = model.fit(
            train_data,
            validation_data=validation_data,
            initial_epoch=head_epochs,
            epochs=head_epochs + fine_tune_epochs,
            callbacks=callbacks,
            **fit_kwargs,
        )
        result.add(PHASE_FINE_TUNE, history, time.perf_counter() - start)
    return result


def unfreeze_request(unfreeze: int | float | str) -> dict[str, Any]:
    """`unfreeze(...)` keyword arguments from one value: a block count, a fraction, `"all"`
    or a block name to unfreeze from."""
    if unfreeze == "all":
        return {"top_blocks": "all"}
    if isinstance(unfreeze, bool):
        raise ValueError(f"unfreeze must be a count, fraction, block name or 'all', got {unfreeze!r}.")
    if isinstance(unfreeze, int):
        return {"top_blocks": unfreeze}
    if isinstance(unfreeze, float):
        return {"fraction": unfreeze}
    if isinstance(unfreeze, str):
        if unfreeze.isdigit():
            return {"top_blocks": int(unfreeze)}
        return {"from_block": unfreeze}
    raise ValueError(f"unfreeze must be a count, fraction, block name or 'all', got {unfreeze!r}.")


def _resolve_loss_and_metrics(model: keras.Model, loss: Any, metrics: Any) -> dict[str, Any]:
    # New metric objects for each compile: a phase must not start from the other's state.
    head = getattr(model, "head", None)
    if loss == "auto":
        if head is None:
            raise ValueError("Pass `loss=`: the model has no keras_transfer head to infer it from.")
        loss = head.default_loss()
    if metrics == "auto":
        metrics = head.default_metrics() if head is not None else []
    return {"loss": loss, "metrics": metrics}
