"""keras_transfer: transfer learning for Keras 3 on TensorFlow.

Backbones from `keras.applications` and TF Hub with their blocks, configurable heads,
freezing by block, two-phase and gradual fine-tuning, per-layer learning rates, and data
loaders, all usable from plain `model.compile` / `model.fit`.
"""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

# The `keras-transfer` command (and `python -m keras_transfer`) hides TensorFlow's C++
# start-up lines, which only works before the imports below load TensorFlow.
from keras_transfer.apps import _startup as _command_startup

_command_startup.quiet_tensorflow_for_the_command()

# Submodules, so that `keras_transfer.optimizers.X` and friends work after one import. Each
# also registers its serialisable classes, which `keras.saving.load_model` needs.
from keras_transfer import backbones
from keras_transfer import callbacks
from keras_transfer import data
from keras_transfer import distillation
from keras_transfer import distribute
from keras_transfer import domain
from keras_transfer import features
from keras_transfer import few_shot
from keras_transfer import forgetting
from keras_transfer import freezing
from keras_transfer import heads
from keras_transfer import hub
from keras_transfer import imbalance
from keras_transfer import layers
from keras_transfer import lora
from keras_transfer import losses
from keras_transfer import lr_finder
from keras_transfer import optimizers
from keras_transfer import preprocessing
from keras_transfer import recipes
from keras_transfer import regularizers
from keras_transfer import reliability
from keras_transfer import reports
from keras_transfer import saving
from keras_transfer import schedules
from keras_transfer import tensorboard
from keras_transfer import training
from keras_transfer import transfer_scores
from keras_transfer.backbones import Backbone
from keras_transfer.backbones import BackboneSpec
from keras_transfer.backbones import Block
from keras_transfer.backbones import WeightsUnavailableError
from keras_transfer.backbones import create_backbone
from keras_transfer.backbones import get_blocks
from keras_transfer.backbones import list_backbones
from keras_transfer.backbones import register_backbone
from keras_transfer.backbones import register_backbone_prefix
from keras_transfer.callbacks import BatchNormRecalibration
from keras_transfer.callbacks import GradualUnfreezing
from keras_transfer.callbacks import ValidatedEarlyStopping
from keras_transfer.callbacks import recalibrate_batchnorm
from keras_transfer.data import ImageData
from keras_transfer.data import image_folder_dataset
from keras_transfer.data import tfds_dataset
from keras_transfer.distillation import ProbabilitiesToLogits
from keras_transfer.distillation import distill
from keras_transfer.distillation import logits_model
from keras_transfer.distribute import MultiWorkerFitMixin
from keras_transfer.distribute import create_strategy
from keras_transfer.distribute import default_jit_compile
from keras_transfer.distribute import enable_multi_worker_fit
from keras_transfer.distribute import set_mixed_precision
from keras_transfer.domain import DannLearningRate
from keras_transfer.domain import DomainAdaptation
from keras_transfer.domain import DomainDistance
from keras_transfer.domain import domain_distance
from keras_transfer.domain import fit_domain_adaptation
from keras_transfer.features import CachedFeatures
from keras_transfer.features import FeatureCache
from keras_transfer.features import FeatureExtraction
from keras_transfer.features import extract_features
from keras_transfer.features import feature_extractor
from keras_transfer.features import fit_feature_extractor
from keras_transfer.few_shot import PrototypeHead
from keras_transfer.few_shot import add_classes
from keras_transfer.few_shot import fit_prototypes
from keras_transfer.forgetting import ForgettingReport
from keras_transfer.forgetting import forgetting_report
from keras_transfer.forgetting import linear_cka
from keras_transfer.freezing import freeze
from keras_transfer.freezing import trainable_blocks
from keras_transfer.freezing import unfreeze
from keras_transfer.heads import ClassificationHead
from keras_transfer.heads import MultiTaskHead
from keras_transfer.heads import TransferClassifier
from keras_transfer.heads import create_classifier
from keras_transfer.hub import HubBackbone
from keras_transfer.hub import HubModuleUnavailableError
from keras_transfer.imbalance import class_counts
from keras_transfer.imbalance import resolve_class_weight
from keras_transfer.lora import LoraBackupAndRestore
from keras_transfer.lora import LoraSummary
from keras_transfer.lora import enable_lora
from keras_transfer.lora import load_adapter
from keras_transfer.lora import merge_lora
from keras_transfer.lora import resume_lora
from keras_transfer.lora import save_adapter
from keras_transfer.lr_finder import find_learning_rate
from keras_transfer.optimizers import layer_decay_multipliers
from keras_transfer.optimizers import with_layerwise_lr
from keras_transfer.preprocessing import ImagePreprocessing
from keras_transfer.recipes import NegativeTransferWarning
from keras_transfer.recipes import Recipe
from keras_transfer.recipes import check_negative_transfer
from keras_transfer.recipes import fit_scratch_baseline
from keras_transfer.recipes import recommend_recipe
from keras_transfer.recipes import recommend_training_plan
from keras_transfer.recipes import scratch_model
from keras_transfer.regularizers import apply_l2sp
from keras_transfer.reliability import AtomicBackupAndRestore
from keras_transfer.reliability import BackupUnreadableError
from keras_transfer.reliability import BinaryLabelCrossentropy
from keras_transfer.reliability import EmptyEpochGuard
from keras_transfer.reliability import NonFiniteGuard
from keras_transfer.reliability import NonFiniteLossError
from keras_transfer.reliability import NonFiniteWeightsError
from keras_transfer.reports import classification_report
from keras_transfer.reports import confusion_matrix
from keras_transfer.reports import plot_confusion_matrix
from keras_transfer.reports import plot_training_curves
from keras_transfer.saving import load_model
from keras_transfer.saving import save_model
from keras_transfer.schedules import OneCycle
from keras_transfer.schedules import SlantedTriangular
from keras_transfer.schedules import WarmupCosineDecay
from keras_transfer.tensorboard import RunTensorBoard
from keras_transfer.training import TwoPhaseHistory
from keras_transfer.training import fit_two_phase
from keras_transfer.training import fit_two_phase_cached
from keras_transfer.transfer_scores import RankedCandidate
from keras_transfer.transfer_scores import h_score
from keras_transfer.transfer_scores import leep
from keras_transfer.transfer_scores import logme
from keras_transfer.transfer_scores import rank_backbones
from keras_transfer.transfer_scores import transferability

__all__ = [
    "backbones",
    "callbacks",
    "data",
    "distillation",
    "distribute",
    "domain",
    "features",
    "few_shot",
    "forgetting",
    "freezing",
    "heads",
    "hub",
    "imbalance",
    "layers",
    "lora",
    "losses",
    "lr_finder",
    "optimizers",
    "preprocessing",
    "recipes",
    "regularizers",
    "reliability",
    "reports",
    "saving",
    "schedules",
    "tensorboard",
    "training",
    "transfer_scores",
    "add_classes",
    "apply_l2sp",
    "AtomicBackupAndRestore",
    "Backbone",
    "BackboneSpec",
    "BackupUnreadableError",
    "BatchNormRecalibration",
    "BinaryLabelCrossentropy",
    "Block",
    "CachedFeatures",
    "check_negative_transfer",
    "class_counts",
    "classification_report",
    "ClassificationHead",
    "confusion_matrix",
    "create_backbone",
    "create_classifier",
    "create_strategy",
    "DannLearningRate",
    "default_jit_compile",
    "distill",
    "domain_distance",
    "DomainAdaptation",
    "DomainDistance",
    "EmptyEpochGuard",
    "enable_lora",
    "enable_multi_worker_fit",
    "extract_features",
    "feature_extractor",
    "FeatureCache",
    "FeatureExtraction",
    "find_learning_rate",
    "fit_domain_adaptation",
    "fit_feature_extractor",
    "fit_prototypes",
    "fit_scratch_baseline",
    "fit_two_phase",
    "fit_two_phase_cached",
    "forgetting_report",
    "ForgettingReport",
    "freeze",
    "get_blocks",
    "GradualUnfreezing",
    "h_score",
    "HubBackbone",
    "HubModuleUnavailableError",
    "image_folder_dataset",
    "ImageData",
    "ImagePreprocessing",
    "layer_decay_multipliers",
    "leep",
    "linear_cka",
    "list_backbones",
    "load_adapter",
    "load_model",
    "logits_model",
    "logme",
    "LoraBackupAndRestore",
    "LoraSummary",
    "merge_lora",
    "MultiTaskHead",
    "MultiWorkerFitMixin",
    "NegativeTransferWarning",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "OneCycle",
    "plot_confusion_matrix",
    "plot_training_curves",
    "ProbabilitiesToLogits",
    "PrototypeHead",
    "rank_backbones",
    "RankedCandidate",
    "recalibrate_batchnorm",
    "Recipe",
    "recommend_recipe",
    "recommend_training_plan",
    "register_backbone",
    "register_backbone_prefix",
    "resolve_class_weight",
    "resume_lora",
    "RunTensorBoard",
    "save_adapter",
    "save_model",
    "scratch_model",
    "set_mixed_precision",
    "SlantedTriangular",
    "tfds_dataset",
    "trainable_blocks",
    "transferability",
    "TransferClassifier",
    "TwoPhaseHistory",
    "unfreeze",
    "ValidatedEarlyStopping",
    "WarmupCosineDecay",
    "WeightsUnavailableError",
    "with_layerwise_lr",
    "__version__",
]
