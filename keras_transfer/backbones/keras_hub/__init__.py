"""KerasHub image backbones as keras_transfer backbones: the supported families and how each
is used headless (`families`), `TokenPooling` and per-block outputs (`layers`), their blocks
(`blocks`) and `create_backbone("keras_hub:<preset>")` (`backbone`).

Importing this module does not import keras-hub; building a backbone does.
"""

from keras_transfer.backbones.keras_hub import backbone
from keras_transfer.backbones.keras_hub import blocks
from keras_transfer.backbones.keras_hub import families
from keras_transfer.backbones.keras_hub import layers
from keras_transfer.backbones.keras_hub.backbone import create_keras_hub_backbone
from keras_transfer.backbones.keras_hub.backbone import preset_image_converter
from keras_transfer.backbones.keras_hub.blocks import KerasHubBlock
from keras_transfer.backbones.keras_hub.blocks import keras_hub_blocks
from keras_transfer.backbones.keras_hub.families import KerasHubFamily
from keras_transfer.backbones.keras_hub.families import supported_keras_hub_families
from keras_transfer.backbones.keras_hub.layers import TokenPooling

__all__ = [
    "backbone",
    "blocks",
    "families",
    "layers",
    "KerasHubBlock",
    "KerasHubFamily",
    "TokenPooling",
    "create_keras_hub_backbone",
    "keras_hub_blocks",
    "preset_image_converter",
    "supported_keras_hub_families",
]
