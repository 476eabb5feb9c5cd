"""Per-layer learning rates for any Keras optimizer (`layerwise`), and learning-rate
schedules for fine-tuning (`schedules`).
"""

from keras_transfer.optimizers import layerwise
from keras_transfer.optimizers import schedules
from keras_transfer.optimizers.layerwise import LayerwiseLearningRate
from keras_transfer.optimizers.layerwise import OptimizerFactory
from keras_transfer.optimizers.layerwise import check_learning_rate
from keras_transfer.optimizers.layerwise import layer_decay_multipliers
from keras_transfer.optimizers.layerwise import layerwise_optimizer_class
from keras_transfer.optimizers.layerwise import optimizer_factory
from keras_transfer.optimizers.layerwise import with_layerwise_lr
from keras_transfer.optimizers.schedules import OneCycle
from keras_transfer.optimizers.schedules import SlantedTriangular
from keras_transfer.optimizers.schedules import WarmupCosineDecay

__all__ = [
    "layerwise",
    "schedules",
    "LayerwiseLearningRate",
    "OptimizerFactory",
    "check_learning_rate",
    "layer_decay_multipliers",
    "layerwise_optimizer_class",
    "optimizer_factory",
    "with_layerwise_lr",
    "OneCycle",
    "SlantedTriangular",
    "WarmupCosineDecay",
]
