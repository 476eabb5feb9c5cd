"""Which Keras backend runs the models, and a one-line stop where a feature needs another.

The core (backbones, heads, freezing, `fit_two_phase`, the feature cache, per-layer learning
rates, LoRA, `.keras` files, prediction, the command) runs on the TensorFlow and JAX backends.
A few features are TensorFlow programs by nature (TF Hub SavedModels, custom `tf.GradientTape`
training steps, SavedModel/TFLite export); on another backend they stop before doing any work
with `BackendError`, which names the backend and the alternative.
"""

from __future__ import annotations

import keras

__all__ = ["BackendError", "backend", "is_tensorflow", "require_tensorflow"]


class BackendError(RuntimeError):
    """A feature that needs a Keras backend other than the one running."""


def backend() -> str:
    """The running Keras backend's name: `"tensorflow"`, `"jax"`, `"torch"` or `"numpy"`."""
    return keras.backend.backend()


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (where `tf.distribute` strategies exist)."""
    return backend() == "tensorflow"


def require_tensorflow(feature: str, alternative: str) -> None:
    """Stops with a one-line `BackendError` unless Keras runs on TensorFlow.

    Args:
        feature: what needs TensorFlow, e.g. `"fit_domain_adaptation"`.
        alternative: what to do instead, e.g. `"set KERAS_BACKEND=tensorflow"`.

    Example:
    ```python
    require_tensorflow("TF Hub SavedModels", "use a keras.applications backbone")
    ```
    """
    if not is_tensorflow():
        raise BackendError(
            f"{feature} needs the TensorFlow backend, but Keras runs on {backend()!r}: "
            f"{alternative}."
        )
