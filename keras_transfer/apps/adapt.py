"""Source-free adaptation of a trained model to a folder of unlabeled target images:
AdaBN, TENT or SHOT, for `keras-transfer adapt` and `keras-transfer train --adapt=...`.

`adapt_model` runs one method with the command's declared defaults (`METHOD_DEFAULTS`,
nothing chosen on target labels) and measures, label-free, what it changed on the target
images: the mean prediction entropy, the predicted class shares and the share of images
whose top class stayed the same. When the target folder is labelled (subfolders named like
the classes) the target accuracy before and after is reported beside them; it chooses
nothing.

A method whose predictions collapse onto fewer classes (`collapsed`: the entropy of the
predicted class shares falls below `COLLAPSE_FRACTION` of its value before) is undone: the
model keeps its weights from before adaptation, with a warning and `"collapse"` in the
report (`AdaptSettings(revert_collapse=False)` keeps the collapsed model). Entropy
minimisation is known to end there (SAR, Niu et al., ICLR 2023, resets a model whose
entropy collapses); SHOT did on four of five seeds of the photo_shift task
(benchmarks/results/command_adapt_photo_shift.json: class shares after 0.0 / 1.0).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import keras
import numpy as np

from keras_transfer import data as data_lib
from keras_transfer.adaptation import test_time
from keras_transfer.apps import _outputs
from keras_transfer.apps import predict as predict_lib
from keras_transfer.apps.image_config import RESOLVED_CONFIG_FILE
from keras_transfer.apps.image_config import SOURCE_FREE_METHODS
from keras_transfer.diagnostics import reports

__all__ = [
    "ADAPT_FILE",
    "COLLAPSE_FRACTION",
    "METHOD_DEFAULTS",
    "SOURCE_FREE_METHODS",
    "AdaptSettings",
    "adapt_model",
    "adapt_model_dir",
    "class_share_entropy",
    "collapsed",
    "default_output_dir",
    "target_predictions",
    "labelled_test_report",
]

logger = logging.getLogger("keras_transfer")

ADAPT_FILE = "adapt.json"
# The papers' settings where they carry over (TENT: one online pass at Adam 1e-3; SHOT: a
# few epochs, pseudo-label weight 0.3) and the package's fine-tuning rate for SHOT's
# backbone. Declared, not tuned on any target.
METHOD_DEFAULTS = {
    "adabn": {"epochs": 0, "learning_rate": 0.0},
    "tent": {"epochs": 1, "learning_rate": 1e-3},
    # BatchNormalization frozen: training it (SHOT's reference) kept photo_shift's predictions
    # balanced but lost accuracy, where frozen ones collapse and the model is restored.
    # min_unchanged: the label-free stop (fit_shot), declared before photo_shift measured it:
    # an epoch that changes the top class of more than 20% of the target images is undone.
    "shot": {"epochs": 5, "learning_rate": 1e-4, "train_bn": False, "min_unchanged": 0.8},
}

# Declared before any run measured it: half the class-share entropy is lost (two balanced
# classes falling to about 89% / 11%, or further).
COLLAPSE_FRACTION = 0.5


@dataclasses.dataclass
class AdaptSettings:
    """How `adapt_model` adapts: the method, and its epochs, learning rate, `train_bn` and
    `min_unchanged` (`None`: `METHOD_DEFAULTS`); `unfreeze` and `train_bn` are SHOT's
    trained blocks and `min_unchanged` its label-free stop (`fit_shot`; 0: none);
    `revert_collapse` undoes an adaptation whose predictions collapse (`collapsed`)."""

    method: str
    epochs: int | None = None
    learning_rate: float | None = None
    unfreeze: int | float | str = "all"
    train_bn: bool | None = None
    min_unchanged: float | None = None
    revert_collapse: bool = True

    def resolved(self) -> dict[str, Any]:
        if self.method not in SOURCE_FREE_METHODS:
            raise ValueError(
                f"adapt={self.method!r}: the methods without source data are "
                f"{', '.join(SOURCE_FREE_METHODS)}."
            )
        defaults = METHOD_DEFAULTS[self.method]
        epochs = defaults["epochs"] if self.epochs is None else self.epochs
        rate = defaults["learning_rate"] if self.learning_rate is None else self.learning_rate
        if self.method != "adabn" and (epochs < 1 or not rate > 0):
            raise ValueError(
                f"adapt={self.method!r} needs epochs >= 1 and a learning rate > 0, got "
                f"{epochs} and {rate}."
            )
        if self.method != "shot" and (self.unfreeze != "all" or self.train_bn is not None):
            raise ValueError(
                f"unfreeze and train_bn are SHOT's settings (the backbone it trains), not "
                f"{self.method}'s: leave them out, or use method='shot'."
            )
        min_unchanged = self._or_default("min_unchanged", None)
        if min_unchanged is not None and not 0.0 <= min_unchanged <= 1.0:
            raise ValueError(
                f"min_unchanged must be between 0 (no stop) and 1, got {min_unchanged}."
            )
        return {
            **dataclasses.asdict(self),
            "epochs": epochs,
            "learning_rate": rate,
            "train_bn": self._or_default("train_bn", False),
            "min_unchanged": min_unchanged,
        }

    def _or_default(self, name: str, absent: Any) -> Any:
        """The setting `name`, or the method's default (`absent` if it has none)."""
        value = getattr(self, name)
        return METHOD_DEFAULTS[self.method].get(name, absent) if value is None else value


def target_predictions(model: keras.Model, images: Any) -> np.ndarray:
    """`(n, classes)` class probabilities of the fixed-order target images."""
    return test_time.class_probabilities(model, model.predict(images, verbose=0))


def _label_free(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    def entropy(p):
        return float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1).mean())

    return {
        "mean_entropy_before": round(entropy(before), 6),
        "mean_entropy_after": round(entropy(after), 6),
        "class_shares_before": _class_shares(before),
        "class_shares_after": _class_shares(after),
        "unchanged_top1": round(test_time.top1_unchanged(before, after), 6),
    }


def _class_counts(probabilities: np.ndarray) -> np.ndarray:
    """How many images are predicted as each class."""
    probabilities = np.asarray(probabilities)
    return np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1])


def _class_shares(probabilities: np.ndarray) -> list[float]:
    return [round(float(c) / len(probabilities), 4) for c in _class_counts(probabilities)]


def class_share_entropy(probabilities: np.ndarray) -> float:
    """The entropy (nats) of the shares of images predicted as each class: 0 when every
    image gets the same class, log(classes) when the classes are predicted equally often."""
    counts = _class_counts(probabilities)
    shares = counts[counts > 0] / len(probabilities)
    return float(-(shares * np.log(shares)).sum())


def collapsed(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether the predictions `after` adaptation fall onto fewer classes than `before`: the
    class-share entropy below `COLLAPSE_FRACTION` of its value before (never when every
    image had one class before)."""
    entropy_before = class_share_entropy(before)
    return entropy_before > 0 and class_share_entropy(after) < COLLAPSE_FRACTION * entropy_before


def _accuracy(model: keras.Model, labelled: Any) -> float | None:
    if labelled is None:
        return None
    true, predicted = reports.predict_labels(model, labelled)
    return float((true == predicted).mean())


def adapt_model(
    model: keras.Model, target: data_lib.TargetImages, settings: AdaptSettings, verbose: int = 0
) -> dict[str, Any]:
    """Adapts `model` in place to `target` (`target.unshuffled`: SHOT needs a fixed order)
    and returns the report: settings, seconds, the label-free measures and, for a labelled
    target, the accuracy before and after. `"label_free"` describes what the method did;
    `"target_accuracy_after"` is the model kept (the one from before adaptation when
    `"collapse"` says it was undone)."""
    resolved = settings.resolved()
    accuracy_before = _accuracy(model, target.labelled)
    before = target_predictions(model, target.unshuffled)
    # Every variable (BatchNorm statistics included), copied only when a collapse may undo it.
    initial = model.get_weights() if settings.revert_collapse else None
    start = time.perf_counter()
    epochs = _run_method(model, target, settings, resolved, verbose)
    seconds = time.perf_counter() - start
    after = target_predictions(model, target.unshuffled)
    collapse = _undo_collapse(model, initial, before, after, settings)
    report = {
        "method": settings.method,
        "settings": resolved,
        "selection": "declared defaults (METHOD_DEFAULTS) or the flags; nothing read target labels",
        "seconds": round(seconds, 2),
        "target_images": target.num_images,
        "target_labelled": target.labelled is not None,
        "target_labelled_reason": target.labelled_reason,
        "label_free": _label_free(before, after),
        "epochs": epochs,
        "collapse": collapse,
        "target_accuracy_before": accuracy_before,
        "target_accuracy_after": _accuracy(model, target.labelled),
    }
    _log_report(report, target.num_images)
    return report


def _undo_collapse(model, initial, before, after, settings: AdaptSettings) -> dict[str, Any]:
    """The report's `"collapse"`; with `revert_collapse`, a collapsed model gets its
    `initial` weights back (`"kept": "before_adaptation"`)."""
    detected = collapsed(before, after)
    kept = "before_adaptation" if detected and settings.revert_collapse else "adapted"
    if detected:
        logger.warning(
            "%s collapsed the target predictions onto fewer classes (class shares %s -> %s); %s.",
            settings.method,
            _class_shares(before),
            _class_shares(after),
            "the model keeps its weights from before adaptation"
            if kept != "adapted"
            else "kept as adapted (revert_collapse=False)",
        )
    if kept != "adapted":
        model.set_weights(initial)
    return {
        "class_share_entropy_before": round(class_share_entropy(before), 6),
        "class_share_entropy_after": round(class_share_entropy(after), 6),
        "collapse_fraction": COLLAPSE_FRACTION,
        "detected": detected,
        "kept": kept,
    }


def _run_method(model, target, settings: AdaptSettings, resolved: dict, verbose: int) -> dict:
    """Runs the method; returns the report's `"epochs"` (SHOT: each epoch's unchanged share
    and how many epochs its label-free stop kept; others: empty)."""
    if settings.method == "adabn":
        test_time.adapt_batchnorm(model, target.unshuffled)
    elif settings.method == "tent":
        test_time.fit_tent(
            model,
            target.images,
            epochs=resolved["epochs"],
            learning_rate=resolved["learning_rate"],
            verbose=verbose,
        )
    else:
        history = test_time.fit_shot(
            model,
            target.unshuffled,
            epochs=resolved["epochs"],
            learning_rate=resolved["learning_rate"],
            unfreeze=settings.unfreeze,
            train_bn=resolved["train_bn"],
            min_unchanged=resolved["min_unchanged"] or None,
            verbose=verbose,
        )
        return {
            "unchanged_top1": [round(v, 6) for v in history.history["unchanged_top1"]],
            "kept": history.kept_epochs,
        }
    return {}


def _log_report(report: dict[str, Any], num_images: int) -> None:
    accuracy_before = report["target_accuracy_before"]
    logger.info(
        "%s: mean target entropy %.4f -> %.4f, top-1 unchanged on %.1f%% of %d images%s",
        report["method"],
        report["label_free"]["mean_entropy_before"],
        report["label_free"]["mean_entropy_after"],
        100 * report["label_free"]["unchanged_top1"],
        num_images,
        ""
        if accuracy_before is None
        else f"; target accuracy {accuracy_before:.4f} -> {report['target_accuracy_after']:.4f}",
    )


def _labelled_test(test: data_lib.TargetImages, test_dir: str) -> Any:
    """The labelled batches of the test folder; a `ValueError` when it has no labels."""
    if test.labelled is None:
        raise ValueError(
            f"test_dir {test_dir!r} has no labels to test with: {test.labelled_reason}. Put "
            "its images in subfolders named like the model's classes (labels.txt)."
        )
    return test.labelled


def labelled_test_report(
    model: keras.Model, labelled: Any, class_names: list[str]
) -> dict[str, Any]:
    """The held-out report (`reports.held_out_report`: accuracy, its interval, balanced
    accuracy, macro F1) of `model` on labelled batches, as `train --test_dir` writes it."""
    true, predicted = reports.predict_labels(model, labelled)
    matrix = reports.confusion_matrix(true, predicted, len(class_names))
    return reports.held_out_report(matrix, class_names)


def default_output_dir(model_dir: str, method: str) -> str:
    """Where `keras-transfer adapt` writes without `--output_dir`: a folder beside the
    trained one, `<model_dir>_<method>` (e.g. `runs/ants_vs_bees_tent`)."""
    return os.path.normpath(model_dir) + f"_{method}"


def adapt_model_dir(
    model_dir: str,
    target_dir: str,
    output_dir: str | None,
    settings: AdaptSettings,
    *,
    test_dir: str | None = None,
    batch_size: int = 32,
    max_pixels: int | None = 50_000_000,
    safe_mode: bool = True,
    verbose: int = 0,
) -> dict[str, Any]:
    """`keras-transfer adapt`: loads the trained model of `model_dir`, reads `target_dir`'s
    images as that run read its validation images, adapts, and writes `model.keras`,
    `labels.txt` and `adapt.json` to `output_dir` (never to `model_dir`; `None`:
    `default_output_dir`). The report's `"output_dir"` says where. With `test_dir`, a
    labelled folder (subfolders named like the classes) read the same way, the report's
    `"test"` holds the test report of the model before and after adaptation (`"before"`,
    `"after"`): the same images, so the difference is the adaptation's alone. It chooses
    nothing."""
    settings.resolved()  # a bad method or rate stops before anything is read
    output_dir = output_dir or default_output_dir(model_dir, settings.method)
    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise ValueError(
            f"output_dir {output_dir!r} is the trained model's folder: the adapted model goes "
            "to a folder of its own (--output_dir), so the source model stays."
        )
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FileExistsError(
            f"output_dir {output_dir!r} is not empty: give a new folder, or remove it first."
        )
    model, class_names = predict_lib.load_trained(model_dir, safe_mode=safe_mode)
    decode = predict_lib.decode_settings(model_dir)

    def read(folder: str) -> data_lib.TargetImages:
        return data_lib.target_image_dataset(
            folder,
            class_names,
            image_size=tuple(model.input_shape[1:3]),
            batch_size=batch_size,
            crop_fraction=decode["crop_fraction"],
            resize=decode["resize"],
            max_pixels=max_pixels,
        )

    target = read(target_dir)
    test = None if test_dir is None else read(test_dir)
    labelled = None if test is None else _labelled_test(test, test_dir)
    test_before = None if test is None else labelled_test_report(model, labelled, class_names)
    report = adapt_model(model, target, settings, verbose=verbose)
    if test is not None:
        report["test"] = {
            "before": test_before,
            "after": labelled_test_report(model, labelled, class_names),
            "skipped": test.skipped,
        }
    report.update(
        output_dir=os.path.abspath(output_dir),
        model_dir=os.path.abspath(model_dir),
        target_dir=os.path.abspath(target_dir),
        target_skipped=target.skipped,
    )
    files = {ADAPT_FILE: report}
    run_config = predict_lib.read_run_config(model_dir)
    if run_config is not None:  # `predict` reads the adapted folder's images alike
        files[RESOLVED_CONFIG_FILE] = run_config
    os.makedirs(output_dir, exist_ok=True)
    _outputs.save_classifier(model, list(class_names), output_dir, files)
    return report
