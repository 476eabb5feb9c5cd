"""Few-shot classification with prototypes on pretrained features."""

from keras_transfer.few_shot import prototypes
from keras_transfer.few_shot.prototypes import DEFAULT_TEMPERATURE
from keras_transfer.few_shot.prototypes import PrototypeHead
from keras_transfer.few_shot.prototypes import PrototypeRefinement
from keras_transfer.few_shot.prototypes import add_classes
from keras_transfer.few_shot.prototypes import calibrate_temperature
from keras_transfer.few_shot.prototypes import cl2n
from keras_transfer.few_shot.prototypes import class_statistics
from keras_transfer.few_shot.prototypes import fit_prototypes
from keras_transfer.few_shot.prototypes import linear_weights
from keras_transfer.few_shot.prototypes import prototype_head_from_features
from keras_transfer.few_shot.prototypes import refine_prototype_head

__all__ = [
    "prototypes",
    "DEFAULT_TEMPERATURE",
    "PrototypeHead",
    "PrototypeRefinement",
    "add_classes",
    "calibrate_temperature",
    "cl2n",
    "class_statistics",
    "fit_prototypes",
    "linear_weights",
    "prototype_head_from_features",
    "refine_prototype_head",
]
