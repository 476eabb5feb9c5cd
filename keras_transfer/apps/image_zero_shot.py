"""`--zero_shot`: the image classifier run starts from a CLIP or SigLIP zero-shot classifier
(`kt.zero_shot_classifier`, the class folders' names as its classes) instead of a new head.

Before training, a copy of it, untouched by training, is scored on the validation split
(`zero_shot_start`); at the end, with the trained model's test, it is scored once on the
test split (`zero_shot_results`): results.json "zero_shot" says what fine-tuning added. With
`wise_ft`, WiSE-FT interpolates from this copy (Wortsman et al. 2022), not from the head
phase's weights.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import keras
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer.apps.image_config import Config
from keras_transfer.diagnostics import reports
from keras_transfer.heads import zero_shot

__all__ = ["ZeroShotStart", "zero_shot_start", "zero_shot_results"]

logger = logging.getLogger("keras_transfer")


@dataclasses.dataclass
class ZeroShotStart:
    """The zero-shot classifier a run fine-tunes from.

    Args:
        model: a copy of it with its zero-shot weights, untouched by training.
        validation: its `reports.held_out_report` on the validation split, or None.
    """

    model: keras.Model
    validation: dict[str, Any] | None


def _report(model: keras.Model, dataset: Any, class_names: list[str]) -> dict[str, Any]:
    true, predicted = reports.predict_labels(model, dataset)
    matrix = reports.confusion_matrix(true, predicted, len(class_names))
    return reports.held_out_report(matrix, class_names)


def zero_shot_start(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    strategy: tf.distribute.Strategy,
) -> ZeroShotStart | None:
    """With `config.zero_shot`: a copy of `model` (the zero-shot classifier, before any
    training) and its validation report; None otherwise."""
    if not config.zero_shot:
        return None
    with strategy.scope():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    validation = None
    if data.validation is not None:
        validation = _report(copy, data.validation, data.class_names)
        logger.info("Zero-shot validation accuracy before training: %.4f", validation["accuracy"])
    return ZeroShotStart(copy, validation)


def zero_shot_results(start: ZeroShotStart, data: data_lib.ImageData) -> dict[str, Any]:
    """results.json "zero_shot": the zero-shot classifier's report on the validation split
    (its keys at the top, `"split": "validation"`) and on the test split (`"test"`, read
    here, once, beside the trained model's); the test report on top without validation."""
    results: dict[str, Any] = {"split": None, "templates": list(zero_shot.DEFAULT_TEMPLATES)}
    test = getattr(data, "test", None)
    test_report = _report(start.model, test, data.class_names) if test is not None else None
    if start.validation is not None:
        results.update(start.validation, split="validation")
    elif test_report is not None:
        results.update(test_report, split="test")
    if test_report is not None:
        results["test"] = test_report
    return results
