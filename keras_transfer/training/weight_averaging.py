"""Weight averaging after fine-tuning: WiSE-FT interpolation, model soups, and an EMA whose
momentum is stated per epoch.

- `interpolate_weights(model, start, alpha)`: WiSE-FT (Wortsman et al., "Robust
  fine-tuning of zero-shot models", CVPR 2022, arXiv:2109.01903) sets every weight to
  `(1 - alpha) * start + alpha * fine_tuned`, where `start` is where fine-tuning began (the
  head-phase or a zero-shot model). `wise_ft` tries several alphas and keeps the one with
  the best validation score.
- `soup(models, validation_data, method)`: model soups (Wortsman et al., "Model soups:
  averaging weights of multiple fine-tuned models improves accuracy without increasing
  inference time", ICML 2022, arXiv:2203.05482) average the weights of runs fine-tuned
  from one starting point: `"uniform"` averages them all; `"greedy"` goes through the runs
  from best to worst validation score and keeps each one whose addition does not lower
  the soup's score.
- `ema_momentum_per_step`: Keras' `use_ema` momentum acts per optimizer step, so the same
  value averages over a few epochs of a small dataset and over a fraction of one epoch of a
  large one. Stating it per epoch and converting (`m_step = m_epoch ** (1 / steps)`) gives
  the same averaging horizon in epochs whatever the batch count. `with_ema` turns it on
  in an optimizer made elsewhere (a name, class or factory's), through its config.

Every function takes weights as a model, a `model.get_weights()` list, or a
`.weights.h5` file of the same architecture, and refuses weights of another architecture,
naming the first variable that differs. Floating-point weights (BatchNormalization's moving
statistics included, as in the papers' state-dict averages) are averaged; others are taken
from the fine-tuned model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "WiseFtResult",
    "ema_momentum_per_step",
    "interpolate_weights",
    "soup",
    "validation_score",
    "wise_ft",
    "with_ema",
]

logger = logging.getLogger("keras_transfer")

WeightsSource = keras.Model | Sequence[np.ndarray] | str | os.PathLike
DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def ema_momentum_per_step(epoch_momentum: float, steps_per_epoch: int) -> float:
    """The per-step momentum of Keras' `use_ema` that decays like `epoch_momentum` per epoch.

    Example:
    ```python
    ema_momentum_per_step(0.5, steps_per_epoch=10)  # -> 0.933: 0.933 ** 10 == 0.5
    ```
    """
    if not 0.0 <= epoch_momentum < 1.0:
        raise ValueError(f"epoch_momentum must lie in [0, 1), got {epoch_momentum}.")
    if isinstance(steps_per_epoch, bool) or int(steps_per_epoch) != steps_per_epoch:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")
    return float(epoch_momentum ** (1.0 / steps_per_epoch))


def with_ema(
    optimizer: keras.optimizers.Optimizer, epoch_momentum: float, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    """A new optimizer like `optimizer` (from its config) that keeps Keras' EMA of the
    weights (`use_ema`) at the per-step momentum decaying like `epoch_momentum` per epoch;
    `optimizer` itself when `epoch_momentum` is 0 (off). Pair it with
    `keras.callbacks.SwapEMAWeights` so that validation scores the averaged weights; the
    model ends `fit` with them.

    Example:
    ```python
    optimizer = with_ema(keras.optimizers.Adam(1e-3), 0.5, steps_per_epoch=10)
    optimizer.use_ema, round(optimizer.ema_momentum, 3)  # -> (True, 0.933)
    ```
    """
    per_step = ema_momentum_per_step(epoch_momentum, steps_per_epoch)
    if not epoch_momentum:
        return optimizer
    if optimizer.built:
        raise ValueError(
            "with_ema needs an optimizer that has not been built (used) yet: its moving "
            "averages are created when it is built."
        )
    config = {**optimizer.get_config(), "use_ema": True, "ema_momentum": per_step}
    return type(optimizer).from_config(config)


def interpolate_weights(
    model: keras.Model,
    start: WeightsSource,
    alpha: float,
    end: WeightsSource | None = None,
) -> keras.Model:
    """Sets `model`'s weights to `(1 - alpha) * start + alpha * end` (WiSE-FT) and returns it.

    Args:
        model: the fine-tuned model; its weights are overwritten.
        start: the weights fine-tuning started from (a model, a weights list or a
            `.weights.h5` file of the same architecture), e.g. the head-phase weights.
        alpha: 0 gives `start`, 1 gives `end`; values in [0, 1] interpolate.
        end: the fine-tuned weights (default: `model`'s current ones). Pass them when
            calling more than once, since each call overwrites `model`.

    Example:
    ```python
    fine_tuned = model.get_weights()
    interpolate_weights(model, head_model, alpha=0.5, end=fine_tuned)
    ```
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0: start, 1: fine-tuned), got {alpha}.")
    end_weights = model.get_weights() if end is None else _weights_of(end, model, "end")
    start_weights = _weights_of(start, model, "start")
    model.set_weights(_weighted_sum([start_weights, end_weights], [1.0 - alpha, alpha]))
    return model


@dataclasses.dataclass
class WiseFtResult:
    """The alpha `wise_ft` kept and the validation score of every alpha it tried."""

    alpha: float
    scores: dict[float, float]


def wise_ft(
    model: keras.Model,
    start: WeightsSource,
    validation_data: Any,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    metric: str = "accuracy",
) -> WiseFtResult:
    """Chooses WiSE-FT's alpha on `validation_data` and leaves `model` at that alpha.

    Ties go to the larger alpha (closer to the fine-tuned weights, which the run chose).

    Args:
        model: the fine-tuned, compiled model.
        start: where fine-tuning started (see `interpolate_weights`).
        validation_data: what `model.evaluate` takes; never the test split.
        alphas: the candidates in [0, 1].
        metric: the `model.evaluate` result to maximise (a name with "loss" is minimised).
    """
    if not alphas:
        raise ValueError("alphas is empty: give at least one value in [0, 1].")
    fine_tuned = model.get_weights()
    start_weights = _weights_of(start, model, "start")
    scores = {}
    for alpha in alphas:
        interpolate_weights(model, start_weights, alpha, end=fine_tuned)
        scores[float(alpha)] = validation_score(model, validation_data, metric)
    best = max(scores, key=lambda a: (_better_is_higher(metric) * scores[a], a))
    interpolate_weights(model, start_weights, best, end=fine_tuned)
    logger.info("WiSE-FT: alpha %.2f (validation %s %.4f).", best, metric, scores[best])
    return WiseFtResult(alpha=best, scores=scores)


def soup(
    models: Sequence[WeightsSource],
    validation_data: Any,
    method: str = "greedy",
    metric: str = "accuracy",
) -> keras.Model:
    """Averages the weights of runs fine-tuned from one starting point (a model soup).

    Returns a compiled clone of `models[0]` holding the averaged weights; its
    `soup_ingredients` are the indices of the runs in it (in the order they were added),
    `soup_scores` every run's own validation score and `soup_score` the soup's.

    Args:
        models: the fine-tuned runs; the first must be a compiled model (the soup is a clone
            of it), the others models, weights lists or `.weights.h5` files of the same
            architecture.
        validation_data: what `model.evaluate` takes: scores the runs and, for `"greedy"`,
            decides which join the soup. Never the test split.
        method: `"uniform"` (all runs) or `"greedy"` (best first, each run kept only if the
            soup's validation score does not fall).
        metric: the `model.evaluate` result to maximise (a name with "loss" is minimised).

    Example:
    ```python
    souped = soup([run_a, run_b, run_c], data.validation, method="greedy")
    souped.soup_ingredients  # -> [1, 0]: run_c lowered the validation accuracy
    souped.evaluate(data.test)
    ```
    """
    if method not in ("uniform", "greedy"):
        raise ValueError(f"method={method!r}: use 'uniform' or 'greedy'.")
    if not models or not isinstance(models[0], keras.Model):
        raise ValueError("soup needs a list whose first entry is a compiled keras.Model.")
    souped = _clone_compiled(models[0])
    weights = [_weights_of(source, souped, f"models[{i}]") for i, source in enumerate(models)]
    scores = []
    for run_weights in weights:
        souped.set_weights(run_weights)
        scores.append(validation_score(souped, validation_data, metric))
    sign = _better_is_higher(metric)
    if method == "uniform":
        ingredients = list(range(len(weights)))
    else:
        ingredients = _greedy_ingredients(souped, weights, scores, validation_data, metric)
    souped.set_weights(_weighted_sum([weights[i] for i in ingredients], None))
    score = validation_score(souped, validation_data, metric)
    logger.info(
        "Soup (%s) of runs %s: validation %s %.4f (best run alone %.4f).",
        method, ingredients, metric, score, sign * max(sign * s for s in scores),
    )  # fmt: skip
    souped.soup_ingredients, souped.soup_scores, souped.soup_score = ingredients, scores, score
    return souped


def _greedy_ingredients(souped, weights, scores, validation_data, metric) -> list[int]:
    """Greedy soup (Wortsman et al. 2022, Recipe 1): best run first; add each next-best run
    whose joining does not lower the soup's validation score."""
    sign = _better_is_higher(metric)
    order = sorted(range(len(weights)), key=lambda i: -sign * scores[i])
    ingredients, best = [order[0]], scores[order[0]]
    for candidate in order[1:]:
        souped.set_weights(_weighted_sum([weights[i] for i in [*ingredients, candidate]], None))
        score = validation_score(souped, validation_data, metric)
        if sign * score >= sign * best:
            ingredients.append(candidate)
            best = score
    return ingredients


def validation_score(model: keras.Model, validation_data: Any, metric: str = "accuracy") -> float:
    """`model.evaluate(validation_data)[metric]`, with a clear error for a missing metric."""
    if not model.compiled:
        raise ValueError("The model is not compiled: compile it with the metric to score.")
    results = model.evaluate(validation_data, verbose=0, return_dict=True)
    if metric not in results:
        raise ValueError(
            f"model.evaluate returned no {metric!r} (it returned {sorted(results)}): compile "
            f"with metrics=[{metric!r}] or pass metric= one of those names."
        )
    return float(results[metric])


def _better_is_higher(metric: str) -> int:
    return -1 if "loss" in metric else 1


def _clone_compiled(model: keras.Model) -> keras.Model:
    if not model.compiled:
        raise ValueError("The first model of a soup must be compiled (it scores the soup).")
    # From the model's serialized config (not `clone_model`, which turns a subclassed
    # functional model such as `TransferClassifier` into a plain `Functional`).
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    clone.compile_from_config(model.get_compile_config())
    return clone


def _weights_of(source: WeightsSource, like: keras.Model, name: str) -> list[np.ndarray]:
    """`source`'s weights as a list matching `like.get_weights()`, checked."""
    if isinstance(source, keras.Model):
        weights = source.get_weights()
    elif isinstance(source, (str, os.PathLike)):
        weights = _weights_from_file(like, os.fspath(source))
    else:
        weights = [np.asarray(w) for w in source]
    expected = like.weights
    if len(weights) != len(expected):
        raise ValueError(
            f"{name} has {len(weights)} weights, the model {len(expected)}: weight averaging "
            "needs one architecture (the same backbone, head and LoRA rank)."
        )
    for array, variable in zip(weights, expected):
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(
                f"{name}: weight {variable.path!r} has shape {tuple(array.shape)}, the model "
                f"{tuple(variable.shape)}: weight averaging needs one architecture."
            )
    return weights


def _weights_from_file(model: keras.Model, path: str) -> list[np.ndarray]:
    if not path.endswith(".weights.h5"):
        raise ValueError(f"{path!r}: give a .weights.h5 file (model.save_weights) or a model.")
    current = model.get_weights()
    try:
        model.load_weights(path)
        return model.get_weights()
    finally:
        model.set_weights(current)


def _weighted_sum(
    weight_lists: Sequence[Sequence[np.ndarray]], coefficients: Sequence[float] | None
) -> list[np.ndarray]:
    """Per variable, `sum(c_i * w_i)` (the mean when `coefficients` is None); non-float
    variables come from the last list."""
    if coefficients is None:
        coefficients = [1.0 / len(weight_lists)] * len(weight_lists)
    averaged = []
    for arrays in zip(*weight_lists):
        if not np.issubdtype(arrays[-1].dtype, np.floating):
            averaged.append(arrays[-1])
            continue
        total = sum(np.float64(c) * a.astype(np.float64) for c, a in zip(coefficients, arrays))
        averaged.append(total.astype(arrays[-1].dtype))
    return averaged
