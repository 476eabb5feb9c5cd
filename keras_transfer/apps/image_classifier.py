"""The image classifier application: images in, a fine-tuned model and its reports out.

`run` composes named steps, each a function tests and notebooks can call on its own (the
shape of TF Hub's `make_image_classifier_lib.make_image_classifier`):

    check_config -> build_backbone_from_config -> load_data -> class_weight
        -> measure_transferability -> plan_training -> build_model
        -> [check_diagnostics, load_target] -> check_resume -> train_model
        -> report [-> domain_report, diagnose] -> export -> write_model_folder
        -> delete_backup

The steps live in modules by concept: the settings (`image_config`: `Config`,
`load_config`, `check_config`), the plan (`image_plan`: transferability, the advisor's
settings, class weights, see docs/diagnostics_and_defaults.md), what is built before
training (`image_model`), the training run (`image_training`), the optional measurements
(`image_diagnostics`) and what the run leaves behind (`image_reports`).

`keras_transfer/apps/image_classifier_cli.py` holds the flags and `main`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import keras
import tensorflow as tf

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import _outputs
from keras_transfer.apps import export_folder
from keras_transfer.apps import image_tasks
from keras_transfer.apps.image_config import RESOLVED_CONFIG_FILE as CONFIG
from keras_transfer.apps.image_config import Config
from keras_transfer.apps.image_config import check_config
from keras_transfer.apps.image_diagnostics import check_diagnostics
from keras_transfer.apps.image_diagnostics import diagnose
from keras_transfer.apps.image_diagnostics import domain_report
from keras_transfer.apps.image_diagnostics import load_target
from keras_transfer.apps.image_model import Environment
from keras_transfer.apps.image_model import build_backbone_from_config
from keras_transfer.apps.image_model import build_model
from keras_transfer.apps.image_model import check_batches
from keras_transfer.apps.image_model import load_data
from keras_transfer.apps.image_model import run_environment
from keras_transfer.apps.image_plan import class_weight
from keras_transfer.apps.image_plan import measure_transferability
from keras_transfer.apps.image_plan import plan_training
from keras_transfer.apps.image_reports import export
from keras_transfer.apps.image_reports import report
from keras_transfer.apps.image_reports import write_model_folder
from keras_transfer.apps.image_training import OnTrainingStart
from keras_transfer.apps.image_training import check_resume
from keras_transfer.apps.image_training import delete_backup
from keras_transfer.apps.image_training import resume_settings
from keras_transfer.apps.image_training import train_model
from keras_transfer.apps.model_folder import remove_run_outputs
from keras_transfer.utils import distribute

__all__ = ["RESULTS_FILE", "run"]

RESULTS_FILE = "results.json"

logger = logging.getLogger("keras_transfer")


def run(
    config: Config,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, Any]:
    """Loads the data, builds the classifier, trains and saves everything.

    Writes to `config.model_dir`: `model.keras` (raw 0-255 RGB images in, class
    probabilities out; loads with `safe_mode=True`, except models with a TF Hub backbone,
    whose SavedModel graph only loads with `safe_mode=False`), `labels.txt` (one class name
    per line, line i = output i), `config.json` (the resolved configuration),
    `results.json` (per-phase final metrics and wall time, the configuration, data sizes,
    skipped files, validation precision/recall per class), `training_curves.png` and
    `confusion_matrix.png` (other tasks' outputs: `apps.image_tasks`), TensorBoard logs
    in `logs/`, and with `export`: `saved_model/` and `model.tflite`, with `export.json`
    (each checked against the model on the validation images, as `keras-transfer export`
    checks). A run that fails before training starts creates no `model_dir`.

    One run at a time writes a `model_dir`: a second one fails at once
    (`reliability.FolderLockedError`, naming the first's PID). `config.json` is written
    when the first epoch is about to train (`OnTrainingStart`), once every check passed; at
    the end `model.keras`, `labels.txt`, `config.json` and `results.json` are replaced
    together. With `resume`, an interrupted run started again with the same settings
    continues from its last finished epoch (other settings are refused, named, before
    anything is written), and the backup is deleted only after those files are: a run
    stopped while writing them finishes from it, without training again.

    Args:
        config: the run's settings.
        strategy: a ready `tf.distribute.Strategy`; by default one is created from
            `config.strategy` and `config.tpu`.
        callbacks: extra Keras callbacks for both phases.

    Returns:
        The content of `results.json`.
    """
    start = time.perf_counter()
    check_config(config)
    with run_environment(config, strategy) as environment:  # locks model_dir
        _overwrite_earlier_run(config, environment)
        backbone = build_backbone_from_config(config, environment.strategy)
        image_size = backbone.input_shape[0] or backbone.default_size
        data = load_data(
            config, image_size, drop_remainder=distribute.static_batches(environment.strategy)
        )
        check_batches(config, data, environment.strategy)
        weights = class_weight(config, data)  # a bad class_weight fails before model_dir exists
        transfer = measure_transferability(config, backbone, data)
        config, plan = plan_training(config, backbone, data, transfer)
        model = build_model(config, backbone, data.class_names, environment.strategy)
        source = check_diagnostics(config, backbone, data)
        target, distance_before = load_target(config, backbone, data, image_size)
        pretrained = kt.forgetting.pretrained_copy(model) if config.diagnostics else None
        output_dir = environment.output_dir
        settings = resume_settings(config, data, image_size)
        check_resume(config, environment, settings)
        resolved, config_path = config.resolved(image_size), os.path.join(output_dir, CONFIG)
        write_config = OnTrainingStart(lambda: _outputs.write_json(config_path, resolved))
        callbacks = [*(callbacks or []), write_config]
        trained = train_model(
            config,
            model,
            data,
            environment,
            callbacks,
            target,
            class_weight=weights,
            backup_settings=settings,
        )
        results = report(
            config, model, data, trained, environment, image_size, class_weight=weights
        )
        extras = {"plan": plan, "wise_ft": trained.wise_ft, "adaptation": trained.adaptation}
        results.update({name: value for name, value in extras.items() if value is not None})
        if target is not None:
            results["domain"] = domain_report(config, model, data, target, distance_before)
        if config.diagnostics:
            results["diagnostics"] = diagnose(pretrained, model, data, transfer, source, output_dir)
        _save_outputs(config, model, data, environment, image_size, results, start)
    return results


def _overwrite_earlier_run(config: Config, environment: Environment) -> None:
    """With `overwrite`, deletes what an earlier run wrote into model_dir (its outputs only)."""
    if config.overwrite and environment.chief:
        removed = remove_run_outputs(environment.output_dir)
        if removed:
            logger.info("--overwrite: deleted %s of the earlier run.", ", ".join(removed))


def _save_outputs(
    config: Config,
    model: keras.Model,
    data: kt.ImageData,
    environment: Environment,
    image_size: int,
    results: dict[str, Any],
    start: float,
) -> None:
    """The end of a run: the exports (each checked on the run's validation images), then
    the model folder's files together (the JSON files on the chief only) and `export.json`,
    then the backup, no longer needed to finish the run."""
    class_names = data.class_names
    output_dir = environment.output_dir
    resolved = config.resolved(image_size)
    # Checked as `keras-transfer export` checks: on the run's validation (else test) images,
    # listed again from its image folder (a TFDS or records run's exports go unchecked).
    checkable = (
        bool(config.data_dir)
        and not data_lib.is_records_folder(config.data_dir)
        and bool(data.num_validation or data.num_test)
    )
    reports = []
    for export_format in config.export_formats():
        reports.append(
            export(model, output_dir, export_format, class_names, resolved if checkable else None)
        )
        logger.info("Exported %s", export_folder.format_report(reports[-1]))
        results.setdefault("exports", {})[export_format] = os.path.join(
            output_dir, reports[-1]["file"]
        )
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    # thresholds.json of a multilabel run too: replaced together with the model it fits.
    json_files = {CONFIG: resolved, RESULTS_FILE: results, **image_tasks.task_files(results)}
    write_model_folder(model, class_names, output_dir, json_files if environment.chief else None)
    if reports:  # beside model.keras, whose SHA-256 it records
        export_folder.record_reports(output_dir, output_dir, reports)
    delete_backup(config, environment)
