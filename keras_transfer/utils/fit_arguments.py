"""Arguments the package passes to Keras' `model.fit`, decided in one place."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from keras_transfer.utils import backend

__all__ = ["batches_per_epoch", "check_image_size", "check_not_empty", "no_fit_shuffle"]


def no_fit_shuffle(train_data: Any, fit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`fit_kwargs` with `shuffle=False` when `train_data` is a `tf.data.Dataset` and no
    `shuffle` is given: a dataset shuffles itself, and Keras ignores (and warns about) fit's
    default `shuffle=True` for one.

    Args:
        train_data: what `fit` will train on.
        fit_kwargs: the other `fit` arguments; updated in place and returned.

    Returns:
        `fit_kwargs`.

    Example:

    ```python
    model.fit(dataset, **no_fit_shuffle(dataset, {"epochs": 3}))
    ```
    """
    if isinstance(train_data, tf.data.Dataset):
        fit_kwargs.setdefault("shuffle", False)
    return fit_kwargs


def batches_per_epoch(train_data: Any, fit_kwargs: dict[str, Any]) -> int | None:
    """The optimizer steps of one `fit` epoch on `train_data`, or `None` when that is not
    known before training (a dataset of unknown or infinite cardinality without
    `steps_per_epoch`).

    Example:

    ```python
    batches_per_epoch(np.zeros((100, 4)), {"batch_size": 32})  # -> 4
    ```
    """
    if fit_kwargs.get("steps_per_epoch"):
        return int(fit_kwargs["steps_per_epoch"])
    if isinstance(train_data, tf.data.Dataset):
        cardinality = int(train_data.cardinality())
        return cardinality if cardinality > 0 else None
    if isinstance(train_data, tuple | list) and train_data:  # (x, y) arrays
        train_data = train_data[0]
    if hasattr(train_data, "__len__") and not hasattr(train_data, "shape"):
        return len(train_data) or None  # a keras.utils.PyDataset: batches
    rows = getattr(train_data, "shape", (None,))[0]
    return math.ceil(rows / fit_kwargs.get("batch_size", 32)) if rows else None


def check_not_empty(data: Any, name: str) -> None:
    """Raises a `ValueError` naming `name` when `data` is known to yield no batches (a
    dataset of cardinality 0, an array of 0 rows): fit would train on nothing."""
    if isinstance(data, tf.data.Dataset):
        # -1 is infinite, -2 unknown (e.g. after `filter`): only a known 0 is an error.
        cardinality = int(data.cardinality())
        empty = cardinality == 0
        if cardinality == tf.data.UNKNOWN_CARDINALITY and not backend.is_tensorflow():
            # Keras' JAX trainer reads a first batch before any callback runs, and an empty
            # dataset stops it with a bare StopIteration: look for that batch here.
            empty = not any(True for _ in data.take(1))
    else:
        empty = getattr(data, "shape", None) is not None and len(data.shape) and data.shape[0] == 0
    if empty:
        raise ValueError(
            f"{name} is empty: it yields no batches. Check that the folder or split has "
            "examples; with drop_remainder=True, a dataset smaller than one batch has no "
            "batches: lower batch_size."
        )


def check_image_size(model: Any, data: Any, name: str) -> None:
    """Raises a `ValueError` naming both sizes and the fix when `data`'s images (a
    `tf.data.Dataset` of `(images, labels)`) do not have the height and width `model`
    takes; Keras would fail later with a traceback through the traced training step."""
    if not isinstance(data, tf.data.Dataset):
        return
    spec = data.element_spec
    images = spec[0] if isinstance(spec, tuple) else spec
    input_shape = getattr(model, "input_shape", None)
    if not isinstance(images, tf.TensorSpec) or not isinstance(input_shape, tuple):
        return
    data_size, model_size = tuple(images.shape[-3:-1]), tuple(input_shape[1:3])
    if len(data_size) != 2 or None in data_size or None in model_size:
        return
    if data_size != model_size:
        raise ValueError(
            f"{name} has {data_size[0]}x{data_size[1]} images but the model takes "
            f"{model_size[0]}x{model_size[1]}. Build the backbone at the data's size "
            f"(create_classifier(name, data) or create_backbone(name, input_shape="
            f"({data_size[0]}, {data_size[1]}, 3))), or load the data at the model's "
            f"(image_size={model_size[0]})."
        )
