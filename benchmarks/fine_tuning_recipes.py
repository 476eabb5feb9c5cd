"""Fine-tuning recipes on ants-vs-bees with the real ImageNet MobileNet V1 weights.

Each recipe starts from the same pretrained weights and seed, trains for the same number
of epochs on the same data, and reports its validation accuracy (after the last epoch, and
the best epoch) and its training wall time:

- `two_phase`: `fit_two_phase`: head for `--head_epochs` at 1e-3 (backbone frozen), then
  every block for `--fine_tune_epochs` at 1e-4 (Adam; BatchNorm in inference mode).
- `gradual`: one `fit` with `GradualUnfreezing`: head only, then the top block, the top
  three, then all, one epoch apart from `--head_epochs` on; one Adam at 1e-3 with
  per-block multipliers `0.4 ** (blocks above + 1)` (head 1.0), so each block gets its
  multiplier when it is unfrozen (ULMFiT's gradual unfreezing + discriminative rates).
- `two_phase_discriminative_cosine`: `fit_two_phase` with phase 2 at peak 3e-4,
  `lr_decay=0.7` per block, and `WarmupCosineDecay` (one epoch of warm-up, floor 1e-6).
- `two_phase_l2sp` (not run by default): `two_phase` with L2-SP (alpha 0.05, beta 0.005).

Before the recipes, `find_learning_rate` sweeps the head (frozen backbone) and its
suggestion is printed for reference (the recipes keep their fixed rates).

    python benchmarks/fine_tuning_recipes.py                 # real data and weights
    python benchmarks/fine_tuning_recipes.py --smoke         # seconds: synthetic, weights=None

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.optimizers import layerwise as optimizers  # noqa: E402
from keras_transfer.optimizers import schedules  # noqa: E402
from keras_transfer.peft import l2sp as regularizers  # noqa: E402
from keras_transfer.training import callbacks as callbacks_lib  # noqa: E402
from keras_transfer.training import lr_finder  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("two_phase", "gradual", "two_phase_discriminative_cosine", "two_phase_l2sp")
DEFAULT_RECIPES = RECIPES[:3]


def assets_dir(flag: str | None) -> pathlib.Path:
    path = pathlib.Path(
        flag or os.environ.get("KERAS_TRANSFER_ASSETS") or REPO_ROOT.parent / "shared" / "assets"
    )
    if not (path / "datasets" / "hymenoptera_data").is_dir():
        raise SystemExit(
            f"No ants-vs-bees data under {path}/datasets/hymenoptera_data: pass --assets or set "
            "KERAS_TRANSFER_ASSETS (or run with --smoke)."
        )
    return path


def load_data(args) -> tuple[tf.data.Dataset, tf.data.Dataset, int, str | None]:
    """(train, validation, steps per epoch, weights path)."""
    if args.smoke:
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (16, args.image_size, args.image_size, 3)).astype("float32")
        y = np.array([0, 1] * 8)
        train = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size)
        return train, train, -(-16 // args.batch_size), None
    from keras_transfer.data import folders as data_lib

    assets = assets_dir(args.assets)
    images = data_lib.image_folder_dataset(
        assets / "datasets" / "hymenoptera_data",
        image_size=args.image_size,
        batch_size=args.batch_size,
        augment=args.augment,
    )
    print(
        f"data: {images.num_train} train / {images.num_validation} validation images, "
        f"classes {images.class_names}, skipped {len(images.skipped)} undecodable file(s)"
    )
    steps = -(-images.num_train // args.batch_size)
    weights = str(assets / "weights" / "mobilenet_1_0_224_tf_no_top.h5")
    return images.train, images.validation, steps, weights


def make_model(args, weights: str | None) -> keras.Model:
    keras.utils.set_random_seed(args.seed)
    extra = {"alpha": 0.25} if args.smoke else {}
    return kt.create_classifier(
        "mobilenet",
        2,
        input_shape=(args.image_size, args.image_size, 3),
        weights=weights,
        **extra,
    )


def two_phase(args, model, train, validation, steps, l2sp=False):
    if l2sp:
        regularizers.apply_l2sp(model, alpha=0.05, beta=0.005)
    result = kt.fit_two_phase(
        model,
        train,
        validation,
        head_epochs=args.head_epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        head_lr=1e-3,
        fine_tune_lr=1e-4,
        unfreeze="all",
        verbose=args.verbose,
    )
    return result.history


def two_phase_discriminative_cosine(args, model, train, validation, steps):
    def fine_tune_optimizer(learning_rate):
        total_steps = args.fine_tune_epochs * steps
        schedule = schedules.WarmupCosineDecay(
            learning_rate,
            total_steps=total_steps,
            warmup_steps=min(steps, total_steps - 1),  # one epoch (--smoke has one in all)
            floor=1e-6,
        )
        return keras.optimizers.Adam(schedule)

    result = kt.fit_two_phase(
        model,
        train,
        validation,
        head_epochs=args.head_epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        head_lr=1e-3,
        fine_tune_lr=3e-4,
        lr_decay=0.7,
        fine_tune_optimizer=fine_tune_optimizer,
        unfreeze="all",
        verbose=args.verbose,
    )
    return result.history


def gradual(args, model, train, validation, steps):
    start = args.head_epochs
    schedule = {start: 1, start + 1: 3, start + 2: "all"}
    kt.unfreeze(model, "all")  # name every block's multiplier up front
    multipliers = optimizers.layer_decay_multipliers(model, 0.4)
    kt.freeze(model)
    model.compile(
        optimizer=optimizers.with_layerwise_lr(
            keras.optimizers.Adam, multipliers, learning_rate=1e-3
        )
    )
    unfreezing = callbacks_lib.GradualUnfreezing(schedule, verbose=args.verbose)
    history = model.fit(
        train,
        validation_data=validation,
        epochs=args.head_epochs + args.fine_tune_epochs,
        callbacks=[unfreezing],
        verbose=args.verbose,
    )
    return history.history


def run_recipe(name, args, train, validation, steps, weights):
    model = make_model(args, weights)
    fit = {
        "two_phase": two_phase,
        "gradual": gradual,
        "two_phase_discriminative_cosine": two_phase_discriminative_cosine,
        "two_phase_l2sp": lambda *a: two_phase(*a, l2sp=True),
    }[name]
    start = time.perf_counter()
    history = fit(args, model, train, validation, steps)
    seconds = time.perf_counter() - start
    accuracy = [float(v) for v in history["val_accuracy"]]
    return {
        "val_accuracy": round(accuracy[-1], 4),
        "best_val_accuracy": round(max(accuracy), 4),
        "val_accuracy_per_epoch": [round(v, 4) for v in accuracy],
        "seconds": round(seconds, 1),
    }


def head_lr_suggestion(args, train, weights) -> dict:
    model = make_model(args, weights)
    kt.freeze(model)
    model.compile(optimizer=keras.optimizers.Adam())
    start = time.perf_counter()
    result = lr_finder.find_learning_rate(
        model, train, min_lr=1e-6, max_lr=1.0, steps=args.lr_find_steps
    )
    return {
        "valley": float(f"{result.valley:.3g}"),
        "steepest": float(f"{result.steepest:.3g}"),
        "steps": len(result.learning_rates),
        "diverged": result.diverged,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--assets", help="the assets folder (default: $KERAS_TRANSFER_ASSETS or ../shared/assets)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run, weights=None")
    parser.add_argument(
        "--image_size", type=int, default=None, help="default 160 (32 with --smoke)"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--head_epochs", type=int, default=None, help="default 2 (1 with --smoke)")
    parser.add_argument(
        "--fine_tune_epochs", type=int, default=None, help="default 4 (2 with --smoke)"
    )
    parser.add_argument(
        "--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of {RECIPES}"
    )
    parser.add_argument(
        "--augment", default="flip", help="training augmentation for image_folder_dataset"
    )
    parser.add_argument(
        "--lr_find_steps", type=int, default=None, help="0 skips; default 40 (5 with --smoke)"
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.image_size = args.image_size or (32 if smoke else 160)
    args.head_epochs = args.head_epochs if args.head_epochs is not None else (1 if smoke else 2)
    args.fine_tune_epochs = (
        args.fine_tune_epochs if args.fine_tune_epochs is not None else (1 if smoke else 4)
    )
    args.lr_find_steps = (
        args.lr_find_steps if args.lr_find_steps is not None else (5 if smoke else 40)
    )
    if smoke:
        args.batch_size = min(args.batch_size, 8)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise SystemExit(f"Unknown recipe(s) {unknown}; choose from {RECIPES}.")

    train, validation, steps, weights = load_data(args)
    report = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.head_epochs + args.fine_tune_epochs,
        "head_epochs": args.head_epochs,
        "smoke": smoke,
    }
    if args.lr_find_steps:
        report["head_lr_finder"] = head_lr_suggestion(args, train, weights)
        print(f"head LR finder: {report['head_lr_finder']}")
    for name in recipes:
        report[name] = run_recipe(name, args, train, validation, steps, weights)
        print(
            f"{name}: val_accuracy {report[name]['val_accuracy']:.4f} (best "
            f"{report[name]['best_val_accuracy']:.4f}), {report[name]['seconds']:.1f} s"
        )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
