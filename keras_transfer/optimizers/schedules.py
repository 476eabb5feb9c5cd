"""Learning-rate schedules for fine-tuning, as serialisable Keras `LearningRateSchedule`s.

All three are parametrised by the total number of optimizer steps of the run (for `fit`,
`epochs * steps_per_epoch`), hold their value at the last step past the end, and round-trip
through `.keras` files with the optimizer that uses them.
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["OneCycle", "SlantedTriangular", "WarmupCosineDecay"]


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer (optimizer steps), got {value!r}.")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def _cosine_anneal(start, end, fraction):
    return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))


@keras.saving.register_keras_serializable(package="keras_transfer")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warm-up to a peak learning rate, then cosine decay to a floor.

    The formula is Keras' `CosineDecay` with warm-up; this class states it the way
    fine-tuning recipes are written (peak rate, total steps, absolute floor):
    `lr(t) = start + (peak - start) * t / warmup_steps` for `t < warmup_steps`, then
    `floor + (peak - floor) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2`,
    held at `floor` after `total_steps`.

    Args:
        learning_rate: the peak learning rate, reached at the end of the warm-up.
        total_steps: optimizer steps of the whole schedule, warm-up included.
        warmup_steps: steps of the linear warm-up (0 for none).
        floor: the learning rate the decay ends at (an absolute value, below `learning_rate`).
        warmup_start: the learning rate at step 0 of the warm-up.
        name: name of the schedule.

    Example:
    ```python
    schedule = WarmupCosineDecay(1e-3, total_steps=1000, warmup_steps=100, floor=1e-5)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    ```
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        floor: float = 0.0,
        warmup_start: float = 0.0,
        name: str = "WarmupCosineDecay",
    ):
        _check_positive("learning_rate", learning_rate)
        _check_positive_int("total_steps", total_steps)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(
                f"`warmup_steps` must be a non-negative integer, got {warmup_steps!r}."
            )
        if warmup_steps >= total_steps:
            raise ValueError(
                f"`warmup_steps` ({warmup_steps}) must be smaller than `total_steps` "
                f"({total_steps}): the cosine decay needs at least one step."
            )
        if not 0.0 <= floor <= learning_rate:
            raise ValueError(f"`floor` must be in [0, learning_rate={learning_rate}], got {floor}.")
        if not 0.0 <= warmup_start <= learning_rate:
            raise ValueError(
                f"`warmup_start` must be in [0, learning_rate={learning_rate}], got {warmup_start}."
            )
        super().__init__(
            initial_learning_rate=float(warmup_start),
            decay_steps=total_steps - warmup_steps,
            alpha=floor / learning_rate,
            name=name,
            warmup_target=float(learning_rate),
            warmup_steps=warmup_steps,
        )
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.floor = floor
        self.warmup_start = warmup_start

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "floor": self.floor,
            "warmup_start": self.warmup_start,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_transfer")
class SlantedTriangular(keras.optimizers.schedules.LearningRateSchedule):
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3).

    A short linear increase over the first `cut_frac` of the steps, then a long linear
    decay: with `cut = floor(total_steps * cut_frac)`,
    `p = t / cut` for `t < cut`, else `1 - (t - cut) / (cut * (1 / cut_frac - 1))`, and
    `lr(t) = learning_rate * (1 + p * (ratio - 1)) / ratio`. The lowest rate is
    `learning_rate / ratio`.

    Args:
        learning_rate: the peak learning rate (`eta_max`).
        total_steps: optimizer steps of the whole schedule (`T`).
        cut_frac: fraction of the steps spent increasing the rate (paper: 0.1).
        ratio: how much smaller the lowest rate is than the peak (paper: 32).
        name: name of the schedule.

    Example:
    ```python
    schedule = SlantedTriangular(1e-3, total_steps=500)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    ```
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        cut_frac: float = 0.1,
        ratio: float = 32.0,
        name: str = "SlantedTriangular",
    ):
        super().__init__()
        _check_positive("learning_rate", learning_rate)
        _check_positive_int("total_steps", total_steps)
        if not 0.0 < cut_frac < 1.0:
            raise ValueError(f"`cut_frac` must be in (0, 1), got {cut_frac}.")
        if not ratio >= 1.0:
            raise ValueError(f"`ratio` must be >= 1, got {ratio}.")
        if math.floor(total_steps * cut_frac) < 1:
            raise ValueError(
                f"total_steps * cut_frac = {total_steps * cut_frac:g} < 1: the increase would "
                "last zero steps. Raise `total_steps` or `cut_frac`."
            )
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.cut_frac = cut_frac
        self.ratio = ratio
        self.name = name

    def __call__(self, step):
        cut = float(math.floor(self.total_steps * self.cut_frac))
        decay_length = cut * (1.0 / self.cut_frac - 1.0)
        t = ops.minimum(ops.cast(step, "float32"), float(self.total_steps))
        p = ops.where(t < cut, t / cut, 1.0 - (t - cut) / decay_length)
        p = ops.maximum(p, 0.0)
        return self.learning_rate * (1.0 + p * (self.ratio - 1.0)) / self.ratio

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "cut_frac": self.cut_frac,
            "ratio": self.ratio,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_transfer")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle learning rate (Smith & Topin 2018), as PyTorch's `OneCycleLR`.

    The rate rises from `learning_rate / div_factor` to `learning_rate` over the first
    `pct_start` of the steps, then falls to `learning_rate / (div_factor * final_div_factor)`
    at the last step, each phase annealed by a half cosine (or linearly). Phase 1 ends at
    step `pct_start * total_steps - 1` and phase 2 at `total_steps - 1`, as in PyTorch.
    Momentum is not cycled: Keras optimizers take a constant `beta_1` / `momentum`.

    Args:
        learning_rate: the peak learning rate.
        total_steps: optimizer steps of the whole cycle.
        pct_start: fraction of the steps spent increasing the rate.
        div_factor: the starting rate is `learning_rate / div_factor`.
        final_div_factor: the final rate is the starting rate / `final_div_factor`.
        anneal: `"cos"` or `"linear"`.
        name: name of the schedule.

    Example:
    ```python
    schedule = OneCycle(3e-3, total_steps=1000)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    ```
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
        name: str = "OneCycle",
    ):
        super().__init__()
        _check_positive("learning_rate", learning_rate)
        _check_positive_int("total_steps", total_steps)
        _check_positive("div_factor", div_factor)
        _check_positive("final_div_factor", final_div_factor)
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"`pct_start` must be in (0, 1), got {pct_start}.")
        if pct_start * total_steps - 1 <= 0 or total_steps - pct_start * total_steps <= 0:
            raise ValueError(
                f"pct_start={pct_start} with total_steps={total_steps} leaves a phase with no "
                "steps. Raise `total_steps` or change `pct_start`."
            )
        if anneal not in ("cos", "linear"):
            raise ValueError(f"`anneal` must be 'cos' or 'linear', got {anneal!r}.")
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.name = name

    def __call__(self, step):
        initial = self.learning_rate / self.div_factor
        final = initial / self.final_div_factor
        phase_1_end = float(self.pct_start * self.total_steps) - 1.0
        phase_2_end = float(self.total_steps - 1)
        t = ops.clip(ops.cast(step, "float32"), 0.0, phase_2_end)
        rising = t <= phase_1_end
        fraction = ops.where(
            rising, t / phase_1_end, (t - phase_1_end) / (phase_2_end - phase_1_end)
        )
        start = ops.where(rising, initial, self.learning_rate)
        end = ops.where(rising, self.learning_rate, final)
        if self.anneal == "cos":
            return _cosine_anneal(start, end, fraction)
        return start + (end - start) * fraction

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
            "name": self.name,
        }
