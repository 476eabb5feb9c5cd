"""The training defaults and each recipe on a suite of image tasks, and an advisor chosen
leave-one-task-out; test accuracy on a test split nothing chose.

Every run is `examples/image_classifier.py` (the program of `keras-transfer train`, this
checkout) in its own process, MobileNet V1 with the real ImageNet weights, 224 px unless the
task says otherwise, on the task's training folder (20% of each class held out as the
validation split by a stable hash of the seed and the path) and its test folder (evaluated
once, after training: results.json "test").

Tasks (built from ../shared/assets, no downloads; a task's test images are never among its
training images):

- `ants_bees`: hymenoptera train/ (about 120 images per class); test: its val/ folder.
- `cats_dogs_{10,50,200,1000}`: that many images per class of cats_and_dogs train/ (a stable
  hash order); test: the first half of its validation/ folder (`assign_splits`, seed 0).
- `cats_dogs_96px`: 200 per class at `--image_size=96`; the same test half.
- `photo_shift`: 200 per class through the "night camera" shift (grayscale, inverted, half
  contrast, noise; benchmarks/domain_adaptation.py), trained and tested on shifted photos.
- `digits`: scikit-learn's 8x8 digits (`pip install .[bench]`) as 32x32 PNGs, 10 classes,
  2/3 of each class for training (about 120 per class) and 1/3 for test, at 96 px.

Arms: `fixed` (`--plan=fixed --ema_momentum=0`), `advisor_rules` (`--plan=scaled`, the
size-and-LogME rules that were `--plan=auto` when the suite ran), and each
recipe alone on top of `fixed` (`RECIPES`). `advisor` is not a run: for each task it is the
arm that a rule fitted on the *other* tasks gives it, measured on that task
(leave-one-task-out: a task's own test split never chooses its plan). The rule
(`fit_size_rule`) is either one arm for every task or a threshold on the training images per
class with one arm below and one above (two or more tasks on each side), whichever gains
most over `fixed` on those tasks (ties: one arm); each arm is the one with the largest mean
gain on its side (ties: fixed).
`advisor_rule_all_tasks` is the rule fitted on every task, what the package would use.

The results file's verdict is the suite's: arms `suite:<arm>` (and `suite:advisor`,
`suite:advisor_one_arm`) hold, per seed, the mean test accuracy over the tasks, each compared
with `suite:fixed` (tasks x seeds paired runs, `tasks_per_seed`); each task's arms are in
the file too, reported as they came out, not compared one by one.

    python benchmarks/defaults_suite.py --seeds 3                     # every task and arm
    python benchmarks/defaults_suite.py --tasks ants_bees,cats_dogs_10 --seeds 3
    python benchmarks/defaults_suite.py --smoke                       # minutes, synthetic

Each finished run is appended to `--runs_file` (default
benchmarks/results/partial/defaults_suite_runs.jsonl) and skipped when the script runs
again with the same task, arm, seed and commit, so the suite can be run in parts. The results
file (benchmarks/results/defaults_suite.json) is written when every requested run is done;
its last printed line is `{"tasks": {task: {"fixed", "advisor", "advisor_rules",
"recipes": {...}}}, "mean_gain_vs_fixed", "worst_gain_vs_fixed", "advisor_choice",
"advisor_rule_all_tasks"}` with each accuracy as `{mean, ci95, per_seed}`.
`--runs_commit` reads the runs of another commit (the pinned suite's) and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import defaults  # noqa: E402

RECIPES = {
    "label_smoothing": ["--label_smoothing=0.1"],
    "randaugment": ["--augment=flip,crop,randaugment"],
    "augmix": ["--augment=flip,crop,augmix"],
    "mixup": ["--augment=flip,crop,mixup"],
    "cutmix": ["--augment=flip,crop,cutmix"],
    "ema": ["--ema_momentum=0.5"],
    "wise_ft": ["--wise_ft", "--resume"],
    "cosine": ["--lr_schedule=cosine", "--warmup_steps=10"],
    "early_stopping": ["--patience=5", "--restore_best"],
}
# `fixed` without the EMA, as `--plan=fixed` was when the suite ran (the EMA became a fixed
# default because of it), so that every recipe is measured on the same plan at any commit
# (absl keeps a repeated flag's last value: the `ema` arm's momentum wins).
FIXED_FLAGS = ["--plan=fixed", "--ema_momentum=0"]
# `advisor_rules` ran as `plan=auto` when `plan=auto` was these rules (`--plan=scaled` now).
ARMS = {"fixed": FIXED_FLAGS, "advisor_rules": ["--plan=scaled"], **{
    name: [*FIXED_FLAGS, *flags] for name, flags in RECIPES.items()
}}  # fmt: skip
CATS_DOGS_SIZES = (10, 50, 200, 1000)
NUM_CLASSES = {"digits": 10}  # every other task has two classes
MIN_TASKS_PER_SIDE = 2  # of a size rule's threshold (fit_size_rule)
_PARTS = ("train", "validation", "test")
TASKS = (
    "ants_bees",
    *(f"cats_dogs_{n}" for n in CATS_DOGS_SIZES),
    "cats_dogs_96px",
    "photo_shift",
    "digits",
)
SELECTION = {
    "tuned": (
        "fixed: nothing tuned (--plan=fixed). advisor_rules: the package's plan=auto rules "
        "(training split size, per-block LogME on training images; early stopping and kept "
        "weights on the validation loss). Recipes: fixed plus one setting each, nothing "
        "tuned, except wise_ft (alpha on validation accuracy). advisor: for each task, the "
        "arm given by a rule fitted on the other tasks' mean test accuracies: one arm for "
        "every task, or a threshold on training images per class with one arm each side "
        "(two or more tasks each side), whichever gains most over fixed (ties: one arm; an "
        "arm's ties: fixed); the task's own test split chooses nothing. advisor_one_arm: "
        "the rule declared when the suite "
        "started (the arm with the largest mean gain on the other tasks); the threshold was "
        "added after 4 of the 8 tasks had run, so both are reported. Validation: 20% of "
        "each class of the task's training folder by a stable hash of the seed and the path."
    ),
    "tuned_on": "validation",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument(
        "--seeds", default="3", help="a count N (seeds 0 .. N-1), or comma-separated seeds"
    )
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--runs_file", default=None, help="JSON lines of finished runs")
    parser.add_argument(
        "--runs_commit",
        default=None,
        help="read the runs of this commit from the runs file (default: this checkout's); "
        "with it, a missing run is an error, not trained",
    )
    parser.add_argument("--smoke", action="store_true")
    return parser


def build_task(name: str, assets: pathlib.Path | None, work: pathlib.Path) -> dict:
    """`{train_dir, test_dir, flags}` of task `name` (synthetic folders with `assets=None`)."""
    if assets is None:
        root = _common.smoke_image_folder()
        return {"train_dir": root / "train", "test_dir": root / "validation", "flags": []}
    cats = assets / _common.DATASETS["cats_and_dogs"]
    if name == "ants_bees":
        root = assets / _common.DATASETS["hymenoptera"]
        return {"train_dir": root / "train", "test_dir": root / "val", "flags": []}
    if name.startswith("cats_dogs_") and name.removeprefix("cats_dogs_").isdigit():
        per_class = int(name.removeprefix("cats_dogs_"))
        train = _common.image_subset(cats / "train", per_class, f"suite_{name}_")
        return {"train_dir": train, "test_dir": _test_half(cats, work), "flags": []}
    if name == "cats_dogs_96px":
        train = _common.image_subset(cats / "train", 200, "suite_96px_")
        flags = ["--image_size=96"]
        return {"train_dir": train, "test_dir": _test_half(cats, work), "flags": flags}
    if name == "photo_shift":
        return _photo_shift(cats, work)
    if name == "digits":
        return _digits(work)
    raise SystemExit(f"Unknown task {name!r}; choose from {', '.join(TASKS)}.")


def _test_half(cats: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """Links to the test half of cats_and_dogs validation/ (`assign_splits`, seed 0)."""
    folder = work / "cats_dogs_test"
    if folder.exists():
        return folder
    keys, paths, labels = _listing(cats / "validation")
    from keras_transfer.data import splits as splits_lib

    split = splits_lib.assign_splits(keys, labels, test_split=0.5, seed=0)
    for key, path, unit in zip(keys, paths, split):
        if unit == splits_lib.TEST:
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            (folder / key).symlink_to(path.resolve())
    return folder


def _listing(root: pathlib.Path):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths = [p for c in classes for p in sorted((root / c).iterdir())]
    paths = [p for p in paths if p.suffix.lower() in _common.SUBSET_EXTENSIONS]
    return (
        [f"{p.parent.name}/{p.name}" for p in paths],
        paths,
        [classes.index(p.parent.name) for p in paths],
    )


def _write_images(folder: pathlib.Path, images, labels, names) -> None:
    import numpy as np
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(images, labels)):
        target = folder / names[label] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = tf.constant(np.clip(image, 0, 255).astype("uint8"))
        target.write_bytes(tf.io.encode_png(pixels).numpy())


def _photo_shift(cats: pathlib.Path, work: pathlib.Path) -> dict:
    import domain_adaptation
    import numpy as np

    rng = np.random.default_rng(0)
    names = sorted(p.name for p in (cats / "train").iterdir() if p.is_dir())
    train_x, train_y, _ = domain_adaptation._load_folder(cats / "train", 256, 200)
    held_x, held_y, keys = domain_adaptation._load_folder(cats / "validation", 256, None)
    _, is_test = domain_adaptation._halves(keys, held_y)
    train, test = work / "photo_shift_train", work / "photo_shift_test"
    _write_images(train, domain_adaptation.night_camera(train_x, rng), train_y, names)
    shifted = domain_adaptation.night_camera(held_x[is_test], rng)
    _write_images(test, shifted, held_y[is_test], names)
    return {"train_dir": train, "test_dir": test, "flags": []}


def _digits(work: pathlib.Path) -> dict:
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from keras_transfer.data import splits as splits_lib

    digits = load_digits()
    images = tf.image.resize(digits.images[..., None] / 16.0 * 255.0, (32, 32)).numpy()
    images = np.repeat(images, 3, axis=-1)
    keys = [f"digit_{i}" for i in range(len(images))]
    split = splits_lib.assign_splits(keys, list(digits.target), test_split=1 / 3, seed=0)
    names = [str(d) for d in range(10)]
    train, test = work / "digits_train", work / "digits_test"
    is_test = split == splits_lib.TEST
    _write_images(train, images[~is_test], digits.target[~is_test], names)
    _write_images(test, images[is_test], digits.target[is_test], names)
    return {"train_dir": train, "test_dir": test, "flags": ["--image_size=96"]}


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: "3" is seeds 0, 1, 2 (the issue's `--seeds 3`); "0,4,7" lists them."""
    if "," not in text:
        return list(range(int(text)))
    return [int(s) for s in text.split(",") if s.strip()]


def best_arm(accuracy: dict[str, dict[str, float]], tasks: list[str]) -> str:
    """The arm with the largest mean gain over `fixed` on `tasks` (`accuracy[task][arm]` =
    mean test accuracy); ties go to `fixed`."""
    arms = [a for a in accuracy[tasks[0]] if all(a in accuracy[t] for t in tasks)] if tasks else []
    gains = {a: statistics.mean(accuracy[t][a] - accuracy[t]["fixed"] for t in tasks) for a in arms}
    best = max(gains.values(), default=0.0)
    return "fixed" if gains.get("fixed", 0.0) >= best else max(gains, key=gains.get)


def rule_arm(rule: dict, size: float) -> str:
    """The arm a fitted rule (`fit_size_rule`) gives a task of `size` images per class."""
    below = rule["threshold"] is not None and size < rule["threshold"]
    return rule["below"] if below else rule["above"]


def fit_size_rule(
    accuracy: dict[str, dict[str, float]], sizes: dict[str, float], tasks: list[str]
) -> dict:
    """The advisor's rule fitted on `tasks`: one arm for all, or a threshold on the training
    images per class (`sizes`) with the best arm on each side; whichever has the largest
    mean gain on `tasks` (ties: one arm, then the lower threshold). Thresholds lie halfway
    (geometrically) between neighbouring task sizes, with at least `MIN_TASKS_PER_SIDE`
    tasks on each side: an arm chosen on one task is one task's evidence."""

    def gain(rule: dict) -> float:
        return statistics.mean(
            accuracy[t][rule_arm(rule, sizes[t])] - accuracy[t]["fixed"] for t in tasks
        )

    everyone = best_arm(accuracy, tasks)
    rules = [{"threshold": None, "below": everyone, "above": everyone}]
    ordered = sorted({sizes[t] for t in tasks})
    for low, high in zip(ordered, ordered[1:]):
        threshold = round((low * high) ** 0.5, 1)
        below = [t for t in tasks if sizes[t] < threshold]
        above = [t for t in tasks if sizes[t] >= threshold]
        if min(len(below), len(above)) < MIN_TASKS_PER_SIDE:
            continue
        rule = {"threshold": threshold, "below": best_arm(accuracy, below)}
        rules.append({**rule, "above": best_arm(accuracy, above)})
    gains = [gain(rule) for rule in rules]
    best = max(gains)
    return next(rule for rule, value in zip(rules, gains) if value >= best - 1e-12)


def advisor_choices(
    accuracy: dict[str, dict[str, float]], sizes: dict[str, float] | None = None
) -> dict[str, str]:
    """Leave-one-task-out: for each task, the arm that the rule fitted on the other tasks
    (`fit_size_rule`; without `sizes`, the best arm on them) gives it."""
    choices = {}
    for task in accuracy:
        others = [t for t in accuracy if t != task]
        if sizes is None or not others:
            choices[task] = best_arm(accuracy, others)
            continue
        choices[task] = rule_arm(fit_size_rule(accuracy, sizes, others), sizes[task])
    return choices


def describe_rule(rule: dict) -> str:
    """A fitted rule in words, e.g. "below 60 training images per class: ema; else fixed"."""
    if rule["threshold"] is None:
        return f"every task: {rule['above']}"
    return (
        f"below {rule['threshold']:g} training images per class: {rule['below']}; "
        f"else {rule['above']}"
    )


def suite_summary(
    per_seed: dict[str, dict[str, list[float]]], sizes: dict[str, float] | None = None
) -> dict:
    """The last printed line: per task each arm's test accuracy `{mean, ci95, per_seed}`,
    the leave-one-task-out advisor (`advisor_choices`), its mean and worst gain over
    `fixed`, and the rule fitted on every task (what the package's advisor would use)."""
    means = {t: {a: statistics.mean(v) for a, v in arms.items()} for t, arms in per_seed.items()}
    choices = advisor_choices(means, sizes)
    one_arm = advisor_choices(means) if sizes else choices
    tasks, gains, one_arm_gains = {}, [], []
    for task, arms in per_seed.items():
        entry = {"fixed": _summary(arms["fixed"])} if "fixed" in arms else {}
        advisor = arms[choices[task]]
        entry["advisor"] = {**_summary(advisor), "arm": choices[task]}
        entry["advisor_one_arm"] = {**_summary(arms[one_arm[task]]), "arm": one_arm[task]}
        if "advisor_rules" in arms:
            entry["advisor_rules"] = _summary(arms["advisor_rules"])
        entry["recipes"] = {a: _summary(v) for a, v in arms.items() if a in RECIPES}
        tasks[task] = entry
        if "fixed" in arms:
            fixed = statistics.mean(arms["fixed"])
            gains.append(statistics.mean(advisor) - fixed)
            one_arm_gains.append(statistics.mean(arms[one_arm[task]]) - fixed)
    return {
        "tasks": tasks,
        "mean_gain_vs_fixed": round(statistics.mean(gains), 4) if gains else None,
        "worst_gain_vs_fixed": round(min(gains), 4) if gains else None,
        "advisor_choice": choices,
        "advisor_one_arm_gain_vs_fixed": {
            "mean": round(statistics.mean(one_arm_gains), 4) if one_arm_gains else None,
            "worst": round(min(one_arm_gains), 4) if one_arm_gains else None,
        },
        **({"advisor_rule_all_tasks": _rule_on_all(means, sizes)} if sizes else {}),
    }


def suite_arms(
    per_seed: dict[str, dict[str, list[float]]], choices: dict[str, dict[str, str]]
) -> dict[str, list[float]]:
    """Suite-level arms, `{"suite:<arm>": [one value per seed]}`: at each seed, the mean
    over the tasks of that arm's test accuracy, for every arm run on every task, and for
    each advisor of `choices` (`{advisor: {task: arm}}`) the mean of the arms it chose."""
    tasks = list(per_seed)
    common_arms = [a for a in per_seed[tasks[0]] if all(a in per_seed[t] for t in tasks)]
    picks = {arm: {t: arm for t in tasks} for arm in common_arms}
    picks.update(choices)
    seeds = range(len(per_seed[tasks[0]][common_arms[0]]))
    return {
        f"suite:{name}": [statistics.mean(per_seed[t][chosen[t]][i] for t in tasks) for i in seeds]
        for name, chosen in picks.items()
    }


def _record_arms(per_seed: dict, summary: dict) -> tuple[dict, list, dict]:
    """The results file's arms (each task's arms, then the suite's), the comparisons its
    verdict makes (suite-level, against `fixed`: each task's arms are reported, not
    compared one by one) and the suite arms' `tasks_per_seed`."""
    one_arm = {t: e["advisor_one_arm"]["arm"] for t, e in summary["tasks"].items()}
    suite = suite_arms(per_seed, {"advisor": summary["advisor_choice"], "advisor_one_arm": one_arm})
    arms = {
        f"{task}:{arm}": {"test_accuracy": values}
        for task, by_arm in per_seed.items()
        for arm, values in by_arm.items()
    }
    arms.update({name: {"test_accuracy": values} for name, values in suite.items()})
    comparisons = (
        [["suite:fixed", name] for name in suite if name != "suite:fixed"]
        if "suite:fixed" in suite
        else []
    )
    return arms, comparisons, {name: len(per_seed) for name in suite}


def _rule_on_all(means: dict[str, dict[str, float]], sizes: dict[str, float]) -> str:
    return describe_rule(fit_size_rule(means, sizes, list(means)))


def _summary(values: list[float]) -> dict:
    summary = _common.summarize(values)
    return {"mean": summary["mean"], "ci95": summary["ci95"], "per_seed": list(values)}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = ["--tasks", "smoke_a,smoke_b", "--arms", "fixed,label_smoothing", *argv]
        argv = ["--seeds", "1", *argv]
    args = _parser().parse_args(argv)
    run = _common.start_run(SELECTION, script=__file__, argv=argv)
    tasks = [t for t in args.tasks.split(",") if t]
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"Unknown arms {unknown}; choose from {', '.join(ARMS)}.")
    seeds = parse_seeds(args.seeds)
    assets = None if args.smoke else _common.assets_dir(args.assets, _common.MOBILENET_WEIGHTS)
    weights = "none" if assets is None else str(assets / _common.MOBILENET_WEIGHTS)
    work = pathlib.Path(tempfile.mkdtemp(prefix="defaults_suite_"))
    runs_file = _common.RunsFile(args.runs_file, args.smoke, "defaults_suite")
    done = runs_file.runs
    commit = runs_file.runs_commit(args.runs_commit, run.git_commit)
    per_seed: dict[str, dict[str, list[float]]] = {}
    splits = {}
    for task in tasks:
        built = build_task(task, assets, work)
        flags = [*built["flags"], *(["--image_size=32", "--batch_size=8"] if args.smoke else [])]
        for arm in arms:
            for seed in seeds:
                key = runs_file.key(task, arm, seed, commit)
                if runs_file.to_run(key, pinned=bool(args.runs_commit)):
                    result = defaults.run_config(
                        arm,
                        seed,
                        built["train_dir"],
                        built["test_dir"],
                        weights,
                        flags,
                        work / task,
                        flags=ARMS[arm],
                    )
                    runs_file.add(key, result)
                per_seed.setdefault(task, {}).setdefault(arm, []).append(done[key]["test_accuracy"])
                splits[task] = done[key]["splits"]
    sizes = {t: splits[t]["train"] / NUM_CLASSES.get(t, 2) for t in per_seed}
    summary = suite_summary(per_seed, sizes)
    arms, comparisons, tasks_per_seed = _record_arms(per_seed, summary)
    output = _common.results_path(args.output, args.smoke, "defaults_suite")
    _common.write_results(
        output,
        run,
        kind="accuracy",
        benchmark="defaults_suite",
        dataset="suite:" + ",".join(tasks),
        # The schema's split sizes are totals over the tasks; each task's are in details.
        splits={part: sum(task[part] for task in splits.values()) for part in _PARTS},
        evaluated_on="test",
        arms=arms,
        primary_metric="test_accuracy",
        seeds=seeds,
        comparisons=comparisons,
        tasks_per_seed=tasks_per_seed,
        details={
            "summary": summary,
            "splits_by_task": splits,
            "train_images_per_class": sizes,
            "runs_file": str(runs_file.path),
        },
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
