"""Stable, stratified splits: which examples train, which validate, which test.

Each example has a key (an image's path relative to the folder it is held out of, with `/`
separators; a text itself) and a number `u` in [0, 1) drawn from a hash of the seed and
the key. The example is a test example if `u < test_split`, a validation example if
`u >= 1 - validation_split`, else a training example. So an example's split depends only on
the seed and its own key: adding or removing other examples moves none of it (a shuffle of
the whole list would move most); changing `validation_split` moves no test example and
changing `test_split` no validation example (they hold out opposite ends of [0, 1)); and
identical keys (the same text twice) land in the same split, so no duplicate leaks from
training into evaluation. The price: each class's held-out share is a draw around the
fraction, close on large classes, loose on small ones (a class of 10 at 0.2 gets 2 on
average, 4 or more one time in 8).

Then each class is given what it needs, whatever its hashes say:

- a class with 1 example or more keeps at least 1 training example;
- with `validation_split > 0`, a class with 3 examples or more gets at least 1 validation
  example;
- with `test_split > 0`, a class with 3 examples or more (4 when there is a validation
  split too) gets at least 1 test example.

A missing example is taken from another split that has more than its own minimum: the
example whose `u` lies nearest to the needing split's interval (ties by key), so the fewest
and most borderline examples move. Only in such a small class can adding an example move
another (the one moved to meet a minimum goes back when the new example meets it). A class
too small for a split gets no example of it, and `missing_classes_warning` says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "assign_splits",
    "check_fractions",
    "missing_classes_warning",
    "stable_unit",
]

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("training", "validation", "test")


def stable_unit(key: str, seed: int) -> float:
    """A number in [0, 1) that depends only on `seed` and `key` (SHA-256, not Python's
    `hash`, which changes from one process to the next)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fractions(validation_split: float, test_split: float) -> None:
    """`ValueError` unless both fractions lie in [0, 1) and leave some training data."""
    for name, value in (("validation_split", validation_split), ("test_split", test_split)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if validation_split + test_split >= 1.0:
        raise ValueError(
            f"validation_split={validation_split} and test_split={test_split} hold out "
            "everything: their sum must be below 1, so that some images train."
        )


def assign_splits(
    keys: Sequence[str],
    labels: Sequence[int],
    *,
    validation_split: float = 0.0,
    test_split: float = 0.0,
    seed: int = 1337,
) -> np.ndarray:
    """The split of each example (`TRAIN`, `VALIDATION` or `TEST`), stable and stratified
    by the rule of the module docstring.

    Example:
    ```python
    split = assign_splits(["a/1.jpg", "a/2.jpg", "b/1.jpg"], [0, 0, 1], validation_split=0.2)
    ```
    """
    check_fractions(validation_split, test_split)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels.")
    units = np.array([stable_unit(key, seed) for key in keys], dtype=np.float64)
    # Each split's interval of u: test [0, t), training [t, 1 - v), validation [1 - v, 1).
    intervals = {
        TEST: (0.0, test_split),
        TRAIN: (test_split, 1.0 - validation_split),
        VALIDATION: (1.0 - validation_split, 1.0),
    }
    split = np.where(
        units < test_split, TEST, np.where(units >= 1.0 - validation_split, VALIDATION, TRAIN)
    )
    labels = np.asarray(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        minimums = _minimums(len(members), validation_split, test_split)
        for needing in (TRAIN, VALIDATION, TEST):
            if minimums[needing] and not np.any(split[members] == needing):
                _move_nearest(members, needing, split, units, keys, minimums, intervals)
    return split


def _minimums(count: int, validation_split: float, test_split: float) -> dict[int, int]:
    validation = int(validation_split > 0 and count >= 3)
    test = int(test_split > 0 and count >= 3 + validation)
    return {TRAIN: int(count >= 1), VALIDATION: validation, TEST: test}


def _move_nearest(members, needing, split, units, keys, minimums, intervals) -> None:
    """Moves to `needing` the member nearest to its interval among the splits that can give
    one (more members than their minimum)."""
    counts = {s: int(np.sum(split[members] == s)) for s in (TRAIN, VALIDATION, TEST)}
    low, high = intervals[needing]

    def distance(index):
        u = units[index]
        return (max(low - u, u - high, 0.0), keys[index])

    donors = [i for i in members if counts[int(split[i])] > minimums[int(split[i])]]
    split[min(donors, key=distance)] = needing


def missing_classes_warning(
    class_names: Sequence[str], labels: Sequence[int], split: str, hint: str
) -> str | None:
    """A one-line warning naming the classes without any example in `split` (whose
    `labels` these are), or `None` when every class has one; `hint` says what to do."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    missing = [name for name, count in zip(class_names, counts) if count == 0]
    if not missing:
        return None
    shown = ", ".join(repr(name) for name in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    measure = (
        "the model never learns them"
        if split == SPLIT_NAMES[TRAIN]
        else f"the {split} metrics say nothing about them"
    )
    return (
        f"{len(missing)} of {len(class_names)} classes have no {split} images, so {measure}: "
        f"{shown}{more}. {hint}"
    )
