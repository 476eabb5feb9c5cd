"""The training run: two-phase fine-tuning (`two_phase`; its history and resumable state in
`two_phase_state`), the feature cache (`extraction`, its on-disk `feature_writer`, and the
head trained on cached features in `features`), every Keras callback of the package
(`callbacks`: unfreezing, BatchNormalization recalibration, early stopping, guards, backups,
TensorBoard logging), the learning-rate finder and weight averaging after fine-tuning
(`weight_averaging`: WiSE-FT, model soups, a per-epoch EMA momentum).
"""

from keras_transfer.training import callbacks
from keras_transfer.training import extraction
from keras_transfer.training import feature_writer
from keras_transfer.training import features
from keras_transfer.training import lr_finder
from keras_transfer.training import two_phase
from keras_transfer.training import two_phase_state
from keras_transfer.training import weight_averaging
from keras_transfer.training.callbacks import AtomicBackupAndRestore
from keras_transfer.training.callbacks import BackupUnreadableError
from keras_transfer.training.callbacks import BatchNormRecalibration
from keras_transfer.training.callbacks import EmptyEpochGuard
from keras_transfer.training.callbacks import GradualUnfreezing
from keras_transfer.training.callbacks import LoraBackupAndRestore
from keras_transfer.training.callbacks import NonFiniteGuard
from keras_transfer.training.callbacks import NonFiniteLossError
from keras_transfer.training.callbacks import RunTensorBoard
from keras_transfer.training.callbacks import ValidatedEarlyStopping
from keras_transfer.training.callbacks import ensure_optimizer_variables
from keras_transfer.training.callbacks import parse_unfreeze_schedule
from keras_transfer.training.callbacks import recalibrate_batchnorm
from keras_transfer.training.extraction import DEFAULT_MAX_MEMORY_BYTES
from keras_transfer.training.extraction import CachedFeatures
from keras_transfer.training.extraction import backbone_preprocessing_and_head
from keras_transfer.training.extraction import extract_features
from keras_transfer.training.extraction import feature_extractor
from keras_transfer.training.feature_writer import FeatureWriter
from keras_transfer.training.features import FeatureCache
from keras_transfer.training.features import FeatureExtraction
from keras_transfer.training.features import HeadOnFeatures
from keras_transfer.training.features import check_class_weight
from keras_transfer.training.features import fit_feature_extractor
from keras_transfer.training.features import fit_head_on_features
from keras_transfer.training.lr_finder import LRFinderResult
from keras_transfer.training.lr_finder import find_learning_rate
from keras_transfer.training.two_phase import check_initial_epoch
from keras_transfer.training.two_phase import fit_two_phase
from keras_transfer.training.two_phase_cached import fit_two_phase_cached
from keras_transfer.training.two_phase_state import HEAD_WEIGHTS_FILE
from keras_transfer.training.two_phase_state import PHASE_FINE_TUNE
from keras_transfer.training.two_phase_state import PHASE_HEAD
from keras_transfer.training.two_phase_state import STATE_FILE
from keras_transfer.training.two_phase_state import EpochRecorder
from keras_transfer.training.two_phase_state import RunState
from keras_transfer.training.two_phase_state import TwoPhaseHistory
from keras_transfer.training.weight_averaging import WiseFtResult
from keras_transfer.training.weight_averaging import ema_momentum_per_step
from keras_transfer.training.weight_averaging import interpolate_weights
from keras_transfer.training.weight_averaging import soup
from keras_transfer.training.weight_averaging import wise_ft
from keras_transfer.training.weight_averaging import with_ema

__all__ = [
    "callbacks",
    "lr_finder",
    "extraction",
    "feature_writer",
    "features",
    "two_phase",
    "two_phase_state",
    "weight_averaging",
    "BatchNormRecalibration",
    "GradualUnfreezing",
    "ValidatedEarlyStopping",
    "ensure_optimizer_variables",
    "parse_unfreeze_schedule",
    "recalibrate_batchnorm",
    "AtomicBackupAndRestore",
    "BackupUnreadableError",
    "LoraBackupAndRestore",
    "EmptyEpochGuard",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "RunTensorBoard",
    "LRFinderResult",
    "find_learning_rate",
    "CachedFeatures",
    "DEFAULT_MAX_MEMORY_BYTES",
    "FeatureWriter",
    "backbone_preprocessing_and_head",
    "FeatureCache",
    "FeatureExtraction",
    "HeadOnFeatures",
    "check_class_weight",
    "extract_features",
    "feature_extractor",
    "fit_feature_extractor",
    "fit_head_on_features",
    "check_initial_epoch",
    "fit_two_phase",
    "fit_two_phase_cached",
    "HEAD_WEIGHTS_FILE",
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "STATE_FILE",
    "EpochRecorder",
    "RunState",
    "TwoPhaseHistory",
    "WiseFtResult",
    "ema_momentum_per_step",
    "with_ema",
    "interpolate_weights",
    "soup",
    "wise_ft",
]
