"""Prototype heads from pooled support features: class statistics, the calibrated
temperature, and the optional refinement into a trained linear head.

Temperature: `temperature="auto"` calibrates it on the support set by leave-one-out: each
support example is scored against prototypes computed without it, and the temperature (on a
log-spaced grid from 0.01 to 1) is the one at which the mean confidence of these predictions
equals their accuracy, smoothed as (correct + 1) / (n + 2) (see `calibrate_temperature`).
With a single example in every class there is nothing to leave out, and
`DEFAULT_TEMPERATURE` is used.

Refinement (`refine_prototype_head`, `PrototypeRefinement`) turns the prototypes into the
initial weights of a linear softmax layer (kernel = normalised prototypes / temperature,
bias 0: the same predictions as the prototypes at the start) and trains it on the cached
support features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.data import imbalance
from keras_transfer.few_shot.prototype_head import DEFAULT_TEMPERATURE
from keras_transfer.few_shot.prototype_head import PrototypeHead
from keras_transfer.few_shot.prototype_head import centre_and_normalise

__all__ = [
    "DEFAULT_REFINE_LEARNING_RATE",
    "PrototypeRefinement",
    "TEMPERATURE_GRID",
    "calibrate_temperature",
    "class_statistics",
    "prototype_head_from_features",
    "refine_prototype_head",
]

TEMPERATURE_GRID = np.geomspace(0.01, 1.0, 41)
DEFAULT_REFINE_LEARNING_RATE = 1e-3


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
    transformed = centre_and_normalise(features, centre)
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
            # zeros of the shape, not zeros_like: JAX cannot read a dtype off a keras.Variable.
            variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
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
        refined = head.linear_copy(*_prototype_weights(head))
        refined.dense.set_weights(layer.dense.get_weights())
        return refined


def _prototype_weights(head: PrototypeHead) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(head.centre),
        keras.ops.convert_to_numpy(head.class_means),
        keras.ops.convert_to_numpy(head.class_counts),
    ]
