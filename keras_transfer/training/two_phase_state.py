"""The record of a two-phase run (`two_phase.fit_two_phase`): the history of both phases on
one epoch axis, and the small JSON state that makes a run resumable.

The JSON file (`STATE_FILE`, in the run's `backup_dir`) holds the run's settings, whether
phase 1 finished, phase 2's first epoch and every finished epoch's logs and duration;
`EpochRecorder` writes the epochs as they end. Model and optimizer state live in Keras' own
backup files beside it.

A run kept after training (`fit_two_phase(keep_backup=True)`) is marked finished, with the
model's final values (`FINAL_WEIGHTS_FILE`): the caller writes its outputs, then deletes the
backup (`delete_backup`); a rerun after a kill in between restores those values instead of
training again. `check_backup_settings` compares a caller's own settings with the backup's
before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from keras_transfer.utils import files
from keras_transfer.utils import reliability

__all__ = [
    "CALLER_SETTINGS",
    "FINAL_WEIGHTS_FILE",
    "HEAD_WEIGHTS_FILE",
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "STATE_FILE",
    "BackupSettingsError",
    "EpochRecorder",
    "RunState",
    "TwoPhaseHistory",
    "check_backup_settings",
    "delete_backup",
    "resume_settings",
]

PHASE_HEAD = "feature_extraction"
PHASE_FINE_TUNE = "fine_tune"
STATE_FILE = "two_phase_state.json"
HEAD_WEIGHTS_FILE = "feature_extraction_done.weights.h5"
FINAL_WEIGHTS_FILE = "final_values.npz"
# The key of the caller's own settings (`fit_two_phase(backup_settings=...)`) in the state.
CALLER_SETTINGS = "caller_settings"


class BackupSettingsError(ValueError):
    """A backup was written by a run with other settings: resuming it would mix two runs."""


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`name (backup: X, this run: Y)` for each setting that differs, the caller's own
    settings by their names."""

    def flat(settings):
        values = {k: v for k, v in settings.items() if k != CALLER_SETTINGS}
        return {**dict(settings.get(CALLER_SETTINGS) or {}), **values}

    saved, current = flat(saved), flat(current)
    missing = "<not recorded>"
    return [
        f"{name} (backup: {saved.get(name, missing)!r}, this run: {current.get(name, missing)!r})"
        for name in sorted(set(saved) | set(current), key=str)
        if saved.get(name, missing) != current.get(name, missing)
    ]


def _refusal(directory: str, differences: list[str]) -> BackupSettingsError:
    return BackupSettingsError(
        f"{directory!r} holds the backup of a run with other settings: "
        f"{'; '.join(differences)}. Resume with the backup's settings, or delete the folder "
        "to start over."
    )


def _read_state(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, STATE_FILE)
    if not files.exists(path):
        return None
    with files.open_file(path, encoding="utf-8") as f:
        return json.load(f)


def check_backup_settings(backup_dir: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raises `BackupSettingsError` naming every setting of `settings` that differs from
    the caller settings the backup in `backup_dir` recorded (`fit_two_phase(...,
    backup_settings=settings)`); nothing when there is no backup. Lets an application
    refuse a resume before it writes anything."""
    directory = os.fspath(backup_dir)
    saved = _read_state(directory)
    if saved is None:
        return
    recorded = dict(saved.get("settings", {}).get(CALLER_SETTINGS) or {})
    differences = _differences(
        {CALLER_SETTINGS: recorded}, {CALLER_SETTINGS: json.loads(json.dumps(dict(settings)))}
    )
    if differences:
        raise _refusal(directory, differences)


def resume_settings(run: Any) -> dict[str, Any]:
    """The settings a backup of a `fit_two_phase` call (`run`: its arguments, by name) is
    resumed with: a rerun with other settings is refused."""
    return {
        # Not the model name: Keras numbers default names per process.
        "num_weights": len(run.model.weights),
        "head_epochs": run.head_epochs,
        "fine_tune_epochs": run.fine_tune_epochs,
        # The backup restores the optimizer's learning-rate variable: a rerun with
        # another rate would silently train at the old one, so it is refused.
        "head_lr": float(run.head_lr),
        "fine_tune_lr": float(run.fine_tune_lr),
        "unfreeze": str(run.unfreeze),
        "train_bn": bool(run.train_bn),
        "lr_decay": run.lr_decay,
        # The records and Keras' backups are keyed by absolute epoch numbers.
        "initial_epoch": run.initial_epoch,
        "cached_head_phase": run.head_features is not None,
        # Only when set, so that backups of runs without them stay resumable.
        **(
            {"fine_tune": run.fine_tune, "lora_rank": run.lora_rank, "lora_alpha": run.lora_alpha}
            if run.fine_tune == "lora"
            else {}
        ),
        # Other layers adapted, other LoRA variables in the backup; only when set, as above.
        **(
            {"lora_targets": json.loads(json.dumps(run.lora_targets))}
            if run.fine_tune == "lora" and run.lora_targets is not None
            else {}
        ),
        # Only when set, so that backups of runs without weights stay resumable.
        **(
            {"class_weight": json.loads(json.dumps(run.class_weight))}
            if run.class_weight is not None
            else {}
        ),
        # The average lives in the optimizer's variables; only when on, as above.
        **({"ema_momentum": float(run.ema_momentum)} if run.ema_momentum else {}),
        # The caller's own (image size, data, ...), only when given.
        **(
            {CALLER_SETTINGS: json.loads(json.dumps(dict(run.backup_settings)))}
            if run.backup_settings is not None
            else {}
        ),
    }


def delete_backup(backup_dir: str | os.PathLike) -> None:
    """Deletes a two-phase backup: what `fit_two_phase` does at the end unless
    `keep_backup=True`. The state file goes before the final values, so a kill midway
    leaves either a finished backup or none."""
    directory = os.fspath(backup_dir)
    for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
        files.rmtree(os.path.join(directory, phase), ignore_errors=True)
    for name in (HEAD_WEIGHTS_FILE, STATE_FILE, FINAL_WEIGHTS_FILE):
        path = os.path.join(directory, name)
        if files.exists(path):
            files.remove(path)
    if files.isdir(directory) and not files.listdir(directory):
        files.remove_empty_dir(directory)


@dataclasses.dataclass
class TwoPhaseHistory:
    """The merged history of both phases, on one epoch timeline.

    Attributes:
        history: metric name -> one value per epoch, as in `keras.callbacks.History`.
        epoch: epoch indices (phase 2 continues from phase 1's count).
        phases: the phase of each epoch: `"feature_extraction"` or `"fine_tune"`.
        seconds: wall time of each phase.
        unfrozen_blocks: the blocks trained in phase 2.
    """

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    epoch: list[int] = dataclasses.field(default_factory=list)
    phases: list[str] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    unfrozen_blocks: list[str] = dataclasses.field(default_factory=list)

    def add(self, phase: str, keras_history: keras.callbacks.History, seconds: float) -> None:
        epochs = list(keras_history.epoch)
        for key, values in keras_history.history.items():
            column = self.history.setdefault(key, [float("nan")] * len(self.epoch))
            column.extend(float(v) for v in values)
        self.epoch.extend(epochs)
        self.phases.extend([phase] * len(epochs))
        for column in self.history.values():
            column.extend([float("nan")] * (len(self.epoch) - len(column)))
        self.seconds[phase] = seconds

    def phase_metrics(self, phase: str) -> dict[str, float]:
        """The metrics of the last epoch of `phase` (empty if it did not run)."""
        indices = [i for i, p in enumerate(self.phases) if p == phase]
        if not indices:
            return {}
        return {key: values[indices[-1]] for key, values in self.history.items()}

    def best_phase_metrics(self, phase: str, monitor: str = "val_accuracy", mode: str = "max"):
        """The metrics of the best epoch of `phase` by `monitor`."""
        indices = [i for i, p in enumerate(self.phases) if p == phase]
        if not indices or monitor not in self.history:
            return {}
        pick = max if mode == "max" else min
        best = pick(indices, key=lambda i: self.history[monitor][i])
        return {"epoch": self.epoch[best], **{k: v[best] for k, v in self.history.items()}}

    def phase_summary(self, phase: str, monitor: str = "val_accuracy") -> dict[str, Any]:
        """A JSON-ready summary of `phase`: last-epoch metrics, epoch count, wall time and,
        when `monitor` was logged, the best epoch (1-based) and its value."""
        last = self.phase_metrics(phase)
        if not last:
            return {}
        summary = {key: float(value) for key, value in last.items()}
        summary["epochs"] = self.phases.count(phase)
        summary["seconds"] = round(self.seconds.get(phase, 0.0), 2)
        best = self.best_phase_metrics(phase, monitor)
        if best:
            summary["best_epoch"] = int(best["epoch"]) + 1
            summary[f"best_{monitor}"] = float(best[monitor])
        return summary


class EpochRecorder(keras.callbacks.Callback):
    """Writes each finished epoch's logs and duration to the run state."""

    def __init__(self, state: RunState, phase: str):
        super().__init__()
        self.state = state
        self.phase = phase
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.state.record_epoch(epoch, self.phase, logs or {}, time.perf_counter() - self._start)


class RunState:
    """The JSON that makes a two-phase run resumable: settings, phase-1 completion and
    per-epoch logs. Model and optimizer state live in Keras' own files beside it."""

    def __init__(self, directory: str | os.PathLike, settings: dict[str, Any]):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, STATE_FILE)
        self.head_weights_path = os.path.join(self.directory, HEAD_WEIGHTS_FILE)
        self.final_weights_path = os.path.join(self.directory, FINAL_WEIGHTS_FILE)
        self.data: dict[str, Any] = {"settings": settings, "head_done": False, "epochs": {}}
        saved = _read_state(self.directory)
        if saved is not None:
            if saved.get("settings") != settings:
                raise _refusal(self.directory, _differences(saved.get("settings", {}), settings))
            self.data = saved
        else:
            self._save()

    @property
    def head_done(self) -> bool:
        return bool(self.data["head_done"]) and files.exists(self.head_weights_path)

    def phase_dir(self, phase: str) -> str:
        return os.path.join(self.directory, phase)

    def record_epoch(self, epoch: int, phase: str, logs: dict, seconds: float) -> None:
        values = {}
        for key, value in logs.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.data["epochs"][str(epoch)] = {"phase": phase, "seconds": seconds, "logs": values}
        self._save()

    @property
    def fine_tune_initial_epoch(self) -> int | None:
        """Phase 2's first epoch, recorded when phase 1 finished (None before, and in
        backups written before it was recorded)."""
        epoch = self.data.get("fine_tune_initial_epoch")
        return None if epoch is None else int(epoch)

    def epochs_of(self, phase: str) -> list[int]:
        """The recorded epochs of `phase`, in every process that worked on this run."""
        return sorted(int(epoch) for epoch, r in self.data["epochs"].items() if r["phase"] == phase)

    def finish_head_phase(self, model: keras.Model, fine_tune_initial_epoch: int) -> bool:
        """After phase 2 is compiled: save or restore the end-of-phase-1 weights; True if
        restored. Saving also records phase 2's first epoch, for every resumed run.

        The phase-2 optimizer is built first so that the weights file holds its (fresh)
        state, and the same file loads into a rerun's identically compiled model.
        """
        model.optimizer.build(model.trainable_variables)
        if self.head_done:
            model.load_weights(self.head_weights_path)
            return True
        reliability.write_atomically(self.head_weights_path, model.save_weights)
        self.data["head_done"] = True
        self.data["fine_tune_initial_epoch"] = fine_tune_initial_epoch
        self._save()
        files.rmtree(self.phase_dir(PHASE_HEAD), ignore_errors=True)
        return False

    def history(self, unfrozen_blocks: list[str]) -> TwoPhaseHistory:
        result = TwoPhaseHistory(unfrozen_blocks=list(unfrozen_blocks))
        records = sorted(self.data["epochs"].items(), key=lambda item: int(item[0]))
        for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
            chosen = [(int(epoch), r) for epoch, r in records if r["phase"] == phase]
            if not chosen:
                continue
            keys = list(dict.fromkeys(k for _, r in chosen for k in r["logs"]))
            history = keras.callbacks.History()
            history.epoch = [epoch for epoch, _ in chosen]
            history.history = {k: [r["logs"].get(k, float("nan")) for _, r in chosen] for k in keys}
            result.add(phase, history, sum(r["seconds"] for _, r in chosen))
        return result

    @property
    def finished(self) -> bool:
        """Whether training finished and the model's final values are kept."""
        return bool(self.data.get("finished")) and files.exists(self.final_weights_path)

    def finish(self, model: keras.Model) -> None:
        """Keeps the model's final values (every variable, LoRA matrices included: what
        the outputs are written from) and marks the run finished; Keras' epoch backups,
        no longer needed, are deleted."""
        values = {
            f"{i:05d}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.variables)
        }

        def write(path):
            with files.open_file(path, "wb") as f:
                np.savez(f, **values)

        reliability.write_atomically(self.final_weights_path, write)
        self.data["finished"] = True
        self._save()
        for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
            files.rmtree(self.phase_dir(phase), ignore_errors=True)
        # The end-of-phase-1 weights stay until `delete_backup`: a caller that keeps the
        # backup may start from them (WiSE-FT interpolates from them to the final weights).

    def restore_final_values(self, model: keras.Model) -> None:
        """Sets the model's variables to the final values `finish` kept; the model must be
        built as the run's was at its end (phase 2 unfrozen, LoRA enabled)."""
        with np.load(files.readable(self.final_weights_path)) as stored:
            values = [stored[key] for key in sorted(stored.files)]
        variables = model.variables
        shapes_match = len(values) == len(variables) and all(
            tuple(v.shape) == value.shape for v, value in zip(variables, values, strict=False)
        )
        if not shapes_match:
            raise BackupSettingsError(
                f"The final values kept in {self.directory!r} do not fit this model "
                f"({len(values)} values for {len(variables)} variables, or other shapes): it "
                "was built differently. Build it as the run that wrote them, or delete the "
                "folder to start over."
            )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    def delete(self) -> None:
        delete_backup(self.directory)

    def _save(self) -> None:
        def write(path):
            with files.open_file(path, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1)

        reliability.write_atomically(self.path, write)
