"""Zero-shot classifiers from an image-text model (CLIP, SigLIP): `ZeroShotHead`, and
`zero_shot_classifier`, which builds one from a KerasHub preset before any training.

`ZeroShotHead` is a `ClassificationHead` whose input is projected into the joint image-text
space (CLIP's image projection; SigLIP's image tower already ends there), L2-normalised, then
fed to the usual output `Dense` layer. Initialised from normalised class embeddings `E` (one
row per class) with the kernel `logit_scale * E^T` and the bias `logit_bias` (SigLIP's; 0 for
CLIP), its logits are the image-text model's own: `logit_scale * cos(image, class) +
logit_bias` (the WiSE-FT recipe, Wortsman et al. 2022: the scale is folded into the kernel).
From there it trains like any head.

`zero_shot_classifier` puts it on the preset's image tower (what
`create_backbone("keras_hub:<preset>")` builds). For each class, every template is filled with
the class name ("a photo of a {}."), the prompts are embedded by the text tower, each
embedding L2-normalised, the class's embeddings averaged and normalised again: the prompt
ensembling of Radford et al. 2021 (CLIP, sec. 3.1.4). The text tower is used only while
building; the model keeps the image side and the head.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer.backbones import registry
from keras_transfer.backbones.keras_hub import families
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classifier import TransferClassifier

__all__ = [
    "DEFAULT_TEMPLATES",
    "ZERO_SHOT_FAMILIES",
    "ZeroShotHead",
    "check_zero_shot_backbone",
    "class_embeddings",
    "zero_shot_classifier",
    "zero_shot_head",
]

# ClassificationHead settings a zero-shot head fixes (one normalised vector in, softmax out).
_FIXED = ("task", "pooling", "hidden_units", "activation", "batch_norm")


@keras.saving.register_keras_serializable(package="keras_transfer")
class ZeroShotHead(ClassificationHead):
    """Image features -> (projection) -> L2 normalisation -> dense output layer, softmax.

    Args:
        num_classes: number of classes.
        projection_units: size of the joint image-text space when the image features need
            projecting into it (CLIP's `vision_projection`, a dense layer without bias);
            `None` when they already are the image embedding (SigLIP).
        dropout: dropout rate before the output layer; 0 by default (the zero-shot
            predictions are the image-text model's own).
        logits: output the logits instead of softmax probabilities.
        kernel_regularizer: regularizer of the output layer's kernel.
        dense_dtypes: `{layer name: dtype policy}` of layers Keras' `quantize` changed.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    head = ZeroShotHead(3)
    embeddings = np.eye(3, 4)  # one (normalised) text embedding per class
    head.set_class_embeddings(embeddings, feature_dim=4, logit_scale=100.0)
    np.argmax(head(np.array([[0.0, 2.0, 0.0, 0.0]])))  # -> 1
    ```
    """

    def __init__(
        self,
        num_classes: int,
        projection_units: int | None = None,
        dropout: float = 0.0,
        logits: bool = False,
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        dense_dtypes: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(
            num_classes,
            pooling=None,
            dropout=dropout,
            logits=logits,
            kernel_regularizer=kernel_regularizer,
            dense_dtypes=dense_dtypes,
            **kwargs,
        )
        if projection_units is not None and int(projection_units) < 1:
            raise ValueError(f"projection_units must be positive or None, got {projection_units}.")
        self.projection_units = None if projection_units is None else int(projection_units)
        self.projection = None
        if self.projection_units:
            policy = (dense_dtypes or {}).get("projection")
            self.projection = keras.layers.Dense(
                self.projection_units,
                use_bias=False,
                dtype=keras.dtype_policies.get(policy) if policy else self.dtype_policy,
                name="projection",
            )

    def build(self, input_shape):
        shape = self._pooled_shape(input_shape)
        if self.projection is not None:
            self.projection.build(shape)
            shape = (shape[0], self.projection_units)
        self.output_dense.build(shape)

    def compute_logits(self, inputs, training=None):
        x = self.pool(inputs)
        if self.projection is not None:
            x = self.projection(x)
        # Cosine similarity: unit image embeddings, in float32 under mixed precision too.
        x = keras.ops.normalize(keras.ops.cast(x, "float32"), axis=-1, epsilon=1e-12)
        x = self.dropout_layers[-1](x, training=training)
        return self.output_dense(x)

    def set_class_embeddings(
        self,
        embeddings: Any,
        feature_dim: int,
        logit_scale: float = 1.0,
        logit_bias: float = 0.0,
        projection_kernel: Any = None,
    ) -> None:
        """Initialises the head from one text embedding per class.

        Args:
            embeddings: `(num_classes, embedding_dim)`, each row L2-normalised.
            feature_dim: size of the image features the head takes (builds it).
            logit_scale: the image-text model's temperature, `exp` of its learned log
                scale; the kernel is `logit_scale * embeddings^T`.
            logit_bias: SigLIP's learned logit bias (the output bias of every class).
            projection_kernel: `(feature_dim, projection_units)`, the image projection's
                kernel (with `projection_units`).
        """
        embeddings = np.asarray(keras.ops.convert_to_numpy(embeddings), dtype="float32")
        if embeddings.ndim != 2 or embeddings.shape[0] != self.num_classes:
            raise ValueError(
                f"embeddings must be (num_classes={self.num_classes}, dim), got {embeddings.shape}."
            )
        if not self.built:
            self.build((None, int(feature_dim)))
        if self.projection is not None:
            if projection_kernel is None:
                raise ValueError("This head has a projection: pass projection_kernel.")
            self.projection.kernel.assign(np.asarray(projection_kernel, dtype="float32"))
        kernel = float(logit_scale) * embeddings.T
        if tuple(self.output_dense.kernel.shape) != kernel.shape:
            raise ValueError(
                f"The class embeddings have {embeddings.shape[1]} dimensions, but the head's "
                f"image embedding has {self.output_dense.kernel.shape[0]}."
            )
        self.output_dense.kernel.assign(kernel)
        self.output_dense.bias.assign(np.full((self.num_classes,), logit_bias, "float32"))

    def get_config(self):
        config = super().get_config()
        for name in _FIXED:
            config.pop(name, None)
        config["projection_units"] = self.projection_units
        if self.projection is not None and self.projection.dtype_policy.quantization_mode:
            config.setdefault("dense_dtypes", {})["projection"] = keras.dtype_policies.serialize(
                self.projection.dtype_policy
            )
        return config


# The CLIP authors' short ensemble for ImageNet (their prompt-engineering notebook: seven
# templates chosen from the paper's 80), with the paper's basic "a photo of a {}." first.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# Image-text families: their KerasHub model class and the preprocessor that tokenises text.
ZERO_SHOT_FAMILIES = {
    "clip": ("CLIPBackbone", "CLIPPreprocessor"),
    "siglip": ("SigLIPBackbone", "SigLIPPreprocessor"),
}
_PREFIX = "keras_hub:"
_BATCH = 256  # prompts per text-tower call


def check_zero_shot_backbone(backbone: registry.Backbone) -> str:
    """The family (`"clip"` or `"siglip"`) of a `create_backbone("keras_hub:...")`
    backbone; a clear `ValueError` for any other backbone."""
    hub = families.find_image_backbone(backbone.model)
    family = families.family_of(hub) if hub is not None else None
    if not backbone.name.startswith(_PREFIX) or family is None:
        raise ValueError(
            f"Zero-shot classification needs the image-text model of a CLIP or SigLIP "
            f"KerasHub preset; backbone {backbone.name!r} is not one. Use "
            "keras_hub:<clip or siglip preset name or folder> (e.g. "
            "keras_hub:clip_vit_base_patch16), or train without zero-shot."
        )
    if family.name not in ZERO_SHOT_FAMILIES:
        raise ValueError(
            f"Zero-shot classification needs a CLIP or SigLIP preset (an image tower with a "
            f"text tower); {backbone.name!r} is a {family.name} image backbone, which has no "
            "text tower. Use keras_hub:<clip or siglip preset>, or train without zero-shot."
        )
    return family.name


def _load_image_text_model(preset: str, family: str, load_weights: bool) -> keras.Model:
    keras_hub = families.import_keras_hub()
    model = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    expected = getattr(keras_hub.models, ZERO_SHOT_FAMILIES[family][0])
    if not isinstance(model, expected):
        raise ValueError(
            f"The KerasHub preset {preset!r} holds a {type(model).__name__}, only an image "
            f"tower: zero-shot classification needs the whole {expected.__name__} (image and "
            "text towers). Save the image-text model with save_to_preset, with its "
            "tokenizer or preprocessor."
        )
    return model


def _preprocessor(preset: str, family: str):
    """The preset's text preprocessor (tokenizer, lower-casing, start/end tokens), without
    its image converter: only prompts go through it."""
    keras_hub = families.import_keras_hub()
    cls = getattr(keras_hub.models, ZERO_SHOT_FAMILIES[family][1])
    try:
        return cls.from_preset(preset, image_converter=None)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(
            f"The KerasHub preset {preset!r} has no usable tokenizer for its text tower "
            f"({error}). Save the preset's preprocessor into the folder too "
            f"(keras_hub.models.{cls.__name__}(tokenizer, ...).save_to_preset(folder))."
        ) from error


def _prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every class name (underscores read as spaces: a folder
    named golden_retriever is prompted as "golden retriever"), class by class."""
    return [t.format(str(n).replace("_", " ")) for n in class_names for t in templates]


def _check_names(class_names: Sequence[str], templates: Sequence[str]) -> None:
    if isinstance(class_names, str) or not len(class_names):
        raise ValueError(f"class_names must be a non-empty list of names, got {class_names!r}.")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}.")
    if isinstance(templates, str) or not len(templates):
        raise ValueError(
            f"templates must be a non-empty list of prompts with one {{}}, got {templates!r}."
        )
    bad = [t for t in templates if str(t).count("{}") != 1]
    if bad:
        raise ValueError(
            f"Each template needs exactly one {{}} where the class name goes, e.g. "
            f"'a photo of a {{}}.'; these do not: {bad}."
        )


def class_embeddings(
    model: keras.Model,
    preprocessor: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """`(num_classes, dim)`: per class, the mean of its prompts' L2-normalised text
    embeddings (`model.get_text_embeddings`), normalised again."""
    _check_names(class_names, templates)
    prompts = _prompts(class_names, templates)
    # SigLIP's text tower reads its last position (the end token it pads with): the
    # sequence must be as long as its position table. CLIP's takes up to that length.
    length = getattr(model.text_encoder, "max_sequence_length", None)
    chunks = []
    for start in range(0, len(prompts), _BATCH):
        batch = np.array(prompts[start : start + _BATCH])
        tokens = preprocessor({"images": None, "prompts": batch}, sequence_length=length)
        embedded = model.get_text_embeddings(tokens["token_ids"])
        chunks.append(np.asarray(keras.ops.convert_to_numpy(embedded), dtype="float64"))
    embeddings = np.concatenate(chunks).reshape(len(class_names), len(templates), -1)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    mean = embeddings.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype("float32")


def _scale_and_bias(model: keras.Model, family: str) -> tuple[float, float]:
    head = model.clip_head if family == "clip" else model.siglip_head
    scale = float(np.exp(keras.ops.convert_to_numpy(head.logit_scale)))
    bias = getattr(head, "logit_bias", None)
    return scale, 0.0 if bias is None else float(keras.ops.convert_to_numpy(bias))


def zero_shot_classifier(
    preset: str | registry.Backbone,
    class_names: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    input_shape: Sequence[int | None] | None = None,
    weights: str | None = "preset",
    dropout: float = 0.0,
    name: str | None = None,
) -> TransferClassifier:
    """A classifier that needs no training: a CLIP or SigLIP preset's image tower and a
    head initialised from its text tower's embeddings of prompts naming each class.

    Its logits are the image-text model's: `logit_scale * cos(image embedding, class
    embedding)` (+ SigLIP's `logit_bias`), then softmax. The head (`ZeroShotHead`: CLIP's
    image projection, normalisation, a dense layer) is an ordinary trainable layer, so the
    model fine-tunes with `fit_two_phase` or `model.fit`, saves to `.keras`, and is the
    `start` of WiSE-FT (`kt.wise_ft(fine_tuned, zero_shot_weights, validation)`).

    Args:
        preset: a CLIP or SigLIP KerasHub preset name or handle, or a local preset folder
            (`save_to_preset` of the image-text model, its preprocessor or tokenizer and
            image converter), with or without `"keras_hub:"`; or a `Backbone` already built
            from one by `create_backbone("keras_hub:...")` (its image side is reused).
        class_names: the class names, output i for class i; underscores read as spaces in
            the prompts.
        templates: prompt templates with one `{}` for the class name; default
            `DEFAULT_TEMPLATES` (the CLIP authors' short ImageNet ensemble).
        input_shape: `(height, width, 3)`; the preset's size by default.
        weights: `"preset"` (or `"imagenet"`): the preset's pretrained weights; `None`:
            random initialisation (for tests).
        dropout: dropout before the head's output layer during training.
        name: the model's name.

    Returns:
        A `TransferClassifier` taking raw 0-255 RGB images, with `class_names`.

    Raises:
        ValueError: the preset is not CLIP or SigLIP, has no tokenizer, or bad names or
            templates.

    Example:
    ```python
    model = kt.zero_shot_classifier("keras_hub:clip_vit_base_patch16", ["cat", "dog"])
    model.predict(images).argmax(-1)  # zero-shot labels; then fine-tune as usual
    ```
    """
    templates = DEFAULT_TEMPLATES if templates is None else tuple(templates)
    _check_names(class_names, templates)
    if isinstance(preset, registry.Backbone):
        image = preset
    else:
        path = os.fspath(preset)
        path = path[len(_PREFIX) :] if path.startswith(_PREFIX) else path
        image = registry.create_backbone(_PREFIX + path, input_shape=input_shape, weights=weights)
    family = check_zero_shot_backbone(image)
    head = zero_shot_head(image, class_names, templates, weights=weights, dropout=dropout)
    return TransferClassifier(
        image.model,
        head,
        backbone_name=image.name,
        preprocessing=image.preprocessing,
        class_names=list(class_names),
        name=name or f"zero_shot_{family}",
    )


def zero_shot_head(
    image: registry.Backbone,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    weights: str | None = "preset",
    dropout: float = 0.0,
) -> ZeroShotHead:
    """The `ZeroShotHead` for `image` (a CLIP or SigLIP `Backbone` from
    `create_backbone("keras_hub:...")`), initialised from the text tower of its preset
    (loaded here, with pretrained weights unless `weights` is None, and dropped after)."""
    family = check_zero_shot_backbone(image)
    path = image.name[len(_PREFIX) :]
    full = _load_image_text_model(path, family, weights is not None)
    embeddings = class_embeddings(full, _preprocessor(path, family), class_names, templates)
    scale, bias = _scale_and_bias(full, family)
    projection = getattr(full, "vision_projection", None)
    head = ZeroShotHead(
        len(class_names),
        projection_units=None if projection is None else projection.units,
        dropout=dropout,
        name="head",
    )
    head.set_class_embeddings(
        embeddings,
        feature_dim=image.model.output_shape[-1],
        logit_scale=scale,
        logit_bias=bias,
        projection_kernel=None
        if projection is None
        else keras.ops.convert_to_numpy(projection.kernel),
    )
    return head
