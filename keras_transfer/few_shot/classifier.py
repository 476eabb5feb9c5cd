"""Few-shot classifiers from a few support images per class, without training.

`fit_prototypes` runs the backbone once per support image (the cached-feature machinery of
`keras_transfer.training.features`) and returns a `TransferClassifier` whose head is a
`PrototypeHead` (`keras_transfer.few_shot.prototype_head`). `add_classes` adds or updates
classes from a few images each without training anything. `fit_prototypes(...,
refine_epochs=n)` also trains a prototype-initialised linear head for `n` epochs on the
cached support features (`keras_transfer.few_shot.prototypes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.backbones.registry import Backbone
from keras_transfer.backbones.registry import backbone_of
from keras_transfer.data import imbalance
from keras_transfer.data import is_image_data
from keras_transfer.few_shot.prototype_head import PrototypeHead
from keras_transfer.few_shot.prototype_head import centre_and_normalise
from keras_transfer.few_shot.prototype_head import linear_weights
from keras_transfer.few_shot.prototypes import DEFAULT_REFINE_LEARNING_RATE
from keras_transfer.few_shot.prototypes import prototype_head_from_features
from keras_transfer.few_shot.prototypes import refine_prototype_head
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.training import extraction as features_lib

__all__ = ["add_classes", "fit_prototypes"]


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
    pooled features become the prototypes of a `PrototypeHead` (`few_shot.prototypes`
    explains the temperature). Nothing is trained unless `refine_epochs > 0`.

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
    shell = _feature_shell(backbone, pooling)
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


def _feature_shell(backbone: Backbone | TransferClassifier, pooling: str) -> TransferClassifier:
    """A two-class classifier around the backbone that tells the feature extractor the
    preprocessing and pooling; the real head replaces it once the classes are known."""
    found = backbone_of(backbone)
    # A classifier keeps its own backbone_name (None stays None), so saved configs are as before.
    backbone_name = (
        backbone.backbone_name if isinstance(backbone, TransferClassifier) else found.name
    )
    backbone_model, preprocessing = found.model, found.preprocessing
    return TransferClassifier(
        backbone_model,
        PrototypeHead(2, pooling=pooling),
        backbone_name=backbone_name,
        preprocessing=preprocessing,
    )


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
    transformed = centre_and_normalise(support, centre)
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
    if is_image_data(data):
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
