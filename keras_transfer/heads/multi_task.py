"""Several named heads on one backbone: hard parameter sharing (Caruana 1997, "Multitask
Learning", Machine Learning 28).

A `MultiTaskHead` holds one `ClassificationHead` per task and outputs a dict by head name;
`check_heads` and `check_loss_weights` validate its arguments (and `create_classifier`'s).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer.heads.classification import HEAD_ARGS
from keras_transfer.heads.classification import ClassificationHead

__all__ = [
    "HEAD_NAME",
    "MultiTaskHead",
    "RESERVED_HEAD_NAMES",
    "check_heads",
    "check_loss_weights",
]

# Head names become output names and log keys (`<name>_loss`, `val_<name>_accuracy`).
HEAD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_HEAD_NAMES = ("loss",)


def check_heads(heads: Any) -> dict[str, dict[str, Any]]:
    """The `heads` argument of `create_classifier` / `MultiTaskHead`, checked and copied:
    name -> `ClassificationHead` options including `num_classes`."""
    if not isinstance(heads, Mapping):
        raise TypeError(
            "heads must be a dict of head name -> head options, e.g. "
            '{"species": {"num_classes": 5}, "colour": {"num_classes": 3, "task": '
            f'"multilabel"}}}}, got {type(heads).__name__}.'
        )
    if not heads:
        raise ValueError(
            "heads is empty: give at least one head, e.g. heads={'species': {'num_classes': 5}}, "
            "or pass num_classes for a single head."
        )
    checked = {}
    seen = {}
    for name, options in heads.items():
        if not isinstance(name, str) or not HEAD_NAME.match(name):
            raise ValueError(
                f"Head name {name!r} is not valid: use letters, digits and underscores, starting "
                "with a letter (the name becomes the output's name and its log keys)."
            )
        if name.lower() in RESERVED_HEAD_NAMES or name.lower().startswith("val_"):
            raise ValueError(
                f"Head name {name!r} clashes with Keras' log keys ('loss' is the total loss, "
                "'val_' prefixes validation metrics): rename the head."
            )
        if name.lower() in seen:
            raise ValueError(
                f"Head names {seen[name.lower()]!r} and {name!r} clash: they differ only in case, "
                "and their outputs, log keys and saved files would be confused. Rename one."
            )
        seen[name.lower()] = name
        if not isinstance(options, Mapping):
            raise TypeError(
                f"Head {name!r}: options must be a dict such as {{'num_classes': 3}}, got "
                f"{type(options).__name__}."
            )
        options = dict(options)
        unknown = sorted(set(options) - {"num_classes", *HEAD_ARGS})
        if unknown:
            raise ValueError(
                f"Head {name!r}: unknown option(s) {unknown}. Valid options: "
                f"{['num_classes', *HEAD_ARGS]}."
            )
        if "num_classes" not in options:
            raise ValueError(f"Head {name!r} needs 'num_classes' in its options.")
        checked[name] = options
    return checked


def check_loss_weights(loss_weights: Any, names: Sequence[str]) -> dict[str, float] | None:
    """`None`, or a dict head name -> non-negative weight covering only known heads (a head
    left out weighs 1)."""
    if loss_weights is None:
        return None
    if not isinstance(loss_weights, Mapping):
        raise TypeError(
            f"loss_weights must be a dict of head name -> weight, got {type(loss_weights).__name__}."
        )
    unknown = sorted(set(loss_weights) - set(names))
    if unknown:
        raise ValueError(
            f"loss_weights for unknown head(s) {unknown}; the heads are {list(names)}."
        )
    weights = {}
    for name in names:
        value = loss_weights.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"loss_weights[{name!r}] must be a number >= 0, got {value!r}.")
        weights[name] = float(value)
    return weights


@keras.saving.register_keras_serializable(package="keras_transfer")
class MultiTaskHead(keras.layers.Layer):
    """Several named `ClassificationHead`s on the same features; outputs a dict by name.

    Each head has its own pooling, dense stack, task and output activation, so one backbone
    can predict, say, a species (softmax), colours (independent sigmoids) and a size
    (regression) at once. The layer supplies per-output defaults to `compile()`: a loss and
    metric per head (`default_loss()`, `default_metrics()`), and the optional per-head
    `loss_weights` (the total loss is their weighted sum).

    Args:
        heads: head name -> `ClassificationHead` options with `num_classes`, e.g.
            `{"species": {"num_classes": 5}, "colour": {"num_classes": 3, "task":
            "multilabel"}}`. Names are letters, digits and underscores; names that differ
            only in case, `"loss"` and `"val_..."` clash with Keras' log keys and are errors.
        loss_weights: optional head name -> weight of its loss (a head left out weighs 1).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    head = MultiTaskHead({"species": {"num_classes": 5}, "colour": {"num_classes": 3, "task": "multilabel"}})
    outputs = head(np.zeros((2, 7, 7, 32)))
    outputs["species"].shape, outputs["colour"].shape  # -> (2, 5), (2, 3)
    ```
    """

    def __init__(
        self,
        heads: Mapping[str, Mapping[str, Any]],
        loss_weights: Mapping[str, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        options = check_heads(heads)
        self.loss_weights = check_loss_weights(loss_weights, list(options))
        self.head_names = list(options)
        task_heads = []
        for name, head_options in options.items():
            head_options = dict(head_options)
            num_classes = head_options.pop("num_classes")
            try:
                task_heads.append(ClassificationHead(num_classes, name=name, **head_options))
            except (TypeError, ValueError) as error:
                raise type(error)(f"Head {name!r}: {error}") from error
        # A list, not a dict: Keras tracks the sublayers of either, but a list keeps the
        # order of the user's dict in the weights file and the variable paths.
        self.task_heads = task_heads

    @property
    def heads(self) -> dict[str, ClassificationHead]:
        """Head name -> `ClassificationHead`, in the order given."""
        return dict(zip(self.head_names, self.task_heads, strict=True))

    @property
    def task(self) -> str:
        return "multitask"

    @property
    def num_classes(self) -> dict[str, int]:
        return {name: head.num_classes for name, head in self.heads.items()}

    @property
    def pooling(self) -> str | None:
        """The heads' pooling when they share one (cached features are then pooled once);
        `"per_head"` when they differ (feature maps are cached and each head pools)."""
        poolings = {head.pooling for head in self.task_heads}
        return poolings.pop() if len(poolings) == 1 else "per_head"

    def pool(self, x):
        if self.pooling == "per_head":
            return x
        return self.task_heads[0].pool(x)

    def build(self, input_shape):
        for head in self.task_heads:
            head.build(input_shape)

    def call(self, inputs, training=None):
        return {name: head(inputs, training=training) for name, head in self.heads.items()}

    def compute_output_spec(self, inputs, training=None):
        return {
            name: keras.KerasTensor((inputs.shape[0], head.output_units), dtype="float32")
            for name, head in self.heads.items()
        }

    def default_loss(self) -> dict[str, keras.losses.Loss]:
        """Each head's loss, by head name."""
        return {name: head.default_loss() for name, head in self.heads.items()}

    def default_metrics(self) -> dict[str, list[keras.metrics.Metric]]:
        """Each head's metrics, by head name (logged as `<name>_accuracy`, ...)."""
        return {name: head.default_metrics() for name, head in self.heads.items()}

    def get_config(self):
        config = super().get_config()
        heads_config = {}
        for name, head in self.heads.items():
            head_config = head.get_config()
            heads_config[name] = {
                key: head_config[key] for key in ("num_classes", *HEAD_ARGS) if key in head_config
            }
        config.update({"heads": heads_config, "loss_weights": self.loss_weights})
        return config
