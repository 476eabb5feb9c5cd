"""What an image classifier run builds before training: its environment (seeds, strategy,
dtype policy, output folder), the pretrained backbone, the data and the classifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps.image_config import Config
from keras_transfer.backbones import freezing
from keras_transfer.heads import zero_shot
from keras_transfer.utils import backend
from keras_transfer.utils import distribute
from keras_transfer.utils import memory
from keras_transfer.utils import reliability

__all__ = [
    "Environment",
    "build_backbone_from_config",
    "build_model",
    "check_batches",
    "check_lora",
    "check_memory",
    "load_data",
    "run_environment",
]

logger = logging.getLogger("keras_transfer")


@dataclasses.dataclass
class Environment:
    """Where and how a run executes.

    Args:
        strategy: the `tf.distribute.Strategy` the model is built and trained under.
        output_dir: `model_dir` on the chief; a scratch folder, deleted at the end, on the
            other workers of a multi-worker run.
        chief: whether this process writes the results.
        dtype_policy: the Keras dtype policy of the run (`float32`, `mixed_bfloat16`, ...).
    """

    strategy: tf.distribute.Strategy
    output_dir: str
    chief: bool
    dtype_policy: str


@contextlib.contextmanager
def run_environment(
    config: Config, strategy: tf.distribute.Strategy | None
) -> Iterator[Environment]:
    """Seeds, creates the strategy, locks the chief's `model_dir` and sets the dtype policy;
    restores the previous policy, releases the lock and deletes a worker's scratch folder
    when the run ends, failed or not.

    The lock (`reliability.FolderLock`) is taken before anything else is done: a second run
    into the same folder fails at once (`FolderLockedError`, exit code 2 of the command),
    before it reads the first run's backup or writes anything. A `model_dir` the lock
    created is deleted again if the run fails before writing to it.
    """
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    # On JAX `create_strategy` sets Keras' global distribution: the run's own, undone after it.
    previous_distribution = None if backend.is_tensorflow() else keras.distribution.distribution()
    if strategy is None:
        strategy = distribute.create_strategy(config.strategy, config.tpu or None)
    # Worth a line where it is not TensorFlow on one device (which says nothing new).
    usual = backend.is_tensorflow() and strategy.num_replicas_in_sync == 1
    (logger.debug if usual else logger.info)(
        "Keras backend %s on %s: %d replica(s) (%s)",
        keras.backend.backend(),
        distribute.accelerator(strategy),
        strategy.num_replicas_in_sync,
        type(strategy).__name__,
    )
    chief = distribute.is_chief(strategy)
    # Only the chief writes model_dir; the other workers write a scratch folder.
    output_dir = config.model_dir if chief else tempfile.mkdtemp(prefix="worker_")
    lock = reliability.FolderLock(output_dir)
    if chief:
        lock.acquire()
    previous_policy = keras.config.dtype_policy().name
    try:
        policy = distribute.set_mixed_precision(config.mixed_precision, strategy)
        yield Environment(strategy, output_dir, chief, policy)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not backend.is_tensorflow():
            keras.distribution.set_distribution(previous_distribution)
        lock.release()
        if not chief:
            shutil.rmtree(output_dir, ignore_errors=True)


def build_backbone_from_config(config: Config, strategy: tf.distribute.Strategy) -> kt.Backbone:
    """The pretrained backbone of `config`, built under `strategy`, once `check_memory`
    found that a batch of its images can fit (before any data is loaded)."""
    backbone_kwargs: dict[str, Any] = {}
    if config.backbone.startswith("hub:"):
        backbone_kwargs["load_options"] = distribute.hub_load_options(strategy)
    with strategy.scope():
        backbone = kt.create_backbone(
            config.backbone,
            input_shape=(config.image_size, config.image_size, 3) if config.image_size else None,
            weights=config.resolved_weights(),
            **backbone_kwargs,
        )
    if config.zero_shot:  # a CLIP or SigLIP image tower, before any data is read
        zero_shot.check_zero_shot_backbone(backbone)
    check_memory(config, backbone, strategy)
    return backbone


def check_memory(config: Config, backbone: kt.Backbone, strategy: tf.distribute.Strategy) -> None:
    """Refuses a `batch_size` x `image_size` whose activations through the backbone cannot
    fit in the machine's memory, and warns when fine-tuning every block might not
    (`utils.memory.check_activation_memory`). Only on CPU: a GPU's or TPU's own memory is
    not what the host reports."""
    if distribute.accelerator(strategy) != "CPU":
        return
    compute_dtype = keras.config.dtype_policy().compute_dtype
    warning = memory.check_activation_memory(
        backbone.model,
        config.batch_size,
        bytes_per_value=tf.as_dtype(compute_dtype).size,
        what=config.backbone,
    )
    if warning and config.fine_tune_epochs != 0:
        logger.warning(warning)


def load_data(config: Config, image_size: int, drop_remainder: bool) -> data_lib.ImageData:
    """The training, validation and test data of `config`: an image folder, the TFRecord
    shards of one (a `data_dir` with a records manifest, `kt.data.write_records`), images
    labelled by a CSV file (`labels_csv`) or a TFDS dataset."""
    common = dict(
        image_size=image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        augment=config.augment or False,
        drop_remainder=drop_remainder,
    )
    if config.dataset:
        return data_lib.tfds_dataset(
            config.dataset[len("tfds:") :],
            train_split=config.train_split,
            validation_split=config.eval_split or None,
            data_dir=config.tfds_data_dir or None,
            **common,
        )
    if data_lib.is_records_folder(config.data_dir):
        return _records_data(config, common)
    if config.labels_csv:
        return data_lib.image_table_dataset(
            config.labels_csv,
            config.data_dir,
            config.path_column,
            config.label_columns,
            config.task,
            validation_split=config.validation_split,
            test_split=config.test_split,
            bad_rows=config.bad_rows,
            max_pixels=config.max_pixels or None,
            **common,
        )
    return data_lib.image_folder_dataset(
        config.data_dir,
        validation_split=config.validation_split,
        test_dir=config.test_dir or None,
        test_split=config.test_split,
        max_pixels=config.max_pixels or None,
        **common,
    )


def _records_data(config: Config, common: dict[str, Any]) -> data_lib.ImageData:
    """The records of `config.data_dir`, split as they were written: a different
    `validation_split` or `test_split` in `config` is named in a warning."""
    manifest = data_lib.read_manifest(config.data_dir)
    for split in ("validation", "test"):
        name, written = f"{split}_split", manifest[f"{split}_split"]
        if manifest["split_sources"][split] != "folder" and getattr(config, name) != written:
            logger.warning(
                "%s=%s does not apply to the records in %s: their splits were written with "
                "%s=%s (to change them, write the records again with kt.data.write_records).",
                name, getattr(config, name), config.data_dir, name, written,
            )  # fmt: skip
    return data_lib.records_dataset(config.data_dir, **common)


def check_batches(
    config: Config, data: data_lib.ImageData, strategy: tf.distribute.Strategy
) -> None:
    """Batch sizes the strategy cannot run, before building the model."""
    if distribute.static_batches(strategy) and data.num_train < config.batch_size:
        raise ValueError(
            f"{data.num_train} training images are fewer than one batch of {config.batch_size}: "
            "with static shapes (TPU) every batch is full. Lower batch_size."
        )
    replicas = strategy.num_replicas_in_sync
    first_validation_batch = min(config.batch_size, data.num_validation)
    if data.validation is not None and first_validation_batch % replicas:
        # Keras builds a distributed model from the mean of the first validation batch's
        # per-replica parts, which fails when they differ in size.
        raise ValueError(
            f"The first validation batch ({first_validation_batch} images) does not split "
            f"evenly over {replicas} replicas, which Keras' distributed evaluation cannot "
            "handle. Use a batch_size that is a multiple of the replica count and at most the "
            "validation set's size."
        )


def build_model(
    config: Config,
    backbone: kt.Backbone,
    class_names: list[str],
    strategy: tf.distribute.Strategy,
) -> kt.TransferClassifier:
    """The classifier: `backbone`, then a head of `config.task` with `config.dropout`, one
    output per class (label, regression target); with `config.zero_shot`, the zero-shot
    head of its CLIP or SigLIP preset's text tower. A LoRA run's settings are checked on it
    at once (`check_lora`)."""
    with strategy.scope():
        if config.zero_shot:
            weights = "preset" if config.resolved_weights() else None
            model = kt.zero_shot_classifier(
                backbone, class_names, weights=weights, dropout=config.dropout
            )
        else:
            model = kt.create_classifier(
                backbone,
                len(class_names),
                head={"dropout": config.dropout, "task": config.task},
                class_names=class_names,
            )
    check_lora(config, model)
    return model


def check_lora(config: Config, model: keras.Model) -> None:
    """With `fine_tune="lora"` (and a planned `unfreeze_blocks`), raises what `enable_lora`
    would raise in phase 2 (a rank a kernel does not allow, `lora_targets` that name no
    layer of the blocks to fine-tune, with the paths of the layers there) as soon as the
    model exists: before diagnostics, the target images, feature caching or any epoch spend
    time on a run that would fail."""
    if config.fine_tune != "lora" or config.unfreeze_blocks is None:
        return
    # The blocks phase 2 adapts (as image_training sets them): every block when everything
    # trains from the start, else unfreeze_blocks (gradual unfreezing refuses LoRA).
    unfreeze = "all" if config.resolved_freeze_strategy() == "none" else config.unfreeze_blocks
    kt.check_lora_request(
        model,
        config.lora_rank,
        config.lora_alpha or None,
        targets=config.resolved_lora_targets(),
        **freezing.unfreeze_request(unfreeze),
    )
