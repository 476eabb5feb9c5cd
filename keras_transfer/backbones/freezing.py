"""Freezing and unfreezing backbones by block.

The rule chosen here is the Keras transfer-learning guide's: when a backbone is unfrozen,
its BatchNormalization layers stay frozen, and a frozen BatchNormalization layer runs in
inference mode in Keras 3. Small fine-tuning batches would otherwise overwrite the
pretrained moving statistics and wreck the features (the guide shows accuracy collapsing).
Pass `train_bn=True` for fastai's choice (BN layers always trainable, even in frozen
blocks), which helps when the target domain's statistics differ a lot from ImageNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.backbones.registry import Backbone
from keras_transfer.backbones.registry import Block

__all__ = [
    "backbone_and_blocks",
    "freeze",
    "select_blocks",
    "trainable_blocks",
    "unfreeze",
    "unfreeze_request",
]


def backbone_and_blocks(model: keras.Model | Backbone) -> tuple[keras.Model, list[Block]]:
    """The backbone `keras.Model` inside `model` and its blocks, input side first."""
    backbone = backbones_lib.backbone_of(model, nested=True)
    return backbone.model, backbone.blocks


def _set_bn_trainable(blocks: Sequence[Block], trainable: bool) -> None:
    for block in blocks:
        for layer in block.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = trainable


def freeze(model: keras.Model | Backbone, train_bn: bool = False) -> None:
    """Freezes the whole backbone of `model`; the head stays trainable.

    Args:
        model: a classifier from `create_classifier`, a model nesting a
            `keras.applications` backbone, or a `Backbone`.
        train_bn: keep BatchNormalization layers trainable (fastai's `train_bn`).

    Recompile the model afterwards: Keras collects trainable weights at compile time.
    """
    if train_bn:
        # No block trainable, but BN layers everywhere: exactly unfreeze's train_bn path.
        unfreeze(model, top_blocks=0, train_bn=True)
        return
    backbone_model, _ = backbone_and_blocks(model)
    backbone_model.trainable = False


def select_blocks(
    blocks: Sequence[Block],
    top_blocks: int | str | None = None,
    from_block: str | int | None = None,
    fraction: float | None = None,
) -> list[Block]:
    """The blocks an unfreeze request names: the last `top_blocks`, all from `from_block`
    on, the top `fraction` of blocks, or all of them when nothing is given."""
    given = [arg is not None for arg in (top_blocks, from_block, fraction)]
    if sum(given) > 1:
        raise ValueError("Give at most one of top_blocks, from_block and fraction.")
    if top_blocks == "all" or not any(given):
        return list(blocks)
    if top_blocks is not None:
        if isinstance(top_blocks, bool) or not isinstance(top_blocks, int) or top_blocks < 0:
            raise ValueError(
                f"top_blocks must be a non-negative integer or 'all', got {top_blocks!r}."
            )
        if top_blocks > len(blocks):
            raise ValueError(
                f"Cannot unfreeze the top {top_blocks} blocks: the backbone has {len(blocks)} "
                f"({', '.join(b.name for b in blocks)}). Use top_blocks='all' to unfreeze all."
            )
        return list(blocks[len(blocks) - top_blocks :]) if top_blocks else []
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
        count = round(fraction * len(blocks))
        return list(blocks[len(blocks) - count :]) if count else []
    start = backbones_lib.find_block(blocks, from_block).index
    return [block for block in blocks if block.index >= start]


def unfreeze(
    model: keras.Model | Backbone,
    top_blocks: int | str | None = None,
    *,
    from_block: str | int | None = None,
    fraction: float | None = None,
    train_bn: bool = False,
) -> list[str]:
    """Makes the chosen backbone blocks trainable and freezes the others.

    Args:
        model: a classifier from `create_classifier`, a model nesting a
            `keras.applications` backbone, or a `Backbone`.
        top_blocks: unfreeze this many blocks counted from the output side, or `"all"`.
        from_block: unfreeze this block (name or index) and every block after it.
        fraction: unfreeze this fraction of the blocks, from the output side.
        train_bn: also make BatchNormalization layers trainable (in every block). By default
            they stay frozen and in inference mode, as the module docstring explains.

    Returns:
        The names of the blocks now trainable, input side first.

    Recompile the model afterwards: Keras collects trainable weights at compile time.
    """
    backbone_model, blocks = backbone_and_blocks(model)
    chosen = select_blocks(blocks, top_blocks, from_block, fraction)
    chosen_ids = {id(block) for block in chosen}
    backbone_model.trainable = True
    for block in blocks:
        block.set_trainable(id(block) in chosen_ids, train_bn=train_bn)
    if train_bn:
        _set_bn_trainable(blocks, True)
    return [block.name for block in chosen]


def trainable_blocks(model: keras.Model | Backbone) -> list[str]:
    """Names of the blocks with at least one trainable non-BatchNorm layer."""
    backbone_model, blocks = backbone_and_blocks(model)
    if not backbone_model.trainable:
        return []
    return [
        block.name
        for block in blocks
        if any(
            layer.trainable
            and layer.weights
            and not isinstance(layer, keras.layers.BatchNormalization)
            for layer in block.layers
        )
    ]


def unfreeze_request(unfreeze: int | float | str) -> dict[str, Any]:
    """`unfreeze(...)` keyword arguments from one value: a block count, a fraction, `"all"`
    or a block name to unfreeze from."""
    if unfreeze == "all":
        return {"top_blocks": "all"}
    if isinstance(unfreeze, bool):
        raise ValueError(
            f"unfreeze must be a count, fraction, block name or 'all', got {unfreeze!r}."
        )
    if isinstance(unfreeze, int):
        return {"top_blocks": unfreeze}
    if isinstance(unfreeze, float):
        return {"fraction": unfreeze}
    if isinstance(unfreeze, str):
        if unfreeze.isdigit():
            return {"top_blocks": int(unfreeze)}
        return {"from_block": unfreeze}
    raise ValueError(f"unfreeze must be a count, fraction, block name or 'all', got {unfreeze!r}.")
