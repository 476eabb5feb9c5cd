"""The KerasHub image-backbone families keras_transfer supports, and how each is used headless:
how its token outputs are pooled, and whether its blocks are nested in one encoder layer.

KerasHub itself is imported lazily (`import_keras_hub`): it is an optional dependency (the
`keras_hub` extra, which the `text` extra includes).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import keras

__all__ = [
    "FAMILIES",
    "KerasHubFamily",
    "family_of",
    "find_image_backbone",
    "import_keras_hub",
    "image_tower",
    "supported_keras_hub_families",
    "token_pooling",
]

INSTALL_HINT = 'pip install "keras-transfer[keras_hub]" (the text extra includes it)'


def import_keras_hub():
    """The `keras_hub` module; a clear `ImportError` naming the extra when it is missing."""
    try:
        import keras_hub  # noqa: PLC0415 (optional dependency)
    except ImportError as error:
        raise ImportError(f"KerasHub backbones need keras-hub: {INSTALL_HINT}.") from error
    return keras_hub


@dataclasses.dataclass(frozen=True)
class KerasHubFamily:
    """One KerasHub image-backbone family as a keras_transfer backbone.

    Attributes:
        name: the family's name, KerasHub's model folder (`"vit"`, `"resnet"`).
        backbone_class: its class in `keras_hub.models` (`"ViTBackbone"`).
        tokens: how a `(batch, tokens, channels)` output is pooled, as the family's own
            classifier does: `"cls"` (the class token, first) or `"mean"` (of all tokens).
            Feature maps stay maps (the head pools them); vectors stay vectors.
        nested: the transformer blocks (or stages) are sublayers of one encoder layer of
            the backbone's graph, not layers of the graph itself.
        towers: classes of multi-modal models this family is the image tower of, read from
            their `vision_encoder` (a CLIP preset holds a `CLIPBackbone`).
    """

    name: str
    backbone_class: str
    tokens: str = "mean"
    nested: bool = False
    towers: tuple[str, ...] = ()


FAMILIES: tuple[KerasHubFamily, ...] = (
    KerasHubFamily("clip", "CLIPVisionEncoder", tokens="cls", towers=("CLIPBackbone",)),
    KerasHubFamily("cspnet", "CSPNetBackbone"),
    KerasHubFamily("deit", "DeiTBackbone", tokens="cls", nested=True),
    KerasHubFamily("densenet", "DenseNetBackbone"),
    KerasHubFamily("dinov2", "DINOV2Backbone", tokens="cls", nested=True),
    KerasHubFamily("dinov3", "DINOV3Backbone", tokens="cls", nested=True),
    KerasHubFamily("efficientnet", "EfficientNetBackbone"),
    KerasHubFamily("hgnetv2", "HGNetV2Backbone", nested=True),
    KerasHubFamily("mit", "MiTBackbone"),
    KerasHubFamily("mobilenet", "MobileNetBackbone"),
    KerasHubFamily("mobilenetv5", "MobileNetV5Backbone"),
    KerasHubFamily("resnet", "ResNetBackbone"),
    KerasHubFamily("siglip", "SigLIPVisionEncoder", towers=("SigLIPBackbone",)),
    KerasHubFamily("swin_transformer", "SwinTransformerBackbone"),
    KerasHubFamily("vgg", "VGGBackbone"),
    KerasHubFamily("vit", "ViTBackbone", tokens="cls", nested=True),
    KerasHubFamily("xception", "XceptionBackbone"),
)


def supported_keras_hub_families() -> dict[str, str]:
    """The KerasHub image-backbone families `create_backbone("keras_hub:...")` supports.

    Returns:
        `{family: KerasHub backbone class}`, e.g. `{"vit": "ViTBackbone", ...}`. CLIP and
        SigLIP presets hold the whole image-text model; their image tower is used.

    Example:
    ```python
    sorted(kt.supported_keras_hub_families())[:3]  # -> ['clip', 'cspnet', 'deit']
    ```
    """
    return {family.name: family.backbone_class for family in FAMILIES}


def _class_of(keras_hub: Any, name: str) -> type | None:
    return getattr(keras_hub.models, name, None)


def family_of(model: Any) -> KerasHubFamily | None:
    """The supported family of a KerasHub backbone, or `None` (another model, or keras-hub
    not imported: then no KerasHub model can exist)."""
    keras_hub = sys.modules.get("keras_hub")
    if keras_hub is None:
        return None
    for family in FAMILIES:
        cls = _class_of(keras_hub, family.backbone_class)
        if cls is not None and type(model) is cls:
            return family
    for family in FAMILIES:
        cls = _class_of(keras_hub, family.backbone_class)
        if cls is not None and isinstance(model, cls):
            return family
    return None


def image_tower(model: keras.Model) -> keras.Model:
    """The image backbone of a loaded KerasHub preset: the model itself, or the
    `vision_encoder` of an image-text model (CLIP, SigLIP); a clear error for others."""
    if family_of(model) is not None:
        return model
    keras_hub = import_keras_hub()
    for family in FAMILIES:
        for tower in family.towers:
            cls = _class_of(keras_hub, tower)
            if cls is not None and isinstance(model, cls):
                return model.vision_encoder
    raise ValueError(
        f"The KerasHub preset holds a {type(model).__name__}, which is not an image backbone "
        "keras_transfer supports. Supported families: "
        f"{', '.join(f'{n} ({c})' for n, c in supported_keras_hub_families().items())}."
    )


def find_image_backbone(model: Any) -> keras.Model | None:
    """The supported KerasHub image backbone that `model` is or holds as one of its layers
    (what `create_backbone("keras_hub:...")` builds), else `None`."""
    if not isinstance(model, keras.Model) or "keras_hub" not in sys.modules:
        return None
    if family_of(model) is not None:
        return model
    for layer in model.layers:
        if family_of(layer) is not None:
            return layer
    return None


def token_pooling(backbone: keras.Model) -> str:
    """How the token outputs of a supported KerasHub backbone are pooled: its family's
    `tokens`, except `"mean"` for a ViT without a class token (ViTImageClassifier's "gap")."""
    family = family_of(backbone)
    if family.tokens == "cls" and getattr(backbone, "use_class_token", True) is False:
        return "mean"
    return family.tokens
