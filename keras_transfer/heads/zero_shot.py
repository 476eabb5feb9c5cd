"""The zero-shot head: the image embedding of an image-text model (CLIP, SigLIP) compared
with one text embedding per class, as an ordinary trainable head.

`ZeroShotHead` is a `ClassificationHead` whose input is projected into the joint
image-text space (CLIP's image projection; SigLIP's image tower already ends there),
L2-normalised, then fed to the usual output `Dense` layer. Initialised from normalised
class embeddings `E` (one row per class) with the kernel `logit_scale * E^T` and the bias
`logit_bias` (SigLIP's; 0 for CLIP), its logits are the image-text model's own:
`logit_scale * cos(image, class) + logit_bias` (the WiSE-FT recipe, Wortsman et al. 2022:
the scale is folded into the kernel). From there it trains like any head.
`keras_transfer.backbones.keras_hub.zero_shot` builds it from a KerasHub preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_transfer.heads.classification import ClassificationHead

__all__ = ["ZeroShotHead"]

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
    head(np.array([[0.0, 2.0, 0.0, 0.0]])).numpy().argmax()  # -> 1
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
                f"embeddings must be (num_classes={self.num_classes}, dim), got "
                f"{embeddings.shape}."
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
            config.setdefault("dense_dtypes", {})["projection"] = (
                keras.dtype_policies.serialize(self.projection.dtype_policy)
            )
        return config
