"""Few-shot classification with prototypes on pretrained features (SimpleShot).

SimpleShot (Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor
Classification for Few-Shot Learning", arXiv:1911.04623, 2019) showed that a nearest class
mean classifier on pretrained features is a strong few-shot learner once the features are
centred and L2-normalised ("CL2N"): subtract the mean feature of the base (here: the
support) set, divide by the norm, and average each class's transformed features into its
prototype. No weights are trained.

`fit_prototypes` runs the backbone once per support image (the cached-feature machinery of
`keras_transfer.training.features`) and returns a `TransferClassifier` whose head is a
`PrototypeHead`: it holds the class means and the centring mean as non-trainable weights and
scores a query by the softmax of its cosine similarity to every prototype divided by a
temperature. The model takes raw images, saves to `.keras` and loads with `safe_mode=True`.
`add_classes` adds or updates classes from a few images each without training anything.
`fit_prototypes(..., refine_epochs=n)` turns the prototypes into the initial weights of a
linear softmax layer (kernel = normalised prototypes / temperature, bias 0: the same
predictions as the prototypes at the start) and trains it for `n` epochs on the cached
support features.

Temperature: `temperature="auto"` calibrates it on the support set by leave-one-out: each
support example is scored against prototypes computed without it, and the temperature (on a
log-spaced grid from 0.01 to 1) is the one at which the mean confidence of these predictions
equals their accuracy, smoothed as (correct + 1) / (n + 2) (see `calibrate_temperature`).
With a single example in every class there is nothing to leave out, and
`DEFAULT_TEMPERATURE` is used. The temperature changes
the confidence of the scores, never which class wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.backbones.registry import Backbone
from keras_transfer.data import imbalance
from keras_transfer.heads import classification as heads
from keras_transfer.heads.classification import TransferClassifier
from keras_transfer.training import extraction as features_lib

__all__ = [
    "DEFAULT_TEMPERATURE",
    "PrototypeHead",
    "PrototypeRefinement",
    "add_classes",
    "calibrate_temperature",
    "cl2n",
    "class_statistics",
    "fit_prototypes",
    "linear_weights",
    "prototype_head_from_features",
    "refine_prototype_head",
]

# The temperature when the support set cannot calibrate one (one example per class).
# benchmarks/few_shot.py reports the calibrated values on real features.
DEFAULT_TEMPERATURE = 0.1
TEMPERATURE_GRID = np.geomspace(0.01, 1.0, 41)
DEFAULT_REFINE_LEARNING_RATE = 1e-3


def cl2n(features: Any, centre: Any) -> np.ndarray:
    """SimpleShot's CL2N transform: `(features - centre) / ||features - centre||`."""
    centred = np.asarray(features, dtype=np.float32) - np.asarray(centre, dtype=np.float32)
    norms = np.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / np.maximum(norms, 1e-12)


@keras.saving.register_keras_serializable(package="keras_transfer")
class PrototypeHead(keras.layers.Layer):
    """Nearest-class-mean classification head on pooled features (SimpleShot, CL2N).

    A query's pooled feature `f` becomes `q = (f - centre) / ||f - centre||`; its scores
    are `softmax(cos(q, p_c) / temperature)` over the class prototypes `p_c`, the means of
    the transformed support features of each class. `centre`, the class means and the
    number of support examples behind each mean are non-trainable weights, saved with the
    model. With `linear=True` the scores come from a trainable `keras.layers.Dense` on `q`
    instead (a prototype-initialised linear head, see `refine_prototype_head`); the
    prototypes are kept for `add_classes`.

    Heads are normally built by `fit_prototypes`; their weights start at zero.

    Args:
        num_classes: number of classes (>= 2).
        temperature: divides the cosine similarities before the softmax (> 0).
        pooling: pooling of feature maps: `"avg"`, `"max"`, `"avgmax"` or `"flatten"`;
            vectors (cached pooled features) pass unchanged.
        linear: score with a trainable dense layer instead of the prototypes.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    head = PrototypeHead(3, temperature=0.1)
    head.build((None, 8))
    head.set_prototypes(centre=np.zeros(8), class_means=np.eye(3, 8), class_counts=[1, 1, 1])
    head(np.eye(3, 8)).numpy().argmax(axis=-1)  # -> array([0, 1, 2])
    ```
    """

    task = "multiclass"
    logits = False

    def __init__(
        self,
        num_classes: int,
        temperature: float = DEFAULT_TEMPERATURE,
        pooling: str = "avg",
        linear: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"A prototype classifier needs at least 2 classes, got num_classes={num_classes!r}."
            )
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if pooling not in ("avg", "max", "avgmax", "flatten"):
            raise ValueError(
                f"pooling must be 'avg', 'max', 'avgmax' or 'flatten', got {pooling!r}."
            )
        self.num_classes = num_classes
        self.temperature = temperature
        self.pooling = pooling
        self.linear = bool(linear)
        self.dense = (
            keras.layers.Dense(num_classes, dtype="float32", name="linear") if self.linear else None
        )

    def _feature_dim(self, input_shape) -> int:
        input_shape = tuple(input_shape)
        if len(input_shape) == 2:
            return int(input_shape[-1])
        if len(input_shape) != 4:
            raise ValueError(
                f"PrototypeHead expects (batch, features) or (batch, h, w, c) inputs, got "
                f"shape {input_shape}."
            )
        channels = int(input_shape[-1])
        if self.pooling == "avgmax":
            return 2 * channels
        if self.pooling == "flatten":
            return int(input_shape[1]) * int(input_shape[2]) * channels
        return channels

    def build(self, input_shape):
        dim = self._feature_dim(input_shape)
        self.feature_dim = dim
        self.centre = self.add_weight(
            shape=(dim,), initializer="zeros", trainable=False, name="centre", dtype="float32"
        )
        self.class_means = self.add_weight(
            shape=(self.num_classes, dim),
            initializer="zeros",
            trainable=False,
            name="class_means",
            dtype="float32",
        )
        self.class_counts = self.add_weight(
            shape=(self.num_classes,),
            initializer="zeros",
            trainable=False,
            name="class_counts",
            dtype="float32",
        )
        if self.dense is not None:
            self.dense.build((None, dim))

    def pool(self, x):
        # The same pooling as ClassificationHead, so that feature_extractor caches what
        # this head sees; vectors (cached features) pass unchanged.
        return heads.ClassificationHead.pool(self, x)

    def transform(self, inputs):
        """CL2N of the pooled inputs: centred, then L2-normalised."""
        x = keras.ops.cast(self.pool(inputs), "float32") - self.centre
        return x / keras.ops.maximum(keras.ops.norm(x, axis=-1, keepdims=True), 1e-12)

    def prototypes(self):
        """The L2-normalised class means, `(num_classes, feature_dim)`."""
        means = keras.ops.convert_to_tensor(self.class_means)
        return means / keras.ops.maximum(keras.ops.norm(means, axis=-1, keepdims=True), 1e-12)

    def call(self, inputs):
        query = self.transform(inputs)
        if self.dense is not None:
            logits = self.dense(query)
        else:
            logits = keras.ops.matmul(query, keras.ops.transpose(self.prototypes()))
            logits = logits / self.temperature
        return keras.ops.softmax(logits, axis=-1)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((inputs.shape[0], self.num_classes), dtype="float32")

    def set_prototypes(self, centre: Any, class_means: Any, class_counts: Any) -> None:
        """Assigns the centring mean, the class means (of CL2N support features) and the
        support counts; with `linear=True` the dense layer restarts from the prototypes."""
        centre = np.asarray(centre, dtype=np.float32)
        class_means = np.asarray(class_means, dtype=np.float32)
        class_counts = np.asarray(class_counts, dtype=np.float32)
        if centre.shape != (self.feature_dim,) or class_means.shape != (
            self.num_classes,
            self.feature_dim,
        ):
            raise ValueError(
                f"Expected a centre of shape ({self.feature_dim},) and class means of shape "
                f"({self.num_classes}, {self.feature_dim}); got {centre.shape} and "
                f"{class_means.shape}."
            )
        self.centre.assign(centre)
        self.class_means.assign(class_means)
        self.class_counts.assign(class_counts.reshape(self.num_classes))
        if self.dense is not None:
            self.dense.set_weights(linear_weights(class_means, self.temperature))

    def default_loss(self) -> keras.losses.Loss:
        return keras.losses.SparseCategoricalCrossentropy()

    def default_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "temperature": self.temperature,
                "pooling": self.pooling,
                "linear": self.linear,
            }
        )
        return config


def linear_weights(class_means: Any, temperature: float) -> list[np.ndarray]:
    """`[kernel, bias]` of a dense layer on CL2N features that scores exactly like the
    prototypes: kernel = normalised prototypes / temperature, bias 0. (Nearest mean by
    Euclidean distance would add a bias of `-||p_c||^2 / 2`; the prototypes are unit
    vectors, so that bias is the same for every class and drops out.)"""
    means = np.asarray(class_means, dtype=np.float32)
    prototypes = means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    return [(prototypes / temperature).T.copy(), np.zeros(len(means), np.float32)]


def class_statistics(
    transformed: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(class means, counts)` of CL2N features by class."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
    sums = np.zeros((num_classes, transformed.shape[-1]), np.float32)
    np.add.at(sums, labels, transformed)
    return sums / np.maximum(counts, 1)[:, None], counts


def calibrate_temperature(
    transformed: np.ndarray, labels: np.ndarray, num_classes: int
) -> float | None:
    """The temperature at which the support set's leave-one-out predictions are as
    confident as they are accurate, or `None` when no class has two examples.

    Each example whose class has at least two is scored against its own class's prototype
    recomputed without it (and the other classes' full prototypes), as a new query would
    be. The chosen temperature (from `TEMPERATURE_GRID`) makes their mean top-class
    probability closest to their smoothed accuracy `(correct + 1) / (n + 2)` (Laplace's
    rule of succession). Minimising the leave-one-out log-loss instead has no minimum when
    every left-out example is classified correctly, the usual case with a few shots: the
    loss keeps falling as the temperature goes to 0, and the scores become certainties.
    """
    transformed = np.asarray(transformed, np.float64)
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    usable = counts[labels] >= 2
    if not usable.any():
        return None
    sums = np.zeros((num_classes, transformed.shape[-1]))
    np.add.at(sums, labels, transformed)
    x, y = transformed[usable], labels[usable]
    means = sums / np.maximum(counts, 1)[:, None]
    unit = means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    cos = x @ unit.T
    own = (sums[y] - x) / (counts[y] - 1)[:, None]
    own /= np.maximum(np.linalg.norm(own, axis=-1, keepdims=True), 1e-12)
    cos[np.arange(len(y)), y] = np.sum(x * own, axis=-1)
    correct = int((cos.argmax(axis=-1) == y).sum())
    target = (correct + 1) / (len(y) + 2)
    best, best_gap = None, np.inf
    for temperature in TEMPERATURE_GRID:
        logits = cos / temperature
        logits -= logits.max(axis=-1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        gap = abs(probabilities.max(axis=-1).mean() - target)
        if gap < best_gap:
            best, best_gap = float(temperature), gap
    return best


def prototype_head_from_features(
    features: Any,
    labels: Any,
    num_classes: int | None = None,
    *,
    temperature: float | str = "auto",
    pooling: str = "avg",
    class_names: Sequence[str] | None = None,
    name: str = "head",
) -> PrototypeHead:
    """A built `PrototypeHead` from pooled support features and their labels.

    Args:
        features: `(n, d)` pooled backbone features (e.g. `CachedFeatures.features`).
        labels: `(n,)` class indices (or one-hot).
        num_classes: number of classes; default: the largest label + 1.
        temperature: a number, or `"auto"` (leave-one-out calibration, see the module).
        pooling: the pooling the head applies to feature maps (the features given here
            must come from it).
        class_names: used in error messages.
        name: the layer name.

    Raises:
        ValueError: fewer than two classes, or a class without examples.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"Expected pooled features of shape (n, d), got {features.shape}.")
    labels = imbalance.label_indices(labels)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels.")
    counts = imbalance.class_counts(labels, num_classes)
    _check_support(counts, class_names)
    centre = features.mean(axis=0)
    transformed = cl2n(features, centre)
    means, counts = class_statistics(transformed, labels, len(counts))
    if temperature == "auto":
        temperature = calibrate_temperature(transformed, labels, len(counts))
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    head = PrototypeHead(len(counts), temperature=temperature, pooling=pooling, name=name)
    head.build((None, features.shape[-1]))
    head.set_prototypes(centre, means, counts)
    return head


def _check_support(counts: np.ndarray, class_names: Sequence[str] | None) -> None:
    if len(counts) < 2:
        raise ValueError(
            f"The support set has {len(counts)} class(es): a classifier needs at least 2. "
            "Give images of at least two classes."
        )
    empty = imbalance.empty_classes(counts, class_names)
    if empty:
        raise ValueError(
            f"Class(es) {empty} have no support images: every class needs at "
            "least one to define its prototype. Add images of it, or leave the class out."
        )


def refine_prototype_head(
    head: PrototypeHead,
    features: Any,
    labels: Any,
    *,
    epochs: int,
    learning_rate: float = DEFAULT_REFINE_LEARNING_RATE,
    batch_size: int = 32,
    seed: int | None = None,
    verbose: int = 0,
) -> PrototypeHead:
    """A linear head initialised from `head`'s prototypes and trained on support features.

    The new `PrototypeHead(linear=True)` keeps `head`'s centre, class means, temperature
    and pooling; its dense layer starts at `linear_weights` (the prototypes' scores) and
    trains `epochs` epochs of Adam at `learning_rate` with cross-entropy on the CL2N
    transform of `features` (the centre stays fixed). See `PrototypeRefinement`.

    Args:
        head: a built prototype head (`prototype_head_from_features`).
        features: `(n, d)` pooled support features; labels: their classes.
        epochs: training epochs (>= 1).
        learning_rate: Adam's learning rate.
        batch_size: batch size (the support set is usually one batch).
        seed: shuffling seed.
        verbose: `fit` verbosity.
    """
    refinement = PrototypeRefinement(
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, verbose=verbose
    )
    return refinement(head, features, labels, seed=seed)


class PrototypeRefinement:
    """Trains prototype-initialised linear heads, compiling the training step once.

    Calling it with a prototype head and support features returns a new
    `PrototypeHead(linear=True)` whose dense layer started at the prototypes' scores and
    trained `epochs` passes over the support set (Adam, cross-entropy on the CL2N
    features; the centre stays fixed). The passes run as one Keras `fit` epoch in one
    compiled call (`steps_per_execution`), reshuffled at each pass: the support set is a
    batch or two, and Keras' per-epoch overhead would cost more than the steps. Calls with
    the same number of classes, feature size and support size reuse the compiled Keras
    model (its weights and optimizer state are reset each time), which makes many
    episodes of a benchmark cheap.

    Args:
        epochs: passes over the support set (>= 1).
        learning_rate: Adam's learning rate.
        batch_size: batch size.
        verbose: `fit` verbosity.

    Example:
    ```python
    refine = PrototypeRefinement(epochs=50, learning_rate=1e-3)
    refined = refine(prototype_head_from_features(x, y), x, y)
    ```
    """

    def __init__(
        self,
        *,
        epochs: int,
        learning_rate: float = DEFAULT_REFINE_LEARNING_RATE,
        batch_size: int = 32,
        verbose: int = 0,
    ):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
        if not (isinstance(learning_rate, int | float) and 0 < learning_rate < math.inf):
            raise ValueError(f"learning_rate must be a number > 0, got {learning_rate!r}.")
        self.epochs = epochs
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self._key = None
        self._model = None

    def _training_model(self, head: PrototypeHead, steps: int) -> keras.Model:
        key = (head.num_classes, head.feature_dim, head.pooling, steps)
        if self._key != key:
            layer = PrototypeHead(
                head.num_classes, temperature=head.temperature, pooling=head.pooling, linear=True
            )
            inputs = keras.Input((head.feature_dim,), name="features")
            model = keras.Model(inputs, layer(inputs), name="prototype_refinement")
            model.compile(
                optimizer=keras.optimizers.Adam(self.learning_rate),
                loss=layer.default_loss(),
                metrics=layer.default_metrics(),
                steps_per_execution=steps,
            )
            model.optimizer.build(model.trainable_variables)
            self._key, self._model, self._layer = key, model, layer
        return self._model

    def __call__(
        self, head: PrototypeHead, features: Any, labels: Any, *, seed: int | None = None
    ) -> PrototypeHead:
        features = np.asarray(features, dtype=np.float32)
        labels = imbalance.label_indices(labels).astype(np.int32)
        steps = math.ceil(len(labels) / self.batch_size) * self.epochs
        model = self._training_model(head, steps)
        layer = self._layer
        layer.temperature = head.temperature  # only sets the initial kernel here
        layer.set_prototypes(*_prototype_weights(head))
        for variable in model.optimizer.variables:
            variable.assign(keras.ops.zeros_like(variable))
        model.optimizer.learning_rate = self.learning_rate
        data = tf.data.Dataset.from_tensor_slices((features, labels))
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        # shuffle=False: the dataset is already shuffled (Keras warns otherwise).
        model.fit(
            data.batch(self.batch_size).repeat(self.epochs),
            epochs=1,
            shuffle=False,
            verbose=self.verbose,
        )
        refined = PrototypeHead(
            head.num_classes,
            temperature=head.temperature,
            pooling=head.pooling,
            linear=True,
            name=head.name,
        )
        refined.build((None, head.feature_dim))
        refined.set_prototypes(*_prototype_weights(head))
        refined.dense.set_weights(layer.dense.get_weights())
        return refined


def _prototype_weights(head: PrototypeHead) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(head.centre),
        keras.ops.convert_to_numpy(head.class_means),
        keras.ops.convert_to_numpy(head.class_counts),
    ]


def _support_dataset(data: Any, batch_size: int) -> tuple[Any, list[str] | None]:
    """`(batched (images, labels) dataset, class names or None)` of the support data."""
    if isinstance(data, Mapping):
        if not data:
            raise ValueError("images_by_class is empty: give {class name: images}.")
        names = [str(name) for name in data]
        images, labels = [], []
        for index, (name, value) in enumerate(data.items()):
            array = _images_array(value, name)
            images.append(array)
            labels.append(np.full(len(array), index, np.int32))
        shapes = {a.shape[1:] for a in images}
        if len(shapes) > 1:
            raise ValueError(
                f"The classes' images differ in size: {sorted(shapes)}. Resize them to the "
                "backbone's input size first."
            )
        dataset = tf.data.Dataset.from_tensor_slices(
            (np.concatenate(images), np.concatenate(labels))
        )
        return dataset.batch(batch_size), names
    if hasattr(data, "class_names") and hasattr(data, "train"):
        split = getattr(data, "train_unaugmented", None)
        split = data.train if split is None else split
        return split, list(data.class_names)
    if isinstance(data, tf.data.Dataset):
        return data, None
    raise TypeError(
        f"Expected an ImageData, a batched tf.data.Dataset of (images, labels) or a dict "
        f"{{class name: images}}, got {type(data).__name__}."
    )


def _images_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, tf.data.Dataset):
        batches = [np.asarray(b[0] if isinstance(b, tuple) else b) for b in value]
        value = np.concatenate(batches) if batches else np.zeros((0,))
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.size == 0 or len(array) == 0:
        raise ValueError(
            f"Class {name!r} has no images: every class needs at least one support image."
        )
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"The images of class {name!r} have shape {array.shape}; expected (n, height, "
            "width, 3) RGB images in [0, 255]."
        )
    return array


def _check_image_size(model: TransferClassifier, dataset: Any) -> None:
    expected = tuple(model.input_shape[1:])
    spec = getattr(dataset, "element_spec", None)
    if isinstance(spec, tuple) and spec:
        got = tuple(spec[0].shape[1:])
        if len(got) != len(expected) or any(
            g is not None and e is not None and g != e for g, e in zip(got, expected)
        ):
            raise ValueError(
                f"The support images are {got[:-1]} (height, width) with {got[-1]} channels, "
                f"but the backbone takes {expected}. Resize them (e.g. image_folder_dataset("
                f"..., image_size={expected[0]})) or create the backbone with "
                f"input_shape={(got[0], got[1], 3)}."
            )


def _extract(model: TransferClassifier, dataset: Any, verbose: int) -> tuple[np.ndarray, Any]:
    _check_image_size(model, dataset)
    extractor = features_lib.feature_extractor(model)
    cached = features_lib.extract_features(extractor, dataset, verbose=verbose)
    return np.asarray(cached.features), np.asarray(cached.labels)


def fit_prototypes(
    backbone: Backbone | TransferClassifier,
    data: Any,
    *,
    class_names: Sequence[str] | None = None,
    temperature: float | str = "auto",
    pooling: str = "avg",
    refine_epochs: int = 0,
    refine_learning_rate: float = DEFAULT_REFINE_LEARNING_RATE,
    batch_size: int = 32,
    seed: int | None = 1337,
    verbose: int = 0,
) -> TransferClassifier:
    """A few-shot classifier: SimpleShot prototypes of the support images on `backbone`.

    The backbone runs once per support image; the class means of the CL2N-transformed
    pooled features become the prototypes of a `PrototypeHead` (see the module docstring
    for the temperature). Nothing is trained unless `refine_epochs > 0`.

    Args:
        backbone: a `Backbone` (`create_backbone`), or a `TransferClassifier` whose
            backbone and preprocessing are used (its head is ignored).
        data: the support set: a dict `{class name: images}` (arrays `(n, h, w, 3)` of
            0-255 RGB, or datasets of image batches), an `ImageData` (its unaugmented
            training images and class names), or a batched `tf.data.Dataset` of
            `(images, labels)`.
        class_names: names of the classes (default: from `data`, else "0", "1", ...).
        temperature: `"auto"` (leave-one-out calibration) or a number > 0.
        pooling: pooling of the backbone's feature maps.
        refine_epochs: if > 0, replace the prototypes by a linear head initialised from
            them and trained this many epochs on the support features
            (`refine_prototype_head`).
        refine_learning_rate: Adam's learning rate for the refinement.
        batch_size: batch size of feature extraction and refinement.
        seed: shuffling seed of the refinement.
        verbose: progress output of extraction and refinement.

    Returns:
        A `TransferClassifier` (raw 0-255 images in, class probabilities out) with the
        backbone frozen and a `PrototypeHead`; `.keras` files load with `safe_mode=True`.

    Raises:
        ValueError: fewer than two classes, a class without images, images of another
            size than the backbone takes.

    Example:
    ```python
    backbone = create_backbone("mobilenet", weights="mobilenet_1_0_224_tf_no_top.h5")
    model = fit_prototypes(backbone, {"ants": ant_images, "bees": bee_images})
    model = add_classes(model, {"wasps": wasp_images})  # no training
    model.save("few_shot.keras")
    ```
    """
    if isinstance(refine_epochs, bool) or not isinstance(refine_epochs, int) or refine_epochs < 0:
        raise ValueError(f"refine_epochs must be an integer >= 0, got {refine_epochs!r}.")
    if temperature != "auto":
        PrototypeHead(2, temperature=temperature)  # the clear error, before extraction
    dataset, found_names = _support_dataset(data, batch_size)
    names = list(class_names) if class_names is not None else found_names
    if isinstance(backbone, TransferClassifier):
        backbone_model, backbone_name = backbone.backbone, backbone.backbone_name
        preprocessing = backbone.preprocessing
    elif isinstance(backbone, Backbone):
        backbone_model, backbone_name = backbone.model, backbone.name
        preprocessing = backbone.preprocessing
    else:
        raise TypeError(
            f"Expected a Backbone (create_backbone) or a TransferClassifier, got "
            f"{type(backbone).__name__}."
        )
    # A two-class shell around the backbone tells the extractor the preprocessing and
    # pooling; the real head replaces it once the classes are known.
    shell = TransferClassifier(
        backbone_model,
        PrototypeHead(2, pooling=pooling),
        backbone_name=backbone_name,
        preprocessing=preprocessing,
    )
    support, labels = _extract(shell, dataset, verbose)
    num_classes = len(names) if names is not None else None
    head = prototype_head_from_features(
        support, labels, num_classes, temperature=temperature, pooling=pooling, class_names=names
    )
    if names is None:
        names = [str(c) for c in range(head.num_classes)]
    if refine_epochs:
        head = refine_prototype_head(
            head,
            support,
            labels,
            epochs=refine_epochs,
            learning_rate=refine_learning_rate,
            batch_size=batch_size,
            seed=seed,
            verbose=verbose,
        )
    return _classifier(shell, head, names)


def _classifier(like: TransferClassifier, head: PrototypeHead, names) -> TransferClassifier:
    model = TransferClassifier(
        like.backbone,
        head,
        backbone_name=like.backbone_name,
        preprocessing=like.preprocessing,
        class_names=names,
        name=f"{like.backbone.name}_prototypes",
    )
    model.backbone.trainable = False
    model.compile()
    # Optimizer variables now, so that a saved model's optimizer state matches on load.
    model.optimizer.build(model.trainable_variables)
    return model


def add_classes(
    model: TransferClassifier,
    images_by_class: Mapping[str, Any],
    *,
    batch_size: int = 32,
    verbose: int = 0,
) -> TransferClassifier:
    """Adds classes to (or updates classes of) a prototype classifier without training.

    Each new class gets the prototype of its images (CL2N with the model's own centre, so
    the existing prototypes and their scores do not change). Images of a class the model
    already has are merged into its prototype (a running mean over all its support images).
    A refined (linear) head gets the new or updated classes' prototype columns (kernel =
    prototype / temperature, bias 0); its other columns keep their training.

    Args:
        model: a `TransferClassifier` with a `PrototypeHead` (from `fit_prototypes`).
        images_by_class: `{class name: images}`, images as in `fit_prototypes`.
        batch_size: batch size of the feature extraction.
        verbose: progress output of the extraction.

    Returns:
        A new `TransferClassifier` sharing `model`'s backbone, with the classes of `model`
        (same order and names) followed by the new ones. `model` itself is unchanged.
    """
    head = getattr(model, "head", None)
    if not isinstance(model, TransferClassifier) or not isinstance(head, PrototypeHead):
        raise TypeError(
            "add_classes needs a prototype classifier from fit_prototypes (a "
            f"TransferClassifier with a PrototypeHead), got {type(model).__name__}"
            + (f" with a {type(head).__name__}" if head is not None else "")
            + "."
        )
    if not isinstance(images_by_class, Mapping) or not images_by_class:
        raise ValueError("images_by_class must be a non-empty dict {class name: images}.")
    dataset, added = _support_dataset(images_by_class, batch_size)
    support, labels = _extract(model, dataset, verbose)
    labels = imbalance.label_indices(labels)
    names = list(model.class_names or [str(c) for c in range(head.num_classes)])
    centre = keras.ops.convert_to_numpy(head.centre)
    means = keras.ops.convert_to_numpy(head.class_means).copy()
    counts = keras.ops.convert_to_numpy(head.class_counts).copy()
    transformed = cl2n(support, centre)
    changed = []
    for index, name in enumerate(added):
        rows = transformed[labels == index]
        if name in names:
            c = names.index(name)
            total = counts[c] + len(rows)
            means[c] = (means[c] * counts[c] + rows.sum(axis=0)) / total
            counts[c] = total
        else:
            names.append(name)
            means = np.concatenate([means, rows.mean(axis=0, keepdims=True)])
            counts = np.concatenate([counts, [len(rows)]]).astype(np.float32)
            c = len(names) - 1
        changed.append(c)
    grown = PrototypeHead(
        len(names),
        temperature=head.temperature,
        pooling=head.pooling,
        linear=head.linear,
        name=head.name,
    )
    grown.build((None, head.feature_dim))
    grown.set_prototypes(centre, means, counts)
    if head.linear:
        kernel, bias = (np.array(w) for w in head.dense.get_weights())
        new_kernel, new_bias = grown.dense.get_weights()
        new_kernel[:, : head.num_classes] = kernel
        new_bias[: head.num_classes] = bias
        fresh_kernel, fresh_bias = linear_weights(means, head.temperature)
        for c in changed:
            new_kernel[:, c], new_bias[c] = fresh_kernel[:, c], fresh_bias[c]
        grown.dense.set_weights([new_kernel, new_bias])
    return _classifier(model, grown, names)
