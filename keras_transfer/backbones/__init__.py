"""Headless backbones and their blocks: the registry and its `keras.applications` families
(`applications`), TF Hub SavedModels (`hub`), KerasHub image backbones (`keras_hub`), each
backbone's input preprocessing, and freezing by block.
"""

from keras_transfer.backbones import applications
from keras_transfer.backbones import freezing
from keras_transfer.backbones import hub
from keras_transfer.backbones import keras_hub
from keras_transfer.backbones import preprocessing
from keras_transfer.backbones import registry
from keras_transfer.backbones.freezing import backbone_and_blocks
from keras_transfer.backbones.freezing import freeze
from keras_transfer.backbones.freezing import select_blocks
from keras_transfer.backbones.freezing import trainable_blocks
from keras_transfer.backbones.freezing import unfreeze
from keras_transfer.backbones.freezing import unfreeze_request
from keras_transfer.backbones.hub import HubBackbone
from keras_transfer.backbones.hub import HubBlock
from keras_transfer.backbones.hub import HubModuleUnavailableError
from keras_transfer.backbones.hub import HubVariableGroup
from keras_transfer.backbones.hub import UnsafeCacheError
from keras_transfer.backbones.hub import cache_dir
from keras_transfer.backbones.hub import create_hub_backbone
from keras_transfer.backbones.hub import hub_block_names
from keras_transfer.backbones.hub import resolve_handle
from keras_transfer.backbones.hub import trust
from keras_transfer.backbones.keras_hub import TokenPooling
from keras_transfer.backbones.keras_hub import create_keras_hub_backbone
from keras_transfer.backbones.keras_hub import supported_keras_hub_families
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import Backbone
from keras_transfer.backbones.registry import BackboneSpec
from keras_transfer.backbones.registry import Block
from keras_transfer.backbones.registry import BlockRules
from keras_transfer.backbones.registry import WeightsUnavailableError
from keras_transfer.backbones.registry import backbone_of
from keras_transfer.backbones.registry import backbone_prefix
from keras_transfer.backbones.registry import blocks_from_rules
from keras_transfer.backbones.registry import create_backbone
from keras_transfer.backbones.registry import find_backbone_model
from keras_transfer.backbones.registry import find_block
from keras_transfer.backbones.registry import get_blocks
from keras_transfer.backbones.registry import get_spec
from keras_transfer.backbones.registry import keras_cache_dir
from keras_transfer.backbones.registry import list_backbones
from keras_transfer.backbones.registry import register_backbone
from keras_transfer.backbones.registry import register_backbone_prefix
from keras_transfer.backbones.registry import register_block_finder

__all__ = [
    "registry",
    "applications",
    "preprocessing",
    "freezing",
    "hub",
    "keras_hub",
    "Backbone",
    "BackboneSpec",
    "Block",
    "BlockRules",
    "WeightsUnavailableError",
    "backbone_of",
    "backbone_prefix",
    "blocks_from_rules",
    "create_backbone",
    "find_backbone_model",
    "find_block",
    "get_blocks",
    "get_spec",
    "keras_cache_dir",
    "list_backbones",
    "register_backbone",
    "register_backbone_prefix",
    "register_block_finder",
    "ImagePreprocessing",
    "backbone_and_blocks",
    "freeze",
    "select_blocks",
    "trainable_blocks",
    "unfreeze",
    "unfreeze_request",
    "HubBackbone",
    "HubBlock",
    "HubModuleUnavailableError",
    "HubVariableGroup",
    "UnsafeCacheError",
    "cache_dir",
    "create_hub_backbone",
    "hub_block_names",
    "resolve_handle",
    "trust",
    "TokenPooling",
    "create_keras_hub_backbone",
    "supported_keras_hub_families",
]
