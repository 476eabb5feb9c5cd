"""The few-shot head: nearest class means on pooled features (SimpleShot, CL2N).

SimpleShot (Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor
Classification for Few-Shot Learning", arXiv:1911.04623, 2019) showed that a nearest class
mean classifier on pretrained features is a strong few-shot learner once the features are
centred and L2-normalised ("CL2N", `centre_and_normalise`): subtract the mean feature of the
base (here: the support) set, divide by the norm, and average each class's transformed
features into its prototype. No weights are trained.

`PrototypeHead` holds the class means and the centring mean as non-trainable weights and
scores a query by the softmax of its cosine similarity to every prototype divided by a
temperature; the temperature changes the confidence of the scores, never which class wins.
A classifier with this head takes raw images, saves to `.keras` and loads with
`safe_mode=True`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from keras_transfer.heads.classification import ClassificationHead

__all__ = [
    "DEFAULT_TEMPERATURE",
    "PrototypeHead",
    "centre_and_normalise",
    "linear_weights",
]

# The temperature when the support set cannot calibrate one (one example per class).
# benchmarks/few_shot.py reports the calibrated values on real features.
DEFAULT_TEMPERATURE = 0.1


def centre_and_normalise(features: Any, centre: Any) -> np.ndarray:
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
    np.array(head(np.eye(3, 8))).argmax(axis=-1)  # -> array([0, 1, 2])
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
        return ClassificationHead.pool(self, x)

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

    def linear_copy(self, centre: Any, class_means: Any, class_counts: Any) -> PrototypeHead:
        """A new built `linear=True` head with this head's temperature, pooling and name,
        holding the given prototypes (its dense layer starts from them): what refining
        the prototypes, by more examples or by training, returns."""
        copy = PrototypeHead(
            self.num_classes,
            temperature=self.temperature,
            pooling=self.pooling,
            linear=True,
            name=self.name,
        )
        copy.build((None, self.feature_dim))
        copy.set_prototypes(centre, class_means, class_counts)
        return copy

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
