"""Heads on a backbone, and the classifier model that joins them."""

from keras_transfer.heads import classification
from keras_transfer.heads.classification import TASKS
from keras_transfer.heads.classification import ClassificationHead
from keras_transfer.heads.classification import MultiTaskHead
from keras_transfer.heads.classification import TransferClassifier
from keras_transfer.heads.classification import check_heads
from keras_transfer.heads.classification import check_loss_weights
from keras_transfer.heads.classification import create_classifier
from keras_transfer.heads.classification import make_head
from keras_transfer.heads.classification import resolve_loss_and_metrics

__all__ = [
    "classification",
    "ClassificationHead",
    "MultiTaskHead",
    "TASKS",
    "TransferClassifier",
    "check_heads",
    "check_loss_weights",
    "create_classifier",
    "make_head",
    "resolve_loss_and_metrics",
]
