"""How far apart two image sets are in a model's feature space: `domain_distance`.

The proxy A-distance d_A = 2 (1 - 2 err) of a linear classifier trained to tell them apart,
with `err` its error on held-out images (Ben-David et al. 2010, "A theory of learning from
different domains", Machine Learning 79; the measure Ganin et al. 2016 report), and the MMD
between the two feature sets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.adaptation import domain as domain_lib
from keras_transfer.adaptation import losses as losses_lib
from keras_transfer.adaptation.model import pooled_feature_model

__all__ = [
    "CLOSE_BELOW",
    "FAR_FROM",
    "DomainDistance",
    "describe_proxy_a_distance",
    "domain_distance",
]

# Below this proxy A-distance a linear classifier errs on more than 3/8 of the images:
# the feature distributions overlap mostly. At 1.5 and above it errs on fewer than 1/8.
CLOSE_BELOW = 0.5
FAR_FROM = 1.5


@dataclasses.dataclass(frozen=True)
class DomainDistance:
    """How far apart two image sets are in a model's pooled feature space.

    Attributes:
        proxy_a_distance: d_A = 2 (1 - 2 err) in [0, 2] (Ben-David et al. 2010): 0 when a
            linear classifier cannot tell the sets apart (err = 0.5), 2 when it always can.
        domain_error: `err`, the held-out error of that linear classifier (capped at 0.5).
        mmd: the squared MMD between the two feature sets (`losses.MMDLoss`).
        num_examples: images per set used (the larger set is subsampled to the smaller).
    """

    proxy_a_distance: float
    domain_error: float
    mmd: float
    num_examples: int

    @property
    def level(self) -> str:
        """`"close"` (d_A < 0.5), `"shifted"` (0.5 <= d_A < 1.5) or `"far"` (d_A >= 1.5)."""
        if self.proxy_a_distance < CLOSE_BELOW:
            return "close"
        return "shifted" if self.proxy_a_distance < FAR_FROM else "far"

    def describe(self) -> str:
        """What the distance implies, in words."""
        return describe_proxy_a_distance(self.proxy_a_distance)


def describe_proxy_a_distance(proxy_a_distance: float) -> str:
    """What a proxy A-distance implies, in words."""
    error = (1.0 - proxy_a_distance / 2.0) / 2.0
    head = (
        f"proxy A-distance {proxy_a_distance:.2f}: a linear classifier on the features tells "
        f"the two image sets apart with {error:.0%} error (50% = indistinguishable)"
    )
    if proxy_a_distance < CLOSE_BELOW:
        return (
            f"{head}. The feature distributions mostly overlap: a model trained on one set "
            "should transfer to the other."
        )
    if proxy_a_distance < FAR_FROM:
        return (
            f"{head}. The domains are shifted: expect a drop from one to the other; "
            "unlabeled images of the second set help through fit_domain_adaptation."
        )
    return (
        f"{head}. The domains are far apart in this feature space: the features need to "
        "change (fine-tune deeper, trainable BatchNorm), and domain adaptation with unlabeled "
        "target images (fit_domain_adaptation, DANN) or some labelled target images are "
        "likely needed."
    )


def _extract(feature_model: keras.Model, data: Any, what: str, batch_size: int) -> np.ndarray:
    dataset = domain_lib.image_batches(data, tuple(feature_model.input_shape[1:]), what, batch_size)
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{what} is infinite: pass a finite dataset (e.g. dataset.take(50)).")
    features = feature_model.predict(dataset, verbose=0)
    if len(features) == 0:
        raise ValueError(f"The {what} dataset is empty.")
    return np.asarray(features, dtype=np.float64)


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float):
    mean_x, mean_y = x.mean(axis=0), y.mean()
    xc, yc = x - mean_x, y - mean_y
    n, d = xc.shape
    if d <= n:
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ yc)
    else:
        w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(n), yc)
    return w, mean_y - mean_x @ w


def _linear_domain_error(
    source: np.ndarray, target: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> float:
    """Held-out error of a ridge classifier (source +1, target -1), its strength chosen by
    3-fold cross-validation on the training part."""
    n = min(len(source), len(target))
    source = source[rng.permutation(len(source))[:n]]
    target = target[rng.permutation(len(target))[:n]]
    n_test = max(1, int(round(n * test_fraction)))
    if n - n_test < 3:
        raise ValueError(
            f"domain_distance needs at least {n_test + 3} images per set for a held-out "
            f"estimate (test_fraction={test_fraction}), got {n}."
        )
    x_train = np.concatenate([source[n_test:], target[n_test:]])
    y_train = np.concatenate([np.ones(n - n_test), -np.ones(n - n_test)])
    x_test = np.concatenate([source[:n_test], target[:n_test]])
    y_test = np.concatenate([np.ones(n_test), -np.ones(n_test)])
    # Standardise with the training part only: the test part stays unseen.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    folds = np.array_split(rng.permutation(len(x_train)), 3)
    best_alpha, best_error = None, None
    for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0):
        errors = []
        for k in range(3):
            held = folds[k]
            kept = np.concatenate([folds[j] for j in range(3) if j != k])
            w, b = _ridge_fit(x_train[kept], y_train[kept], alpha)
            errors.append(np.mean(np.sign(x_train[held] @ w + b) != y_train[held]))
        if best_error is None or np.mean(errors) < best_error:
            best_alpha, best_error = alpha, float(np.mean(errors))
    w, b = _ridge_fit(x_train, y_train, best_alpha)
    return float(np.mean(np.sign(x_test @ w + b) != y_test))


def domain_distance(
    backbone_or_model: Any,
    source: Any,
    target: Any,
    *,
    max_examples: int | None = 2000,
    test_fraction: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
) -> DomainDistance:
    """The proxy A-distance and the MMD between two image sets in a model's feature space.

    The images go through the model's preprocessing and backbone, and its head's pooling
    (for a `create_classifier` model), or global average pooling (for a `Backbone` or a
    plain `keras.Model` with a feature-map output). The larger set is subsampled to the
    size of the smaller (at most `max_examples`), so that chance is 50%; a ridge classifier
    on standardised features, its regularisation chosen by 3-fold cross-validation on the
    training part, is trained to tell them apart and tested on the held-out
    `test_fraction`: d_A = 2 (1 - 2 err) (Ben-David et al. 2010; Ganin et al. 2016 report it
    before and after adaptation). The MMD is `losses.MMDLoss` on the same vectors.

    Args:
        backbone_or_model: a `TransferClassifier`, a `Backbone` or a `keras.Model`.
        source, target: batched datasets (or arrays) of images, or of tuples whose first
            element is the images; labels are ignored.
        max_examples: at most this many images per set (`None`: all).
        test_fraction: the held-out part of each set.
        batch_size: for NumPy inputs.
        seed: for the subsampling and the split.

    Returns:
        A `DomainDistance`; `describe()` says what it implies.

    Example:
    ```python
    before = kt.domain_distance(model, source_test, target_test)
    print(before.proxy_a_distance, before.describe())
    ```
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    feature_model = pooled_feature_model(backbone_or_model)
    source_features = _extract(feature_model, source, "source", batch_size)
    target_features = _extract(feature_model, target, "target", batch_size)
    rng = np.random.default_rng(seed)
    n = min(len(source_features), len(target_features))
    if max_examples is not None:
        n = min(n, int(max_examples))
    source_features = source_features[rng.permutation(len(source_features))[:n]]
    target_features = target_features[rng.permutation(len(target_features))[:n]]
    error = min(_linear_domain_error(source_features, target_features, test_fraction, rng), 0.5)
    mmd = losses_lib.MMDLoss()(source_features.astype("float32"), target_features.astype("float32"))
    return DomainDistance(
        proxy_a_distance=2.0 * (1.0 - 2.0 * error),
        domain_error=error,
        mmd=float(mmd),
        num_examples=n,
    )
