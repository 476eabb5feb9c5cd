"""Reports of multilabel and regression models (a label table's other tasks): mean average
precision and per-label F1, and MAE, RMSE and R² per target, in NumPy, with their plots.

`evaluate_outputs` runs a model over a batched `(images, labels)` dataset (an
`ImageData` split) and returns the report of its task, as plain JSON-ready values.
`best_f1_thresholds` chooses each label's decision threshold on validation data: a sigmoid
output's 0.5 is often not the best cut for a rare label, whose probabilities stay low.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import files

__all__ = [
    "average_precision",
    "best_f1_thresholds",
    "evaluate_outputs",
    "multilabel_report",
    "plot_label_f1",
    "plot_predicted_vs_true",
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
    labels: Any,
    probabilities: Any,
    label_names: Sequence[str],
    threshold: float | Sequence[float] = 0.5,
) -> dict[str, Any]:
    """Mean average precision (over the labels with a positive example), and each label's
    average precision, precision, recall, F1 (at its threshold) and support.

    Args:
        labels: 0/1 array `(examples, labels)`.
        probabilities: the model's sigmoid outputs, same shape.
        label_names: one name per column.
        threshold: a probability at or above it predicts the label: one for every label,
            or one per label (e.g. `best_f1_thresholds` of the validation data).

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
    per_class = np.ndim(threshold) == 1
    if np.ndim(threshold) > 1 or (per_class and len(threshold) != len(label_names)):
        raise ValueError(
            f"threshold must be one number or one per label ({len(label_names)}), got "
            f"{np.shape(threshold)}."
        )
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), (len(label_names),))
    predicted = scores >= thresholds
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
            "threshold": float(thresholds[column]),
        }
    return {
        "mAP": float(np.mean(precisions)) if precisions else None,
        "macro_f1": float(np.mean([row["f1"] for row in per_label.values()])),
        "threshold": [float(t) for t in thresholds] if per_class else float(threshold),
        "num_examples": len(labels),
        "per_label": per_label,
    }


def best_f1_thresholds(labels: Any, probabilities: Any) -> np.ndarray:
    """One decision threshold per label (column): the one maximising that label's F1 on
    these examples (validation data; choosing on test data would make its F1 optimistic).

    Every cut that changes the predictions is tried: the midpoints between consecutive
    distinct probabilities (0 and 1 included, so "predict every example" is one) and 0.5.
    Among the thresholds of the best F1 the one nearest 0.5 wins (then the higher): a label
    without a positive example, whose F1 is 0 at every threshold, keeps 0.5.

    Args:
        labels: 0/1 array `(examples, labels)`.
        probabilities: the model's sigmoid outputs in [0, 1], same shape.

    Returns:
        float64 array `(labels,)` of thresholds in [0, 1]; a probability at or above a
        label's threshold predicts it (as `multilabel_report` applies them).

    Example:
    ```python
    best_f1_thresholds([[1], [1], [0], [0]], [[0.9], [0.3], [0.2], [0.1]])  # -> [0.25]
    ```
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(probabilities, np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape or not len(labels):
        raise ValueError(
            f"labels {labels.shape} and probabilities {scores.shape} must both be (examples, "
            "labels) arrays with at least one example."
        )
    return np.asarray(
        [_best_f1_threshold(labels[:, c] > 0.5, scores[:, c]) for c in range(labels.shape[1])]
    )


def _best_f1_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    values = np.unique(np.r_[0.0, scores, 1.0])
    candidates = np.r_[0.5, (values[:-1] + values[1:]) / 2]
    # Predictions at t: the scores >= t, counted on the sorted scores.
    ranked, positives = np.sort(scores), np.sort(scores[truth])
    predicted = len(ranked) - np.searchsorted(ranked, candidates, side="left")
    hits = len(positives) - np.searchsorted(positives, candidates, side="left")
    # F1 = 2 TP / (predicted + actual positives); 0 without a hit.
    f1 = np.where(hits > 0, 2 * hits / np.maximum(predicted + len(positives), 1), 0.0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    chosen = min(best, key=lambda i: (abs(candidates[i] - 0.5), -candidates[i]))
    return float(candidates[chosen])


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, as the other reports' plots
    from matplotlib import pyplot

    return pyplot


def plot_label_f1(report: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> str:
    """One bar per label of a `multilabel_report`: its F1 at its threshold (written under
    the label's name) and its average precision, labels in the report's order. What the confusion
    matrix is to a multiclass run: which labels the model gets, which it misses. Returns
    the path."""
    pyplot = _pyplot()
    names = list(report["per_label"])
    rows = [report["per_label"][name] for name in names]
    positions = np.arange(len(names))
    figure, axis = pyplot.subplots(figsize=(7, min(max(3.0, 0.55 * len(names) + 2), 40)))
    f1 = [row["f1"] for row in rows]
    ap = [row["average_precision"] or 0.0 for row in rows]
    axis.barh(positions - 0.2, f1, height=0.4, label="F1 at the label's threshold")
    axis.barh(positions + 0.2, ap, height=0.4, label="average precision")
    ticks = [
        f"{name}\nt={row['threshold']:.2f}, n={row['support']}" for name, row in zip(names, rows)
    ]
    axis.set_yticks(positions, ticks, fontsize="small")
    axis.invert_yaxis()  # the first label on top
    axis.set_xlim(0, 1)
    axis.set_xlabel("t: the label's threshold, n: its positive examples", fontsize="small")
    axis.legend(
        fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(names)), ncol=2
    )
    axis.grid(alpha=0.3, axis="x")
    mean_ap = report.get("mAP")
    heading = f"mAP {mean_ap:.3f}, macro F1 {report['macro_f1']:.3f}" if mean_ap is not None else ""
    axis.set_title("\n".join(part for part in (title, heading) if part))
    figure.tight_layout()
    with files.local_output(path) as local:  # a gs:// path: written locally, copied there
        figure.savefig(local, dpi=100, bbox_inches="tight")  # with the legend below
    pyplot.close(figure)
    return os.fspath(path)


def plot_predicted_vs_true(
    targets: Any,
    predictions: Any,
    target_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """A scatter of predicted against true values per target, with the line of perfect
    predictions and the target's MAE and R²: where a regression model is off (a bias, a
    compressed range, outliers). Returns the path."""
    pyplot = _pyplot()
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    predictions = np.asarray(predictions, np.float64).reshape(targets.shape)
    report = regression_report(targets, predictions, target_names)
    count = len(target_names)
    columns = min(count, 3)
    rows = -(-count // columns)
    figure, axes = pyplot.subplots(
        rows, columns, figsize=(4.2 * columns, 4.0 * rows + 0.4), squeeze=False
    )
    for index, name in enumerate(target_names):
        axis = axes[index // columns][index % columns]
        true, guess = targets[:, index], predictions[:, index]
        low, high = float(min(true.min(), guess.min())), float(max(true.max(), guess.max()))
        axis.plot([low, high], [low, high], color="gray", linestyle=":", label="predicted = true")
        axis.scatter(true, guess, s=12, alpha=0.7)
        row = report["per_target"][name]
        r2 = "n/a" if row["r2"] is None else f"{row['r2']:.3f}"
        axis.set_title(f"{name}: MAE {row['mae']:.3g}, R² {r2}", fontsize="medium")
        axis.set_xlabel("true")
        axis.set_ylabel("predicted")
        axis.grid(alpha=0.3)
    for index in range(count, rows * columns):
        axes[index // columns][index % columns].axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    with files.local_output(path) as local:  # a gs:// path: written locally, copied there
        figure.savefig(local, dpi=100)
    pyplot.close(figure)
    return os.fspath(path)
