"""The training plan of an image classifier run: the backbone's measured transferability,
the advisor's settings for those left unset (`keras_transfer.recommend_training_plan`, see
docs/diagnostics_and_defaults.md) and the class weights of the training loss.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import keras_transfer as kt
from keras_transfer import data as data_lib
from keras_transfer.apps.image_config import FIXED_DEFAULTS
from keras_transfer.apps.image_config import Config
from keras_transfer.data import imbalance

__all__ = [
    "class_weight",
    "describe_plan",
    "measure_transferability",
    "plan_training",
]

logger = logging.getLogger("keras_transfer")


def measure_transferability(
    config: Config, backbone: kt.Backbone, data: data_lib.ImageData
) -> dict[str, Any] | None:
    """Per-block LogME of the pretrained backbone on the training images, before training
    (one backbone pass): what `--plan=scaled` plans from and `--diagnostics` reports (the
    advisor's plan quotes it). `None` when nothing needs it; `{"error": why}` when it cannot
    be measured (also for a multilabel or regression table: the scores rank class labels)."""
    planned = config.plan == "scaled" and any(getattr(config, n) is None for n in FIXED_DEFAULTS)
    if not (planned or config.diagnostics):
        return None
    if config.task != "multiclass":
        return {"error": f"LogME and H-score rank class labels, and a {config.task} table has none"}
    start = time.perf_counter()
    try:
        try:
            scores = kt.transferability(backbone, data, ["logme", "hscore"], blocks="all")
        except ValueError as error:
            if "blocks" not in str(error):
                raise
            scores = kt.transferability(backbone, data, ["logme", "hscore"])  # no known blocks
            scores = {method: {"output": value} for method, value in scores.items()}
    except ValueError as error:  # e.g. fewer than two examples in a class
        logger.warning("Transferability not measured: %s", error)
        return {"error": str(error)}
    scores["best_block_by_logme"] = max(scores["logme"], key=scores["logme"].get)
    scores["seconds"] = round(time.perf_counter() - start, 2)
    return scores


def plan_training(
    config: Config,
    backbone: kt.Backbone,
    data: data_lib.ImageData,
    transfer: dict[str, Any] | None,
) -> tuple[Config, dict[str, Any]]:
    """`config` with the planned settings it left at None filled in, and the plan for
    results.json: every planned setting, which were given, and why."""
    missing = [name for name in FIXED_DEFAULTS if getattr(config, name) is None]
    if config.plan == "fixed" or not missing:
        values, reason = dict(FIXED_DEFAULTS), "plan=fixed: the fixed defaults."
        if not missing:
            reason = "Every planned setting was given."
    else:
        logme = (transfer or {}).get("logme")
        logme = logme if isinstance(logme, dict) and "output" not in logme else None
        if config.plan == "scaled":
            recipe = kt.size_scaled_plan(
                data.num_train, logme, backbone=backbone, cached_head=config.cache_features
            )
        else:
            recipe = kt.recommend_training_plan(data.num_train, logme, backbone=backbone)
        values = dict(
            head_epochs=recipe.head_epochs,
            fine_tune_epochs=recipe.fine_tune_epochs,
            unfreeze_blocks=str(recipe.unfreeze),
            head_lr=recipe.head_lr,
            fine_tune_lr=recipe.fine_tune_lr,
            patience=recipe.patience,
            restore_best=bool(recipe.patience),
            ema_momentum=recipe.ema_momentum,
        )
        reason = recipe.reason
        given = {name: getattr(config, name) for name in FIXED_DEFAULTS if name not in missing}
        if given:
            reason += " Given settings win: " + ", ".join(f"{k}={v}" for k, v in given.items())
            reason += "."
        if transfer and "error" in transfer:
            reason = f"Transferability not measured ({transfer['error']}). {reason}"
    config = dataclasses.replace(config, **{name: values[name] for name in missing})
    plan = {name: getattr(config, name) for name in FIXED_DEFAULTS}
    plan.update(
        source=config.plan,
        given=[name for name in FIXED_DEFAULTS if name not in missing],
        reason=reason,
        block_logme=(transfer or {}).get("logme"),
    )
    logger.info("%s", describe_plan(plan))
    return config, plan


def describe_plan(plan: dict[str, Any]) -> str:
    """The training plan as one line: where it came from, the settings given, and why."""
    given = ", ".join(plan["given"]) or "none"
    return f"plan ({plan['source']}; given: {given}): {plan['reason']}"


def class_weight(config: Config, data: data_lib.ImageData) -> dict[int, float] | None:
    """`config.class_weight` as `{class index: weight}` (None for none), from the loader's
    class counts (one pass over the training data when it has none, as for TFDS). A run
    computes it once, before anything is written, and passes it to training and the report."""
    return imbalance.resolve_class_weight(
        imbalance.parse_class_weight(config.class_weight), data, class_names=data.class_names
    )
