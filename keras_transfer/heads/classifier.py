"""The classifier model: raw images in, through preprocessing, a pretrained backbone and a
head (or several), predictions out.

`create_classifier` builds a `TransferClassifier` from a backbone name or `Backbone` and head
options. With several named heads (`heads=`, a `MultiTaskHead`) the model outputs a dict by
head name, and training takes labels as a dict of the same names:
`model.fit(images, {"species": species_ids, "colour": colour_bits})`, or a `tf.data.Dataset`
of `(images, {"species": ..., "colour": ...})`. From an image folder whose class folders
encode every task (e.g. `red_ant/`, `blue_bee/`), map the folder label to each task's label
with lookup tables; `image_folder_dataset` itself needs no change:

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
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classification import make_head
from keras_transfer.heads.labels import check_labels
from keras_transfer.heads.multi_task import MultiTaskHead
from keras_transfer.utils import backend
from keras_transfer.utils import distribute

__all__ = ["TransferClassifier", "create_classifier"]


@keras.saving.register_keras_serializable(package="keras_transfer")
class TransferClassifier(distribute.MultiWorkerFitMixin, keras.Model):
    """Raw images in, predictions out: preprocessing, a pretrained backbone and a head.

    A functional model (so `summary()`, `fit`, `.keras` saving and `export` all work as for
    any Keras model) that also remembers what transfer learning needs after a reload: the
    backbone's registry name (for its blocks), the class names and the head's task.
    `fit` and `evaluate` also run under `MultiWorkerMirroredStrategy`, which Keras 3.15
    does not support for plain models (see `distribute.MultiWorkerFitMixin`). On backends
    other than TensorFlow (whose compiled steps cannot assert), `fit` and `evaluate` first
    check the labels against the head (`heads.labels.check_labels`): a class index outside
    `[0, num_classes)`, or a sigmoid head's label other than 0 or 1, is an error naming it,
    where JAX's one-hot would train on a row of zeros silently.

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

    def fit(self, *args, **kwargs):
        args, kwargs = _checked(self, _FIT, args, kwargs, ("x", "y"), ("validation_data", None))
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        # Keras' fit also validates through here: labels fit has checked are checked again,
        # which costs one pass over an array and nothing for a dataset (a lazy map).
        args, kwargs = _checked(self, _EVALUATE, args, kwargs, ("x", "y"))
        return super().evaluate(*args, **kwargs)

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


_FIT = inspect.signature(keras.Model.fit)
_EVALUATE = inspect.signature(keras.Model.evaluate)


def _checked(model, signature, args, kwargs, *pairs: tuple[str, str | None]):
    """`args` and `kwargs` of `fit` or `evaluate` with each `(data, labels)` pair's data
    replaced by `check_labels`' result (unchanged on TensorFlow)."""
    if backend.is_tensorflow():
        return args, kwargs
    # Keras' own signature, bound, so that positional `y` or `validation_data` count too.
    bound = signature.bind(model, *args, **kwargs)
    for data_name, labels_name in pairs:
        if bound.arguments.get(data_name) is not None:
            labels = bound.arguments.get(labels_name) if labels_name else None
            bound.arguments[data_name] = check_labels(model, bound.arguments[data_name], labels)
    return bound.args[1:], bound.kwargs


def create_classifier(
    backbone: backbones_lib.Backbone | str,
    num_classes: Any = None,
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

    With `heads=`, one backbone feeds several named heads (a `MultiTaskHead`), the model
    outputs a dict by head name and takes labels as a dict of the same names (see the
    module docstring for building such datasets).

    Args:
        backbone: a `Backbone` from `create_backbone`, or a registry name (then
            `backbone_kwargs` such as `input_shape` and `weights` go to `create_backbone`).
        num_classes: number of classes (or regression targets) of a single head, or the
            `ImageData` of a loader (its class count and names, its `task` unless `head`
            names one, and for a backbone named here its image size:
            `create_classifier("mobilenet", data)`); leave it out with `heads`.
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
    if hasattr(num_classes, "class_names") and hasattr(num_classes, "image_size"):
        # An `ImageData`: its classes, its names and (for a backbone built here) its size.
        data, num_classes = num_classes, len(num_classes.class_names)
        class_names = list(data.class_names) if class_names is None else class_names
        if isinstance(backbone, str):
            backbone_kwargs.setdefault("input_shape", (*data.image_size, 3))
        task = getattr(data, "task", "multiclass")  # a label table's multilabel/regression
        if task != "multiclass" and (head is None or isinstance(head, Mapping)):
            head = {"task": task, **(head or {})}
    head = _multi_task_head_or(head, num_classes, heads, loss_weights)
    backbone = _resolve_backbone(backbone, feature_block, backbone_kwargs)
    head = _single_head_or(head, num_classes)
    return TransferClassifier(
        backbone.model,
        head,
        backbone_name=backbone.name,
        preprocessing=backbone.preprocessing,
        class_names=class_names,
        name=name or f"{backbone.name.replace(':', '_').replace('/', '_')}_classifier",
    )


def _multi_task_head_or(head, num_classes, heads, loss_weights):
    """The `MultiTaskHead` of `heads=`, or `head` unchanged for a single head; checks that
    the single-head and multi-head arguments are not mixed."""
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
        return MultiTaskHead(heads, loss_weights=loss_weights, name="head")
    if loss_weights is not None:
        raise ValueError(
            "loss_weights weighs the outputs of several heads: pass it with heads=. A single "
            "head has one loss."
        )
    if num_classes is None and not isinstance(head, ClassificationHead):
        raise ValueError("Pass num_classes (one head) or heads= (several named heads).")
    return head


def _resolve_backbone(backbone, feature_block, backbone_kwargs) -> backbones_lib.Backbone:
    """The `Backbone` to build on: created from a registry name, cut at `feature_block`."""
    if isinstance(backbone, str):
        backbone = backbones_lib.create_backbone(backbone, **backbone_kwargs)
    elif backbone_kwargs:
        raise TypeError(
            f"Unexpected arguments {sorted(backbone_kwargs)}: they are for create_backbone and "
            "only apply when `backbone` is a name."
        )
    if feature_block is not None:
        backbone = backbone.cut(feature_block)
    return backbone


def _single_head_or(head, num_classes: int | None) -> ClassificationHead | MultiTaskHead:
    """A given head (its class count checked), or a `ClassificationHead` from options."""
    if isinstance(head, ClassificationHead):
        if num_classes is not None and head.num_classes != num_classes:
            raise ValueError(f"head has {head.num_classes} classes but num_classes={num_classes}.")
        return head
    if isinstance(head, MultiTaskHead):
        return head
    return make_head(num_classes, head)


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
