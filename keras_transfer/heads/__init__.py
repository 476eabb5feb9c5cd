"""Heads on a backbone, their losses, and the classifier model that joins them."""

from keras_transfer.heads import classification
from keras_transfer.heads import classifier
from keras_transfer.heads import labels
from keras_transfer.heads import losses
from keras_transfer.heads import multi_task
from keras_transfer.heads import zero_shot
from keras_transfer.heads.classification import HEAD_ARGS
from keras_transfer.heads.classification import POOLINGS
from keras_transfer.heads.classification import TASKS
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classification import make_head
from keras_transfer.heads.classification import resolve_loss_and_metrics
from keras_transfer.heads.classifier import TransferClassifier
from keras_transfer.heads.classifier import create_classifier
from keras_transfer.heads.labels import check_labels
from keras_transfer.heads.losses import BinaryLabelCrossentropy
from keras_transfer.heads.losses import SoftLabelAccuracy
from keras_transfer.heads.losses import SoftLabelCrossentropy
from keras_transfer.heads.multi_task import HEAD_NAME
from keras_transfer.heads.multi_task import RESERVED_HEAD_NAMES
from keras_transfer.heads.multi_task import MultiTaskHead
from keras_transfer.heads.multi_task import check_heads
from keras_transfer.heads.multi_task import check_loss_weights
from keras_transfer.heads.zero_shot import ZeroShotHead

__all__ = [
    "classification",
    "classifier",
    "labels",
    "losses",
    "multi_task",
    "zero_shot",
    "BinaryLabelCrossentropy",
    "SoftLabelAccuracy",
    "SoftLabelCrossentropy",
    "ClassificationHead",
    "HEAD_ARGS",
    "HEAD_NAME",
    "MultiTaskHead",
    "POOLINGS",
    "RESERVED_HEAD_NAMES",
    "TASKS",
    "TransferClassifier",
    "ZeroShotHead",
    "check_heads",
    "check_labels",
    "check_loss_weights",
    "create_classifier",
    "make_head",
    "resolve_loss_and_metrics",
]
