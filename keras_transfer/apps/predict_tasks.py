"""Predictions of a multilabel or regression run (`keras-transfer train --task=...`): what
`keras-transfer predict` prints for them, the task read from the run's `config.json`.

- multilabel: every label whose probability is at or above its threshold (the run's
  `thresholds.json`, chosen on its validation images), most probable first, and the
  probability of every label: `{"file", "labels", "probabilities", "all_probabilities"}`;
- regression: the predicted value of each target: `{"file", "values": {target: value}}`.

```python
settings = task_settings(model_dir, model, labels, read_run_config(model_dir))
rows, skipped = predict_files(model, labels, ["photos/"], **settings)
rows[0]  # -> {"file": ..., "labels": ["cat", "outdoor"], "probabilities": [0.93, 0.71], ...}
```
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_transfer.apps.image_tasks import THRESHOLDS_FILE
from keras_transfer.data.tables import TABLE_TASKS
from keras_transfer.utils import files

__all__ = ["format_task_rows", "load_thresholds", "run_task", "task_row", "task_settings"]


def run_task(config: dict[str, Any] | None, model: keras.Model | None = None) -> str:
    """The task of a run: its `config.json`'s `task` (`config`, read by
    `predict.read_run_config`), else the task of `model`'s head (a multilabel or
    regression `ClassificationHead`), else `"multiclass"`."""
    task = (config or {}).get("task")
    if task is None:
        head_task = getattr(getattr(model, "head", None), "task", None)
        task = head_task if head_task in TABLE_TASKS else "multiclass"
    if task not in TABLE_TASKS:
        raise ValueError(
            f"config.json has task={task!r}, which is not one of {', '.join(TABLE_TASKS)}: "
            "restore the run's config.json."
        )
    return task


def load_thresholds(model_dir: str, labels: Sequence[str]) -> list[float]:
    """The threshold of each of `labels` (in their order) from the `thresholds.json` a
    multilabel run wrote beside its model (`{label: threshold}`)."""
    path = os.path.join(model_dir, THRESHOLDS_FILE)
    restore = (
        "Restore the run's thresholds.json, or write {label: threshold, ...} into it (0.5 "
        "for each label predicts at the sigmoid's midpoint)."
    )
    if not files.isfile(path):
        raise FileNotFoundError(
            f"{path!r} does not exist: a multilabel run keeps there the threshold of each "
            f"label, chosen on its validation images. {restore}"
        )
    try:
        with files.open_file(path, encoding="utf-8") as f:
            thresholds = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path!r} ({error}). {restore}") from error
    if not isinstance(thresholds, dict) or set(thresholds) != set(labels):
        found = sorted(thresholds) if isinstance(thresholds, dict) else type(thresholds).__name__
        raise ValueError(
            f"{path!r} must map each of the model's labels {list(labels)} to a threshold, "
            f"got {found}. {restore}"
        )
    bad = {
        name: value
        for name, value in thresholds.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
    }
    if bad:
        raise ValueError(f"{path!r}: thresholds must lie in [0, 1], got {bad}. {restore}")
    return [float(thresholds[name]) for name in labels]


def task_settings(
    model_dir: str, model: keras.Model, labels: Sequence[str], config: dict[str, Any] | None
) -> dict[str, Any]:
    """`{"task", "thresholds"}` for `predict.predict_files` of the run in `model_dir`
    (`config`: its `config.json`); thresholds only for a multilabel run."""
    task = run_task(config, model)
    thresholds = load_thresholds(model_dir, labels) if task == "multilabel" else None
    return {"task": task, "thresholds": thresholds}


def task_row(
    path: str,
    outputs: np.ndarray,
    labels: Sequence[str],
    task: str,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One image's row of a multilabel model (the labels at or above their threshold, 0.5
    without `thresholds`) or of a regression model (each target's value)."""
    outputs = np.asarray(outputs, np.float64).reshape(-1)
    if task == "regression":
        return {
            "file": path,
            "values": {name: round(float(v), 6) for name, v in zip(labels, outputs)},
        }
    if task != "multilabel":
        raise ValueError(f"task={task!r}: task_row is for multilabel and regression rows.")
    cuts = np.full(len(labels), 0.5) if thresholds is None else np.asarray(thresholds)
    if cuts.shape != outputs.shape:
        raise ValueError(f"{len(cuts)} thresholds for {outputs.size} labels: give one per label.")
    chosen = [i for i in np.argsort(-outputs, kind="stable") if outputs[i] >= cuts[i]]
    return {
        "file": path,
        "labels": [labels[i] for i in chosen],
        "probabilities": [round(float(outputs[i]), 6) for i in chosen],
        "all_probabilities": {name: round(float(p), 6) for name, p in zip(labels, outputs)},
    }


def _value(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def format_task_rows(rows: Sequence[dict[str, Any]], task: str, output_format: str) -> str:
    """`task_row` rows as a table, JSON lines or CSV: the file, (multilabel) its labels
    joined by `;`, then one column per label's probability or per target's value."""
    if output_format == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    key = "all_probabilities" if task == "multilabel" else "values"
    names = list(rows[0][key]) if rows else []
    header = ["file", *(["labels"] if task == "multilabel" else []), *names]
    table = []
    for row in rows:
        cells = [row["file"]]
        if task == "multilabel":
            cells.append(";".join(row["labels"]))
            cells += [f"{row[key][name]:.6f}" for name in names]
        else:
            cells += [_value(row[key][name]) for name in names]
        table.append(cells)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *table])
        return buffer.getvalue()
    if output_format != "table":
        raise ValueError(f"Unknown format {output_format!r}; use table, jsonl or csv.")
    if task == "multilabel":
        table = [[cells[0], cells[1] or "-", *(c[:6] for c in cells[2:])] for cells in table]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *table)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip() for cells in [header, *table]
    ]
    return "\n".join(lines) + "\n"
