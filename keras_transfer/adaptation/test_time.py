"""Adaptation of a trained classifier to unlabeled target images, without the source data:
AdaBN, TENT and SHOT.

- `adapt_batchnorm` (AdaBN; Li et al., "Revisiting Batch Normalization For Practical Domain
  Adaptation", 2016, arXiv:1603.04779): every BatchNormalization layer's moving statistics
  are recomputed on the target images; no weight changes.
- `fit_tent` (TENT; Wang et al., "Tent: Fully Test-Time Adaptation by Entropy
  Minimization", ICLR 2021, arXiv:2006.10726): plain `model.fit` on the target images with
  the mean prediction entropy as the loss (`PredictionEntropy`), training only the
  BatchNormalization scales and offsets. BatchNormalization normalises by the target
  batches' statistics while it trains, and its moving statistics follow them, so the
  adapted model predicts with target statistics too.

- `fit_shot` (SHOT; Liang et al., "Do We Really Need to Access the Source Data? Source
  Hypothesis Transfer for Unsupervised Domain Adaptation", ICML 2020, arXiv:2002.08546):
  the head (the source hypothesis) is frozen and the backbone trains with information
  maximisation (confident and diverse predictions) plus a cross-entropy to pseudo-labels
  that are recomputed at the start of every epoch by SHOT's weighted k-means in the
  feature space (`shot_pseudo_labels`). Plain `fit`, one epoch per call, of a model that
  shares the classifier's layers and outputs its head's logits (the losses keep their
  gradient where a float32 probability saturates), on the images and their pseudo-labels
  shuffled together (`shot_training_batches`), as SHOT's
  reference code shuffles its target loader: batches in a class-sorted order (a folder
  listed class by class) make the diversity term, which reads each batch's mean prediction,
  push every batch towards all classes.

AdaBN and TENT need a backbone with BatchNormalization (the `keras.applications` CNNs);
for one without, they raise a `ValueError` saying so. None of them reads a label: a target
dataset of `(images, labels)` has its labels dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from keras_transfer import _keras_compat
from keras_transfer import heads as heads_lib
from keras_transfer.adaptation.losses import InformationMaximization
from keras_transfer.adaptation.losses import PredictionEntropy
from keras_transfer.adaptation.model import pooled_feature_model
from keras_transfer.backbones import freezing

__all__ = [
    "adapt_batchnorm",
    "batchnorm_layers",
    "class_probabilities",
    "fit_shot",
    "fit_tent",
    "shot_pseudo_labels",
    "shot_training_batches",
    "top1_unchanged",
]

logger = logging.getLogger("keras_transfer")


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer nested in `model`; a `ValueError` if there is none."""
    layers = _find_batchnorm(model)
    if not layers:
        raise ValueError(
            f"{model.name} has no BatchNormalization layer: AdaBN and TENT adapt those. Use "
            "fit_domain_adaptation (DANN, CORAL, MMD) with labelled source images instead."
        )
    return layers


def _find_batchnorm(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer nested in `model`, possibly none."""
    return [
        layer
        for layer in _keras_compat.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def adapt_batchnorm(model: keras.Model, target: Any, steps: int | None = None) -> int:
    """AdaBN: recomputes every BatchNormalization layer's moving mean and variance on the
    target images (frozen ones included), with the layers below normalising by the target
    batches' statistics. Weights and the layers' `trainable` flags are unchanged.

    Args:
        model: a trained classifier.
        target: unlabeled target batches (images, or `(images, labels)`: labels unused).
        steps: batches to use; default all of `target` (it must be finite).

    Returns:
        The number of batches used.

    Example:
    ```python
    adapt_batchnorm(model, target_images)
    model.predict(target_images)
    ```
    """
    from keras_transfer.training.callbacks import batchnorm

    layers = batchnorm_layers(model)
    flags = [layer.trainable for layer in layers]
    try:
        # Recalibration (precise BN) covers the trainable layers: make them all trainable.
        for layer in layers:
            layer.trainable = True
        return batchnorm.recalibrate_batchnorm(model, target, steps=steps)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag


def fit_tent(
    model: keras.Model,
    target: Any,
    epochs: int = 1,
    learning_rate: float = 1e-3,
    from_logits: bool | None = None,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """TENT: minimises the prediction entropy on the target images, training only the
    BatchNormalization scales and offsets, with plain `model.fit` (Adam).

    The model's other layers, its `trainable` flags and its compiled loss and metrics are
    restored afterwards; its BatchNormalization weights and statistics stay adapted.

    Args:
        model: a trained classifier (softmax or logits output).
        target: unlabeled target batches (images, or `(images, labels)`: labels unused),
            a `tf.data.Dataset`.
        epochs: passes over `target` (the paper adapts online, one pass).
        learning_rate: Adam's rate (the paper's 1e-3 for Adam).
        from_logits: whether the outputs are logits; default the head's `logits` setting,
            else probabilities.
        **fit_kwargs: more `fit` arguments (`verbose`, `callbacks`, `steps_per_epoch`).

    Example:
    ```python
    fit_tent(model, target_images, epochs=1)
    ```
    """
    if from_logits is None:
        from_logits = bool(getattr(getattr(model, "head", None), "logits", False))
    norms = batchnorm_layers(model)
    layers = _keras_compat.flatten_layers(model, include_self=True)
    flags = [layer.trainable for layer in layers]
    compiled = model.get_compile_config() if model.compiled else None
    try:
        for layer in layers:  # outermost first: a container's flag also sets its layers'
            # Containers stay trainable so that the BatchNormalization weights inside count.
            container = bool(_keras_compat.flatten_layers(layer, include_self=False))
            layer.trainable = container or any(layer is norm for norm in norms)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=PredictionEntropy(from_logits=from_logits),
        )
        return model.fit(_images_only(target), epochs=epochs, **fit_kwargs)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag
        if compiled is not None:
            model.compile_from_config(compiled)


def _images_only(target: Any) -> Any:
    """`(images, zeros)` batches: `fit` wants targets; `PredictionEntropy` ignores them."""
    import tensorflow as tf

    def pair(*batch):
        images = batch[0]  # batches of images, or of (images, labels): labels dropped
        return images, tf.zeros(tf.shape(images)[:1])

    return target.map(pair)


def shot_pseudo_labels(features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """SHOT's self-supervised pseudo-labels (Liang et al. 2020, eq. 4-6): class centroids in
    the feature space weighted by the predicted probabilities, each example labelled by its
    nearest centroid (cosine distance), then once more with centroids of those labels.

    Args:
        features: `(n, d)` pooled features of the target images.
        probabilities: `(n, k)` predicted class probabilities of the same images.

    Returns:
        `(n,)` int32 labels; classes that no example is predicted as get no centroid.
    """
    features = np.asarray(features, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape[1] == 1:  # one sigmoid unit: the classes (1 - p, p)
        probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=1)
    # SHOT appends a constant 1 before normalising (a bias dimension), as here.
    features = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    num_classes = probabilities.shape[1]
    present = np.flatnonzero(np.bincount(probabilities.argmax(1), minlength=num_classes))
    weights = probabilities
    for _ in range(2):  # soft centroids, then one round of hard ones
        centroids = weights.T @ features / (1e-8 + weights.sum(axis=0)[:, None])
        centroids = centroids[present]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        labels = present[np.argmax(features @ centroids.T, axis=1)]  # max cosine similarity
        weights = np.eye(num_classes)[labels]
    return labels.astype("int32")


def fit_shot(
    model: heads_lib.TransferClassifier,
    target: Any,
    epochs: int = 5,
    learning_rate: float = 1e-4,
    *,
    unfreeze: int | float | str = "all",
    train_bn: bool = False,
    pseudo_label_weight: float = 0.3,
    diversity_weight: float = 1.0,
    shuffle_buffer: int = 512,
    seed: int | None = None,
    min_unchanged: float | None = None,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """SHOT: trains the backbone on unlabeled target images with the head frozen, by
    information maximisation and pseudo-labels recomputed every epoch (module docstring).

    The model's `trainable` flags are restored afterwards and its compiled loss is left as
    it was; the backbone's weights stay adapted. The losses are computed from the head's
    logits (`compute_logits`), as SHOT's reference code does: from float32 probabilities
    they lose their gradient where a prediction saturates at exactly 0 or 1.

    Args:
        model: a trained `TransferClassifier`.
        target: unlabeled target batches (images, or `(images, labels)`: labels unused), a
            finite `tf.data.Dataset` in a fixed order: the pseudo-labels of an epoch are
            matched to the images by position, so a dataset that reshuffles or augments
            differently on each pass is refused.
        epochs: epochs over `target`, each starting with new pseudo-labels.
        learning_rate: Adam's rate for the backbone.
        unfreeze: the backbone blocks to train, as `fit_two_phase`'s `unfreeze`; `"all"`:
            every backbone layer (any backbone, with or without known blocks).
        train_bn: BatchNormalization trains, as SHOT's reference trains its feature network,
            and its moving statistics are recomputed on the target images
            (`adapt_batchnorm`) before each epoch's pseudo-labels and after the last one.
            `False`: frozen. Neither gained on photo_shift (`benchmarks/results/`).
        pseudo_label_weight, diversity_weight: the loss weights (`InformationMaximization`).
        shuffle_buffer, seed: each epoch's images and pseudo-labels are shuffled together
            in a buffer of this many images (`shot_training_batches`; 1: no shuffling).
            A buffer smaller than the target set mixes only nearby images: give a target
            in a random fixed order (`target_image_dataset`'s `unshuffled` is one).
        min_unchanged: a label-free stop: after each epoch, the share of target images
            whose top class is still the one the model gave before SHOT (`history.history
            ["unchanged_top1"]`); when it falls below this, the model gets back its
            weights from before that epoch and training stops (`history.kept_epochs`:
            the epochs kept). `None`: every epoch is kept.
        **fit_kwargs: more `fit` arguments (`verbose`, `callbacks`); callbacks see the
            model SHOT trains, whose variables are `model`'s.

    Example:
    ```python
    history = fit_shot(model, target_images, epochs=5, unfreeze=2)
    ```
    """
    _check_shot_model(model)
    images = _image_batches(target)
    _check_fixed_order(images)
    layers = _keras_compat.flatten_layers(model, include_self=True)
    flags = [layer.trainable for layer in layers]
    try:
        _unfreeze_backbone(model, unfreeze, train_bn)
        model.head.trainable = False  # the source hypothesis stays as it is
        trained = _ShotLogits(model)
        trained.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=InformationMaximization(pseudo_label_weight, diversity_weight, True),
        )
        recalibrate = train_bn and bool(_find_batchnorm(model))
        guard = _UnchangedGuard(model, images, min_unchanged, recalibrate)
        return _shot_epochs(trained, images, epochs, (shuffle_buffer, seed), guard, fit_kwargs)
    finally:
        for layer, flag in zip(layers, flags):
            layer.trainable = flag


def _check_shot_model(model) -> None:
    if not isinstance(model, heads_lib.TransferClassifier):
        raise TypeError(
            f"fit_shot needs a classifier from create_classifier (a backbone and a head to "
            f"keep fixed), got {type(model).__name__}."
        )
    task = getattr(model.head, "task", None)
    if task not in ("multiclass", "binary"):
        raise ValueError(
            f"fit_shot adapts a classifier with one multiclass or binary head (its pseudo-"
            f"labels are classes), got a head of task {task!r} ({type(model.head).__name__})."
        )


class _ShotLogits(keras.Model):
    """What SHOT trains: a classifier's images to its head's logits (`compute_logits`, the
    output layer before its softmax or sigmoid), sharing every variable with the classifier.

    SHOT's losses read log-probabilities. Taken from the activated outputs, they are
    clipped where float32 probabilities reach exactly 0 or 1 (a sigmoid does at logits
    beyond about 17), and a clipped value has no gradient: a saturated prediction could
    no longer be moved by its pseudo-label or by the diversity term. From the logits,
    `log_softmax` and `log_sigmoid` keep the gradient everywhere, as SHOT's reference code
    computes its losses from the network's logits."""

    def __init__(self, classifier: heads_lib.TransferClassifier, **kwargs: Any):
        super().__init__(**{"name": "shot_logits", **kwargs})
        self.features = pooled_feature_model(classifier)
        self.head = classifier.head

    def call(self, images, training=None):
        features = self.features(images, training=training)
        return self.head.compute_logits(features, training=training)


def _unfreeze_backbone(model, unfreeze, train_bn: bool) -> None:
    """`unfreeze` blocks trainable; `"all"` needs no known blocks (any backbone)."""
    if unfreeze != "all":
        freezing.unfreeze(model, train_bn=train_bn, **freezing.unfreeze_request(unfreeze))
        return
    model.backbone.trainable = True
    for layer in _keras_compat.flatten_layers(model.backbone, include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = train_bn


def shot_training_batches(
    images: Any, labels: np.ndarray, shuffle_buffer: int = 512, seed: int | None = None
) -> Any:
    """SHOT's training batches of one epoch: `images` (a batched `tf.data.Dataset` in a fixed
    order) paired by position with `labels` (one per image), then shuffled together in a
    buffer of `shuffle_buffer` images and batched as `images` was.

    Args:
        images: batches of images in a fixed order.
        labels: `(n,)` pseudo-labels of the same images, in the same order.
        shuffle_buffer: images in the shuffle buffer (at most `n`); 1: the order kept.
        seed: the shuffle's seed (`None`: TensorFlow's global seed).

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.
    """
    import tensorflow as tf

    if (
        isinstance(shuffle_buffer, bool)
        or not isinstance(shuffle_buffer, int)
        or shuffle_buffer < 1
    ):
        raise ValueError(f"shuffle_buffer must be a positive integer, got {shuffle_buffer!r}.")
    batch_size = int(next(iter(images)).shape[0])
    pairs = tf.data.Dataset.zip((images.unbatch(), tf.data.Dataset.from_tensor_slices(labels)))
    if shuffle_buffer > 1:
        pairs = pairs.shuffle(min(shuffle_buffer, len(labels)), seed=seed)
    return pairs.batch(batch_size)


class _UnchangedGuard:
    """SHOT's per-epoch bookkeeping: BatchNormalization statistics recomputed on the target
    images (`recalibrate`), the share of top classes unchanged since before SHOT, and,
    with `min_unchanged`, the weights from before each epoch to go back to."""

    def __init__(self, model, images, min_unchanged: float | None, recalibrate: bool):
        if min_unchanged is not None and not 0.0 < float(min_unchanged) <= 1.0:
            raise ValueError(f"min_unchanged must be in (0, 1], got {min_unchanged!r}.")
        self.model, self.images, self.recalibrate = model, images, recalibrate
        self.min_unchanged = min_unchanged
        self.reference: np.ndarray | None = None  # the probabilities before SHOT
        self.kept_weights = None
        self.latest: tuple[np.ndarray, np.ndarray] | None = None

    def start_epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """The features and probabilities the epoch's pseudo-labels come from (after the
        first epoch, those `end_epoch` computed: the weights have not changed since)."""
        if self.latest is None:
            if self.recalibrate:
                adapt_batchnorm(self.model, self.images)
            self.latest = _features_and_probabilities(self.model, self.images)
            self.reference = self.latest[1]
        if self.min_unchanged is not None:  # every variable, BatchNorm statistics included
            self.kept_weights = self.model.get_weights()
        return self.latest

    def end_epoch(self) -> tuple[float, bool]:
        """The epoch's unchanged share, and whether the epoch is undone (below the limit)."""
        if self.recalibrate:
            adapt_batchnorm(self.model, self.images)
        self.latest = _features_and_probabilities(self.model, self.images)
        unchanged = top1_unchanged(self.reference, self.latest[1])
        undo = self.min_unchanged is not None and unchanged < self.min_unchanged
        if undo:
            self.model.set_weights(self.kept_weights)
        return unchanged, undo


def _shot_epochs(
    model,
    images,
    epochs: int,
    shuffle: tuple[int, int | None],
    guard: _UnchangedGuard,
    fit_kwargs: dict,
) -> keras.callbacks.History:
    """One `fit` per epoch on the images paired with that epoch's pseudo-labels, shuffled
    together (`shuffle`: the buffer size and the seed, as `shot_training_batches` takes
    them); one `History` over all of them, with each epoch's `unchanged_top1` and
    `kept_epochs` (the epochs `guard` did not undo)."""
    shuffle_buffer, seed = shuffle
    merged = keras.callbacks.History()
    merged.history, merged.epoch, merged.kept_epochs = {}, [], 0
    for epoch in range(epochs):
        labels = shot_pseudo_labels(*guard.start_epoch())
        epoch_seed = None if seed is None else seed + epoch
        labelled = shot_training_batches(images, labels, shuffle_buffer, epoch_seed)
        history = model.fit(labelled, initial_epoch=epoch, epochs=epoch + 1, **fit_kwargs)
        unchanged, undone = guard.end_epoch()
        history.history["unchanged_top1"] = [unchanged]
        merged.epoch += history.epoch
        for name, values in history.history.items():
            merged.history.setdefault(name, []).extend(values)
        if undone:
            logger.warning(
                "SHOT epoch %d left %.1f%% of the target images' top classes unchanged "
                "(min_unchanged=%s): the weights from before it are kept and SHOT stops.",
                epoch + 1,
                100 * unchanged,
                guard.min_unchanged,
            )
            break
        merged.kept_epochs = epoch + 1
    merged.set_model(guard.model)
    return merged


def top1_unchanged(before: np.ndarray, after: np.ndarray) -> float:
    """The share of images whose top class is the same in `before` and `after`, two
    `(n, classes)` arrays of class probabilities of the same images in the same order."""
    return float((np.argmax(before, axis=1) == np.argmax(after, axis=1)).mean())


def class_probabilities(model: keras.Model, outputs: Any) -> np.ndarray:
    """`(n, classes)` class probabilities from `model`'s outputs: the activation applied
    when its head outputs logits, and one sigmoid unit read as the classes `(1 - p, p)`."""
    outputs = keras.ops.convert_to_numpy(outputs)
    if getattr(getattr(model, "head", None), "logits", False):
        activation = "sigmoid" if outputs.shape[1] == 1 else "softmax"
        outputs = keras.ops.convert_to_numpy(keras.activations.get(activation)(outputs))
    if outputs.shape[1] == 1:
        outputs = np.concatenate([1.0 - outputs, outputs], axis=1)
    return np.asarray(outputs, np.float64)


def _features_and_probabilities(model, images) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features of every target image and the head's class probabilities."""
    features = pooled_feature_model(model).predict(images, verbose=0)
    return features, class_probabilities(model, model.head(features, training=False))


def _image_batches(target: Any) -> Any:
    """The image batches of `target`: labels (or anything after the images) dropped."""
    import tensorflow as tf

    if not isinstance(target, tf.data.Dataset):
        raise TypeError(
            f"target must be a tf.data.Dataset of image batches, got {type(target).__name__}."
        )
    if isinstance(target.element_spec, tuple):
        return target.map(lambda *batch: batch[0])
    return target


def _check_fixed_order(images: Any) -> None:
    first, again = (np.asarray(next(iter(images))) for _ in range(2))
    if first.shape != again.shape or not np.array_equal(first, again):
        raise ValueError(
            "target gives other images on each pass (it is shuffled or augmented with "
            "reshuffle_each_iteration): SHOT matches each epoch's pseudo-labels to the images "
            "by position. Pass the target images unshuffled and unaugmented (e.g. "
            "image_folder_dataset(..., augment=False) without shuffling)."
        )
