"""The blocks of a KerasHub image backbone: its stem, stages or transformer layers, and top.

A CNN's graph names its layers by stage (`stack0_block1_conv`, `block3a_project`,
`block_2_0`): the layers up to a name's first number (`stack0`, `block3`, `block_2`) form a
block. A ViT-like family nests its transformer layers in one encoder layer of the graph
(`KerasHubFamily.nested`, a layer named `*encoder`): each repeated sublayer
(`transformer_block_3`, `layers_3`, a stage) is a block. Unnumbered layers before the first numbered one form `"stem"`, after it
`"top"`; a block without weights, or holding only normalization layers (a final
`LayerNormalization`), joins the block before it.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import weakref
from typing import Any

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry
from keras_transfer.backbones.keras_hub import families
from keras_transfer.backbones.keras_hub import layers as layers_lib

__all__ = ["KerasHubBlock", "keras_hub_blocks", "unit_layers"]

# Up to and including a name's first number: `stack0_block1_conv` -> `stack0`.
_NUMBERED = re.compile(r"^\D*?\d+")
_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class KerasHubBlock(registry.Block):
    """A block of a KerasHub image backbone. Its `output` is the pooled output of its last
    layer in the graph of `model` (the `create_backbone` model holding the backbone),
    computed for every block in one pass (`layers.BlockOutputs`)."""

    model: keras.Model | None = None

    @property
    def output(self):
        return _block_outputs(self.model)[self.name]


def _direct_sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return _keras_compat.flatten_layers(layer, include_self=False, recursive=False)


def _repeated(sublayers: list[keras.layers.Layer]) -> bool:
    counts = collections.Counter(type(layer) for layer in sublayers if layer.weights)
    return bool(counts) and max(counts.values()) >= 2


def _own_name(backbone: keras.Model, layer: keras.layers.Layer) -> str:
    # Some families prefix their layers with the backbone's name (`dinov2_backbone_`).
    prefix = f"{backbone.name}_"
    return layer.name[len(prefix) :] if layer.name.startswith(prefix) else layer.name


def unit_layers(backbone: keras.Model, nested: bool) -> list[keras.layers.Layer]:
    """The layers blocks are made of, in order: the backbone's graph layers, with its
    encoder layer (`*encoder`) replaced by its sublayers when `nested` and they repeat."""
    units = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        encoder = nested and _own_name(backbone, layer).endswith("encoder")
        sublayers = _direct_sublayers(layer) if encoder else []
        units.extend(sublayers if sublayers and _repeated(sublayers) else [layer])
    return units


def _names(backbone: keras.Model, units: list[keras.layers.Layer]) -> list[str]:
    """The block name of each unit (see the module docstring)."""
    names, previous, numbered = [], "stem", False
    for layer in units:
        match = _NUMBERED.match(_own_name(backbone, layer))
        if match:
            name, numbered = match.group(0), True
        elif not numbered:
            name = "stem"
        else:
            name = "top" if layer.weights else previous
        names.append(name)
        previous = name
    return names


def _runs(units, names) -> list[tuple[str, list[keras.layers.Layer]]]:
    """Consecutive units of one name as one group, names made unique."""
    groups: list[tuple[str, list[keras.layers.Layer]]] = []
    used: collections.Counter = collections.Counter()
    for layer, name in zip(units, names, strict=True):
        if groups and groups[-1][0].split("~")[0] == name:
            groups[-1][1].append(layer)
            continue
        used[name] += 1
        groups.append((name if used[name] == 1 else f"{name}~{used[name]}", [layer]))
    return [(name.replace("~", "_"), group) for name, group in groups]


def _joins_previous(group: list[keras.layers.Layer]) -> bool:
    weighted = [layer for layer in group if layer.weights]
    return not weighted or all(isinstance(layer, _NORMALIZATION) for layer in weighted)


def _merged(groups):
    """Groups without weights or of normalization only joined to the one before (the
    first to the one after)."""
    merged: list[tuple[str, list[keras.layers.Layer]]] = []
    carry: list[keras.layers.Layer] = []
    for name, group in groups:
        if _joins_previous(group):
            if merged:
                merged[-1][1].extend(group)
            else:
                carry.extend(group)
            continue
        merged.append((name, carry + group))
        carry = []
    if carry:
        merged.append(("stem", carry))
    return merged


def keras_hub_blocks(model: keras.Model) -> list[registry.Block]:
    """The blocks of the KerasHub image backbone `model` is or holds, input side first."""
    backbone = families.find_image_backbone(model)
    if backbone is None:
        raise ValueError(f"{model.name!r} holds no supported KerasHub image backbone.")
    family = families.family_of(backbone)
    units = unit_layers(backbone, family.nested)
    groups = _merged(_runs(units, _names(backbone, units)))
    return [
        KerasHubBlock(name, tuple(group), index, model=model)
        for index, (name, group) in enumerate(groups)
    ]


# model -> {block name: its pooled output in the model's graph}; one `BlockOutputs` node
# serves every block, so that per-block features take one backbone pass.
_OUTPUTS: weakref.WeakKeyDictionary[keras.Model, dict[str, Any]] = weakref.WeakKeyDictionary()


def _backbone_input(model: keras.Model, backbone: keras.Model):
    """The tensor of `model`'s graph that the KerasHub backbone takes (after the preset's
    rescaling), or the backbone's own input when `model` is the backbone."""
    if model is backbone:
        inputs = backbone.input
        return next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    try:
        return model.get_layer("preprocessing").output
    except ValueError:
        return model.inputs[0]


def _output_layer(block: registry.Block) -> keras.layers.Layer:
    """The layer whose output is the block's: its last layer with a per-image output (not
    DINOv3's rotary position table); a sublayer, which has no output of its own in the
    graph, is taken as it is."""
    for layer in reversed(block.layers):
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a nested sublayer: no node in the graph
            return layer
        first = keras.tree.flatten(output)[0]
        if first.shape and first.shape[0] is None:
            return layer
    return block.layers[-1]


def _block_outputs(model: keras.Model) -> dict[str, Any]:
    cached = _OUTPUTS.get(model)
    if cached is None:
        backbone = families.find_image_backbone(model)
        blocks = keras_hub_blocks(model)
        # The last block's output is the model's own; earlier token outputs are averaged
        # (at the stem a class token is still the same for every image).
        pooling = families.token_pooling(backbone)
        tap = layers_lib.BlockOutputs(
            backbone,
            [_output_layer(block) for block in blocks],
            ["mean"] * (len(blocks) - 1) + [pooling],
            name=f"{backbone.name}_block_outputs",
        )
        outputs = tap(_backbone_input(model, backbone))
        cached = {block.name: output for block, output in zip(blocks, outputs, strict=True)}
        _OUTPUTS[model] = cached
    return cached


registry.register_block_finder(
    lambda model: families.find_image_backbone(model) is not None, keras_hub_blocks
)
