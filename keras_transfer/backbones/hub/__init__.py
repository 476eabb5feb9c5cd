"""TF Hub and TF2 SavedModel backbones as Keras 3 layers: the `HubBackbone` layer (`layer`),
its blocks (`blocks`), `create_backbone("hub:...")` (`backbone`), resolving handles and the
per-user download cache (`cache`), and which SavedModels safe mode may load (`safe_mode`).
"""

from keras_transfer.backbones.hub import backbone
from keras_transfer.backbones.hub import blocks
from keras_transfer.backbones.hub import cache
from keras_transfer.backbones.hub import layer
from keras_transfer.backbones.hub import safe_mode
from keras_transfer.backbones.hub.backbone import create_hub_backbone
from keras_transfer.backbones.hub.blocks import HubBlock
from keras_transfer.backbones.hub.blocks import HubVariableGroup
from keras_transfer.backbones.hub.blocks import hub_block_names
from keras_transfer.backbones.hub.blocks import is_batch_norm_variable
from keras_transfer.backbones.hub.cache import HubModuleUnavailableError
from keras_transfer.backbones.hub.cache import UnsafeCacheError
from keras_transfer.backbones.hub.cache import cache_dir
from keras_transfer.backbones.hub.cache import local_folder
from keras_transfer.backbones.hub.cache import resolve_handle
from keras_transfer.backbones.hub.layer import HubBackbone
from keras_transfer.backbones.hub.safe_mode import clear_trusted
from keras_transfer.backbones.hub.safe_mode import load_fingerprint
from keras_transfer.backbones.hub.safe_mode import load_options_config
from keras_transfer.backbones.hub.safe_mode import refuse_untrusted
from keras_transfer.backbones.hub.safe_mode import saved_model_digest
from keras_transfer.backbones.hub.safe_mode import trust
from keras_transfer.backbones.hub.safe_mode import trust_load

__all__ = [
    "backbone",
    "blocks",
    "cache",
    "layer",
    "safe_mode",
    "HubBackbone",
    "HubBlock",
    "HubModuleUnavailableError",
    "HubVariableGroup",
    "UnsafeCacheError",
    "cache_dir",
    "clear_trusted",
    "create_hub_backbone",
    "hub_block_names",
    "is_batch_norm_variable",
    "load_fingerprint",
    "load_options_config",
    "local_folder",
    "refuse_untrusted",
    "resolve_handle",
    "saved_model_digest",
    "trust",
    "trust_load",
]
