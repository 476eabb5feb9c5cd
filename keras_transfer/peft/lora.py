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
  of the frozen base weights, so that an adapter never loads onto another base
  (`keras_transfer.peft.adapters`);
- `resume_lora`: Keras merges LoRA into the kernel when saving and reloads with both LoRA
  matrices zero, where both gradients are zero too; re-initialising `A` lets training go on;
- `merge_lora`, a model without LoRA variables whose kernels hold the updates, and
  `LoraBackupAndRestore`, a training backup that keeps the LoRA matrices so that a killed
  LoRA run resumes exactly where it stopped (`keras_transfer.peft.lora_saving`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer import _keras_compat
from keras_transfer.backbones import freezing
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.peft.lora_targets import TARGET_CHOICES
from keras_transfer.peft.lora_targets import is_path_pattern

__all__ = [
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
]

# The names Keras gives the two LoRA matrices of a layer (the last part of their paths).
LORA_VARIABLE_NAMES = ("lora_kernel_a", "lora_kernel_b")
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


def leaf_layers(layers: Sequence[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """The layers that own weights directly: `layers` themselves, or their innermost
    sublayers for composite layers (a transformer block, an attention layer)."""
    seen: dict[int, keras.layers.Layer] = {}
    for layer in layers:
        inner = _keras_compat.flatten_layers(layer, include_self=False)
        candidates = [layer] if supports_lora(layer) or not inner else inner
        for candidate in candidates:
            if supports_lora(candidate) or not _keras_compat.flatten_layers(
                candidate, include_self=False
            ):
                seen.setdefault(id(candidate), candidate)
    return list(seen.values())


def supports_lora(layer: keras.layers.Layer) -> bool:
    """Whether Keras LoRA can adapt `layer` (it has `enable_lora`; a KerasHub model's own
    `enable_lora` is for the whole model, not a layer)."""
    return callable(getattr(layer, "enable_lora", None)) and not isinstance(layer, keras.Model)


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


def layer_path(layer: keras.layers.Layer) -> str:
    """The path of a layer's variables without the variable name (`"functional/conv1"`),
    unique in a model where layer names are not; its name when it has no weights."""
    weights = layer.weights
    return weights[0].path.rsplit("/", 1)[0] if weights else layer.name


def lora_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` with LoRA enabled."""
    layers = [layer for layer in leaf_layers([model]) if getattr(layer, "lora_enabled", False)]
    return sorted(layers, key=layer_path)


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


def _lora_backbone_and_blocks(model: keras.Model) -> tuple[keras.Model, list[backbones_lib.Block]]:
    """The backbone model LoRA adapts in `model`, and its blocks; raises if LoRA cannot."""
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
        backbone = backbones_lib.backbone_of(model, nested=True)
        return backbone.model, backbone.blocks
    except ValueError as error:
        raise ValueError(
            f"LoRA needs a known backbone to choose blocks from: {error} For a KerasHub "
            "encoder, register its blocks with keras_transfer.backbones.registry.register_block_finder "
            "(see examples/text_classifier_lib.py)."
        ) from error


def lora_capable_layers(
    model: keras.Model, rank: int, alpha: float | None = None
) -> dict[str, keras.layers.Layer]:
    """`path -> layer` of every layer of `model` Keras LoRA can adapt, after the checks
    `enable_lora` makes on `rank`, `alpha` and the backbone (a `ValueError` names what is
    wrong)."""
    _check_rank_alpha(rank, alpha)
    _lora_backbone_and_blocks(model)
    return {layer_path(layer): layer for layer in leaf_layers([model]) if supports_lora(layer)}


def lora_matrix_shapes(layer: keras.layers.Layer, rank: int) -> tuple[tuple, tuple]:
    """The shapes of the `A` and `B` matrices LoRA of `rank` gives `layer`: Keras' `A` is
    `kernel.shape[:-1] + (rank,)` and `B` is `(rank, kernel.shape[-1])`."""
    shape = tuple(_base_kernel(layer).shape)
    return shape[:-1] + (rank,), (rank, shape[-1])


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


def _declared_targets(backbone_model: keras.Model) -> set[str] | None:
    """The layer names the backbone (or a KerasHub model nested in it) declares as its LoRA
    targets (`default_lora_layer_names`: attention query/value projections), when it has
    such layers; `None` otherwise (a CNN, a `keras.applications` model)."""
    for model in [backbone_model, *getattr(backbone_model, "layers", [])]:
        declared = getattr(model, "default_lora_layer_names", None)
        if callable(declared):
            names = set(declared())
            present = {layer.name for layer in leaf_layers([model]) if supports_lora(layer)}
            return names if names & present else None
    return None


def _target_filter(targets: Any, backbone_model: keras.Model):
    """A predicate on supported layers from `targets`; default: the backbone's own LoRA
    targets when it declares them and has them (KerasHub: query/value projections), else
    all."""
    if targets is None:
        names = _declared_targets(backbone_model)
        if names is not None:
            return lambda layer: layer.name in names
        return lambda layer: True
    if targets == "all":
        return lambda layer: True
    if targets == "all_dense":
        return _is_dense
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(
            f"targets must be None (the backbone's default), 'all', 'all_dense' or a list of "
            f"layer names or layer-path patterns, got {targets!r}."
        )
    names = {target for target in targets if not is_path_pattern(target)}
    try:
        patterns = [re.compile(target) for target in targets if is_path_pattern(target)]
    except re.error as error:
        raise ValueError(f"targets holds an invalid layer-path pattern: {error}.") from None
    return lambda layer: (
        layer.name in names or any(pattern.search(layer_path(layer)) for pattern in patterns)
    )


def _target_found(target: str, layers) -> bool:
    if is_path_pattern(target):
        return any(re.search(target, layer_path(layer)) for layer in layers)
    return any(layer.name == target for layer in layers)


@dataclasses.dataclass
class _ChosenLayers:
    """The layers `enable_lora` adapts, and what it leaves out."""

    backbone_model: keras.Model
    blocks: list[backbones_lib.Block]
    adapt: list[keras.layers.Layer]
    not_adaptable: list[tuple[str, str]]
    not_targeted: list[str]
    normalization: int


def _choose_layers(
    model, rank, alpha, blocks_arg, top_blocks, from_block, fraction, targets
) -> _ChosenLayers:
    """Every check `enable_lora` makes, before it changes anything."""
    _check_rank_alpha(rank, alpha)
    backbone_model, all_blocks = _lora_backbone_and_blocks(model)
    _check_no_lora_yet(model)
    chosen = _choose_blocks(all_blocks, blocks_arg, top_blocks, from_block, fraction)
    if not chosen:
        raise ValueError("No block chosen: LoRA would train nothing. Choose at least one block.")
    wanted = _target_filter(targets, backbone_model)
    adapt, not_adaptable, not_targeted = _sort_block_layers(chosen, wanted)
    _check_targets_found(targets, chosen, adapt, not_adaptable, not_targeted)
    _check_layers_take_lora(adapt, rank)
    normalization = sum(
        isinstance(layer, _NORMALIZATION) for layer in leaf_layers(backbone_model.layers)
    )
    return _ChosenLayers(backbone_model, chosen, adapt, not_adaptable, not_targeted, normalization)


def _check_no_lora_yet(model: keras.Model) -> None:
    already = lora_layers(model)
    if already:
        raise ValueError(
            f"LoRA is already enabled on {len(already)} layers of {model.name!r} (e.g. "
            f"{layer_path(already[0])!r}, rank {already[0].lora_rank}); Keras enables it "
            "once per layer. Keep training as it is, or build the model again (or use "
            "keras_transfer.merge_lora(model)) to start a new adapter. After reloading a "
            ".keras file, call keras_transfer.resume_lora(model) instead."
        )


def _sort_block_layers(blocks, wanted) -> tuple[list, list[tuple[str, str]], list[str]]:
    """The weighted layers of `blocks` (normalization aside): `(to adapt, (path, type) of
    those Keras LoRA cannot adapt, paths of those `wanted` leaves out)`."""
    adapt, not_adaptable, not_targeted = [], [], []
    for layer in leaf_layers([layer for block in blocks for layer in block.layers]):
        if not layer.weights or isinstance(layer, _NORMALIZATION):
            continue
        if not supports_lora(layer) or _base_kernel(layer) is None:
            not_adaptable.append((layer_path(layer), type(layer).__name__))
        elif not wanted(layer):
            not_targeted.append(layer_path(layer))
        else:
            adapt.append(layer)
    return adapt, not_adaptable, not_targeted


def _check_targets_found(targets, chosen, adapt, not_adaptable, not_targeted) -> None:
    """Raises when named targets are missing from the chosen blocks (naming the paths of
    the LoRA-capable layers there, to write a pattern from), or nothing is left."""
    if targets is not None and targets not in TARGET_CHOICES:
        missing = [target for target in targets if not _target_found(target, adapt)]
        if missing:
            paths = sorted({layer_path(layer) for layer in adapt} | set(not_targeted))
            shown = paths[:8] + ([f"... ({len(paths)} in all)"] if len(paths) > 8 else [])
            raise ValueError(
                f"targets {missing} name no LoRA-capable layer in blocks "
                f"{[b.name for b in chosen]}: a layer name must equal the name, a pattern "
                "(an entry with '/' or regex syntax) is searched in the layer paths. The "
                f"LoRA-capable layers there: {', '.join(shown) or 'none'}."
            )
    if not adapt:
        raise ValueError(
            f"No layer in blocks {[b.name for b in chosen]} can take LoRA with "
            f"targets={targets!r}: Keras LoRA supports Dense, EinsumDense, Embedding and "
            f"Conv1D/2D/3D; these blocks hold {not_adaptable[:8]}. Choose other blocks or "
            "targets, or fine-tune with keras_transfer.unfreeze."
        )


def _check_layers_take_lora(adapt, rank) -> None:
    """Raises for a rank larger than a kernel allows, a kernel constraint or quantization."""
    too_small = [(layer, _max_rank(layer)) for layer in adapt if rank > _max_rank(layer)]
    if too_small:
        layer, limit = min(too_small, key=lambda item: item[1])
        raise ValueError(
            f"rank {rank} is larger than {len(too_small)} layer(s) allow, e.g. "
            f"{layer_path(layer)!r} ({type(layer).__name__}, kernel "
            f"{tuple(_base_kernel(layer).shape)}) allows at most rank {limit}. Use "
            f"rank <= {min(limit for _, limit in too_small)}, or leave those layers out "
            "with targets= / blocks=."
        )
    for layer in adapt:
        if getattr(layer, "kernel_constraint", None) is not None:
            raise ValueError(
                f"Layer {layer_path(layer)!r} has a kernel_constraint, which Keras LoRA "
                "does not support. Remove the constraint or leave the layer out with targets=."
            )
        if getattr(layer, "quantization_mode", None) not in (None, "int8", "int4"):
            raise ValueError(
                f"Layer {layer_path(layer)!r} is quantized ({layer.quantization_mode}), "
                "which Keras LoRA does not support."
            )


def enable_lora_on_layers(
    model: keras.Model,
    layers: Sequence[keras.layers.Layer],
    rank: int,
    alpha: float | None = None,
    train_bn: bool = False,
) -> None:
    """Enables LoRA of `rank` on exactly `layers` and freezes the rest of `model`'s backbone
    as `enable_lora` does (BatchNormalization trains only with `train_bn`).

    Unlike `enable_lora` it chooses and checks nothing: pass layers that
    `lora_capable_layers` returned, for a rank they allow.
    """
    backbone_model = backbones_lib.backbone_of(model, nested=True).model
    # Trainable as a whole, so that the per-layer flags below decide.
    backbone_model.trainable = True
    adapt_ids = {id(layer) for layer in layers}
    for layer in leaf_layers(backbone_model.layers):
        if id(layer) in adapt_ids:
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = train_bn
        else:
            layer.trainable = False
    for layer in layers:
        layer.enable_lora(int(rank), lora_alpha=alpha)
    _freeze_base_of_lora_layers(layers)


def _freeze_base_of_lora_layers(layers: Sequence[keras.layers.Layer]) -> None:
    # Keras freezes the kernel but leaves the bias trainable; LoRA trains the low-rank
    # update alone (Hu et al. freeze every pretrained weight).
    for layer in layers:
        for variable in layer.weights:
            if variable.name not in LORA_VARIABLE_NAMES:
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
            (KerasHub models with attention: their query/value projections; CNNs and
            `keras.applications`: all), `"all"` every supported layer, `"all_dense"` every
            `Dense`/`EinsumDense`, or a list of layer names and layer-path patterns (an
            entry with `/` or regex syntax is searched in each layer's path, e.g.
            `"transformer_block_2/.*/(query|key)$"`).
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
    chosen = _choose_layers(model, rank, alpha, blocks, top_blocks, from_block, fraction, targets)
    enable_lora_on_layers(model, chosen.adapt, rank, alpha, train_bn)
    return LoraSummary(
        rank=int(rank),
        alpha=float(alpha if alpha is not None else rank),
        blocks=[block.name for block in chosen.blocks],
        adapted=[layer_path(layer) for layer in chosen.adapt],
        not_adaptable=chosen.not_adaptable,
        not_targeted=chosen.not_targeted,
        normalization=chosen.normalization,
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
    _choose_layers(model, rank, alpha, blocks, top_blocks, from_block, fraction, targets)


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
            resumed.append(layer_path(layer))
    _freeze_base_of_lora_layers(layers)
    return resumed
