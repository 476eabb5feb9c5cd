"""Feature extraction with cached backbone features.

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
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import Backbone
from keras_transfer.data import imbalance
from keras_transfer.heads import classification as heads
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.heads.classifier import create_classifier
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.utils import distribute
from keras_transfer.utils import reliability

__all__ = [
    "CachedFeatures",
    "DEFAULT_MAX_MEMORY_BYTES",
    "FeatureCache",
    "FeatureExtraction",
    "HeadOnFeatures",
    "check_class_weight",
    "extract_features",
    "feature_extractor",
    "fit_feature_extractor",
    "fit_head_on_features",
]

logger = logging.getLogger("keras_transfer")

DEFAULT_MAX_MEMORY_BYTES = 2 * 1024**3


@dataclasses.dataclass
class CachedFeatures:
    """Backbone features of a dataset, in memory or in files on disk.

    Attributes:
        features: `(num_examples, *feature_shape)` float32 array; a read-only `np.memmap`
            when the features were streamed to disk.
        labels: `(num_examples, ...)` labels, in the same order; for a multi-task model
            (labels given as a dict by head name), a dict of such arrays.
        passes: how many passes over the dataset the rows hold (`num_examples` is
            `passes` times the dataset's size).
        path: the folder of the feature files when on disk, else `None`.
        seconds: wall time of the extraction.
    """

    features: np.ndarray
    labels: np.ndarray | dict[str, np.ndarray]
    passes: int = 1
    path: str | None = None
    seconds: float = 0.0

    @property
    def num_examples(self) -> int:
        return int(self.features.shape[0])

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def as_dataset(
        self, batch_size: int = 32, *, shuffle: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        """Batches of `(features, labels)`; read from the memory map when on disk."""
        if not self.on_disk:
            dataset = tf.data.Dataset.from_tensor_slices((self.features, self.labels))
            if shuffle:
                dataset = dataset.shuffle(self.num_examples, seed=seed)
            return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        # Shuffle indices, not rows, so that only a batch of features is in memory at a time.
        features, labels = self.features, keras.tree.flatten(self.labels)

        def gather(indices):
            indices = np.sort(indices)  # sorted reads are sequential on disk
            return (features[indices], *[leaf[indices] for leaf in labels])

        def read(indices):
            x, *y = tf.numpy_function(
                gather,
                [indices],
                (tf.float32, *[tf.as_dtype(leaf.dtype) for leaf in labels]),
            )
            x = tf.ensure_shape(x, (None, *features.shape[1:]))
            y = [tf.ensure_shape(t, (None, *leaf.shape[1:])) for t, leaf in zip(y, labels)]
            return x, keras.tree.pack_sequence_as(self.labels, y)

        dataset = tf.data.Dataset.range(self.num_examples)
        if shuffle:
            dataset = dataset.shuffle(self.num_examples, seed=seed)
        dataset = dataset.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)


def feature_extractor(
    backbone: Backbone | TransferClassifier,
    head: ClassificationHead | None = None,
    *,
    pool: bool = True,
) -> keras.Model:
    """The model whose outputs are cached: raw 0-255 images -> preprocessing -> backbone
    (in inference mode) -> the head's pooling.

    Pooling with the head's own `pool` makes `head(cached)` equal `head(feature_map)`: a
    2-D input skips the head's pooling. `pool=False` keeps the spatial feature maps (for
    heads that must see them; they are larger by `height * width`).

    Args:
        backbone: a `Backbone` from `create_backbone`, or a `TransferClassifier` (its
            backbone, preprocessing and head are used).
        head: the head whose pooling is applied; default: the classifier's head, or none.
        pool: pool the feature maps with the head's pooling.

    Returns:
        A `keras.Model` taking the images a `TransferClassifier` of this backbone takes.

    Example:
    ```python
    backbone = create_backbone("mobilenet", input_shape=(96, 96, 3), weights=None)
    extractor = feature_extractor(backbone, ClassificationHead(2, pooling="avgmax"))
    extractor.output_shape  # -> (None, 2048)
    ```
    """
    backbone_model, preprocessing, head = _parts(backbone, head)
    inputs = keras.Input(shape=backbone_model.input_shape[1:], name="images")
    x = inputs
    if preprocessing:
        x = ImagePreprocessing(preprocessing, name="preprocessing")(x)
    # training=False: BatchNormalization uses its moving statistics, as in a frozen backbone,
    # when the extractor runs on its own (`predict`, which the caches use). Called in
    # training mode, a Keras functional model passes that mode to every layer instead (Keras
    # 3), so trainable BatchNormalization layers use batch statistics: domain adaptation
    # trains through the extractor that way, with the backbone's own layers.
    x = backbone_model(x, training=False)
    if pool and len(x.shape) == 4:
        if head is None:
            head = ClassificationHead(1)  # the default head's pooling: global average
        if head.pooling is None:
            raise ValueError(
                "The head has pooling=None but the backbone outputs feature maps of shape "
                f"{x.shape}: give the head a pooling ('avg', 'max', 'avgmax', 'flatten') or "
                "pass pool=False to cache the maps."
            )
        x = keras.layers.Lambda(head.pool, name="pooling")(x)
    return keras.Model(inputs, x, name=f"{backbone_model.name}_features")


def _parts(backbone, head):
    if isinstance(backbone, TransferClassifier):
        return backbone.backbone, backbone.preprocessing, head or backbone.head
    if isinstance(backbone, Backbone):
        return backbone.model, backbone.preprocessing, head
    raise TypeError(
        f"Expected a Backbone (from create_backbone) or a TransferClassifier, got "
        f"{type(backbone).__name__}. A plain keras.Model has no known preprocessing: wrap it "
        "with create_classifier first."
    )


def extract_features(
    extractor: keras.Model,
    dataset: Any,
    *,
    passes: int = 1,
    cache_dir: str | os.PathLike | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    verbose: int = 1,
    description: str = "images",
) -> CachedFeatures:
    """Runs `extractor` over `dataset` once (or `passes` times) and keeps its outputs.

    Features are gathered in memory until they exceed `max_memory_bytes`; from then on
    everything is streamed to files in `cache_dir` (a new temporary folder if not given),
    so a dataset larger than RAM never has to fit in it. A `keras.utils.Progbar` shows
    where the extraction is.

    Args:
        extractor: a model from `feature_extractor`.
        dataset: a `tf.data.Dataset` (or any iterable) of `(images, labels)` batches, or an
            `ImageData` (its training split). Use a non-augmented dataset for one pass.
        passes: passes over `dataset`; with an augmented dataset each pass holds different
            augmentations of every image (and costs one more backbone pass).
        cache_dir: where to stream features that exceed `max_memory_bytes`.
        max_memory_bytes: memory budget of the features (labels are not counted).
        verbose: 1 shows a progress bar, 2 one line when the extraction starts and one
            when it ends, 0 is silent.
        description: what `dataset` holds, for those lines ("training images").

    Returns:
        `CachedFeatures`.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive integer, got {passes!r}.")
    dataset = _as_dataset(dataset, "dataset")
    steps = _cardinality(dataset)
    if verbose:
        logger.info(
            "extracting backbone features of the %s%s%s",
            description,
            f" ({steps * passes} batch{'' if steps * passes == 1 else 'es'})" if steps else "",
            f", {passes} augmented passes" if passes > 1 else "",
        )
    progbar = (
        keras.utils.Progbar(steps * passes if steps else None, unit_name="batch")
        if verbose == 1
        else None
    )

    forward = _forward_function(extractor)
    writer = _FeatureWriter(cache_dir, max_memory_bytes, steps * passes if steps else None)
    start = time.perf_counter()
    seen = 0
    try:
        for _ in range(passes):
            for batch in dataset:
                images, labels = _split_batch(batch)
                writer.add(np.asarray(forward(tf.cast(images, tf.float32))), labels)
                seen += 1
                if progbar is not None:
                    progbar.update(seen, finalize=False)
        features, labels, path = writer.finish()
    except BaseException as error:
        writer.delete()  # no half-written cache left behind, whatever went wrong
        if isinstance(error, OSError) and error.errno == errno.ENOSPC and writer.path:
            raise OSError(
                errno.ENOSPC,
                f"No space left on the disk while writing the feature cache in "
                f"{writer.path!r}; its partial files were deleted. Free some space, pass "
                "cache_dir= on a disk with room, or raise max_memory_bytes.",
            ) from error
        raise
    if progbar is not None:
        progbar.update(seen, finalize=True)
    cached = CachedFeatures(features, labels, passes, path, time.perf_counter() - start)
    if verbose:
        logger.info(
            "extracted features of %d %s in %.1f s", len(features), description, cached.seconds
        )
    if path is not None:
        # The files are this extraction's own: gone with the last reference to it (open
        # memory maps stay valid after the unlink).
        weakref.finalize(cached, shutil.rmtree, path, ignore_errors=True)
    return cached


def _forward_function(extractor: keras.Model):
    # One trace per extractor, for every batch size (the last batch is usually smaller) and
    # every split: tracing and optimising the backbone's graph costs seconds, a noticeable
    # part of extracting a small dataset.
    forward = getattr(extractor, "_keras_transfer_forward", None)
    if forward is None:

        @tf.function(
            input_signature=[tf.TensorSpec((None, *extractor.input_shape[1:]), tf.float32)]
        )
        def forward(images):
            return extractor(images, training=False)

        extractor._keras_transfer_forward = forward
    return forward


class _FeatureWriter:
    """Keeps feature batches in memory, spilling to raw files past a byte budget.

    Labels may be a structure (a dict by head name for multi-task models): each leaf is
    kept, or written to its own file, and the structure is rebuilt at the end.
    """

    def __init__(self, cache_dir, max_memory_bytes: int, expected_batches: int | None = None):
        self.cache_dir = cache_dir
        self.max_memory_bytes = max_memory_bytes
        self.expected_batches = expected_batches
        self.num_batches = 0
        self.batches: list[tuple[np.ndarray, list[np.ndarray]]] = []
        self.structure = None
        self.bytes = 0
        self.num_examples = 0
        self.path = None
        self.files = None
        self.shapes = None

    def add(self, features: np.ndarray, labels: Any) -> None:
        features = features.astype(np.float32, copy=False)
        leaves = [np.asarray(leaf) for leaf in keras.tree.flatten(labels)]
        shapes = (features.shape[1:], tuple((leaf.shape[1:], leaf.dtype) for leaf in leaves))
        if self.shapes is None:
            self.shapes = shapes
            self.structure = labels
        elif shapes != self.shapes:
            raise ValueError(
                f"Batches differ in feature/label shape or label dtype: {self.shapes} then "
                f"{shapes}. Use one image size for the whole dataset."
            )
        self.num_examples += len(features)
        self.num_batches += 1
        if self.files is None:
            self.batches.append((features, leaves))
            self.bytes += features.nbytes
            if self.bytes > self.max_memory_bytes:
                self._spill()
        else:
            self._write(features, leaves)

    def _spill(self) -> None:
        parent = tempfile.gettempdir() if self.cache_dir is None else os.fspath(self.cache_dir)
        os.makedirs(parent, exist_ok=True)
        # Bytes per example so far, times the examples expected (or at least those held).
        per_example = (
            sum(f.nbytes + sum(leaf.nbytes for leaf in y) for f, y in self.batches)
            / self.num_examples
        )
        batches = max(self.expected_batches or 0, self.num_batches)
        expected = self.num_examples * batches / self.num_batches
        reliability.check_free_space(parent, int(per_example * expected), "the feature cache")
        # A folder of its own: another extraction into `cache_dir` (which may still be
        # memory-mapped by an earlier `CachedFeatures`) never shares its files.
        self.path = tempfile.mkdtemp(prefix="keras_transfer_features_", dir=parent)
        self.files = (
            open(os.path.join(self.path, "features.f32"), "wb"),
            *[
                open(os.path.join(self.path, f"labels_{i}.bin"), "wb")
                for i in range(len(self.shapes[1]))
            ],
        )
        for features, labels in self.batches:
            self._write(features, labels)
        self.batches = []

    def _write(self, features, leaves) -> None:
        for file, array in zip(self.files, [features, *leaves], strict=True):
            file.write(np.ascontiguousarray(array).tobytes())

    def delete(self) -> None:
        """Closes and deletes the files of an extraction that did not finish."""
        for file in self.files or ():
            file.close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def finish(self) -> tuple[np.ndarray, np.ndarray, str | None]:
        if self.shapes is None:
            raise ValueError("The dataset is empty: there are no features to extract.")
        feature_shape, label_specs = self.shapes
        if self.files is None:
            features = np.concatenate([f for f, _ in self.batches])
            leaves = [
                np.concatenate([y[i] for _, y in self.batches]) for i in range(len(label_specs))
            ]
            return features, keras.tree.pack_sequence_as(self.structure, leaves), None
        for file in self.files:
            file.close()
        features = np.memmap(
            os.path.join(self.path, "features.f32"),
            dtype=np.float32,
            mode="r",
            shape=(self.num_examples, *feature_shape),
        )
        leaves = [
            np.memmap(
                os.path.join(self.path, f"labels_{i}.bin"),
                dtype=label_dtype,
                mode="r",
                shape=(self.num_examples, *label_shape),
            )
            for i, (label_shape, label_dtype) in enumerate(label_specs)
        ]
        return features, keras.tree.pack_sequence_as(self.structure, leaves), self.path


def _as_dataset(data: Any, what: str) -> Any:
    if data is None:
        raise ValueError(f"{what} is None.")
    # ImageData (keras_transfer.data.folders) without importing it: its training split.
    if hasattr(data, "train") and hasattr(data, "class_names"):
        return data.train
    if isinstance(data, tuple | list | np.ndarray):
        raise TypeError(
            f"{what} must be a batched tf.data.Dataset (or iterable) of (images, labels), got a "
            f"{type(data).__name__}. For arrays use "
            "tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)."
        )
    return data


def _cardinality(dataset) -> int | None:
    if isinstance(dataset, tf.data.Dataset):
        count = int(dataset.cardinality())
        return count if count > 0 else None
    try:
        return len(dataset)
    except TypeError:
        return None


def _split_batch(batch):
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(
            "Feature extraction needs batches of (images, labels); got "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
            + ". Drop sample weights and pass labels with the images."
        )
    return batch


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
        **fit_kwargs: extra `fit` arguments.
    """
    if not isinstance(model, TransferClassifier):
        raise TypeError(
            f"Training a head on cached features needs a TransferClassifier (create_classifier), "
            f"got {type(model).__name__}: caching needs the model's preprocessing and head."
        )
    class_weight = check_class_weight(model, class_weight)  # before the extraction
    extractor = feature_extractor(model)
    sub = (
        (lambda name: os.path.join(os.fspath(cache.cache_dir), name))
        if cache.cache_dir
        else (lambda name: None)
    )
    start = time.perf_counter()
    train_cache = extract_features(
        extractor,
        _as_dataset(cache.data, "the data to cache"),
        passes=cache.passes,
        cache_dir=sub("train"),
        max_memory_bytes=cache.max_memory_bytes,
        verbose=verbose,
        description="training images",
    )
    val_cache = None
    if validation_data is not None:
        val_cache = extract_features(
            extractor,
            _as_dataset(validation_data, "validation_data"),
            cache_dir=sub("validation"),
            max_memory_bytes=cache.max_memory_bytes,
            verbose=verbose,
            description="validation images",
        )
    extract_seconds = time.perf_counter() - start
    if isinstance(class_weight, str):
        num_classes, class_names = imbalance.class_weight_classes(model)
        class_weight = imbalance.resolve_class_weight(
            class_weight, train_cache.labels, num_classes=num_classes, class_names=class_names
        )

    inputs = keras.Input(shape=train_cache.features.shape[1:], name="features")
    head_model = keras.Model(inputs, model.head(inputs), name="head_on_features")
    if jit_compile is None:
        jit_compile = distribute.default_jit_compile(model.distribute_strategy, head_model)
    head_model.compile(
        optimizer=optimizer,
        # A multi-task head's per-output loss weights, as `model.compile()` applies them.
        loss_weights=getattr(model.head, "loss_weights", None),
        **heads.resolve_loss_and_metrics(model, loss, metrics),
        jit_compile=jit_compile,
    )
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
    and re-attach the head to the backbone.

    The backbone runs once over each split (or `passes` times over the training split),
    so the head trains at the speed of a small dense network. The returned model's
    predictions on images equal the head's on the cached features (float tolerance).

    One cached pass of a non-augmented training set gives up augmentation for speed;
    `passes=K` with an augmented dataset caches K augmented copies (K times the
    extraction time), and each epoch then samples one training set's worth of them.

    Args:
        backbone: a `Backbone`, or a `TransferClassifier` whose head is trained in place.
        train_data: batches of `(float32 0-255 images, labels)` (a `tf.data.Dataset`), or
            an `ImageData` (its `.train`; its class names are used).
        validation_data: the same for validation, or `None`. An `ImageData` gives its
            `.validation`.
        num_classes: needed with a `Backbone` unless `class_names` or an `ImageData` tell.
        head: `ClassificationHead` arguments or a head (ignored for a classifier).
        class_names: saved with the model.
        epochs: epochs of head training.
        learning_rate: of the head's optimizer.
        optimizer: optimizer name, class or factory `learning_rate -> optimizer`.
        batch_size: batch size of head training on the cached features.
        passes: cached passes over `train_data` (see above).
        seed: shuffling seed of the cached features.
        cache_dir, max_memory_bytes: see `extract_features`.
        callbacks: Keras callbacks for the head's `fit` (they see the head model).
        verbose: verbosity of extraction and `fit`.
        class_weight: `"balanced"` (weights `n / (k * n_c)` from the cached training
            labels), a dict `{class index or name: weight}` (missing classes weigh 1), or
            `None`; checked before the extraction starts.
        **fit_kwargs: extra `fit` arguments.

    Returns:
        A `FeatureExtraction` (`.model`, `.history`, cached features, `.seconds`).

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
    if hasattr(train_data, "class_names") and class_names is None:
        class_names = train_data.class_names
    if validation_data is None and hasattr(train_data, "validation"):
        validation_data = train_data.validation
    elif hasattr(validation_data, "validation") and hasattr(validation_data, "class_names"):
        validation_data = validation_data.validation
    if isinstance(backbone, TransferClassifier):
        model = backbone
        class_names = class_names if class_names is not None else model.class_names
    else:
        if not isinstance(backbone, Backbone):
            _parts(backbone, None)  # raises the clear error
        if num_classes is None:
            if class_names is None:
                raise ValueError("Pass num_classes (or class_names, or an ImageData).")
            num_classes = len(class_names)
        model = create_classifier(backbone, num_classes, head, class_names=class_names)
    cache = FeatureCache(
        train_data,
        batch_size=batch_size,
        passes=passes,
        seed=seed,
        cache_dir=cache_dir,
        max_memory_bytes=max_memory_bytes,
    )
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
        model,
        result.history,
        result.train_features,
        result.validation_features,
        result.seconds,
    )
