"""Knowledge distillation of a fine-tuned classifier into a smaller one, with Keras'
own `keras.distillation`.
"""

from keras_transfer.distillation import distiller
from keras_transfer.distillation.distiller import ProbabilitiesToLogits
from keras_transfer.distillation.distiller import distill
from keras_transfer.distillation.distiller import logits_model

__all__ = [
    "distiller",
    "ProbabilitiesToLogits",
    "distill",
    "logits_model",
]
