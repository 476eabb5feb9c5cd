"""Backbone features of a dataset, computed once: the extractor model (`feature_extractor`),
the extraction (`extract_features`) and its result (`CachedFeatures`), in memory or streamed
to disk past a memory budget (`feature_writer`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import Backbone
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.training.feature_writer import FeatureWriter
from keras_transfer.utils import backend
from keras_transfer.utils import files

__all__ = [
    "CachedFeatures",
    "DEFAULT_MAX_MEMORY_BYTES",
    "backbone_preprocessing_and_head",
    "extract_features",
    "feature_extractor",
]

logger = logging.getLogger("keras_transfer")

DEFAULT_MAX_MEMORY_BYTES = 2 * 1024**3


@dataclasses.dataclass
class CachedFeatures:
    """Backbone features of a dataset, in memory or in files on disk.

    Attributes:
        features: `(num_examples, *feature_shape)` float32 array; a read-only `np.memmap`
            when the features were streamed to disk (`feature_writer.FileRows`, read on
            demand, in a remote `cache_dir` such as `gs://...`).
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
    backbone_model, preprocessing, head = backbone_preprocessing_and_head(backbone, head)
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


def backbone_preprocessing_and_head(backbone, head):
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
    dataset = data_lib.as_dataset(dataset, "dataset")
    steps = _cardinality(dataset)
    batches = steps * passes if steps else None
    if verbose:
        logger.info(
            "extracting backbone features of the %s%s%s",
            description,
            f" ({batches} batch{'' if batches == 1 else 'es'})" if batches else "",
            f", {passes} augmented passes" if passes > 1 else "",
        )
    progbar = keras.utils.Progbar(batches, unit_name="batch") if verbose == 1 else None
    writer = FeatureWriter(cache_dir, max_memory_bytes, batches)
    start = time.perf_counter()
    features, labels, path = _write_features(extractor, dataset, passes, writer, progbar)
    cached = CachedFeatures(features, labels, passes, path, time.perf_counter() - start)
    if verbose:
        logger.info(
            "extracted features of %d %s in %.1f s", len(features), description, cached.seconds
        )
    if path is not None:
        # The files are this extraction's own: gone with the last reference to it (open
        # memory maps stay valid after the unlink).
        weakref.finalize(cached, files.rmtree, path, ignore_errors=True)
    return cached


def _write_features(
    extractor: keras.Model,
    dataset: Any,
    passes: int,
    writer: FeatureWriter,
    progbar: keras.utils.Progbar | None,
) -> tuple[np.ndarray, Any, str | None]:
    """Runs `extractor` over `passes` passes of `dataset` into `writer`; returns what
    `writer.finish` returns."""
    forward = _forward_function(extractor)
    seen = 0
    try:
        for _ in range(passes):
            for batch in dataset:
                images, labels = _split_batch(batch)
                writer.add(np.asarray(forward(tf.cast(images, tf.float32))), labels)
                seen += 1
                if progbar is not None:
                    progbar.update(seen, finalize=False)
        result = writer.finish()
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
    return result


def _forward_function(extractor: keras.Model):
    # One trace per extractor, for every batch size (the last batch is usually smaller) and
    # every split: tracing and optimising the backbone's graph costs seconds, a noticeable
    # part of extracting a small dataset.
    forward = getattr(extractor, "_keras_transfer_forward", None)
    if forward is None and not backend.is_tensorflow():
        # A tf.function cannot run a JAX model: Keras' own compiled predict step does.
        return lambda images: extractor.predict_on_batch(np.asarray(images))
    if forward is None:

        @tf.function(
            input_signature=[tf.TensorSpec((None, *extractor.input_shape[1:]), tf.float32)]
        )
        def forward(images):
            return extractor(images, training=False)

        extractor._keras_transfer_forward = forward
    return forward


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
