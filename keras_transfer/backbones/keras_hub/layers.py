"""The layers around a KerasHub image backbone: `TokenPooling` (a transformer's tokens to one
vector, as the family's own classifier pools them) and `BlockOutputs` (the output of every
block in one pass, for per-block diagnostics).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_transfer import _keras_compat

__all__ = ["BlockOutputs", "TokenPooling", "pool_tokens"]

TOKEN_POOLINGS = ("cls", "mean")


def pool_tokens(x, mode: str):
    """`(batch, tokens, channels)` -> `(batch, channels)`: the first (class) token, or the
    mean of all tokens. Other ranks are returned as they are."""
    if len(x.shape) != 3:
        return x
    if mode == "cls":
        return x[:, 0, :]
    return keras.ops.mean(x, axis=1)


@keras.saving.register_keras_serializable(package="keras_transfer")
class TokenPooling(keras.layers.Layer):
    """A transformer's token sequence `(batch, tokens, channels)` as one vector per image.

    Args:
        mode: `"cls"`, the class token (first; ViT, DeiT, DINOv2, CLIP), or `"mean"`, the
            mean of all tokens (Swin, or ViT without a class token).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    TokenPooling("mean")(np.ones((2, 5, 8))).shape  # -> (2, 8)
    ```
    """

    def __init__(self, mode: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in TOKEN_POOLINGS:
            raise ValueError(f"TokenPooling mode must be one of {TOKEN_POOLINGS}, got {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        return pool_tokens(inputs, self.mode)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


def _main_output(outputs):
    # A transformer layer returning `(hidden states, attention scores or None)`, an encoder
    # returning `(hidden states, pyramid outputs)`: the hidden states come first.
    while isinstance(outputs, list | tuple | dict):
        if isinstance(outputs, dict):
            outputs = list(outputs.values())[-1]
        else:
            outputs = next(x for x in outputs if x is not None)
    return outputs


class BlockOutputs(keras.layers.Layer):
    """Runs a KerasHub backbone once and returns the output of each given layer (the last
    layer of each block), token outputs pooled by `poolings` (one per layer: `"cls"` or
    `"mean"`), feature maps as they are.

    The layers may be nested inside the backbone's layers (a transformer block inside its
    encoder layer): their outputs are recorded while the backbone runs
    (`_keras_compat.capture_call_outputs`). For per-block features in memory
    (transferability, forgetting, `Backbone.cut`); it has no config, so a model holding it
    cannot be saved.
    """

    def __init__(
        self,
        backbone: keras.Model,
        layers: Sequence[keras.layers.Layer],
        poolings: Sequence[str],
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._tapped = list(layers)
        self.poolings = list(poolings)

    def call(self, inputs):
        backbone_inputs = self.backbone.input
        if isinstance(backbone_inputs, dict):
            inputs = {key: inputs for key in backbone_inputs}
        with _keras_compat.capture_call_outputs(self._tapped) as captured:
            self.backbone(inputs, training=False)
        missing = [self._tapped[i].name for i in range(len(self._tapped)) if i not in captured]
        if missing:
            raise ValueError(
                f"The layers {missing} did not run when {self.backbone.name!r} ran: their "
                "blocks have no output to take."
            )
        return [
            pool_tokens(_main_output(captured[i]), pooling)
            for i, pooling in enumerate(self.poolings)
        ]

    def get_config(self):
        raise NotImplementedError(
            "A model that takes the output of a block inside a KerasHub backbone "
            "(Backbone.cut, per-block features) holds a BlockOutputs layer, which cannot be "
            "saved. Save the whole classifier instead, or build the features again."
        )
