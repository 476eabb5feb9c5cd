"""An image classifier run's optional measurements around training: per-block drift and
source-task agreement (`diagnostics`), and the distance to a target domain (`target_dir`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import keras

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps.image_config import Config
from keras_transfer.diagnostics import reports

__all__ = [
    "check_diagnostics",
    "diagnose",
    "domain_report",
    "load_target",
]

logger = logging.getLogger("keras_transfer")


def check_diagnostics(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData
) -> keras.Model | None:
    """The with-top source model of `source_weights`, or `None`; before training, so that
    a wrong file or too few probe images fail the run before it starts."""
    if config.diagnostics and _probe_split(data)[1] < kt.forgetting.MIN_PROBE_IMAGES:
        raise ValueError(
            f"diagnostics compare activations on at least {kt.forgetting.MIN_PROBE_IMAGES} "
            f"images, but there are {data.num_validation} validation and {data.num_train} "
            "training images: add images or drop diagnostics."
        )
    if not config.source_weights:
        return None
    return kt.forgetting.source_model(backbone, config.source_weights)


def _probe_split(data: data_lib.ImageData) -> tuple[str, int]:
    """The images drift is measured on: validation, or training when validation has too
    few (CKA needs kt.forgetting.MIN_PROBE_IMAGES)."""
    if data.validation is not None and data.num_validation >= kt.forgetting.MIN_PROBE_IMAGES:
        return "validation", data.num_validation
    return "training", data.num_train


def load_target(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData, image_size: int
) -> tuple[data_lib.TargetImages | None, kt.DomainDistance | None]:
    """The target images of `target_dir` and their distance from the training images in
    the pretrained backbone's features (before training), or `(None, None)`."""
    if not config.target_dir:
        return None, None
    target = data_lib.target_image_dataset(
        config.target_dir,
        data.class_names,
        image_size=image_size,
        batch_size=config.batch_size,
        seed=config.seed,
        max_pixels=config.max_pixels or None,
    )
    logger.info("%d target images; labelled: %s", target.num_images, target.labelled_reason)
    distance = kt.domain_distance(backbone, data.train_unaugmented, target.unshuffled)
    logger.info("Before training: %s", distance.describe())
    return target, distance


def domain_report(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    target: data_lib.TargetImages,
    before: kt.DomainDistance,
) -> dict[str, Any]:
    """results.json's "domain": the distance between training and target images before
    and after training, and the trained model's target accuracy if the target is labelled."""
    after = kt.domain_distance(model, data.train_unaugmented, target.unshuffled)
    accuracy = None
    if target.labelled is not None:
        true, predicted = reports.predict_labels(model, target.labelled)
        accuracy = float((true == predicted).mean())
    logger.info("After training: %s; target accuracy %s", after.describe(), accuracy)
    return {
        "method": config.adapt or None,
        "target_images": target.num_images,
        "target_labelled": target.labelled is not None,
        "target_labelled_reason": target.labelled_reason,
        "target_skipped": target.skipped,
        "distance_before": dataclasses.asdict(before),
        "distance_after": dataclasses.asdict(after),
        "describe_before": before.describe(),
        "describe_after": after.describe(),
        "target_accuracy": accuracy,
    }


def diagnose(
    pretrained: kt.Backbone,
    model: keras.Model,
    data: data_lib.ImageData,
    transfer: dict[str, Any] | None,
    source: keras.Model | None,
    output_dir: str,
) -> dict[str, Any]:
    """results.json's "diagnostics": the transferability measured before training, and
    the per-block drift (CKA) from the pretrained backbone and the source-task agreement
    on the validation images (the training images without validation); drift.png."""
    if transfer and "error" in transfer:
        raise ValueError(f"diagnostics: transferability cannot be measured: {transfer['error']}")
    scores = {k: v for k, v in (transfer or {}).items() if k != "seconds"}
    split, _ = _probe_split(data)
    summary = kt.forgetting.diagnostics_summary(
        pretrained,
        model,
        data,
        data.validation if split == "validation" else data.train_unaugmented,
        source_head=source,
        drift_plot=os.path.join(output_dir, "drift.png"),
        transferability=scores or None,
    )
    summary["transferability"]["seconds"] = (transfer or {}).get("seconds")
    summary["probe_split"] = split
    logger.info(
        "diagnostics: least changed -> most changed block: %s; source top-1 agreement %s",
        sorted(summary["block_cka"], key=summary["block_cka"].get, reverse=True),
        summary["source_top1_agreement"],
    )
    return summary
