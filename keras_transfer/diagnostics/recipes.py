"""Which transfer-learning recipe to use: the recipe table and the training-plan advisor.

The recipe table is the usual one (CS231n's "Transfer Learning" notes, Yosinski et al.
2014): how much to fine-tune depends on how much labelled data there is and how close the
target domain is to the pretraining data (ImageNet for the keras.applications backbones).

| data  | domain    | recipe                                     |
|-------|-----------|--------------------------------------------|
| small | similar   | feature extraction (frozen backbone, head)  |
| small | different | features from a lower block, then a head    |
| large | similar   | two-phase: head, then fine-tune top blocks  |
| large | different | two-phase: head, then fine-tune all blocks  |

Instead of the words, `recommend_recipe` takes a measured distance: a `DomainDistance`
from `domain_distance` (or its proxy A-distance, `proxy_a_distance=`; Ben-David et al.
2010). Below 0.5 (a linear classifier on the backbone's features errs on more than 3/8 of
the images) the domains count as similar, otherwise as different; from 0.5 on, when the two
measured sets are the labelled training images and the unlabeled images the model will
see, the recipe also suggests `fit_domain_adaptation` (`Recipe.domain_adaptation`).

The from-scratch baseline and the negative-transfer check are in `scratch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from keras_transfer.adaptation import distance as distance_lib
from keras_transfer.backbones import registry as backbones_lib
from keras_transfer.training import two_phase

__all__ = [
    "Recipe",
    "describe_default_plan",
    "recommend_recipe",
    "recommend_training_plan",
    "size_scaled_plan",
    "ADVISOR_RULE",
]

SIMILARITIES = ("similar", "different")
RECIPES = ("feature_extraction", "lower_block_features", "fine_tune_top", "fine_tune_all")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recommended transfer-learning set-up, with concrete settings for this package.

    Attributes:
        name: one of `feature_extraction`, `lower_block_features`, `fine_tune_top`,
            `fine_tune_all`.
        reason: why, in words.
        feature_block: for `lower_block_features`, the block to take features from: a
            block name when a backbone was given, else the fraction of the backbone's depth
            (resolve it with `feature_block_for(backbone)`); `None` for the last block.
        head_epochs, head_lr: phase 1 (frozen backbone, head only; cache the features
            with `fit_feature_extractor` / `fit_two_phase_cached`).
        fine_tune_epochs, fine_tune_lr, unfreeze: phase 2 (0 epochs: no fine-tuning);
            `unfreeze` is `fit_two_phase`'s argument (a block count, fraction or "all").
        train_bn: BatchNormalization trainable in phase 2 (for domains far from ImageNet
            with enough data to estimate new statistics).
        augment: augmentation for the image loaders (`image_folder_dataset(augment=...)`).
        domain_adaptation: set when a measured domain distance says the domains are
            shifted: the `fit_domain_adaptation` method to try with unlabeled target images
            (`"dann"`), else `None`.
        patience: early stopping on the validation loss in each phase, with the best
            weights restored (`callbacks.ValidatedEarlyStopping`); 0: none, the epochs are
            the plan.
        ema_momentum: `fit_two_phase`'s EMA of the weights, its momentum per epoch (0: off).
    """

    name: str
    reason: str
    feature_block: str | float | None = None
    head_epochs: int = 20
    head_lr: float = 1e-3
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None
    unfreeze: int | float | str = "all"
    train_bn: bool = False
    augment: bool | str = False
    domain_adaptation: str | None = None
    patience: int = 0
    ema_momentum: float = two_phase.DEFAULT_EMA_MOMENTUM

    def feature_block_for(self, backbone: backbones_lib.Backbone) -> str | None:
        """The name of the block to take features from in `backbone`."""
        if self.feature_block is None or isinstance(self.feature_block, str):
            return self.feature_block
        blocks = backbone.blocks
        index = max(0, min(len(blocks) - 1, round(self.feature_block * len(blocks)) - 1))
        return blocks[index].name

    def classifier_kwargs(self, backbone: backbones_lib.Backbone | None = None) -> dict[str, Any]:
        """Arguments for `create_classifier` (`feature_block`)."""
        block = self.feature_block_for(backbone) if backbone is not None else self.feature_block
        if block is not None and not isinstance(block, str):
            raise ValueError("Pass the backbone to resolve a fractional feature_block.")
        return {"feature_block": block} if block is not None else {}

    def fit_kwargs(self) -> dict[str, Any]:
        """Arguments for `fit_two_phase` / `fit_two_phase_cached`."""
        return {
            "head_epochs": self.head_epochs,
            "fine_tune_epochs": self.fine_tune_epochs,
            "head_lr": self.head_lr,
            "fine_tune_lr": self.fine_tune_lr,
            "unfreeze": self.unfreeze,
            "train_bn": self.train_bn,
            "ema_momentum": self.ema_momentum,
        }


def _check_num_train_examples(num_train_examples: Any) -> None:
    if (
        isinstance(num_train_examples, bool)
        or not isinstance(num_train_examples, int)
        or num_train_examples < 1
    ):
        raise ValueError(
            f"num_train_examples must be a positive integer, got {num_train_examples!r}."
        )


def recommend_recipe(
    num_train_examples: int,
    domain_similarity: str | float | distance_lib.DomainDistance | None = None,
    *,
    backbone: backbones_lib.Backbone | None = None,
    small_data_threshold: int = 5000,
    block_logme: Mapping[str, float] | None = None,
    logme_margin: float = 0.01,
    proxy_a_distance: float | None = None,
) -> Recipe:
    """Recommends feature extraction or fine-tuning from data size and domain similarity.

    Args:
        num_train_examples: labelled training examples.
        domain_similarity: `"similar"` or `"different"` (to ImageNet-like natural photos),
            or a score in [0, 1] (>= 0.5 counts as similar), or a measured
            `DomainDistance` (`domain_distance(backbone, your_images, other_images)`).
        backbone: if given, `feature_block` is a concrete block name of it.
        small_data_threshold: below this many examples the data counts as small: fine-tuning
            millions of weights on it risks over-fitting.
        block_logme: measured LogME of each block's pooled output on the training data,
            input side first (`kt.transferability(backbone, data, blocks="all")`). The
            block with the highest score becomes `feature_block` (features from a lower
            block turn feature extraction into `lower_block_features`, and the last block
            overrides the two-thirds-depth guess for a different domain), and the reason
            quotes the scores.
        logme_margin: a lower block is chosen over the last one only if its LogME is
            higher by more than this (the last block is the usual choice; tiny differences
            are noise).
        proxy_a_distance: a measured proxy A-distance in [0, 2] instead of
            `domain_similarity` (pass one or the other).

    Returns:
        A `Recipe` with settings and the reason.

    Example:
    ```python
    recipe = recommend_recipe(244, "similar")
    recipe.name  # -> 'feature_extraction'
    fit_two_phase_cached(model, data.train, data.validation, **recipe.fit_kwargs())
    ```
    """
    _check_num_train_examples(num_train_examples)
    measured = _measured_distance(domain_similarity, proxy_a_distance)
    if measured is not None:
        similar = measured < distance_lib.CLOSE_BELOW
    else:
        similar = _is_similar(domain_similarity)
    small = num_train_examples < small_data_threshold
    recipe = _table_recipe(num_train_examples, small_data_threshold, small, similar)
    if measured is not None:
        recipe = dataclasses.replace(
            recipe,
            reason=f"Measured {distance_lib.describe_proxy_a_distance(measured)} {recipe.reason}",
            domain_adaptation=None if similar else "dann",
        )
    if block_logme is not None:
        recipe = _with_measured_block(recipe, block_logme, backbone, logme_margin, small)
    if backbone is not None and isinstance(recipe.feature_block, float):
        recipe = dataclasses.replace(recipe, feature_block=recipe.feature_block_for(backbone))
    return recipe


def _table_recipe(
    num_train_examples: int, small_data_threshold: int, small: bool, similar: bool
) -> Recipe:
    """The recipe table's entry for the data size and domain, with its reason."""
    size = f"{num_train_examples} examples is {'small' if small else 'large'} data"
    size += f" (threshold {small_data_threshold})"
    if small and similar:
        return Recipe(
            "feature_extraction",
            f"{size} from a domain similar to the pretraining data: the top-level features "
            "already separate the classes, and fine-tuning millions of weights on few "
            "examples over-fits. Train only the head on cached features (fast); optionally "
            "fine-tune briefly at a tiny learning rate and keep it only if validation improves.",
            head_epochs=20,
            head_lr=1e-3,
        )
    if small:
        return Recipe(
            "lower_block_features",
            f"{size} from a domain different from the pretraining data: the last blocks "
            "encode pretraining-specific concepts, lower blocks generic edges and textures. "
            "Take features from about two-thirds of the depth and train a head on them; too "
            "little data to fine-tune.",
            feature_block=2 / 3,
            head_epochs=30,
            head_lr=1e-3,
        )
    if similar:
        return Recipe(
            "fine_tune_top",
            f"{size} from a similar domain: enough data to adapt the top blocks without "
            "over-fitting, while the lower blocks' generic features are kept. Train the head "
            "first (so random head gradients do not wreck the backbone), then fine-tune the "
            "top third of the blocks at a 10x lower learning rate, BatchNorm frozen.",
            head_epochs=5,
            head_lr=1e-3,
            fine_tune_epochs=10,
            fine_tune_lr=1e-4,
            unfreeze=1 / 3,
            augment="flip,crop",
        )
    return Recipe(
        "fine_tune_all",
        f"{size} from a different domain: the features need to change at every level, "
        "and there is enough data to do it. Train the head, then fine-tune all blocks "
        "with trainable BatchNorm (new image statistics) at a low learning rate. "
        "Compare against training from scratch (fit_scratch_baseline).",
        head_epochs=5,
        head_lr=1e-3,
        fine_tune_epochs=20,
        fine_tune_lr=1e-4,
        unfreeze="all",
        train_bn=True,
        augment="flip,crop",
    )


def _with_measured_block(
    recipe: Recipe,
    block_logme: Mapping[str, float],
    backbone: backbones_lib.Backbone | None,
    margin: float,
    small: bool,
) -> Recipe:
    """`recipe` with `feature_block` set from measured per-block LogME, and why."""
    scores = _backbone_block_scores(block_logme, backbone)
    last = list(scores)[-1]
    best = max(scores, key=scores.get)
    chosen = best if scores[best] > scores[last] + margin else last
    why = (
        f" Measured LogME per block (higher transfers better): best {best} "
        f"({scores[best]:.4f}), last scored block {last} ({scores[last]:.4f})"
    )
    if chosen == last:
        why += f"; the last block is within {margin} of the best, so features come from it."
        block = None if backbone is None or last == backbone.block_names()[-1] else last
    else:
        why += f"; {best} beats it by more than {margin}, so features come from {best}."
        block = best
    if small:
        name = "lower_block_features" if block is not None else "feature_extraction"
        head_epochs = 30 if block is not None else 20
        reason = recipe.reason
        if name != recipe.name:
            reason += f" The measurement overrides the {recipe.name} guess: {name}."
        return dataclasses.replace(
            recipe, name=name, feature_block=block, head_epochs=head_epochs, reason=reason + why
        )
    return dataclasses.replace(recipe, feature_block=block, reason=recipe.reason + why)


def _backbone_block_scores(
    block_logme: Mapping[str, float], backbone: backbones_lib.Backbone | None
) -> dict[str, float]:
    """`block_logme` checked (not empty; only `backbone`'s blocks), input side first."""
    scores = dict(block_logme)
    if not scores:
        raise ValueError("block_logme is empty: pass {block: LogME} for the backbone's blocks.")
    if backbone is None:
        return scores
    names = backbone.block_names()
    unknown = [name for name in scores if name not in names]
    if unknown:
        raise ValueError(
            f"block_logme has blocks {unknown} that backbone {backbone.name!r} does not "
            f"have ({', '.join(names)}): score this backbone's blocks."
        )
    return {name: scores[name] for name in names if name in scores}


def _measured_distance(domain_similarity: Any, proxy_a_distance: float | None) -> float | None:
    """The proxy A-distance given as a `DomainDistance` or `proxy_a_distance=`, else None."""
    if proxy_a_distance is not None and domain_similarity is not None:
        raise ValueError(
            "Pass domain_similarity or proxy_a_distance, not both: a measured distance "
            "replaces the word."
        )
    if isinstance(domain_similarity, distance_lib.DomainDistance):
        proxy_a_distance = domain_similarity.proxy_a_distance
    if proxy_a_distance is None:
        if domain_similarity is None:
            raise ValueError(
                f"Pass domain_similarity (one of {SIMILARITIES}, a score in [0, 1] or a "
                "DomainDistance) or proxy_a_distance."
            )
        return None
    if (
        isinstance(proxy_a_distance, bool)
        or not isinstance(proxy_a_distance, int | float)
        or not 0.0 <= proxy_a_distance <= 2.0
    ):
        raise ValueError(f"proxy_a_distance must be in [0, 2], got {proxy_a_distance!r}.")
    return float(proxy_a_distance)


def _is_similar(domain_similarity: str | float) -> bool:
    if isinstance(domain_similarity, str):
        if domain_similarity not in SIMILARITIES:
            raise ValueError(
                f"domain_similarity must be one of {SIMILARITIES} or a number in [0, 1], got "
                f"{domain_similarity!r}."
            )
        return domain_similarity == "similar"
    if isinstance(domain_similarity, bool) or not isinstance(domain_similarity, int | float):
        raise ValueError(
            f"domain_similarity must be one of {SIMILARITIES} or a number in [0, 1], got "
            f"{domain_similarity!r}."
        )
    if not 0.0 <= domain_similarity <= 1.0:
        raise ValueError(f"domain_similarity must be in [0, 1], got {domain_similarity}.")
    return domain_similarity >= 0.5


# The advisor's rule, fitted on every task of the defaults suite (benchmarks/
# defaults_suite.py, its "advisor_rule_all_tasks" in benchmarks/results/defaults_suite.json):
# the same plan for every dataset, the fixed settings with an EMA of the weights.
# Rules on the data's size and per-block LogME (early stopping, longer budgets, smaller
# fine-tuning rates, half the blocks) lost there: early stopping on a validation split of a
# few images ended training at its first epochs.
ADVISOR_RULE = "every task: ema"


def describe_default_plan() -> str:
    """`fit_two_phase`'s default plan in words, its values read from `two_phase`'s constants
    (the advisor's reason quotes it; the command's `--plan` help lists the same values as
    flags, `image_config.describe_fixed_defaults`)."""
    return (
        f"the head {two_phase.DEFAULT_HEAD_EPOCHS} epochs at {two_phase.DEFAULT_HEAD_LR:g}, "
        f"then every block {two_phase.DEFAULT_FINE_TUNE_EPOCHS} epochs at "
        f"{two_phase.DEFAULT_FINE_TUNE_LR:g} (Adam, BatchNormalization frozen), no early "
        f"stopping, and an EMA of the weights at momentum {two_phase.DEFAULT_EMA_MOMENTUM:g} "
        "per epoch, which validation scores and the model keeps."
    )


def recommend_training_plan(
    num_train_examples: int,
    block_logme: Mapping[str, float] | None = None,
    *,
    backbone: backbones_lib.Backbone | None = None,
) -> Recipe:
    """The two-phase settings the defaults suite chose, with the reason in words.

    The suite (`benchmarks/defaults_suite.py`, 3 seeds on each of 8 image tasks from 10 to
    1,000 images per class) measured each recipe on test splits nothing chose, and fitted
    this advisor leave-one-task-out: `ADVISOR_RULE`, one plan for every dataset. It is
    `fit_two_phase`'s defaults: the head 20 epochs at 1e-3, then every block 5 epochs at
    2e-5 (Adam, BatchNormalization frozen), no early stopping, and an exponential moving
    average of the weights at momentum 0.5 per epoch, which validation scores and the model
    keeps.

    Args:
        num_train_examples: labelled training examples (checked; the rule does not
            depend on them).
        block_logme: LogME of each block's pooled output (`transferability(backbone,
            data, blocks="all")`), input side first: quoted in the reason, not used (on
            the suite, choosing blocks by it lost).
        backbone: checks that `block_logme` names its blocks.

    Returns:
        A `Recipe` (`name` "fine_tune_all"; `patience` 0).

    Example:
    ```python
    plan = kt.recommend_training_plan(245)
    kt.fit_two_phase(model, data.train, data.validation, **plan.fit_kwargs())
    print(plan.reason)
    ```
    """
    _check_num_train_examples(num_train_examples)
    reason = (
        f"{num_train_examples} training examples. The defaults suite's advisor rule "
        f"({ADVISOR_RULE!r}, fitted leave-one-task-out on 8 image tasks; "
        f"benchmarks/results/defaults_suite.json): {describe_default_plan()}"
    )
    if block_logme:
        reason += _logme_note(block_logme, backbone)
    return Recipe(
        "fine_tune_all",
        reason,
        head_epochs=two_phase.DEFAULT_HEAD_EPOCHS,
        head_lr=two_phase.DEFAULT_HEAD_LR,
        fine_tune_epochs=two_phase.DEFAULT_FINE_TUNE_EPOCHS,
        fine_tune_lr=two_phase.DEFAULT_FINE_TUNE_LR,
        unfreeze="all",
        ema_momentum=two_phase.DEFAULT_EMA_MOMENTUM,
    )


def _logme_note(block_logme: Mapping[str, float], backbone: backbones_lib.Backbone | None) -> str:
    """The measured LogME in words: which block scores best (information, not a rule)."""
    scores = _backbone_block_scores(block_logme, backbone)
    last, best = list(scores)[-1], max(scores, key=scores.get)
    return (
        f" Measured LogME (not used by the rule): best block {best} ({scores[best]:.3f}), "
        f"last block {last} ({scores[last]:.3f})."
    )


# Budgets of `size_scaled_plan`: generous, because early stopping ends a phase once the
# validation loss stops improving.
PLAN_PATIENCE = 3
PLAN_HEAD_EPOCHS_CACHED = 100
PLAN_HEAD_EPOCHS = 20
PLAN_SMALL_DATA = 1000
PLAN_LARGE_DATA = 5000


def size_scaled_plan(
    num_train_examples: int,
    block_logme: Mapping[str, float] | None = None,
    *,
    backbone: backbones_lib.Backbone | None = None,
    cached_head: bool = True,
    logme_margin: float = 0.01,
) -> Recipe:
    """Two-phase settings scaled with the dataset's size and measured transferability, with
    generous epoch budgets that early stopping cuts short (`--plan=scaled`).

    The advisor's rules before the defaults suite, where (`advisor_rules`) they lost to
    the fixed plan; they stay a recipe, with no EMA, as they were measured.

    The rules (each one is quoted in `Recipe.reason`):

    - Head: Adam 1e-3 for up to 100 epochs on cached features (an epoch costs a pass of
      the small head), 20 through the frozen backbone (`cached_head=False`).
    - Fine-tuning learning rate from the data size (Adam, BatchNormalization frozen): 1e-5
      below 1,000 examples, 2e-5 below 5,000, 5e-5 above. On ants-vs-bees (245 images)
      fine-tuning every block at 1e-4 lost 12 points of validation accuracy after the head
      while 1e-5 gained 1.3 (benchmarks/README.md, forgetting); more data takes larger steps
      without over-fitting.
    - Which blocks: when the last block has the best LogME (`block_logme`, input side
      first, within `logme_margin`), the pretrained top-level features already suit the
      data and only the top half of the blocks is fine-tuned: at these rates the lower
      blocks hardly change anyway (their CKA to the pretrained ones stayed above 0.999 in
      the same benchmark) and their backward pass is most of the cost. When a lower block
      scores better, the top features are too specific to the source task: every block is
      fine-tuned. Without measurements the data is assumed similar to ImageNet photos.
    - Fine-tuning budget: 10 epochs (20 from 5,000 examples), and early stopping with
      `patience` 3 on the validation loss in both phases, the best weights restored. The
      fine-tuning phase starts from the head phase's best validation loss
      (`ValidatedEarlyStopping(carry_over=True)`), so fine-tuning that does not beat the
      head alone is undone.

    Args:
        num_train_examples: labelled training examples.
        block_logme: LogME of each block's pooled output on the training data
            (`transferability(backbone, data, blocks="all")`), input side first.
        backbone: resolves the top half of the blocks to a count.
        cached_head: whether the head phase runs on cached features.
        logme_margin: how much better a lower block must score to count as better.

    Returns:
        A `Recipe` (`name` from `recommend_recipe`'s table, `patience` set).

    Example:
    ```python
    scores = kt.transferability(backbone, data, blocks="all")
    plan = kt.size_scaled_plan(data.num_train, scores, backbone=backbone)
    print(plan.reason)
    ```
    """
    _check_num_train_examples(num_train_examples)
    n = num_train_examples
    similar, measured = _last_block_suits(block_logme, logme_margin)
    base = recommend_recipe(n, "similar" if similar else "different", backbone=backbone)
    fine_tune_lr = _plan_fine_tune_lr(n)
    unfreeze, blocks_text = _plan_unfreeze(similar, backbone)
    head_epochs = PLAN_HEAD_EPOCHS_CACHED if cached_head else PLAN_HEAD_EPOCHS
    fine_tune_epochs = 20 if n >= PLAN_LARGE_DATA else 10
    where = " on cached features" if cached_head else ""
    return dataclasses.replace(
        base,
        reason=(
            f"{measured} {n} training examples: head up to {head_epochs} epochs at 1e-3"
            f"{where}, then {blocks_text} up to {fine_tune_epochs} epochs at "
            f"{fine_tune_lr:g} {_scaled_plan_stops(n)}. Table entry: {base.name}."
        ),
        feature_block=None,
        head_epochs=head_epochs,
        head_lr=1e-3,
        fine_tune_epochs=fine_tune_epochs,
        fine_tune_lr=fine_tune_lr,
        unfreeze=unfreeze,
        train_bn=False,
        patience=PLAN_PATIENCE,
        ema_momentum=0.0,
    )


def _scaled_plan_stops(num_train_examples: int) -> str:
    """The part of `size_scaled_plan`'s reason that says how its phases stop."""
    size = "<" if num_train_examples < PLAN_SMALL_DATA else ">="
    return (
        f"(Adam; {size} {PLAN_SMALL_DATA} examples), each phase stopped after {PLAN_PATIENCE} "
        "epochs without a lower validation loss and its best weights kept; fine-tuning is "
        "kept only if it beats the head alone"
    )


def _last_block_suits(
    block_logme: Mapping[str, float] | None, logme_margin: float
) -> tuple[bool, str]:
    """Whether the last block's features suit the data (its LogME within `logme_margin` of
    the best block's; assumed without measurements), and the sentence that says why."""
    if not block_logme:
        return True, "No transferability measured: the data is assumed similar to ImageNet photos."
    scores = dict(block_logme)
    last, best = list(scores)[-1], max(scores, key=scores.get)
    similar = scores[best] <= scores[last] + logme_margin
    measured = (
        f"Measured LogME: the last block {last} ({scores[last]:.3f}) "
        + (
            "scores best, so the pretrained top-level features suit this data"
            if similar
            else f"scores below {best} ({scores[best]:.3f}), so the top features are "
            "too specific to the pretraining task"
        )
        + "."
    )
    return similar, measured


def _plan_fine_tune_lr(num_train_examples: int) -> float:
    """Larger steps with more data: 1e-5 below 1,000 examples, 2e-5 below 5,000, else 5e-5."""
    if num_train_examples < PLAN_SMALL_DATA:
        return 1e-5
    if num_train_examples < PLAN_LARGE_DATA:
        return 2e-5
    return 5e-5


def _plan_unfreeze(
    similar: bool, backbone: backbones_lib.Backbone | None
) -> tuple[int | float | str, str]:
    """`unfreeze` and its words: the top half of the blocks when the top features suit the
    data (a count when the backbone's blocks are known), else every block."""
    if not similar:
        return "all", "every block"
    if backbone is None:
        return 0.5, "the top half of the blocks"
    try:
        count = max(1, math.ceil(len(backbone.blocks) / 2))
    except ValueError:  # a backbone without known blocks: everything
        return "all", "every block (the backbone has no known blocks)"
    return count, f"the top {count} of {len(backbone.blocks)} blocks"
