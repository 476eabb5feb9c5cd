"""Datasets for transfer learning: image folders (decoding, limits, splits), TFDS, and
class counts and weights (`imbalance`).
"""

from keras_transfer.data import folders
from keras_transfer.data import imbalance
from keras_transfer.data.folders import IMAGE_EXTENSIONS
from keras_transfer.data.folders import ImageData
from keras_transfer.data.folders import PipelineOptions
from keras_transfer.data.folders import TargetImages
from keras_transfer.data.folders import augmentation_names
from keras_transfer.data.folders import augmentation_pipeline
from keras_transfer.data.folders import check_batch_size
from keras_transfer.data.folders import check_image_size
from keras_transfer.data.folders import decode_and_resize
from keras_transfer.data.folders import find_undecodable
from keras_transfer.data.folders import image_folder_dataset
from keras_transfer.data.folders import load_size
from keras_transfer.data.folders import no_fit_shuffle
from keras_transfer.data.folders import read_image_size
from keras_transfer.data.folders import resize_and_crop
from keras_transfer.data.folders import target_image_dataset
from keras_transfer.data.folders import tfds_dataset
from keras_transfer.data.imbalance import IMBALANCE_WARNING_RATIO
from keras_transfer.data.imbalance import balanced_weights
from keras_transfer.data.imbalance import class_counts
from keras_transfer.data.imbalance import class_weight_classes
from keras_transfer.data.imbalance import empty_classes
from keras_transfer.data.imbalance import imbalance_warning
from keras_transfer.data.imbalance import label_indices
from keras_transfer.data.imbalance import parse_class_weight
from keras_transfer.data.imbalance import resolve_class_weight

__all__ = [
    "imbalance",
    "folders",
    "IMBALANCE_WARNING_RATIO",
    "balanced_weights",
    "class_counts",
    "class_weight_classes",
    "empty_classes",
    "imbalance_warning",
    "label_indices",
    "parse_class_weight",
    "resolve_class_weight",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "PipelineOptions",
    "TargetImages",
    "augmentation_names",
    "augmentation_pipeline",
    "check_batch_size",
    "check_image_size",
    "decode_and_resize",
    "find_undecodable",
    "image_folder_dataset",
    "load_size",
    "no_fit_shuffle",
    "read_image_size",
    "resize_and_crop",
    "target_image_dataset",
    "tfds_dataset",
]
