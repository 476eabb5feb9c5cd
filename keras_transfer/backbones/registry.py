"""A registry of headless backbones and a uniform way to ask any of them for its blocks.

A *block* is an ordered group of layers (the stem, one stage or residual/inverted block,
the top convolution) that freezing, layer-wise learning rates and feature cutting act on,
instead of raw layer indices that differ between families and Keras versions.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Block",
    "BlockRules",
    "WeightsUnavailableError",
    "backbone_of",
    "backbone_prefix",
    "blocks_from_rules",
    "create_backbone",
    "find_backbone_model",
    "find_block",
    "get_blocks",
    "get_spec",
    "keras_cache_dir",
    "list_backbones",
    "register_backbone",
    "register_backbone_prefix",
    "register_block_finder",
]

# ---------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Block:
    """An ordered group of backbone layers that is frozen, unfrozen or cut at as one.

    Attributes:
        name: block name, e.g. `"block_16"`, `"conv5"`, `"stem"`, `"top"`.
        layers: the block's layers, in the backbone's topological order.
        index: position of the block in its backbone, 0 for the first (input side).
    """

    name: str
    layers: tuple[keras.layers.Layer, ...]
    index: int = 0

    @property
    def variables(self) -> list[keras.Variable]:
        """All weights of the block's layers (trainable and not)."""
        seen: dict[int, keras.Variable] = {}
        for layer in self.layers:
            for variable in layer.weights:
                seen.setdefault(id(variable), variable)
        return list(seen.values())

    @property
    def output(self):
        """The symbolic output of the block's last layer, to cut the backbone here."""
        return self.layers[-1].output

    def set_trainable(self, trainable: bool, train_bn: bool = False) -> None:
        """Sets the block trainable or frozen.

        BatchNormalization layers are only made trainable when `train_bn` is true: a frozen
        BatchNormalization layer runs in inference mode in Keras 3, so keeping it frozen keeps
        the pretrained moving statistics (the Keras transfer-learning guide's rule).
        """
        for layer in self.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = trainable and train_bn
            else:
                layer.trainable = trainable

    def __repr__(self) -> str:
        return f"Block({self.name!r}, {len(self.layers)} layers, {len(self.variables)} variables)"


@dataclasses.dataclass(frozen=True)
class BlockRules:
    """How a family's layer names map to blocks.

    Args:
        rules: `(regex, name)` pairs tried in order against each layer name; `name` is a
            `str.format` template over the match groups, or a callable of the match.
        unnamed: where a layer matching no rule goes: `"previous"` (the block of the layer
            before it: trailing activations, auto-named shortcut convs) or `"next"` (the
            block of the next named layer: Inception branches, named only at their merge).
        stem_ends_with: with `unnamed="next"`, the unnamed layers up to the last layer of this
            type before the first named layer form the `"stem"` block.
    """

    rules: tuple[tuple[str, str | Callable[[re.Match], str]], ...]
    unnamed: str = "previous"
    stem_ends_with: type | None = None

    def block_of(self, layer_name: str) -> str | None:
        for pattern, name in self.rules:
            match = re.search(pattern, layer_name)
            if match:
                return name(match) if callable(name) else name.format(*match.groups())
        return None

    def assign(self, layers: Sequence[keras.layers.Layer]) -> list[str]:
        names = [self.block_of(layer.name) for layer in layers]
        if self.unnamed == "next":
            first_named = next((i for i, n in enumerate(names) if n), len(names))
            stem_end = -1
            if self.stem_ends_with is not None:
                for i in range(first_named):
                    if isinstance(layers[i], self.stem_ends_with):
                        stem_end = i
            following = "top"
            for i in range(len(names) - 1, -1, -1):
                if names[i] is None:
                    names[i] = "stem" if i <= stem_end else following
                following = names[i]
        else:
            previous = "stem"
            for i, name in enumerate(names):
                if name is None:
                    names[i] = previous
                previous = names[i]
        return names


def blocks_from_rules(model: keras.Model, rules: BlockRules) -> list[Block]:
    """Groups a functional model's layers into blocks with `rules`."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    grouped: dict[str, list[keras.layers.Layer]] = {}
    for layer, block_name in zip(layers, rules.assign(layers)):
        grouped.setdefault(block_name, []).append(layer)
    return [Block(name, tuple(group), index) for index, (name, group) in enumerate(grouped.items())]


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the package knows about one registered backbone.

    Attributes:
        name: registry name, e.g. `"mobilenet_v2"`.
        constructor: builds the headless model: `constructor(input_shape=..., weights=..., **kwargs)`.
        family: block-rule family, shared by all sizes of an architecture.
        default_size: the input size the pretrained weights were trained at.
        min_size: the smallest input height/width the architecture accepts.
        preprocessing: `ImagePreprocessing` mode, or `None` when the model rescales its
            raw 0-255 input itself (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).
        model_name_pattern: regex on the Keras model name, to recognise a model the user
            built with `keras.applications` directly.
        blocks: returns the blocks of a model built by `constructor`.
    """

    name: str
    constructor: Callable[..., keras.Model]
    family: str
    default_size: int
    min_size: int = 32
    preprocessing: str | None = None
    model_name_pattern: str = ""
    blocks: Callable[[keras.Model], list[Block]] | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, override: bool = False) -> BackboneSpec:
    """Adds a backbone to the registry used by `create_backbone`."""
    if spec.name in _REGISTRY and not override:
        raise ValueError(f"A backbone named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names accepted by `create_backbone`, optionally filtered by a regex."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [name for name in names if re.search(pattern, name)]
    return names


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; unknown names raise with the closest matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} `keras_transfer.list_backbones()` lists all "
            "names; TF Hub models are named 'hub:<handle or path>', KerasHub image backbones "
            "'keras_hub:<preset name or folder>'."
        ) from None


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded and are not in the Keras cache."""


@dataclasses.dataclass
class Backbone:
    """A headless model plus what the rest of the package needs to know about it.

    Attributes:
        name: registry name (`"mobilenet_v2"`, `"hub:/path/to/saved_model"`, ...).
        model: the headless `keras.Model`; its output is the last feature map (or, for
            feature-vector hub models, the pooled vector).
        default_size: the input height/width the pretrained weights were trained at.
        preprocessing: the `ImagePreprocessing` mode the model needs in front of it, or
            `None` when it takes raw 0-255 RGB itself.
    """

    name: str
    model: keras.Model
    default_size: int
    preprocessing: str | None = None

    @property
    def blocks(self) -> list[Block]:
        """The model's blocks, input side first."""
        return get_blocks(self.model, self.name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape[1:])

    def block_names(self) -> list[str]:
        return [block.name for block in self.blocks]

    def cut(self, block: str | int) -> Backbone:
        """A backbone whose output is the output of `block` (name or index).

        For "small data, different domain" transfer: features from lower blocks are less
        specific to the pretraining task.
        """
        target = find_block(self.blocks, block)
        model = keras.Model(
            self.model.inputs, target.output, name=f"{self.model.name}_to_{target.name}"
        )
        return Backbone(self.name, model, self.default_size, self.preprocessing)


def find_block(blocks: Sequence[Block], block: str | int) -> Block:
    if isinstance(block, int):
        if not -len(blocks) <= block < len(blocks):
            raise ValueError(
                f"Block index {block} out of range: the model has {len(blocks)} blocks."
            )
        return blocks[block]
    for candidate in blocks:
        if candidate.name == block:
            return candidate
    raise ValueError(f"No block named {block!r}. Blocks are: {', '.join(b.name for b in blocks)}.")


def keras_cache_dir() -> str:
    """Where `keras.utils.get_file` caches pretrained weights (`$KERAS_HOME/models`)."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "models")


def _weights_unavailable(name: str, error: Exception) -> WeightsUnavailableError:
    url = re.search(r"(https?://\S+?):? ", str(error))
    filename = url.group(1).rsplit("/", 1)[-1] if url else "<weights file>"
    cached = os.path.join(keras_cache_dir(), filename)
    return WeightsUnavailableError(
        f"Could not download the ImageNet weights of {name!r} (no network?): {error}\n"
        f"Offline remedies: put the file at {cached} (Keras looks there before downloading), "
        f"or pass the file itself: create_backbone({name!r}, weights='/path/to/{filename}')."
    )


def create_backbone(
    name: str,
    input_shape: Sequence[int] | None = None,
    weights: str | None = "imagenet",
    **kwargs: Any,
) -> Backbone:
    """Builds a registered backbone without its classification top.

    Args:
        name: a name from `list_backbones()`, `"hub:<handle or path>"` for a TF2 SavedModel,
            or `"keras_hub:<preset name or folder>"` for a KerasHub image backbone.
        input_shape: `(height, width, channels)`; defaults to the size the weights were
            trained at. Any size from the family's minimum up works with any weights.
        weights: `"imagenet"` (downloaded once into the Keras cache), `None` (random
            initialisation) or the path to a weights file (e.g. a Keras `*_no_top.h5`).
        **kwargs: passed to the `keras.applications` constructor (e.g. `alpha=0.75`).

    Returns:
        A `Backbone`: the headless model, its preprocessing mode, default size and blocks.

    Example:
    ```python
    backbone = create_backbone("mobilenet_v2", input_shape=(96, 96, 3), weights=None)
    backbone.block_names()[:3]  # -> ['stem', 'block_0', 'block_1']
    ```
    """
    prefix = backbone_prefix(name)
    if prefix is not None:
        factory = _PREFIX_FACTORIES[prefix]
        if _takes_weights(factory):
            kwargs["weights"] = weights
        return factory(name[len(prefix) :], input_shape=input_shape, **kwargs)
    spec = get_spec(name)
    if input_shape is None:
        input_shape = (spec.default_size, spec.default_size, 3)
    input_shape = tuple(int(d) if d is not None else None for d in input_shape)
    _check_input_shape(spec, input_shape, weights)
    weights_path = None
    if weights not in ("imagenet", None):
        weights_path = os.fspath(weights)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"weights={weights_path!r} for backbone {name!r} is not a file. Pass "
                "'imagenet', None, or the path to a weights file such as "
                f"{os.path.join(keras_cache_dir(), '<name>_no_top.h5')}."
            )
        weights = None
    try:
        model = spec.constructor(
            include_top=False, weights=weights, input_shape=input_shape, **kwargs
        )
    except Exception as error:
        if weights == "imagenet" and "URL fetch failure" in str(error):
            raise _weights_unavailable(name, error) from None
        raise
    if weights_path:
        _load_weights(model, weights_path, name)
    return Backbone(name, model, spec.default_size, spec.preprocessing)


def _check_input_shape(spec: BackboneSpec, input_shape: tuple, weights: Any) -> None:
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape} for {spec.name!r}."
        )
    height, width, channels = input_shape
    for size in (height, width):
        if size is not None and size < spec.min_size:
            raise ValueError(
                f"{spec.name!r} needs inputs of at least {spec.min_size}x{spec.min_size}, got "
                f"{height}x{width}. Use image_size >= {spec.min_size} (its pretrained size is "
                f"{spec.default_size})."
            )
    if channels != 3 and weights is not None:
        raise ValueError(
            f"Pretrained {spec.name!r} weights expect 3 RGB channels, got {channels}. Convert "
            "the images to RGB (keras_transfer's data loaders do) or use weights=None."
        )


def _load_weights(model: keras.Model, path: str, name: str) -> None:
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises ValueError/KeyError/h5py errors here.
        raise ValueError(
            f"The weights file {path!r} does not fit backbone {name!r} "
            f"(model {model.name!r}): {error}\nCheck that the file was saved from the same "
            "architecture without its top (e.g. mobilenet_1_0_224_tf_no_top.h5 for 'mobilenet')."
        ) from error


# ---------------------------------------------------------------------------------------
# Blocks of any model
# ---------------------------------------------------------------------------------------

# Backbone factories for names with a prefix (`"hub:<handle>"`), registered by the module
# that owns them: `factory(rest_of_name, input_shape=..., **kwargs) -> Backbone`.
_PREFIX_FACTORIES: dict[str, Callable[..., Backbone]] = {}


def register_backbone_prefix(prefix: str, factory: Callable[..., Backbone]) -> None:
    """Teaches `create_backbone` names that start with `prefix` (e.g. `"hub:"`): the rest of
    the name goes to `factory(rest, input_shape=..., **kwargs)`, which returns a `Backbone`.
    A factory with a `weights` parameter also gets `create_backbone`'s `weights`."""
    if not prefix.endswith(":"):
        raise ValueError(f"A backbone prefix ends with ':', got {prefix!r}.")
    _PREFIX_FACTORIES[prefix] = factory


def backbone_prefix(name: str) -> str | None:
    """The registered prefix `name` starts with (`"hub:"`, `"keras_hub:"`), or `None` for
    a registry name."""
    # The longest first, so that no prefix shadows a longer one it begins.
    for prefix in sorted(_PREFIX_FACTORIES, key=len, reverse=True):
        if name.startswith(prefix):
            return prefix
    return None


def _takes_weights(factory: Callable[..., Backbone]) -> bool:
    try:
        return "weights" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


# Block finders for backbones that are not `keras.applications` models (TF Hub, user
# registered), keyed by a predicate on the model.
_BLOCK_FINDERS: list[
    tuple[Callable[[keras.Model], bool], Callable[[keras.Model], list[Block]]]
] = []


def register_block_finder(
    matches: Callable[[keras.Model], bool], finder: Callable[[keras.Model], list[Block]]
) -> None:
    """Teaches `get_blocks` the blocks of models that `matches` accepts."""
    _BLOCK_FINDERS.append((matches, finder))


def _is_classifier(model: Any) -> bool:
    # A classifier from `create_classifier` (also after a reload), or any model that holds
    # its backbone the same way, in a `backbone` attribute.
    return isinstance(getattr(model, "backbone", None), keras.Model)


def find_backbone_model(model: keras.Model) -> tuple[keras.Model, str | None]:
    """The backbone inside `model` (or `model` itself) and its registry name if known."""
    if _is_classifier(model):
        return model.backbone, getattr(model, "backbone_name", None)
    if _spec_for_model(model) or any(matches(model) for matches, _ in _BLOCK_FINDERS):
        return model, None
    for layer in model.layers:
        if isinstance(layer, keras.Model) and (
            _spec_for_model(layer) or any(matches(layer) for matches, _ in _BLOCK_FINDERS)
        ):
            return layer, None
    raise ValueError(
        f"Cannot find a known backbone in model {model.name!r}. Build it with "
        "keras_transfer.create_classifier / create_backbone, or nest a keras.applications "
        "model in it."
    )


def backbone_of(model: keras.Model | Backbone, *, nested: bool = False) -> Backbone:
    """The `Backbone` of a model: its headless `keras.Model`, name and preprocessing.

    A `Backbone` is returned as it is. A classifier (`create_classifier`'s, also reloaded
    from a `.keras` file: a model whose `backbone` attribute is a `keras.Model`) gives its
    backbone model, the backbone's registry name (else the backbone model's name) and the
    classifier's preprocessing. With `nested=True`, any other model gives the known backbone
    inside it, or itself (`find_backbone_model`): its preprocessing is unknown, so use only
    its model, name and blocks. `default_size` is the backbone model's input height (224
    when the height is not fixed or the model takes several inputs).

    Args:
        model: a `Backbone`, a classifier, or (with `nested=True`) any model holding a
            known backbone.
        nested: look for a known backbone inside models that are not classifiers.

    Returns:
        A `Backbone`; its `blocks` are the model's blocks.

    Raises:
        TypeError: `model` is neither a `Backbone` nor a classifier, and `nested` is false.
        ValueError: with `nested=True`, no known backbone is inside `model`.

    Example:

    ```python
    model = create_classifier("mobilenet_v2", 2, input_shape=(96, 96, 3), weights=None)
    backbone = backbone_of(model)
    backbone.name, backbone.preprocessing  # -> ('mobilenet_v2', 'tf')
    ```
    """
    if isinstance(model, Backbone):
        return model
    if _is_classifier(model):
        backbone_model = model.backbone
        name = getattr(model, "backbone_name", None) or backbone_model.name
        preprocessing = getattr(model, "preprocessing", None)
    elif nested and isinstance(model, keras.Model):
        backbone_model, name = find_backbone_model(model)
        name, preprocessing = name or backbone_model.name, None
    else:
        raise TypeError(
            f"Expected a Backbone (create_backbone) or a TransferClassifier, got "
            f"{type(model).__name__}. A plain keras.Model has no known preprocessing: wrap it "
            "with create_classifier first."
        )
    return Backbone(name, backbone_model, _input_height(backbone_model), preprocessing)


def _input_height(model: keras.Model) -> int:
    # An image model's input height; 224 when not fixed, or for models of several inputs
    # (a KerasHub text encoder), where no image size applies.
    shape = model.input_shape
    height = shape[1] if isinstance(shape, tuple) and len(shape) > 1 else None
    return int(height) if isinstance(height, int) and height else 224


def _spec_for_model(model: keras.Model) -> BackboneSpec | None:
    for spec in _REGISTRY.values():
        if spec.model_name_pattern and re.search(spec.model_name_pattern, model.name):
            return spec
    return None


def get_blocks(model: keras.Model | Backbone, backbone_name: str | None = None) -> list[Block]:
    """The blocks of a backbone, or of the backbone inside a classifier, input side first.

    Works on what `create_backbone` / `create_classifier` return, on models reloaded from
    `.keras` files, and on models that nest a `keras.applications` backbone.
    """
    if isinstance(model, Backbone):
        model, backbone_name = model.model, model.name
    if backbone_name in _REGISTRY and not hasattr(model, "backbone"):
        # The named backbone itself, possibly cut (`Backbone.cut`), whose model name no
        # `model_name_pattern` recognises.
        backbone_model = model
    else:
        backbone_model, found_name = find_backbone_model(model)
        backbone_name = backbone_name or found_name
    for matches, finder in _BLOCK_FINDERS:
        if matches(backbone_model):
            return finder(backbone_model)
    spec = _REGISTRY.get(backbone_name or "") or _spec_for_model(backbone_model)
    if spec is None or spec.blocks is None:
        raise ValueError(f"No block rules for backbone {backbone_name or backbone_model.name!r}.")
    return spec.blocks(backbone_model)
