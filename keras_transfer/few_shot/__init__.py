"""Few-shot classification with prototypes on pretrained features."""

from keras_transfer.few_shot import classifier
from keras_transfer.few_shot import prototype_head
from keras_transfer.few_shot import prototypes
from keras_transfer.few_shot.classifier import add_classes
from keras_transfer.few_shot.classifier import fit_prototypes
from keras_transfer.few_shot.prototype_head import DEFAULT_TEMPERATURE
from keras_transfer.few_shot.prototype_head import PrototypeHead
from keras_transfer.few_shot.prototype_head import centre_and_normalise
from keras_transfer.few_shot.prototype_head import linear_weights
from keras_transfer.few_shot.prototypes import DEFAULT_REFINE_LEARNING_RATE
from keras_transfer.few_shot.prototypes import TEMPERATURE_GRID
from keras_transfer.few_shot.prototypes import PrototypeRefinement
from keras_transfer.few_shot.prototypes import calibrate_temperature
from keras_transfer.few_shot.prototypes import class_statistics
from keras_transfer.few_shot.prototypes import prototype_head_from_features
from keras_transfer.few_shot.prototypes import refine_prototype_head

__all__ = [
    "classifier",
    "prototype_head",
    "prototypes",
    "DEFAULT_REFINE_LEARNING_RATE",
    "DEFAULT_TEMPERATURE",
    "PrototypeHead",
    "PrototypeRefinement",
    "TEMPERATURE_GRID",
    "add_classes",
    "calibrate_temperature",
    "centre_and_normalise",
    "class_statistics",
    "fit_prototypes",
    "linear_weights",
    "prototype_head_from_features",
    "refine_prototype_head",
]
