"""L2-SP: keep fine-tuned weights near their pretrained values (Li, Grandvalet & Davoine 2018).

The penalty is `alpha * ||w - w0||^2` over the backbone's weights `w` and their starting
(pretrained) values `w0`, plus `beta * ||w||^2` over the new head's kernels. It is made of
ordinary Keras weight regularizers, so `model.fit` adds it to the loss with no change to the
training loop, only for the weights trainable at the time (a partly frozen backbone pays
nothing for its frozen blocks, and blocks unfrozen later join in), and any optimizer,
including a per-variable learning-rate one, sees it as part of the gradient.

The paper writes `alpha / 2` and `beta / 2`: its `alpha=0.1, beta=0.01` are `alpha=0.05,
beta=0.005` here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.heads.classification import ClassificationHead

__all__ = ["L2SP", "apply_l2sp"]


@keras.saving.register_keras_serializable(package="keras_transfer")
class L2SP(keras.regularizers.Regularizer):
    """Penalises the squared distance of a weight from a reference value: `alpha * ||w - w0||^2`.

    The reference is saved in the regularizer's config (base64 float32), so a model carrying
    L2-SP regularizers reloads from `.keras` with its pretrained reference and can keep
    training with the same penalty; this stores a second copy of the regularised weights.

    Args:
        alpha: strength of the penalty.
        reference: the starting value `w0` (an array with the weight's shape).

    Example:
    ```python
    layer = model.get_layer("conv_pw_13")
    layer.kernel.regularizer = L2SP(0.05, layer.kernel.numpy())
    ```
    """

    def __init__(self, alpha: float, reference: Any):
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}.")
        self.alpha = float(alpha)
        self.reference = _decode(reference)

    def __call__(self, x):
        reference = ops.cast(ops.convert_to_tensor(self.reference), x.dtype)
        return self.alpha * ops.sum(ops.square(x - reference))

    def get_config(self):
        return {"alpha": self.alpha, "reference": _encode(self.reference)}


def _encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {
        "shape": list(array.shape),
        "float32_base64": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(reference: Any) -> np.ndarray:
    if isinstance(reference, Mapping):
        if "float32_base64" not in reference or "shape" not in reference:
            raise ValueError(
                "An L2SP reference given as a mapping needs 'shape' and 'float32_base64' keys "
                f"(what L2SP.get_config writes), got keys {sorted(reference)}."
            )
        data = base64.b64decode(reference["float32_base64"])
        return np.frombuffer(data, dtype=np.float32).reshape(reference["shape"]).copy()
    if reference is None:
        raise ValueError("L2SP needs the reference (pretrained) value of the weight.")
    return np.array(keras.ops.convert_to_numpy(reference), dtype=np.float32)


def _regularizer_attribute(layer: keras.layers.Layer, variable: keras.Variable) -> str | None:
    # Keras layers build each weight with the regularizer stored under `<weight>_regularizer`
    # (`depthwise_regularizer` for the `kernel` of DepthwiseConv2D); setting it there puts
    # it in the layer config, so it is saved and rebuilt with the model.
    name = variable.name
    if getattr(layer, name, None) is not variable:
        return None
    candidates = [f"{name}_regularizer", f"{name.replace('_kernel', '')}_regularizer"]
    if name == "kernel":
        candidates.append("depthwise_regularizer")
    return next((c for c in candidates if hasattr(layer, c)), None)


def _set_regularizer(layer, variable, regularizer) -> bool:
    variable.regularizer = regularizer
    attribute = _regularizer_attribute(layer, variable)
    if attribute is not None:
        setattr(layer, attribute, regularizer)
    return attribute is not None


def _trainable_kind(layer: keras.layers.Layer) -> list[keras.Variable]:
    # The layer's own weights that train when it is trainable (not BatchNorm moving
    # statistics or seed states). `variable.trainable` cannot tell: freezing a layer
    # clears it on its variables.
    return _keras_compat.own_trainable_variables(layer)


def apply_l2sp(
    model: keras.Model,
    alpha: float = 0.05,
    beta: float = 0.005,
    *,
    backbone: keras.Model | None = None,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Adds L2-SP regularizers to `model`: toward the current backbone weights, and L2 on the head.

    Call it on the model with its pretrained weights loaded (their current values become the
    reference), then `compile` and `fit` as usual: `compile` traces the loss with the
    regularizers, and every trainable backbone weight pays `alpha * ||w - w0||^2`, every head
    kernel `beta * ||w||^2`. Frozen weights are skipped by Keras, so this works with a partly
    frozen backbone and with `GradualUnfreezing`. Calling it again replaces the regularizers
    but keeps the references of weights that already have one (e.g. restored with a
    reloaded `.keras` model), so the pull stays toward the pretrained values.

    A `ClassificationHead` gets the L2 as its `kernel_regularizer`, so it is saved with the
    model like the backbone's L2-SP.

    Args:
        model: a `create_classifier` model or any model nesting a known backbone.
        alpha: strength of the pull toward the reference on backbone weights (0 disables).
        beta: strength of plain L2 on the other layers' kernels (0 disables).
        backbone: the sub-model whose weights get L2-SP; found automatically by default.
        reference: variable path -> starting value, for weights whose reference is not their
            current value (e.g. a reloaded fine-tuned model and the pretrained values).

    Returns:
        Counts: `{"backbone": n, "head": m, "unsaved": k}`; `unsaved` regularizers sit on
        weights of layers without a `<weight>_regularizer` attribute (they act in training
        but are not written to the model config).
    """
    if beta < 0 or not np.isfinite(beta):
        raise ValueError(f"`beta` must be a finite number >= 0, got {beta!r}.")
    if backbone is None:
        backbone = backbones_lib.backbone_of(model, nested=True).model
    reference = dict(reference or {})
    counts = {"backbone": 0, "head": 0, "unsaved": 0}
    backbone_ids = {id(v) for v in backbone.weights}
    for layer in _keras_compat.flatten_layers(backbone, include_self=True):
        for variable in _trainable_kind(layer):
            value = reference.pop(variable.path, None)
            if value is None and isinstance(variable.regularizer, L2SP):
                value = variable.regularizer.reference  # keep the original starting point
            regularizer = (
                L2SP(alpha, variable.numpy() if value is None else value) if alpha else None
            )
            if regularizer is not None and regularizer.reference.shape != tuple(variable.shape):
                raise ValueError(
                    f"reference[{variable.path!r}] has shape {regularizer.reference.shape}, "
                    f"the weight has {tuple(variable.shape)}."
                )
            saved = _set_regularizer(layer, variable, regularizer)
            counts["backbone"] += regularizer is not None
            counts["unsaved"] += regularizer is not None and not saved
    if reference:
        paths = sorted(v.path for v in backbone.weights)[:5]
        raise ValueError(
            f"reference has paths that are not backbone weights: {sorted(reference)[:5]}. "
            f"Backbone weight paths look like {paths}."
        )
    for layer in _keras_compat.flatten_layers(model, include_self=True):
        if isinstance(layer, ClassificationHead):
            # The head rebuilds its Dense layers from its own config on load: the L2 must
            # be there to be saved.
            layer.kernel_regularizer = keras.regularizers.L2(beta) if beta else None
        for variable in _trainable_kind(layer):
            if id(variable) in backbone_ids or len(variable.shape) < 2:
                continue  # biases and scales are not decayed, as is usual for weight decay
            regularizer = keras.regularizers.L2(beta) if beta else None
            saved = _set_regularizer(layer, variable, regularizer)
            counts["head"] += regularizer is not None
            counts["unsaved"] += regularizer is not None and not saved
    if getattr(model, "compiled", False):
        # The compiled step traced the old losses.
        model.make_train_function(force=True)
        model.make_test_function(force=True)
    return counts
