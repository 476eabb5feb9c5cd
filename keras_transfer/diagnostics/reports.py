"""Reports of a training run: training curves, confusion matrix, per-class precision/recall,
and the held-out test report (accuracy with its Wilson interval, macro F1, balanced accuracy).

The numbers need only numpy; the PNGs are drawn with matplotlib, a base dependency (the
command writes both plots on every run), through its file-only Agg backend.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import files

__all__ = [
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "format_report",
    "held_out_report",
    "macro_f1",
    "plot_confusion_matrix",
    "plot_training_curves",
    "predict_labels",
    "wilson_interval",
]

logger = logging.getLogger("keras_transfer")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and TPU VMs
    from matplotlib import pyplot

    return pyplot


def predict_labels(model: Any, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(true labels, predicted labels)` of a batched `(inputs, labels)` dataset.

    Calls the model batch by batch, so the labels stay aligned with the predictions
    whatever the dataset's shuffling. (Not `predict_on_batch`: under a `MirroredStrategy`
    it returns one copy of the batch's predictions per replica.)
    """
    true, predicted = [], []
    for inputs, labels in dataset:
        scores = keras.ops.convert_to_numpy(model(inputs, training=False)).astype(np.float32)
        true.append(np.asarray(labels).reshape(-1))
        if scores.ndim == 1 or scores.shape[-1] == 1:
            predicted.append((scores.reshape(-1) > (0.5 if scores.min() >= 0 else 0.0)).astype(int))
        else:
            predicted.append(scores.argmax(axis=-1))
    if not true:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    return np.concatenate(true).astype(int), np.concatenate(predicted).astype(int)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """`matrix[i, j]` = number of examples of class `i` predicted as class `j`."""
    y_true = np.asarray(y_true, dtype=int).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=int).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} labels but {y_pred.size} predictions.")
    for name, values in (("labels", y_true), ("predictions", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got {values.min()}..{values.max()}."
            )
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1, support and predicted count of each class (precision 0 for a
    class never predicted, recall 0 for one without examples: scikit-learn's
    `zero_division=0`)."""
    matrix = np.asarray(matrix)
    true_positives = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1).astype(float)
    precision = np.divide(
        true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0
    )
    recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return precision, recall, f1, support, predicted


def macro_f1(matrix: np.ndarray) -> float:
    """The mean F1 of the classes that occur in the labels or the predictions of a
    confusion matrix (scikit-learn's `f1_score(average="macro")`): a class absent from
    both says nothing about the model and is left out; NaN for an empty matrix.

    Example: `macro_f1([[2, 1], [0, 1]])` -> `(0.8 + 2/3) / 2`.
    """
    _, _, f1, support, predicted = _per_class(matrix)
    present = (support > 0) | (predicted > 0)
    return float(f1[present].mean()) if present.any() else float("nan")


def balanced_accuracy(matrix: np.ndarray) -> float:
    """The mean recall of the classes with examples (scikit-learn's
    `balanced_accuracy_score`); NaN for an empty matrix. Accuracy weighs classes by their
    share of the data, so predicting the large class everywhere scores high there, not here.

    Example: `balanced_accuracy([[9, 1], [1, 1]])` -> `(0.9 + 0.5) / 2`.
    """
    _, recall, _, support, _ = _per_class(matrix)
    return float(recall[support > 0].mean()) if (support > 0).any() else float("nan")


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of `correct` out of `total`: where the true
    accuracy lies with `confidence`. Unlike the normal approximation it stays within [0, 1]
    and is not of width 0 at 0 or `total` correct, which matters for small test sets.

    Example: `wilson_interval(8, 10)` -> `(0.4902, 0.9433)` (rounded).
    """
    if total <= 0:
        raise ValueError(f"An interval needs at least one example, got total={total}.")
    if not 0 <= correct <= total:
        raise ValueError(f"correct must lie in [0, total={total}], got {correct}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}.")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    # Exact at the ends: none right has lower bound 0, all right upper bound 1.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def classification_report(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus accuracy,
    macro averages (`macro_f1` as the function: over the classes that occur),
    `balanced_accuracy` (the function) and `recall_per_class` (`{class name: recall}`). A
    class never predicted has precision 0 (as scikit-learn's `zero_division=0`)."""
    matrix = np.asarray(matrix)
    if matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"Confusion matrix of shape {matrix.shape} does not match {len(class_names)} classes."
        )
    precision, recall, f1, support, _ = _per_class(matrix)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    total = matrix.sum()
    return {
        "per_class": per_class,
        "accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": macro_f1(matrix),
        "balanced_accuracy": balanced_accuracy(matrix),
        "recall_per_class": {name: float(recall[i]) for i, name in enumerate(class_names)},
    }


def held_out_report(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """What a test set says about a finished model, from its confusion matrix: `accuracy`,
    `accuracy_ci95` (`[low, high]`, the 95% `wilson_interval`), `macro_f1`,
    `balanced_accuracy`, `per_class` (precision, recall, F1, support), `num_images` and the
    `confusion_matrix`.

    Example:
    ```python
    true, predicted = predict_labels(model, data.test)
    held_out_report(confusion_matrix(true, predicted, 2), ["ants", "bees"])["accuracy_ci95"]
    ```
    """
    report = classification_report(matrix, class_names)
    total = int(np.asarray(matrix).sum())
    if not total:
        raise ValueError("The confusion matrix is empty: no test images to report on.")
    low, high = wilson_interval(int(np.trace(matrix)), total, 0.95)
    return {
        "accuracy": report["accuracy"],
        "accuracy_ci95": [low, high],
        "macro_f1": report["macro_f1"],
        "balanced_accuracy": report["balanced_accuracy"],
        "per_class": report["per_class"],
        "num_images": total,
        "confusion_matrix": np.asarray(matrix).tolist(),
    }


def plot_training_curves(history: Any, path: str | os.PathLike, title: str | None = None) -> str:
    """Plots every metric of a run (train and `val_` together) against the epoch, with the
    boundary between the head phase and fine-tuning marked. Returns the path.

    Args:
        history: a `keras_transfer.TwoPhaseHistory`, or a `keras.callbacks.History`.
        path: the PNG file to write.
        title: above the charts (e.g. the backbone and the dataset).
    """
    pyplot = _pyplot()
    values = history.history
    epochs = [e + 1 for e in history.epoch]
    phases = list(getattr(history, "phases", []) or [])
    names = [k for k in values if not k.startswith("val_") and k != "learning_rate"]
    names += [k[4:] for k in values if k.startswith("val_") and k[4:] not in values]
    figure, axes = pyplot.subplots(
        1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.6), squeeze=False
    )
    boundary = next((i for i in range(1, len(phases)) if phases[i] != phases[i - 1]), None)
    for axis, name in zip(axes[0], names):
        for key, style in ((name, "-o"), (f"val_{name}", "--s")):
            if key in values:
                axis.plot(epochs, values[key], style, markersize=3, label=key)
        if boundary is not None:
            axis.axvline(
                epochs[boundary] - 0.5, color="gray", linestyle=":", label="fine-tuning starts"
            )
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    with files.local_output(path) as local:  # a gs:// path: written locally, copied there
        figure.savefig(local, dpi=100)
    pyplot.close(figure)
    return os.fspath(path)


def plot_confusion_matrix(
    matrix: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """Draws the confusion matrix (rows: true class, columns: predicted) with its counts.
    `title` says what it is of (e.g. "mobilenet on flowers, validation data"). Returns the
    path."""
    pyplot = _pyplot()
    count = len(class_names)
    size = min(max(3.5, 0.45 * count + 2), 30)
    figure, axis = pyplot.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    ticks = range(count)
    axis.set_xticks(ticks, class_names, rotation=90 if count > 4 else 0)
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if title:
        axis.set_title(title)
    if count <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(count):
            for j in range(count):
                axis.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    color="white" if matrix[i, j] > threshold else "black",
                )
    figure.tight_layout()
    with files.local_output(path) as local:  # a gs:// path: written locally, copied there
        figure.savefig(local, dpi=100)
    pyplot.close(figure)
    return os.fspath(path)


def format_report(report: dict[str, Any]) -> str:
    """The per-class table of `classification_report` as text."""
    width = max([len(n) for n in report["per_class"]] + [9])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:5.4f}  {row['support']:7d}"
        )
    accuracy = report["accuracy"]
    lines.append(f"accuracy {accuracy:.4f}" if not math.isnan(accuracy) else "accuracy n/a")
    lines.append(f"macro F1 {report['macro_f1']:.4f}")
    if "balanced_accuracy" in report and not math.isnan(report["balanced_accuracy"]):
        lines.append(f"balanced accuracy {report['balanced_accuracy']:.4f}")
    return "\n".join(lines)
