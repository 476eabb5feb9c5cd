"""The image example's advisor defaults against the fixed defaults they replace.

Runs `examples/image_classifier.py` twice on the same data, each in its own process:

- `fixed`: the defaults before the advisor, `--plan=fixed` (20 head epochs on cached
  features at 1e-3, then every block 5 epochs at 2e-5, no early stopping; EMA 0.9);
- `advisor`: no training flags: `kt.recommend_training_plan` chooses from the training
  set's size and the backbone's per-block LogME (generous budgets, early stopping on the
  validation loss with the best weights kept, fine-tuning kept only if it beats the head).

Both with MobileNet V1 (real ImageNet weights, 224 px), seed 42, the example's augmentation
(flip, crop). Reported per config: the saved model's validation accuracy, the epochs each
phase ran, and the wall time of the whole run (data, transferability, training, reports).
`--train_per_class` / `--val_per_class` use the first N images of each class (in a seeded
random order) through a folder of symbolic links, for a machine without the time.

    python benchmarks/defaults.py --dataset hymenoptera
    python benchmarks/defaults.py --dataset cats_and_dogs
    python benchmarks/defaults.py --smoke          # seconds: synthetic images, weights=None

The last line printed is one JSON object; it is also written to
`benchmarks/results/defaults_<dataset>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(_common.DATASETS), default="hymenoptera")
    parser.add_argument("--assets", default=None)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--configs", default="fixed,advisor", help="comma-separated")
    parser.add_argument("--train_per_class", type=int, default=0, help="0: all")
    parser.add_argument("--val_per_class", type=int, default=0, help="0: all")
    parser.add_argument("--extra_flag", action="append", default=[], help="for both configs")
    parser.add_argument("--smoke", action="store_true")
    return parser


def _subset(source: pathlib.Path, train: int, val: int) -> pathlib.Path:
    """A folder of symbolic links to the first `train` / `val` images of each class."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="defaults_subset_"))
    for split in sorted(p for p in source.iterdir() if p.is_dir()):
        limit = val if split.name in ("val", "validation") else train
        for folder in sorted(p for p in split.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            random.Random(0).shuffle(files)
            target = root / split.name / folder.name
            target.mkdir(parents=True)
            for path in files[: limit or None]:
                (target / path.name).symlink_to(path.resolve())
    return root


def _run(name: str, data_dir: pathlib.Path, weights: str, extra: list[str], work: pathlib.Path):
    model_dir = work / name
    command = [
        sys.executable,
        str(EXAMPLE),
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--backbone=mobilenet",
        f"--weights={weights}",
        "--noresume",
        "--verbose=0",
        *CONFIGS[name],
        *extra,
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode:
        raise SystemExit(f"{name} failed:\n{completed.stderr[-4000:]}")
    results = json.loads((model_dir / "results.json").read_text())
    summary = {
        "val_accuracy": results.get("saved_model_val_accuracy"),
        "seconds": round(seconds, 1),
        "run_seconds": results["total_seconds"],
        "head_epochs_run": results["feature_extraction"].get("epochs", 0),
        "fine_tune_epochs_run": results["fine_tune"].get("epochs", 0),
        "head_seconds": results["feature_extraction"].get("seconds", 0.0),
        "fine_tune_seconds": results["fine_tune"].get("seconds", 0.0),
        "saved_weights": results.get("saved_weights"),
        "plan": results["plan"],
        "val_accuracy_by_epoch": results["history"].get("val_accuracy"),
        "val_loss_by_epoch": results["history"].get("val_loss"),
        "phase_by_epoch": results["history"].get("phase"),
        "num_train": results["num_train"],
        "num_validation": results["num_validation"],
        "command": " ".join(command[1:]),
    }
    print(
        f"{name}: val_accuracy {summary['val_accuracy']:.4f}, {summary['seconds']:.0f} s, "
        f"epochs head {summary['head_epochs_run']} / fine-tune {summary['fine_tune_epochs_run']}",
        flush=True,
    )
    return summary


def main() -> None:
    args = _parser().parse_args()
    start = time.perf_counter()
    extra = list(args.extra_flag)
    if args.smoke:
        data_dir = _common.smoke_image_folder()
        weights = "none"
        extra += ["--image_size=32", "--batch_size=8"]
        dataset = "smoke"
    else:
        assets = _common.assets_dir(args.assets, _common.DATASETS[args.dataset])
        data_dir = assets / _common.DATASETS[args.dataset]
        weights = str(assets / _common.MOBILENET_WEIGHTS)
        dataset = args.dataset
    if args.train_per_class or args.val_per_class:
        data_dir = _subset(data_dir, args.train_per_class, args.val_per_class)
    work = pathlib.Path(tempfile.mkdtemp(prefix="defaults_runs_"))
    load_before = _common.load_average()
    try:
        runs = {
            name: _run(name, data_dir, weights, extra, work)
            for name in args.configs.split(",")
            if name
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "dataset": dataset,
        "train_per_class": args.train_per_class or "all",
        "val_per_class": args.val_per_class or "all",
        **{f"{name}_val_accuracy": run["val_accuracy"] for name, run in runs.items()},
        **{f"{name}_seconds": run["seconds"] for name, run in runs.items()},
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": _common.load_average(),
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python benchmarks/defaults.py " + " ".join(sys.argv[1:]),
    }
    if not args.smoke or args.output:
        path = (
            pathlib.Path(args.output)
            if args.output
            else _common.output_dir(None, "") / f"defaults_{dataset}.json"
        )
        _common.write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    main()
