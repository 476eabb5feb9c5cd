"""The classification (or regression) head: pooling, an optional dense stack and the output
layer, with the loss and metrics that match its task.

A classifier joins a backbone to one `ClassificationHead`, or to several named ones in a
`MultiTaskHead` (`keras_transfer.heads.multi_task`); `keras_transfer.heads.classifier` builds
the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.heads.losses import BinaryLabelCrossentropy

__all__ = [
    "ClassificationHead",
    "HEAD_ARGS",
    "POOLINGS",
    "TASKS",
    "make_head",
    "resolve_loss_and_metrics",
]

TASKS = ("multiclass", "binary", "multilabel", "regression")
POOLINGS = ("avg", "max", "avgmax", "flatten", None)


@keras.saving.register_keras_serializable(package="keras_transfer")
class ClassificationHead(keras.layers.Layer):
    """Pooling, an optional dense stack, and the output layer, as one layer.

    The defaults are the Keras transfer-learning guide's head: global average pooling,
    dropout 0.2, and one dense output layer. The output layer computes in float32 under any
    mixed-precision policy so that softmax and the loss stay numerically stable.

    Args:
        num_classes: number of output units (classes, labels or regression targets). For
            `task="binary"` pass 1 (or 2: one sigmoid unit is used either way).
        task: `"multiclass"` (softmax), `"binary"` (one sigmoid unit), `"multilabel"`
            (independent sigmoids) or `"regression"` (linear).
        pooling: `"avg"`, `"max"`, `"avgmax"` (both, concatenated), `"flatten"`, or `None`
            for inputs that are already vectors.
        hidden_units: sizes of dense layers between pooling and the output layer.
        activation: activation of the hidden dense layers.
        dropout: dropout rate before each dense layer (hidden and output); 0 disables it.
        batch_norm: add BatchNormalization after each hidden dense layer.
        logits: output raw logits instead of probabilities (pair with a `from_logits=True` loss).
        kernel_regularizer: regularizer of every dense kernel of the head (hidden and
            output), e.g. `"l2"` or `keras.regularizers.L2(1e-4)`; saved with the model.
        dense_dtypes: `{dense layer name: dtype policy}` of dense layers Keras' `quantize`
            changed (`"int8_from_float32"`); `get_config` records it, so that a quantized
            head reloads with quantized layers.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    head = ClassificationHead(num_classes=5, hidden_units=(128,), dropout=0.3)
    head(np.zeros((2, 7, 7, 32))).shape  # -> (2, 5)
    ```
    """

    def __init__(
        self,
        num_classes: int,
        task: str = "multiclass",
        pooling: str | None = "avg",
        hidden_units: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.2,
        batch_norm: bool = False,
        logits: bool = False,
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        dense_dtypes: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # The dense layers are built here from the head's own settings, so Keras' saved
        # sublayer policies are not read back: a quantized one is named in the config.
        dtypes = {name: keras.dtype_policies.get(p) for name, p in (dense_dtypes or {}).items()}
        _check_head_args(num_classes, task, pooling, hidden_units, dropout)
        self.num_classes = int(num_classes)
        self.task = task
        self.pooling = pooling
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.logits = bool(logits)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

        if self.hidden_units:
            # The hidden layers are a list of lists; Keras saves nested lists' weights from 3.15
            # on, and before it reloads them silently re-initialised.
            _keras_compat.require_keras("3.15", "A head with hidden_units (saving its weights)")
        self.hidden_layers = []
        for i, units in enumerate(self.hidden_units):
            block = [
                keras.layers.Dense(
                    units,
                    kernel_regularizer=self.kernel_regularizer,
                    name=f"hidden_{i}_dense",
                    dtype=dtypes.get(f"hidden_{i}_dense", self.dtype_policy),
                )
            ]
            if self.batch_norm:
                block.append(
                    keras.layers.BatchNormalization(name=f"hidden_{i}_bn", dtype=self.dtype_policy)
                )
            block.append(
                keras.layers.Activation(activation, name=f"hidden_{i}_act", dtype=self.dtype_policy)
            )
            self.hidden_layers.append(block)
        self.dropout_layers = [
            keras.layers.Dropout(self.dropout, name=f"dropout_{i}", dtype=self.dtype_policy)
            for i in range(len(self.hidden_units) + 1)
        ]
        # The output activation is applied in `call`, so that `compute_logits` can give the
        # pre-activation outputs (domain alignment on logits) from the same variables.
        self.output_dense = keras.layers.Dense(
            self.output_units,
            activation=None,
            kernel_regularizer=self.kernel_regularizer,
            dtype=dtypes.get("predictions", "float32"),
            name="predictions",
        )

    @property
    def output_units(self) -> int:
        return 1 if self.task == "binary" else self.num_classes

    @property
    def output_activation(self) -> str:
        return {"multiclass": "softmax", "regression": "linear"}.get(self.task, "sigmoid")

    def build(self, input_shape):
        shape = self._pooled_shape(input_shape)
        for block in self.hidden_layers:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        self.output_dense.build(shape)

    def _pooled_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) == 2:
            # A vector has nothing to pool: accepting it lets a head configured for
            # feature maps also train on cached pooled features.
            return input_shape
        if len(input_shape) != 4:
            raise ValueError(
                f"ClassificationHead expects (batch, features) or (batch, h, w, c) inputs, got "
                f"shape {input_shape}."
            )
        if self.pooling is None:
            raise ValueError(
                f"ClassificationHead got a feature map of shape {input_shape} but pooling=None. "
                "Use pooling='avg', 'max', 'avgmax' or 'flatten'."
            )
        channels = input_shape[-1]
        if self.pooling == "avgmax":
            return (input_shape[0], 2 * channels)
        if self.pooling == "flatten":
            if None in input_shape[1:]:
                raise ValueError("pooling='flatten' needs a fixed input size.")
            return (input_shape[0], input_shape[1] * input_shape[2] * channels)
        return (input_shape[0], channels)

    def pool(self, x):
        if len(x.shape) == 2:
            return x
        if self.pooling == "avg":
            return keras.ops.mean(x, axis=(1, 2))
        if self.pooling == "max":
            return keras.ops.max(x, axis=(1, 2))
        if self.pooling == "avgmax":
            return keras.ops.concatenate(
                [keras.ops.mean(x, axis=(1, 2)), keras.ops.max(x, axis=(1, 2))], axis=-1
            )
        return keras.ops.reshape(x, (-1, x.shape[1] * x.shape[2] * x.shape[3]))

    def compute_logits(self, inputs, training=None):
        """The output layer's pre-activation values (float32), whatever `logits` says."""
        x = self.pool(inputs)
        for dropout, block in zip(self.dropout_layers, self.hidden_layers):
            x = dropout(x, training=training)
            for layer in block:
                x = layer(x, training=training)
        x = self.dropout_layers[-1](x, training=training)
        return self.output_dense(x)

    def activate(self, logits):
        """The head's outputs from `compute_logits`' values: `logits` itself when the head
        outputs logits, else the task's softmax or sigmoid."""
        if self.logits:
            return logits
        return keras.activations.get(self.output_activation)(logits)

    def call(self, inputs, training=None):
        return self.activate(self.compute_logits(inputs, training=training))

    def compute_output_spec(self, inputs, training=None):
        # The output layer computes in float32 whatever the policy: say so symbolically too.
        return keras.KerasTensor((inputs.shape[0], self.output_units), dtype="float32")

    def default_loss(self) -> keras.losses.Loss:
        """The loss that matches the task and output activation."""
        if self.task == "multiclass":
            return keras.losses.SparseCategoricalCrossentropy(from_logits=self.logits)
        if self.task in ("binary", "multilabel"):
            return BinaryLabelCrossentropy(from_logits=self.logits)
        return keras.losses.MeanSquaredError()

    def default_metrics(self) -> list[keras.metrics.Metric]:
        """`accuracy` for classification tasks, mean absolute error for regression."""
        if self.task == "multiclass":
            return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if self.task in ("binary", "multilabel"):
            threshold = 0.0 if self.logits else 0.5
            return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)]
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "task": self.task,
                "pooling": self.pooling,
                "hidden_units": list(self.hidden_units),
                "activation": self.activation,
                "dropout": self.dropout,
                "batch_norm": self.batch_norm,
                "logits": self.logits,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        quantized = {
            layer.name: keras.dtype_policies.serialize(layer.dtype_policy)
            for layer in [block[0] for block in self.hidden_layers] + [self.output_dense]
            if layer.dtype_policy.quantization_mode
        }
        if quantized:  # after `model.quantize`; absent otherwise
            config["dense_dtypes"] = quantized
        return config


def _check_head_args(num_classes, task, pooling, hidden_units, dropout) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
    if task == "binary" and num_classes > 2:
        raise ValueError(
            f"task='binary' has one sigmoid output; got num_classes={num_classes}. Use "
            "task='multiclass' (one label per image) or 'multilabel' (several)."
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if any(int(u) < 1 for u in hidden_units):
        raise ValueError(f"hidden_units must be positive integers, got {list(hidden_units)}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


HEAD_ARGS = (
    "task",
    "pooling",
    "hidden_units",
    "activation",
    "dropout",
    "batch_norm",
    "logits",
    "kernel_regularizer",
)


def make_head(num_classes: int, head: Mapping[str, Any] | None = None) -> ClassificationHead:
    """A `ClassificationHead` from a dict of its arguments; unknown keys are an error."""
    head = dict(head or {})
    unknown = sorted(set(head) - set(HEAD_ARGS))
    if unknown:
        raise ValueError(f"Unknown head option(s) {unknown}. Valid options: {list(HEAD_ARGS)}.")
    return ClassificationHead(num_classes, name="head", **head)


def resolve_loss_and_metrics(model: keras.Model, loss: Any, metrics: Any) -> dict[str, Any]:
    """`compile` keyword arguments: `loss` and `metrics`, with `"auto"` replaced by the
    defaults of the model's keras_transfer head."""
    # New metric objects for each compile: a phase must not start from the other's state.
    head = getattr(model, "head", None)
    if loss == "auto":
        if head is None:
            raise ValueError("Pass `loss=`: the model has no keras_transfer head to infer it from.")
        loss = head.default_loss()
    if metrics == "auto":
        metrics = head.default_metrics() if head is not None else []
    return {"loss": loss, "metrics": metrics}
