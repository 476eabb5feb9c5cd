"""The command's model folder: what a run writes there (`RUN_OUTPUTS`), the checks before a
run writes anything (a folder that can be created; no earlier run's outputs replaced
without `--overwrite`), and `remove_run_outputs` for `--overwrite`."""

from __future__ import annotations

import os

from keras_transfer.apps import config as config_lib
from keras_transfer.apps.image_tasks import TASK_OUTPUTS
from keras_transfer.training import two_phase_state
from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = [
    "RESOLVED_CONFIG_FILE",
    "RUN_OUTPUTS",
    "check_model_dir",
    "check_model_dir_reuse",
    "remove_run_outputs",
]


# The settings the run really used (`image_config.Config.resolved`), in model_dir.
RESOLVED_CONFIG_FILE = "config.json"
# What a run writes into model_dir: `--overwrite` deletes these (and only these) first.
RUN_OUTPUTS = (
    RESOLVED_CONFIG_FILE,
    "results.json",
    "model.keras",
    "labels.txt",
    "adapter.weights.h5",
    "training_curves.png",
    "confusion_matrix.png",
    "drift.png",
    "logs",
    "saved_model",
    "model.tflite",
    "model.onnx",
    "export.json",
    "backup",
    *TASK_OUTPUTS,
)


def check_model_dir_reuse(model_dir: str, overwrite: bool, resume: bool) -> None:
    """A model_dir that holds anything (but the lock) is refused unless the run resumes the
    backup in it or `overwrite` is set: a rerun would replace the earlier run's model and
    mix two runs' TensorBoard events."""
    if not files.isdir(model_dir):
        return
    entries = sorted(set(files.listdir(model_dir)) - {reliability.LOCK_FILE})
    state = os.path.join(model_dir, "backup", two_phase_state.STATE_FILE)
    if not entries or overwrite or (resume and files.isfile(state)):
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise config_lib.ConfigError(
        f"model_dir={model_dir!r} (--model_dir) already holds {shown}: a run there "
        "would replace them. Pass --overwrite to replace that run's outputs, or give a new "
        "--model_dir."
    )


def remove_run_outputs(model_dir: str) -> list[str]:
    """Deletes what an earlier run wrote into `model_dir` (`RUN_OUTPUTS`, nothing else);
    returns the names deleted."""
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(model_dir, name)
        if files.isdir(path) and not files.islink(path):
            files.rmtree(path)
        elif files.lexists(path):
            files.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def check_model_dir(model_dir: str) -> None:
    """`model_dir` must be a folder, or a path whose nearest existing part is a writable
    folder (it is created by the run's first write). A remote folder (`gs://...`) is
    checked by the first write."""
    if files.exists(model_dir) and not files.isdir(model_dir):
        raise config_lib.ConfigError(
            f"model_dir={model_dir!r} (--model_dir) is a file, not a folder: give a new or "
            "existing folder for the outputs, or move the file away."
        )
    if files.is_remote(model_dir):
        return
    parent = os.path.dirname(os.path.abspath(model_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise config_lib.ConfigError(
            f"model_dir={model_dir!r} (--model_dir) lies under {parent!r}, which is a file: "
            "give a folder path for the outputs."
        )
    if not os.path.isdir(model_dir) and not os.access(parent, os.W_OK | os.X_OK):
        raise config_lib.ConfigError(
            f"model_dir={model_dir!r} (--model_dir) cannot be created: {parent!r} is not "
            "writable. Give a folder you can write to."
        )
