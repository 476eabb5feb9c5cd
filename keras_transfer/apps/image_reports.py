"""What an image classifier run leaves behind: the model folder, the results and their
plots, the summary a person reads, and the serving exports.
"""

from __future__ import annotations

import os
from typing import Any

import keras

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps import _outputs
from keras_transfer.apps import export_folder
from keras_transfer.apps import image_tasks
from keras_transfer.apps import image_zero_shot
from keras_transfer.apps.image_config import ADAPT_METHODS
from keras_transfer.apps.image_config import EXPORT_FORMATS
from keras_transfer.apps.image_config import Config
from keras_transfer.apps.image_model import Environment
from keras_transfer.apps.image_training import Trained
from keras_transfer.diagnostics import reports
from keras_transfer.training import two_phase as training
from keras_transfer.utils import distribute
from keras_transfer.utils import files

__all__ = [
    "export",
    "report",
    "summary",
    "write_model_folder",
]


def write_model_folder(
    model: keras.Model,
    class_names: list[str],
    output_dir: str,
    json_files: dict[str, Any] | None = None,
) -> None:
    """`model.keras` for inference (without the optimizer's state and EMA copies),
    `adapter.weights.h5` for a LoRA model, `labels.txt` (line i = output i) and
    `json_files` (`{"config.json": ..., "results.json": ...}`), replaced together: each is
    written and synced beside its name, then all are renamed, so a kill while writing
    leaves the previous set whole."""
    _outputs.save_classifier(model, class_names, output_dir, json_files)


def report(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    trained: Trained,
    environment: Environment,
    image_size: int,
    *,
    class_weight: dict[int, float] | None,
) -> dict[str, Any]:
    """The results of the run (what `results.json` holds), the validation report of the
    saved model, its test report (`test`: evaluated here, once, after every choice was made
    on validation data), and the confusion matrix and training-curve plots in the output
    folder; `class_weight` is what the training loss used (`image_plan.class_weight`).
    A multilabel or regression run gets its task's reports, plot and label thresholds
    instead of the confusion matrix (`image_tasks.task_report`)."""
    history = trained.history
    results: dict[str, Any] = {
        "feature_extraction": history.phase_summary(training.PHASE_HEAD),
        "fine_tune": history.phase_summary(training.PHASE_FINE_TUNE),
        "history": {
            # 1-based over the whole run, as Keras prints them and the plots draw them.
            "epoch": [int(epoch) + 1 for epoch in history.epoch],
            "phase": list(history.phases),
            **{k: list(v) for k, v in history.history.items()},
        },
        "unfrozen_blocks": trained.unfrozen_blocks,
        "task": getattr(data, "task", "multiclass"),
        "class_names": data.class_names,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "num_test": getattr(data, "num_test", 0),
        "skipped_files": data.skipped,
        # Why each file was skipped, and what the loader warned about (e.g. an empty val/).
        "skip_reasons": dict(getattr(data, "skip_reasons", {}) or {}),
        "warnings": list(getattr(data, "warnings", []) or []),
        "validation": data.validation is not None,
        "image_size": image_size,
        "replicas": environment.strategy.num_replicas_in_sync,
        "backend": keras.backend.backend(),
        "accelerator": distribute.accelerator(environment.strategy),
        "dtype_policy": environment.dtype_policy,
        "cached_features": trained.cached_features,
        "class_counts": getattr(data, "class_counts", None),
        "class_weight": {data.class_names[c]: w for c, w in (class_weight or {}).items()},
        "config": config.resolved(image_size),
    }
    saved_weights = _saved_weights(config, trained)
    if saved_weights:
        results["saved_weights"] = saved_weights
    output_dir = environment.output_dir
    if results["task"] == "multiclass":
        _multiclass_reports(config, model, data, results, output_dir)
    else:  # multilabel, regression: the validation and test reports, thresholds, a plot
        task_results = image_tasks.task_report(model, data, output_dir, _run_title(config))
        results["warnings"] += task_results.pop("warnings", [])
        results.setdefault("plots", []).extend(task_results.pop("plots"))
        results.update(task_results)
    if trained.zero_shot is not None:  # its test split read here too, once
        results["zero_shot"] = image_zero_shot.zero_shot_results(trained.zero_shot, data)
    plotted = reports.plot_training_curves(
        history, os.path.join(output_dir, "training_curves.png"), title=_run_title(config)
    )
    if plotted:
        results.setdefault("plots", []).append(os.path.basename(plotted))
    return results


def _multiclass_reports(
    config: Config,
    model: keras.Model,
    data: data_lib.ImageData,
    results: dict[str, Any],
    output_dir: str,
) -> None:
    """A multiclass run's validation report and confusion matrix, and its test report."""
    if data.validation is not None:
        true, predicted = reports.predict_labels(model, data.validation)
        matrix = reports.confusion_matrix(true, predicted, len(data.class_names))
        # Measured on the saved model, whichever epoch's weights it holds.
        results["saved_model_val_accuracy"] = float(matrix.trace() / max(matrix.sum(), 1))
        validation_report = reports.classification_report(matrix, data.class_names)
        validation_report["confusion_matrix"] = matrix.tolist()
        results["validation_report"] = validation_report
        plotted = reports.plot_confusion_matrix(
            matrix,
            data.class_names,
            os.path.join(output_dir, "confusion_matrix.png"),
            title=f"{_run_title(config)}\nvalidation data, {int(matrix.sum())} images",
        )
        if plotted:
            results.setdefault("plots", []).append(os.path.basename(plotted))
    test = getattr(data, "test", None)
    if test is not None:
        true, predicted = reports.predict_labels(model, test)
        matrix = reports.confusion_matrix(true, predicted, len(data.class_names))
        results["test"] = reports.held_out_report(matrix, data.class_names)


def _run_title(config: Config) -> str:
    source = config.dataset or os.path.basename(os.path.normpath(config.data_dir))
    return f"{config.backbone} on {source}"


def summary(results: dict[str, Any], config: Config) -> str:
    """What a person reads at the end of a run: each phase's result, the saved model's
    validation report, its test report (or, without a test set, that the validation
    accuracy is optimistic) and where everything went."""
    lines = []
    phases = [p for p in (training.PHASE_HEAD, training.PHASE_FINE_TUNE) if results.get(p)]
    names = {training.PHASE_HEAD: "head", training.PHASE_FINE_TUNE: "fine-tuning"}
    task = results.get("task", "multiclass")
    for index, phase in enumerate(phases, start=1):
        row = results[phase]
        lines.append(
            f"phase {index}/{len(phases)} ({names[phase]}): "
            + image_tasks.headline(row, task)
            + f"{row['epochs']} epochs, {row['seconds']:.1f} s"
        )
    report = results.get("validation_report")
    if report:
        kept = results.get("saved_weights")
        lines.append(
            f"saved model on {results['num_validation']} validation images"
            + (f" (weights of epoch {kept['epoch']}, {_kept_rule(config)})" if kept else "")
            + (", thresholds chosen on them" if "thresholds" in results else "")
            + ":"
        )
        formatted = (
            reports.format_report if task == "multiclass" else image_tasks.format_task_report
        )
        lines.append(formatted(report))
    lines += (
        _test_summary(results) if task == "multiclass" else image_tasks.task_test_summary(results)
    )
    model_path = os.path.join(config.model_dir, _outputs.MODEL_FILE)
    if files.isfile(model_path):
        size = files.getsize(model_path) / 1e6
        lines.append(f"model.keras: {size:.1f} MB, for inference (no optimizer state)")
    if not results.get("plots"):
        lines.append(
            "plots: skipped, matplotlib is not installed (pip install 'keras-transfer[plot]')"
        )
    lines.append(f"outputs in {config.model_dir} ({results.get('total_seconds', 0):.0f} s in all)")
    return "\n".join(lines)


def _test_summary(results: dict[str, Any]) -> list[str]:
    test = results.get("test")
    if not test:
        if not results.get("validation_report"):
            return []
        return [
            "no test set: the validation accuracy chose the epoch (and the plan), so it is "
            "optimistic; --test_split or --test_dir gives an estimate of new images."
        ]
    low, high = test["accuracy_ci95"]
    return [
        f"test set, {test['num_images']} images never seen before, evaluated once:",
        f"accuracy {test['accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}), macro F1 "
        f"{test['macro_f1']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}",
        # The per-class table (its totals are on the line above).
        *reports.format_report(test).splitlines()[: len(test["per_class"]) + 1],
    ]


def _kept_rule(config: Config) -> str:
    return "the adaptation phase's last" if config.adapt in ADAPT_METHODS else "lowest val_loss"


def _saved_weights(config: Config, trained: Trained) -> dict[str, Any] | None:
    """Which phase and epoch the saved model's weights are from, when it is not simply the
    last epoch of a run without best-epoch restore."""
    history = trained.history
    last_phase = history.phases[-1] if history.phases else None
    if config.adapt in ADAPT_METHODS and last_phase == training.PHASE_FINE_TUNE:
        # Domain adaptation keeps its last epoch (`image_training`: no source-loss restore).
        return {"phase": last_phase, "epoch": int(history.epoch[-1]) + 1}
    if config.restore_best and last_phase:
        return _kept_epoch(history, trained.monitor, last_phase)
    return None


def _kept_epoch(history: kt.TwoPhaseHistory, monitor: str, last_phase: str) -> dict[str, Any]:
    """The phase and 1-based epoch whose weights `restore_best` kept: the lowest `monitor`
    of the last phase, or of both phases when the fine-tuning phase had to beat the head
    phase (validation loss, `carry_over`)."""
    phases = {last_phase}
    if monitor.startswith("val_"):
        phases = set(history.phases)
    indices = [i for i, phase in enumerate(history.phases) if phase in phases]
    values = history.history.get(monitor, [])
    best = min(indices, key=lambda i: (values[i], i)) if values else indices[-1]
    return {"phase": history.phases[best], "epoch": int(history.epoch[best]) + 1}


def export(
    model: keras.Model,
    output_dir: str,
    export_format: str,
    class_names: list[str] | None = None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Exports `model` for serving: `"saved_model"` (`model.export`, a `serve` signature
    taking raw 0-255 float32 images) or `"tflite"` (converted from that SavedModel).

    With `run_config` (the run's resolved settings: an image-folder run with validation
    or test images) and `class_names`, the export is checked as `keras-transfer export`
    checks it (`export_folder.export_run`: the run's validation images, else its test
    images, listed and read again from its folder): top-1 agreement with `model`, the
    accuracy of each, the probability differences. Returns the export's report (`file`,
    `bytes`, and `check` when checked). Each output replaces the previous one only once
    complete, and what a killed export left in `output_dir` is deleted first."""
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {export_format!r}; use {EXPORT_FORMATS}.")
    check_on = "none" if run_config is None else "auto"
    # Always a fresh SavedModel: one left by an earlier run in this folder is stale.
    reports, _ = export_folder.export_run(
        model,
        list(class_names or ()),
        output_dir,
        export_format,
        [None],
        output_dir,
        config=run_config,
        check_on=check_on,
    )
    return reports[0]
