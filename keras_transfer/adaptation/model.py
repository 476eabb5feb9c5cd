"""`DomainAdaptation`: a classifier trained on labelled source and unlabeled target batches.

A `keras.Model` that wraps the classifier and has its own `train_step` (the pattern of the
Keras guide "Customizing what happens in fit()"): each step adds an alignment term between
the pooled features (or logits) of the source and target halves of the batch: DANN's domain
classifier behind a `GradientReversal` layer, `losses.CoralLoss` or `losses.MMDLoss`. The
classifier's layers are shared, not copied, so afterwards the classifier is the trained
plain model (the domain classifier lives only in the wrapper). `pooled_feature_model` builds
the raw images -> pooled features model that training and `distance.domain_distance` use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import heads as heads_lib
from keras_transfer.adaptation import losses as losses_lib
from keras_transfer.adaptation.layers import GradientReversal
from keras_transfer.adaptation.schedules import reversal_weight
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.training import extraction as features_lib
from keras_transfer.utils import backend

__all__ = [
    "ALIGNMENT_LAYERS",
    "METHODS",
    "NEEDS_TENSORFLOW",
    "WEIGHT_SCHEDULES",
    "DomainAdaptation",
    "check_adaptation_options",
    "pooled_feature_model",
]

METHODS = ("dann", "coral", "mmd", "mcc")
WEIGHT_SCHEDULES = ("auto", "dann", "constant")
ALIGNMENT_LAYERS = ("features", "logits")


def pooled_feature_model(model: Any) -> keras.Model:
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


# `require_tensorflow`'s (feature, alternative): the training step is a tf.GradientTape
# program (Keras' JAX trainer would need a stateless one).
NEEDS_TENSORFLOW = (
    "Domain adaptation (DANN, CORAL, MMD, MCC)",
    "set KERAS_BACKEND=tensorflow; on JAX, keras-transfer adapt --method=adabn|tent|shot",
)


@keras.saving.register_keras_serializable(package="keras_transfer")
class DomainAdaptation(keras.Model):
    """A classifier trained on labelled source and unlabeled target batches (DANN, CORAL, MMD,
    MCC).

    `fit` takes batches `((source_images, target_images), source_labels)` (or with source
    sample weights as a third element); `fit_domain_adaptation` builds them from separate
    source and target datasets. Each training step runs the source and target images
    through the classifier's preprocessing and backbone as one batch, pools the features,
    computes the classification loss on the source half, and adds
    `weight * alignment_loss` between the two halves (MCC: the class confusion of the
    target half's logits, `losses.MinimumClassConfusion`; no domain classifier), where `weight` is `alignment_weight`
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
        method: `"dann"`, `"coral"`, `"mmd"` or `"mcc"`.
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
            MCC always works on the target logits.
        mcc_temperature: MCC's softmax temperature (the paper's 2.5).
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
        mcc_temperature: float = 2.5,
        **kwargs,
    ):
        backend.require_tensorflow(*NEEDS_TENSORFLOW)
        super().__init__(**kwargs)
        check_adaptation_options(
            method, total_steps, alignment_weight, weight_schedule, domain_dropout
        )
        if not isinstance(classifier, heads_lib.TransferClassifier):
            raise TypeError(
                f"Domain adaptation needs a classifier from create_classifier (a backbone whose "
                f"feature map a head pools), got {type(classifier).__name__}."
            )
        _check_alignment_layer("logits" if method == "mcc" else alignment_layer, classifier)
        self.classifier = classifier
        self.method = method
        self.total_steps = int(total_steps)
        self.alignment_weight = float(alignment_weight)
        self.weight_schedule = weight_schedule
        self.domain_hidden_units = tuple(int(u) for u in domain_hidden_units)
        self.domain_dropout = float(domain_dropout)
        self.mmd_kernel_multipliers = tuple(float(m) for m in mmd_kernel_multipliers)
        self.alignment_layer = alignment_layer
        self.mcc_temperature = float(mcc_temperature)
        self.feature_model = pooled_feature_model(classifier)
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
        elif method == "mcc":
            self.alignment_fn = losses_lib.MinimumClassConfusion(self.mcc_temperature)
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
        if self.method == "mcc":  # the target's predictions alone
            value = self.alignment_fn(None, target_features)
            return weight * value, value
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
            if self.alignment_layer == "logits" or self.method == "mcc":
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
                "mcc_temperature": self.mcc_temperature,
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


def check_adaptation_options(
    method: str,
    total_steps: int,
    alignment_weight: float,
    weight_schedule: str,
    domain_dropout: float,
) -> None:
    """Raises `ValueError` for an unknown method or weight schedule, a `total_steps` that is
    not a positive integer, a negative or non-finite `alignment_weight`, or a
    `domain_dropout` outside [0, 1)."""
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
