"""Checks of the labels `fit` reads against the head they train, on backends whose compiled
steps have no in-graph assertion.

TensorFlow's sparse cross-entropy kernel fails on a class index outside `[0, num_classes)`,
and `BinaryLabelCrossentropy` asserts its 0/1 labels in the graph. JAX has neither: its
one-hot turns an index out of range into a row of zeros (the example trains towards
nothing, silently). `check_labels` checks the labels before they reach the model instead:
arrays at once, a `tf.data.Dataset` batch by batch in its pipeline. `TransferClassifier.fit`
and `.evaluate`, `fit_two_phase` and the feature cache call it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.losses import BINARY_LABELS_MESSAGE
from keras_transfer.heads.losses import BinaryLabelCrossentropy
from keras_transfer.heads.multi_task import MultiTaskHead
from keras_transfer.utils import backend

__all__ = ["check_labels"]


class _Check(NamedTuple):
    """The check of one head's labels."""

    # labels (a tf.Tensor or tf.TensorSpec) -> whether they are the kind this check reads.
    applies: Callable[[Any], bool]
    # labels (a tf.Tensor it applies to) -> (all valid, message naming the first bad ones).
    run: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def check_labels(model: Any, data: Any, labels: Any = None, *, loss: Any = None) -> Any:
    """`data` checked against `model`'s head, on backends other than TensorFlow.

    A multiclass head's class indices must lie in `[0, num_classes)` (TensorFlow's wording);
    a binary or multilabel head's labels must be 0 or 1 when its loss is
    `BinaryLabelCrossentropy` (a `keras.losses.BinaryCrossentropy` given on purpose takes
    soft labels). Labels given as arrays (`labels`, or `data` as a `(x, y[, weights])`
    tuple such as `validation_data`) are checked now and a bad one raises `ValueError`; a
    `tf.data.Dataset` of `(x, y, ...)` comes back mapped with the check, which raises
    `tf.errors.InvalidArgumentError` at the first bad batch. Multi-task labels (a dict by
    head name) are checked head by head. Anything else (a generator, a `PyDataset`, soft or
    one-hot label vectors) passes unchanged.

    Args:
        model: a model with a keras_transfer `head` (`ClassificationHead` or
            `MultiTaskHead`); any other model passes its data through.
        data: what `fit` reads as `x` (or `validation_data`).
        labels: `fit`'s `y`, when `data` holds the inputs only.
        loss: the loss `model` trains with; default its compiled loss (or the head's
            default before `compile`).

    Returns:
        `data`, or the dataset that checks its labels.

    Raises:
        ValueError: an array label the head cannot take.

    Example:

    ```python
    check_labels(model, images, np.array([0, 1, 5]))  # ValueError on JAX: label value of 5
    train = check_labels(model, train)  # a tf.data.Dataset checked as fit reads it
    ```
    """
    checks = {} if backend.is_tensorflow() else _head_checks(model, loss)
    if not checks:
        return data
    if labels is not None:
        _check_now(checks, labels)
    elif isinstance(data, tf.data.Dataset):
        return _check_in_pipeline(checks, data)
    elif isinstance(data, tuple | list) and len(data) in (2, 3):
        _check_now(checks, data[1])
    return data


def _head_checks(model: Any, loss: Any) -> dict[str | None, _Check]:
    """Head name (None for a single head) -> the check of its labels."""
    head = getattr(model, "head", None)
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None and isinstance(head, ClassificationHead | MultiTaskHead):
        loss = head.default_loss()
    if isinstance(head, ClassificationHead):
        check = _check_for(head, loss, prefix="")
        return {None: check} if check else {}
    if not isinstance(head, MultiTaskHead):
        return {}
    losses = loss if isinstance(loss, Mapping) else {}
    checks = {
        name: _check_for(sub, losses.get(name), prefix=f"Head {name}: ")
        for name, sub in head.heads.items()
    }
    return {name: check for name, check in checks.items() if check}


def _check_for(head: Any, loss: Any, prefix: str) -> _Check | None:
    if head.task == "multiclass":
        return _class_index_check(int(head.num_classes), prefix)
    if head.task in ("binary", "multilabel") and isinstance(loss, BinaryLabelCrossentropy):
        return _zero_one_check(prefix)
    return None


def _class_index_check(num_classes: int, prefix: str) -> _Check:
    message = prefix + (
        "Received a label value of {} which is outside the valid range of "
        f"[0, {num_classes}): class indices of a {num_classes}-class head run from 0 to "
        f"{num_classes - 1}. Check the labels, or the head's num_classes."
    )

    def applies(labels):
        vectors = labels.shape.rank == 2 and labels.shape[-1] == num_classes != 1
        # Not one-hot or soft label vectors (MixUp, CutMix).
        return (labels.dtype.is_integer or labels.dtype.is_floating) and not vectors

    def run(labels):
        indices = tf.reshape(labels, [-1])
        bad = tf.boolean_mask(indices, (indices < 0) | (indices >= num_classes))
        first = tf.concat([bad, tf.zeros([1], bad.dtype)], 0)[0]  # any value when none is bad
        return tf.size(bad) == 0, tf.strings.format(message, first)

    return _Check(applies, run)


def _zero_one_check(prefix: str) -> _Check:
    # The loss's own wording; `{0, 1}` in it is no placeholder (that is exactly `{}`).
    message = prefix + BINARY_LABELS_MESSAGE + " {}"

    def applies(labels):
        return labels.dtype.is_integer or labels.dtype.is_floating

    def run(labels):
        values = tf.cast(tf.reshape(labels, [-1]), tf.float32)
        bad = tf.boolean_mask(values, (values != 0.0) & (values != 1.0))
        return tf.size(bad) == 0, tf.strings.format(message, bad[:5], summarize=5)

    return _Check(applies, run)


def _labels_of(checks: dict[str | None, _Check], labels: Any):
    """(check, labels of its head) pairs present in `labels`."""
    if None in checks:
        return [] if isinstance(labels, Mapping) else [(checks[None], labels)]
    if not isinstance(labels, Mapping):
        return []
    return [(check, labels[name]) for name, check in checks.items() if name in labels]


def _check_now(checks: dict[str | None, _Check], labels: Any) -> None:
    for check, values in _labels_of(checks, labels):
        array = np.asarray(values)
        if array.dtype == object or array.size == 0:
            continue
        tensor = tf.convert_to_tensor(array)
        if not check.applies(tensor):
            continue
        valid, message = check.run(tensor)
        if not bool(valid):
            raise ValueError(message.numpy().decode())


def _check_in_pipeline(checks: dict[str | None, _Check], data: tf.data.Dataset):
    spec = data.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        return data  # no labels
    checked = [
        isinstance(values, tf.TensorSpec) and check.applies(values)  # not ragged or sparse
        for check, values in _labels_of(checks, spec[1])
    ]
    if not any(checked):
        return data  # no labels of a checked head, or not the kind it reads

    def check(inputs, labels, *rest):
        assertions = []
        for (check_head, values), applies in zip(_labels_of(checks, labels), checked):
            if applies:
                valid, message = check_head.run(values)
                assertions.append(tf.debugging.Assert(valid, [message]))
        with tf.control_dependencies(assertions):
            labels = tf.nest.map_structure(tf.identity, labels)
        return (inputs, labels, *rest)

    return data.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
