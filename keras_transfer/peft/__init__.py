"""Parameter-efficient fine-tuning: LoRA by block (`lora`, its `targets` in `lora_targets`),
its adapter files (`adapters`), merging LoRA models for export (`lora_saving`), and the L2-SP
regulariser toward the pretrained weights (`l2sp`).
"""

from keras_transfer.peft import adapters
from keras_transfer.peft import l2sp
from keras_transfer.peft import lora
from keras_transfer.peft import lora_saving
from keras_transfer.peft import lora_targets
from keras_transfer.peft.adapters import load_adapter
from keras_transfer.peft.adapters import read_adapter
from keras_transfer.peft.adapters import save_adapter
from keras_transfer.peft.l2sp import L2SP
from keras_transfer.peft.l2sp import apply_l2sp
from keras_transfer.peft.lora import LORA_VARIABLE_NAMES
from keras_transfer.peft.lora import LoraSummary
from keras_transfer.peft.lora import check_lora_request
from keras_transfer.peft.lora import enable_lora
from keras_transfer.peft.lora import enable_lora_on_layers
from keras_transfer.peft.lora import layer_path
from keras_transfer.peft.lora import leaf_layers
from keras_transfer.peft.lora import lora_capable_layers
from keras_transfer.peft.lora import lora_layers
from keras_transfer.peft.lora import lora_matrix_shapes
from keras_transfer.peft.lora import resume_lora
from keras_transfer.peft.lora import supports_lora
from keras_transfer.peft.lora_saving import base_kernel_variable
from keras_transfer.peft.lora_saving import lora_update
from keras_transfer.peft.lora_saving import merge_lora

__all__ = [
    "lora",
    "adapters",
    "lora_saving",
    "lora_targets",
    "l2sp",
    "LORA_VARIABLE_NAMES",
    "LoraSummary",
    "check_lora_request",
    "enable_lora",
    "enable_lora_on_layers",
    "layer_path",
    "leaf_layers",
    "lora_capable_layers",
    "lora_layers",
    "lora_matrix_shapes",
    "resume_lora",
    "supports_lora",
    "load_adapter",
    "read_adapter",
    "save_adapter",
    "base_kernel_variable",
    "lora_update",
    "merge_lora",
    "L2SP",
    "apply_l2sp",
]
