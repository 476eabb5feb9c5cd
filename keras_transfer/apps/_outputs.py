"""What every application writes to its output folder: the deployable model, its labels and
JSON files, each replaced atomically."""

from __future__ import annotations

import json
import os
from typing import Any

import keras

from keras_transfer import saving
from keras_transfer.peft import adapters
from keras_transfer.peft import lora
from keras_transfer.utils import reliability

__all__ = ["LABELS_FILE", "MODEL_FILE", "save_classifier", "write_json"]

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"


def save_classifier(model: keras.Model, class_names: list[str], output_dir: str) -> None:
    """`model.keras` for inference (no optimizer state or EMA copies: the resumable state
    is the training backup's job), `adapter.weights.h5` for a LoRA model, and
    `labels.txt` (line i = output i)."""
    saving.save_model(model, os.path.join(output_dir, MODEL_FILE), include_optimizer=False)
    if lora.lora_layers(model):
        adapters.save_adapter(model, os.path.join(output_dir, "adapter.weights.h5"))

    def write_labels(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names) + "\n")

    reliability.write_atomically(os.path.join(output_dir, LABELS_FILE), write_labels)


def write_json(path: str, content: Any) -> None:
    """`content` as indented JSON at `path`."""

    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)

    reliability.write_atomically(path, write)
