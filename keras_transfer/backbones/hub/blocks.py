"""The blocks of a `HubBackbone`: its SavedModel's variables grouped by name.

A SavedModel is one Keras layer, so a block of it is a set of that layer's variables:
`hub_block_names` groups them (by layer name, or by a `block_pattern`), `HubVariableGroup`
shows a group like a layer to block consumers, and `HubBlock` freezes and unfreezes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from keras_transfer import _keras_compat
from keras_transfer.backbones import registry as backbones_lib

__all__ = [
    "HubBlock",
    "HubVariableGroup",
    "hub_block_names",
    "is_batch_norm_variable",
]

_BATCH_NORM_NAME = re.compile(
    r"(?i)(batch_?norm|batch_normalization|(^|[/_])bn\d*([/_]|$)|moving_(mean|variance))"
)
# Parts of a layer name that split one depthwise-separable unit into two layers.
_SEPARABLE_PART = re.compile(r"(?i)_?(dw|pw|depthwise|pointwise)(?=_|$)")


def is_batch_norm_variable(name: str) -> bool:
    """Whether a module variable's name (e.g. `conv1_bn/moving_mean`) is batch norm's."""
    return bool(_BATCH_NORM_NAME.search(name))


def _common_prefix(paths: list[list[str]]) -> int:
    """How many leading name components all variables share (at least one left over)."""
    if not paths:
        return 0
    shortest = min(len(p) for p in paths)
    count = 0
    while count < shortest - 1 and len({p[count] for p in paths}) == 1:
        count += 1
    return count


def hub_block_names(variable_names: Sequence[str], block_pattern: str | None = None) -> list[str]:
    """The block of each variable, from its name.

    The default groups by layer: it drops the name components all variables share (a model
    scope such as `MobilenetV1/`), keeps the first remaining component up to its first
    number token (`Conv2d_13_pointwise` -> `Conv2d_13`, `conv_dw_13_bn` -> `conv_dw_13`,
    `conv1_bn` -> `conv1`, `block1a_se_reduce` -> `block1a`), and joins the two halves of a depthwise-separable unit
    (`conv_dw_13` + `conv_pw_13`). With `block_pattern`, the first group of the first match
    (or the match) names the block; a variable that matches nothing joins the block before.
    """
    names = [re.sub(r":\d+$", "", n) for n in variable_names]
    if block_pattern is not None:
        pattern = re.compile(block_pattern)
        blocks, previous = [], None
        for name in names:
            match = pattern.search(name)
            if match:
                previous = match.group(1) if match.groups() and match.group(1) else match.group(0)
            blocks.append(previous or "stem")
        return blocks
    paths = [n.split("/") for n in names]
    skip = _common_prefix(paths)
    blocks, keys = [], {}
    for path in paths:
        block = _layer_block(path[skip])
        key = _SEPARABLE_PART.sub("", block)
        # The first layer of a unit names it (`conv_dw_13` for `conv_dw_13` + `conv_pw_13`).
        blocks.append(keys.setdefault(key, block))
    return blocks


def _layer_block(layer_name: str) -> str:
    tokens = layer_name.split("_")
    # `Conv2d_13_pointwise`, `conv_dw_13_bn`, `Mixed_5b`: up to the first number token.
    for i, token in enumerate(tokens[1:], start=1):
        if re.fullmatch(r"\d+[a-z]?", token):
            return "_".join(tokens[: i + 1])
    # `conv1_bn`, `block1a_se_reduce`: the numbered first token.
    if re.search(r"\d", tokens[0]):
        return tokens[0]
    return re.sub(r"(?i)_(bn|batchnorm|relu\d*)$", "", layer_name)


class HubVariableGroup:
    """The variables of one block of a `HubBackbone`, seen like a layer.

    A SavedModel is one Keras layer, so a block of it is a set of that layer's variables.
    This gives block consumers the layer attributes they read (`name`, `weights`,
    `trainable_weights`, `trainable`); setting `trainable` sets the variables'.
    """

    def __init__(self, layer: keras.layers.Layer, name: str, variables: tuple[keras.Variable, ...]):
        self.layer = layer
        self.name = name
        self.variables = variables

    @property
    def weights(self) -> list[keras.Variable]:
        return list(self.variables)

    @property
    def trainable(self) -> bool:
        return self.layer.trainable and any(v.trainable for v in self._trainable_candidates)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for variable in self._trainable_candidates:
            variable.trainable = bool(value)

    @property
    def trainable_weights(self) -> list[keras.Variable]:
        return [v for v in self.variables if v.trainable] if self.layer.trainable else []

    @property
    def non_trainable_weights(self) -> list[keras.Variable]:
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.variables if id(v) not in trainable]

    @property
    def _trainable_candidates(self) -> list[keras.Variable]:
        # Variables the module itself marks non-trainable (moving averages) stay so.
        candidates = {id(v) for v in _keras_compat.own_trainable_variables(self.layer)}
        return [v for v in self.variables if id(v) in candidates]

    @property
    def output(self):
        raise ValueError(
            f"Cannot cut a TF Hub backbone at block {self.name!r}: a SavedModel is one layer "
            "and only its final output is available. Use the whole backbone."
        )

    def __repr__(self) -> str:
        return f"HubVariableGroup({self.name!r}, {len(self.variables)} variables)"


class HubBlock(backbones_lib.Block):
    """A block of a `HubBackbone`: a group of the module's variables (see `hub_block_names`).

    Its only "layer" is a `HubVariableGroup`; `set_trainable` sets its variables, keeping
    batch-norm variables frozen unless `train_bn` (the module then also runs its batch norm
    in inference mode, see `HubBackbone`).
    """

    @property
    def group(self) -> HubVariableGroup:
        return self.layers[0]

    @property
    def variables(self) -> list[keras.Variable]:
        return list(self.group.variables)

    @property
    def output(self):
        return self.group.output

    def set_trainable(self, trainable: bool, train_bn: bool = False) -> None:
        layer = self.group.layer
        if trainable and not layer.trainable:
            # Keras' `Layer.trainable` setter resets every variable: turn the layer on with
            # all its variables frozen, then enable this block's.
            layer.trainable = True
            for variable in _keras_compat.own_trainable_variables(layer):
                variable.trainable = False
        for variable in self.group._trainable_candidates:
            is_batch_norm = is_batch_norm_variable(layer.variable_name(variable))
            variable.trainable = bool(trainable and (train_bn or not is_batch_norm))

    def __repr__(self) -> str:
        return f"HubBlock({self.name!r}, {len(self.variables)} variables)"
