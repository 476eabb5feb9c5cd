"""Class imbalance: class counts, class weights and the imbalance warning.

`resolve_class_weight` turns `class_weight="balanced"` or a `{class: weight}` dict into the
`{class_index: weight}` dict Keras' own `model.fit(class_weight=...)` takes. "balanced" is
scikit-learn's heuristic (King & Zeng 2001): class `c` gets `n / (k * n_c)` for `n` training
examples of `k` classes, `n_c` of them in class `c`, so every class carries the same total
weight and the weights average 1 over the training set. Keras turns the dict into per-example
weights, and its default loss reduction divides the weighted sum by the batch size: with
"balanced" weights the loss of an epoch is the class-balanced mean of the per-example losses.

Labels are counted in one pass: integer labels (`(n,)` or `(n, 1)`), one-hot or soft labels
(`(n, k)`, counted at their argmax as Keras weights them) and one-sigmoid binary labels
(rounded to 0/1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.data.image_data import is_image_data

__all__ = [
    "IMBALANCE_WARNING_RATIO",
    "balanced_weights",
    "class_counts",
    "class_weight_classes",
    "empty_classes",
    "imbalance_warning",
    "label_indices",
    "parse_class_weight",
    "resolve_class_weight",
]

# The data summary warns when the largest class has more than this many times the examples
# of the smallest.
IMBALANCE_WARNING_RATIO = 3.0


def label_indices(labels: Any) -> np.ndarray:
    """Class indices of integer, one-hot (argmax) or one-sigmoid 0/1 (rounded) labels."""
    labels = np.asarray(labels)
    if labels.ndim >= 2 and labels.shape[-1] > 1:
        return labels.reshape(-1, labels.shape[-1]).argmax(axis=-1)
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f":
        labels = np.round(labels)
    return labels.astype(np.int64)


def class_counts(data: Any, num_classes: int | None = None) -> np.ndarray:
    """The number of examples of each class.

    Args:
        data: labels (an array: integer, one-hot or 0/1), `CachedFeatures` (its labels), an
            `ImageData` (its training counts, read from the file listing without decoding,
            or one pass over `train` when the loader did not record them), or a batched
            `tf.data.Dataset` (or iterable) of `(inputs, labels[, sample_weights])`, read in
            one pass.
        num_classes: the length of the result; default: the largest label + 1.

    Returns:
        An int64 array, `counts[c]` = number of examples of class `c`.

    Example:
    ```python
    class_counts(np.array([0, 0, 1, 2, 2, 2]))  # -> array([2, 1, 3])
    ```
    """
    if is_image_data(data) and getattr(data, "class_counts", None) is not None:
        counts = np.asarray(data.class_counts, dtype=np.int64)
    elif is_image_data(data):
        counts = class_counts(data.train, num_classes or len(data.class_names))
    elif hasattr(data, "labels") and hasattr(data, "features"):
        counts = np.bincount(label_indices(data.labels))
    elif isinstance(data, np.ndarray | list | tuple) and not _is_batch_iterable(data):
        counts = np.bincount(label_indices(data)) if len(data) else np.zeros(0, np.int64)
    else:
        if isinstance(data, tf.data.Dataset):
            # Only the labels are needed: drop the inputs as early as possible.
            data = data.map(lambda *batch: batch[1])
            batches = (np.asarray(labels) for labels in data)
        else:
            batches = (np.asarray(_batch_labels(batch)) for batch in data)
        counts = np.zeros(0, np.int64)
        for labels in batches:
            found = np.bincount(label_indices(labels))
            counts = _add(counts, found)
    if (counts < 0).any():
        raise ValueError("Labels must be class indices >= 0.")
    if num_classes is not None:
        if len(counts) > num_classes:
            raise ValueError(
                f"A label {len(counts) - 1} was found, but there are {num_classes} classes "
                f"(labels 0..{num_classes - 1}). Check the labels or num_classes."
            )
        counts = _add(np.zeros(num_classes, np.int64), counts)
    return counts.astype(np.int64)


def _is_batch_iterable(data) -> bool:
    return isinstance(data, list | tuple) and bool(data) and isinstance(data[0], tuple | list)


def _batch_labels(batch):
    if not isinstance(batch, tuple | list) or len(batch) < 2:
        raise ValueError(
            f"Counting classes needs batches of (inputs, labels); got {type(batch).__name__}."
        )
    return batch[1]


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = max(len(a), len(b))
    return np.pad(a, (0, size - len(a))) + np.pad(b, (0, size - len(b)))


def class_weight_classes(model: keras.Model) -> tuple[int, list[str] | None]:
    """`(number of classes, class names or None)` that class weights of `model` index.

    A one-sigmoid binary head has two classes (labels 0 and 1). Multi-label and regression
    heads have no single class per example: class weights do not apply (an error).
    """
    head = getattr(model, "head", None)
    task = getattr(head, "task", None)
    if task in ("multilabel", "regression"):
        raise ValueError(
            f"class_weight needs one class per example, but the model's head is a {task} "
            "head. For multi-label data pass sample weights in the dataset instead, or a "
            "weighted loss (e.g. keras.losses.BinaryFocalCrossentropy)."
        )
    names = getattr(model, "class_names", None)
    if task == "binary":
        return 2, (list(names) if names and len(names) == 2 else None)
    if head is not None and getattr(head, "num_classes", None):
        return int(head.num_classes), (list(names) if names else None)
    units = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if not isinstance(units, int):
        raise ValueError(
            "class_weight needs a single-output classifier; this model's outputs are "
            f"{model.output_shape}."
        )
    return (2 if units == 1 else units), None


def parse_class_weight(text: str | None) -> str | dict[str, float] | None:
    """A command-line `--class_weight` value: `"balanced"`, `"none"` / empty (no weights)
    or a JSON object such as `'{"dogs": 10}'` or `'{"0": 1, "1": 10}'`."""
    if text is None:
        return None
    stripped = str(text).strip()
    if stripped.lower() in ("", "none"):
        return None
    if stripped.lower() == "balanced":
        return "balanced"
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"class_weight={text!r} is not 'balanced', 'none' or a JSON object such as "
            f'\'{{"dogs": 10}}\' or \'{{"0": 1, "1": 10}}\' ({error}).'
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"class_weight={text!r} must be a JSON object mapping a class index or name to a "
            "weight, e.g. '{\"dogs\": 10}'."
        )
    return value


def _class_index(key: Any, num_classes: int, class_names: Sequence[str] | None) -> int:
    names = list(class_names or [])
    fix = f"use class indices 0..{num_classes - 1}" + (f" or class names {names}" if names else "")
    if isinstance(key, str) and key in names:
        return names.index(key)
    index = None
    if isinstance(key, bool):
        index = None
    elif isinstance(key, int | np.integer):
        index = int(key)
    elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
        index = int(key)
    if index is None or not 0 <= index < num_classes:
        raise ValueError(
            f"class_weight has a weight for class {key!r}, which does not exist: the model "
            f"has {num_classes} classes. Remove that entry or {fix}."
        )
    return index


def resolve_class_weight(
    class_weight: str | Mapping[Any, float] | None,
    data: Any = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[int, float] | None:
    """The `{class_index: weight}` dict for Keras' `model.fit(class_weight=...)`.

    Args:
        class_weight: `None` or `"none"` (no weighting), `"balanced"` (weights
            `n / (k * n_c)` from the class counts of `data`), or a dict mapping a class
            index (an int, or its string as in JSON) or a class name to a weight >= 0.
            Classes missing from the dict keep weight 1.
        data: the training labels or data, for `"balanced"` (anything `class_counts`
            takes; a dataset is read once).
        num_classes: the model's number of classes `k` (default: from the labels).
        class_names: names accepted as dict keys, and used in error messages.

    Returns:
        The dict (every class present for `"balanced"`), or `None` for no weighting.

    Raises:
        ValueError: a weight for a class that does not exist, a negative or non-finite
            weight, all weights zero, or `"balanced"` with a class that has no training
            example.

    Example:
    ```python
    resolve_class_weight("balanced", np.array([0, 0, 0, 1]))  # -> {0: 0.667, 1: 2.0}
    resolve_class_weight({"dogs": 10.0}, class_names=["cats", "dogs"], num_classes=2)
    ```
    """
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    if class_weight is None or (isinstance(class_weight, str) and class_weight.lower() == "none"):
        return None
    if isinstance(class_weight, str):
        if class_weight.lower() != "balanced":
            raise ValueError(
                f"class_weight={class_weight!r}: use 'balanced', None, or a dict "
                "{class index or name: weight}."
            )
        if data is None:
            raise ValueError("class_weight='balanced' needs the training labels (data=...).")
        counts = class_counts(data, num_classes)
        return balanced_weights(counts, class_names)
    if not isinstance(class_weight, Mapping):
        raise TypeError(
            f"class_weight must be 'balanced', None or a dict {{class: weight}}, got "
            f"{type(class_weight).__name__}."
        )
    if num_classes is None:
        if data is None:
            raise ValueError("Pass num_classes (or class_names, or data) to check class_weight.")
        num_classes = len(class_counts(data))
    resolved: dict[int, float] = {}
    for key, value in class_weight.items():
        index = _class_index(key, num_classes, class_names)
        name = f"class {key!r}"
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"class_weight for {name} must be a number, got {value!r}.") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"class_weight for {name} is {value!r}: weights must be finite and >= 0 "
                "(0 ignores the class; use a weight above 1 to up-weight a rare class)."
            )
        if index in resolved:
            raise ValueError(f"class_weight gives class {index} twice (by index and by name).")
        resolved[index] = weight
    if resolved and len(resolved) == num_classes and not any(resolved.values()):
        raise ValueError("class_weight gives every class weight 0: nothing would be learned.")
    return resolved or None


def empty_classes(counts: Any, class_names: Sequence[str] | None = None) -> str:
    """The classes with a count of 0, as `"1 ('dogs'), 3"` for an error message; `""` if none."""
    empty = [int(c) for c in np.flatnonzero(np.asarray(counts) == 0)]
    return ", ".join(
        f"{c} ({class_names[c]!r})" if class_names and c < len(class_names) else str(c)
        for c in empty
    )


def balanced_weights(counts: Any, class_names: Sequence[str] | None = None) -> dict[int, float]:
    """`{c: n / (k * n_c)}` for the class counts `counts` (every class must have examples)."""
    counts = np.asarray(counts, dtype=np.int64)
    empty = empty_classes(counts, class_names)
    if empty:
        raise ValueError(
            f"class_weight='balanced' needs examples of every class, but class(es) "
            f"{empty} have none in the training data (weight n / (k * 0)). Add "
            "images of that class, remove the class, or pass an explicit dict of weights."
        )
    total, k = counts.sum(), len(counts)
    return {c: float(total / (k * n)) for c, n in enumerate(counts)}


def imbalance_warning(
    counts: Any,
    class_names: Sequence[str] | None = None,
    ratio: float = IMBALANCE_WARNING_RATIO,
) -> str | None:
    """A warning when the largest class has more than `ratio` times the examples of the
    smallest non-empty one (empty classes are reported by the loaders), else `None`."""
    counts = np.asarray(counts, dtype=np.int64)
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        return None
    largest = present[counts[present].argmax()]
    smallest = present[counts[present].argmin()]
    if counts[largest] <= ratio * counts[smallest]:
        return None

    def name(c):
        return repr(class_names[c]) if class_names and c < len(class_names) else f"class {c}"

    return (
        f"Imbalanced training data: the largest class {name(largest)} has "
        f"{counts[largest]} examples, {counts[largest] / counts[smallest]:.1f}x the "
        f"{counts[smallest]} of the smallest, {name(smallest)}. Accuracy will favour the large "
        "classes: consider class_weight='balanced' (--class_weight=balanced) and read the "
        "balanced accuracy and per-class recall of the validation report."
    )
