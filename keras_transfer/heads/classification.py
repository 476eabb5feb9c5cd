"""Classification and regression heads, and the classifier model that joins them to a backbone.

A classifier has one head (`ClassificationHead`) or several named ones on a shared backbone
(`MultiTaskHead`: hard parameter sharing, Caruana 1997, "Multitask Learning", Machine
Learning 28).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.utils import distribute
from keras_transfer.utils import reliability

__all__ = [
    "ClassificationHead",
    "MultiTaskHead",
    "TASKS",
    "TransferClassifier",
    "check_heads",
    "check_loss_weights",
    "create_classifier",
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
        **kwargs,
    ):
        super().__init__(**kwargs)
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
                    dtype=self.dtype_policy,
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
            dtype="float32",
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
            return reliability.BinaryLabelCrossentropy(from_logits=self.logits)
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


@keras.saving.register_keras_serializable(package="keras_transfer")
class TransferClassifier(distribute.MultiWorkerFitMixin, keras.Model):
    """Raw images in, predictions out: preprocessing, a pretrained backbone and a head.

    A functional model (so `summary()`, `fit`, `.keras` saving and `export` all work as for
    any Keras model) that also remembers what transfer learning needs after a reload: the
    backbone's registry name (for its blocks), the class names and the head's task.
    `fit` and `evaluate` also run under `MultiWorkerMirroredStrategy`, which Keras 3.15
    does not support for plain models (see `distribute.MultiWorkerFitMixin`).

    `compile()` fills in what the head implies: `loss="auto"` and `metrics="auto"` pick the
    matching loss and accuracy metric; `optimizer="auto"` is Adam with learning rate 1e-3.
    With a `MultiTaskHead` the outputs are a dict by head name, and `compile()` picks a loss
    and metric per output and applies the head's `loss_weights` (`loss_weights="auto"`).

    Args:
        backbone: the headless `keras.Model` (e.g. `create_backbone(...).model`).
        head: a `ClassificationHead`, or a `MultiTaskHead` for several named outputs.
        backbone_name: registry name of the backbone, to find its blocks.
        preprocessing: `ImagePreprocessing` mode applied to the raw 0-255 input, or `None`.
        class_names: optional names of the output classes, saved with the model; with a
            `MultiTaskHead`, a dict head name -> class names (for some or all heads).
        **kwargs: standard `keras.Model` arguments (e.g. `name`).

    Example:
    ```python
    model = create_classifier(
        create_backbone("mobilenet_v2", input_shape=(96, 96, 3), weights=None), num_classes=3
    )
    model.compile()  # Adam, sparse categorical cross-entropy, accuracy
    model.predict(np.zeros((1, 96, 96, 3)), verbose=0).shape  # -> (1, 3)
    ```
    """

    def __init__(
        self,
        backbone: keras.Model,
        head: ClassificationHead | MultiTaskHead,
        backbone_name: str | None = None,
        preprocessing: str | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ):
        inputs = keras.Input(shape=backbone.input_shape[1:], name="images")
        x = inputs
        preprocess_layer = None
        if preprocessing:
            preprocess_layer = ImagePreprocessing(preprocessing, name="preprocessing")
            x = preprocess_layer(x)
        features = backbone(x)
        outputs = head(features)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.head = head
        self.backbone_name = backbone_name
        self.preprocessing = preprocessing
        self.preprocess_layer = preprocess_layer
        self.class_names = _check_class_names(class_names, head)

    @property
    def blocks(self) -> list[backbones_lib.Block]:
        """The backbone's blocks, input side first."""
        return backbones_lib.get_blocks(self.backbone, self.backbone_name)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", loss_weights="auto", **kwargs):
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = self.head.default_loss()
        if metrics == "auto":
            metrics = self.head.default_metrics()
        if isinstance(loss_weights, str) and loss_weights == "auto":
            # A multi-task head's per-output weights; Keras' default (all 1) otherwise.
            loss_weights = getattr(self.head, "loss_weights", None)
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, loss_weights=loss_weights, **kwargs
        )

    def compile_from_config(self, config):
        # Keras skips restoring the compile state of models that override `compile`; ours
        # takes the same arguments, so restore it as Keras does for plain models.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            # Create the optimizer variables so that the saved optimizer state loads into them.
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        # Not chained to Functional.get_config: that returns the layer graph, which the
        # constructor does not take. The constructor arguments rebuild the same graph.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "head": keras.saving.serialize_keras_object(self.head),
            "backbone_name": self.backbone_name,
            "preprocessing": self.preprocessing,
            "class_names": self.class_names,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def create_classifier(
    backbone: backbones_lib.Backbone | str,
    num_classes: int | None = None,
    head: Mapping[str, Any] | ClassificationHead | None = None,
    *,
    heads: Mapping[str, Mapping[str, Any]] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    feature_block: str | int | None = None,
    class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    name: str | None = None,
    **backbone_kwargs: Any,
) -> TransferClassifier:
    """Joins a backbone, its preprocessing and a head (or several) into a model that takes
    raw images.

    With `heads=`, one backbone feeds several named heads (a `MultiTaskHead`) and the model
    outputs a dict by head name. Training then takes labels as a dict of the same names:
    `model.fit(images, {"species": species_ids, "colour": colour_bits})`, or a
    `tf.data.Dataset` of `(images, {"species": ..., "colour": ...})`. From an image folder
    whose class folders encode every task (e.g. `red_ant/`, `blue_bee/`), map the folder
    label to each task's label with lookup tables; `image_folder_dataset` itself needs no
    change:

    ```python
    data = image_folder_dataset("insects", image_size=224)  # classes: blue_bee, red_ant, ...
    species = tf.constant([names.index(c.split("_")[1]) for c in data.class_names])
    colour = tf.constant([[float(c.startswith(k)) for k in colours] for c in data.class_names])
    to_tasks = lambda x, y: (x, {"species": tf.gather(species, y), "colour": tf.gather(colour, y)})
    train, validation = data.train.map(to_tasks), data.validation.map(to_tasks)
    ```

    (Labels from a CSV of file names work the same way: build `(image, {...})` pairs with
    `tf.data.Dataset.from_tensor_slices((paths, {"species": ..., "colour": ...}))` and decode
    the images in a `map`.)

    Args:
        backbone: a `Backbone` from `create_backbone`, or a registry name (then
            `backbone_kwargs` such as `input_shape` and `weights` go to `create_backbone`).
        num_classes: number of classes (or regression targets) of a single head; leave it
            out with `heads`.
        head: `ClassificationHead` arguments as a dict (`task`, `pooling`, `hidden_units`,
            `activation`, `dropout`, `batch_norm`, `logits`), or a `ClassificationHead`.
            `None` gives the Keras guide's head: average pooling, dropout 0.2, softmax.
        heads: several named heads instead: head name -> its `ClassificationHead` options
            with `num_classes`, e.g. `{"species": {"num_classes": 5}, "colour":
            {"num_classes": 3, "task": "multilabel"}}`. `compile()` picks each output's
            loss and metric.
        loss_weights: with `heads`, head name -> weight of its loss in the total (a head
            left out weighs 1); saved with the model and applied by `compile()`.
        feature_block: take features from this block (name or index) instead of the last
            one: for small datasets far from ImageNet, lower blocks transfer better.
        class_names: names of the classes, saved with the model; with `heads`, a dict
            head name -> class names.
        name: model name.

    Returns:
        A `TransferClassifier` expecting RGB images with values in [0, 255].

    Example:
    ```python
    model = create_classifier("mobilenet_v2", 3, input_shape=(96, 96, 3), weights=None)
    model.output_shape  # -> (None, 3)
    multi = create_classifier(
        "mobilenet_v2",
        heads={"species": {"num_classes": 5}, "colour": {"num_classes": 3, "task": "multilabel"}},
        loss_weights={"colour": 0.5},
        input_shape=(96, 96, 3),
        weights=None,
    )
    multi.compile()  # per output: sparse categorical / binary cross-entropy and accuracy
    ```
    """
    if heads is not None:
        if num_classes is not None:
            raise ValueError(
                "Pass either num_classes (one head) or heads (several named heads, each with "
                "its own num_classes), not both."
            )
        if head is not None:
            raise ValueError(
                "Pass either head (options of one head) or heads (name -> options of each "
                "head), not both: put the options inside each entry of heads."
            )
        head = MultiTaskHead(heads, loss_weights=loss_weights, name="head")
    elif loss_weights is not None:
        raise ValueError(
            "loss_weights weighs the outputs of several heads: pass it with heads=. A single "
            "head has one loss."
        )
    elif num_classes is None and not isinstance(head, ClassificationHead):
        raise ValueError("Pass num_classes (one head) or heads= (several named heads).")
    if isinstance(backbone, str):
        backbone = backbones_lib.create_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise TypeError(
            f"Unexpected arguments {sorted(backbone_kwargs)}: they are for create_backbone and "
            "only apply when `backbone` is a name."
        )
    if feature_block is not None:
        backbone = backbone.cut(feature_block)
    if isinstance(head, ClassificationHead):
        if num_classes is not None and head.num_classes != num_classes:
            raise ValueError(f"head has {head.num_classes} classes but num_classes={num_classes}.")
    elif not isinstance(head, MultiTaskHead):
        head = make_head(num_classes, head)
    return TransferClassifier(
        backbone.model,
        head,
        backbone_name=backbone.name,
        preprocessing=backbone.preprocessing,
        class_names=class_names,
        name=name or f"{backbone.name.replace(':', '_').replace('/', '_')}_classifier",
    )


def _check_class_names(class_names, head) -> list[str] | dict[str, list[str]] | None:
    if class_names is None:
        return None
    if isinstance(head, MultiTaskHead):
        if not isinstance(class_names, Mapping):
            raise TypeError(
                "A multi-task classifier takes class_names as a dict head name -> class names, "
                f"got {type(class_names).__name__}."
            )
        unknown = sorted(set(class_names) - set(head.head_names))
        if unknown:
            raise ValueError(
                f"class_names for unknown head(s) {unknown}; the heads are {head.head_names}."
            )
        checked = {}
        for name, names in class_names.items():
            try:
                checked[name] = _check_class_names(names, head.heads[name])
            except (TypeError, ValueError) as error:
                raise type(error)(f"Head {name!r}: {error}") from error
        return checked
    if isinstance(class_names, str | Mapping):
        raise TypeError(f"class_names must be a list of names, got {type(class_names).__name__}.")
    class_names = list(class_names)
    if head.task != "regression":
        allowed = (1, 2) if head.task == "binary" else (head.num_classes,)
        if len(class_names) not in allowed:
            raise ValueError(
                f"{len(class_names)} class names for a {head.task} head with "
                f"{head.num_classes} classes: {class_names}."
            )
    return class_names


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
