"""The record of a two-phase run (`two_phase.fit_two_phase`): the history of both phases on
one epoch axis, and the small JSON state that makes a run resumable.

The JSON file (`STATE_FILE`, in the run's `backup_dir`) holds the run's settings, whether
phase 1 finished, phase 2's first epoch and every finished epoch's logs and duration;
`EpochRecorder` writes the epochs as they end. Model and optimizer state live in Keras' own
backup files beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import keras

from keras_transfer.utils import reliability

__all__ = [
    "HEAD_WEIGHTS_FILE",
    "PHASE_FINE_TUNE",
    "PHASE_HEAD",
    "STATE_FILE",
    "EpochRecorder",
    "RunState",
    "TwoPhaseHistory",
]

PHASE_HEAD = "feature_extraction"
PHASE_FINE_TUNE = "fine_tune"
STATE_FILE = "two_phase_state.json"
HEAD_WEIGHTS_FILE = "feature_extraction_done.weights.h5"


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
        self.data: dict[str, Any] = {"settings": settings, "head_done": False, "epochs": {}}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("settings") != settings:
                raise ValueError(
                    f"{self.directory!r} holds the backup of a run with other settings "
                    f"({saved.get('settings')}; this run: {settings}). Resume with the same "
                    "arguments, or delete the folder (or pass another backup_dir) to start over."
                )
            self.data = saved
        else:
            self._save()

    @property
    def head_done(self) -> bool:
        return bool(self.data["head_done"]) and os.path.exists(self.head_weights_path)

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
        shutil.rmtree(self.phase_dir(PHASE_HEAD), ignore_errors=True)
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

    def delete(self) -> None:
        for phase in (PHASE_HEAD, PHASE_FINE_TUNE):
            shutil.rmtree(self.phase_dir(phase), ignore_errors=True)
        for path in (self.head_weights_path, self.path):
            if os.path.exists(path):
                os.remove(path)
        if os.path.isdir(self.directory) and not os.listdir(self.directory):
            os.rmdir(self.directory)

    def _save(self) -> None:
        def write(path):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1)

        reliability.write_atomically(self.path, write)
