"""Unsupervised domain adaptation: DANN, Deep CORAL and MMD training (`domain`, on the
`model.DomainAdaptation` wrapper and the DANN `schedules`), the domain distance
(`distance`), the alignment losses (`losses`) and the gradient reversal layer (`layers`);
adaptation of a trained model to unlabeled target images without the source data, AdaBN,
TENT and SHOT (`test_time`); MCC as a fourth `fit_domain_adaptation` method.
"""

from keras_transfer.adaptation import distance
from keras_transfer.adaptation import domain
from keras_transfer.adaptation import layers
from keras_transfer.adaptation import losses
from keras_transfer.adaptation import model
from keras_transfer.adaptation import schedules
from keras_transfer.adaptation import test_time
from keras_transfer.adaptation.distance import CLOSE_BELOW
from keras_transfer.adaptation.distance import FAR_FROM
from keras_transfer.adaptation.distance import DomainDistance
from keras_transfer.adaptation.distance import describe_proxy_a_distance
from keras_transfer.adaptation.distance import domain_distance
from keras_transfer.adaptation.domain import NEW_LAYERS_PATTERN
from keras_transfer.adaptation.domain import fit_adaptation_phase
from keras_transfer.adaptation.domain import fit_domain_adaptation
from keras_transfer.adaptation.domain import image_batches
from keras_transfer.adaptation.domain import paired_batches
from keras_transfer.adaptation.layers import GradientReversal
from keras_transfer.adaptation.losses import CoralLoss
from keras_transfer.adaptation.losses import InformationMaximization
from keras_transfer.adaptation.losses import MinimumClassConfusion
from keras_transfer.adaptation.losses import MMDLoss
from keras_transfer.adaptation.losses import PredictionEntropy
from keras_transfer.adaptation.model import ALIGNMENT_LAYERS
from keras_transfer.adaptation.model import METHODS
from keras_transfer.adaptation.model import WEIGHT_SCHEDULES
from keras_transfer.adaptation.model import DomainAdaptation
from keras_transfer.adaptation.model import check_adaptation_options
from keras_transfer.adaptation.model import pooled_feature_model
from keras_transfer.adaptation.schedules import DannLearningRate
from keras_transfer.adaptation.schedules import reversal_weight
from keras_transfer.adaptation.test_time import adapt_batchnorm
from keras_transfer.adaptation.test_time import batchnorm_layers
from keras_transfer.adaptation.test_time import fit_shot
from keras_transfer.adaptation.test_time import fit_tent
from keras_transfer.adaptation.test_time import shot_pseudo_labels
from keras_transfer.adaptation.test_time import shot_training_batches
from keras_transfer.adaptation.test_time import top1_unchanged

__all__ = [
    "layers",
    "losses",
    "schedules",
    "test_time",
    "model",
    "domain",
    "distance",
    "GradientReversal",
    "CoralLoss",
    "MMDLoss",
    "PredictionEntropy",
    "MinimumClassConfusion",
    "InformationMaximization",
    "adapt_batchnorm",
    "batchnorm_layers",
    "fit_shot",
    "fit_tent",
    "shot_pseudo_labels",
    "shot_training_batches",
    "top1_unchanged",
    "DannLearningRate",
    "reversal_weight",
    "ALIGNMENT_LAYERS",
    "METHODS",
    "WEIGHT_SCHEDULES",
    "DomainAdaptation",
    "check_adaptation_options",
    "pooled_feature_model",
    "NEW_LAYERS_PATTERN",
    "fit_adaptation_phase",
    "fit_domain_adaptation",
    "image_batches",
    "paired_batches",
    "CLOSE_BELOW",
    "FAR_FROM",
    "DomainDistance",
    "describe_proxy_a_distance",
    "domain_distance",
]
