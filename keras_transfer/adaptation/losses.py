"""Distribution-alignment losses between source and target features (Deep CORAL and
multi-kernel MMD), the losses on target predictions alone: the prediction entropy that
TENT minimises, SHOT's information maximisation, and MCC's class confusion.

- `CoralLoss`: Sun & Saenko 2016, "Deep CORAL: Correlation Alignment for Deep Domain
  Adaptation" (ECCV workshops): the squared Frobenius distance between the feature
  covariances of the two domains, `||C_S - C_T||_F^2 / (4 d^2)`.
- `MMDLoss`: Long et al. 2015, "Learning Transferable Features with Deep Adaptation
  Networks" (ICML): the squared maximum mean discrepancy under a mixture of Gaussian
  kernels (multi-kernel MMD), as in DAN; the bandwidths are multiples of the mean pairwise
  squared distance of the batch, as in Transfer-Learning-Library's `GaussianKernel`.

- `MinimumClassConfusion`: Jin et al. 2020, "Minimum Class Confusion for Versatile Domain
  Adaptation" (ECCV): the between-class confusion of a target batch's
  temperature-scaled predictions, entropy-weighted and row-normalised, as in
  Transfer-Learning-Library's `MinimumClassConfusionLoss`.
- `InformationMaximization`: Liang et al. 2020, "Do We Really Need to Access the Source
  Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation" (SHOT, ICML): mean
  prediction entropy minus the entropy of the mean prediction, plus a weighted
  cross-entropy to pseudo-labels.

A one-unit sigmoid output counts as two classes, `(1 - p, p)`, in the last three.

CORAL and MMD compare two *sets* of feature vectors, so `y_true` and `y_pred` are the source and
target features, of shapes `(n_s, d)` and `(n_t, d)` with possibly different `n_s` and
`n_t`, and the loss is one number for the pair of batches (not one per example:
`sample_weight` would only rescale it). Like any scalar loss they are not divided by the
number of replicas under `tf.distribute`; `fit_domain_adaptation` does that.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

__all__ = [
    "CoralLoss",
    "InformationMaximization",
    "MMDLoss",
    "MinimumClassConfusion",
    "PredictionEntropy",
    "log_class_probabilities",
]


def log_class_probabilities(y_pred, from_logits: bool):
    """`(batch, classes)` log-probabilities of softmax outputs or logits; a one-unit
    sigmoid output (probability or logit) becomes the two classes `(1 - p, p)`."""
    y_pred = keras.ops.cast(y_pred, "float32")
    if y_pred.shape[-1] == 1:
        logit = y_pred if from_logits else _logit(y_pred)
        # log sigmoid(-z), log sigmoid(z): the classes (1 - p) and p.
        return keras.ops.concatenate(
            [keras.ops.log_sigmoid(-logit), keras.ops.log_sigmoid(logit)], axis=-1
        )
    if from_logits:
        return keras.ops.log_softmax(y_pred, axis=-1)
    return keras.ops.log(keras.ops.clip(y_pred, 1e-7, 1.0))


def _logit(p):
    p = keras.ops.clip(p, 1e-7, 1.0 - 1e-7)
    return keras.ops.log(p) - keras.ops.log(1.0 - p)


def _entropy(log_p):
    return -keras.ops.sum(keras.ops.exp(log_p) * log_p, axis=-1)


def _check_features(source, target, name: str) -> None:
    if len(source.shape) != 2 or len(target.shape) != 2:
        raise ValueError(
            f"{name} compares feature vectors of shape (batch, features); got source "
            f"{tuple(source.shape)} and target {tuple(target.shape)}. Pool or flatten "
            "feature maps first."
        )
    if source.shape[-1] is not None and target.shape[-1] is not None:
        if source.shape[-1] != target.shape[-1]:
            raise ValueError(
                f"{name}: source and target features differ in size ({source.shape[-1]} vs "
                f"{target.shape[-1]}); they must come from the same feature extractor."
            )


def _covariance(x):
    n = keras.ops.cast(keras.ops.shape(x)[0], x.dtype)
    centred = x - keras.ops.mean(x, axis=0, keepdims=True)
    # Unbiased (n - 1) as in the paper; a batch of one has no spread, not a division by 0.
    return keras.ops.matmul(keras.ops.transpose(centred), centred) / keras.ops.maximum(n - 1, 1)


@keras.saving.register_keras_serializable(package="keras_transfer")
class CoralLoss(keras.losses.Loss):
    """Deep CORAL: the distance between source and target feature covariances.

    `loss(source, target) = ||C_S - C_T||_F^2 / (4 d^2)` (Sun & Saenko 2016, eq. 1), with
    `C` the unbiased covariance of a batch of `d`-dimensional feature vectors. It is 0 when
    the two batches have the same covariance, and differentiable in both.

    Args:
        name: the loss name.
        **kwargs: standard `keras.losses.Loss` arguments (`dtype`).

    Example:
    ```python
    coral = kt.losses.CoralLoss()
    value = coral(source_features, target_features)  # shapes (n_s, d) and (n_t, d)
    ```
    """

    def __init__(self, name: str = "coral_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        _check_features(y_true, y_pred, "CoralLoss")
        d = keras.ops.cast(keras.ops.shape(y_true)[-1], y_true.dtype)
        difference = _covariance(y_true) - _covariance(y_pred)
        return keras.ops.sum(keras.ops.square(difference)) / (4.0 * d * d)


@keras.saving.register_keras_serializable(package="keras_transfer")
class MMDLoss(keras.losses.Loss):
    """Squared maximum mean discrepancy under a mixture of Gaussian kernels (DAN's MK-MMD).

    With `z` the source and target features together and `D` their pairwise squared
    distances, the kernel is the mean of `exp(-D / (2 m sigma^2))` over the
    `kernel_multipliers` `m`, where `sigma^2` is `bandwidth` or, by default, the mean of
    `D` over the batch (treated as a constant in the gradient), the heuristic of Long et al.
    2015 and Transfer-Learning-Library. The loss is the biased estimate
    `mean K(s, s') + mean K(t, t') - 2 mean K(s, t)`: >= 0, and 0 when the two batches are
    the same set of vectors.

    Args:
        kernel_multipliers: the bandwidth multipliers of the Gaussian kernels (DAN uses
            2^-3 ... 2^1 times the base bandwidth).
        bandwidth: a fixed base `sigma^2`; `None` uses the batch's mean squared distance.
        name: the loss name.
        **kwargs: standard `keras.losses.Loss` arguments (`dtype`).

    Example:
    ```python
    mmd = kt.losses.MMDLoss(kernel_multipliers=(0.5, 1.0, 2.0))
    value = mmd(source_features, target_features)  # shapes (n_s, d) and (n_t, d)
    ```
    """

    def __init__(
        self,
        kernel_multipliers: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0),
        bandwidth: float | None = None,
        name: str = "mmd_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        multipliers = tuple(float(m) for m in kernel_multipliers)
        if not multipliers or any(m <= 0 for m in multipliers):
            raise ValueError(
                f"kernel_multipliers must be positive numbers, got {list(kernel_multipliers)}."
            )
        if bandwidth is not None and not float(bandwidth) > 0:
            raise ValueError(f"bandwidth must be > 0 or None, got {bandwidth!r}.")
        self.kernel_multipliers = multipliers
        self.bandwidth = None if bandwidth is None else float(bandwidth)

    def call(self, y_true, y_pred):
        _check_features(y_true, y_pred, "MMDLoss")
        n_source = keras.ops.shape(y_true)[0]
        z = keras.ops.concatenate([y_true, y_pred], axis=0)
        squared_norms = keras.ops.sum(keras.ops.square(z), axis=1)
        distances = (
            squared_norms[:, None]
            + squared_norms[None, :]
            - 2.0 * keras.ops.matmul(z, keras.ops.transpose(z))
        )
        distances = keras.ops.maximum(distances, 0.0)
        if self.bandwidth is None:
            base = keras.ops.stop_gradient(keras.ops.mean(distances))
            # All-identical vectors have no spread: any bandwidth gives the same (zero) MMD.
            base = keras.ops.maximum(base, 1e-12)
        else:
            base = keras.ops.cast(self.bandwidth, z.dtype)
        # A running sum, not a stack: one (n, n) matrix in memory whatever the kernel count.
        kernel = 0.0
        for m in self.kernel_multipliers:
            kernel = kernel + keras.ops.exp(-distances / (2.0 * m * base))
        kernel = kernel / float(len(self.kernel_multipliers))
        k_ss = kernel[:n_source, :n_source]
        k_tt = kernel[n_source:, n_source:]
        k_st = kernel[:n_source, n_source:]
        return keras.ops.mean(k_ss) + keras.ops.mean(k_tt) - 2.0 * keras.ops.mean(k_st)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"kernel_multipliers": list(self.kernel_multipliers), "bandwidth": self.bandwidth}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_transfer")
class PredictionEntropy(keras.losses.Loss):
    """The Shannon entropy of each prediction, `-sum_c p_c log p_c`; `y_true` is ignored.

    TENT (Wang et al., ICLR 2021) minimises it on unlabeled target batches
    (`adaptation.test_time.fit_tent`), which `fit` can then train with dummy targets.

    Args:
        from_logits: whether `y_pred` holds logits (else probabilities).
        **kwargs: `keras.losses.Loss` arguments (`reduction`, `name`, `dtype`).

    Example:

    ```python
    PredictionEntropy()(np.zeros(2), np.array([[0.5, 0.5], [1.0, 0.0]]))  # -> 0.347: ln 2 / 2
    ```
    """

    def __init__(self, from_logits: bool = False, name: str = "prediction_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        del y_true
        return _entropy(log_class_probabilities(y_pred, self.from_logits))

    def get_config(self):
        config = super().get_config()
        config.update({"from_logits": self.from_logits})
        return config


@keras.saving.register_keras_serializable(package="keras_transfer")
class MinimumClassConfusion(keras.losses.Loss):
    """MCC: how much a target batch's predictions confuse classes with one another.

    With `P` the batch's softmax of `logits / temperature` and `w_i` each example's weight
    `1 + exp(-H(p_i))` (confident examples count more), scaled to sum to the batch size, the
    class correlation is `C = P^T diag(w) P`; each row of `C` is divided by its sum, and
    the loss is the mean over classes of the off-diagonal mass: 0 when no two classes are
    predicted together, `(k - 1) / k` at uniform predictions (Jin et al. 2020, eq. 1-6).
    `y_true` is ignored: the loss is one number for the batch.

    Args:
        temperature: the rescaling temperature (the paper's 2.5; 1 is the plain softmax).
        from_logits: whether `y_pred` holds logits (else probabilities, which are turned
            back into logits up to a constant).
        **kwargs: `keras.losses.Loss` arguments (`name`, `dtype`).

    Example:
    ```python
    MinimumClassConfusion()(None, np.array([[9.0, 0.0], [0.0, 9.0]]))  # -> about 0.052
    ```
    """

    def __init__(
        self,
        temperature: float = 2.5,
        from_logits: bool = True,
        name: str = "minimum_class_confusion",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.temperature = float(temperature)
        self.from_logits = from_logits

    def __call__(self, y_true, y_pred, sample_weight=None):
        # One number per batch, not per example: no reduction or sample weights apply.
        del y_true, sample_weight
        return self.call(None, y_pred)

    def call(self, y_true, y_pred):
        del y_true
        # Log-probabilities are logits up to a per-row constant, which softmax ignores.
        log_p = log_class_probabilities(y_pred, self.from_logits)
        probabilities = keras.ops.softmax(log_p / self.temperature, axis=-1)
        entropy = keras.ops.stop_gradient(_entropy(keras.ops.log(probabilities + 1e-7)))
        weights = 1.0 + keras.ops.exp(-entropy)
        batch = keras.ops.cast(keras.ops.shape(probabilities)[0], "float32")
        weights = batch * weights / keras.ops.sum(weights)
        confusion = keras.ops.matmul(
            keras.ops.transpose(probabilities * weights[:, None]), probabilities
        )
        confusion = confusion / keras.ops.sum(confusion, axis=1, keepdims=True)
        classes = keras.ops.cast(keras.ops.shape(confusion)[0], "float32")
        return (keras.ops.sum(confusion) - keras.ops.trace(confusion)) / classes

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "from_logits": self.from_logits})
        return config


@keras.saving.register_keras_serializable(package="keras_transfer")
class InformationMaximization(keras.losses.Loss):
    """SHOT's objective on target predictions: confident, diverse, and near pseudo-labels.

    `mean_i H(p_i) - diversity_weight * H(mean_i p_i)
    + pseudo_label_weight * mean_i CE(y_i, p_i)`, with `y` the pseudo-labels
    (`adaptation.test_time.shot_pseudo_labels`) given as `y_true`. The first term makes each
    prediction confident, the second keeps the batch's predictions spread over the classes
    (no collapse onto one), the third is SHOT's self-supervised pseudo-labelling (Liang et
    al. 2020, eq. 2-6; the paper's pseudo-label weight is 0.3).

    Args:
        pseudo_label_weight: weight of the cross-entropy to the pseudo-labels (0: plain
            information maximisation; `y_true` is then ignored).
        diversity_weight: weight of the diversity term.
        from_logits: whether `y_pred` holds logits (else probabilities).
        **kwargs: `keras.losses.Loss` arguments (`name`, `dtype`).

    Example:
    ```python
    loss = InformationMaximization(pseudo_label_weight=0.3)
    value = loss(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    ```
    """

    def __init__(
        self,
        pseudo_label_weight: float = 0.3,
        diversity_weight: float = 1.0,
        from_logits: bool = False,
        name: str = "information_maximization",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for label, value in (
            ("pseudo_label_weight", pseudo_label_weight),
            ("diversity_weight", diversity_weight),
        ):
            if not float(value) >= 0:
                raise ValueError(f"{label} must be >= 0, got {value!r}.")
        self.pseudo_label_weight = float(pseudo_label_weight)
        self.diversity_weight = float(diversity_weight)
        self.from_logits = from_logits

    def __call__(self, y_true, y_pred, sample_weight=None):
        # The diversity term is a property of the batch: one number, no per-example weights.
        del sample_weight
        return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        log_p = log_class_probabilities(y_pred, self.from_logits)
        confidence = keras.ops.mean(_entropy(log_p))
        mean_p = keras.ops.mean(keras.ops.exp(log_p), axis=0)
        diversity = -keras.ops.sum(mean_p * keras.ops.log(mean_p + 1e-7))
        loss = confidence - self.diversity_weight * diversity
        if self.pseudo_label_weight:
            labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
            chosen = keras.ops.take_along_axis(log_p, labels[:, None], axis=-1)
            loss = loss - self.pseudo_label_weight * keras.ops.mean(chosen)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pseudo_label_weight": self.pseudo_label_weight,
                "diversity_weight": self.diversity_weight,
                "from_logits": self.from_logits,
            }
        )
        return config
