"""Parameter-efficient fine-tuning: LoRA by block with adapter files (`lora`), and the L2-SP
regulariser toward the pretrained weights (`l2sp`).
"""

from keras_transfer.peft import l2sp
from keras_transfer.peft import lora
from keras_transfer.peft.l2sp import L2SP
from keras_transfer.peft.l2sp import apply_l2sp
from keras_transfer.peft.lora import LoraBackupAndRestore
from keras_transfer.peft.lora import LoraSummary
from keras_transfer.peft.lora import check_lora_request
from keras_transfer.peft.lora import enable_lora
from keras_transfer.peft.lora import load_adapter
from keras_transfer.peft.lora import lora_layers
from keras_transfer.peft.lora import merge_lora
from keras_transfer.peft.lora import read_adapter
from keras_transfer.peft.lora import resume_lora
from keras_transfer.peft.lora import save_adapter

__all__ = [
    "lora",
    "l2sp",
    "LoraBackupAndRestore",
    "LoraSummary",
    "check_lora_request",
    "enable_lora",
    "load_adapter",
    "lora_layers",
    "merge_lora",
    "read_adapter",
    "resume_lora",
    "save_adapter",
    "L2SP",
    "apply_l2sp",
]
