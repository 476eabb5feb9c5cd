"""Reports of multilabel and regression models (a label table's other tasks): mean average
precision and per-label F1, and MAE, RMSE and R² per target, in NumPy.

`evaluate_outputs` runs a model over a batched `(images, labels)` dataset (an
`ImageData` split) and returns the report of its task, as plain JSON-ready values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "average_precision",
    "evaluate_outputs",
    "multilabel_report",
    "predict_outputs",
    "regression_report",
]


def predict_outputs(model: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(labels, outputs)` of a batched `(inputs, labels)` dataset as float32 arrays of
    shape `(examples, outputs)`, batch by batch so that they stay aligned."""
    labels, outputs = [], []
    for inputs, batch_labels in dataset:
        scores = keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float32)
        outputs.append(scores.reshape(len(scores), -1))
        labels.append(np.asarray(batch_labels, np.float32).reshape(len(scores), -1))
    if not labels:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    return np.concatenate(labels), np.concatenate(outputs)


def average_precision(labels: Any, scores: Any) -> float | None:
    """The average precision of one label: the mean, over the ranking by descending score,
    of the precision at each recall step (scikit-learn's `average_precision_score`, tied
    scores counted together); `None` without any positive example.

    Example:
    ```python
    average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])  # -> (1 + 2/3) / 2 = 0.8333
    ```
    """
    labels = np.asarray(labels, np.float64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores.")
    if not labels.sum():
        return None
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    # The last position of each distinct score: tied examples enter the ranking together.
    ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[ends]
    precision = true_positives / (ends + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_report(
    labels: Any, probabilities: Any, label_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Mean average precision (over the labels with a positive example), and each label's
    average precision, precision, recall, F1 (at `threshold`) and support.

    Args:
        labels: 0/1 array `(examples, labels)`.
        probabilities: the model's sigmoid outputs, same shape.
        label_names: one name per column.
        threshold: a probability at or above it predicts the label.

    Example:
    ```python
    report = multilabel_report([[1, 0], [0, 1]], [[0.9, 0.2], [0.4, 0.7]], ["cat", "dog"])
    report["mAP"], report["per_label"]["cat"]["f1"]  # -> 1.0, 1.0
    ```
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(probabilities, np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape or labels.shape[1] != len(label_names):
        raise ValueError(
            f"labels {labels.shape} and probabilities {scores.shape} must both be (examples, "
            f"{len(label_names)} labels)."
        )
    predicted = scores >= threshold
    per_label, precisions = {}, []
    for column, name in enumerate(label_names):
        truth, guess = labels[:, column] > 0.5, predicted[:, column]
        hits = int(np.sum(truth & guess))
        precision = hits / max(int(guess.sum()), 1)
        recall = hits / max(int(truth.sum()), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ap = average_precision(truth, scores[:, column])
        if ap is not None:
            precisions.append(ap)
        per_label[name] = {
            "average_precision": ap,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(truth.sum()),
        }
    return {
        "mAP": float(np.mean(precisions)) if precisions else None,
        "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
        "threshold": threshold,
        "num_examples": len(labels),
        "per_label": per_label,
    }


def regression_report(
    targets: Any, predictions: Any, target_names: Sequence[str]
) -> dict[str, Any]:
    """Mean absolute error, root mean squared error and R² of each target, and their means
    over the targets. R² is `None` for a target that is constant on these examples.

    Example:
    ```python
    report = regression_report([[1.0], [3.0]], [[2.0], [3.0]], ["age"])
    report["per_target"]["age"]  # -> {"mae": 0.5, "rmse": 0.707..., "r2": 0.5}
    ```
    """
    targets = np.asarray(targets, np.float64)
    predictions = np.asarray(predictions, np.float64)
    if targets.ndim == 1:
        targets, predictions = targets[:, None], predictions.reshape(-1, 1)
    if targets.shape != predictions.shape or targets.shape[1] != len(target_names):
        raise ValueError(
            f"targets {targets.shape} and predictions {predictions.shape} must both be "
            f"(examples, {len(target_names)} targets)."
        )
    errors = predictions - targets
    per_target = {}
    for column, name in enumerate(target_names):
        spread = float(np.sum((targets[:, column] - targets[:, column].mean()) ** 2))
        squared = float(np.sum(errors[:, column] ** 2))
        per_target[name] = {
            "mae": float(np.mean(np.abs(errors[:, column]))),
            "rmse": float(np.sqrt(squared / len(targets))),
            "r2": 1.0 - squared / spread if spread > 0 else None,
        }
    r2 = [row["r2"] for row in per_target.values() if row["r2"] is not None]
    return {
        "mae": float(np.mean([row["mae"] for row in per_target.values()])),
        "rmse": float(np.mean([row["rmse"] for row in per_target.values()])),
        "r2": float(np.mean(r2)) if r2 else None,
        "num_examples": len(targets),
        "per_target": per_target,
    }


def evaluate_outputs(model: Any, dataset: Any, task: str, names: Sequence[str]) -> dict[str, Any]:
    """The `multilabel_report` or `regression_report` of `model` on a batched dataset, by
    `task` (an `ImageData`'s `task` and `class_names`).

    Example:
    ```python
    report = evaluate_outputs(model, data.validation, data.task, data.class_names)
    ```
    """
    labels, outputs = predict_outputs(model, dataset)
    if task == "multilabel":
        return multilabel_report(labels, outputs, names)
    if task == "regression":
        return regression_report(labels, outputs, names)
    raise ValueError(
        f"task={task!r}: evaluate_outputs reports multilabel and regression models; for "
        "multiclass use predict_labels, confusion_matrix and classification_report."
    )
