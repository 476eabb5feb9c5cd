"""The advisor's training plan against the fixed defaults it replaces, on the test split.

Runs `examples/image_classifier.py` (the program of `keras-transfer train`, from this
checkout) once per config and seed, each in its own process, on the same data and seed:

- `fixed`: `--plan=fixed` (`FIXED_DEFAULTS` of keras_transfer/apps/image_config.py: 20
  head epochs on cached features at 1e-3, then every block 5 epochs at 2e-5, no early
  stopping, an EMA of the weights at momentum 0.5 per epoch);
- `advisor`: no training flags: `kt.recommend_training_plan` (keras_transfer/diagnostics/
  recipes.py, called by keras_transfer/apps/image_plan.py), the rule that
  `benchmarks/defaults_suite.py` fitted on its tasks.

Since the suite's rule chose the fixed plan for every dataset, the two arms run the same
plan; the committed results files of this script measured the earlier advisor (size and
LogME rules with early stopping; their commits say which), and `defaults_suite.py` is the
comparison of record.

The advisor reads the training and validation splits only; the test split is evaluated once
per run, by the program, after every choice (`results.json` "test"). MobileNet V1 (real
ImageNet weights, 224 px), the program's augmentation (flip, crop). Splits: the dataset's
`val/` folder is the test split (every image); validation is 20% of each class held out of
`train/` by a stable hash of the seed and the path (it changes with the seed, the test split
does not: `split_scheme="fixed"`). Cats vs dogs uses `--train_per_class 250` of the 1000
training images per class by default (a stable hash order), to fit 2 CPU cores.

The verdict runs (5 seeds, the default), alone on the machine; durations on 2 CPU cores are
estimates, scaled from the wall times of earlier single runs to these training-set sizes:

    python benchmarks/defaults.py --dataset hymenoptera     # estimate: about 55 min
    python benchmarks/defaults.py --dataset cats_and_dogs   # estimate: about 1 h 45 min
    python benchmarks/defaults.py --smoke                   # minutes: synthetic images,
                                                            # weights=None, a temporary output

Writes `benchmarks/results/defaults_<dataset>.json` through `_common.write_results`: arms
`fixed` and `advisor`, per seed `test_accuracy` (primary), `test_balanced_accuracy`,
`test_macro_f1`, the saved model's `val_accuracy`, `seconds` (the whole run) and the epochs
each phase ran; each run's plan and kept weights in `details`. The last line printed is that
record as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

EXAMPLE = _common.REPO_ROOT / "examples" / "image_classifier.py"
CONFIGS = {
    "fixed": ["--plan=fixed"],
    "advisor": [],
}
TRAIN_PER_CLASS = {"hymenoptera": 0, "cats_and_dogs": 250}
VALIDATION_SPLIT = 0.2
SELECTION = {
    "tuned": (
        "advisor: the settings kt.recommend_training_plan gives (the defaults suite's rule, "
        "fitted on other tasks' test accuracies; nothing read from this dataset's test "
        "split). fixed: nothing tuned (FIXED_DEFAULTS, the last epoch kept). Splits: the "
        "dataset's val/ folder is the test split; validation is 20% of each class held out "
        "of train/ by a stable hash of the "
        "seed and the path. The test split is evaluated once per run, after training."
    ),
    "tuned_on": "validation",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(_common.DATASETS), default="hymenoptera")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    parser.add_argument("--configs", default="fixed,advisor", help="comma-separated")
    parser.add_argument(
        "--train_per_class", type=int, default=None, help="0: all (default: per dataset)"
    )
    parser.add_argument("--test_per_class", type=int, default=0, help="0: all")
    parser.add_argument("--extra_flag", action="append", default=[], help="for both configs")
    parser.add_argument("--smoke", action="store_true")
    return parser


def run_command(command: list[str], label: str) -> float:
    """Runs `command` with this checkout's package first on the path, whatever the
    environment has installed; its seconds, or `SystemExit` with its error's end."""
    path = os.pathsep.join(filter(None, [str(_common.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    completed = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    if completed.returncode:
        raise SystemExit(f"{label} failed:\n{completed.stderr[-4000:]}")
    return time.perf_counter() - start


def test_fields(test: dict) -> dict:
    """A run record's test fields from a held-out report (`results.json` `"test"`)."""
    return {
        "test_accuracy": test["accuracy"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_accuracy_ci95": test["accuracy_ci95"],
    }


def run_config(
    name: str,
    seed: int,
    train_dir: pathlib.Path,
    test_dir: pathlib.Path,
    weights: str,
    extra: list[str],
    work: pathlib.Path,
    flags: list[str] | None = None,
) -> dict:
    """One run of the program (`flags`, default `CONFIGS[name]`; `seed`) in its own process:
    its results."""
    model_dir = work / f"{name}_{seed}"
    command = [
        sys.executable,
        str(EXAMPLE),
        f"--data_dir={train_dir}",
        f"--test_dir={test_dir}",
        f"--validation_split={VALIDATION_SPLIT}",
        f"--seed={seed}",
        f"--model_dir={model_dir}",
        "--backbone=mobilenet",
        f"--weights={weights}",
        "--noresume",
        "--verbose=0",
        *(CONFIGS[name] if flags is None else flags),
        *extra,
    ]
    seconds = run_command(command, f"{name} (seed {seed})")
    results = json.loads((model_dir / "results.json").read_text())
    summary = {
        **test_fields(results["test"]),
        "val_accuracy": results.get("saved_model_val_accuracy"),
        "seconds": round(seconds, 1),
        "run_seconds": results.get("total_seconds"),
        "head_epochs_run": results["feature_extraction"].get("epochs", 0),
        "fine_tune_epochs_run": results["fine_tune"].get("epochs", 0),
        "saved_weights": results.get("saved_weights"),
        "plan": results["plan"],
        "val_accuracy_by_epoch": results["history"].get("val_accuracy"),
        "val_loss_by_epoch": results["history"].get("val_loss"),
        "phase_by_epoch": results["history"].get("phase"),
        "splits": {
            "train": results["num_train"],
            "validation": results["num_validation"],
            "test": results["num_test"],
        },
        "command": " ".join(command[1:]),
    }
    print(
        f"{name} seed {seed}: test accuracy {summary['test_accuracy']:.4f}, "
        f"{summary['seconds']:.0f} s, epochs head {summary['head_epochs_run']} / fine-tune "
        f"{summary['fine_tune_epochs_run']}",
        flush=True,
    )
    return summary


METRICS = (
    "test_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "val_accuracy",
    "seconds",
    "head_epochs_run",
    "fine_tune_epochs_run",
)


def results_arms(runs: dict[str, list[dict]]) -> dict:
    """`{config: {metric: [one value per seed]}}` for `_common.write_results`."""
    return {
        name: {metric: [run[metric] for run in per_seed] for metric in METRICS}
        for name, per_seed in runs.items()
    }


def _train_per_class(args) -> int:
    return TRAIN_PER_CLASS[args.dataset] if args.train_per_class is None else args.train_per_class


def _data(args) -> tuple[str, pathlib.Path, pathlib.Path, str, list[str]]:
    """`(dataset, train_dir, test_dir, weights, extra flags)` of this run."""
    extra = list(args.extra_flag)
    if args.smoke:
        root = _common.smoke_image_folder()
        extra += ["--image_size=32", "--batch_size=8"]
        return "smoke", root / "train", root / "validation", "none", extra
    assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
    root = assets / _common.DATASETS[args.dataset]
    train_dir, test_dir = root / "train", _common.held_out_folder(root)
    per_class = _train_per_class(args)
    if per_class:
        train_dir = _common.image_subset(train_dir, per_class, "defaults_train_")
    if args.test_per_class:
        test_dir = _common.image_subset(test_dir, args.test_per_class, "defaults_test_")
    weights = str(assets / _common.MOBILENET_WEIGHTS)
    return args.dataset, train_dir, test_dir, weights, extra


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv = ["--seeds", "0", *argv]  # one seed unless given: the smoke run checks the path
    args = _parser().parse_args(argv)
    selection = dict(SELECTION)
    subset = _train_per_class(args)
    if subset and not args.smoke:
        selection["tuned"] += f" train/ subsampled to {subset} images per class."
    if args.test_per_class and not args.smoke:
        selection["tuned"] += f" val/ (test) subsampled to {args.test_per_class} per class."
    run = _common.start_run(selection, script=__file__, argv=argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = [name for name in args.configs.split(",") if name]
    dataset, train_dir, test_dir, weights, extra = _data(args)
    work = pathlib.Path(tempfile.mkdtemp(prefix="defaults_runs_"))
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        for seed in seeds:
            for name in configs:
                runs[name].append(run_config(name, seed, train_dir, test_dir, weights, extra, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    output = _common.results_path(
        args.output, args.smoke, "defaults" if args.smoke else f"defaults_{dataset}"
    )
    first = next(iter(runs.values()))[0]
    record = _common.write_results(
        output,
        run,
        kind="accuracy",
        benchmark="defaults",
        dataset=dataset,
        splits=first["splits"],
        evaluated_on="test",
        arms=results_arms(runs),
        primary_metric="test_accuracy",
        seeds=seeds,
        comparisons=[["fixed", "advisor"]] if {"fixed", "advisor"} <= set(configs) else None,
        split_scheme="fixed",
        details={
            "runs": {
                name: [{k: v for k, v in r.items() if k not in METRICS} for r in per_seed]
                for name, per_seed in runs.items()
            }
        },
    )
    print(json.dumps({k: v for k, v in record.items() if k != "details"}))
    return record


if __name__ == "__main__":
    main()
