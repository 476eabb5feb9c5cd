"""Feature extraction with cached backbone features: the head trains on them.

With a frozen backbone, the Keras-guide recipe (`backbone.trainable = False` inside
`model.fit`) runs the backbone forward on every image in every epoch, although its
output never changes. Here the backbone runs once: its (pooled) features are cached in
memory, or streamed to disk when they exceed a memory budget, the head trains on the
cached features, and the trained head is re-attached to the backbone as a
`TransferClassifier` whose predictions on images equal `head(features)`.

The price is augmentation: one cached pass of a non-augmented dataset (e.g.
`image_folder_dataset(..., augment=False)`) sees each image once, as it is. To keep some
augmentation, cache `passes=K` passes of an augmented dataset: extraction costs K times
one pass, and each training epoch samples one dataset's worth of examples from the K
augmented copies.

This module trains the head (`fit_head_on_features`, `fit_feature_extractor`); the
extraction is in `extraction` and its on-disk writer in `feature_writer`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras

from keras_transfer import data as data_lib
from keras_transfer import heads
from keras_transfer.backbones.registry import Backbone
from keras_transfer.data import imbalance
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.heads.classifier import create_classifier
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.training import extraction
from keras_transfer.training import weight_averaging
from keras_transfer.training.extraction import DEFAULT_MAX_MEMORY_BYTES
from keras_transfer.training.extraction import CachedFeatures
from keras_transfer.utils import distribute
from keras_transfer.utils import fit_arguments

__all__ = [
    "DEFAULT_MAX_MEMORY_BYTES",
    "FeatureCache",
    "FeatureExtraction",
    "HeadOnFeatures",
    "check_class_weight",
    "fit_feature_extractor",
    "fit_head_on_features",
]


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """How a head phase trains on cached backbone features instead of images.

    Give it to `fit_two_phase(head_features=...)`: phase 1 then runs the frozen backbone
    once over `data` (or `passes` times) and trains the head on the cached features.

    Args:
        data: the batches of `(images, labels)` to cache (an `ImageData` gives its training
            split); `None` caches the training data of the run. Pass a non-augmented
            version of the training set (`ImageData.train_unaugmented`), or an augmented
            one with `passes=K`.
        batch_size: batch size of head training on the cached features.
        passes: cached passes over `data`; each epoch samples one dataset's worth of
            examples from the `passes` copies.
        seed: shuffling seed of the cached features.
        cache_dir: where features that exceed `max_memory_bytes` are streamed.
        max_memory_bytes: memory budget of the cached features.
    """

    data: Any = None
    batch_size: int = 32
    passes: int = 1
    seed: int | None = 1337
    cache_dir: str | os.PathLike | None = None
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES

    def __post_init__(self):
        for name in ("batch_size", "passes", "max_memory_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FeatureCache.{name} must be a positive integer, got {value!r}.")


@dataclasses.dataclass
class HeadOnFeatures:
    """What `fit_head_on_features` returns.

    Attributes:
        history: the `keras.callbacks.History` of the head's training.
        train_features: the cached training features.
        validation_features: the cached validation features, or `None`.
        seconds: wall time of `"extract"` (both splits) and `"train"` (the head).
    """

    history: keras.callbacks.History
    train_features: CachedFeatures
    validation_features: CachedFeatures | None
    seconds: dict[str, float]
    class_weight: dict[int, float] | None = None


def fit_head_on_features(
    model: TransferClassifier,
    validation_data: Any,
    *,
    cache: FeatureCache,
    epochs: int,
    optimizer: keras.optimizers.Optimizer,
    loss: Any = "auto",
    metrics: Any = "auto",
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    initial_epoch: int = 0,
    verbose: int = 1,
    class_weight: str | Mapping[Any, float] | None = None,
    jit_compile: bool | None = None,
    ema_momentum: float = 0.0,
    **fit_kwargs: Any,
) -> HeadOnFeatures:
    """Trains `model.head` in place on features of `cache.data` cached from `model`'s
    frozen backbone; `model`'s predictions on images then equal the head's on the features.

    The head trains inside a small `keras.Model` (features in, the head's output out), so
    `callbacks` see that model; its weights are the head's own variables.

    Args:
        model: a `TransferClassifier`.
        validation_data: batches of `(images, labels)` cached for validation, or `None`.
        cache: what to cache and how (`cache.data` must be set).
        epochs: epochs of head training, from `initial_epoch`.
        optimizer: a new optimizer for the head.
        loss, metrics: `compile` arguments; `"auto"` uses the head's defaults.
        callbacks: Keras callbacks for the head's `fit`.
        initial_epoch: where the head's epoch count starts.
        verbose: verbosity of the extraction and of `fit`.
        class_weight: `"balanced"` (weights `n / (k * n_c)` from the cached training
            labels: no extra pass), a dict `{class index or name: weight}`, or `None`; see
            `imbalance.resolve_class_weight`. Given to Keras' `fit(class_weight=...)`.
        jit_compile: XLA for the head's steps; `None`: `distribute.default_jit_compile`.
        ema_momentum: an EMA of the head's weights, its momentum per epoch (`with_ema`;
            0: off); add `keras.callbacks.SwapEMAWeights` for validation to score it.
        **fit_kwargs: extra `fit` arguments.
    """
    if not isinstance(model, TransferClassifier):
        raise TypeError(
            f"Training a head on cached features needs a TransferClassifier (create_classifier), "
            f"got {type(model).__name__}: caching needs the model's preprocessing and head."
        )
    class_weight = check_class_weight(model, class_weight)  # before the extraction
    # The head trains in a plain model, whose fit does not check labels: check them (on
    # JAX) as the extraction reads them.
    label_loss = heads.resolve_loss_and_metrics(model, loss, metrics)["loss"]
    start = time.perf_counter()
    train_cache, val_cache = _cache_splits(model, validation_data, cache, verbose, label_loss)
    extract_seconds = time.perf_counter() - start
    if isinstance(class_weight, str):
        num_classes, class_names = imbalance.class_weight_classes(model)
        class_weight = imbalance.resolve_class_weight(
            class_weight, train_cache.labels, num_classes=num_classes, class_names=class_names
        )
    train, fit_kwargs = _training_batches(train_cache, cache, fit_kwargs)
    steps = fit_arguments.batches_per_epoch(train, fit_kwargs)  # known: the cache's size
    optimizer = weight_averaging.with_ema(optimizer, ema_momentum, steps)
    head_model = _compiled_head_model(
        model, train_cache.features.shape[1:], optimizer, loss, metrics, jit_compile
    )
    start = time.perf_counter()
    history = head_model.fit(
        train,
        validation_data=val_cache.as_dataset(cache.batch_size) if val_cache is not None else None,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + epochs,
        callbacks=list(callbacks or []),
        verbose=verbose,
        # The cached dataset is shuffled by `as_dataset`; Keras ignores (and warns about)
        # `shuffle=True` for a tf.data.Dataset.
        shuffle=False,
        class_weight=class_weight,
        **{k: v for k, v in fit_kwargs.items() if k != "shuffle"},
    )
    seconds = {"extract": extract_seconds, "train": time.perf_counter() - start}
    return HeadOnFeatures(history, train_cache, val_cache, seconds, class_weight)


def _cache_splits(
    model: TransferClassifier,
    validation_data: Any,
    cache: FeatureCache,
    verbose: int,
    loss: Any,
) -> tuple[CachedFeatures, CachedFeatures | None]:
    """The cached features of `cache.data` and of `validation_data` (`None` without it),
    each in its own subfolder of `cache.cache_dir` when given; the labels are checked
    against the head trained with `loss` as they are read (`heads.check_labels`)."""
    extractor = extraction.feature_extractor(model)

    def checked(data, what):
        return heads.check_labels(model, data_lib.as_dataset(data, what), loss=loss)

    def folder(name):
        return os.path.join(os.fspath(cache.cache_dir), name) if cache.cache_dir else None

    train_cache = extraction.extract_features(
        extractor,
        checked(cache.data, "the data to cache"),
        passes=cache.passes,
        cache_dir=folder("train"),
        max_memory_bytes=cache.max_memory_bytes,
        verbose=verbose,
        description="training images",
    )
    if validation_data is None:
        return train_cache, None
    val_cache = extraction.extract_features(
        extractor,
        checked(validation_data, "validation_data"),
        cache_dir=folder("validation"),
        max_memory_bytes=cache.max_memory_bytes,
        verbose=verbose,
        description="validation images",
    )
    return train_cache, val_cache


def _compiled_head_model(
    model: TransferClassifier,
    feature_shape: tuple[int, ...],
    optimizer: keras.optimizers.Optimizer,
    loss: Any,
    metrics: Any,
    jit_compile: bool | None,
) -> keras.Model:
    """`model.head` in a model of its own (features in, the head's output out), compiled;
    its weights are the head's own variables."""
    inputs = keras.Input(shape=feature_shape, name="features")
    head_model = keras.Model(inputs, model.head(inputs), name="head_on_features")
    if jit_compile is None:
        jit_compile = distribute.default_jit_compile(distribute.model_strategy(model), head_model)
    head_model.compile(
        optimizer=optimizer,
        # A multi-task head's per-output loss weights, as `model.compile()` applies them.
        loss_weights=getattr(model.head, "loss_weights", None),
        **heads.resolve_loss_and_metrics(model, loss, metrics),
        jit_compile=jit_compile,
    )
    return head_model


def _training_batches(
    train_cache: CachedFeatures, cache: FeatureCache, fit_kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The shuffled training batches of the cached features, and `fit_kwargs` with the
    epoch length they need."""
    train = train_cache.as_dataset(cache.batch_size, shuffle=True, seed=cache.seed)
    if cache.passes > 1:
        # One epoch = one dataset's worth of examples drawn from the K augmented copies, so
        # `epochs` means the same thing whatever K is.
        fit_kwargs = {
            "steps_per_epoch": math.ceil(
                train_cache.num_examples / cache.passes / cache.batch_size
            ),
            **fit_kwargs,
        }
        train = train.repeat()
    return train, fit_kwargs


def check_class_weight(
    model: keras.Model, class_weight: str | Mapping[Any, float] | None
) -> str | dict[int, float] | None:
    """`class_weight` checked against `model`'s classes: a dict becomes `{index: weight}`,
    `"balanced"` stays (it needs the training labels), `None` / `"none"` is `None`."""
    if class_weight is None or (isinstance(class_weight, str) and class_weight.lower() == "none"):
        return None
    num_classes, class_names = imbalance.class_weight_classes(model)
    if isinstance(class_weight, str) and class_weight.lower() == "balanced":
        return "balanced"
    return imbalance.resolve_class_weight(
        class_weight, num_classes=num_classes, class_names=class_names
    )


@dataclasses.dataclass
class FeatureExtraction:
    """What `fit_feature_extractor` returns.

    Attributes:
        model: the end-to-end `TransferClassifier` (backbone frozen, compiled with the
            head's loss and metrics): raw images in, the trained head's predictions out.
        history: the `keras.callbacks.History` of the head's training on cached features.
        train_features: the cached training features.
        validation_features: the cached validation features, or `None`.
        seconds: wall time of `"extract"` (both splits) and `"train"` (the head).
    """

    model: TransferClassifier
    history: keras.callbacks.History
    train_features: CachedFeatures
    validation_features: CachedFeatures | None
    seconds: dict[str, float]


def fit_feature_extractor(
    backbone: Backbone | TransferClassifier,
    train_data: Any,
    validation_data: Any = None,
    *,
    num_classes: int | None = None,
    head: dict[str, Any] | ClassificationHead | None = None,
    class_names: Sequence[str] | None = None,
    epochs: int = 20,
    learning_rate: float = 1e-3,
    optimizer: str | type | Callable[[float], keras.optimizers.Optimizer] = "adam",
    batch_size: int = 32,
    passes: int = 1,
    seed: int | None = 1337,
    cache_dir: str | os.PathLike | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: int = 1,
    class_weight: str | Mapping[Any, float] | None = None,
    **fit_kwargs: Any,
) -> FeatureExtraction:
    """Feature extraction in one call: cache backbone features, train the head on them,
    and re-attach the head to the backbone (module docstring: speed and augmentation).

    Args:
        backbone: a `Backbone`, or a `TransferClassifier` whose head is trained in place.
        train_data: batches of `(float32 0-255 images, labels)` (a `tf.data.Dataset`), or
            an `ImageData` (its `.train`, `.validation` and class names are used).
        validation_data: the same for validation, or `None`.
        num_classes: needed with a `Backbone` unless `class_names` or an `ImageData` tell.
        head: `ClassificationHead` arguments or a head (ignored for a classifier).
        class_names: saved with the model.
        epochs, learning_rate: of the head's training.
        optimizer: optimizer name, class or factory `learning_rate -> optimizer`.
        batch_size, passes, seed: batch size, cached passes over `train_data` and
            shuffling seed of the head's training on the cached features.
        cache_dir, max_memory_bytes: see `extract_features`.
        callbacks: Keras callbacks for the head's `fit` (they see the head model).
        verbose: verbosity of extraction and `fit`.
        class_weight: `"balanced"` (from the cached training labels), a dict `{class index
            or name: weight}` or `None`; checked before the extraction starts.
        **fit_kwargs: extra `fit` arguments.

    Returns:
        A `FeatureExtraction`: `.model` predicts on images as the head on the features.

    Example:
    ```python
    data = image_folder_dataset("hymenoptera_data", image_size=224, augment=False)
    backbone = create_backbone("mobilenet", weights="mobilenet_1_0_224_tf_no_top.h5")
    result = fit_feature_extractor(backbone, data, data.validation, epochs=20)
    result.model.evaluate(data.validation)
    ```
    """
    for key in ("epochs", "validation_data", "x", "y"):
        if key in fit_kwargs:
            raise TypeError(f"fit_feature_extractor sets `{key}` itself.")
    optimizers.check_learning_rate(learning_rate, "learning_rate")
    validation_data, class_names = _splits_and_class_names(train_data, validation_data, class_names)
    model = _classifier_to_train(backbone, num_classes, head, class_names)
    cache = FeatureCache(train_data, batch_size, passes, seed, cache_dir, max_memory_bytes)
    result = fit_head_on_features(
        model,
        validation_data,
        cache=cache,
        epochs=epochs,
        optimizer=optimizers.optimizer_factory(optimizer)(learning_rate),
        callbacks=callbacks,
        verbose=verbose,
        class_weight=class_weight,
        **fit_kwargs,
    )
    # Frozen as trained: the backbone only produced features (any Backbone, with or
    # without known blocks).
    model.backbone.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return FeatureExtraction(
        model, result.history, result.train_features, result.validation_features, result.seconds
    )


def _splits_and_class_names(
    train_data: Any, validation_data: Any, class_names: Sequence[str] | None
) -> tuple[Any, Sequence[str] | None]:
    """The validation batches and class names, from an `ImageData` where one is given."""
    if hasattr(train_data, "class_names") and class_names is None:
        class_names = train_data.class_names
    if validation_data is None and hasattr(train_data, "validation"):
        validation_data = train_data.validation
    elif hasattr(validation_data, "validation") and hasattr(validation_data, "class_names"):
        validation_data = validation_data.validation
    return validation_data, class_names


def _classifier_to_train(
    backbone: Backbone | TransferClassifier,
    num_classes: int | None,
    head: dict[str, Any] | ClassificationHead | None,
    class_names: Sequence[str] | None,
) -> TransferClassifier:
    """The classifier whose head trains: `backbone` itself if it is one, else a new one."""
    if isinstance(backbone, TransferClassifier):
        return backbone
    if not isinstance(backbone, Backbone):
        extraction.backbone_preprocessing_and_head(backbone, None)  # raises the clear error
    if num_classes is None:
        if class_names is None:
            raise ValueError("Pass num_classes (or class_names, or an ImageData).")
        num_classes = len(class_names)
    return create_classifier(backbone, num_classes, head, class_names=class_names)
