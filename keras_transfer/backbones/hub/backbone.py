"""`create_backbone("hub:<handle>")`: a `Backbone` around a `HubBackbone` layer, and the
blocks `get_blocks` finds in models that hold one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.backbones.hub import layer as layer_lib

__all__ = ["create_hub_backbone"]

# Input sizes image models are commonly published at, to read the size from a handle.
_KNOWN_SIZES = (96, 128, 160, 192, 224, 240, 256, 260, 299, 300, 320, 331, 380, 384, 456, 480)


def _hub_layer(model: keras.Model) -> layer_lib.HubBackbone | None:
    if isinstance(model, layer_lib.HubBackbone):
        return model
    for layer in getattr(model, "layers", []):
        if isinstance(layer, layer_lib.HubBackbone):
            return layer
    return None


backbones_lib.register_block_finder(
    lambda model: _hub_layer(model) is not None, lambda model: _hub_layer(model).blocks()
)


def _size_from(handle: str, spec: Any) -> int:
    shape = getattr(spec, "shape", None)
    if shape is not None and shape.rank == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    sizes = [int(s) for s in re.findall(r"(?<![0-9])(\d{2,3})(?![0-9])", handle)]
    sizes = [s for s in sizes if s in _KNOWN_SIZES]
    return sizes[-1] if sizes else 224


def create_hub_backbone(
    handle: str,
    input_shape: Sequence[int | None] | None = None,
    *,
    default_size: int | None = None,
    preprocessing: str | None = "auto",
    trainable: bool = True,
    **kwargs: Any,
) -> backbones_lib.Backbone:
    """A `Backbone` around a TF2 SavedModel image model (what `create_backbone("hub:...")` builds).

    Args:
        handle: local SavedModel folder or TF Hub / Kaggle handle.
        input_shape: `(height, width, channels)`; defaults to the model's size.
        default_size: the input size the model was trained at. By default read from the
            module's input signature, else from the handle (`..._224_...`), else 224.
        preprocessing: `ImagePreprocessing` mode the classifier puts in front. `"auto"`:
            `"unit"` (x / 255, the TF Hub image convention of [0, 1] inputs) for modules
            taking float images, else `None`.
        trainable: whether the backbone starts trainable (freeze / unfreeze change it).
        **kwargs: `HubBackbone` arguments (`arguments`, `signature`, `output_key`,
            `block_pattern`, `load_options`, `tags`, `name`).

    Returns:
        A `Backbone` named `"hub:<handle>"`; its model is `Input -> HubBackbone`.
    """
    kwargs.setdefault("name", "hub_backbone")
    layer = layer_lib.HubBackbone(handle, trainable=trainable, **kwargs)
    spec = layer.module_input_spec
    if isinstance(spec, Mapping) and len(spec) == 1:
        spec = next(iter(spec.values()))
    size = int(default_size) if default_size else _size_from(layer.handle, spec)
    is_image = spec is None or (
        getattr(spec, "shape", None) is not None and spec.shape.rank == 4 and spec.dtype.is_floating
    )
    if input_shape is None:
        input_shape = (size, size, 3) if is_image else tuple(spec.shape[1:])
    if preprocessing == "auto":
        preprocessing = "unit" if is_image else None
    input_dtype = "float32" if is_image or spec is None else spec.dtype.name
    inputs = keras.Input(shape=tuple(input_shape), dtype=input_dtype, name="inputs")
    model = keras.Model(inputs, layer(inputs), name=f"hub_{_short_name(layer.handle)}")
    return backbones_lib.Backbone(f"hub:{layer.handle}", model, size, preprocessing)


def _short_name(handle: str) -> str:
    parts = [p for p in re.split(r"[/\\]", handle.rstrip("/")) if p and not p.isdigit()]
    return re.sub(r"[^0-9A-Za-z_]", "_", parts[-1] if parts else "model")


backbones_lib.register_backbone_prefix("hub:", create_hub_backbone)
