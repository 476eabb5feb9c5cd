"""Knowledge distillation of classifiers with Keras' own `keras.distillation.Distiller`.

A small student learns from the labels and from a trained teacher's softened predictions
(Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531): the loss is `alpha * CE(labels, student) + (1 - alpha) * T^2 *
KL(softmax(z_teacher / T) || softmax(z_student / T))`, with `z` the logits and `T` the
temperature.

Keras' `LogitsDistillation` divides the models' outputs by `T` and applies a softmax, so it
needs logits; keras_transfer heads (and most Keras classifiers) output probabilities. `distill`
puts a `ProbabilitiesToLogits` layer behind each model for the duration of the training:
`log(p)` for a softmax (equal to the logits up to a constant per example, which softmax
ignores), and the two-class logits `[log(1 - p), log(p)]` for each sigmoid unit, so binary and
multi-label heads are distilled per label. The student itself is never changed: after `distill`
it is the same plain model, taking raw inputs and saved like any other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import _keras_compat
from keras_transfer import heads
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.utils import fit_arguments

__all__ = ["ProbabilitiesToLogits", "distill", "logits_model"]

# Softmax probabilities below this are clipped before the log. float32 holds ~1e-38, so
# log-probabilities down to -69 are exact: far below anything a temperature of 1-20 keeps.
_TINY = 1e-30
TASKS = ("multiclass", "binary", "multilabel")


@keras.saving.register_keras_serializable(package="keras_transfer")
class ProbabilitiesToLogits(keras.layers.Layer):
    """Turns a classifier's output into logits whose softmax over the last axis is the
    classifier's predicted distribution.

    - `task="multiclass"`: `log(p)` of softmax probabilities (logits up to a per-example
      constant, which softmax ignores); logits pass through.
    - `task="binary"` / `"multilabel"`: each sigmoid unit `p` becomes the two-class logits
      `[log(1 - p), log(p)]` (or `[0, z]` from a logit `z`): shape `(batch, 2)` for one unit,
      `(batch, labels, 2)` for several, so softmax-based losses treat every label as its
      own two-class problem.

    Args:
        task: `"multiclass"`, `"binary"` or `"multilabel"`.
        from_logits: the input already holds logits (a head built with `logits=True`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    layer = ProbabilitiesToLogits("multiclass")
    keras.ops.softmax(layer(np.array([[0.7, 0.2, 0.1]])))  # -> [[0.7, 0.2, 0.1]]
    ```
    """

    def __init__(self, task: str = "multiclass", from_logits: bool = False, **kwargs):
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(
                f"task must be one of {TASKS}, got {task!r}. Regression outputs have no class "
                "distribution: distil them with keras.distillation.FeatureDistillation."
            )
        self.task = task
        self.from_logits = bool(from_logits)

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        if self.task == "multiclass":
            return x if self.from_logits else keras.ops.log(keras.ops.maximum(x, _TINY))
        if self.from_logits:
            two_class = keras.ops.stack([keras.ops.zeros_like(x), x], axis=-1)
        else:
            two_class = keras.ops.log(
                keras.ops.maximum(keras.ops.stack([1.0 - x, x], axis=-1), _TINY)
            )
        if self.task == "binary":
            return two_class[..., 0, :]
        return two_class

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.task == "multiclass":
            return input_shape
        if self.task == "binary":
            return (*input_shape[:-1], 2)
        return (*input_shape, 2)

    def get_config(self):
        config = super().get_config()
        config.update({"task": self.task, "from_logits": self.from_logits})
        return config


def _describe(model: keras.Model, role: str, task: str | None, from_logits: bool | None):
    """`(task, from_logits)` of a classifier's output: from a keras_transfer head, from the
    activation of the last layer, or from the arguments."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"The {role} must be a keras.Model, got {type(model).__name__}.")
    head = getattr(model, "head", None)
    if isinstance(head, heads.MultiTaskHead):
        raise ValueError(
            f"The {role} has several heads ({head.head_names}); distill supports one output. "
            "Use keras.distillation.Distiller with one loss per output for multi-task models."
        )
    if isinstance(head, heads.ClassificationHead):
        if head.task == "regression":
            raise ValueError(
                f"The {role} is a regression model: there are no class probabilities to "
                "distil. Use keras.distillation.FeatureDistillation on its outputs instead."
            )
        found = (head.task, head.logits)
    else:
        found = _describe_last_layer(model)
    if len(model.outputs or []) != 1:
        raise ValueError(f"The {role} must have one output, got {len(model.outputs or [])}.")
    task = task or (found[0] if found else None)
    from_logits = from_logits if from_logits is not None else (found[1] if found else None)
    if task is None or from_logits is None:
        raise ValueError(
            f"Cannot tell whether the {role} ({model.name}) outputs probabilities or logits: "
            "its last layer has no softmax/sigmoid/linear activation. Pass task= and "
            f"{role}_logits=."
        )
    return task, from_logits


def _describe_last_layer(model: keras.Model):
    layer = model.layers[-1] if model.layers else None
    if isinstance(layer, keras.Model):
        # A wrapped classifier (e.g. resizing or tokenizing in front): its output is ours.
        head = getattr(layer, "head", None)
        if isinstance(head, heads.ClassificationHead) and head.task != "regression":
            return head.task, head.logits
        return _describe_last_layer(layer)
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    units = model.outputs[0].shape[-1] if model.outputs else None
    if name == "softmax":
        return "multiclass", False
    if name == "sigmoid":
        return ("binary" if units == 1 else "multilabel"), False
    if name == "linear" and units and units > 1:
        return "multiclass", True
    return None


def _fresh_inputs(model: keras.Model, name: str | None = None):
    specs = model.inputs
    if len(specs) == 1:
        return keras.Input(batch_shape=specs[0].shape, dtype=specs[0].dtype, name=name)
    return [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in specs]


def logits_model(
    model: keras.Model, *, task: str | None = None, from_logits: bool | None = None
) -> keras.Model:
    """A model sharing `model`'s layers whose output is `ProbabilitiesToLogits` of its output.

    Training it trains `model`. `task` and `from_logits` are read from a keras_transfer head
    or the last layer's activation when not given.

    Example:
    ```python
    classifier = create_classifier("mobilenet", 3, input_shape=(96, 96, 3), weights=None)
    logits = logits_model(classifier)  # log-probabilities: softmax(logits) == classifier
    ```
    """
    task, from_logits = _describe(model, "model", task, from_logits)
    inputs = _fresh_inputs(model)
    outputs = ProbabilitiesToLogits(task, from_logits, name="to_logits")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_logits")


def _check_number(value: Any, name: str, low: float, high: float, low_open: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}" if low_open else f"[{low}"
        raise ValueError(f"{name} must be a number in {bound}, {high}], got {value!r}.")
    return float(value)


def _require_keras_distillation():
    distillation = getattr(keras, "distillation", None)
    if distillation is None or not hasattr(distillation, "Distiller"):
        raise ImportError(
            f"distill needs keras.distillation (Keras 3.12 or newer); this is Keras "
            f"{keras.__version__}. Upgrade with: pip install 'keras>=3.12'."
        )
    return distillation


def _split(batch):
    if isinstance(batch, tuple | list) and len(batch) in (2, 3):
        return batch[0], batch[1]
    raise ValueError(
        "distill needs batches of (inputs, labels); got "
        f"{type(batch).__name__}. Build the dataset as tf.data.Dataset.from_tensor_slices("
        "(inputs, labels)).batch(32)."
    )


def _with_teacher_outputs(dataset, teacher_view, shuffle: bool, seed: int | None):
    """The dataset as `({"inputs": x, "teacher_logits": t}, y)`, with the teacher run once."""
    xs, ys, ts = [], [], []
    batch_size = None
    for batch in dataset:
        x, y = _split(batch)
        batch_size = batch_size or int(keras.tree.flatten(y)[0].shape[0])
        # NumPy first: JAX's predict step takes arrays, not the tf.data batch's tf.Tensors.
        x = keras.tree.map_structure(np.asarray, x)
        ts.append(np.asarray(teacher_view.predict_on_batch(x)))
        xs.append(x)
        ys.append(keras.tree.map_structure(np.asarray, y))
    if not xs:
        raise ValueError("The dataset is empty: there is nothing to distil on.")

    def concat(parts):
        return keras.tree.map_structure(lambda *leaves: np.concatenate(leaves), *parts)

    x, y, t = concat(xs), concat(ys), np.concatenate(ts)
    data = tf.data.Dataset.from_tensor_slices(({"inputs": x, "teacher_logits": t}, y))
    if shuffle:
        data = data.shuffle(len(t), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def distill(
    teacher: keras.Model,
    student: keras.Model,
    train: Any,
    validation: Any = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
    epochs: int = 10,
    optimizer: str | type | optimizers.OptimizerFactory = "adam",
    learning_rate: float = 1e-3,
    cache_teacher: bool = False,
    seed: int | None = 1337,
    task: str | None = None,
    teacher_logits: bool | None = None,
    student_logits: bool | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
    **fit_kwargs: Any,
) -> keras.Model:
    """Trains `student` on the labels and on `teacher`'s softened predictions; returns it.

    Runs `keras.distillation.Distiller` with `LogitsDistillation(temperature)` and
    `student_loss_weight=alpha` on logit views of both models (`logits_model`). The teacher
    is frozen and runs in inference mode; its `trainable` flags are restored afterwards.

    Args:
        teacher: the trained classifier (a keras_transfer classifier or any single-output
            Keras classifier with a softmax / sigmoid output, or logits).
        student: the model to train; same inputs and the same classes as the teacher.
        train: a `tf.data.Dataset` of `(inputs, labels)` batches (labels as the student's
            loss expects them: class ids, or 0/1 per label for sigmoid outputs).
        validation: the same for validation (its loss includes the teacher term), or `None`.
        temperature: softmax temperature `T` of the distillation term (Hinton et al. use
            1-20; 2-5 is common). The term is scaled by `T^2`.
        alpha: weight of the labels' cross-entropy; `1 - alpha` weighs the distillation
            term (`alpha=1` is training on labels only; Keras' guide uses 0.1).
        epochs: training epochs.
        optimizer: optimizer name, class or factory `learning_rate -> optimizer`.
        learning_rate: learning rate given to `optimizer`.
        cache_teacher: run the teacher once over `train` and `validation` and train on its
            stored outputs: much faster with a large teacher, but holds both datasets in
            memory and freezes their augmentation; reshuffles every epoch with `seed`.
        seed: shuffling seed with `cache_teacher`.
        task: `"multiclass"`, `"binary"` or `"multilabel"` when the models do not tell (a
            keras_transfer head or a softmax/sigmoid last layer does).
        teacher_logits, student_logits: whether each model outputs logits, when it cannot
            be read from the model.
        callbacks: Keras callbacks of the distillation `fit` (they see the `Distiller`).
        verbose: verbosity of `fit`.
        **fit_kwargs: other `fit` arguments (`steps_per_epoch`, ...).

    Returns:
        `student`, trained: the same plain model on the same raw inputs, saved like any other.

    Example:
    ```python
    teacher = kt.create_classifier("mobilenet", 2, weights="mobilenet_1_0_224_tf_no_top.h5")
    kt.fit_two_phase(teacher, data.train, data.validation)
    small = kt.create_classifier("mobilenet", 2, input_shape=(112, 112, 3), weights=...)
    student = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Resizing(112, 112), small])
    student = kt.distill(teacher, student, data.train, data.validation, temperature=4, alpha=0.1)
    student.save("student.keras")
    ```
    """
    distillation = _require_keras_distillation()
    temperature, alpha = _check_arguments(temperature, alpha, epochs, learning_rate, fit_kwargs)
    make_optimizer = optimizers.optimizer_factory(optimizer)
    views = _logit_views(teacher, student, task, teacher_logits, student_logits)
    with _trainable_flags_restored(teacher):
        if cache_teacher:
            train, validation, views = _on_cached_teacher_logits(train, validation, views, seed)
        distiller = _compiled_distiller(
            distillation, *views, temperature, alpha, make_optimizer(learning_rate)
        )
        fit_kwargs.update(callbacks=list(callbacks or []), verbose=verbose)
        fit_arguments.no_fit_shuffle(train, fit_kwargs)
        distiller.fit(train, validation_data=validation, epochs=epochs, **fit_kwargs)
    return student


def _check_arguments(temperature, alpha, epochs, learning_rate, fit_kwargs) -> tuple[float, float]:
    """`(temperature, alpha)` as floats, once every number and `fit` argument is valid."""
    temperature = _check_number(temperature, "temperature", 0.0, math.inf, low_open=True)
    alpha = _check_number(alpha, "alpha", 0.0, 1.0, low_open=False)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    for key in ("epochs", "validation_data", "x", "y"):
        if key in fit_kwargs:
            raise TypeError(f"distill sets `{key}` itself.")
    optimizers.check_learning_rate(learning_rate, "learning_rate")
    return temperature, alpha


def _logit_views(
    teacher: keras.Model,
    student: keras.Model,
    task: str | None,
    teacher_logits: bool | None,
    student_logits: bool | None,
) -> tuple[keras.Model, keras.Model]:
    """`(teacher view, student view)`: `logits_model`s of both, checked to predict the same
    classes from the same inputs."""
    teacher_task, teacher_from_logits = _describe(teacher, "teacher", task, teacher_logits)
    student_task, student_from_logits = _describe(student, "student", task, student_logits)
    teacher_view = logits_model(teacher, task=teacher_task, from_logits=teacher_from_logits)
    student_view = logits_model(student, task=student_task, from_logits=student_from_logits)
    if _logits_shape(teacher_view) != _logits_shape(student_view):
        raise ValueError(
            f"The teacher predicts {teacher.outputs[0].shape[-1]} outputs ({teacher_task}) and "
            f"the student {student.outputs[0].shape[-1]} ({student_task}): distillation needs "
            "the same classes in the same order. Build the student with the teacher's number "
            "of classes."
        )
    for t, s in zip(teacher.inputs, student.inputs, strict=False):
        if tuple(t.shape[1:]) != tuple(s.shape[1:]) or len(teacher.inputs) != len(student.inputs):
            raise ValueError(
                f"Teacher and student take different inputs ({[tuple(i.shape) for i in teacher.inputs]} "
                f"vs {[tuple(i.shape) for i in student.inputs]}): both see the same batches. "
                "Put the resizing (or tokenizing) inside the student, e.g. keras.Sequential("
                "[keras.Input(teacher_shape), keras.layers.Resizing(h, w), student])."
            )
    return teacher_view, student_view


def _logits_shape(view: keras.Model) -> tuple:
    return tuple(view.outputs[0].shape[1:])


@contextlib.contextmanager
def _trainable_flags_restored(teacher: keras.Model) -> Iterator[None]:
    """Puts back the `trainable` flag of every layer of `teacher` on exit.

    The Distiller freezes the teacher by setting `trainable = False` on every layer it
    shares with the user's teacher, which must come back as it was given."""
    flags = {layer: layer.trainable for layer in _keras_compat.flatten_layers(teacher)}
    try:
        yield
    finally:
        for layer, trainable in flags.items():
            layer.trainable = trainable


def _on_cached_teacher_logits(
    train: Any, validation: Any, views: tuple[keras.Model, keras.Model], seed: int | None
) -> tuple[Any, Any, tuple[keras.Model, keras.Model]]:
    """`(train, validation, views)` over the teacher's logits computed once: datasets of
    `({"inputs": x, "teacher_logits": t}, y)` and the views that read them."""
    teacher_view, student_view = views
    train = _with_teacher_outputs(train, teacher_view, shuffle=True, seed=seed)
    if validation is not None:
        validation = _with_teacher_outputs(validation, teacher_view, False, seed)
    return train, validation, _cached_views(student_view, _logits_shape(teacher_view))


def _compiled_distiller(
    distillation: Any,
    teacher_view: keras.Model,
    student_view: keras.Model,
    temperature: float,
    alpha: float,
    optimizer: keras.optimizers.Optimizer,
) -> keras.Model:
    """A compiled `keras.distillation.Distiller` of the student view on the teacher view."""
    distiller = distillation.Distiller(
        teacher=teacher_view,
        student=student_view,
        # A KLDivergence instance, not the default "kl_divergence": Keras 3.15 resolves
        # the string to a function, which skips LogitsDistillation's softmax and
        # applies the KL to the raw logits (zero for log-probabilities).
        distillation_losses=distillation.LogitsDistillation(
            temperature=temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=alpha,
    )
    distiller.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return distiller


def _cached_views(
    student_view: keras.Model, logits_shape: tuple
) -> tuple[keras.Model, keras.Model]:
    """Teacher and student views over `{"inputs": x, "teacher_logits": t}`: the teacher's
    is the stored logits, the student's its logits of `x`. Same input structure, as the
    Distiller requires."""

    def inputs():
        return {
            "inputs": _fresh_inputs(student_view, name="inputs"),
            "teacher_logits": keras.Input(logits_shape, name="teacher_logits"),
        }

    teacher_inputs = inputs()
    teacher = keras.Model(
        teacher_inputs,
        keras.layers.Identity(name="stored_teacher_logits")(teacher_inputs["teacher_logits"]),
        name="cached_teacher",
    )
    student_inputs = inputs()
    student = keras.Model(
        student_inputs, student_view(student_inputs["inputs"]), name="student_on_cached"
    )
    return teacher, student
