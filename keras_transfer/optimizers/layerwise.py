"""Per-variable learning-rate multipliers for any Keras optimizer (discriminative learning rates).

ULMFiT's discriminative fine-tuning gives each block its own learning rate,
`lr_l = lr * decay ** (L - l)`, so that the lowest, most general layers move least. This
module turns any `keras.optimizers` class into one with a constant learning-rate multiplier
per variable, keeping ONE optimizer, one set of slots and one iteration counter.

How: `layerwise_optimizer_class(keras.optimizers.AdamW)` is a subclass of `AdamW` whose
`update_step(gradient, variable, learning_rate)` receives `learning_rate * multiplier`.
Multiplying the learning rate (not the gradient: Adam is invariant to gradient scale) is
exactly "this variable trained with `lr * multiplier`". Keras applies decoupled weight decay
with the optimizer's own learning rate in `_apply_weight_decay`; the subclass applies it with
each variable's scaled rate instead. Everything else (clipping, gradient accumulation, EMA,
loss scaling, `tf.distribute`, XLA) is the parent's code, unchanged.

Multipliers are resolved to one Python float per variable when the optimizer is built, so
the traced training step holds them as constants: there is no per-step Python work, which
is also what makes the same code usable on TPU. A multiplier of 0 skips the variable's
update, its weight decay, and blends its EMA as an exact copy: the variable stays
bit-identical.

Rules for `multipliers`:
- a mapping `regex -> multiplier`, matched with `re.search` against `variable.path`
  (e.g. `"block_16_project/kernel"`, `"head/predictions/bias"`). **The first pattern that
  matches wins** (mapping order), like a list of routing rules. Variables no pattern matches
  get `default_multiplier`. Every pattern must match at least one of the variables the
  optimizer is built with (the model's trainable variables): a pattern matching nothing is
  almost always a typo, and the error lists real paths.
- or a function `variable -> multiplier` (`None` means `default_multiplier`).
Multipliers must be finite and >= 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.utils import backend

__all__ = [
    "LayerwiseLearningRate",
    "OptimizerFactory",
    "check_learning_rate",
    "layer_decay_multipliers",
    "layerwise_optimizer_class",
    "optimizer_factory",
    "with_layerwise_lr",
]

Multipliers = Mapping[str, float] | Sequence[tuple[str, float]] | Callable[[Any], float | None]

_PACKAGE = "keras_transfer"


def _check_multiplier(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"The learning-rate multiplier of {what} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"The learning-rate multiplier of {what} must be finite and >= 0 (0 freezes the "
            f"variable), got {value}."
        )
    return value


def _normalize_multipliers(multipliers: Multipliers | None):
    """A tuple of `(pattern, multiplier)` pairs, or a callable."""
    if multipliers is None:
        return ()
    if callable(multipliers) and not isinstance(multipliers, Mapping):
        return multipliers
    if isinstance(multipliers, str):
        raise TypeError("`multipliers` must be a mapping regex -> multiplier or a function.")
    items = multipliers.items() if isinstance(multipliers, Mapping) else multipliers
    pairs = []
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(
                "`multipliers` must be a mapping regex -> multiplier, a sequence of "
                f"(regex, multiplier) pairs, or a function of the variable; got item {item!r}."
            )
        pattern, value = item
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"Invalid multiplier pattern {pattern!r}: {error}.") from None
        pairs.append((pattern, _check_multiplier(value, f"pattern {pattern!r}")))
    return tuple(pairs)


class LayerwiseLearningRate(_keras_compat.OptimizerHooks):
    """Mixin giving a Keras optimizer one learning-rate multiplier per variable.

    Do not subclass it directly: `layerwise_optimizer_class(keras.optimizers.AdamW)` (or
    `with_layerwise_lr`) makes the optimizer class `LayerwiseAdamW(LayerwiseLearningRate,
    AdamW)`. `isinstance(optimizer, LayerwiseLearningRate)` identifies all of them.

    Args:
        *args: the parent optimizer's arguments (`learning_rate`, `weight_decay`,
            `clipnorm`, `use_ema`, `gradient_accumulation_steps`, ...).
        multipliers: a mapping `regex on variable.path -> multiplier` (first match wins),
            or a function `variable -> multiplier or None`. See the module docstring.
        default_multiplier: multiplier of variables no pattern matches (or for which the
            function returns `None`).
        **kwargs: the parent optimizer's keyword arguments.

    Example:
    ```python
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW,
        {"^block_(1[0-6])_": 0.5, "^(Conv1|bn_Conv1|expanded_conv|block_)": 0.1},
        learning_rate=1e-4,
        weight_decay=0.05,
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(
        self,
        *args: Any,
        multipliers: Multipliers | None = None,
        default_multiplier: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.multipliers = _normalize_multipliers(multipliers)
        self.default_multiplier = _check_multiplier(default_multiplier, "`default_multiplier`")
        self._lr_multipliers = ()

    # -- resolving --------------------------------------------------------------------

    def resolve_multipliers(self, variables: Sequence[Any], strict: bool = True) -> list[float]:
        """One multiplier per variable, by the rules of the module docstring.

        Args:
            variables: Keras variables (with `.path`).
            strict: raise when a pattern matches none of `variables`.
        """
        variables = list(variables)
        if callable(self.multipliers):
            result = []
            for variable in variables:
                value = self.multipliers(variable)
                if value is None:
                    value = self.default_multiplier
                result.append(_check_multiplier(value, f"variable {variable.path!r}"))
            return result
        compiled = [(re.compile(pattern), value) for pattern, value in self.multipliers]
        used = [False] * len(compiled)
        result = []
        for variable in variables:
            value = self.default_multiplier
            for i, (pattern, multiplier) in enumerate(compiled):
                if pattern.search(variable.path):
                    value = multiplier
                    used[i] = True
                    break
            result.append(value)
        unused = [
            pattern for (pattern, _), hit in zip(self.multipliers, used, strict=True) if not hit
        ]
        if strict and unused:
            paths = [variable.path for variable in variables]
            shown = paths if len(paths) <= 12 else paths[:6] + ["..."] + paths[-6:]
            raise ValueError(
                f"Learning-rate multiplier pattern(s) {unused} match none of the "
                f"{len(paths)} trainable variables (patterns are searched in "
                f"`variable.path`; frozen variables are not given to the optimizer). "
                f"Variable paths are: {shown}. Fix or drop the pattern(s)."
            )
        return result

    def multiplier_of(self, variable: keras.Variable) -> float:
        """The learning-rate multiplier of `variable`, one the optimizer was built on."""
        return self._lr_multipliers[_keras_compat.variable_index(self, variable)]

    def build(self, variables):
        if self.built:
            return
        multipliers = self.resolve_multipliers(variables)  # fail before creating slots
        super().build(variables)
        self._lr_multipliers = tuple(multipliers)

    # -- the update -------------------------------------------------------------------

    def update_step(self, gradient, variable, learning_rate):
        # Runs once per variable while the step is traced: the multiplier is a constant.
        multiplier = self.multiplier_of(variable)
        if multiplier == 0.0:
            return None  # leave the variable and its slots untouched
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def apply_weight_decay(self, variables):
        # Keras decays every variable with the optimizer's learning rate; decoupled decay
        # (AdamW, Loshchilov & Hutter) is `lr * wd * w`, so it must use the scaled rate.
        if self.weight_decay is None:
            return
        if all(self.multiplier_of(variable) == 1.0 for variable in variables):
            self.parent_apply_weight_decay(variables)
            return

        def decay(value, multiplier):
            if _keras_compat.uses_weight_decay(self, value):
                learning_rate = self.learning_rate
                if multiplier != 1.0:
                    learning_rate = learning_rate * multiplier
                learning_rate = keras.ops.cast(learning_rate, value.dtype)
                weight_decay = keras.ops.cast(self.weight_decay, value.dtype)
                value.assign_sub(value * weight_decay * learning_rate)

        scaled = [(v, m) for v in variables if (m := self.multiplier_of(v)) != 0.0]
        if not backend.is_tensorflow():
            # No tf.distribute replicas to merge: Keras' own decay assigns directly here.
            for variable, multiplier in scaled:
                decay(variable, multiplier)
            return

        def distributed_apply(distribution, scaled):
            for variable, multiplier in scaled:
                if isinstance(variable, keras.Variable):
                    variable = variable.value
                distribution.extended.update(
                    variable, lambda value, m=multiplier: decay(value, m), group=False
                )

        _keras_compat.merge_call(self, distributed_apply, scaled)

    def update_moving_averages(self, trainable_variables):
        # `m * w + (1 - m) * w` can differ from `w` in the last bit; the average of a
        # variable that never changes is the variable itself, copied exactly.
        if 0.0 not in self._lr_multipliers:
            self.parent_update_moving_averages(trainable_variables)
            return
        for variable, average in zip(
            trainable_variables, _keras_compat.moving_average_variables(self), strict=True
        ):
            if average is None:
                continue
            if self.multiplier_of(variable) == 0.0:
                average.assign(variable)
                continue
            not_first_step = keras.ops.not_equal(self.iterations, 0)
            momentum = keras.ops.multiply(
                keras.ops.cast(not_first_step, variable.dtype), self.ema_momentum
            )
            average.assign(
                keras.ops.add(
                    keras.ops.multiply(momentum, average),
                    keras.ops.multiply(keras.ops.subtract(1, momentum), variable),
                )
            )

    # -- reporting and serialisation ----------------------------------------------------

    def multiplier_summary(self, model: keras.Model) -> str:
        """A table of the multiplier each block (and the head) gets, to check before training.

        Resolves the multipliers against `model.trainable_variables` exactly as `build`
        will (so a bad pattern raises here). Backbone blocks come from
        `keras_transfer.get_blocks`; other variables are grouped by their first path
        component (e.g. `head`).
        """
        variables = list(model.trainable_variables)
        multipliers = self.resolve_multipliers(variables)
        by_id = {id(v): m for v, m in zip(variables, multipliers, strict=True)}
        rows: list[tuple[str, str, int, int]] = []
        seen: set[int] = set()
        try:
            blocks = backbones_lib.get_blocks(model)
        except ValueError:
            blocks = []
        for block in blocks:
            block_variables = [v for v in block.variables if id(v) in by_id]
            seen.update(id(v) for v in block.variables)
            if not block_variables:
                rows.append((block.name, "frozen", 0, 0))
                continue
            rows.append(_summary_row(block.name, block_variables, by_id))
        others: dict[str, list] = {}
        for variable in variables:
            if id(variable) not in seen:
                others.setdefault(variable.path.split("/", 1)[0], []).append(variable)
        for name, group in others.items():
            rows.append(_summary_row(name, group, by_id))
        learning_rate = _keras_compat.base_learning_rate(self)
        if isinstance(learning_rate, keras.Variable):
            base = f"{float(learning_rate.numpy()):.3g}"
        else:
            base = type(learning_rate).__name__
        header = ("group", "multiplier", "variables", "parameters")
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
        lines = [
            f"{type(self).__name__} (base learning rate {base}, default multiplier "
            f"{self.default_multiplier:g})",
            "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)),
        ]
        lines += [
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        ]
        return "\n".join(lines)

    def get_config(self):
        config = super().get_config()
        if callable(self.multipliers):
            multipliers = keras.saving.serialize_keras_object(self.multipliers)
        else:
            multipliers = [[pattern, value] for pattern, value in self.multipliers]
        config.update({"multipliers": multipliers, "default_multiplier": self.default_multiplier})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        multipliers = config.get("multipliers")
        if isinstance(multipliers, dict):
            config["multipliers"] = keras.saving.deserialize_keras_object(
                multipliers, custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)


def _summary_row(name: str, variables: Sequence[Any], by_id: dict[int, float]):
    values = sorted({by_id[id(v)] for v in variables})
    shown = f"{values[0]:.4g}" if len(values) == 1 else f"{values[0]:.4g}..{values[-1]:.4g}"
    parameters = sum(math.prod(v.shape) for v in variables)
    return (name, shown, len(variables), parameters)


# ---------------------------------------------------------------------------------------
# Classes and constructors
# ---------------------------------------------------------------------------------------

_CLASSES: dict[type, type] = {}
_BUILTIN_NAMES = (
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lamb",
    "Lion",
    "Nadam",
    "RMSprop",
    "SGD",
)


def layerwise_optimizer_class(optimizer_class: type) -> type:
    """The subclass of `optimizer_class` with per-variable learning-rate multipliers.

    Classes are made once and registered for `.keras` saving as
    `keras_transfer>Layerwise<Name>`; the built-in Keras optimizers' are made when this
    module is imported. For your own optimizer class, call this (or `with_layerwise_lr`)
    in the process that loads a saved model, as you register the class itself.

    Args:
        optimizer_class: a `keras.optimizers.Optimizer` subclass whose `update_step`
            takes `(gradient, variable, learning_rate)`.

    Returns:
        A class taking the parent's arguments plus `multipliers` and `default_multiplier`.
    """
    if not (
        isinstance(optimizer_class, type)
        and issubclass(optimizer_class, keras.optimizers.Optimizer)
    ):
        raise TypeError(f"Expected a keras.optimizers.Optimizer subclass, got {optimizer_class!r}.")
    if optimizer_class in _CLASSES:
        return _CLASSES[optimizer_class]
    if issubclass(optimizer_class, LayerwiseLearningRate):
        return optimizer_class
    if issubclass(optimizer_class, _keras_compat.wrapper_optimizer_classes()):
        raise TypeError(
            f"{optimizer_class.__name__} wraps other optimizers; give per-variable learning "
            "rates to the optimizer inside it (Keras wraps it in a LossScaleOptimizer itself "
            "under mixed precision)."
        )
    if not _keras_compat.has_standard_weight_decay(optimizer_class):
        raise TypeError(
            f"{optimizer_class.__name__} has its own weight decay (`_apply_weight_decay`), "
            "which per-variable learning rates cannot scale. Use an optimizer with Keras's "
            "standard decoupled weight decay (Adam, AdamW, SGD, RMSprop, Lion, ...)."
        )
    name = f"Layerwise{optimizer_class.__name__}"
    registered = keras.saving.get_registered_name(optimizer_class)
    key = (
        name
        if registered == optimizer_class.__name__
        else f"Layerwise_{registered.replace('>', '_')}"
    )
    cls = type(
        name,
        (LayerwiseLearningRate, optimizer_class),
        {
            "__module__": __name__,
            "__doc__": (
                f"`keras.optimizers.{optimizer_class.__name__}` with per-variable learning-rate "
                "multipliers: see `LayerwiseLearningRate`."
            ),
        },
    )
    cls = keras.saving.register_keras_serializable(package=_PACKAGE, name=key)(cls)
    _CLASSES[optimizer_class] = cls
    return cls


for _name in _BUILTIN_NAMES:
    globals()[f"Layerwise{_name}"] = layerwise_optimizer_class(getattr(keras.optimizers, _name))


def with_layerwise_lr(
    optimizer: str | type | keras.optimizers.Optimizer,
    multipliers: Multipliers | None,
    *,
    default_multiplier: float = 1.0,
    **kwargs: Any,
) -> keras.optimizers.Optimizer:
    """An optimizer like `optimizer` with per-variable learning-rate multipliers.

    Args:
        optimizer: an optimizer class (`keras.optimizers.AdamW`), a name (`"adamw"`), or an
            unbuilt optimizer instance whose configuration is copied.
        multipliers: a mapping `regex on variable.path -> multiplier` (first match wins),
            a function `variable -> multiplier or None`, e.g. from
            `layer_decay_multipliers(model, 0.5)`.
        default_multiplier: the multiplier of variables matched by no pattern.
        **kwargs: the optimizer's own arguments (`learning_rate`, `weight_decay`, ...);
            with an instance they override its configuration.

    Returns:
        An instance of `layerwise_optimizer_class(<optimizer class>)`: pass it to
        `model.compile(optimizer=...)`.

    Example:
    ```python
    unfreeze(model, top_blocks=4)
    optimizer = with_layerwise_lr(
        keras.optimizers.AdamW, layer_decay_multipliers(model, 0.5), learning_rate=1e-4
    )
    print(optimizer.multiplier_summary(model))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```
    """
    extra = {"multipliers": multipliers, "default_multiplier": default_multiplier}
    if isinstance(optimizer, str):
        optimizer = type(keras.optimizers.get(optimizer))
    if isinstance(optimizer, type):
        return layerwise_optimizer_class(optimizer)(**kwargs, **extra)
    if isinstance(optimizer, keras.optimizers.Optimizer):
        if optimizer.built:
            raise ValueError(
                "with_layerwise_lr copies an optimizer's configuration, not its state: pass an "
                "optimizer that has not been used yet, or its class."
            )
        cls = layerwise_optimizer_class(type(optimizer))
        config = {**optimizer.get_config(), **kwargs, **extra}
        config.pop("name", None)
        return cls.from_config(config)
    raise TypeError(f"Cannot make a layer-wise optimizer from {optimizer!r}.")


def layer_decay_multipliers(
    model: keras.Model | backbones_lib.Backbone, decay: float
) -> dict[str, float]:
    """Layer-wise learning-rate decay over a backbone's blocks (ULMFiT, BEiT).

    Block `i` of `L` (input side first) gets `decay ** (L - i)`: the top block `decay`, the
    stem `decay ** L`. The head and any variable outside the backbone's blocks match no
    pattern and get the optimizer's `default_multiplier` (1.0).

    Only blocks with trainable variables get a pattern, because the optimizer only sees
    trainable variables: call this after `unfreeze` (you need a new optimizer after changing
    what is trainable anyway, as Keras collects trainable variables at `compile`).

    Args:
        model: a classifier or a model nesting a backbone (anything `get_blocks` accepts).
        decay: the per-block factor, in (0, 1].

    Returns:
        `{regex: multiplier}`, one pattern per trainable block, for `with_layerwise_lr`.
    """
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
        raise ValueError(f"decay must be a number in (0, 1], got {decay!r}.")
    blocks = backbones_lib.get_blocks(model)
    trainable = model.model if isinstance(model, backbones_lib.Backbone) else model
    trainable_ids = {id(v) for v in trainable.trainable_variables}
    result: dict[str, float] = {}
    for i, block in enumerate(blocks):
        layer_paths = sorted(
            {v.path.rsplit("/", 1)[0] for v in block.variables if id(v) in trainable_ids}
        )
        if layer_paths:
            pattern = "^(?:" + "|".join(re.escape(p) for p in layer_paths) + ")/[^/]+$"
            result[pattern] = float(decay) ** (len(blocks) - i)
    if not result:
        raise ValueError(
            "No block of the backbone has trainable variables, so layer-wise decay has "
            "nothing to scale. Unfreeze blocks first (keras_transfer.unfreeze(model, ...))."
        )
    return result


OptimizerFactory = Callable[[float], keras.optimizers.Optimizer]


def optimizer_factory(optimizer: str | type | OptimizerFactory = "adam") -> OptimizerFactory:
    """A function `learning_rate -> new optimizer` from a name, a class or a factory.

    Each phase gets a new optimizer: phase 2 must not inherit phase 1's moment estimates,
    which were accumulated for the head alone.
    """
    if isinstance(optimizer, str):
        name = optimizer

        def make(learning_rate):
            return keras.optimizers.get(
                {"class_name": name, "config": {"learning_rate": learning_rate}}
            )

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


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """Raises a `ValueError` naming `name` unless `value` is a positive finite number.

    A `keras.optimizers.schedules.LearningRateSchedule` (or a callable) passes: it is the
    optimizer's to check. A zero, negative, NaN or infinite rate would otherwise be taken
    silently and train nothing, train backwards, or diverge at the first step.
    """
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r}. Typical rates are 1e-3 "
            "for training a new head and 1e-5 to 1e-4 for fine-tuning a pretrained backbone."
        )
