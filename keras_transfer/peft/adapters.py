"""LoRA adapter files: what LoRA training changed, in an HDF5 file that loads only onto the
base weights it was trained on.

The file holds the LoRA matrices and the other trained weights (the head, BatchNormalization
when trained), keyed by variable path, and metadata: the format, rank, alpha, backbone,
adapted layers, `train_bn`, the Keras version and a SHA-256 fingerprint of the frozen base
weights (path, shape, dtype and bytes, in path order), so that an adapter never loads onto
another base.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import keras
import numpy as np

from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.peft import lora
from keras_transfer.utils import files

__all__ = ["load_adapter", "read_adapter", "save_adapter"]

# The `format` written in every adapter file's metadata.
ADAPTER_FORMAT = "keras_transfer.lora_adapter/1"


def _adapter_variables(model: keras.Model) -> dict[str, Any]:
    """`path -> variable` of what LoRA training changes: trainable variables (LoRA matrices,
    head, BN if trained) and the moving statistics of trained BatchNormalization layers."""
    chosen = {id(v): v for v in model.trainable_weights}
    for layer in lora.leaf_layers([model]):
        if isinstance(layer, keras.layers.BatchNormalization) and any(
            id(v) in chosen for v in layer.weights
        ):
            chosen.update({id(v): v for v in layer.weights})
    result = {}
    for variable in chosen.values():
        if variable.path in result:
            raise ValueError(
                f"Two variables share the path {variable.path!r}: give the layers unique names "
                "so that adapters can be keyed by path."
            )
        result[variable.path] = variable
    return result


def _fingerprint(variables) -> str:
    """sha256 over the frozen base weights: path, shape, dtype and bytes, in path order."""
    digest = hashlib.sha256()
    for variable in sorted(variables, key=lambda v: v.path):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.path}|{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _base_variables(model: keras.Model, adapter_paths) -> list:
    adapter_paths = set(adapter_paths)
    return [
        v
        for v in model.weights
        if v.path not in adapter_paths and v.path.rsplit("/", 1)[-1] not in lora.LORA_VARIABLE_NAMES
    ]


def _backbone_description(model: keras.Model) -> str:
    name = getattr(model, "backbone_name", None)
    if name:
        return str(name)
    try:
        backbone_model = backbones_lib.backbone_of(model, nested=True).model
    except ValueError:
        return model.name
    return f"{type(backbone_model).__name__}:{backbone_model.name}"


def save_adapter(model: keras.Model, path: str | os.PathLike) -> dict[str, Any]:
    """Writes what LoRA training changed to an HDF5 file: the LoRA matrices and the other
    trained weights (the head), keyed by variable path, with rank, alpha, the backbone and a
    fingerprint of the frozen base weights.

    Args:
        model: a model after `enable_lora` (and training).
        path: any file path, e.g. `"adapter.weights.h5"`.

    Returns:
        The metadata written (`rank`, `alpha`, `backbone`, `base_fingerprint`, `layers`, ...).

    Example:

    ```python
    kt.save_adapter(model, "runs/ants/adapter.weights.h5")
    ```
    """
    import h5py  # noqa: PLC0415 (a Keras dependency; only adapters need it here)

    layers = lora.lora_layers(model)
    if not layers:
        raise ValueError(
            f"{model.name!r} has no LoRA layers: call keras_transfer.enable_lora(model, ...) "
            "and train before saving an adapter."
        )
    ranks = sorted({int(layer.lora_rank) for layer in layers})
    alphas = sorted({float(layer.lora_alpha) for layer in layers})
    variables = _adapter_variables(model)
    for layer in layers:
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variables.setdefault(variable.path, variable)
    metadata = {
        "format": ADAPTER_FORMAT,
        "rank": ranks[0] if len(ranks) == 1 else ranks,
        "alpha": alphas[0] if len(alphas) == 1 else alphas,
        "backbone": _backbone_description(model),
        "layers": [lora.layer_path(layer) for layer in layers],
        "train_bn": any(
            isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            for layer in lora.leaf_layers(
                backbones_lib.backbone_of(model, nested=True).model.layers
            )
        ),
        "base_fingerprint": _fingerprint(_base_variables(model, variables)),
        "keras_version": keras.__version__,
    }
    path = os.fspath(path)
    if files.is_remote(path):  # h5py writes local files: written locally, then copied
        with files.local_output(path) as local:
            _write_adapter_file(h5py, local, metadata, variables)
        return metadata
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    try:
        _write_adapter_file(h5py, tmp, metadata, variables)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return metadata


def _write_adapter_file(h5py: Any, path: str, metadata: dict[str, Any], variables) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["metadata"] = json.dumps(metadata)
        group = f.create_group("variables")
        for index, (variable_path, variable) in enumerate(sorted(variables.items())):
            dataset = group.create_dataset(str(index), data=keras.ops.convert_to_numpy(variable))
            dataset.attrs["path"] = variable_path


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(metadata, {variable path: value})` of an adapter file."""
    import h5py  # noqa: PLC0415

    path = os.fspath(path)
    if not files.exists(path):
        raise FileNotFoundError(f"No adapter file at {path!r}.")
    with h5py.File(files.readable(path), "r") as f:
        if "metadata" not in f.attrs or "variables" not in f:
            raise ValueError(
                f"{path!r} is not a keras_transfer LoRA adapter (write one with "
                "keras_transfer.save_adapter)."
            )
        metadata = json.loads(f.attrs["metadata"])
        values = {
            str(dataset.attrs["path"]): np.asarray(dataset) for dataset in f["variables"].values()
        }
    return metadata, values


def load_adapter(model: keras.Model, path: str | os.PathLike) -> dict[str, Any]:
    """Applies an adapter file to a model built from the same base weights.

    If the model has no LoRA layers yet, LoRA is enabled on the layers the adapter names with
    its rank and alpha (frozen as `enable_lora` freezes). Everything is checked before
    anything changes: a rank other than the model's, a missing or extra variable, a shape
    mismatch, or base weights other than those the adapter was trained on (fingerprint) is a
    `ValueError` naming it. Recompile before training further.

    Args:
        model: the model, e.g. `create_classifier(...)` with the same backbone weights.
        path: the file `save_adapter` wrote.

    Returns:
        The adapter's metadata.

    Example:

    ```python
    model = kt.create_classifier("mobilenet", 2, weights="mobilenet_1_0_224_tf_no_top.h5")
    kt.load_adapter(model, "runs/ants/adapter.weights.h5")
    model.predict(images)
    ```
    """
    metadata, values = read_adapter(path)
    path = os.fspath(path)
    existing = lora.lora_layers(model)
    if existing:
        _check_same_lora(existing, metadata, path)
        to_enable = []
    else:
        to_enable = _layers_to_enable(model, metadata, path)
    # Everything is checked against the model as it will be once LoRA is on `to_enable`.
    expected = _expected_shapes(model, to_enable, metadata["rank"])
    _check_variables(values, expected, metadata, path)
    _check_base_weights(model, values, metadata, path)
    if to_enable:
        train_bn = bool(metadata.get("train_bn", False))
        lora.enable_lora_on_layers(model, to_enable, metadata["rank"], metadata["alpha"], train_bn)
    by_path = {v.path: v for v in model.weights}
    for variable_path, value in values.items():
        by_path[variable_path].assign(value)
    return metadata


def _check_same_lora(existing: list, metadata: dict[str, Any], path: str) -> None:
    """Raises unless the model's LoRA layers have the adapter's rank, alpha and layers."""
    rank, alpha = metadata["rank"], metadata["alpha"]
    model_ranks = sorted({int(layer.lora_rank) for layer in existing})
    if model_ranks != ([rank] if isinstance(rank, int) else sorted(rank)):
        raise ValueError(
            f"The adapter {path!r} has LoRA rank {rank} but the model's LoRA layers have "
            f"rank {model_ranks}. Load it into a model without LoRA (it enables LoRA with "
            "the adapter's rank) or one enabled with the same rank."
        )
    model_alphas = sorted({float(layer.lora_alpha) for layer in existing})
    if model_alphas != ([float(alpha)] if not isinstance(alpha, list) else sorted(alpha)):
        raise ValueError(
            f"The adapter {path!r} has LoRA alpha {alpha} but the model's LoRA layers have "
            f"alpha {model_alphas}: the same matrices would scale differently. Load it into "
            "a model without LoRA, or enable LoRA with the adapter's alpha."
        )
    model_layers = {lora.layer_path(layer) for layer in existing}
    if model_layers != set(metadata["layers"]):
        raise ValueError(
            f"The adapter {path!r} adapts other layers than the model: only in the "
            f"adapter {sorted(set(metadata['layers']) - model_layers)[:8]}, only in the "
            f"model {sorted(model_layers - set(metadata['layers']))[:8]}."
        )


def _layers_to_enable(model: keras.Model, metadata: dict[str, Any], path: str) -> list:
    """The layers of a model without LoRA that the adapter adapts, after the checks
    `enable_lora` makes on its rank, alpha and backbone."""
    rank, alpha = metadata["rank"], metadata["alpha"]
    if not isinstance(rank, int):
        raise ValueError(f"The adapter {path!r} mixes ranks {rank}; enable LoRA first.")
    layer_by_path = lora.lora_capable_layers(model, rank, alpha)
    missing_layers = [p for p in metadata["layers"] if p not in layer_by_path]
    if missing_layers:
        raise ValueError(
            f"The adapter {path!r} adapts layers the model does not have: "
            f"{missing_layers[:8]}. Build the model with the same backbone "
            f"({metadata.get('backbone')!r})."
        )
    return [layer_by_path[p] for p in metadata["layers"]]


def _expected_shapes(model: keras.Model, to_enable: list, rank: Any) -> dict[str, tuple]:
    """`path -> shape` of the model's variables once LoRA is enabled on `to_enable`."""
    expected = {v.path: tuple(v.shape) for v in model.weights}
    for layer in to_enable:
        a_shape, b_shape = lora.lora_matrix_shapes(layer, rank)
        expected[f"{lora.layer_path(layer)}/lora_kernel_a"] = a_shape
        expected[f"{lora.layer_path(layer)}/lora_kernel_b"] = b_shape
    return expected


def _check_variables(
    values: dict[str, np.ndarray],
    expected: dict[str, tuple],
    metadata: dict[str, Any],
    path: str,
) -> None:
    """Raises unless the adapter's variables are the model's (`expected`), with their
    shapes, LoRA matrices included."""
    missing = sorted(set(values) - set(expected))
    if missing:
        raise ValueError(
            f"The adapter {path!r} holds variables the model does not have: {missing[:8]}. "
            f"It was saved from another model (backbone {metadata.get('backbone')!r}); build "
            "the same model (backbone, head, layer names)."
        )
    wrong = [(p, values[p].shape, expected[p]) for p in values if values[p].shape != expected[p]]
    if wrong:
        p, got, want = wrong[0]
        raise ValueError(
            f"Shape mismatch for {p!r}: the adapter {path!r} has {got}, the model {want} "
            f"({len(wrong)} mismatching variable(s)). Build the model with the same backbone, "
            "number of classes and head as the adapter's."
        )
    lora_paths = [p for p in expected if p.rsplit("/", 1)[-1] in lora.LORA_VARIABLE_NAMES]
    absent = sorted(set(lora_paths) - set(values))
    if absent:
        raise ValueError(
            f"The adapter {path!r} lacks the model's LoRA variables {absent[:8]}: it was "
            "saved from a model adapted on other layers."
        )


def _check_base_weights(
    model: keras.Model, values: dict[str, np.ndarray], metadata: dict[str, Any], path: str
) -> None:
    """Raises unless the model's frozen weights are those the adapter was trained on."""
    fingerprint = _fingerprint(_base_variables(model, values))
    if fingerprint != metadata["base_fingerprint"]:
        raise ValueError(
            f"The adapter {path!r} was trained on other base weights than this model's "
            f"(adapter backbone {metadata.get('backbone')!r}, base fingerprint "
            f"{metadata['base_fingerprint'][:12]}..., this model {fingerprint[:12]}...). Build "
            "the model from the same pretrained weights file the adapter was trained on."
        )
