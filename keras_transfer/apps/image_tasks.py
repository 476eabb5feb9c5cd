"""Multilabel and regression runs of the image classifier command: `keras-transfer train
--labels_csv=T --label_columns=a,b,c --task=multilabel|regression`.

The run is the multiclass one (two phases, the feature cache, early stopping and the kept
epoch on the validation loss) with the task's Keras loss and metrics, what only makes
sense for one class per image refused by name (`check_task_options`), and the task's own
reports (`task_report`):

- multilabel: a sigmoid head trained with binary cross-entropy (`kt.BinaryLabelCrossentropy`,
  with `label_smoothing` towards 0.5 if set), `keras.metrics.AUC(multi_label=True)` as ROC
  and PR AUC; after training one threshold per label chosen on the validation images
  (`kt.best_f1_thresholds`), saved beside the model (`thresholds.json`) and applied to the
  test report and by `keras-transfer predict`;
- regression: a linear head trained with mean squared error, with MAE and RMSE metrics;
  MAE, RMSE and R² per target and their means.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import keras
import numpy as np

from keras_transfer.apps import config as config_lib
from keras_transfer.data import imbalance
from keras_transfer.data.pipeline import uses_label_mixing
from keras_transfer.diagnostics import label_reports
from keras_transfer.heads.losses import BinaryLabelCrossentropy

__all__ = [
    "HEADLINE_METRICS",
    "TASK_OUTPUTS",
    "THRESHOLDS_FILE",
    "check_task_options",
    "format_task_report",
    "headline",
    "loss_arguments",
    "task_files",
    "task_report",
    "task_test_summary",
]

logger = logging.getLogger("keras_transfer")

THRESHOLDS_FILE = "thresholds.json"
LABEL_F1_PLOT = "label_f1.png"
SCATTER_PLOT = "predicted_vs_true.png"
# What a multilabel or regression run writes besides the multiclass run's outputs.
TASK_OUTPUTS = (THRESHOLDS_FILE, LABEL_F1_PLOT, SCATTER_PLOT)
# The validation metric of each task the summary prints per phase.
HEADLINE_METRICS = {"multiclass": "accuracy", "multilabel": "pr_auc", "regression": "mae"}


def check_task_options(config: Any) -> None:
    """Refuses (`ConfigError`, naming the setting and the way out) the settings of a
    multilabel or regression run that need one class per image; nothing for multiclass.
    `config` is the command's `Config`."""
    task = config.task
    if task == "multiclass":
        return
    if not config.labels_csv:
        raise config_lib.ConfigError(
            f"task={task!r} reads its labels from a table: give labels_csv (--labels_csv) "
            "with --label_columns naming its label or target columns. Class folders and "
            "TFDS datasets are multiclass."
        )
    what = "labels" if task == "multilabel" else "numeric targets"
    refused = {
        "class_weight": imbalance.parse_class_weight(config.class_weight) is not None,
        "augment": uses_label_mixing(config.augment),
        "label_smoothing": task == "regression" and config.label_smoothing > 0,
        "zero_shot": config.zero_shot,
        "adapt": bool(config.adapt),
        "target_dir": bool(config.target_dir),
        "diagnostics": config.diagnostics,
    }
    reasons = {
        "class_weight": "weights the one class of each image in the loss (Keras' "
        "fit(class_weight=...))",
        "augment": f"augment={config.augment!r}: mixup and cutmix mix the class labels of "
        "two images",
        "label_smoothing": "smooths class labels; regression targets are numbers",
        "zero_shot": "starts from a classifier of one class name per image",
        "adapt": "adapts a classifier's class predictions (entropy, pseudo-labels, class "
        "confusion) to the target images",
        "target_dir": "reports the target accuracy of class predictions",
        "diagnostics": "scores the backbone's blocks with LogME and H-score, which rank "
        "class labels",
    }
    fixes = {
        "augment": "remove mixup and cutmix from --augment (the other augmentations apply)",
        "target_dir": "drop --target_dir (kt.domain_distance measures the domain gap of any "
        "model in Python)",
        "diagnostics": "drop --diagnostics (kt.forgetting.forgetting_report measures the "
        "drift from the pretrained backbone in Python)",
    }
    for name, is_set in refused.items():
        if is_set:
            fix = fixes.get(name, f"drop --{name}")
            raise config_lib.ConfigError(
                f"{name} {reasons[name]}: a {task} table has {what}, not one class per "
                f"image. For task={task!r}, {fix}."
            )


def loss_arguments(task: str, label_smoothing: float = 0.0) -> dict[str, Any]:
    """`fit_two_phase`'s `loss` and `metrics` for a multilabel or regression head: binary
    cross-entropy (its label smoothing towards 0.5) with ROC and PR AUC averaged over the
    labels, or mean squared error with MAE and RMSE. New metric objects on each call."""
    if task == "multilabel":
        return dict(
            loss=BinaryLabelCrossentropy(label_smoothing=label_smoothing),
            metrics=[
                keras.metrics.AUC(multi_label=True, name="auc"),
                keras.metrics.AUC(curve="PR", multi_label=True, name="pr_auc"),
            ],
        )
    if task == "regression":
        return dict(
            loss=keras.losses.MeanSquaredError(),
            metrics=[
                keras.metrics.MeanAbsoluteError(name="mae"),
                keras.metrics.RootMeanSquaredError(name="rmse"),
            ],
        )
    raise ValueError(f"task={task!r}: loss_arguments is for multilabel and regression.")


def task_report(model: keras.Model, data: Any, output_dir: str, title: str) -> dict[str, Any]:
    """results.json's entries of a multilabel or regression run: `validation_report` (the
    saved model on the validation images), `test` (on the test images, read here, once,
    after every choice), the plot of the validation report, and for multilabel the
    thresholds chosen on validation (`thresholds`, `thresholds_chosen_on`).

    Without validation images the thresholds stay at 0.5 (with a warning in the results).
    """
    names, task = list(data.class_names), data.task
    results: dict[str, Any] = {"plots": []}
    validation = None
    if data.validation is not None:
        validation = label_reports.predict_outputs(model, data.validation)
    if task == "multilabel":
        thresholds = [0.5] * len(names)
        results["thresholds_chosen_on"] = "validation"
        if validation is None:
            results["thresholds_chosen_on"] = "none: 0.5 (no validation images)"
            message = (
                "No validation images: the label thresholds stay at 0.5. Set "
                "validation_split > 0 to choose them."
            )
            logger.warning(message)
            results["warnings"] = [message]
        else:
            thresholds = label_reports.best_f1_thresholds(*validation).tolist()
        results["thresholds"] = dict(zip(names, thresholds))
    test = getattr(data, "test", None)
    if validation is not None:
        report = _report(task, *validation, names, results.get("thresholds"))
        results["validation_report"] = report
        heading = f"{title}\nvalidation data, {report['num_examples']} images"
        if task == "multilabel":
            path = os.path.join(output_dir, LABEL_F1_PLOT)
            results["plots"].append(label_reports.plot_label_f1(report, path, heading))
        else:
            path = os.path.join(output_dir, SCATTER_PLOT)
            plotted = label_reports.plot_predicted_vs_true(*validation, names, path, heading)
            results["plots"].append(plotted)
    if test is not None:
        labels, outputs = label_reports.predict_outputs(model, test)
        results["test"] = _report(task, labels, outputs, names, results.get("thresholds"))
    results["plots"] = [os.path.basename(path) for path in results["plots"]]
    return results


def _report(task, labels, outputs, names, thresholds) -> dict[str, Any]:
    if task == "multilabel":
        return label_reports.multilabel_report(labels, outputs, names, list(thresholds.values()))
    return label_reports.regression_report(labels, outputs, names)


def task_files(results: dict[str, Any]) -> dict[str, Any]:
    """The files a run writes beside its model for its task: `thresholds.json` (label ->
    threshold, in output order) for multilabel; none otherwise."""
    if results.get("thresholds") is None:
        return {}
    return {THRESHOLDS_FILE: results["thresholds"]}


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_task_report(report: dict[str, Any]) -> str:
    """A `multilabel_report` (per label: AP, threshold, precision, recall, F1, support;
    then mAP and macro F1) or a `regression_report` (per target: MAE, RMSE, R²; then
    their means) as text."""
    if "per_label" in report:
        rows = report["per_label"]
        width = max([len(name) for name in rows] + [5])
        lines = [f"{'label':<{width}}      AP  threshold  precision  recall      f1  support"]
        for name, row in rows.items():
            lines.append(
                f"{name:<{width}}  {_number(row['average_precision']):>6}  "
                f"{row['threshold']:9.4f}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                f"{row['f1']:6.4f}  {row['support']:7d}"
            )
        lines.append(f"mAP {_number(report['mAP'])}, macro F1 {report['macro_f1']:.4f}")
        return "\n".join(lines)
    rows = report["per_target"]
    width = max([len(name) for name in rows] + [6])
    lines = [f"{'target':<{width}}         MAE        RMSE       R²"]
    for name, row in rows.items():
        lines.append(
            f"{name:<{width}}  {row['mae']:10.4f}  {row['rmse']:10.4f}  {_number(row['r2']):>7}"
        )
    lines.append(
        f"mean: MAE {report['mae']:.4f}, RMSE {report['rmse']:.4f}, R² {_number(report['r2'])}"
    )
    return "\n".join(lines)


def task_test_summary(results: dict[str, Any]) -> list[str]:
    """The summary's lines on the test report of a multilabel or regression run, or on
    its absence (the validation report chose the epoch, and the thresholds)."""
    test = results.get("test")
    if not test:
        if not results.get("validation_report"):
            return []
        chose = "the epoch and the thresholds" if "thresholds" in results else "the epoch"
        return [
            f"no test set: the validation images chose {chose}, so their scores are "
            "optimistic; --test_split gives an estimate of new images."
        ]
    how = " at the validation thresholds" if "thresholds" in results else ""
    return [
        f"test set, {test['num_examples']} images never seen before, evaluated once{how}:",
        format_task_report(test),
    ]


def headline(row: dict[str, Any], task: str) -> str:
    """The phase's validation metric of `task` as `val_<name> <value>, `, or `""`."""
    name = f"val_{HEADLINE_METRICS.get(task, 'accuracy')}"
    value = row.get(name)
    return f"{name} {value:.4f}, " if isinstance(value, int | float | np.floating) else ""
