"""keras_transfer: transfer learning for Keras 3 on TensorFlow."""

from keras_transfer.backbones import Backbone
from keras_transfer.backbones import BackboneSpec
from keras_transfer.backbones import Block
from keras_transfer.backbones import WeightsUnavailableError
from keras_transfer.backbones import create_backbone
from keras_transfer.backbones import get_blocks
from keras_transfer.backbones import list_backbones
from keras_transfer.backbones import register_backbone
from keras_transfer.freezing import freeze
from keras_transfer.freezing import trainable_blocks
from keras_transfer.freezing import unfreeze
from keras_transfer.heads import ClassificationHead
from keras_transfer.heads import TransferClassifier
from keras_transfer.heads import create_classifier
from keras_transfer.preprocessing import ImagePreprocessing
from keras_transfer.training import TwoPhaseHistory
from keras_transfer.training import fit_two_phase

__version__ = "0.1.0"
