"""`create_backbone("keras_hub:<preset>")`: a KerasHub image backbone as a keras_transfer
`Backbone`, from a KerasHub preset name (`"vit_base_patch16_224_imagenet"`, a `kaggle://` or
`hf://` handle) or a local preset folder (what `save_to_preset` writes).

The `Backbone`'s model takes raw 0-255 RGB images like every keras_transfer backbone:

    images -> Rescaling (the preset's ImageConverter scale and offset) -> KerasHub backbone
           -> TokenPooling (transformers: class token or mean of tokens)

so a CNN gives its last feature map (the head pools it) and a transformer the pooled
vector its own KerasHub classifier would use.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer.backbones import registry
from keras_transfer.backbones.keras_hub import families
from keras_transfer.backbones.keras_hub.layers import TokenPooling

__all__ = ["create_keras_hub_backbone", "preset_image_converter"]

_CONVERTER_FILE = "image_converter.json"


def preset_image_converter(preset: str) -> keras.layers.Layer | None:
    """The preset's saved `ImageConverter`, or `None` when it has none.

    A local folder's `image_converter.json` is read as it is (a folder holding only a CLIP
    or SigLIP image tower has no converter class of its own); other presets go through
    `keras_hub.layers.ImageConverter.from_preset`.
    """
    keras_hub = families.import_keras_hub()
    if os.path.isdir(preset):
        path = os.path.join(preset, _CONVERTER_FILE)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return keras.saving.deserialize_keras_object(json.load(f))
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError, NotImplementedError):
        return None


def _scale_and_offset(preset, converter, scale, offset) -> tuple[Any, Any]:
    if scale is None and offset is None and converter is None:
        raise ValueError(
            f"The KerasHub preset {preset!r} has no image converter ({_CONVERTER_FILE}), so "
            "its input scaling is unknown. Save the one it was trained with into the folder "
            "(e.g. keras_hub.layers.ImageConverter(image_size=(224, 224), scale=1 / 255)"
            ".save_to_preset(folder)), or pass scale= and offset= (raw 0-255 pixels are "
            "multiplied by scale, then offset is added)."
        )
    if converter is not None:
        scale = converter.scale if scale is None else scale
        offset = converter.offset if offset is None else offset
    return (1.0 if scale is None else scale), (0.0 if offset is None else offset)


def _fixed_size(backbone: keras.Model) -> tuple[int, int] | None:
    shape = getattr(backbone, "image_shape", None)
    if shape and shape[0] is not None and shape[1] is not None:
        return int(shape[0]), int(shape[1])
    return None


def _load(preset: str, load_weights: bool, image_shape=None) -> keras.Model:
    keras_hub = families.import_keras_hub()
    kwargs = {} if image_shape is None else {"image_shape": tuple(image_shape)}
    try:
        loaded = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights, **kwargs)
    except Exception as error:
        if image_shape is None:
            raise
        raise ValueError(
            f"The KerasHub preset {preset!r} does not load at the image shape {image_shape}: "
            f"{error}\nIts architecture takes one input size only: use image_size equal to "
            "its pretrained size (or leave input_shape / --image_size unset)."
        ) from error
    return families.image_tower(loaded)


def _load_weights_flag(weights: Any) -> bool:
    if weights in ("imagenet", "preset"):
        return True
    if weights is None:
        return False
    raise ValueError(
        f"weights={weights!r} for a KerasHub backbone: use 'imagenet' or 'preset' (the "
        "preset's own pretrained weights) or None (random initialisation of its "
        "architecture). To use other weights, save them as a preset folder "
        "(backbone.save_to_preset(folder)) and name that folder."
    )


def _short_name(preset: str) -> str:
    parts = [p for p in re.split(r"[/\\]", preset.rstrip("/\\")) if p]
    return re.sub(r"[^0-9A-Za-z_]", "_", parts[-1] if parts else "preset")


def create_keras_hub_backbone(
    preset: str,
    input_shape: Sequence[int | None] | None = None,
    *,
    weights: str | None = "imagenet",
    scale: float | Sequence[float] | None = None,
    offset: float | Sequence[float] | None = None,
    name: str | None = None,
) -> registry.Backbone:
    """A KerasHub image backbone as a `Backbone` (what `create_backbone("keras_hub:...")`
    builds), with the preset's own input scaling and its pooled features.

    Args:
        preset: a KerasHub preset name or handle, or a local preset folder
            (`backbone.save_to_preset(folder)`, with the `ImageConverter` saved beside it).
        input_shape: `(height, width, 3)`; defaults to the preset's image size. A family
            with position embeddings of one size (ViT, DeiT) takes its preset's size only.
        weights: `"imagenet"` or `"preset"` (the preset's pretrained weights), or `None`
            (random initialisation of the preset's architecture).
        scale, offset: the input scaling (`pixels * scale + offset`, each a number or one
            per channel); by default the preset's `ImageConverter`'s.
        name: the model's name; default `"keras_hub_<family>"`.

    Returns:
        A `Backbone` named `"keras_hub:<preset>"` whose model takes raw 0-255 RGB images.

    Raises:
        ImportError: keras-hub is not installed.
        ValueError: the preset holds no supported image backbone, has no image converter
            (and no `scale` was given), or cannot take `input_shape`.

    Example:
    ```python
    backbone = kt.create_backbone("keras_hub:/path/to/vit_preset", weights=None)
    backbone.block_names()  # -> ['stem', 'transformer_block_1', ..., 'transformer_block_12']
    ```
    """
    preset = os.fspath(preset)
    load_weights = _load_weights_flag(weights)
    hub_backbone = _load(preset, load_weights)
    converter = preset_image_converter(preset)
    scale, offset = _scale_and_offset(preset, converter, scale, offset)
    fixed = _fixed_size(hub_backbone)
    converter_size = getattr(converter, "image_size", None)
    size = fixed or (tuple(converter_size) if converter_size else None) or (224, 224)
    if input_shape is None:
        input_shape = (*size, 3)
    input_shape = tuple(int(d) if d is not None else None for d in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3) RGB for {preset!r}, got {input_shape}."
        )
    if fixed and tuple(input_shape[:2]) != fixed:
        hub_backbone = _load(preset, load_weights, image_shape=input_shape)
    family = families.family_of(hub_backbone)
    inputs = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(scale, offset, name="preprocessing")(inputs)
    backbone_inputs = hub_backbone.input
    if isinstance(backbone_inputs, dict):
        x = {key: x for key in backbone_inputs}
    features = _final_output(hub_backbone, hub_backbone(x))
    if len(features.shape) == 3:
        features = TokenPooling(families.token_pooling(hub_backbone), name="pooling")(features)
    model = keras.Model(inputs, features, name=name or f"keras_hub_{family.name}")
    return registry.Backbone(f"keras_hub:{preset}", model, int(size[0]), None)


def _final_output(backbone: keras.Model, outputs):
    """The backbone's last features: a dict of stage outputs gives its last stage's."""
    if not isinstance(outputs, dict):
        return outputs
    stage_names = getattr(backbone, "stage_names", None)
    if stage_names and stage_names[-1] in outputs:
        return outputs[stage_names[-1]]
    if "sequence_output" in outputs:
        return outputs["sequence_output"]
    return outputs[sorted(outputs)[-1]]


registry.register_backbone_prefix("keras_hub:", create_keras_hub_backbone)
