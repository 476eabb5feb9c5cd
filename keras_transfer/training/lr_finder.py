"""A learning-rate range test (Smith 2017; fastai's `lr_find`) for compiled Keras models.

The sweep trains the model for a few steps with an exponentially increasing learning rate,
through the model's own compiled train step (so its loss, regularizers, frozen blocks and
per-variable multipliers all count), using a fresh copy of its optimizer. Afterwards every
model variable is restored and the model's own optimizer was never touched, so the model is
left as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_transfer import data as data_lib
from keras_transfer.utils import backend

__all__ = ["LRFinderResult", "find_learning_rate"]


@dataclasses.dataclass
class LRFinderResult:
    """The loss-vs-learning-rate curve of a range test, and suggested learning rates.

    Attributes:
        learning_rates: the learning rate of each step taken.
        losses: the smoothed training loss after each step (bias-corrected moving average).
        raw_losses: the unsmoothed loss of each step.
        steepest: the learning rate where the smoothed loss falls fastest (per log10 LR).
        valley: fastai's "valley": a point two thirds down the longest run of decreasing
            loss, usually a safer pick than `steepest`.
        minimum: the learning rate of the lowest smoothed loss, divided by 10.
        suggestion: the learning rate `method` picked.
        method: `"valley"`, `"steepest"` or `"minimum"`.
        diverged: whether the sweep stopped early because the loss blew up.
    """

    learning_rates: list[float]
    losses: list[float]
    raw_losses: list[float]
    steepest: float
    valley: float
    minimum: float
    suggestion: float
    method: str
    diverged: bool

    def plot(self, path: str | os.PathLike, title: str | None = None) -> str:
        """Saves loss vs learning rate (log scale) with the suggestion marked, as a PNG."""
        # matplotlib is a base dependency; imported here so that importing the finder
        # does not load it. Agg: no display is needed to write a file.
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot

        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.plot(self.learning_rates, self.losses, label="smoothed loss")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("training loss")
        index = int(np.argmin(np.abs(np.log(self.learning_rates) - math.log(self.suggestion))))
        axes.plot(
            [self.suggestion],
            [self.losses[index]],
            "o",
            color="red",
            label=f"{self.method}: {self.suggestion:.2e}",
        )
        axes.legend()
        if title:
            axes.set_title(title)
        figure.tight_layout()
        path = os.fspath(path)
        figure.savefig(path, format="png", dpi=100)
        pyplot.close(figure)
        return path


def find_learning_rate(
    model: keras.Model,
    data: Any,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    *,
    method: str = "valley",
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    optimizer: keras.optimizers.Optimizer | None = None,
    batch_size: int = 32,
    plot_path: str | os.PathLike | None = None,
) -> LRFinderResult:
    """Runs an exponential learning-rate sweep on `model` and suggests a learning rate.

    Step `i` of `steps` trains one batch with `lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))`.
    The sweep stops early when the smoothed loss exceeds `divergence_factor` times the best
    seen so far, or is not finite. All model variables (weights, BatchNorm statistics, seed
    states) are restored afterwards, and the model's own optimizer is not used.

    Args:
        model: a compiled model; it is trained with what is trainable now (sweep again after
            `unfreeze`: a fine-tuning phase needs a smaller rate than the head).
        data: a `tf.data.Dataset` of batches (repeated when shorter than `steps`), or a
            tuple `(x, y)` of arrays batched with `batch_size`.
        min_lr: the first learning rate.
        max_lr: the last learning rate.
        steps: the number of steps (batches) of the sweep.
        method: which suggestion to return in `suggestion`: `"valley"` (fastai's default),
            `"steepest"` or `"minimum"`.
        smoothing: the factor of the loss moving average (fastai: 0.98).
        divergence_factor: stop when the smoothed loss exceeds this times its minimum.
        optimizer: the optimizer to sweep with; default a copy of the model's (same class and
            settings, learning-rate schedule replaced by the sweep's constant per step).
        batch_size: the batch size when `data` is arrays.
        plot_path: if given, save the curve as a PNG there.

    Returns:
        An `LRFinderResult` (curve, suggestions, `plot(path)`).

    Example:
    ```python
    model.compile(optimizer=keras.optimizers.Adam())
    result = find_learning_rate(model, train_data, steps=100)
    model.compile(optimizer=keras.optimizers.Adam(result.suggestion))
    ```
    """
    _check_sweep(model, min_lr, max_lr, steps, method, smoothing, divergence_factor)
    batches = _batches(_as_dataset(data, batch_size).repeat())
    sweep_optimizer = optimizer if optimizer is not None else _copy_optimizer(model.optimizer)
    learning_rates = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    with _model_restored_afterwards(model, sweep_optimizer):
        curve = _sweep(
            model, sweep_optimizer, batches, learning_rates, smoothing, divergence_factor
        )
    result = _suggest(curve.finite() if curve.diverged else curve, method, min_lr)
    if plot_path is not None:
        result.plot(plot_path)
    return result


def _check_sweep(
    model: keras.Model,
    min_lr: float,
    max_lr: float,
    steps: int,
    method: str,
    smoothing: float,
    divergence_factor: float,
) -> None:
    if getattr(model, "optimizer", None) is None:
        raise ValueError("find_learning_rate needs a compiled model: call model.compile first.")
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise ValueError(f"Need 0 < min_lr < max_lr < inf, got min_lr={min_lr}, max_lr={max_lr}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"`steps` must be an integer >= 5, got {steps!r}.")
    if method not in ("valley", "steepest", "minimum"):
        raise ValueError(f"`method` must be 'valley', 'steepest' or 'minimum', got {method!r}.")
    if not 0 <= smoothing < 1:
        raise ValueError(f"`smoothing` must be in [0, 1), got {smoothing}.")
    if divergence_factor <= 1:
        raise ValueError(f"`divergence_factor` must be > 1, got {divergence_factor}.")


@contextlib.contextmanager
def _model_restored_afterwards(
    model: keras.Model, sweep_optimizer: keras.optimizers.Optimizer
) -> Iterator[None]:
    """Inside, `model` trains with `sweep_optimizer`; afterwards (even after an error) its
    own optimizer, train function, variables and metrics are as they were."""
    saved_values = [variable.numpy() for variable in model.variables]
    own_optimizer = model.optimizer
    try:
        model.optimizer = sweep_optimizer
        model.make_train_function(force=True)
        yield
    finally:
        model.optimizer = own_optimizer
        model.make_train_function(force=True)
        for variable, value in zip(model.variables, saved_values, strict=True):
            variable.assign(value)
        model.reset_metrics()


@dataclasses.dataclass
class _Curve:
    """The sweep's learning rates, raw and smoothed losses, and whether it diverged."""

    tried: list[float] = dataclasses.field(default_factory=list)
    raw: list[float] = dataclasses.field(default_factory=list)
    smoothed: list[float] = dataclasses.field(default_factory=list)
    diverged: bool = False

    def finite(self) -> _Curve:
        """The curve up to its last finite point, for the suggestions and the plot."""
        keep = [i for i, v in enumerate(self.smoothed) if math.isfinite(v)]
        return _Curve(
            [self.tried[i] for i in keep],
            [self.raw[i] for i in keep],
            [self.smoothed[i] for i in keep],
            self.diverged,
        )


def _sweep(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    batches: Iterator[Any],
    learning_rates: np.ndarray,
    smoothing: float,
    divergence_factor: float,
) -> _Curve:
    """One training step per learning rate, until the smoothed loss diverges."""
    curve = _Curve()
    average, best = 0.0, math.inf
    for step, learning_rate in enumerate(learning_rates):
        optimizer.learning_rate = float(learning_rate)
        try:
            batch = next(batches)
        except StopIteration:  # only an empty dataset ends: it is repeated
            raise ValueError(
                "`data` yielded no batches: the learning-rate sweep needs at least one. "
                "Check that the dataset is not empty (with drop_remainder=True, a dataset "
                "smaller than one batch has none: lower batch_size)."
            ) from None
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        logs = model.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
        loss = float(logs["loss"])
        curve.tried.append(float(learning_rate))
        curve.raw.append(loss)
        average = smoothing * average + (1 - smoothing) * loss
        value = average / (1 - smoothing ** (step + 1))  # bias-corrected, as in Adam
        curve.smoothed.append(value)
        if not math.isfinite(value) or (step > 0 and value > divergence_factor * best):
            curve.diverged = True
            break
        best = min(best, value)
    return curve


def _suggest(curve: _Curve, method: str, min_lr: float) -> LRFinderResult:
    """The result: the curve and the learning rate each method suggests."""
    if len(curve.smoothed) < 3:
        raise ValueError(
            f"The loss diverged after {len(curve.smoothed)} step(s) of the sweep, from "
            f"min_lr={min_lr}: lower min_lr (or check the data and loss)."
        )
    suggestions = {
        "steepest": _steepest(curve.tried, curve.smoothed),
        "valley": _valley(curve.tried, curve.smoothed),
        "minimum": curve.tried[int(np.argmin(curve.smoothed))] / 10.0,
    }
    return LRFinderResult(
        learning_rates=curve.tried,
        losses=curve.smoothed,
        raw_losses=curve.raw,
        suggestion=suggestions[method],
        method=method,
        diverged=curve.diverged,
        **suggestions,
    )


def _as_dataset(data: Any, batch_size: int) -> tf.data.Dataset:
    # Arrays are shuffled every pass: the sweep repeats the data when it is shorter than
    # `steps`, and each learning rate should see fresh batches.
    dataset = data_lib.as_dataset(data, "`data`", batch_size=batch_size, shuffle_seed=0)
    if not isinstance(dataset, tf.data.Dataset):  # the sweep repeats it
        raise TypeError(
            f"`data` must be a tf.data.Dataset of batches or a tuple (x, y), got "
            f"{type(data).__name__}."
        )
    return dataset


def _batches(dataset: tf.data.Dataset) -> Iterator[Any]:
    # `train_on_batch` on JAX puts its inputs on the device with `jax.device_put`, which takes
    # NumPy arrays but not TensorFlow tensors; TensorFlow gets its own tensors, as before.
    return iter(dataset) if backend.is_tensorflow() else dataset.as_numpy_iterator()


def _copy_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    # Same class and settings, fresh state, and a plain (settable) learning rate where the
    # original may hold a schedule.
    config = optimizer.get_config()
    target = config
    while "learning_rate" not in target and "inner_optimizer" in target:
        target = target["inner_optimizer"]["config"]  # LossScaleOptimizer
    if "learning_rate" not in target:
        raise ValueError(
            f"Cannot copy optimizer {type(optimizer).__name__} for the sweep; pass "
            "`optimizer=` (an unbuilt optimizer with a float learning rate)."
        )
    target["learning_rate"] = 1e-3
    return optimizer.__class__.from_config(config)


def _steepest(learning_rates: list[float], losses: list[float]) -> float:
    # Slope of the smoothed loss per log10(lr). The first tenth is skipped (the moving
    # average is still mostly one batch's noise there, as fastai's `skip_start`), and so is
    # the last point (already climbing into divergence).
    slopes = np.gradient(np.asarray(losses), np.log10(learning_rates))
    n = len(losses)
    start, end = min(max(1, n // 10), n - 2), n - 1
    return float(learning_rates[start + int(np.argmin(slopes[start:end]))])


def _valley(learning_rates: list[float], losses: list[float]) -> float:
    # fastai's valley: the longest decreasing run of the loss (longest decreasing
    # subsequence), then the point two thirds of the way down it.
    n = len(losses)
    lengths = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[max_end] < lengths[i]:
            max_end = i
            max_start = max_end - lengths[max_end]
    sections = (max_end - max_start) / 3
    index = max_start + int(sections) + int(sections / 2)
    return float(learning_rates[min(max(index, 0), n - 1)])
