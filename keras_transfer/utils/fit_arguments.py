"""Arguments the package passes to Keras' `model.fit`, decided in one place."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["no_fit_shuffle"]


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
