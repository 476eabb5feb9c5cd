"""What did fine-tuning change, and what did the network forget?

- **Per-block drift** by linear centred kernel alignment (CKA; Kornblith, Norouzi, Lee,
  Hinton, "Similarity of Neural Network Representations Revisited", ICML 2019) between
  the pretrained and the fine-tuned backbone's activations of each block on the same
  probe images: 1.0 = the block computes the same representation (up to rotation and
  scale), lower = the block adapted. Linear CKA of centred activations X and Y is
  |Y'X|_F^2 / (|X'X|_F |Y'Y|_F), computed here from the N x N Gram matrices.
- **Source-task retention**, when the source classifier is known (e.g. the ImageNet top of
  a with-top weights file): the top-1 agreement and the mean KL divergence between the
  pretrained network's predictions and those of the fine-tuned backbone under the same
  (original) head, as in the forgetting measurements of Li & Hoiem ("Learning without
  Forgetting", 2017) and Kirkpatrick et al. (2017).

`forgetting_report` returns a dict-like `ForgettingReport` (`.plot("drift.png")`), and
`diagnostics_summary` the `"diagnostics"` entry an example writes to its results.json.
Take `pretrained_copy(model)` *before* fine-tuning: fine-tuning changes the weights in place.
"""

from __future__ import annotations

import os
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
from keras_transfer.diagnostics import feature_scores
from keras_transfer.diagnostics import transfer_scores
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.utils import files

__all__ = [
    "MIN_PROBE_IMAGES",
    "ForgettingReport",
    "diagnostics_summary",
    "forgetting_report",
    "linear_cka",
    "pretrained_copy",
    "source_model",
]

MIN_PROBE_IMAGES = 8


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA (Kornblith et al., 2019) between two activations of the same examples.

    Args:
        x: `(N, ...)` activations; everything after the first axis is flattened.
        y: `(N, ...)` activations of the same N examples (any width).

    Returns:
        A similarity in [0, 1]: 1 for representations equal up to an orthogonal transform
        and isotropic scaling. NaN when either is constant over the examples.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise ValueError(f"CKA compares the same examples: got {len(x)} and {len(y)} rows.")
    if len(x) < 2:
        raise ValueError("CKA needs at least two examples.")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    # Gram matrices are N x N whatever the width, and centred columns give centred Grams.
    gram_x, gram_y = x @ x.T, y @ y.T
    norms = np.linalg.norm(gram_x) * np.linalg.norm(gram_y)
    if norms == 0:
        return float("nan")
    return float(np.clip((gram_x * gram_y).sum() / norms, 0.0, 1.0))


def source_model(
    backbone: Backbone | TransferClassifier, weights: str | os.PathLike
) -> keras.Model:
    """The `keras.applications` model of `backbone`'s architecture *with* its
    classification top, loaded from a with-top weights file: the source classifier for
    `forgetting_report(source_head=...)` and LEEP.

    Args:
        backbone: a registered (not hub) backbone, or a classifier built on one; its input
            size is used (the top pools globally, so any size works).
        weights: the with-top weights file, e.g. `mobilenet_1_0_224_tf.h5` (1000 classes).

    Example:
    ```python
    with_top = kt.forgetting.source_model(backbone, "mobilenet_1_0_224_tf.h5")
    report = kt.forgetting_report(pretrained, model, images, source_head=with_top)
    ```
    """
    backbone = backbones_lib.backbone_of(backbone)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Source weights {path!r} is not a file: give the backbone's weights file with its "
            "classification top, e.g. mobilenet_1_0_224_tf.h5 for 'mobilenet'."
        )
    try:
        spec = backbones_lib.get_spec(backbone.name)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"Backbone {backbone.name!r} is not a keras.applications architecture: its "
            "with-top model cannot be built, so there is no source head (drop the source "
            "weights)."
        ) from error
    model = spec.constructor(
        include_top=True, weights=None, input_shape=tuple(backbone.model.input_shape[1:])
    )
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises ValueError/KeyError/h5py errors here.
        raise ValueError(
            f"The weights file {path!r} does not fit {backbone.name!r} with its 1000-class "
            f"top: {error}. Give the with-top file (e.g. mobilenet_1_0_224_tf.h5), not the "
            "_no_top one."
        ) from error
    return model


def pretrained_copy(model: Backbone | TransferClassifier) -> Backbone:
    """A copy of the backbone of `model` with its current weights, untouched by later
    training: take it before fine-tuning, to compare with `forgetting_report` afterwards.

    Example:
    ```python
    pretrained = kt.forgetting.pretrained_copy(model)
    kt.fit_two_phase(model, data.train, data.validation, fine_tune_epochs=5)
    report = kt.forgetting_report(pretrained, model, probe_images)
    ```
    """
    backbone = backbones_lib.backbone_of(model)
    clone = keras.models.clone_model(backbone.model)
    clone.set_weights(backbone.model.get_weights())
    return Backbone(backbone.name, clone, backbone.default_size, backbone.preprocessing)


class ForgettingReport(dict):
    """What `forgetting_report` returns: a dict with a plot.

    Keys: `"block_cka"` (`{block: CKA}`, input side first), `"least_similar_block"`,
    `"source_top1_agreement"` and `"source_mean_kl"` (`None` without a source head),
    `"num_probe_images"` and `"pooling"`.

    Example:
    ```python
    report = kt.forgetting_report(pretrained, model, probe_images, source_head=with_top)
    print(report["block_cka"], report["source_top1_agreement"])
    report.plot("drift.png")
    ```
    """

    def plot(self, path: str | os.PathLike | None = None, *, title: str | None = None):
        """Plots CKA per block (and the source retention in the title); saves it to `path`
        if given. Returns the matplotlib figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        names = list(self["block_cka"])
        values = [self["block_cka"][name] for name in names]
        figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 3.6))
        axis.plot(range(len(names)), values, marker="o")
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        finite = [v for v in values if np.isfinite(v)]
        axis.set_ylim(min([0.9, *finite]) - 0.02, 1.01)
        axis.set_ylabel("linear CKA (pretrained vs fine-tuned)")
        axis.set_xlabel("block (input side first)")
        if title is None:
            title = "Per-block drift: 1.0 = unchanged"
            if self.get("source_top1_agreement") is not None:
                title += (
                    f"; source top-1 agreement {self['source_top1_agreement']:.3f}, "
                    f"mean KL {self['source_mean_kl']:.3f}"
                )
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        figure.tight_layout()
        if path is not None:
            with files.local_output(path) as local:
                figure.savefig(local, dpi=110)
            plt.close(figure)
        return figure


def _probe_array(probe_images: Any) -> np.ndarray:
    if is_image_data(probe_images):
        probe_images = probe_images.validation  # an ImageData: its validation images
    if isinstance(probe_images, tf.data.Dataset) or (
        not isinstance(probe_images, np.ndarray | tf.Tensor | list | tuple)
        and hasattr(probe_images, "__iter__")
    ):
        batches = []
        for batch in probe_images:
            images = batch[0] if isinstance(batch, tuple | list) else batch
            batches.append(np.asarray(images, np.float32))
        if not batches:
            raise ValueError("The probe dataset is empty.")
        probe_images = np.concatenate(batches)
    images = np.asarray(probe_images, np.float32)
    if images.ndim == 3 and images.shape[-1] == 3:
        raise ValueError(
            f"probe_images must be a batch (N, height, width, 3), got one image of shape "
            f"{images.shape}: pass at least {MIN_PROBE_IMAGES} images, e.g. np.stack(images)."
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"probe_images must be RGB images (N, height, width, 3) with values 0-255, got "
            f"shape {images.shape}."
        )
    if len(images) < MIN_PROBE_IMAGES:
        raise ValueError(
            f"{len(images)} probe images are too few for CKA (at least {MIN_PROBE_IMAGES}; "
            "a few hundred give stable values): pass more images."
        )
    if not np.all(np.isfinite(images)):
        raise ValueError("probe_images contain NaN or infinite values.")
    return images


def _fit_size(images: np.ndarray, backbone: Backbone) -> np.ndarray:
    height, width = backbone.model.input_shape[1:3]
    if (height is None or height == images.shape[1]) and (
        width is None or width == images.shape[2]
    ):
        return images
    # Another size than the backbone's input: resized (bilinear), as a data loader would.
    return tf.image.resize(images, (height, width)).numpy()


def _activations(
    backbone: Backbone,
    block_names: Sequence[str],
    images: np.ndarray,
    pooling: str | None,
    source_head: Callable | None,
    batch_size: int,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    model = backbone.model
    blocks = {block.name: block for block in backbone.blocks}
    inner = keras.Model(
        model.inputs, [*(blocks[name].output for name in block_names), model.outputs[0]]
    )
    inputs = keras.Input(shape=model.input_shape[1:])
    x = ImagePreprocessing(backbone.preprocessing)(inputs) if backbone.preprocessing else inputs
    *outputs, final = inner(x, training=False)
    if pooling == "avg":
        outputs = [
            keras.layers.GlobalAveragePooling2D()(out) if len(out.shape) == 4 else out
            for out in outputs
        ]
    if source_head is not None:
        outputs.append(source_head(final))
    extractor = keras.Model(inputs, outputs)
    results = extractor.predict(_fit_size(images, backbone), batch_size=batch_size, verbose=0)
    results = list(results) if isinstance(results, list | tuple) else [results]
    probabilities = results.pop() if source_head is not None else None
    return dict(zip(block_names, results)), probabilities


def _resolve_source_head(source_head: Any, backbone: Backbone) -> Callable | None:
    if source_head is None:
        return None
    if isinstance(source_head, keras.Model) and backbone.model.layers[-1].name in {
        layer.name for layer in source_head.layers
    }:
        # A with-top model of the same architecture: use its top.
        return transfer_scores.source_head_from_model(source_head, backbone)
    if not callable(source_head):
        raise TypeError(
            f"source_head must be a model from the backbone's output to class probabilities, "
            f"or the with-top model; got {type(source_head).__name__}."
        )
    return source_head


def forgetting_report(
    pretrained: Backbone | TransferClassifier,
    fine_tuned: Backbone | TransferClassifier,
    probe_images: Any,
    source_head: keras.Model | Callable | None = None,
    *,
    blocks: str | Sequence[str] = "all",
    pooling: str | None = "avg",
    batch_size: int = 32,
) -> ForgettingReport:
    """Per-block drift (linear CKA) and source-task retention after fine-tuning.

    Args:
        pretrained: the backbone before fine-tuning (`pretrained_copy`, or a `Backbone`
            built with the same weights file).
        fine_tuned: the fine-tuned `TransferClassifier` or its `Backbone`.
        probe_images: raw 0-255 RGB images `(N, H, W, 3)` (resized to each backbone's input
            size if needed), a `tf.data.Dataset` of images or `(images, labels)`, or an
            `ImageData` (its validation images). At least `MIN_PROBE_IMAGES`.
        source_head: the source classifier: a model from the backbone's output feature map
            to class probabilities, or the with-top model itself (e.g.
            `keras.applications.MobileNet(weights="mobilenet_1_0_224_tf.h5")`, whose top is
            taken). Gives the source top-1 agreement and mean KL.
        blocks: `"all"` (the blocks both backbones have) or block names.
        pooling: `"avg"` compares the channels' spatial means (the pooled block outputs
            transferability scores); `None` compares whole flattened feature maps (N times
            the block's H*W*C floats in memory per backbone).
        batch_size: of the forward passes.

    Returns:
        A `ForgettingReport` (a dict; `.plot(path)`).

    Example:
    ```python
    report = kt.forgetting_report(pretrained, model, data.validation, source_head=with_top)
    report.plot("drift.png")
    ```
    """
    if pooling not in ("avg", None):
        raise ValueError(f"pooling must be 'avg' or None, got {pooling!r}.")
    before = backbones_lib.backbone_of(pretrained)
    after = backbones_lib.backbone_of(fine_tuned)
    images = _probe_array(probe_images)
    common = _common_blocks(before, after, blocks)
    head = _resolve_source_head(source_head, before)
    if head is not None and before.model.output_shape != after.model.output_shape:
        raise ValueError(
            f"Source retention runs the fine-tuned backbone through the source head, but its "
            f"output {after.model.output_shape} differs from the pretrained backbone's "
            f"{before.model.output_shape} (cut at a feature_block?). Drop source_head."
        )
    acts_before, p = _activations(before, common, images, pooling, head, batch_size)
    acts_after, q = _activations(after, common, images, pooling, head, batch_size)
    cka = {name: linear_cka(acts_before[name], acts_after[name]) for name in common}
    finite = {name: value for name, value in cka.items() if np.isfinite(value)}
    report = ForgettingReport(
        block_cka=cka,
        least_similar_block=min(finite, key=finite.get) if finite else None,
        source_top1_agreement=None,
        source_mean_kl=None,
        num_probe_images=len(images),
        pooling=pooling,
    )
    if head is not None:
        report.update(_source_retention(p, q))
    return report


def _common_blocks(before: Backbone, after: Backbone, blocks: str | Sequence[str]) -> list[str]:
    """The blocks to compare: those of `blocks` (or all) that both backbones have."""
    after_names = set(after.block_names())
    common = [name for name in before.block_names() if name in after_names]
    if not common:
        raise ValueError(
            f"The backbones share no block: {before.block_names()} vs {after.block_names()}. "
            "Compare a fine-tuned model with the pretrained backbone it started from."
        )
    if blocks != "all":
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        missing = [name for name in names if name not in common]
        if missing:
            raise ValueError(f"Blocks {missing} are not in both backbones: use {common}.")
        common = [name for name in common if name in names]
    return common


def _source_retention(p: Any, q: Any) -> dict[str, float]:
    """Top-1 agreement and mean KL(p || q) of the source-class probabilities before (`p`)
    and after (`q`) fine-tuning."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    eps = 1e-12
    kl = (p * (np.log(p + eps) - np.log(q + eps))).sum(axis=1)
    return {
        "source_top1_agreement": float(np.mean(p.argmax(1) == q.argmax(1))),
        "source_mean_kl": float(np.mean(kl)),
    }


def diagnostics_summary(
    pretrained: Backbone | TransferClassifier,
    fine_tuned: Backbone | TransferClassifier,
    train_data: Any,
    probe_images: Any,
    *,
    source_head: keras.Model | Callable | None = None,
    methods: Sequence[str] = ("logme", "hscore"),
    drift_plot: str | os.PathLike | None = None,
    transferability: Mapping[str, Any] | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """The `"diagnostics"` entry of an example's results.json, from one call.

    Scores the pretrained backbone's blocks on `train_data` (before-training
    transferability, with LEEP on its output too when `source_head` is given), measures
    per-block CKA drift and source retention on `probe_images`, and plots the drift.

    Args:
        pretrained: the backbone before fine-tuning (`pretrained_copy(model)`).
        fine_tuned: the fine-tuned model.
        train_data: labelled training images (see `transferability`).
        probe_images: see `forgetting_report`.
        source_head: the source classifier or with-top model (see `forgetting_report`).
        methods: transferability methods scored per block (`"logme"`, `"hscore"`).
        drift_plot: where to save the CKA plot (e.g. `model_dir/drift.png`).
        transferability: scores already measured before training (`{method: {block:
            score}}`, e.g. `transferability(backbone, data, ["logme", "hscore"],
            blocks="all")`): reported as they are instead of a second pass over
            `train_data` (which then only runs for LEEP, with a `source_head`).
        verbose: extraction progress bars.

    Returns:
        `{"transferability": {method: {block: score}, "leep": score or absent,
        "best_block_by_logme": block}, "block_cka": {block: value},
        "source_top1_agreement": x or None, "source_mean_kl": x or None,
        "num_probe_images": n}`.

    Example:
    ```python
    pretrained = kt.forgetting.pretrained_copy(model)
    ...  # fine-tune model
    results["diagnostics"] = kt.forgetting.diagnostics_summary(
        pretrained, model, data.train, data.validation, source_head=with_top,
        drift_plot="runs/x/drift.png",
    )
    ```
    """
    before = backbones_lib.backbone_of(pretrained)
    head = _resolve_source_head(source_head, before)
    for method in methods:
        if method not in ("logme", "hscore"):
            raise ValueError(f"methods are scored per block: 'logme' or 'hscore', not {method!r}.")
    if transferability is not None:
        transfer: dict[str, Any] = dict(transferability)
        if head is not None:
            transfer["leep"] = transfer_scores.transferability(
                before, train_data, "leep", source_head=head, verbose=verbose
            )
    else:
        transfer = _block_transferability(before, train_data, methods, head, verbose)
    if isinstance(transfer.get("logme"), Mapping):
        transfer["best_block_by_logme"] = max(transfer["logme"], key=transfer["logme"].get)
    report = forgetting_report(before, fine_tuned, probe_images, source_head=head)
    if drift_plot is not None:
        report.plot(drift_plot)
    return {
        "transferability": transfer,
        "block_cka": report["block_cka"],
        "source_top1_agreement": report["source_top1_agreement"],
        "source_mean_kl": report["source_mean_kl"],
        "num_probe_images": report["num_probe_images"],
    }


def _block_transferability(
    backbone: Backbone, train_data: Any, methods: Sequence[str], head: Any, verbose: int
) -> dict[str, Any]:
    """`{method: {block: score}}` and, with a source head, `"leep"`, from one pass over the
    training images."""
    features, labels = transfer_scores.block_features(
        backbone, train_data, "all", source_head=head, verbose=verbose
    )
    source = features.pop(transfer_scores.SOURCE_PROBABILITIES, None)
    score = {"logme": feature_scores.logme, "hscore": feature_scores.h_score}
    transfer: dict[str, Any] = {
        method: {block: score[method](value, labels) for block, value in features.items()}
        for method in methods
    }
    if source is not None:
        transfer["leep"] = feature_scores.leep(source, labels)
    return transfer
