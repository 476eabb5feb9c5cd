"""TensorBoard logs whose step axis continues across the `fit` calls of one run.

Two-phase training calls `fit` twice, each time with a new optimizer. Keras' TensorBoard
callback writes the per-step charts (`evaluation_<metric>_vs_iterations`, and with
`update_freq="batch"` the `batch_<metric>` ones) at the optimizer's step count or at a
batch counter reset by every `fit`, so phase 2's curve starts again at step 0 on top of
phase 1's. `RunTensorBoard` writes those charts at the run's step: the steps of the
earlier `fit` calls plus the current optimizer's. The epoch charts already continue,
because `fit_two_phase` numbers epochs over the whole run.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

__all__ = ["RunTensorBoard"]


class RunTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` for several `fit` calls on one step axis.

    Pass the same instance to every `fit` of the run (as `fit_two_phase(callbacks=...)`
    does). Epoch charts are Keras' own; the per-step charts are written at
    `steps of earlier fits + optimizer.iterations`.

    Args:
        log_dir: where the event files go (`train/` and `validation/` inside).
        **kwargs: the other arguments of `keras.callbacks.TensorBoard`.

    Example:

    ```python
    board = kt.RunTensorBoard("runs/one/logs")
    kt.fit_two_phase(model, train, validation, callbacks=[board])
    ```
    """

    def __init__(self, log_dir: str = "logs", **kwargs: Any):
        super().__init__(log_dir=log_dir, **kwargs)
        self.steps_before = 0
        self._fit_steps = 0
        self._run_writers: dict[str, Any] = {}

    def _writer(self, name: str):
        if name not in self._run_writers:
            self._run_writers[name] = tf.summary.create_file_writer(
                os.path.join(os.fspath(self.log_dir), name)
            )
        return self._run_writers[name]

    def _optimizer_steps(self) -> int | None:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        return None if iterations is None else int(keras.ops.convert_to_numpy(iterations))

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self._fit_steps = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras' own batch summaries restart at each fit: it gets no metrics to write.
        super().on_train_batch_end(batch, {})
        self._fit_steps += 1
        if self.update_freq == "epoch" or not isinstance(logs, dict):
            return
        step = self.steps_before + self._fit_steps
        if step % self.update_freq:
            return
        with self._writer("train").as_default():
            for name, value in logs.items():
                tf.summary.scalar(f"batch_{name}", value, step=step)

    def on_test_end(self, logs: dict | None = None) -> None:
        super().on_test_end({})  # closes Keras' validation writer scope, writes nothing
        steps = self._optimizer_steps()
        if steps is None or not logs:
            return
        with self._writer("validation").as_default():
            for name, value in logs.items():
                tf.summary.scalar(
                    f"evaluation_{name}_vs_iterations", value, step=self.steps_before + steps
                )

    def on_train_end(self, logs: dict | None = None) -> None:
        steps = self._optimizer_steps()
        self.steps_before += self._fit_steps if steps is None else steps
        for writer in self._run_writers.values():
            writer.flush()
        super().on_train_end(logs)
