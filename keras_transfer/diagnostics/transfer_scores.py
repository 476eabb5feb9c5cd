"""Transferability scores: will this backbone (or this block) transfer to my data?

Three scores computed from the features of the labelled target data, with no training:

- **LogME** (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021): the log marginal evidence, per example, of a Bayesian
  linear model from the features to each one-hot label column, with its prior precision
  alpha and noise precision beta set by MacKay's fixed-point iteration. Computed here from
  one thin SVD of the feature matrix, as in the authors' reference code (thuml/LogME), with
  the exact log-determinant of the posterior precision (also for fewer examples than
  feature dimensions). Higher is better.
- **LEEP** (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020): the mean log-likelihood of the
  "expected empirical predictor" that maps the source classifier's predicted label
  distribution to target labels through the empirical conditional P(y | z). It needs the
  source classifier (e.g. the ImageNet top of a with-top weights file) and so scores the
  backbone's final output only. Higher (closer to 0) is better.
- **H-score** (Bao, Li, Huang, Wang, Zheng, "An Information-Theoretic Approach to
  Transferability in Task Transfer Learning", ICIP 2019): tr(cov(f)^-1 cov(E[f | y])), how
  much of the features' variance the class-conditional means explain. It lies in
  [0, C - 1] for C classes. With fewer examples than feature dimensions the covariance is
  singular and the score saturates; `shrinkage="auto"` uses the Ledoit-Wolf shrinkage
  estimate instead (the regularised H-score of Ibrahim, Ponomareva, Mazumder, "Newer is
  not always better", ICLR 2022). Higher is better.

`transferability(backbone, data, blocks="all")` scores the globally average-pooled output
of each block from one backbone pass per image (the cached-feature machinery of
`keras_transfer.training.features`), and `rank_backbones` ranks backbones and `feature_block` cuts.
The scores themselves, on feature arrays, are in `feature_scores`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import Backbone
from keras_transfer.data import is_image_data
from keras_transfer.diagnostics.feature_scores import DEFAULT_MIN_EXAMPLES_PER_CLASS
from keras_transfer.diagnostics.feature_scores import class_indices
from keras_transfer.diagnostics.feature_scores import h_score
from keras_transfer.diagnostics.feature_scores import leep
from keras_transfer.diagnostics.feature_scores import logme
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.training import extraction as features_lib

__all__ = [
    "METHODS",
    "RankedCandidate",
    "SOURCE_PROBABILITIES",
    "block_features",
    "rank_backbones",
    "source_head_from_model",
    "transferability",
]

METHODS = ("logme", "leep", "hscore")
SOURCE_PROBABILITIES = "source_probabilities"
_SCORES: dict[str, Callable[..., float]] = {"logme": logme, "leep": leep, "hscore": h_score}


# ---------------------------------------------------------------------------------------
# Features of each block
# ---------------------------------------------------------------------------------------


def source_head_from_model(model_with_top: keras.Model, backbone: Backbone) -> keras.Model:
    """The classification top of a with-top `keras.applications` model, as a model from
    `backbone`'s output feature map to the source-class probabilities.

    The top is the chain of layers after the backbone's last layer (for MobileNet:
    pooling, dropout, the 1x1 `conv_preds`, reshape, softmax), applied to a new input, so
    it shares the with-top model's weights.

    Args:
        model_with_top: e.g. `keras.applications.MobileNet(weights=".../mobilenet_1_0_224_tf.h5")`.
        backbone: the headless `Backbone` of the same architecture.

    Returns:
        A `keras.Model`: feature map -> probabilities.

    Example:
    ```python
    with_top = keras.applications.MobileNet(weights="mobilenet_1_0_224_tf.h5")
    backbone = kt.create_backbone("mobilenet", weights="mobilenet_1_0_224_tf_no_top.h5")
    head = kt.transfer_scores.source_head_from_model(with_top, backbone)
    ```
    """
    last = backbone.model.layers[-1].name
    names = [layer.name for layer in model_with_top.layers]
    if last not in names:
        raise ValueError(
            f"The model {model_with_top.name!r} has no layer named {last!r} (the last layer of "
            f"backbone {backbone.name!r}): pass the with-top model of the same architecture, "
            "e.g. keras.applications.MobileNet(weights='mobilenet_1_0_224_tf.h5') for "
            "'mobilenet'."
        )
    top = model_with_top.layers[names.index(last) + 1 :]
    if not top:
        raise ValueError(f"The model {model_with_top.name!r} has no layers after {last!r}.")
    inputs = keras.Input(shape=backbone.model.output_shape[1:], name="source_features")
    x = inputs
    for layer in top:
        x = layer(x)
    return keras.Model(inputs, x, name="source_head")


def _resolve_blocks(backbone: Backbone, blocks: Any) -> list[str | None]:
    """Block names to score; `None` stands for the backbone's own output."""
    if blocks is None:
        return [None]
    try:
        known = backbone.blocks
    except ValueError as error:
        raise ValueError(
            f"blocks={blocks!r} needs the blocks of backbone {backbone.name!r}: {error} Use "
            "blocks=None to score its output."
        ) from None
    if isinstance(blocks, str) and blocks == "all":
        return [block.name for block in known]
    if isinstance(blocks, str | int):
        blocks = [blocks]
    return [backbones_lib.find_block(known, block).name for block in blocks]


def _as_image_dataset(data: Any) -> Any:
    if is_image_data(data) and data.train_unaugmented is not None:
        # An augmented ImageData: score the images as they are, not one random augmentation.
        return data.train_unaugmented
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        return tf.data.Dataset.from_tensor_slices(
            (np.asarray(data[0], np.float32), np.asarray(data[1]))
        ).batch(32)
    return data


def block_features(
    backbone: Backbone | TransferClassifier,
    data: Any,
    blocks: str | Sequence[str | int] | None = "all",
    *,
    source_head: keras.Model | Callable | None = None,
    verbose: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Globally average-pooled outputs of `blocks` over `data`, from one backbone pass.

    Args:
        backbone: a `Backbone` or a `TransferClassifier` (its backbone and preprocessing).
        data: `(images, labels)` batches (a `tf.data.Dataset`), an `ImageData` (its training
            split, unaugmented), or a `(images, labels)` tuple of arrays; raw 0-255 images.
        blocks: `"all"`, block names/indices, or `None` for the backbone's output alone
            (keyed `"output"`).
        source_head: a model from the backbone's output feature map to source-class
            probabilities (see `source_head_from_model`); its predictions are returned
            under `"source_probabilities"`.
        verbose: 1 shows the extraction's progress bar.

    Returns:
        `(features, labels)`: a dict from block name to an `(N, channels)` array, and the
        `(N, ...)` labels.
    """
    backbone = backbones_lib.backbone_of(backbone)
    names = _resolve_blocks(backbone, blocks)
    model = backbone.model
    known = {block.name: block for block in backbone.blocks} if names != [None] else {}
    tensors = [model.outputs[0] if name is None else known[name].output for name in names]
    inner = keras.Model(model.inputs, [*tensors, model.outputs[0]], name=f"{model.name}_blocks")
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    x = ImagePreprocessing(backbone.preprocessing)(inputs) if backbone.preprocessing else inputs
    *outputs, final = inner(x, training=False)
    pooled = [
        keras.layers.GlobalAveragePooling2D()(out) if len(out.shape) == 4 else out
        for out in outputs
    ]
    keys = ["output" if name is None else name for name in names]
    if source_head is not None:
        pooled.append(source_head(final))
        keys.append(SOURCE_PROBABILITIES)
    widths = [int(t.shape[-1]) for t in pooled]
    joined = keras.layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]
    # One output, so that extract_features caches every block's features in one pass.
    extractor = keras.Model(inputs, joined, name=f"{model.name}_block_features")
    cached = features_lib.extract_features(extractor, _as_image_dataset(data), verbose=verbose)
    splits = np.split(np.asarray(cached.features), np.cumsum(widths)[:-1], axis=1)
    return dict(zip(keys, splits)), np.asarray(cached.labels)


# ---------------------------------------------------------------------------------------
# transferability and rank_backbones
# ---------------------------------------------------------------------------------------


def _check_methods(method: str | Sequence[str], source_head: Any) -> list[str]:
    methods = [method] if isinstance(method, str) else list(method)
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"Unknown transferability method {name!r}: use one of {METHODS}.")
    if "leep" in methods and source_head is None:
        raise ValueError(
            "LEEP needs the source classifier: pass source_head= (a model from the backbone's "
            "output to source-class probabilities, e.g. source_head_from_model("
            "keras.applications.MobileNet(weights='mobilenet_1_0_224_tf.h5'), backbone)), or "
            "use method='logme' or 'hscore', which need no source head."
        )
    return methods


def _check_data_classes(data: Any, min_examples_per_class: int) -> None:
    # An ImageData knows its classes: fail before the backbone pass.
    names = getattr(data, "class_names", None)
    if names is not None and len(names) < 2:
        class_indices(np.zeros(min_examples_per_class), min_examples_per_class)


def transferability(
    backbone: Backbone | TransferClassifier,
    data: Any,
    method: str | Sequence[str] = "logme",
    blocks: str | Sequence[str | int] | None = None,
    *,
    source_head: keras.Model | Callable | None = None,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    verbose: int = 0,
) -> float | dict[str, Any]:
    """Scores how well `backbone`'s features suit the labelled `data`, without training.

    Args:
        backbone: a `Backbone` (possibly `.cut(block)`) or a `TransferClassifier`.
        data: labelled images: a `tf.data.Dataset` of `(images, labels)` batches, an
            `ImageData` (its training split), or an `(images, labels)` tuple of arrays.
        method: `"logme"`, `"leep"` or `"hscore"`, or a list of them (one backbone pass).
        blocks: `None` scores the backbone's output; `"all"` or a list of block names
            scores the average-pooled output of each block. LEEP scores only the output,
            where the source head applies.
        source_head: for LEEP: backbone output feature map -> source-class probabilities
            (`source_head_from_model`).
        min_examples_per_class: fewer labelled examples in any class is an error.
        method_kwargs: extra arguments per method, e.g. `{"hscore": {"shrinkage": "auto"}}`.
        verbose: 1 shows the extraction's progress bar.

    Returns:
        With one method: the score (`blocks=None`) or `{block: score}` in block order.
        With a list of methods: `{method: that}`.

    Example:
    ```python
    backbone = kt.create_backbone("mobilenet", weights="mobilenet_1_0_224_tf_no_top.h5")
    data = kt.image_folder_dataset("hymenoptera_data", image_size=224, augment=False)
    per_block = kt.transferability(backbone, data, method="logme", blocks="all")
    best_block = max(per_block, key=per_block.get)
    ```
    """
    methods = _check_methods(method, source_head)
    backbone = backbones_lib.backbone_of(backbone)
    names = _resolve_blocks(backbone, blocks)
    if "leep" in methods and names != [None]:
        last = backbone.blocks[-1].name
        if names != [last]:
            raise ValueError(
                "LEEP scores the backbone's output through the source head, not intermediate "
                f"blocks ({', '.join(n for n in names if n != last)}): use blocks=None for "
                "LEEP, and method='logme' or 'hscore' for the blocks."
            )
    _check_data_classes(data, min_examples_per_class)
    feats, labels = block_features(
        backbone,
        data,
        blocks,
        source_head=source_head if "leep" in methods else None,
        verbose=verbose,
    )
    method_kwargs = dict(method_kwargs or {})
    results: dict[str, Any] = {}
    for name in methods:
        kwargs = {"min_examples_per_class": min_examples_per_class, **method_kwargs.get(name, {})}
        if name == "leep":
            score = leep(feats[SOURCE_PROBABILITIES], labels, **kwargs)
            per_block = {key: score for key in feats if key != SOURCE_PROBABILITIES}
        else:
            per_block = {
                key: _SCORES[name](value, labels, **kwargs)
                for key, value in feats.items()
                if key != SOURCE_PROBABILITIES
            }
        results[name] = per_block["output"] if blocks is None else per_block
    return results[methods[0]] if isinstance(method, str) else results


@dataclasses.dataclass(frozen=True)
class RankedCandidate:
    """One entry of `rank_backbones`' ranking.

    Attributes:
        name: the candidate's label (`"mobilenet"`, `"mobilenet@conv_dw_11"`, ...).
        backbone: the backbone's registry name.
        feature_block: the block cut at, or `None` for the backbone's output.
        score: the transferability score (higher ranks first).
        method: the scoring method.

    Example:
    ```python
    best = kt.rank_backbones(data, [backbone, (backbone, "conv_dw_11")])[0]
    model = kt.create_classifier(backbone, 2, feature_block=best.feature_block)
    ```
    """

    name: str
    backbone: str
    feature_block: str | None
    score: float
    method: str


def _image_shape(data: Any) -> tuple[int, ...] | None:
    split = data.train if is_image_data(data) else data
    spec = getattr(split, "element_spec", None)
    if isinstance(spec, tuple) and hasattr(spec[0], "shape") and len(spec[0].shape) == 4:
        return tuple(spec[0].shape[1:])
    if isinstance(data, tuple) and isinstance(data[0], np.ndarray) and data[0].ndim == 4:
        return tuple(data[0].shape[1:])
    return None


def _has_blocks(backbone: Backbone) -> bool:
    try:
        return bool(backbone.blocks)
    except ValueError:
        return False


def rank_backbones(
    data: Any,
    candidates: Sequence[Any] | Mapping[str, Any],
    *,
    method: str = "logme",
    weights: str | None = "imagenet",
    source_heads: Mapping[str, Any] | None = None,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
    verbose: int = 0,
) -> list[RankedCandidate]:
    """Ranks backbones, and `feature_block` cuts of them, by a transferability score.

    Candidates that share a backbone are scored from one pass over `data`.

    Args:
        data: labelled images (see `transferability`).
        candidates: backbone names or `"hub:<handle>"` strings (built with
            `create_backbone(name, input_shape=<data's image shape>, weights=weights)`),
            `Backbone`s, or `(backbone, feature_block)` pairs; or a dict from label to one
            of these.
        method: `"logme"` (default), `"hscore"`, or `"leep"` (needs `source_heads`).
        weights: weights for candidates given by name.
        source_heads: for LEEP, candidate label -> source head.
        min_examples_per_class: see `transferability`.
        verbose: 1 shows extraction progress.

    Returns:
        `RankedCandidate`s, best first.

    Example:
    ```python
    ranking = kt.rank_backbones(data, ["mobilenet", ("mobilenet", "conv_dw_11"), "resnet50"])
    print(ranking[0].name, ranking[0].score)
    ```
    """
    _check_rank_method(method, source_heads)
    built, groups = _group_candidates(data, _candidate_items(candidates), weights)
    ranking = []
    for key, entries in groups.items():
        backbone = built[key]
        if method == "leep":
            scores = _leep_scores(
                backbone, entries, data, source_heads or {}, min_examples_per_class, verbose
            )
        else:
            scores = _block_scores(backbone, entries, data, method, min_examples_per_class, verbose)
        for label, block in entries:
            ranking.append(RankedCandidate(label, backbone.name, block, scores[block], method))
    return sorted(ranking, key=lambda entry: entry.score, reverse=True)


def _check_rank_method(method: str, source_heads: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown transferability method {method!r}: use one of {METHODS}.")
    if method == "leep" and not source_heads:
        raise ValueError(
            "LEEP needs each candidate's source classifier: pass source_heads={label: head} "
            "(see source_head_from_model), or rank with method='logme' or 'hscore'."
        )


def _candidate_items(candidates: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """`(label or None, candidate)` pairs; a sequence's candidates are labelled later."""
    items = (
        list(candidates.items())
        if isinstance(candidates, Mapping)
        else [(None, c) for c in candidates]
    )
    if not items:
        raise ValueError("rank_backbones needs at least one candidate.")
    return items


def _group_candidates(
    data: Any, items: list[tuple[Any, Any]], weights: str | None
) -> tuple[dict[Any, Backbone], dict[int, list[tuple[str, str | None]]]]:
    """The backbones (each built once) and, per backbone, its `(label, block)` entries, so
    that the candidates sharing a backbone are scored from one pass."""
    built: dict[Any, Backbone] = {}
    groups: dict[int, list[tuple[str, str | None]]] = {}
    for label, candidate in items:
        block = None
        if isinstance(candidate, tuple):
            if len(candidate) != 2:
                raise ValueError(
                    f"A candidate pair is (backbone, feature_block), got {candidate!r}."
                )
            candidate, block = candidate
        if isinstance(candidate, str):
            if candidate not in built:
                built[candidate] = backbones_lib.create_backbone(
                    candidate, input_shape=_image_shape(data), weights=weights
                )
            candidate = built[candidate]
        candidate = backbones_lib.backbone_of(candidate)
        built.setdefault(id(candidate), candidate)
        if block is not None:
            block = backbones_lib.find_block(candidate.blocks, block).name
        if label is None:
            label = candidate.name + (f"@{block}" if block is not None else "")
        groups.setdefault(id(candidate), []).append((label, block))
    return built, groups


def _leep_scores(
    backbone: Backbone,
    entries: list[tuple[str, str | None]],
    data: Any,
    heads: Mapping[str, Any],
    min_examples_per_class: int,
    verbose: int,
) -> dict[str | None, float]:
    """LEEP of a whole backbone (its source head applies to its output only)."""
    if any(block is not None for _, block in entries):
        raise ValueError("LEEP ranks whole backbones only: drop the feature_block cuts.")
    head = heads.get(entries[0][0])
    if head is None:
        raise ValueError(f"LEEP needs source_heads[{entries[0][0]!r}].")
    score = transferability(
        backbone,
        data,
        "leep",
        source_head=head,
        min_examples_per_class=min_examples_per_class,
        verbose=verbose,
    )
    return {None: score}


def _block_scores(
    backbone: Backbone,
    entries: list[tuple[str, str | None]],
    data: Any,
    method: str,
    min_examples_per_class: int,
    verbose: int,
) -> dict[str | None, float]:
    """Scores of a backbone's cuts (by block) and of the whole backbone (`None`), from one
    pass."""
    blocks = [block for _, block in entries if block is not None]
    whole = any(block is None for _, block in entries)
    names = backbone.block_names() if blocks or _has_blocks(backbone) else []
    # A whole backbone is scored at its last block (the same pooled output), so that
    # its cuts share the pass; a backbone without known blocks at its output.
    wanted = sorted(set(blocks) | ({names[-1]} if whole else set()), key=names.index)
    per_block = transferability(
        backbone,
        data,
        method,
        blocks=wanted if wanted else None,
        min_examples_per_class=min_examples_per_class,
        verbose=verbose,
    )
    if not wanted:
        per_block = {None: per_block}
    scores = {block: per_block[block] for block in blocks}
    if whole:
        scores[None] = per_block[names[-1]] if wanted else per_block[None]
    return scores
