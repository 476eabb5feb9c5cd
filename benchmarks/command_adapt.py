"""The command's `--adapt` with its defaults against the same command without it: test
accuracy on a target test split that nothing chose (issue 33's first goal).

Every run is `examples/image_classifier.py` (the program of `keras-transfer train`, this
checkout) in its own process, MobileNet V1 with the real ImageNet weights, the command's
defaults (nothing set but the data, the seed and the arm's `--adapt`), on a labelled source
folder (20% of each class held out as the source validation split by a stable hash of the
seed and the path), with `--target_dir` a flat folder of unlabeled target images and
`--test_dir` the labelled target test images (evaluated once, after training and
adaptation: results.json "test").

Tasks (built offline from ../shared/assets; a task's test images are never among its
training or target images):

- `photo_shift`: source = the first 200 cats-vs-dogs training photos per class by file
  name, squashed to 256x256 (`domain_adaptation.photo_shift`); target images = the same
  photos through `domain_adaptation.night_camera` (grayscale, inverted, half contrast,
  noise), labels dropped; target test = the night-camera test half of validation/ (`assign_splits`, seed 0).
- `camera_shift`: the same with `domain_adaptation.dim_camera` (darker, bluer, slightly
  blurred and noisier: the shift issue 33 describes) in place of the night camera.
- `digits_m`: `domain_adaptation.digits_m` (scikit-learn's digits, `pip install .[bench]`):
  source = the clean training and validation digits, target images = the training digits
  blended with real photo patches as MNIST-M does, labels dropped; target test = the blended
  test digits; 32x32 PNGs read at `--image_size=96`.

Arms: `source_only` (`--target_dir` without `--adapt`: the same two phases; results.json
reports the domain distance only), `dann`, `coral`, `mmd`, `mcc` (the fine-tuning phase
becomes `kt.fit_domain_adaptation`, no early stopping or restore on the source validation
loss) and the source-free `adabn`, `tent`, `shot` (after training, `apps.adapt` with its
declared defaults), and `adapt_adabn`, `adapt_tent`, `adapt_shot`: `keras-transfer adapt
--method=...` with its defaults on the very model the same seed's `source_only` run saved
(listed after `source_only` in the same invocation), tested with `--test_dir` before and
after, so that the paired difference is the adaptation's alone and not the spread between
two trainings of one seed (up to 1.8 points on photo_shift). An `adapt_*` arm may carry
`keras-transfer adapt` settings after colons, each its own arm:
`adapt_shot:learning_rate=1e-5:unfreeze_blocks=2`; the other arms may carry
`keras-transfer train` settings the same way (`mcc:train_bn=false`). With `--work_dir`,
the model folders stay, so a later invocation's `adapt_*` arms adapt the recorded
`source_only` models.
Nothing is tuned: the target labels choose nothing, and the test split is read once per run.

    python benchmarks/command_adapt.py --task photo_shift --seeds 3
    python benchmarks/command_adapt.py --task camera_shift --seeds 3
    python benchmarks/command_adapt.py --task digits_m --seeds 3
    python benchmarks/command_adapt.py --smoke          # a minute or two, synthetic images

Each finished run is appended to `--runs_file` (default
benchmarks/results/partial/command_adapt_runs.jsonl) and skipped when the script runs again
with the same task, arm, seed and commit; `--runs_commit` reads another commit's runs
and trains nothing (a later checkout writing the file of a pinned commit's runs). The
file's paired comparisons are each arm against `source_only`, or `--compare=a..b,...`.
Writes benchmarks/results/command_adapt_<task>.json; the last printed line is `{"task",
"arms": {arm: mean test accuracy}, "beats_source_only": {arm: bool}}`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import defaults  # noqa: E402
import defaults_suite  # noqa: E402

TASKS = ("photo_shift", "camera_shift", "digits_m")
ADAPT = ("dann", "coral", "mmd", "mcc", "adabn", "tent", "shot")
# `keras-transfer adapt` on the same seed's source_only model: paired on one source model.
ADAPT_AFTER = ("adapt_adabn", "adapt_tent", "adapt_shot")
ARMS = ("source_only", *ADAPT, *ADAPT_AFTER)
PHOTO_SIZE, PHOTOS_PER_CLASS = 256, 200
SELECTION = {
    "tuned": (
        "Nothing: every arm is the command with its defaults (data, seed and --adapt only); "
        "the source validation split (20% of each class of the source folder by a stable hash "
        "of the seed and the path) is the command's own, used as the command uses it; the "
        "target images are unlabeled and the target labels choose nothing. The target test "
        "split is read once per run, after training and adaptation."
    ),
    "tuned_on": "validation",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=TASKS, default="photo_shift")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="3", help="a count N (seeds 0 .. N-1), or a list")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--runs_file", default=None, help="JSON lines of finished runs")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="folder for the task's images and the runs' model folders, kept afterwards (an "
        "adapt_* arm can then adapt a source_only model of an earlier invocation); default: "
        "a new temporary folder",
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="pairs of arms to compare by seed, `a..b` (b minus a), comma-separated; "
        "default: source_only against every other arm, or the first arm listed against "
        "the others when source_only is not run",
    )
    parser.add_argument(
        "--runs_commit",
        default=None,
        help="read the runs of this commit from the runs file (default: this checkout's); "
        "with it, a missing run is an error, not trained",
    )
    parser.add_argument("--smoke", action="store_true")
    return parser


def comparisons(arms: list[str], compare: str | None) -> list[list[str]]:
    """The results file's `comparisons`: `--compare`'s `a..b` pairs, or each arm against
    source_only (the first arm listed, without source_only)."""
    if not compare:
        base = "source_only" if "source_only" in arms else arms[0]
        return [[base, arm] for arm in arms if arm != base]
    pairs = []
    for pair in compare.split(","):
        a, dots, b = pair.partition("..")
        if not dots or a not in arms or b not in arms:
            raise SystemExit(f"--compare {pair!r}: give a..b with a and b among --arms {arms}.")
        pairs.append([a, b])
    return pairs


def arm_flags(arm: str, target_dir: pathlib.Path) -> list[str]:
    """The command's flags of `arm`: the target folder, `--adapt` unless source-only, and
    the arm's settings (`parse_arm`)."""
    name, settings = parse_arm(arm)
    adapt = [] if name == "source_only" else [f"--adapt={name}"]
    return [f"--target_dir={target_dir}", *adapt, *settings]


def arm_folder(arm: str) -> str:
    """A folder name for `arm` (its settings' colons and equals signs replaced)."""
    return arm.replace(":", "_").replace("=", "-")


def _write_unlabeled(folder: pathlib.Path, images) -> None:
    """Target images in one flat folder: no class subfolders, so the command sees no labels."""
    defaults_suite._write_images(folder, images, [0] * len(images), [""])


def build_task(name: str, assets: pathlib.Path | None, work: pathlib.Path) -> dict:
    """`{train_dir, target_dir, test_dir, flags}` of task `name` (synthetic with no assets)."""
    import domain_adaptation
    import numpy as np

    if name == "digits_m":
        data = domain_adaptation.digits_m(assets, smoke=assets is None)
        names = [str(d) for d in range(10)]
        pairs = zip(data["source_train"], data["source_validation"])
        source = [np.concatenate(pair) for pair in pairs]
        flags = ["--image_size=96"]
    else:
        data = domain_adaptation.photo_shift(
            assets,
            smoke=assets is None,
            size=PHOTO_SIZE,
            per_class=PHOTOS_PER_CLASS,
            shift=domain_adaptation.SHIFTS[name],
        )
        names = ["cats", "dogs"] if assets is not None else ["ants", "bees"]
        source, flags = data["source_train"], []
    train, target, test = work / f"{name}_source", work / f"{name}_target", work / f"{name}_test"
    defaults_suite._write_images(train, *source, names)
    _write_unlabeled(target, data["target_train"][0])
    defaults_suite._write_images(test, *data["test"], names)
    return {"train_dir": train, "target_dir": target, "test_dir": test, "flags": flags}


def parse_arm(arm: str) -> tuple[str, list[str]]:
    """An arm's name and the flags its settings add: `adapt_shot:learning_rate=1e-5` is
    `adapt_shot` with `keras-transfer adapt --learning_rate=1e-5`; `mcc:train_bn=false` is
    `mcc` with `keras-transfer train --train_bn=false`."""
    name, *settings = arm.split(":")
    flags = []
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not (key and equals and value):
            raise SystemExit(f"Arm {arm!r}: a setting is flag=value, got {setting!r}.")
        flags.append(f"--{key}={value}")
    return name, flags


def run_arm(
    task: str,
    arm: str,
    seed: int,
    built: dict,
    weights: str,
    work: pathlib.Path,
    extra,
    source: dict | None = None,
):
    """One command run: `defaults.run_config`'s summary plus the run's domain and adaptation
    records from its results.json (`adapt_*` arms: `run_adapt_after` on `source`, the same
    seed's recorded source_only run)."""
    if parse_arm(arm)[0] in ADAPT_AFTER:
        return run_adapt_after(task, arm, seed, built, work, source)
    summary = defaults.run_config(
        arm_folder(arm),
        seed,
        built["train_dir"],
        built["test_dir"],
        weights,
        [*built["flags"], *extra],
        work / task,
        flags=arm_flags(arm, built["target_dir"]),
    )
    results = json.loads((work / task / f"{arm_folder(arm)}_{seed}" / "results.json").read_text())
    return {**summary, "domain": results.get("domain"), "adaptation": results.get("adaptation")}


def run_adapt_after(
    task: str, arm: str, seed: int, built: dict, work: pathlib.Path, source: dict | None
) -> dict:
    """`keras-transfer adapt --method=...` (its defaults, or the arm's settings) on the model
    of `source`, the same seed's recorded source_only run of this commit, tested on the
    task's test folder (`--test_dir`): the adapted model's test accuracy, and the source
    model's on the same images read the same way, which must be the source_only run's own
    (one decode path)."""
    name, settings = parse_arm(arm)
    model_dir = work / task / f"source_only_{seed}"
    saved = model_dir / "results.json"
    if source is None or not saved.exists():
        raise SystemExit(
            f"{arm} adapts the model of seed {seed}'s source_only run of this commit, and "
            f"{'the runs file has no such run' if source is None else f'{model_dir} has none'}"
            f": list source_only before {name} in --arms, in this invocation or an earlier one "
            "with the same --work_dir."
        )
    trained = json.loads(saved.read_text())
    if trained["test"]["accuracy"] != source["test_accuracy"]:
        raise SystemExit(
            f"{model_dir} holds another model than the recorded source_only run of seed "
            f"{seed} (test accuracy {trained['test']['accuracy']} against "
            f"{source['test_accuracy']}): run source_only again with a new --work_dir."
        )
    output = work / task / f"{arm_folder(arm)}_{seed}"
    shutil.rmtree(output, ignore_errors=True)  # an unrecorded run's, left by an interruption
    command = [
        sys.executable,
        "-m",
        "keras_transfer",
        "adapt",
        f"--model_dir={model_dir}",
        f"--target_dir={built['target_dir']}",
        f"--test_dir={built['test_dir']}",
        f"--method={name.removeprefix('adapt_')}",
        *settings,
        f"--output_dir={output}",
    ]
    seconds = defaults.run_command(command, f"{arm} (seed {seed})")
    report = json.loads((output / "adapt.json").read_text())
    before, after = report["test"]["before"], report["test"]["after"]
    if before["accuracy"] != trained["test"]["accuracy"]:
        raise SystemExit(
            f"The source model's test accuracy read by `adapt` ({before['accuracy']}) is not "
            f"the training run's ({trained['test']['accuracy']}): the two read the test "
            "images differently."
        )
    return {
        **defaults.test_fields(after),
        "source_test_accuracy": before["accuracy"],
        "val_accuracy": None,
        "seconds": round(seconds, 1),
        "splits": {
            "train": trained["num_train"],
            "validation": trained["num_validation"],
            "test": trained["num_test"],
        },
        "command": " ".join(command[1:]),
        "adaptation": {key: report.get(key) for key in ADAPT_REPORT_KEYS},
    }


ADAPT_REPORT_KEYS = ("method", "settings", "seconds", "label_free", "epochs", "collapse")


def summary_line(task: str, per_seed: dict[str, list[float]]) -> dict:
    """The last printed line: each arm's mean test accuracy, and whether it beats source-only."""
    means = {arm: statistics.mean(values) for arm, values in per_seed.items()}
    source = means.get("source_only")
    return {
        "task": task,
        "arms": means,
        "beats_source_only": {
            arm: mean > source for arm, mean in means.items() if arm != "source_only"
        }
        if source is not None
        else {},
    }


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = ["--seeds", "1", "--arms", "source_only,coral,adabn", *argv]
    args = _parser().parse_args(argv)
    run = _common.start_run(SELECTION, script=__file__, argv=argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted({parse_arm(arm)[0] for arm in arms} - set(ARMS))
    if unknown:
        raise SystemExit(f"Unknown arms {unknown}; choose from {', '.join(ARMS)}.")
    seeds = defaults_suite.parse_seeds(args.seeds)
    assets = None if args.smoke else _common.assets_dir(args.assets, _common.MOBILENET_WEIGHTS)
    weights = "none" if assets is None else str(assets / _common.MOBILENET_WEIGHTS)
    extra = ["--image_size=32", "--batch_size=8"] if args.smoke else []
    work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="command_adapt_"))
    runs_file = _common.RunsFile(args.runs_file, args.smoke, "command_adapt")
    done = runs_file.runs
    pairs = comparisons(arms, args.compare)
    commit = runs_file.runs_commit(args.runs_commit, run.git_commit)
    built = build_task(args.task, assets, work)
    per_seed: dict[str, list[float]] = {}
    runs: dict[str, list[dict]] = {}
    for arm in arms:
        for seed in seeds:
            key = runs_file.key(args.task, arm, seed, commit)
            source = done.get(runs_file.key(args.task, "source_only", seed, commit))
            if runs_file.to_run(key, pinned=bool(args.runs_commit)):
                result = run_arm(args.task, arm, seed, built, weights, work, extra, source=source)
                runs_file.add(key, result)
            per_seed.setdefault(arm, []).append(done[key]["test_accuracy"])
            runs.setdefault(arm, []).append(done[key])
    line = summary_line(args.task, per_seed)
    _common.write_results(
        _common.results_path(args.output, args.smoke, f"command_adapt_{args.task}"),
        run,
        kind="accuracy",
        benchmark="command_adapt",
        dataset=args.task,
        splits=runs[arms[0]][0]["splits"],
        evaluated_on="test",
        arms={arm: _metrics(values, runs[arm]) for arm, values in per_seed.items()},
        primary_metric="test_accuracy",
        seeds=seeds,
        comparisons=pairs,
        details={
            "summary": line,
            "runs": {arm: [_run_details(r) for r in arm_runs] for arm, arm_runs in runs.items()},
            "runs_file": str(runs_file.path),
            "runs_commit": commit,
        },
    )
    print(json.dumps(line))
    return line


def _metrics(test_accuracy: list[float], runs: list[dict]) -> dict:
    """The arm's metrics for the results file: test accuracy, and the saved model's source
    validation accuracy when every run reported it."""
    validation = [run.get("val_accuracy") for run in runs]
    if any(value is None for value in validation):
        return {"test_accuracy": test_accuracy}
    return {"test_accuracy": test_accuracy, "source_val_accuracy": validation}


def _run_details(run: dict) -> dict:
    keys = ("seed", "command", "seconds", "saved_weights", "domain", "adaptation")
    return {key: run.get(key) for key in keys}


if __name__ == "__main__":
    main()
