"""Unsupervised domain adaptation (DANN, Deep CORAL, MMD) and a measured domain distance.

When the labelled images (source) and the images the model will see (target) come from
different distributions, `fit_domain_adaptation` trains the classifier on the labelled
source batches while aligning the pooled features of source and unlabeled target batches:

- `"dann"`: domain-adversarial training (Ganin & Lempitsky 2015, "Unsupervised Domain
  Adaptation by Backpropagation", ICML; Ganin et al. 2016, "Domain-Adversarial Training of
  Neural Networks", JMLR 17). A domain classifier behind a `GradientReversal` layer learns
  to tell the domains apart; the reversed gradient trains the features to fool it. The
  reversal weight follows the paper's schedule lambda_p = 2 / (1 + exp(-10 p)) - 1 over the
  training progress p in [0, 1], and the paper's learning-rate annealing
  mu_p = mu_0 / (1 + 10 p)^0.75 is an option (`lr_annealing=True`).
- `"coral"`: Deep CORAL (Sun & Saenko 2016), `losses.CoralLoss` between the batches.
- `"mmd"`: multi-kernel MMD as in DAN (Long et al. 2015), `losses.MMDLoss`.

Training is Keras `fit` on `DomainAdaptation`, a `keras.Model` that wraps the classifier
and has its own `train_step` (the pattern of the Keras guide "Customizing what happens in
fit()"): callbacks, history, validation on labelled target data and `tf.distribute` are
Keras'. The classifier's layers are shared, not copied, so afterwards the classifier is
the trained plain model (the domain classifier lives only in the wrapper).

`domain_distance` measures how far apart two image sets are in a model's feature space:
the proxy A-distance d_A = 2 (1 - 2 err) of a linear classifier trained to tell them apart,
with `err` its error on held-out images (Ben-David et al. 2010, "A theory of learning from
different domains", Machine Learning 79; the measure Ganin et al. 2016 report), and the MMD
between the two feature sets.

Data: `source` yields batches `(images, labels)` (or `(images, labels, sample_weights)`),
`target` yields batches of images, or tuples whose first element is the images: anything
else in them (e.g. labels) is dropped before training and never read. Images of another
size than the model's input are resized (bilinear), as the loaders do for the source. An
epoch is `max(source batches, target batches)` steps: the shorter dataset is repeated
(cycled) so that every step has a batch of each, and the longer one is seen once per epoch
(pass `steps_per_epoch` to choose, e.g. for infinite datasets).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.adaptation import losses as losses_lib
from keras_transfer.adaptation.layers import GradientReversal
from keras_transfer.backbones import freezing
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.heads import classification as heads_lib
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.training import extraction as features_lib

__all__ = [
    "ALIGNMENT_LAYERS",
    "CLOSE_BELOW",
    "DannLearningRate",
    "DomainAdaptation",
    "DomainDistance",
    "describe_proxy_a_distance",
    "domain_distance",
    "fit_adaptation_phase",
    "fit_domain_adaptation",
    "paired_batches",
    "reversal_weight",
]

METHODS = ("dann", "coral", "mmd")
WEIGHT_SCHEDULES = ("auto", "dann", "constant")
ALIGNMENT_LAYERS = ("features", "logits")
# Below this proxy A-distance a linear classifier errs on more than 3/8 of the images:
# the feature distributions overlap mostly. At 1.5 and above it errs on fewer than 1/8.
CLOSE_BELOW = 0.5
FAR_FROM = 1.5


def reversal_weight(progress):
    """Ganin et al. 2016's schedule of the adaptation weight: 2 / (1 + exp(-10 p)) - 1.

    0 at the start of training (the domain classifier's gradients are noise while it is
    untrained) and close to 1 from about a third of the way on. `progress` is a float or
    tensor in [0, 1].
    """
    return 2.0 / (1.0 + keras.ops.exp(-10.0 * progress)) - 1.0


@keras.saving.register_keras_serializable(package="keras_transfer")
class DannLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """The learning-rate annealing of Ganin et al. 2016: mu_p = mu_0 / (1 + alpha p)^beta.

    `p = step / total_steps` is the training progress, clipped to [0, 1]; the paper uses
    `alpha=10`, `beta=0.75` (with SGD, momentum 0.9 and mu_0 = 0.01).

    Args:
        initial_learning_rate: mu_0.
        total_steps: the number of optimizer steps of the whole training run.
        alpha, beta: the schedule's constants.

    Example:
    ```python
    optimizer = keras.optimizers.SGD(DannLearningRate(0.01, total_steps=10_000), momentum=0.9)
    ```
    """

    def __init__(
        self,
        initial_learning_rate: float,
        total_steps: int,
        alpha: float = 10.0,
        beta: float = 0.75,
    ):
        if not initial_learning_rate > 0:
            raise ValueError(f"initial_learning_rate must be > 0, got {initial_learning_rate}.")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.total_steps = int(total_steps)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def __call__(self, step):
        progress = keras.ops.clip(
            keras.ops.cast(step, "float32") / float(self.total_steps), 0.0, 1.0
        )
        return self.initial_learning_rate / (1.0 + self.alpha * progress) ** self.beta

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def _pooled_feature_model(model: Any) -> keras.Model:
    """Raw images -> pooled feature vectors, sharing the layers of `model`; called in
    training mode, its trainable layers run in training mode (domain adaptation trains
    through it)."""
    if isinstance(model, heads_lib.TransferClassifier | backbones_lib.Backbone):
        # A classifier's head pools (one with pooling=None cannot be built on feature maps).
        extractor = features_lib.feature_extractor(model)
    elif isinstance(model, keras.Model):
        # A plain model: its own preprocessing, if any; feature maps are average-pooled.
        inputs = keras.Input(shape=model.input_shape[1:], name="images")
        x = model(inputs)
        if len(x.shape) == 4:
            x = keras.ops.mean(x, axis=(1, 2))
        extractor = keras.Model(inputs, x, name="pooled_features")
    else:
        raise TypeError(
            f"Expected a classifier from create_classifier, a Backbone or a keras.Model, got "
            f"{type(model).__name__}."
        )
    if len(extractor.output_shape) != 2:
        raise ValueError(
            f"The model's features have shape {tuple(extractor.output_shape)}, not (batch, "
            "features): domain adaptation aligns pooled feature vectors. Use a classifier "
            "whose head pools the backbone's feature map (create_classifier with "
            "pooling='avg', 'max', 'avgmax' or 'flatten')."
        )
    return extractor


@keras.saving.register_keras_serializable(package="keras_transfer")
class DomainAdaptation(keras.Model):
    """A classifier trained on labelled source and unlabeled target batches (DANN, CORAL, MMD).

    `fit` takes batches `((source_images, target_images), source_labels)` (or with source
    sample weights as a third element); `fit_domain_adaptation` builds them from separate
    source and target datasets. Each training step runs the source and target images
    through the classifier's preprocessing and backbone as one batch, pools the features,
    computes the classification loss on the source half, and adds
    `weight * alignment_loss` between the two halves, where `weight` is `alignment_weight`
    times lambda_p = 2 / (1 + exp(-10 p)) - 1 (Ganin et al. 2016) with the `"dann"`
    schedule, or `alignment_weight` with `"constant"`. For DANN the weight is the gradient
    reversal factor: the domain classifier always gets its full gradient, the features get
    `-weight` times it. Evaluation and prediction are the classifier's.

    The logs add `alignment_loss` (DANN: the domain classifier's binary cross-entropy,
    which rises toward ln 2 = 0.693 as the domains become indistinguishable; CORAL/MMD: the
    loss, which falls), `alignment_weight`, and for DANN `domain_accuracy` (falls toward
    0.5). `loss` is the total that is minimised.

    Args:
        classifier: a `TransferClassifier` from `create_classifier` (any backbone, any
            freezing); its layers are shared, so training trains it.
        method: `"dann"`, `"coral"` or `"mmd"`.
        total_steps: the optimizer steps of the whole run, for the progress p of the
            schedule (`fit_domain_adaptation` computes it).
        alignment_weight: the weight of the alignment term (DANN: the maximum reversal
            factor).
        weight_schedule: `"dann"` (the ramp-up), `"constant"`, or `"auto"`: `"dann"` for
            DANN and `"constant"` for CORAL and MMD, as in their papers.
        domain_hidden_units: DANN's domain classifier: ReLU layers of these sizes, then
            one logit (the paper's 1024-1024 for deep features).
        domain_dropout: dropout before each dense layer of the domain classifier.
        mmd_kernel_multipliers: `losses.MMDLoss`'s bandwidth multipliers.
        alignment_layer: what is aligned: `"features"` (the pooled backbone features, as
            DANN) or `"logits"` (the head's pre-activation outputs, computed for source and
            target alike, as Deep CORAL aligns the last layer, fc8: Sun & Saenko 2016).
        **kwargs: standard `keras.Model` arguments.

    Example:
    ```python
    adapter = DomainAdaptation(model, "coral", total_steps=1000)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-4), loss="auto", metrics="auto")
    adapter.fit(paired_batches, epochs=10, steps_per_epoch=100)
    model.evaluate(target_test)  # `model` is the trained plain classifier
    ```
    """

    def __init__(
        self,
        classifier: heads_lib.TransferClassifier,
        method: str = "dann",
        total_steps: int = 1,
        alignment_weight: float = 1.0,
        weight_schedule: str = "auto",
        domain_hidden_units: Sequence[int] = (1024, 1024),
        domain_dropout: float = 0.5,
        mmd_kernel_multipliers: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0),
        alignment_layer: str = "features",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_options(method, total_steps, alignment_weight, weight_schedule, domain_dropout)
        if not isinstance(classifier, heads_lib.TransferClassifier):
            raise TypeError(
                f"Domain adaptation needs a classifier from create_classifier (a backbone whose "
                f"feature map a head pools), got {type(classifier).__name__}."
            )
        _check_alignment_layer(alignment_layer, classifier)
        self.classifier = classifier
        self.method = method
        self.total_steps = int(total_steps)
        self.alignment_weight = float(alignment_weight)
        self.weight_schedule = weight_schedule
        self.domain_hidden_units = tuple(int(u) for u in domain_hidden_units)
        self.domain_dropout = float(domain_dropout)
        self.mmd_kernel_multipliers = tuple(float(m) for m in mmd_kernel_multipliers)
        self.alignment_layer = alignment_layer
        self.feature_model = _pooled_feature_model(classifier)
        aligned_size = (
            self.feature_model.output_shape[-1]
            if alignment_layer == "features"
            else classifier.head.output_units
        )

        self.gradient_reversal = None
        self.domain_classifier = None
        self.alignment_fn = None
        if method == "dann":
            self.gradient_reversal = GradientReversal(name="gradient_reversal", dtype="float32")
            layers = []
            for i, units in enumerate(self.domain_hidden_units):
                layers += [
                    keras.layers.Dropout(
                        self.domain_dropout, name=f"domain_dropout_{i}", dtype="float32"
                    ),
                    keras.layers.Dense(
                        units, activation="relu", name=f"domain_hidden_{i}", dtype="float32"
                    ),
                ]
            layers += [
                keras.layers.Dropout(
                    self.domain_dropout, name="domain_dropout_out", dtype="float32"
                ),
                keras.layers.Dense(1, name="domain_logit", dtype="float32"),
            ]
            # float32 whatever the policy: the domain loss is a sigmoid cross-entropy.
            self.domain_classifier = keras.Sequential(layers, name="domain_classifier")
            self.domain_classifier.build((None, aligned_size))
            self.domain_accuracy = keras.metrics.BinaryAccuracy(
                name="domain_accuracy", threshold=0.0
            )
        elif method == "coral":
            self.alignment_fn = losses_lib.CoralLoss()
        else:
            self.alignment_fn = losses_lib.MMDLoss(self.mmd_kernel_multipliers)
        self.alignment_loss_tracker = keras.metrics.Mean(name="alignment_loss")
        self.alignment_weight_tracker = keras.metrics.Mean(name="alignment_weight")

    @property
    def schedule(self) -> str:
        if self.weight_schedule != "auto":
            return self.weight_schedule
        return "dann" if self.method == "dann" else "constant"

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        kwargs.update(heads_lib.resolve_loss_and_metrics(self.classifier, loss, metrics))
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=None):
        # Training batches are (source, target) pairs; the prediction is the source's.
        if isinstance(inputs, tuple | list):
            inputs = inputs[0]
        return self.classifier(inputs, training=training)

    def current_weight(self):
        """The alignment weight at the optimizer's current step."""
        if self.schedule == "constant":
            return keras.ops.convert_to_tensor(self.alignment_weight, "float32")
        progress = keras.ops.cast(self.optimizer.iterations, "float32") / float(self.total_steps)
        return self.alignment_weight * reversal_weight(keras.ops.clip(progress, 0.0, 1.0))

    def _alignment(self, source_features, target_features, weight):
        """(the term added to the loss, the unweighted alignment loss to log)."""
        if self.method != "dann":
            value = self.alignment_fn(source_features, target_features)
            return weight * value, value
        features = keras.ops.concatenate([source_features, target_features], axis=0)
        reversed_features = self.gradient_reversal(features, factor=weight)
        logits = self.domain_classifier(reversed_features, training=True)
        domain_labels = keras.ops.concatenate(
            [
                keras.ops.ones((keras.ops.shape(source_features)[0], 1)),
                keras.ops.zeros((keras.ops.shape(target_features)[0], 1)),
            ],
            axis=0,
        )
        value = keras.ops.mean(
            keras.losses.binary_crossentropy(domain_labels, logits, from_logits=True)
        )
        self.domain_accuracy.update_state(domain_labels, logits)
        # The weight acts through the reversal layer: the domain classifier itself always
        # minimises its full loss.
        return value, value

    def train_step(self, data):
        if not (isinstance(data, tuple | list) and len(data) in (2, 3)):
            raise ValueError(
                "DomainAdaptation trains on batches ((source_images, target_images), "
                "source_labels[, source_sample_weights]); use fit_domain_adaptation to build them."
            )
        (source_images, target_images), labels = data[0], data[1]
        sample_weight = data[2] if len(data) == 3 else None
        num_source = keras.ops.shape(source_images)[0]
        images = keras.ops.concatenate(
            [
                keras.ops.cast(source_images, "float32"),
                keras.ops.cast(target_images, "float32"),
            ],
            axis=0,
        )
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        weight = self.current_weight()
        with tf.GradientTape() as tape:
            features = self.feature_model(images, training=True)
            if self.alignment_layer == "logits":
                # Source and target through the head together; the loss sees the source half.
                aligned = self.classifier.head.compute_logits(features, training=True)
                predictions = self.classifier.head.activate(aligned[:num_source])
            else:
                aligned = features
                predictions = self.classifier.head(features[:num_source], training=True)
            # compute_loss already divides by the number of replicas (the gradients of the
            # replicas are summed); the alignment term is a scalar, so divide it here.
            classification_loss = self.compute_loss(
                x=source_images,
                y=labels,
                y_pred=predictions,
                sample_weight=sample_weight,
                training=True,
            )
            aligned = keras.ops.cast(aligned, "float32")
            term, value = self._alignment(aligned[:num_source], aligned[num_source:], weight)
            loss = classification_loss + term / replicas
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss * replicas)
        self.alignment_loss_tracker.update_state(value)
        self.alignment_weight_tracker.update_state(weight)
        return self.compute_metrics(source_images, labels, predictions, sample_weight)

    def test_step(self, data):
        logs = super().test_step(data)
        return {name: value for name, value in logs.items() if name not in self._domain_logs}

    @property
    def _domain_logs(self) -> tuple[str, ...]:
        return ("alignment_loss", "alignment_weight", "domain_accuracy")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "classifier": keras.saving.serialize_keras_object(self.classifier),
                "method": self.method,
                "total_steps": self.total_steps,
                "alignment_weight": self.alignment_weight,
                "weight_schedule": self.weight_schedule,
                "domain_hidden_units": list(self.domain_hidden_units),
                "domain_dropout": self.domain_dropout,
                "mmd_kernel_multipliers": list(self.mmd_kernel_multipliers),
                "alignment_layer": self.alignment_layer,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["classifier"] = keras.saving.deserialize_keras_object(config["classifier"])
        return cls(**config)


def _check_alignment_layer(alignment_layer, classifier):
    if alignment_layer not in ALIGNMENT_LAYERS:
        raise ValueError(
            f"alignment_layer must be one of {ALIGNMENT_LAYERS}, got {alignment_layer!r}."
        )
    if alignment_layer == "logits" and not isinstance(
        classifier.head, heads_lib.ClassificationHead
    ):
        raise ValueError(
            f"alignment_layer='logits' needs one ClassificationHead, got a "
            f"{type(classifier.head).__name__}: align the features (alignment_layer='features')."
        )


def _check_options(method, total_steps, alignment_weight, weight_schedule, domain_dropout):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if weight_schedule not in WEIGHT_SCHEDULES:
        raise ValueError(
            f"weight_schedule must be one of {WEIGHT_SCHEDULES}, got {weight_schedule!r}."
        )
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
    if (
        isinstance(alignment_weight, bool)
        or not isinstance(alignment_weight, int | float)
        or not math.isfinite(alignment_weight)
        or alignment_weight < 0
    ):
        raise ValueError(
            f"alignment_weight must be a finite number >= 0, got {alignment_weight!r}."
        )
    if not 0.0 <= float(domain_dropout) < 1.0:
        raise ValueError(f"domain_dropout must be in [0, 1), got {domain_dropout}.")


# ---------------------------------------------------------------------------------------
# Data: source and target batches paired for fit.


def _as_dataset(data: Any, what: str, batch_size: int) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, np.ndarray):
        return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
    if isinstance(data, tuple | list) and data and all(isinstance(a, np.ndarray) for a in data):
        return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(batch_size)
    raise TypeError(
        f"{what} must be a batched tf.data.Dataset, a NumPy array of images or a tuple of "
        f"NumPy arrays (images, labels); got {type(data).__name__}."
    )


def _images_only(dataset: tf.data.Dataset, what: str) -> tf.data.Dataset:
    spec = dataset.element_spec
    if isinstance(spec, tuple):
        # Labels or anything else in the target are dropped here, never read by training.
        dataset = dataset.map(lambda *element: element[0])
        spec = spec[0]
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
        raise ValueError(
            f"{what} must yield batches of images of shape (batch, height, width, channels), "
            f"got elements {spec}. Batch the dataset (dataset.batch(32))."
        )
    return dataset


def _resize_to(dataset: tf.data.Dataset, image_shape: tuple, what: str) -> tf.data.Dataset:
    """Resizes the first element of each batch to the model's height and width if needed."""
    spec = dataset.element_spec
    images_spec = spec[0] if isinstance(spec, tuple) else spec
    height, width, channels = image_shape
    if images_spec.shape.rank != 4:
        raise ValueError(
            f"{what} must yield batches of images (batch, height, width, channels), got "
            f"{images_spec}. Batch the dataset (dataset.batch(32))."
        )
    if channels is not None and images_spec.shape[-1] not in (None, channels):
        raise ValueError(
            f"{what} images have {images_spec.shape[-1]} channels but the model takes {channels}."
        )
    if height is None or width is None or tuple(images_spec.shape[1:3]) == (height, width):
        return dataset

    def resize(images):
        return tf.image.resize(tf.cast(images, tf.float32), (height, width))

    if isinstance(spec, tuple):
        return dataset.map(lambda images, *rest: (resize(images), *rest))
    return dataset.map(resize)


def _num_batches(dataset: tf.data.Dataset, what: str) -> int | None:
    """The number of batches: from the cardinality, else one counting pass; `None` if
    infinite. Empty is an error."""
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        return None
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        cardinality = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    if cardinality == 0:
        raise ValueError(
            f"The {what} dataset is empty: domain adaptation needs at least one batch of "
            f"{what} images."
        )
    return cardinality


def paired_batches(
    source: tf.data.Dataset,
    target: tf.data.Dataset,
    image_shape: tuple,
    steps_per_epoch: int | None = None,
) -> tuple[tf.data.Dataset, int]:
    """`((source_images, target_images), labels[, weights])` batches and the steps per
    epoch: `max` of the two batch counts unless given; the shorter dataset is cycled."""
    spec = source.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            f"source must yield (images, labels) batches (or (images, labels, sample_weights)), "
            f"got elements {spec}."
        )
    source = _resize_to(source, image_shape, "source")
    target = _resize_to(_images_only(target, "target"), image_shape, "target")
    source_batches = _num_batches(source, "source")
    target_batches = _num_batches(target, "target")
    if steps_per_epoch is None:
        if source_batches is None and target_batches is None:
            raise ValueError("source and target are both infinite: pass steps_per_epoch.")
        steps_per_epoch = max(n for n in (source_batches, target_batches) if n is not None)
    elif isinstance(steps_per_epoch, bool) or int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")

    def pair(source_element, target_images):
        images, *rest = source_element
        return ((images, target_images), *rest)

    paired = tf.data.Dataset.zip((source.repeat(), target.repeat())).map(pair)
    return paired.prefetch(tf.data.AUTOTUNE), int(steps_per_epoch)


def _fresh_optimizer(optimizer, lr_annealing: bool, total_steps: int):
    """A new optimizer with `optimizer`'s configuration (its state would not fit the new
    domain-classifier variables), with the annealed learning rate if asked."""
    config = optimizer.get_config()
    if lr_annealing:
        learning_rate = config.get("learning_rate")
        if not isinstance(learning_rate, int | float):
            raise ValueError(
                "lr_annealing=True replaces the learning rate with the DANN schedule; the "
                f"optimizer already has a schedule ({learning_rate!r}). Pass an optimizer with "
                "a constant learning rate, or lr_annealing=False."
            )
        config["learning_rate"] = DannLearningRate(learning_rate, total_steps)
    return type(optimizer).from_config(config)


def fit_domain_adaptation(
    model: heads_lib.TransferClassifier,
    source: Any,
    target: Any,
    method: str = "dann",
    epochs: int = 1,
    validation_data: Any = None,
    *,
    optimizer: keras.optimizers.Optimizer | None = None,
    loss: Any = "auto",
    metrics: Any = "auto",
    alignment_weight: float = 1.0,
    weight_schedule: str = "auto",
    lr_annealing: bool = False,
    domain_hidden_units: Sequence[int] = (1024, 1024),
    domain_dropout: float = 0.5,
    mmd_kernel_multipliers: Sequence[float] = (0.125, 0.25, 0.5, 1.0, 2.0),
    alignment_layer: str = "features",
    steps_per_epoch: int | None = None,
    batch_size: int = 32,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Trains `model` on labelled `source` and unlabeled `target` images (DANN, CORAL, MMD).

    Builds a `DomainAdaptation` around `model` (under the strategy `model` was created in),
    compiles it and runs Keras `fit`; `fit_kwargs` (`callbacks`, `verbose`,
    `initial_epoch`, ...) go to `fit`. Afterwards `model` is the trained plain classifier:
    no domain head, its own compile state, saved and loaded like any other.

    Args:
        model: a `TransferClassifier` (`create_classifier`), frozen or not, on any backbone.
        source: labelled batches `(images, labels)`: a batched `tf.data.Dataset` or a
            tuple of NumPy arrays (batched by `batch_size`).
        target: unlabeled batches of images, or tuples whose first element is the images
            (the rest, e.g. labels, is dropped unread); a dataset or an array.
        method: `"dann"`, `"coral"` or `"mmd"`.
        epochs: epochs of `max(source batches, target batches)` steps (the shorter dataset
            is cycled), or of `steps_per_epoch` steps; with `initial_epoch=k` in
            `fit_kwargs` they are numbered k to k + epochs - 1 (continuing another phase's
            timeline, as `fit_two_phase` does), and still `epochs` of them train.
        validation_data: labelled target data `(images, labels)` to validate on (as `fit`'s
            argument; a dataset is resized to the model's input like the training data).
        optimizer: the optimizer to configure a new one from (e.g. `with_layerwise_lr(...)`
            for per-layer learning rates); `None` uses `model`'s compiled optimizer's
            configuration, or Adam(1e-3) if `model` is not compiled. A new instance is used
            either way, so that its slots match the variables trained here.
        loss, metrics: `"auto"` (the head's defaults) or `compile` arguments.
        alignment_weight: the weight of the alignment term (DANN: the maximum gradient
            reversal factor lambda).
        weight_schedule: `"auto"` (`"dann"` for DANN, `"constant"` for CORAL/MMD), `"dann"`
            (lambda_p = 2 / (1 + exp(-10 p)) - 1 times `alignment_weight`, over the training
            progress p) or `"constant"`.
        lr_annealing: use the paper's mu_p = mu_0 / (1 + 10 p)^0.75 (`DannLearningRate`)
            with mu_0 the optimizer's learning rate.
        domain_hidden_units, domain_dropout: DANN's domain classifier.
        mmd_kernel_multipliers: bandwidth multipliers of the MMD's Gaussian kernels.
        alignment_layer: `"features"` (the pooled backbone features) or `"logits"` (the
            head's pre-activation outputs, as Deep CORAL aligns the last layer).
        steps_per_epoch: steps per epoch; needed when both datasets are infinite.
        batch_size: batch size for NumPy inputs.

    Returns:
        The `History` of `fit`: `loss`, the head's metrics (`accuracy`) on the source,
        `alignment_loss`, `alignment_weight`, DANN's `domain_accuracy`, and `val_*` on
        `validation_data`.

    Example:
    ```python
    model = kt.create_classifier("mobilenet", 2, input_shape=(224, 224, 3))
    kt.freeze(model.backbone)
    history = kt.fit_domain_adaptation(
        model, source_train, target_unlabeled, method="dann", epochs=10,
        validation_data=target_labelled,
    )
    model.save("adapted.keras")
    ```
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    _check_options(method, 1, alignment_weight, weight_schedule, domain_dropout)
    if not isinstance(model, heads_lib.TransferClassifier):
        raise TypeError(
            "fit_domain_adaptation needs a classifier from create_classifier (its head pools "
            f"the backbone's features, which are aligned), got {type(model).__name__}."
        )
    image_shape = tuple(model.input_shape[1:])
    source = _as_dataset(source, "source", batch_size)
    target = _as_dataset(target, "target", batch_size)
    train, steps = paired_batches(source, target, image_shape, steps_per_epoch)
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = _resize_to(validation_data, image_shape, "validation_data")
    total_steps = steps * epochs

    if optimizer is None:
        optimizer = getattr(model, "optimizer", None) or keras.optimizers.Adam(1e-3)
    with model.distribute_strategy.scope():
        adapter = DomainAdaptation(
            model,
            method,
            total_steps=total_steps,
            alignment_weight=alignment_weight,
            weight_schedule=weight_schedule,
            domain_hidden_units=domain_hidden_units,
            domain_dropout=domain_dropout,
            mmd_kernel_multipliers=mmd_kernel_multipliers,
            alignment_layer=alignment_layer,
            name=f"{model.name}_{method}",
        )
        adapter.compile(
            optimizer=_fresh_optimizer(optimizer, lr_annealing, total_steps),
            loss=loss,
            metrics=metrics,
        )
    # The paired dataset is already in the order the source and target datasets give.
    fit_kwargs.setdefault("shuffle", False)
    # `epochs` counts the epochs trained here; `initial_epoch` only numbers them (a phase
    # continuing another's timeline), as the schedules count this run's steps.
    initial_epoch = fit_kwargs.pop("initial_epoch", 0)
    return adapter.fit(
        train,
        initial_epoch=initial_epoch,
        epochs=initial_epoch + epochs,
        steps_per_epoch=steps,
        validation_data=validation_data,
        **fit_kwargs,
    )


# Variables trained at the head's rate in `fit_adaptation_phase`: the classifier's head
# and DANN's domain classifier, both new; the backbone trains at the lower rate.
NEW_LAYERS_PATTERN = "head/|domain_"


def fit_adaptation_phase(
    model: heads_lib.TransferClassifier,
    source: Any,
    target: Any,
    method: str = "dann",
    epochs: int = 1,
    validation_data: Any = None,
    *,
    unfreeze: int | float | str = "all",
    train_bn: bool = False,
    backbone_lr: float = 1e-4,
    head_lr: float = 1e-3,
    optimizer_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[keras.callbacks.History, list[str]]:
    """The fine-tuning phase of two-phase training as domain adaptation: unfreezes the
    chosen blocks and runs `fit_domain_adaptation` with per-layer learning rates.

    After a head phase on the labelled source images (e.g. `fit_two_phase(...,
    fine_tune_epochs=0)`), the backbone's features have to change for the domains to be
    aligned: this unfreezes `unfreeze` blocks (BatchNormalization in inference mode unless
    `train_bn`), trains them at `backbone_lr` and the head and DANN's domain classifier (new
    layers, which need larger steps) at `head_lr` (`with_layerwise_lr` over Adam).

    Args:
        model, source, target, method, epochs, validation_data: see
            `fit_domain_adaptation`.
        unfreeze: blocks to train, as `fit_two_phase`'s `unfreeze`.
        train_bn: BatchNormalization layers trainable.
        backbone_lr, head_lr: learning rates of the backbone and of the new layers.
        optimizer_kwargs: more Adam arguments (`use_ema`, `ema_momentum`, ...).
        **kwargs: more `fit_domain_adaptation` arguments (`callbacks`, `initial_epoch`,
            `alignment_weight`, ...).

    Returns:
        `(history, unfrozen block names)`.

    Example:
    ```python
    kt.fit_two_phase(model, data.train, data.validation, head_epochs=10, fine_tune_epochs=0)
    history, blocks = kt.domain.fit_adaptation_phase(
        model, data.train, target_images, "dann", epochs=5, unfreeze=4, backbone_lr=1e-4
    )
    ```
    """
    optimizers.check_learning_rate(backbone_lr, "backbone_lr")
    optimizers.check_learning_rate(head_lr, "head_lr")
    _check_options(method, 1, kwargs.get("alignment_weight", 1.0), "auto", 0.5)
    blocks = freezing.unfreeze(model, train_bn=train_bn, **freezing.unfreeze_request(unfreeze))
    optimizer = optimizers.with_layerwise_lr(
        keras.optimizers.Adam,
        {NEW_LAYERS_PATTERN: head_lr / backbone_lr},
        learning_rate=backbone_lr,
        **dict(optimizer_kwargs or {}),
    )
    history = fit_domain_adaptation(
        model, source, target, method, epochs, validation_data, optimizer=optimizer, **kwargs
    )
    return history, blocks


# ---------------------------------------------------------------------------------------
# Domain distance.


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
    dataset = _images_only(_as_dataset(data, what, batch_size), what)
    dataset = _resize_to(dataset, tuple(feature_model.input_shape[1:]), what)
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
    feature_model = _pooled_feature_model(backbone_or_model)
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
