"""Unsupervised domain adaptation: DANN, Deep CORAL and MMD (`domain`), the alignment
losses (`losses`) and the gradient reversal layer (`layers`).
"""

from keras_transfer.adaptation import domain
from keras_transfer.adaptation import layers
from keras_transfer.adaptation import losses
from keras_transfer.adaptation.domain import ALIGNMENT_LAYERS
from keras_transfer.adaptation.domain import CLOSE_BELOW
from keras_transfer.adaptation.domain import DannLearningRate
from keras_transfer.adaptation.domain import DomainAdaptation
from keras_transfer.adaptation.domain import DomainDistance
from keras_transfer.adaptation.domain import describe_proxy_a_distance
from keras_transfer.adaptation.domain import domain_distance
from keras_transfer.adaptation.domain import fit_adaptation_phase
from keras_transfer.adaptation.domain import fit_domain_adaptation
from keras_transfer.adaptation.domain import paired_batches
from keras_transfer.adaptation.domain import reversal_weight
from keras_transfer.adaptation.layers import GradientReversal
from keras_transfer.adaptation.losses import CoralLoss
from keras_transfer.adaptation.losses import MMDLoss

__all__ = [
    "layers",
    "losses",
    "domain",
    "GradientReversal",
    "CoralLoss",
    "MMDLoss",
    "ALIGNMENT_LAYERS",
    "CLOSE_BELOW",
    "DannLearningRate",
    "DomainAdaptation",
    "DomainDistance",
    "describe_proxy_a_distance",
    "domain_distance",
    "fit_adaptation_phase",
    "fit_domain_adaptation",
    "paired_batches",
    "reversal_weight",
]
