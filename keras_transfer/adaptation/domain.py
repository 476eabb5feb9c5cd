"""Unsupervised domain adaptation (DANN, Deep CORAL, MMD, MCC): `fit_domain_adaptation`.

When the labelled images (source) and the images the model will see (target) come from
different distributions, `fit_domain_adaptation` trains the classifier on the labelled
source batches while aligning the pooled features of source and unlabeled target batches:

- `"dann"`: domain-adversarial training (Ganin & Lempitsky 2015, "Unsupervised Domain
  Adaptation by Backpropagation", ICML; Ganin et al. 2016, "Domain-Adversarial Training of
  Neural Networks", JMLR 17). A domain classifier behind a `GradientReversal` layer learns
  to tell the domains apart; the reversed gradient trains the features to fool it. The
  reversal weight follows the paper's schedule lambda_p = 2 / (1 + exp(-10 p)) - 1 over the
  training progress p in [0, 1], and the paper's learning-rate annealing
  mu_p = mu_0 / (1 + 10 p)^0.75 is an option (`lr_annealing=True`); both are in
  `schedules`.
- `"coral"`: Deep CORAL (Sun & Saenko 2016), `losses.CoralLoss` between the batches.
- `"mmd"`: multi-kernel MMD as in DAN (Long et al. 2015), `losses.MMDLoss`.
- `"mcc"`: minimum class confusion (Jin et al. 2020, ECCV), `losses.MinimumClassConfusion`
  on the target batch's logits: no domain classifier and no feature statistics.

Training is Keras `fit` on `model.DomainAdaptation`, a `keras.Model` that wraps the
classifier and has its own `train_step`: callbacks, history, validation on labelled target
data and `tf.distribute` are Keras'. Afterwards the classifier is the trained plain model.
`distance.domain_distance` measures how far apart two image sets are (proxy A-distance).

Data: `source` yields batches `(images, labels)` (or `(images, labels, sample_weights)`),
`target` yields batches of images, or tuples whose first element is the images: anything
else in them (e.g. labels) is dropped before training and never read. Images of another
size than the model's input are resized (bilinear), as the loaders do for the source. An
epoch is `max(source batches, target batches)` steps: the shorter dataset is repeated
(cycled) so that every step has a batch of each, and the longer one is seen once per epoch
(pass `steps_per_epoch` to choose, e.g. for infinite datasets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer import heads as heads_lib
from keras_transfer.adaptation.model import ALIGNMENT_LAYERS as ALIGNMENT_LAYERS
from keras_transfer.adaptation.model import NEEDS_TENSORFLOW
from keras_transfer.adaptation.model import DomainAdaptation
from keras_transfer.adaptation.model import check_adaptation_options
from keras_transfer.adaptation.schedules import DannLearningRate
from keras_transfer.backbones import freezing
from keras_transfer.optimizers import layerwise as optimizers
from keras_transfer.utils import backend
from keras_transfer.utils import distribute

__all__ = [
    "NEW_LAYERS_PATTERN",
    "fit_adaptation_phase",
    "fit_domain_adaptation",
    "image_batches",
    "paired_batches",
]


# ---------------------------------------------------------------------------------------
# Data: source and target batches paired for fit.


def _as_dataset(data: Any, what: str, batch_size: int) -> tf.data.Dataset:
    dataset = data_lib.as_dataset(data, what, batch_size=batch_size)
    if not isinstance(dataset, tf.data.Dataset):  # the pairing zips and repeats datasets
        raise TypeError(
            f"{what} must be a batched tf.data.Dataset, a NumPy array of images or a tuple of "
            f"NumPy arrays (images, labels); got {type(data).__name__}."
        )
    return dataset


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


def image_batches(
    data: Any, image_shape: tuple, what: str, batch_size: int = 32
) -> tf.data.Dataset:
    """Batches of images only (labels or anything else dropped) from a batched dataset, a
    NumPy array of images or a tuple of arrays, resized to `image_shape` if needed."""
    dataset = _images_only(_as_dataset(data, what, batch_size), what)
    return _resize_to(dataset, image_shape, what)


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
    mcc_temperature: float = 2.5,
    steps_per_epoch: int | None = None,
    batch_size: int = 32,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Trains `model` on labelled `source` and unlabeled `target` images (DANN, CORAL, MMD,
    MCC): Keras `fit` (with `fit_kwargs`) of a `DomainAdaptation` sharing `model`'s layers.

    Args:
        model: a `TransferClassifier` (`create_classifier`), frozen or not, on any backbone.
        source: labelled batches `(images, labels)`: a batched dataset or NumPy arrays.
        target: unlabeled image batches, or tuples of images first (the rest is not read).
        method: `"dann"`, `"coral"`, `"mmd"` or `"mcc"`.
        epochs: epochs of `max(source batches, target batches)` steps (the shorter one
            cycles) or `steps_per_epoch`; `initial_epoch=k` numbers them from k.
        validation_data: labelled target data to validate on (resized like `source`).
        optimizer: configures a new optimizer (`None`: `model`'s compiled one or Adam(1e-3)).
        loss, metrics: `"auto"` (the head's defaults) or `compile` arguments.
        alignment_weight: the alignment term's weight (DANN: the maximum reversal factor).
        weight_schedule: `"dann"` (the `reversal_weight` ramp-up), `"constant"`, or `"auto"`:
            `"dann"` for DANN, `"constant"` for CORAL and MMD.
        lr_annealing: the paper's annealing `DannLearningRate` from the optimizer's rate.
        domain_hidden_units, domain_dropout, mmd_kernel_multipliers: DANN's domain
            classifier; the bandwidth multipliers of the MMD's Gaussian kernels.
        alignment_layer: `"features"` (pooled backbone features) or `"logits"` (the head's).
        mcc_temperature: MCC's softmax temperature.
        steps_per_epoch, batch_size: steps per epoch (needed when both datasets are
            infinite); batch size for NumPy inputs.

    Returns:
        `fit`'s `History`: source metrics, `alignment_loss`/`_weight`, `domain_accuracy`, `val_*`.

    Example:
    ```python
    model = kt.create_classifier("mobilenet", 2, input_shape=(224, 224, 3))
    kt.freeze(model.backbone)
    history = kt.fit_domain_adaptation(
        model, source_train, target_unlabeled, "dann", epochs=10, validation_data=target_labelled
    )
    ```
    """
    _check_fit_arguments(model, method, epochs, alignment_weight, weight_schedule, domain_dropout)
    train, steps, validation_data = _training_batches(
        model, source, target, validation_data, steps_per_epoch, batch_size
    )
    adapter = _compiled_adapter(
        model,
        method,
        steps * epochs,
        _base_optimizer(model, optimizer),
        lr_annealing,
        loss,
        metrics,
        alignment_weight=alignment_weight,
        weight_schedule=weight_schedule,
        domain_hidden_units=domain_hidden_units,
        domain_dropout=domain_dropout,
        mmd_kernel_multipliers=mmd_kernel_multipliers,
        alignment_layer=alignment_layer,
        mcc_temperature=mcc_temperature,
    )
    return _fit_epochs(adapter, train, steps, epochs, validation_data, fit_kwargs)


def _check_fit_arguments(model, method, epochs, alignment_weight, weight_schedule, dropout):
    backend.require_tensorflow(*NEEDS_TENSORFLOW)  # first: before the data pipelines are built
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    check_adaptation_options(method, 1, alignment_weight, weight_schedule, dropout)
    if not isinstance(model, heads_lib.TransferClassifier):
        raise TypeError(
            "fit_domain_adaptation needs a classifier from create_classifier (its head pools "
            f"the backbone's features, which are aligned), got {type(model).__name__}."
        )


def _training_batches(model, source, target, validation_data, steps_per_epoch, batch_size):
    """(paired training batches, steps per epoch, validation data resized to the model)."""
    image_shape = tuple(model.input_shape[1:])
    source = _as_dataset(source, "source", batch_size)
    target = _as_dataset(target, "target", batch_size)
    train, steps = paired_batches(source, target, image_shape, steps_per_epoch)
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = _resize_to(validation_data, image_shape, "validation_data")
    return train, steps, validation_data


def _base_optimizer(model, optimizer):
    if optimizer is not None:
        return optimizer
    return getattr(model, "optimizer", None) or keras.optimizers.Adam(1e-3)


def _compiled_adapter(
    model, method, total_steps, optimizer, lr_annealing, loss, metrics, **options
):
    """A `DomainAdaptation` around `model`, compiled with a fresh copy of `optimizer`, both
    built under `model`'s strategy."""
    with distribute.model_scope(model):
        adapter = DomainAdaptation(
            model, method, total_steps=total_steps, name=f"{model.name}_{method}", **options
        )
        adapter.compile(
            optimizer=_fresh_optimizer(optimizer, lr_annealing, total_steps),
            loss=loss,
            metrics=metrics,
        )
    return adapter


def _fit_epochs(adapter, train, steps, epochs, validation_data, fit_kwargs):
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
    backend.require_tensorflow(*NEEDS_TENSORFLOW)  # before any block is unfrozen
    optimizers.check_learning_rate(backbone_lr, "backbone_lr")
    optimizers.check_learning_rate(head_lr, "head_lr")
    check_adaptation_options(method, 1, kwargs.get("alignment_weight", 1.0), "auto", 0.5)
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
