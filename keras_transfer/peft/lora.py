"""Parameter-efficient fine-tuning with LoRA, by backbone block, in plain `model.fit`.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) freezes a pretrained kernel `W` and trains a low-rank update
`(alpha / rank) * A @ B` instead. Keras ships the mechanism (`layer.enable_lora` on `Dense`,
`EinsumDense`, `Embedding` and the `Conv1D/2D/3D` family); this module chooses the layers
with the package's block vocabulary, freezes everything else (BatchNormalization in inference
mode), and adds what Keras leaves out:

- a summary that lists the layers of the chosen blocks LoRA cannot adapt
  (`DepthwiseConv2D`, `SeparableConv2D`, custom layers) instead of skipping them silently;
- adapter files keyed by variable path, with the rank, alpha, backbone and a fingerprint
  of the frozen base weights, so that an adapter never loads onto another base;
- `merge_lora`, a model without LoRA variables whose kernels hold the updates;
- `resume_lora`: Keras merges LoRA into the kernel when saving and reloads with both LoRA
  matrices zero, where both gradients are zero too; re-initialising `A` lets training go on;
- `LoraBackupAndRestore`: a training backup that keeps the LoRA matrices, so that a killed
  LoRA run resumes exactly where it stopped (Keras' weights files keep only the merged sum).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer import _keras_compat
from keras_transfer.backbones import freezing
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.utils import reliability

__all__ = [
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
]

ADAPTER_FORMAT = "keras_transfer.lora_adapter/1"
# What `targets` accepts besides a list of layer names.
TARGET_CHOICES = ("all", "all_dense")
_LORA_NAMES = ("lora_kernel_a", "lora_kernel_b")
_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


@dataclasses.dataclass
class LoraSummary:
    """What `enable_lora` did.

    Attributes:
        rank: the LoRA rank.
        alpha: the LoRA alpha (the update is scaled by `alpha / rank`).
        blocks: the backbone blocks LoRA was applied in, input side first.
        adapted: paths of the layers that got LoRA.
        not_adaptable: `(path, layer type)` of the weighted layers in those blocks that Keras
            LoRA does not support (e.g. `DepthwiseConv2D`); they stay frozen.
        not_targeted: paths of supported layers left out by `targets`; they stay frozen.
        normalization: number of normalization layers in the backbone.
        train_bn: whether BatchNormalization layers train (else frozen, inference mode).
        trainable_params: parameters `fit` will update (LoRA matrices, head, BN if trained).
        total_params: all parameters of the model, LoRA matrices included.

    Example:

    ```python
    summary = kt.enable_lora(model, rank=4)
    print(summary)                      # readable: adapted, not adaptable, parameters
    summary.not_adaptable               # [("conv_dw_1", "DepthwiseConv2D"), ...]
    summary.trainable_fraction          # e.g. 0.014
    ```
    """

    rank: int
    alpha: float
    blocks: list[str]
    adapted: list[str]
    not_adaptable: list[tuple[str, str]]
    not_targeted: list[str]
    normalization: int
    train_bn: bool
    trainable_params: int
    total_params: int

    @property
    def trainable_fraction(self) -> float:
        """`trainable_params / total_params`."""
        return self.trainable_params / max(self.total_params, 1)

    def to_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["not_adaptable"] = [list(item) for item in self.not_adaptable]
        result["trainable_fraction"] = self.trainable_fraction
        return result

    def __str__(self) -> str:
        def names(items, limit=8):
            items = list(items)
            shown = items if len(items) <= limit else items[:limit] + [f"... ({len(items)})"]
            return ", ".join(shown) if shown else "none"

        blocks = (
            f"{self.blocks[0]} ... {self.blocks[-1]}"
            if len(self.blocks) > 1
            else "".join(self.blocks)
        )
        lines = [
            f"LoRA rank {self.rank}, alpha {self.alpha:g} on {len(self.adapted)} layers in "
            f"{len(self.blocks)} blocks ({blocks})",
            f"  adapted: {names(self.adapted)}",
            "  not adaptable by Keras LoRA, frozen: "
            + names(f"{path} ({kind})" for path, kind in self.not_adaptable),
        ]
        if self.not_targeted:
            lines.append(f"  not targeted, frozen: {names(self.not_targeted)}")
        state = "trainable (train_bn=True)" if self.train_bn else "frozen, inference mode"
        lines.append(f"  normalization layers: {self.normalization}, {state}")
        lines.append(
            f"  trainable parameters: {self.trainable_params:,} of {self.total_params:,} "
            f"({100 * self.trainable_fraction:.2f}%)"
        )
        return "\n".join(lines)


def _leaves(layers: Sequence[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """The layers that own weights directly: `layers` themselves, or their innermost
    sublayers for composite layers (a transformer block, an attention layer)."""
    seen: dict[int, keras.layers.Layer] = {}
    for layer in layers:
        inner = _keras_compat.flatten_layers(layer, include_self=False)
        candidates = [layer] if _supports_lora(layer) or not inner else inner
        for candidate in candidates:
            if _supports_lora(candidate) or not _keras_compat.flatten_layers(
                candidate, include_self=False
            ):
                seen.setdefault(id(candidate), candidate)
    return list(seen.values())


def _supports_lora(layer: keras.layers.Layer) -> bool:
    return callable(getattr(layer, "enable_lora", None))


def _base_kernel(layer: keras.layers.Layer):
    """The variable LoRA adapts: the kernel, or the embeddings table."""
    for attribute in ("kernel", "embeddings"):
        try:
            value = getattr(layer, attribute)
        except (AttributeError, ValueError):
            continue
        if value is not None:
            return value
    return None


def _layer_path(layer: keras.layers.Layer) -> str:
    weights = layer.weights
    return weights[0].path.rsplit("/", 1)[0] if weights else layer.name


def lora_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` with LoRA enabled."""
    layers = [layer for layer in _leaves([model]) if getattr(layer, "lora_enabled", False)]
    return sorted(layers, key=_layer_path)


def _max_rank(layer: keras.layers.Layer) -> int:
    # Keras' A is `kernel.shape[:-1] + (rank,)` and B `(rank, kernel.shape[-1])`: the update
    # is a matrix of prod(kernel.shape[:-1]) rows and kernel.shape[-1] columns.
    shape = tuple(_base_kernel(layer).shape)
    return int(min(int(np.prod(shape[:-1])), shape[-1]))


def _is_dense(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense)


def _check_rank_alpha(rank: Any, alpha: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(
            f"LoRA rank must be an integer >= 1, got {rank!r}. Typical ranks are 4 to 16."
        )
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0
    ):
        raise ValueError(
            f"LoRA alpha must be a number > 0 or None (then alpha = rank), got {alpha!r}."
        )


def _find_backbone(model: keras.Model) -> tuple[keras.Model, list[backbones_lib.Block]]:
    from keras_transfer.backbones import hub  # noqa: PLC0415 (hub imports TF Hub helpers lazily)

    hub_layers = [
        layer
        for layer in [model, *_keras_compat.flatten_layers(model, include_self=False)]
        if isinstance(layer, hub.HubBackbone)
    ]
    if hub_layers:
        raise ValueError(
            f"LoRA cannot adapt the TF Hub backbone {hub_layers[0].name!r}: its weights are "
            "variables inside a SavedModel graph, not Keras Dense/Conv layers, so there is no "
            "kernel to attach a low-rank update to. Fine-tune it with "
            "keras_transfer.unfreeze(model, top_blocks=n), or use a keras.applications "
            "backbone (e.g. create_backbone('mobilenet')) for LoRA."
        )
    try:
        return freezing.backbone_and_blocks(model)
    except ValueError as error:
        raise ValueError(
            f"LoRA needs a known backbone to choose blocks from: {error} For a KerasHub "
            "encoder, register its blocks with keras_transfer.backbones.registry.register_block_finder "
            "(see examples/text_classifier_lib.py)."
        ) from error


def _choose_blocks(blocks, blocks_arg, top_blocks, from_block, fraction):
    others = [arg is not None for arg in (top_blocks, from_block, fraction)]
    if blocks_arg != "all":
        if any(others):
            raise ValueError(
                "Give blocks= (a list of block names) or one of top_blocks / from_block / "
                "fraction, not both."
            )
        if isinstance(blocks_arg, str):
            blocks_arg = [blocks_arg]
        chosen = [backbones_lib.find_block(blocks, name) for name in blocks_arg]
        return sorted({id(b): b for b in chosen}.values(), key=lambda b: b.index)
    return freezing.select_blocks(blocks, top_blocks, from_block, fraction)


def _target_filter(targets: Any, backbone_model: keras.Model):
    """A predicate on supported layers from `targets`; default: the backbone's own LoRA
    targets when it declares them (KerasHub: query/value projections), else all."""
    if targets is None:
        defaults = getattr(backbone_model, "default_lora_layer_names", None)
        if callable(defaults):
            names = set(defaults())
            return lambda layer: layer.name in names
        return lambda layer: True
    if targets == "all":
        return lambda layer: True
    if targets == "all_dense":
        return _is_dense
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(
            f"targets must be None (the backbone's default), 'all', 'all_dense' or a list of "
            f"layer names, got {targets!r}."
        )
    names = set(targets)
    return lambda layer: layer.name in names


@dataclasses.dataclass
class _Plan:
    backbone_model: keras.Model
    blocks: list[backbones_lib.Block]
    adapt: list[keras.layers.Layer]
    not_adaptable: list[tuple[str, str]]
    not_targeted: list[str]
    normalization: int


def _plan(model, rank, alpha, blocks_arg, top_blocks, from_block, fraction, targets) -> _Plan:
    """Every check `enable_lora` makes, before it changes anything."""
    _check_rank_alpha(rank, alpha)
    backbone_model, all_blocks = _find_backbone(model)
    already = lora_layers(model)
    if already:
        raise ValueError(
            f"LoRA is already enabled on {len(already)} layers of {model.name!r} (e.g. "
            f"{_layer_path(already[0])!r}, rank {already[0].lora_rank}); Keras enables it "
            "once per layer. Keep training as it is, or build the model again (or use "
            "keras_transfer.merge_lora(model)) to start a new adapter. After reloading a "
            ".keras file, call keras_transfer.resume_lora(model) instead."
        )
    chosen = _choose_blocks(all_blocks, blocks_arg, top_blocks, from_block, fraction)
    if not chosen:
        raise ValueError("No block chosen: LoRA would train nothing. Choose at least one block.")
    wanted = _target_filter(targets, backbone_model)
    adapt, not_adaptable, not_targeted = [], [], []
    for layer in _leaves([layer for block in chosen for layer in block.layers]):
        if not layer.weights or isinstance(layer, _NORMALIZATION):
            continue
        if not _supports_lora(layer) or _base_kernel(layer) is None:
            not_adaptable.append((_layer_path(layer), type(layer).__name__))
        elif not wanted(layer):
            not_targeted.append(_layer_path(layer))
        else:
            adapt.append(layer)
    if targets not in (None, "all", "all_dense"):
        missing = set(targets) - {layer.name for layer in adapt}
        if missing:
            raise ValueError(
                f"targets {sorted(missing)} name no LoRA-capable layer in blocks "
                f"{[b.name for b in chosen]}. Supported layers there: "
                f"{sorted({layer.name for layer in _leaves([model]) if _supports_lora(layer)})[:20]}."
            )
    if not adapt:
        raise ValueError(
            f"No layer in blocks {[b.name for b in chosen]} can take LoRA with "
            f"targets={targets!r}: Keras LoRA supports Dense, EinsumDense, Embedding and "
            f"Conv1D/2D/3D; these blocks hold {not_adaptable[:8]}. Choose other blocks or "
            "targets, or fine-tune with keras_transfer.unfreeze."
        )
    too_small = [(layer, _max_rank(layer)) for layer in adapt if rank > _max_rank(layer)]
    if too_small:
        layer, limit = min(too_small, key=lambda item: item[1])
        raise ValueError(
            f"rank {rank} is larger than {len(too_small)} layer(s) allow, e.g. "
            f"{_layer_path(layer)!r} ({type(layer).__name__}, kernel "
            f"{tuple(_base_kernel(layer).shape)}) allows at most rank {limit}. Use "
            f"rank <= {min(limit for _, limit in too_small)}, or leave those layers out "
            "with targets= / blocks=."
        )
    for layer in adapt:
        if getattr(layer, "kernel_constraint", None) is not None:
            raise ValueError(
                f"Layer {_layer_path(layer)!r} has a kernel_constraint, which Keras LoRA "
                "does not support. Remove the constraint or leave the layer out with targets=."
            )
        if getattr(layer, "quantization_mode", None) not in (None, "int8", "int4"):
            raise ValueError(
                f"Layer {_layer_path(layer)!r} is quantized ({layer.quantization_mode}), "
                "which Keras LoRA does not support."
            )
    normalization = sum(
        isinstance(layer, _NORMALIZATION) for layer in _leaves(backbone_model.layers)
    )
    return _Plan(backbone_model, chosen, adapt, not_adaptable, not_targeted, normalization)


def _apply(plan: _Plan, rank: int, alpha: float | None, train_bn: bool) -> None:
    backbone_model = plan.backbone_model
    # Trainable as a whole, so that the per-layer flags below decide.
    backbone_model.trainable = True
    adapt_ids = {id(layer) for layer in plan.adapt}
    for layer in _leaves(backbone_model.layers):
        if id(layer) in adapt_ids:
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = train_bn
        else:
            layer.trainable = False
    for layer in plan.adapt:
        layer.enable_lora(int(rank), lora_alpha=alpha)
    _freeze_base_of_lora_layers(plan.adapt)


def _freeze_base_of_lora_layers(layers: Sequence[keras.layers.Layer]) -> None:
    # Keras freezes the kernel but leaves the bias trainable; LoRA trains the low-rank
    # update alone (Hu et al. freeze every pretrained weight).
    for layer in layers:
        for variable in layer.weights:
            if variable.name not in _LORA_NAMES:
                variable.trainable = False


def _count(variables) -> int:
    unique = {id(v): v for v in variables}
    return int(sum(int(np.prod(v.shape)) for v in unique.values()))


def enable_lora(
    model: keras.Model,
    rank: int = 8,
    alpha: float | None = None,
    blocks: str | Sequence[str] = "all",
    *,
    top_blocks: int | str | None = None,
    from_block: str | int | None = None,
    fraction: float | None = None,
    targets: str | Sequence[str] | None = None,
    train_bn: bool = False,
) -> LoraSummary:
    """Enables Keras LoRA on the supported layers of the chosen backbone blocks.

    Every other backbone weight is frozen (BatchNormalization in inference mode unless
    `train_bn`), the biases of adapted layers too; the head and any layer outside the backbone
    keep their trainable state. Everything is checked before anything changes, so an error
    leaves the model as it was. Recompile afterwards (Keras collects trainable weights at
    `compile`), and under a `tf.distribute` strategy call it inside `strategy.scope()`: it
    creates variables.

    Args:
        model: a classifier from `create_classifier`, or a model nesting a backbone that
            `keras_transfer.get_blocks` knows (a `keras.applications` model, or a KerasHub
            encoder whose blocks are registered, as in examples/text_classifier_lib.py).
        rank: the LoRA rank, >= 1 and at most what every adapted kernel allows.
        alpha: scales the update by `alpha / rank`; `None` means `rank` (scale 1).
        blocks: `"all"`, or a list of block names.
        top_blocks: adapt the last `n` blocks (or `"all"`) instead.
        from_block: adapt this block (name or index) and all after it instead.
        fraction: adapt this fraction of the blocks, from the output side, instead.
        targets: which supported layers of those blocks: `None` is the backbone's default
            (KerasHub encoders: their query/value projections; `keras.applications`: all),
            `"all"` every supported layer, `"all_dense"` every `Dense`/`EinsumDense`, or a
            list of layer names.
        train_bn: train the BatchNormalization layers too (fastai's `train_bn`).

    Returns:
        A `LoraSummary`: adapted layers, the layers LoRA cannot adapt (by name and type),
        trainable parameters and their fraction. `print(summary)` is readable.

    Example:

    ```python
    model = kt.create_classifier("mobilenet_v2", 2, input_shape=(96, 96, 3), weights=None)
    summary = kt.enable_lora(model, rank=4, top_blocks=3)
    print(summary)  # lists the DepthwiseConv2D layers LoRA leaves frozen
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ```
    """
    plan = _plan(model, rank, alpha, blocks, top_blocks, from_block, fraction, targets)
    _apply(plan, rank, alpha, train_bn)
    return LoraSummary(
        rank=int(rank),
        alpha=float(alpha if alpha is not None else rank),
        blocks=[block.name for block in plan.blocks],
        adapted=[_layer_path(layer) for layer in plan.adapt],
        not_adaptable=plan.not_adaptable,
        not_targeted=plan.not_targeted,
        normalization=plan.normalization,
        train_bn=bool(train_bn),
        trainable_params=_count(model.trainable_weights),
        total_params=_count(model.weights),
    )


def check_lora_request(
    model: keras.Model,
    rank: int = 8,
    alpha: float | None = None,
    blocks: str | Sequence[str] = "all",
    *,
    top_blocks: int | str | None = None,
    from_block: str | int | None = None,
    fraction: float | None = None,
    targets: str | Sequence[str] | None = None,
) -> None:
    """Raises the error `enable_lora` would raise with these arguments, changing nothing
    (e.g. to fail before a long head-training phase)."""
    _plan(model, rank, alpha, blocks, top_blocks, from_block, fraction, targets)


def resume_lora(
    model: keras.Model, alpha: float | None = None, seed: int | None = None
) -> list[str]:
    """Makes a model reloaded from a `.keras` (or `.weights.h5`) file trainable with LoRA again.

    Keras saves LoRA layers with the update merged into the kernel, and re-enables LoRA on load
    with both matrices zero: the output is right, but both gradients are zero, so `fit` would
    never move them. This re-initialises `A` (Keras' `he_uniform`) where `A` and `B` are both
    zero, which keeps the output unchanged (`B` is still zero) and makes `B`'s gradient
    non-zero; it also freezes the adapted layers' biases again (their trainable flag is not
    saved). Recompile afterwards.

    Args:
        model: the reloaded model.
        alpha: the LoRA alpha to continue with. Keras 3.15 restores `Conv*` layers' alpha but
            resets `Dense`/`Embedding` ones to the rank; pass the original alpha to keep it.
        seed: seed of the re-initialisation.

    Returns:
        Paths of the layers whose `A` was re-initialised.

    Example:

    ```python
    model = keras.saving.load_model("model.keras")
    kt.resume_lora(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(train, epochs=2)
    ```
    """
    if alpha is not None:
        _check_rank_alpha(1, alpha)
    layers = lora_layers(model)
    if not layers:
        raise ValueError(
            f"{model.name!r} has no LoRA layers to resume. Enable LoRA with "
            "keras_transfer.enable_lora(model, ...)."
        )
    initializer = keras.initializers.HeUniform(seed=seed)
    resumed = []
    for layer in layers:
        if alpha is not None:
            layer.lora_alpha = alpha
        a, b = layer.lora_kernel_a, layer.lora_kernel_b
        if not np.any(keras.ops.convert_to_numpy(a)) and not np.any(keras.ops.convert_to_numpy(b)):
            a.assign(initializer(a.shape, dtype=a.dtype))
            resumed.append(_layer_path(layer))
    _freeze_base_of_lora_layers(layers)
    return resumed


def _base_kernel_variable(layer: keras.layers.Layer):
    """The variable holding the frozen `W` of a LoRA layer (its `kernel` attribute is the
    merged sum, a tensor)."""
    for variable in layer.weights:
        if variable.path.rsplit("/", 1)[-1] in ("kernel", "embeddings"):
            return variable
    raise ValueError(f"LoRA layer {layer.name!r} has no kernel or embeddings variable.")


def _lora_update(layer: keras.layers.Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Keras' LoRA layers all compute W + (alpha / rank) * A @ B (A: (..., rank), B: (rank, n)).
    return (float(layer.lora_alpha) / int(layer.lora_rank)) * np.matmul(a, b)


class LoraBackupAndRestore(reliability.AtomicBackupAndRestore):
    """`AtomicBackupAndRestore` for LoRA training: a killed run resumes with its LoRA
    matrices, not with zeros.

    Keras' weights files hold LoRA layers merged (`W + (alpha / rank) A B` in the kernel) and
    load them with `A = B = 0`, where both gradients are zero: a plain backup would resume a
    LoRA run that can no longer train. This callback writes the `A` and `B` matrices beside
    each backup (before it, so a kill in between leaves a newer matrices file, never a
    missing one). On restore it takes the frozen `W` from the model as it was built, picks
    the matrices file whose update matches the restored kernels (`W + update`), and sets
    `W`, `A` and `B` back, so that training goes on as if never interrupted. A backup whose
    kernels match no matrices file (another base model) is an error naming the folder.

    Args:
        backup_dir: the folder of the backup.
        **kwargs: `AtomicBackupAndRestore` arguments (`save_freq`, `double_checkpoint`,
            `delete_checkpoint`).

    Example:

    ```python
    kt.enable_lora(model, rank=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    backup = kt.lora.LoraBackupAndRestore("run/backup", double_checkpoint=True)
    model.fit(train, epochs=10, callbacks=[backup])  # rerun the same lines after a kill
    ```
    """

    LORA_FILE = "latest.lora.npz"

    def save_backup(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        matrices = self._path(self.LORA_FILE)

        def save_matrices(temporary):
            values = {}
            for layer in lora_layers(self.model):
                path = _layer_path(layer)
                values[f"{path}/a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
                values[f"{path}/b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)
            with open(temporary, "wb") as f:
                np.savez(f, **values)
            if self.double_checkpoint and os.path.exists(matrices):
                reliability.copy_atomically(matrices, self._path(self.LORA_FILE, previous=True))

        reliability.write_atomically(matrices, save_matrices)
        super().save_backup()

    def on_train_begin(self, logs=None):
        layers = lora_layers(self.model)
        has_backup = any(
            os.path.exists(self._path(self.WEIGHTS_FILE, previous=previous))
            for previous in (False, True)
        )
        if not layers or not has_backup:
            return super().on_train_begin(logs)
        # The frozen W as built: the restored kernels hold W + update, not W.
        bases = [keras.ops.convert_to_numpy(_base_kernel_variable(layer)) for layer in layers]
        result = super().on_train_begin(logs)
        restored = [keras.ops.convert_to_numpy(_base_kernel_variable(layer)) for layer in layers]
        for candidate in (self._path(self.LORA_FILE), self._path(self.LORA_FILE, previous=True)):
            matrices = self._matching_matrices(candidate, layers, bases, restored)
            if matrices is not None:
                for layer, base, (a, b) in zip(layers, bases, matrices, strict=True):
                    _base_kernel_variable(layer).assign(base)
                    layer.lora_kernel_a.assign(a)
                    layer.lora_kernel_b.assign(b)
                return result
        raise reliability.BackupUnreadableError(
            f"The training backup in {self.backup_dir!r} holds LoRA kernels that match neither "
            "the model's frozen weights plus its saved LoRA matrices nor the previous ones: it "
            "was written for another base model, or its matrices file is missing. Build the "
            "model from the same weights as the run that wrote it, or delete the folder to "
            "start over."
        )

    @staticmethod
    def _matching_matrices(path, layers, bases, restored):
        if not os.path.exists(path):
            return None
        with np.load(path) as stored:
            matrices = []
            for layer, base, kernel in zip(layers, bases, restored, strict=True):
                key = _layer_path(layer)
                if f"{key}/a" not in stored:
                    return None
                a, b = stored[f"{key}/a"], stored[f"{key}/b"]
                if a.shape != tuple(layer.lora_kernel_a.shape) or b.shape != tuple(
                    layer.lora_kernel_b.shape
                ):
                    return None
                expected = base + _lora_update(layer, a, b)
                scale = max(1.0, float(np.max(np.abs(expected))))
                if not np.allclose(kernel, expected, rtol=0, atol=1e-5 * scale):
                    return None
                matrices.append((a, b))
        return matrices


# ---------------------------------------------------------------------------------------
# Adapter files
# ---------------------------------------------------------------------------------------


def _is_lora_variable(variable) -> bool:
    return variable.path.rsplit("/", 1)[-1] in _LORA_NAMES


def _adapter_variables(model: keras.Model) -> dict[str, Any]:
    """`path -> variable` of what LoRA training changes: trainable variables (LoRA matrices,
    head, BN if trained) and the moving statistics of trained BatchNormalization layers."""
    chosen = {id(v): v for v in model.trainable_weights}
    for layer in _leaves([model]):
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
    return [v for v in model.weights if v.path not in adapter_paths and not _is_lora_variable(v)]


def _backbone_description(model: keras.Model) -> str:
    name = getattr(model, "backbone_name", None)
    if name:
        return str(name)
    try:
        backbone_model, _ = freezing.backbone_and_blocks(model)
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

    layers = lora_layers(model)
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
        "layers": [_layer_path(layer) for layer in layers],
        "train_bn": any(
            isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            for layer in _leaves(freezing.backbone_and_blocks(model)[0].layers)
        ),
        "base_fingerprint": _fingerprint(_base_variables(model, variables)),
        "keras_version": keras.__version__,
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["metadata"] = json.dumps(metadata)
            group = f.create_group("variables")
            for index, (variable_path, variable) in enumerate(sorted(variables.items())):
                dataset = group.create_dataset(
                    str(index), data=keras.ops.convert_to_numpy(variable)
                )
                dataset.attrs["path"] = variable_path
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return metadata


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """`(metadata, {variable path: value})` of an adapter file."""
    import h5py  # noqa: PLC0415

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No adapter file at {path!r}.")
    with h5py.File(path, "r") as f:
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
    rank, alpha = metadata["rank"], metadata["alpha"]
    by_path = {v.path: v for v in model.weights}
    existing = lora_layers(model)
    if existing:
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
        model_layers = {_layer_path(layer) for layer in existing}
        if model_layers != set(metadata["layers"]):
            raise ValueError(
                f"The adapter {path!r} adapts other layers than the model: only in the "
                f"adapter {sorted(set(metadata['layers']) - model_layers)[:8]}, only in the "
                f"model {sorted(model_layers - set(metadata['layers']))[:8]}."
            )
        to_enable = []
    else:
        if not isinstance(rank, int):
            raise ValueError(f"The adapter {path!r} mixes ranks {rank}; enable LoRA first.")
        _check_rank_alpha(rank, alpha)
        _find_backbone(model)
        layer_by_path = {
            _layer_path(layer): layer for layer in _leaves([model]) if _supports_lora(layer)
        }
        missing_layers = [p for p in metadata["layers"] if p not in layer_by_path]
        if missing_layers:
            raise ValueError(
                f"The adapter {path!r} adapts layers the model does not have: "
                f"{missing_layers[:8]}. Build the model with the same backbone "
                f"({metadata.get('backbone')!r})."
            )
        to_enable = [layer_by_path[p] for p in metadata["layers"]]
    # Expected variables: the model's after enabling LoRA on `to_enable`.
    expected = {p: tuple(v.shape) for p, v in by_path.items()}
    for layer in to_enable:
        shape = tuple(_base_kernel(layer).shape)
        expected[f"{_layer_path(layer)}/lora_kernel_a"] = shape[:-1] + (rank,)
        expected[f"{_layer_path(layer)}/lora_kernel_b"] = (rank, shape[-1])
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
    lora_paths = [p for p in expected if p.rsplit("/", 1)[-1] in _LORA_NAMES]
    absent = sorted(set(lora_paths) - set(values))
    if absent:
        raise ValueError(
            f"The adapter {path!r} lacks the model's LoRA variables {absent[:8]}: it was "
            "saved from a model adapted on other layers."
        )
    fingerprint = _fingerprint(_base_variables(model, values))
    if fingerprint != metadata["base_fingerprint"]:
        raise ValueError(
            f"The adapter {path!r} was trained on other base weights than this model's "
            f"(adapter backbone {metadata.get('backbone')!r}, base fingerprint "
            f"{metadata['base_fingerprint'][:12]}..., this model {fingerprint[:12]}...). Build "
            "the model from the same pretrained weights file the adapter was trained on."
        )
    if to_enable:
        _apply(
            _Plan(freezing.backbone_and_blocks(model)[0], [], to_enable, [], [], 0),
            rank,
            alpha,
            bool(metadata.get("train_bn", False)),
        )
    by_path = {v.path: v for v in model.weights}
    for variable_path, value in values.items():
        by_path[variable_path].assign(value)
    return metadata


# ---------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------


def _strip_lora(config: Any) -> Any:
    if isinstance(config, dict):
        result = {key: _strip_lora(value) for key, value in config.items()}
        if "lora_rank" in result:
            result["lora_rank"] = None
            result.pop("lora_alpha", None)
        return result
    if isinstance(config, list):
        return [_strip_lora(item) for item in config]
    return config


def merge_lora(model: keras.Model) -> keras.Model:
    """A copy of `model` without LoRA variables whose kernels hold `W + (alpha / rank) A B`.

    For inference and export: the copy predicts what `model` predicts (within float
    rounding) at the cost of the base model. It is built from the model's config with LoRA
    left out, and takes its weights from Keras' own weights file, in which Keras already
    merges LoRA into the kernels. `model` itself is unchanged; compile the copy to train it.

    Args:
        model: a model with LoRA layers (from `enable_lora` or `load_adapter`).

    Returns:
        The merged model.

    Example:

    ```python
    merged = kt.merge_lora(model)
    merged.export("serving")  # a plain model, no LoRA
    ```
    """
    if not lora_layers(model):
        raise ValueError(f"{model.name!r} has no LoRA layers to merge.")
    config = _strip_lora(keras.saving.serialize_keras_object(model))
    merged = keras.saving.deserialize_keras_object(config)
    with tempfile.TemporaryDirectory() as directory:
        weights = os.path.join(directory, "merged.weights.h5")
        model.save_weights(weights)
        with warnings.catch_warnings():
            # The file holds the optimizer's state too; the uncompiled copy has none.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            merged.load_weights(weights)
    # Keras' weights file holds each LoRA layer's `kernel` property, which it casts to the
    # compute dtype: under mixed_float16 every merged kernel came back rounded to float16.
    # The merge is written again in the variables' own dtype (float32), so it is exact.
    # The copy's variables stand in the order of the model's, LoRA left out (nested names
    # may differ, so they are paired by position).
    originals = [v for v in model.weights if v.path.rsplit("/", 1)[-1] not in _LORA_NAMES]
    copies = dict(zip((id(v) for v in originals), merged.weights, strict=True))
    for layer in lora_layers(model):
        base = _base_kernel_variable(layer)
        a, b = (keras.ops.convert_to_numpy(v) for v in (layer.lora_kernel_a, layer.lora_kernel_b))
        copies[id(base)].assign(keras.ops.convert_to_numpy(base) + _lora_update(layer, a, b))
    return merged
