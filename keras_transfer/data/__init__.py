"""Datasets for transfer learning: image folders (listing, decoding, EXIF orientation, size
limits, splits), images labelled by a table (`tables`), TFRecord shards of large datasets
(`records`, with images stored smaller by `stored_images`), the tf.data pipeline, TFDS, and
class counts and weights (`imbalance`).
"""

from keras_transfer.data import decoding
from keras_transfer.data import exif
from keras_transfer.data import folders
from keras_transfer.data import image_data
from keras_transfer.data import imbalance
from keras_transfer.data import listing
from keras_transfer.data import pipeline
from keras_transfer.data import records
from keras_transfer.data import splits
from keras_transfer.data import stored_images
from keras_transfer.data import tables
from keras_transfer.data import tfds_loader
from keras_transfer.data.decoding import DEFAULT_CROP_FRACTION
from keras_transfer.data.decoding import DEFAULT_MAX_PIXELS
from keras_transfer.data.decoding import IMAGE_EXTENSIONS
from keras_transfer.data.decoding import UNSUPPORTED_IMAGE_FORMATS
from keras_transfer.data.decoding import as_image_size
from keras_transfer.data.decoding import central_crop
from keras_transfer.data.decoding import check_batch_size
from keras_transfer.data.decoding import check_image_size
from keras_transfer.data.decoding import check_max_pixels
from keras_transfer.data.decoding import decode_and_resize
from keras_transfer.data.decoding import decode_central_crop
from keras_transfer.data.decoding import decode_for_model
from keras_transfer.data.decoding import decode_image_bytes
from keras_transfer.data.decoding import find_undecodable
from keras_transfer.data.decoding import load_size
from keras_transfer.data.decoding import plain_jpeg_size
from keras_transfer.data.decoding import plain_jpegs
from keras_transfer.data.decoding import read_image_size
from keras_transfer.data.decoding import resize_and_crop
from keras_transfer.data.folders import TargetImages
from keras_transfer.data.folders import image_folder_dataset
from keras_transfer.data.folders import target_image_dataset
from keras_transfer.data.image_data import ImageData
from keras_transfer.data.image_data import as_dataset
from keras_transfer.data.image_data import is_image_data
from keras_transfer.data.imbalance import IMBALANCE_WARNING_RATIO
from keras_transfer.data.imbalance import balanced_weights
from keras_transfer.data.imbalance import class_counts
from keras_transfer.data.imbalance import class_weight_classes
from keras_transfer.data.imbalance import empty_classes
from keras_transfer.data.imbalance import imbalance_warning
from keras_transfer.data.imbalance import label_indices
from keras_transfer.data.imbalance import parse_class_weight
from keras_transfer.data.imbalance import resolve_class_weight
from keras_transfer.data.listing import TEST_DIR_NAMES
from keras_transfer.data.listing import TRAIN_DIR_NAMES
from keras_transfer.data.listing import VALIDATION_DIR_NAMES
from keras_transfer.data.listing import DatasetFiles
from keras_transfer.data.listing import FileListing
from keras_transfer.data.listing import drop_bad_files
from keras_transfer.data.listing import list_class_folder
from keras_transfer.data.listing import list_dataset_folder
from keras_transfer.data.listing import list_pairs
from keras_transfer.data.listing import report_listing
from keras_transfer.data.listing import walk_image_files
from keras_transfer.data.pipeline import PipelineOptions
from keras_transfer.data.pipeline import augmentation_names
from keras_transfer.data.pipeline import augmentation_pipeline
from keras_transfer.data.pipeline import decoded_dataset
from keras_transfer.data.pipeline import label_mixing
from keras_transfer.data.pipeline import pipeline_options
from keras_transfer.data.pipeline import uses_label_mixing
from keras_transfer.data.records import DEFAULT_SHARD_SIZE
from keras_transfer.data.records import MANIFEST_FILE
from keras_transfer.data.records import RECORD_SPLITS
from keras_transfer.data.records import is_records_folder
from keras_transfer.data.records import read_manifest
from keras_transfer.data.records import records_dataset
from keras_transfer.data.records import write_records
from keras_transfer.data.splits import assign_splits
from keras_transfer.data.splits import stable_unit
from keras_transfer.data.tables import BAD_ROW_POLICIES
from keras_transfer.data.tables import TABLE_TASKS
from keras_transfer.data.tables import BadRowsError
from keras_transfer.data.tables import LabelTable
from keras_transfer.data.tables import image_table_dataset
from keras_transfer.data.tables import list_table_files
from keras_transfer.data.tables import read_label_table
from keras_transfer.data.tfds_loader import tfds_dataset

__all__ = [
    "decoding",
    "exif",
    "image_data",
    "pipeline",
    "records",
    "stored_images",
    "listing",
    "folders",
    "splits",
    "tables",
    "tfds_loader",
    "imbalance",
    "DEFAULT_CROP_FRACTION",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "UNSUPPORTED_IMAGE_FORMATS",
    "as_image_size",
    "check_batch_size",
    "check_image_size",
    "check_max_pixels",
    "central_crop",
    "decode_and_resize",
    "decode_central_crop",
    "decode_for_model",
    "decode_image_bytes",
    "find_undecodable",
    "load_size",
    "plain_jpeg_size",
    "plain_jpegs",
    "read_image_size",
    "resize_and_crop",
    "ImageData",
    "as_dataset",
    "is_image_data",
    "PipelineOptions",
    "augmentation_names",
    "augmentation_pipeline",
    "label_mixing",
    "uses_label_mixing",
    "decoded_dataset",
    "pipeline_options",
    "TEST_DIR_NAMES",
    "TRAIN_DIR_NAMES",
    "VALIDATION_DIR_NAMES",
    "DatasetFiles",
    "FileListing",
    "drop_bad_files",
    "list_class_folder",
    "list_dataset_folder",
    "list_pairs",
    "report_listing",
    "walk_image_files",
    "TargetImages",
    "image_folder_dataset",
    "target_image_dataset",
    "tfds_dataset",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_FILE",
    "RECORD_SPLITS",
    "is_records_folder",
    "read_manifest",
    "records_dataset",
    "write_records",
    "BAD_ROW_POLICIES",
    "TABLE_TASKS",
    "BadRowsError",
    "LabelTable",
    "image_table_dataset",
    "list_table_files",
    "read_label_table",
    "assign_splits",
    "stable_unit",
    "IMBALANCE_WARNING_RATIO",
    "balanced_weights",
    "class_counts",
    "class_weight_classes",
    "empty_classes",
    "imbalance_warning",
    "label_indices",
    "parse_class_weight",
    "resolve_class_weight",
]
