"""Layers for transfer learning: the gradient-reversal layer of domain-adversarial training.

Ganin & Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation" (ICML), and
Ganin et al. 2016, "Domain-Adversarial Training of Neural Networks" (JMLR 17): a domain
classifier on the features learns to tell source from target images, and the gradient
reversal layer between them flips the sign of its gradient on the way back into the feature
extractor, so that the features are trained to make the domains indistinguishable.
"""

from __future__ import annotations

import keras

__all__ = ["GradientReversal"]


@keras.saving.register_keras_serializable(package="keras_transfer")
class GradientReversal(keras.layers.Layer):
    """The identity on the forward pass; multiplies the gradient by `-factor` on the way back.

    Ganin & Lempitsky 2015 (Ganin et al. 2016, section 4): placed between the features and
    a domain classifier, it turns the classifier's minimisation of the domain loss into a
    maximisation for the feature extractor, in one backward pass. `factor` is the paper's
    lambda; `fit_domain_adaptation(method="dann")` ramps it up over training with
    lambda_p = 2 / (1 + exp(-10 p)) - 1 by passing `factor=` at call time.

    Args:
        factor: the gradient multiplier lambda (>= 0); the gradient becomes
            `-factor * upstream`. A `factor` passed to `call` overrides it for that call
            (a float or a scalar tensor, e.g. a schedule's value).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    ```python
    features = keras.Input((64,))
    reversed_features = kt.layers.GradientReversal(factor=0.5)(features)
    domain_logit = keras.layers.Dense(1)(reversed_features)
    ```
    """

    def __init__(self, factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 0:
            raise ValueError(f"factor must be a number >= 0, got {factor!r}.")
        self.factor = float(factor)
        self.supports_masking = True

    def call(self, inputs, factor=None):
        factor = self.factor if factor is None else factor
        factor = keras.ops.cast(factor, inputs.dtype)

        @keras.ops.custom_gradient
        def reverse(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return keras.ops.negative(factor) * upstream

            # A copy, not `x` itself: the custom gradient must belong to a new tensor.
            return keras.ops.copy(x), grad

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"factor": self.factor})
        return config
