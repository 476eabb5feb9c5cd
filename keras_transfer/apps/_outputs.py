"""What every application writes to its output folder: the deployable model, its labels and
JSON files, replaced atomically, the set of them together."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import keras

from keras_transfer import saving
from keras_transfer.peft import adapters
from keras_transfer.peft import lora
from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = ["ADAPTER_FILE", "LABELS_FILE", "MODEL_FILE", "save_classifier", "write_json"]

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
ADAPTER_FILE = "adapter.weights.h5"


def save_classifier(
    model: keras.Model,
    class_names: list[str],
    output_dir: str,
    json_files: Mapping[str, Any] | None = None,
) -> None:
    """`model.keras` for inference (no optimizer state or EMA copies: the resumable state
    is the training backup's job), `adapter.weights.h5` for a LoRA model, `labels.txt`
    (line i = output i) and `json_files` (`{file name: content}`, e.g. `config.json` and
    `results.json`), replaced together (`reliability.write_files_atomically`): every file
    is written and synced beside its name first, so a failure or a kill while writing
    leaves the previous set whole."""

    def write_labels(path):
        with files.open_file(path, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names) + "\n")

    writes: dict[str, Callable[[str], Any]] = {
        os.path.join(output_dir, MODEL_FILE): lambda path: saving.save_model(
            model, path, include_optimizer=False
        )
    }
    if lora.lora_layers(model):
        writes[os.path.join(output_dir, ADAPTER_FILE)] = lambda path: adapters.save_adapter(
            model, path
        )
    writes[os.path.join(output_dir, LABELS_FILE)] = write_labels
    for name, content in (json_files or {}).items():
        writes[os.path.join(output_dir, name)] = _json_writer(content)
    reliability.write_files_atomically(writes)


def write_json(path: str, content: Any) -> None:
    """`content` as indented JSON at `path`, replaced atomically."""
    reliability.write_atomically(path, _json_writer(content))


def _json_writer(content: Any) -> Callable[[str], None]:
    def write(temporary):
        with files.open_file(temporary, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)

    return write
